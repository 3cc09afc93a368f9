//! The `parley-persistence` NATS service: one endpoint per [`ChatOp`] under `{p}.rpc.chat`, in
//! the service API's queue group, so replicas share the load and `$SRV` discovery and stats work.

use std::sync::Arc;

use async_nats::service::ServiceExt;
use futures::StreamExt;
use parley_common::rpc::{self, bad_request};
use parley_common::subjects::ChatOp;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::{self, ChatContext};
use crate::error::{Error, Result};

/// Requests handled at once by one replica; more wait in NATS.
const MAX_CONCURRENT_REQUESTS: usize = 256;

pub const SERVICE_NAME: &str = "parley-persistence";

type Endpoints = futures::stream::SelectAll<
    futures::stream::BoxStream<'static, (ChatOp, async_nats::service::Request)>,
>;

/// The service with its endpoints subscribed, ready to [`ChatService::run`].
pub struct ChatService {
    ctx: ChatContext,
    service: async_nats::service::Service,
    endpoints: Endpoints,
}

impl ChatService {
    /// Registers the service and subscribes its endpoints; once this returns (and NATS is
    /// flushed) requests find a responder.
    pub async fn start(ctx: ChatContext) -> Result<Self> {
        let service = ctx
            .nats
            .service_builder()
            .description("Parley chat queries: open, history, sync, members")
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(Error::nats)?;
        let group = service.group(ctx.subjects.rpc_chat_group());
        let mut endpoints = futures::stream::SelectAll::new();
        for op in ChatOp::ALL {
            let endpoint = group.endpoint(op.as_str()).await.map_err(Error::nats)?;
            endpoints.push(endpoint.map(move |req| (op, req)).boxed());
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

    /// Serves the chat queries until `shutdown` is cancelled, then stops taking requests and
    /// lets those in hand finish.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            ctx,
            service,
            mut endpoints,
        } = self;
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
        let tracker = TaskTracker::new();
        tracing::info!(group = %ctx.subjects.rpc_chat_group(), "chat service listening");
        loop {
            let (op, request) = tokio::select! {
                () = shutdown.cancelled() => break,
                next = endpoints.next() => match next {
                    Some(x) => x,
                    None => break,
                },
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
        if let Err(e) = service.stop().await {
            tracing::warn!(error = %e, "chat service did not stop cleanly");
        }
        Ok(())
    }
}

async fn handle(ctx: &ChatContext, op: ChatOp, payload: &[u8]) -> bytes::Bytes {
    match op {
        ChatOp::Open => answer(payload, |r| chat::open(ctx, r)).await,
        ChatOp::History => answer(payload, |r| chat::history(ctx, r)).await,
        ChatOp::Sync => answer(payload, |r| chat::sync(ctx, r)).await,
        ChatOp::Members => answer(payload, |r| chat::members(ctx, r)).await,
    }
}

async fn answer<Req, Rep, F, Fut>(payload: &[u8], f: F) -> bytes::Bytes
where
    Req: DeserializeOwned,
    Rep: serde::Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Rep, parley_common::wire::ApiError>>,
{
    let result = match serde_json::from_slice::<Req>(payload) {
        Ok(req) => f(req).await,
        Err(e) => Err(bad_request(&e)),
    };
    rpc::encode(&result)
}
