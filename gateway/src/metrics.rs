//! The gateway's metrics (DESIGN §10), registered once per process (gateways in one process
//! share them). Labels come from fixed sets: the transport, an error code.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parley_common::metrics::{Counter, Family, Gauge, Histogram, latency_histogram, register};
use parley_common::wire::ErrorCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Transport {
    Ws,
    SocketIo,
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        std::fmt::Write::write_str(
            encoder,
            match self {
                Transport::Ws => "ws",
                Transport::SocketIo => "socketio",
            },
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: Transport,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub transport: Transport,
    /// A fixed set: the labels of `session::connection::End`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: ErrorCode,
}

/// Cheap to clone: every handle shares its value.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub connections: Family<TransportLabel, Gauge>,
    pub closed: Family<ClosedLabels, Counter>,
    pub accepted: Counter,
    pub rejected: Family<CodeLabel, Counter>,
    pub delivered: Counter,
    pub delivery_latency: Histogram,
    /// Frame read to the broker's acknowledgement.
    pub publish_latency: Histogram,
    /// Stored by persistence to handed to a socket.
    pub deliver_latency: Histogram,
    /// Connects refused past the connect rate.
    pub connects_refused: Counter,
}

impl GatewayMetrics {
    /// The process's gateway metrics, registered on first use.
    pub fn get() -> Arc<Self> {
        static METRICS: OnceLock<Arc<GatewayMetrics>> = OnceLock::new();
        METRICS.get_or_init(|| Arc::new(Self::register())).clone()
    }

    fn register() -> Self {
        let m = Self {
            connections: Family::default(),
            closed: Family::default(),
            accepted: Counter::default(),
            rejected: Family::default(),
            delivered: Counter::default(),
            delivery_latency: latency_histogram(),
            publish_latency: latency_histogram(),
            deliver_latency: latency_histogram(),
            connects_refused: Counter::default(),
        };
        register(|r| {
            r.register(
                "connections",
                "Open client connections, by transport",
                m.connections.clone(),
            );
            r.register(
                "connections_closed",
                "Client connections ended, by transport and reason",
                m.closed.clone(),
            );
            r.register(
                "messages_accepted",
                "Sends the broker acknowledged (answered accepted)",
                m.accepted.clone(),
            );
            r.register(
                "messages_rejected",
                "Sends refused, by error code",
                m.rejected.clone(),
            );
            r.register(
                "messages_delivered",
                "New messages handed to a recipient's socket (one per socket)",
                m.delivered.clone(),
            );
            r.register(
                "delivery_latency_seconds",
                "From a send accepted to the message handed to a recipient's socket",
                m.delivery_latency.clone(),
            );
            r.register(
                "publish_latency_seconds",
                "Stage: from a send read to the broker's acknowledgement",
                m.publish_latency.clone(),
            );
            r.register(
                "deliver_latency_seconds",
                "Stage: from a message stored to it handed to a recipient's socket",
                m.deliver_latency.clone(),
            );
            r.register(
                "connects_refused",
                "Connects answered 503 with Retry-After: past the gateway's connect rate \
                 (PARLEY_CONNECT_RATE)",
                m.connects_refused.clone(),
            );
        });
        m
    }

    pub fn connect_refused(&self) {
        self.connects_refused.inc();
    }

    pub fn rejected(&self, code: ErrorCode) {
        self.rejected.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn published(&self, took: Duration) {
        self.accepted.inc();
        self.publish_latency.observe(took.as_secs_f64());
    }

    /// Counts a connection that ended, with why (`End::label`).
    pub fn closed(&self, transport: Transport, reason: &'static str) {
        self.closed
            .get_or_create(&ClosedLabels { transport, reason })
            .inc();
    }

    /// Counts a connection until the guard drops.
    pub fn connected(self: &Arc<Self>, transport: Transport) -> ConnectionGuard {
        self.connections
            .get_or_create(&TransportLabel { transport })
            .inc();
        ConnectionGuard {
            metrics: self.clone(),
            transport,
        }
    }
}

pub struct ConnectionGuard {
    metrics: Arc<GatewayMetrics>,
    transport: Transport,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .connections
            .get_or_create(&TransportLabel {
                transport: self.transport,
            })
            .dec();
    }
}
