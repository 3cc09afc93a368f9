//! Keeping the verifier's copy of the auth role's JWKS: fetched over NATS at start, and again
//! (at most every few seconds) when a token names a key we do not have, which is how a key
//! rotation reaches the gateways.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_auth::api::AuthOp;
use parley_auth::signing::Jwks;
use parley_auth::{Verified, Verifier, VerifyError};
use parley_common::rpc;
use parley_common::subjects::Subjects;
use tokio::sync::Mutex;

/// The least time between two fetches.
const MIN_REFETCH: Duration = Duration::from_secs(5);

pub struct JwksCache {
    nats: async_nats::Client,
    subjects: Subjects,
    last_fetch: Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(nats: async_nats::Client, subjects: Subjects) -> Self {
        Self {
            nats,
            subjects,
            last_fetch: Mutex::new(None),
        }
    }

    /// Fetches the JWKS into `verifier`, unless it was fetched a moment ago.
    pub async fn refresh(&self, verifier: &Verifier) {
        if !verifier.accepts_parley_tokens() {
            return;
        }
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return;
        }
        *last = Some(Instant::now());
        let reply = self
            .nats
            .request(self.subjects.rpc_auth(AuthOp::Jwks.as_str()), "{}".into())
            .await;
        match reply.map(|r| rpc::decode::<Jwks>(&r.payload)) {
            Ok(Ok(jwks)) => {
                tracing::info!(keys = jwks.keys.len(), "JWKS fetched");
                verifier.set_jwks(&jwks);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "auth service refused the JWKS request"),
            Err(e) => tracing::warn!(error = %e, "cannot fetch the JWKS"),
        }
    }

    /// Verifies a token, fetching the JWKS once more if it names a key not seen yet.
    pub async fn verify(
        self: &Arc<Self>,
        verifier: &Verifier,
        token: &str,
    ) -> Result<Verified, VerifyError> {
        match verifier.verify(token) {
            Err(VerifyError::UnknownKey(_)) => {
                self.refresh(verifier).await;
                verifier.verify(token)
            }
            other => other,
        }
    }
}
