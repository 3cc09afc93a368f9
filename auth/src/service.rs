//! The `parley-auth` NATS service: one endpoint per [`AuthOp`] under `{p}.rpc.auth`.

use std::sync::Arc;

use bytes::Bytes;
use parley_common::rpc;
use parley_common::service::{NatsService, answer};
use tokio_util::sync::CancellationToken;

use crate::accounts::{self, AuthContext};
use crate::api::{AuthOp, RevokedReply, RevokedRequest, RevokedSession};
use crate::error::{Error, Result};

pub const SERVICE_NAME: &str = parley_common::nats_auth::BrokerRole::Auth.service_name();

/// Requests in hand at once; password hashing is the expensive part, on the blocking pool.
const MAX_CONCURRENT_REQUESTS: usize = 64;

pub struct AuthService {
    ctx: Arc<AuthContext>,
    inner: NatsService<AuthOp>,
}

impl AuthService {
    /// Registers the service; once this returns, requests find a responder.
    pub async fn start(ctx: Arc<AuthContext>) -> Result<Self> {
        let inner = NatsService::start(
            &ctx.nats,
            SERVICE_NAME,
            "Parley accounts: register, login, token, refresh, logout, users, jwks",
            ctx.subjects.rpc_auth_group(),
            AuthOp::ALL.map(|op| (op, op.as_str())),
        )
        .await
        .map_err(Error::nats)?;
        Ok(Self { ctx, inner })
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let ctx = self.ctx;
        self.inner
            .run(MAX_CONCURRENT_REQUESTS, shutdown, move |op, payload| {
                let ctx = ctx.clone();
                async move { handle(&ctx, op, &payload).await }
            })
            .await;
        Ok(())
    }
}

async fn handle(ctx: &AuthContext, op: AuthOp, payload: &[u8]) -> Bytes {
    match op {
        AuthOp::Register => answer(payload, |r| accounts::register(ctx, r)).await,
        AuthOp::Login => answer(payload, |r| accounts::login(ctx, r)).await,
        AuthOp::Token => answer(payload, |r| accounts::token(ctx, r)).await,
        AuthOp::Refresh => answer(payload, |r| accounts::refresh(ctx, r)).await,
        AuthOp::Logout => answer(payload, |r| accounts::logout(ctx, r)).await,
        AuthOp::Users => answer(payload, |r| accounts::search(ctx, r)).await,
        AuthOp::Jwks => rpc::encode_ok(&accounts::jwks(ctx)),
        AuthOp::Revoked => answer(payload, |r| revoked(ctx, r)).await,
    }
}

/// Sessions a page of [`AuthOp::Revoked`] holds: about 60 bytes each in JSON, well under NATS's
/// payload limit.
const REVOKED_PAGE: i64 = 5_000;

/// The sessions whose access tokens may still verify although they were revoked: those revoked
/// within the access-token lifetime (and a minute of clock skew).
async fn revoked(
    ctx: &AuthContext,
    req: RevokedRequest,
) -> std::result::Result<RevokedReply, parley_common::wire::ApiError> {
    let keep = ctx.config.access_ttl + std::time::Duration::from_secs(60);
    let rows = crate::store::sessions::revoked_since(&ctx.pool, keep, req.after, REVOKED_PAGE + 1)
        .await
        .map_err(Error::from)?;
    let more = rows.len() as i64 > REVOKED_PAGE;
    Ok(RevokedReply {
        sessions: rows
            .into_iter()
            .take(REVOKED_PAGE as usize)
            .map(|(id, revoked_at)| RevokedSession { id, revoked_at })
            .collect(),
        more,
        keep_seconds: keep.as_secs(),
    })
}
