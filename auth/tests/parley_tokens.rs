//! Parley access tokens against the verifier: the good one passes, each forgery fails for its
//! own reason.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parley_auth::signing::{self, KeyRing};
use parley_auth::{Verifier, VerifierConfig, VerifyError};
use parley_common::config::Env;
use serde_json::json;

fn verifier() -> Verifier {
    let env = Env::from_pairs([
        ("AUTH_SECRET", "an-hs256-secret-for-other-apps-000"),
        ("AUTH_TOKEN_KINDS", "parley,hs256"),
    ]);
    Verifier::new(&VerifierConfig::from_env(&env).unwrap())
}

fn ring() -> KeyRing {
    KeyRing::new(vec![signing::generate()]).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[test]
fn a_token_signed_by_the_ring_verifies_with_its_jwks_and_names_its_session() {
    let ring = ring();
    let v = verifier();
    v.set_jwks(&ring.jwks());
    let (token, exp) = ring.sign("alice", "sess-1", "parley", "parley", 900);
    let verified = v.verify(&token).unwrap();
    assert_eq!(verified.user_id.as_str(), "alice");
    assert_eq!(verified.exp, exp);
    assert_eq!(verified.session_id.as_deref(), Some("sess-1"));
}

#[test]
fn a_key_not_in_the_jwks_is_unknown_until_the_jwks_is_refreshed() {
    let ring = ring();
    let v = verifier();
    let (token, _) = ring.sign("alice", "s", "parley", "parley", 900);
    assert!(matches!(v.verify(&token), Err(VerifyError::UnknownKey(_))));
    v.set_jwks(&ring.jwks());
    assert!(v.verify(&token).is_ok());
}

#[test]
fn a_token_signed_by_another_key_under_a_known_kid_is_refused() {
    let ours = signing::generate();
    let mut theirs = signing::generate();
    theirs.kid = ours.kid.clone();
    let v = verifier();
    v.set_jwks(&KeyRing::new(vec![ours]).unwrap().jwks());
    let (forged, _) = KeyRing::new(vec![theirs])
        .unwrap()
        .sign("alice", "s", "parley", "parley", 900);
    assert_eq!(v.verify(&forged), Err(VerifyError::BadSignature));
}

#[test]
fn an_hs256_token_keyed_with_the_public_key_is_refused() {
    // The classic algorithm confusion: sign HS256 with the published public key as the secret.
    let key = signing::generate();
    let v = verifier();
    let ring = KeyRing::new(vec![key.clone()]).unwrap();
    v.set_jwks(&ring.jwks());
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let x = ring.jwks().keys[0].x.clone();
    for secret in [key.public_key.clone(), x.into_bytes()] {
        let forged = jsonwebtoken::encode(
            &header,
            &json!({"sub": "alice", "exp": now() + 600, "iss": "parley", "aud": "parley"}),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert_eq!(v.verify(&forged), Err(VerifyError::BadSignature));
    }
}

#[test]
fn wrong_issuer_wrong_audience_and_expiry_are_refused() {
    let ring = ring();
    let v = verifier();
    v.set_jwks(&ring.jwks());
    let (t, _) = ring.sign("alice", "s", "someone-else", "parley", 900);
    assert_eq!(v.verify(&t), Err(VerifyError::WrongIssuer));
    let (t, _) = ring.sign("alice", "s", "parley", "another-api", 900);
    assert_eq!(v.verify(&t), Err(VerifyError::WrongAudience));
    let (t, _) = ring.sign("alice", "s", "parley", "parley", -120);
    assert_eq!(v.verify(&t), Err(VerifyError::Expired));
}

#[test]
fn alg_none_with_a_parley_kid_is_refused() {
    let key = signing::generate();
    let v = verifier();
    v.set_jwks(&KeyRing::new(vec![key.clone()]).unwrap().jwks());
    let header = B64.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid));
    let claims = B64.encode(format!(
        r#"{{"sub":"alice","exp":{},"iss":"parley","aud":"parley"}}"#,
        now() + 600
    ));
    assert_eq!(
        v.verify(&format!("{header}.{claims}.")),
        Err(VerifyError::AlgorithmNotAllowed("none".into()))
    );
}

#[test]
fn parley_tokens_are_refused_when_the_kind_is_off() {
    let ring = ring();
    let env = Env::from_pairs([
        ("AUTH_SECRET", "an-hs256-secret-for-other-apps-000"),
        ("AUTH_TOKEN_KINDS", "hs256"),
    ]);
    let v = Verifier::new(&VerifierConfig::from_env(&env).unwrap());
    v.set_jwks(&ring.jwks());
    let (t, _) = ring.sign("alice", "s", "parley", "parley", 900);
    assert_eq!(
        v.verify(&t),
        Err(VerifyError::AlgorithmNotAllowed("EdDSA".into()))
    );
}
