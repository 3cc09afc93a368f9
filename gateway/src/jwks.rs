//! Keeping the verifier's copy of the auth role's JWKS: fetched over NATS at start, and again
//! when a token names a key we do not have, which is how a key rotation reaches the gateways.
//! Fetches are at most one a second, and callers that wait meanwhile share the next one, so
//! tokens with made-up `kid`s cannot flood the auth role.
//!
//! [`JwksCache::verify`] is the one path every presented token takes (the `/ws` upgrade,
//! Socket.IO's connect, REST bearer calls and `auth:refresh`), so it is also where a token of a
//! signed-out session is refused ([`RevokedSessions`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parley_auth::api::AuthOp;
use parley_auth::signing::Jwks;
use parley_auth::{Verified, Verifier, VerifyError};
use parley_common::rpc;
use parley_common::subjects::Subjects;
use tokio::sync::Mutex;

use crate::auth::Refusal;
use crate::revocation::RevokedSessions;

/// The least time between two fetches, once a JWKS is loaded.
const MIN_REFETCH: Duration = Duration::from_secs(1);
/// The least time between two fetches while none has succeeded yet (the auth role is starting).
const MIN_REFETCH_STARTING: Duration = Duration::from_millis(200);

pub struct JwksCache {
    nats: async_nats::Client,
    subjects: Subjects,
    last_fetch: Mutex<Option<Instant>>,
    revoked: RevokedSessions,
    /// A JWKS has been fetched (or Parley tokens are not accepted, so none is needed).
    loaded: AtomicBool,
}

impl JwksCache {
    /// `max_revoked`: `PARLEY_REVOKED_SESSIONS_MAX`, the bound of the revoked-session set.
    pub fn new(nats: async_nats::Client, subjects: Subjects, max_revoked: usize) -> Self {
        Self {
            nats,
            subjects,
            last_fetch: Mutex::new(None),
            revoked: RevokedSessions::new(max_revoked),
            loaded: AtomicBool::new(false),
        }
    }

    /// The sessions signed out recently, whose tokens [`Self::verify`] refuses.
    pub fn revoked(&self) -> &RevokedSessions {
        &self.revoked
    }

    /// Whether the verifier has the auth role's keys (always, when Parley tokens are off).
    pub fn is_loaded(&self, verifier: &Verifier) -> bool {
        !verifier.accepts_parley_tokens() || self.loaded.load(Ordering::Acquire)
    }

    /// Fetches the JWKS into `verifier`: now, or (if one was fetched less than a second ago)
    /// once the second is up. A fetch made while this call waited counts as its own.
    /// True when the verifier has keys afterwards.
    pub async fn refresh(&self, verifier: &Verifier) -> bool {
        if !verifier.accepts_parley_tokens() {
            return true;
        }
        let asked = Instant::now();
        let mut last = self.last_fetch.lock().await;
        if let Some(t) = *last {
            if t > asked {
                return self.is_loaded(verifier);
            }
            let gap = if self.is_loaded(verifier) {
                MIN_REFETCH
            } else {
                MIN_REFETCH_STARTING
            };
            tokio::time::sleep(gap.saturating_sub(t.elapsed())).await;
        }
        *last = Some(Instant::now());
        tracing::debug!("fetching the auth role's JWKS");
        // Bounded by the client's request timeout.
        let reply = self
            .nats
            .request(self.subjects.rpc_auth(AuthOp::Jwks.as_str()), "{}".into())
            .await;
        match reply.map(|r| rpc::decode::<Jwks>(&r.payload)) {
            Ok(Ok(jwks)) => {
                tracing::info!(keys = jwks.keys.len(), "JWKS fetched");
                verifier.set_jwks(&jwks);
                self.loaded.store(true, Ordering::Release);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "auth service refused the JWKS request"),
            Err(e) => tracing::warn!(error = %e, "cannot fetch the JWKS"),
        }
        self.is_loaded(verifier)
    }

    /// Verifies a token, fetching the JWKS once more if it names a key not seen yet, and
    /// refuses it if its session was signed out.
    pub async fn verify(
        self: &Arc<Self>,
        verifier: &Verifier,
        token: &str,
    ) -> Result<Verified, Refusal> {
        let verified = match verifier.verify(token) {
            Err(VerifyError::UnknownKey(_)) => {
                self.refresh(verifier).await;
                verifier.verify(token)
            }
            other => other,
        }?;
        self.check_session(&verified)?;
        Ok(verified)
    }

    /// Refuses an identity whose session was signed out.
    pub fn check_session(&self, verified: &Verified) -> Result<(), Refusal> {
        match &verified.session_id {
            Some(sid) if self.revoked.contains(sid, chrono::Utc::now().timestamp()) => {
                Err(Refusal::SignedOut)
            }
            _ => Ok(()),
        }
    }
}
