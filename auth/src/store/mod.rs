//! All SQL of the auth role, in the schema `auth`.

pub mod keys;
pub mod sessions;
pub mod users;

use sha2::{Digest, Sha256};

/// The stored form of an opaque secret (session cookie, refresh token): its SHA-256. The
/// secrets are 256 random bits, so a plain hash is enough; nothing reversible is stored.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new opaque secret: 256 random bits, base64url.
pub fn new_secret() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
