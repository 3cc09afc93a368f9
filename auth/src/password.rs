//! Passwords: argon2id hashes, computed on the blocking pool so they never stall the runtime,
//! and at most `AUTH_HASH_CONCURRENCY` at a time.
//!
//! Each hash or verification holds argon2's default 19 MiB of memory for its duration. Without
//! a bound, the service's 64 concurrent requests could hold 1.2 GiB, far past the role's
//! memory limit (issue 15, finding 8). A request that cannot get a slot within
//! `AUTH_HASH_WAIT_MS` is answered `unavailable` ("busy, try again"), never queued without end.

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::{Error, Result};

/// The shortest and longest passwords accepted.
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 256;

/// Memory one argon2id computation holds with the default parameters (m = 19456 KiB).
pub const MIB_PER_HASH: usize = 19;

/// Hashes and verifies passwords, a bounded number at a time.
pub struct Hasher {
    slots: Semaphore,
    wait: Duration,
}

impl Hasher {
    pub fn new(concurrency: usize, wait: Duration) -> Self {
        Self {
            slots: Semaphore::new(concurrency.max(1)),
            wait,
        }
    }

    /// A slot, or [`Error::Busy`] once `wait` has passed without one.
    pub async fn slot(&self) -> Result<SemaphorePermit<'_>> {
        match tokio::time::timeout(self.wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(Error::Internal("password hasher closed".into())),
            Err(_elapsed) => Err(Error::Busy),
        }
    }

    pub async fn hash(&self, password: String) -> Result<String> {
        let _slot = self.slot().await?;
        hash_now(password).await
    }

    /// Whether `password` matches `hash`; a malformed stored hash never matches. Busy is an
    /// error, not a mismatch, so a flood never counts as wrong passwords.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool> {
        let _slot = self.slot().await?;
        Ok(verify_now(password, hash).await)
    }
}

async fn hash_now(password: String) -> Result<String> {
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

async fn verify_now(password: String, hash: String) -> bool {
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
/// wrong username takes as long as a wrong password. Made once at start.
pub async fn dummy_hash() -> String {
    hash_now("not-a-real-password-for-timing".into())
        .await
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn with_every_slot_taken_a_hash_is_refused_as_busy_and_runs_once_one_frees() {
        let hasher = Hasher::new(1, Duration::from_millis(50));
        let held = hasher.slot().await.unwrap();
        assert!(matches!(
            hasher.hash("a password".into()).await,
            Err(Error::Busy)
        ));
        assert!(matches!(
            hasher.verify("a password".into(), String::new()).await,
            Err(Error::Busy)
        ));
        drop(held);
        let hash = hasher.hash("a password".into()).await.unwrap();
        assert!(
            hasher
                .verify("a password".into(), hash.clone())
                .await
                .unwrap()
        );
        assert!(!hasher.verify("another one".into(), hash).await.unwrap());
    }

    #[tokio::test]
    async fn a_malformed_stored_hash_never_matches() {
        let hasher = Hasher::new(1, Duration::from_secs(1));
        assert!(!hasher.verify("x".into(), "garbage".into()).await.unwrap());
    }
}
