//! Running a NATS request/reply service (async-nats `service` API: queue group, `$SRV`
//! discovery and stats) whose endpoints share one handler, with bounded concurrency and a
//! graceful stop. The persistence and auth roles are both such services.

use std::future::Future;
use std::sync::Arc;

use async_nats::service::{Request, ServiceExt};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::nats::SetupError;
use crate::rpc::{self, bad_request};
use crate::wire::ApiError;

/// A started service: its endpoints are subscribed and the server has them.
pub struct NatsService<Op> {
    nats: async_nats::Client,
    service: async_nats::service::Service,
    group: String,
    endpoints: SelectAll<BoxStream<'static, (Op, &'static str, Request)>>,
    shed: crate::metrics::Counter,
}

impl<Op: Copy + Send + 'static> NatsService<Op> {
    /// Registers service `name` with one endpoint per `(op, name)` under `group`. Once this
    /// returns, requests find a responder.
    pub async fn start(
        nats: &async_nats::Client,
        name: &'static str,
        description: &str,
        group: String,
        ops: impl IntoIterator<Item = (Op, &'static str)>,
    ) -> Result<Self, SetupError> {
        let err = |e: async_nats::Error| SetupError(format!("service {name}: {e}"));
        let service = nats
            .service_builder()
            .description(description)
            .start(name, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(err)?;
        let service_group = service.group(group.clone());
        let mut endpoints = SelectAll::new();
        for (op, endpoint_name) in ops {
            let endpoint = service_group.endpoint(endpoint_name).await.map_err(err)?;
            let name = endpoint_name;
            endpoints.push(endpoint.map(move |req| (op, name, req)).boxed());
        }
        crate::nats::round_trip(nats).await?;
        Ok(Self {
            nats: nats.clone(),
            service,
            group,
            endpoints,
            shed: crate::metrics::rpc_shed(name),
        })
    }

    /// Answers requests with `handler(op, payload)`, at most `max_concurrent` at once, until
    /// `shutdown` is cancelled; then takes no more and lets those in hand finish. A request
    /// taken after its [`rpc::DEADLINE_HEADER`] is dropped unanswered.
    pub async fn run<H, Fut>(self, max_concurrent: usize, shutdown: CancellationToken, handler: H)
    where
        H: Fn(Op, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Bytes> + Send + 'static,
    {
        let Self {
            nats,
            service,
            group,
            mut endpoints,
            shed,
        } = self;
        let permits = Arc::new(Semaphore::new(max_concurrent));
        let tracker = TaskTracker::new();
        tracing::info!(%group, "service listening");
        loop {
            let (op, name, request) = tokio::select! {
                () = shutdown.cancelled() => break,
                next = endpoints.next() => match next { Some(x) => x, None => break },
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            // Waited so long (in NATS, or for a permit) that the caller has given up: its
            // answer would go nowhere, and its client is already retrying.
            let deadline = request
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get(rpc::DEADLINE_HEADER))
                .map(|v| v.as_str());
            if rpc::past_deadline(deadline, chrono::Utc::now().timestamp_millis()) {
                shed.inc();
                tracing::debug!(op = name, "dropped a request past its deadline");
                continue;
            }
            // Each request continues the caller's trace.
            let span = tracing::info_span!("rpc", op = name);
            crate::trace::continue_from(&span, request.message.headers.as_ref());
            let reply = handler(op, request.message.payload.clone()).instrument(span);
            tracker.spawn(async move {
                if let Err(e) = request.respond(Ok(reply.await)).await {
                    tracing::warn!(error = %e, "cannot send a reply");
                }
                drop(permit);
            });
        }
        drop(endpoints);
        tracker.close();
        tracker.wait().await;
        if let Err(e) = service.stop().await {
            tracing::warn!(error = %e, "service did not stop cleanly");
        }
        let _ = nats.flush().await;
    }
}

/// Decodes a request, runs `f` on it and encodes the reply envelope; a request that does not
/// parse is answered `invalid`.
pub async fn answer<Req, Rep, F, Fut>(payload: &[u8], f: F) -> Bytes
where
    Req: DeserializeOwned,
    Rep: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Rep, ApiError>>,
{
    let result = match serde_json::from_slice::<Req>(payload) {
        Ok(req) => f(req).await,
        Err(e) => Err(bad_request(&e)),
    };
    rpc::encode(&result)
}
