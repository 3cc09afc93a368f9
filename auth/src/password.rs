//! Passwords: argon2id hashes, computed on the blocking pool so they never stall the runtime.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;

use crate::error::{Error, Result};

/// The shortest and longest passwords accepted.
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 256;

pub async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Internal(e.to_string()))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(e.to_string()))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
}

/// Whether `password` matches `hash`. A malformed stored hash never matches.
pub async fn verify(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// A hash of a password nobody has, verified against when the account does not exist, so a
/// wrong username takes as long as a wrong password.
pub async fn dummy_hash() -> String {
    hash("not-a-real-password-for-timing".into())
        .await
        .unwrap_or_default()
}
