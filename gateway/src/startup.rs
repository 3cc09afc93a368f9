//! Building, running and draining the gateway.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use async_nats::jetstream;
use axum::Router;
use axum::routing::get;
use parley_auth::Verifier;
use parley_common::admin::Readiness;
use parley_common::nats;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::{self, ChatClient};
use crate::config::GatewayConfig;
use crate::error::{Error, Result};
use crate::fanout::Fanout;
use crate::jwks::JwksCache;
use crate::metrics::GatewayMetrics;
use crate::presence::{self, Presence};
use crate::state::{AppState, Shared};
use crate::transport::{socketio, ws};
use crate::typing::Typing;
use crate::{auth, http, openapi, rest, revocation, web};

/// Sends awaiting the broker's acknowledgement, across the gateway; past it, sends wait.
const MAX_PENDING_PUBLISH_ACKS: usize = 10_000;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    nats: async_nats::Client,
    readiness: Readiness,
    drain_timeout: std::time::Duration,
    presence_changes: mpsc::UnboundedReceiver<presence::Change>,
    web_dir: Option<std::path::PathBuf>,
    http: parley_common::http_server::HttpLimits,
    /// Peers not held to the per-address connection cap (trusted proxies).
    exempt: Option<parley_common::http_server::Exempt>,
}

