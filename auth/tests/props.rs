//! Property tests of everything that parses a client's token or cookies: whatever arrives,
//! the verifier neither panics nor lets a token through that breaks a rule, and every refusal
//! is a [`VerifyError`] with a short, readable reason for the log.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parley_auth::authjs;
use parley_auth::{Verifier, VerifierConfig, VerifyError};
use parley_common::config::Env;
use proptest::prelude::*;
use serde_json::json;

const SECRET: &str = "a-property-test-secret-long-enough";

fn verifier() -> Verifier {
    let env = Env::from_pairs([
        ("AUTH_SECRET", SECRET),
        ("AUTH_TOKEN_KINDS", "parley,hs256,authjs"),
    ]);
    let v = Verifier::new(&VerifierConfig::from_env(&env).unwrap());
    v.set_jwks(
        &parley_auth::signing::KeyRing::new(vec![parley_auth::signing::generate()])
            .unwrap()
            .jwks(),
    );
    v
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// A refusal fit for a log line: something is said, and not the whole input back.
fn clear(e: &VerifyError) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.trim().is_empty());
    prop_assert!(msg.len() <= 200, "reason too long: {msg}");
    Ok(())
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,40}",
        proptest::collection::vec(any::<u8>(), 0..60).prop_map(|b| B64.encode(b)),
        Just(B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#)),
        Just(B64.encode(br#"{"alg":"EdDSA","kid":"nope"}"#)),
        Just(B64.encode(br#"{"alg":"dir","enc":"A256CBC-HS512"}"#)),
        Just(B64.encode(br#"{"alg":"none"}"#)),
        ".{0,20}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_string_is_verified_or_refused_clearly(token in ".{0,300}") {
        if let Err(e) = verifier().verify(&token) {
            clear(&e)?;
        }
    }

    #[test]
    fn any_three_or_five_segments_are_refused_clearly(
        parts in proptest::collection::vec(segment(), 3..=5),
    ) {
        let token = parts.join(".");
        match verifier().verify(&token) {
            Ok(v) => prop_assert!(false, "a forged token passed: {v:?}"),
            Err(e) => clear(&e)?,
        }
    }

    #[test]
    fn a_jwe_with_random_parts_never_decrypts(
        iv in proptest::collection::vec(any::<u8>(), 0..40),
        ct in proptest::collection::vec(any::<u8>(), 0..80),
        tag in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let header = B64.encode(br#"{"alg":"dir","enc":"A256CBC-HS512"}"#);
        let token = format!("{header}..{}.{}.{}", B64.encode(iv), B64.encode(ct), B64.encode(tag));
        let keys = authjs::keys_for(&[SECRET]);
        match authjs::decrypt(&token, &keys) {
            Ok(_) => prop_assert!(false, "random bytes passed the MAC"),
            Err(e) => clear(&e)?,
        }
    }

    #[test]
    fn any_cookie_header_is_read_or_refused_clearly(
        header in proptest::collection::vec(
            prop_oneof![
                "[ -~]{0,30}",
                "(__Secure-)?authjs\\.session-token(\\.[0-9]{1,2})?=[A-Za-z0-9._-]{0,60}",
            ],
            0..6,
        ),
    ) {
        let header = header.join("; ");
        if let Some(token) = authjs::token_from_cookies(&header) {
            prop_assert!(token.len() <= header.len());
        }
        match verifier().verify_cookies(&header) {
            Ok(v) => prop_assert!(false, "cookies without a real session passed: {v:?}"),
            Err(e) => clear(&e)?,
        }
    }

    /// Tokens signed with the right secret but arbitrary claims: what passes keeps every rule
    /// (a user id for subject, not expired, within the 24 h lifetime), the rest is refused
    /// clearly.
    #[test]
    fn a_signed_hs256_token_passes_only_within_the_rules(
        sub in prop_oneof![Just(None), "[ -~]{0,40}".prop_map(Some), Just(Some("alice".to_owned()))],
        exp in prop_oneof![Just(None), (-200_000i64..200_000).prop_map(Some), any::<i64>().prop_map(Some)],
        iat in prop_oneof![Just(None), (-200_000i64..200_000).prop_map(Some), any::<i64>().prop_map(Some)],
    ) {
        let t = now();
        let mut claims = serde_json::Map::new();
        if let Some(sub) = &sub {
            claims.insert("sub".into(), json!(sub));
        }
        if let Some(exp) = exp {
            claims.insert("exp".into(), json!(t.saturating_add(exp)));
        }
        if let Some(iat) = iat {
            claims.insert("iat".into(), json!(t.saturating_add(iat)));
        }
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        match verifier().verify(&token) {
            Ok(v) => {
                prop_assert!(v.exp >= t - 5 && v.exp <= t + 86_400 + 5, "exp {}", v.exp - t);
                prop_assert_eq!(Some(v.user_id.as_str().to_owned()), sub);
            }
            Err(e) => clear(&e)?,
        }
    }
}
