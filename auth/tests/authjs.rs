//! Auth.js v5 session tokens made by the real `@auth/core` `encode()` (from npm, in
//! `services/tests/fixtures/authjs`; `./dev test` installs it).

use std::process::Command;

use parley_auth::{Verifier, VerifierConfig, VerifyError};
use parley_common::config::Env;
use serde_json::{Value, json};

const SECRET: &str = "the-nextjs-app-auth-secret-0123456789";

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/tests/fixtures/authjs")
}

/// A token from `@auth/core/jwt` `encode()`.
fn encode(secret: &str, salt: &str, token: Value, max_age: i64) -> String {
    let dir = fixture();
    assert!(
        dir.join("node_modules/@auth/core").exists(),
        "run `npm ci` in {} (./dev test does)",
        dir.display()
    );
    let params = json!({"secret": secret, "salt": salt, "token": token, "maxAge": max_age});
    let out = Command::new("node")
        .arg("encode.mjs")
        .arg(params.to_string())
        .current_dir(&dir)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn verifier(extra: &[(&str, &str)]) -> Verifier {
    let mut env = Env::from_pairs([
        ("AUTH_SECRET", SECRET),
        ("AUTH_TOKEN_KINDS", "hs256,authjs"),
    ]);
    for (k, v) in extra {
        env = env.with(k, *v);
    }
    Verifier::new(&VerifierConfig::from_env(&env).unwrap())
}

#[test]
fn a_token_from_auth_core_encode_opens_with_the_default_cookie_salt() {
    let t = encode(
        SECRET,
        "authjs.session-token",
        json!({"sub": "user_42", "name": "Ada"}),
        3600,
    );
    let v = verifier(&[]).verify(&t).unwrap();
    assert_eq!(v.user_id.as_str(), "user_42");
    assert!(v.exp > chrono_now());
}

#[test]
fn the_secure_cookie_salt_works_too_and_from_a_chunked_cookie() {
    let t = encode(
        SECRET,
        "__Secure-authjs.session-token",
        json!({"sub": "bob"}),
        3600,
    );
    assert_eq!(verifier(&[]).verify(&t).unwrap().user_id.as_str(), "bob");
    let (a, b) = t.split_at(t.len() / 2);
    let header = format!(
        "theme=dark; __Secure-authjs.session-token.1={b}; __Secure-authjs.session-token.0={a}"
    );
    assert_eq!(
        verifier(&[])
            .verify_cookies(&header)
            .unwrap()
            .user_id
            .as_str(),
        "bob"
    );
}

#[test]
fn a_token_made_with_another_secret_is_refused() {
    let t = encode(
        "some-other-app-secret-000000000",
        "authjs.session-token",
        json!({"sub": "eve"}),
        3600,
    );
    assert_eq!(verifier(&[]).verify(&t), Err(VerifyError::BadSignature));
}

#[test]
fn a_tampered_token_is_refused() {
    let t = encode(SECRET, "authjs.session-token", json!({"sub": "eve"}), 3600);
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    // Flip one character of the ciphertext.
    let c = &mut parts[3];
    let flipped = if c.starts_with('A') { 'B' } else { 'A' };
    c.replace_range(0..1, &flipped.to_string());
    assert_eq!(
        verifier(&[]).verify(&parts.join(".")),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn an_expired_token_is_refused() {
    let t = encode(SECRET, "authjs.session-token", json!({"sub": "old"}), -120);
    assert_eq!(verifier(&[]).verify(&t), Err(VerifyError::Expired));
}

#[test]
fn a_rotated_secret_in_auth_secret_1_still_opens_old_tokens() {
    let t = encode(
        SECRET,
        "authjs.session-token",
        json!({"sub": "carol"}),
        3600,
    );
    let rotated = verifier(&[
        ("AUTH_SECRET", "the-new-secret-after-rotation-000"),
        ("AUTH_SECRET_1", SECRET),
    ]);
    assert_eq!(rotated.verify(&t).unwrap().user_id.as_str(), "carol");
    let forgotten = verifier(&[("AUTH_SECRET", "the-new-secret-after-rotation-000")]);
    assert_eq!(forgotten.verify(&t), Err(VerifyError::BadSignature));
}

#[test]
fn a_session_whose_sub_is_not_a_user_id_is_refused() {
    let t = encode(SECRET, "authjs.session-token", json!({"sub": "a.b"}), 3600);
    assert!(matches!(
        verifier(&[]).verify(&t),
        Err(VerifyError::BadSubject(_))
    ));
}

#[test]
fn auth_js_tokens_are_refused_when_the_kind_is_off() {
    let t = encode(
        SECRET,
        "authjs.session-token",
        json!({"sub": "alice"}),
        3600,
    );
    let hs_only = Verifier::new(
        &VerifierConfig::from_env(&Env::from_pairs([
            ("AUTH_SECRET", SECRET),
            ("AUTH_TOKEN_KINDS", "hs256"),
        ]))
        .unwrap(),
    );
    assert!(matches!(
        hs_only.verify(&t),
        Err(VerifyError::AlgorithmNotAllowed(_))
    ));
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
