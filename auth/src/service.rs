//! The `parley-auth` NATS service: one endpoint per [`AuthOp`] under `{p}.rpc.auth`.

use std::sync::Arc;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use parley_common::rpc::{self, bad_request};
use parley_common::wire::ApiError;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::{self, AuthContext};
use crate::api::AuthOp;
use crate::error::{Error, Result};

pub const SERVICE_NAME: &str = "parley-auth";

/// Requests in hand at once; password hashing is the expensive part, on the blocking pool.
const MAX_CONCURRENT_REQUESTS: usize = 64;

type Endpoints = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, (AuthOp, async_nats::service::Request)>,
>;

pub struct AuthService {
    ctx: Arc<AuthContext>,
    service: async_nats::service::Service,
    endpoints: Endpoints,
}

impl AuthService {
    /// Registers the service and subscribes its endpoints.
    pub async fn start(ctx: Arc<AuthContext>) -> Result<Self> {
        let service = ctx
            .nats
            .service_builder()
            .description("Parley accounts: register, login, token, refresh, logout, users, jwks")
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(Error::nats)?;
        let group = service.group(ctx.subjects.rpc_auth_group());
        let mut endpoints = futures::stream::SelectAll::new();
        for op in AuthOp::ALL {
            let endpoint = group.endpoint(op.as_str()).await.map_err(Error::nats)?;
            endpoints.push(endpoint.map(move |r| (op, r)).boxed());
        }
        // Requests find a responder once this returns.
        parley_common::nats::round_trip(&ctx.nats)
            .await
            .map_err(Error::nats)?;
        Ok(Self {
            ctx,
            service,
            endpoints,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            ctx,
            service,
            mut endpoints,
        } = self;
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
        let tracker = TaskTracker::new();
        tracing::info!(group = %ctx.subjects.rpc_auth_group(), "auth service listening");
        loop {
            let (op, request) = tokio::select! {
                () = shutdown.cancelled() => break,
                next = endpoints.next() => match next { Some(x) => x, None => break },
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let ctx = ctx.clone();
            tracker.spawn(async move {
                let reply = handle(&ctx, op, &request.message.payload).await;
                if let Err(e) = request.respond(Ok(reply)).await {
                    tracing::warn!(error = %e, op = op.as_str(), "cannot send a reply");
                }
                drop(permit);
            });
        }
        drop(endpoints);
        tracker.close();
        tracker.wait().await;
        let _ = service.stop().await;
        Ok(())
    }
}

async fn handle(ctx: &AuthContext, op: AuthOp, payload: &[u8]) -> bytes::Bytes {
    match op {
        AuthOp::Register => answer(payload, |r| accounts::register(ctx, r)).await,
        AuthOp::Login => answer(payload, |r| accounts::login(ctx, r)).await,
        AuthOp::Token => answer(payload, |r| accounts::token(ctx, r)).await,
        AuthOp::Refresh => answer(payload, |r| accounts::refresh(ctx, r)).await,
        AuthOp::Logout => answer(payload, |r| accounts::logout(ctx, r)).await,
        AuthOp::Users => answer(payload, |r| accounts::search(ctx, r)).await,
        AuthOp::Jwks => rpc::encode_ok(&accounts::jwks(ctx)),
    }
}

async fn answer<Req, Rep, F, Fut>(payload: &[u8], f: F) -> bytes::Bytes
where
    Req: DeserializeOwned,
    Rep: serde::Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Rep, ApiError>>,
{
    let result = match serde_json::from_slice::<Req>(payload) {
        Ok(req) => f(req).await,
        Err(e) => Err(bad_request(&e)),
    };
    rpc::encode(&result)
}