impl Application {
    /// Connects to NATS, declares the streams and binds the HTTP port.
    pub async fn build(config: GatewayConfig) -> Result<Self> {
        let metrics = GatewayMetrics::get();
        let client = nats::connect(&config.nats, "parley-gateway", "gateway")
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(MAX_PENDING_PUBLISH_ACKS)
            .backpressure_on_inflight(true)
            .build(client.clone());
        nats::ensure_streams(&js, &config.nats.prefix, config.streams)
            .await
            .map_err(|e| Error::Nats(e.to_string()))?;
        let addr = format!("{}:{}", config.host, config.port);
        let listener = parley_common::http_server::bind(&addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let subjects = config.nats.prefix.clone();
        let (presence, tracker, presence_changes) =
            Presence::start(&js, subjects.clone(), config.streams, config.presence_ttl)
                .await
                .map_err(|e| Error::Nats(e.to_string()))?;
        let trusted = config.limits.trusted_proxies.clone();
        let state = Arc::new(Shared {
            chat: ChatClient::new(client.clone(), subjects.clone()),
            fanout: Fanout::new(
                client.clone(),
                subjects.clone(),
                config.limits.clone(),
                tracker,
                metrics.clone(),
            ),
            presence,
            typing: Typing::new(client.clone(), subjects.clone()),
            verifier: Verifier::new(&config.auth),
            jwks: Arc::new(JwksCache::new(
                client.clone(),
                subjects.clone(),
                config.revoked_sessions_max,
            )),
            subjects,
            js,
            addresses: crate::addresses::AddressCounter::new(config.limits.max_sockets_per_address),
            rates: crate::limits::UserRates::from_limits(&config.limits),
            connects: crate::limits::Connects::new(config.limits.connect_rate),
            limits: config.limits,
            metrics,
            draining: CancellationToken::new(),
            sockets: TaskTracker::new(),
            origins: config.allowed_origins,
        });
        let mut readiness = Readiness::default();
        readiness.add_nats(client.clone());
        Ok(Self {
            listener,
            state,
            nats: client,
            readiness,
            drain_timeout: config.drain_timeout,
            presence_changes,
            web_dir: config.web_dir,
            http: config.http,
            // Connections from a trusted proxy carry many clients: the per-address cap of the
            // HTTP server does not count them (the socket cap counts each client behind it).
            exempt: (!trusted.is_empty()).then(|| {
                Arc::new(move |ip| trusted.contains(ip)) as parley_common::http_server::Exempt
            }),
        })
    }

    /// Lifts the per-address connection cap for the peers `exempt` accepts: connections from a
    /// trusted proxy carry many clients.
    pub fn exempt_from_address_cap(mut self, exempt: parley_common::http_server::Exempt) -> Self {
        self.exempt = Some(exempt);
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    pub fn router(state: AppState, web_dir: Option<&std::path::Path>) -> Router {
        let (socketio, _io) = socketio::layer(state.clone());
        Router::new()
            .route(
                "/ws",
                get(ws::upgrade).route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    rest::connect_rate,
                )),
            )
            .merge(http::routes())
            .merge(rest::routes())
            .merge(openapi::routes())
            .merge(web::routes(web_dir))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::guard_unsafe_requests,
            ))
            .with_state(state.clone())
            .layer(socketio)
            .layer(axum::middleware::from_fn_with_state(
                state,
                socketio::admit_handshake,
            ))
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns false, no new connections
    /// are taken, every socket is told `server:draining` (with a jittered reconnect delay) and
    /// closed, and the sockets get up to the drain timeout to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let state = self.state.clone();
        let readiness = self.readiness.clone();
        let draining = state.draining.clone();
        let addr = self.local_addr();
        tracing::info!(%addr, "gateway listening");
        let revocations = revocation::watch(state.clone()).await?;
        let keys = load_keys(state.clone()).await;
        let resync = tokio::spawn(resync_after_outages(state.clone(), self.nats.clone()));
        let membership = chat::watch_changes(state.clone()).await?;
        let presence = tokio::spawn(
            state
                .presence
                .clone()
                .run(self.presence_changes, state.draining.clone()),
        );
        // The server sets TCP_NODELAY on every connection: frames go out as they are ready.
        parley_common::http_server::serve(
            self.listener,
            Self::router(state.clone(), self.web_dir.as_deref()),
            self.http,
            self.exempt,
            async move {
                shutdown.await;
                tracing::info!("stopping: not ready, every socket told to drain");
                readiness.set_draining();
                draining.cancel();
            },
        )
        .await?;
        let drain_started = std::time::Instant::now();
        tracing::info!(
            sockets = state.sockets.len(),
            "no longer accepting; waiting for sockets to close"
        );
        revocations.abort();
        membership.abort();
        keys.abort();
        resync.abort();
        state.sockets.close();
        if tokio::time::timeout(self.drain_timeout, state.sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = state.sockets.len(),
                "drain timed out with sockets open"
            );
        }
        tracing::info!(
            left = state.sockets.len(),
            ms = drain_started.elapsed().as_millis() as u64,
            "sockets closed"
        );
        // Presence stopped heartbeating at `draining`: its users stay online for the TTL, time to
        // reconnect elsewhere unnoticed.
        let _ = presence.await;
        if let Err(e) = self.nats.flush().await {
            tracing::warn!(error = %e, "cannot flush NATS at shutdown");
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// How often the NATS client's count of connections is looked at.
const RECONNECT_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// Tells every socket `server:resync` each time the NATS connection comes back: deliveries
/// announced while this gateway was away never reached its sockets, which stayed open, and a
/// client sees no gap until its conversation's next message. (The subscriptions are back once
/// the client has flushed: it sends them first on a reconnect.)
async fn resync_after_outages(state: AppState, nats: async_nats::Client) {
    let connects = || {
        nats.statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut seen = connects();
    let mut tick = tokio::time::interval(RECONNECT_CHECK);
    loop {
        tokio::select! {
            () = state.draining.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = connects();
        if now == seen || nats.connection_state() != async_nats::connection::State::Connected {
            continue;
        }
        if nats.flush().await.is_err() {
            continue;
        }
        seen = now;
        let told = state
            .fanout
            .to_everyone(&parley_common::wire::ServerEvent::ServerResync {});
        tracing::info!(sockets = told, "NATS is back: told every socket to sync");
    }
}

/// Fetches the auth role's JWKS until it answers: at once, then again quickly while it is
/// starting. (An unknown `kid` later refetches on its own, [`JwksCache::verify`].)
///
/// The first fetch is made here, before the task is spawned, like the first load of the
/// signed-out sessions: when the auth role answers (the usual case, and always in `parley all`)
/// the keys are in before the first token arrives, and only a role that does not answer yet is
/// waited for in the background.
async fn load_keys(state: AppState) -> tokio::task::JoinHandle<()> {
    tracing::debug!("loading the auth role's keys (JWKS)");
    if state.jwks.refresh(&state.verifier).await {
        return tokio::spawn(async {});
    }
    tokio::spawn(retry_keys(state))
}

async fn retry_keys(state: AppState) {
    let mut retry = DependencyRetry::default();
    loop {
        retry.note(&"no answer yet", "waiting for the auth role's keys (JWKS)");
        if !retry.wait(&state.draining).await || state.jwks.refresh(&state.verifier).await {
            return;
        }
    }
}

/// Retries of a call to a role that may be starting: 100 ms apart at first, doubling to 2 s, so
/// a dependency that is merely starting costs at most a few hundred milliseconds, and one that
/// is down costs the broker a request every 2 s. Logs the first failure and then every tenth.
#[derive(Default)]
pub(crate) struct DependencyRetry {
    attempts: u32,
}

impl DependencyRetry {
    /// The wait before retry number `attempt` (0-based).
    pub(crate) fn delay(attempt: u32) -> std::time::Duration {
        std::time::Duration::from_millis((100u64 << attempt.min(5)).min(2_000))
    }

    /// Logs a failed attempt (the first at info, every tenth at warn).
    pub(crate) fn note(&self, error: &dyn std::fmt::Display, what: &str) {
        if self.attempts == 0 {
            tracing::info!(error = %error, "{what}; retrying");
        } else if self.attempts.is_multiple_of(10) {
            tracing::warn!(error = %error, attempts = self.attempts, "{what}; still retrying");
        } else {
            tracing::debug!(error = %error, "{what}");
        }
    }

    /// Waits before the next attempt; false if `stop` was cancelled meanwhile.
    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = Self::delay(self.attempts);
        self.attempts += 1;
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DependencyRetry;
    use std::time::Duration;

    #[test]
    fn dependency_retries_start_fast_and_settle_at_two_seconds() {
        let delays: Vec<_> = (0..8).map(DependencyRetry::delay).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[4], Duration::from_millis(1_600));
        assert!(delays[5..].iter().all(|d| *d == Duration::from_secs(2)));
    }
}
