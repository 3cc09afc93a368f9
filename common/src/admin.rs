//! The admin port every role serves (DESIGN §7): `/healthz` (the process is alive), `/readyz`
//! (its dependencies answer and it is not draining), for Kubernetes probes, and `/metrics`
//! (Prometheus).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Probe = Arc<dyn Fn() -> ProbeFuture + Send + Sync>;

/// How long one dependency check may take before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The named checks behind `/readyz`, and the draining flag that turns it false on shutdown.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Vec<(&'static str, Probe)>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    /// Adds a check; it passes when its future returns `Ok`.
    pub fn add<F, Fut>(&mut self, name: &'static str, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.probes
            .push((name, Arc::new(move || Box::pin(probe()) as ProbeFuture)));
    }

    /// A check that NATS is connected.
    pub fn add_nats(&mut self, client: async_nats::Client) {
        self.add("nats", move || {
            let state = client.connection_state();
            async move {
                match state {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        });
    }

    /// Merges another role's checks (for `parley all`).
    pub fn merge(&mut self, other: Readiness) {
        self.probes.extend(other.probes);
    }

    /// From now on `/readyz` answers 503.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Runs every check; `Ok` when all pass, else the name and cause of each failure.
    pub async fn check(&self) -> (bool, BTreeMap<&'static str, String>) {
        let mut results = BTreeMap::new();
        let mut ready = !self.is_draining();
        if self.is_draining() {
            results.insert("draining", "true".to_owned());
        }
        let outcomes = futures::future::join_all(self.probes.iter().map(|(name, probe)| {
            let fut = probe();
            async move {
                let r = tokio::time::timeout(PROBE_TIMEOUT, fut)
                    .await
                    .unwrap_or_else(|_| Err("timed out".into()));
                (*name, r)
            }
        }))
        .await;
        for (name, r) in outcomes {
            match r {
                Ok(()) => {
                    results.insert(name, "ok".to_owned());
                }
                Err(e) => {
                    ready = false;
                    results.insert(name, e);
                }
            }
        }
        (ready, results)
    }
}

/// The admin router: mount it on the admin listener.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::encode(),
    )
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    let (ready, checks) = readiness.check().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready, "checks": checks })))
}

/// Serves the admin router on `listener` until `shutdown` resolves, under the default HTTP
/// limits (header and idle timeouts, connections per address).
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::http_server::serve(
        listener,
        router(readiness),
        crate::http_server::HttpLimits::default(),
        None,
        shutdown,
    )
    .await
}
