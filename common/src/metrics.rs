//! Prometheus metrics (DESIGN §10): names with the `parley_` prefix, counters ending in
//! `_total`, seconds for time, and labels from small fixed sets only (never a user or
//! conversation id). One registry per process, which the admin port serves at `/metrics` in the
//! classic text format (`text/plain; version=0.0.4`) that every Prometheus and
//! `promtool check metrics` read. Each role registers its metrics once per process (`parley all`
//! registers every role's); what every role has (its NATS connection, its database pool) carries
//! a `role` label.

use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;
pub use prometheus_client::registry::Registry;

fn global() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::with_prefix("parley")))
}

/// Registers metrics in the process's registry (names get the `parley_` prefix).
pub fn register(f: impl FnOnce(&mut Registry)) {
    f(&mut global().lock().expect("metrics registry lock"));
}

/// The process's metrics in the Prometheus text format.
pub fn encode() -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(
        &mut text,
        &global().lock().expect("metrics registry lock"),
    )
    .expect("writing to a String cannot fail");
    text
}

/// Buckets for latencies, 1 ms to 10 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Error codes as label values: a fixed set of seven.
impl prometheus_client::encoding::EncodeLabelValue for crate::wire::ErrorCode {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    role: &'static str,
    state: &'static str,
}

struct Shared {
    reconnects: Family<RoleLabel, Counter>,
    shed: Family<RoleLabel, Counter>,
    pool: Family<PoolLabel, Gauge>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let s = Shared {
            reconnects: Family::default(),
            shed: Family::default(),
            pool: Family::default(),
        };
        register(|r| {
            r.register(
                "nats_reconnects",
                "Times the NATS connection came back after a loss, by role",
                s.reconnects.clone(),
            );
            r.register(
                "rpc_requests_shed",
                "Requests a service dropped unanswered because their caller had stopped waiting \
                 (past the Parley-Deadline header), by role",
                s.shed.clone(),
            );
            r.register(
                "db_pool_connections",
                "Database pool connections, by role and state (idle or used)",
                s.pool.clone(),
            );
        });
        s
    })
}

/// The reconnect counter of `role`'s NATS connection.
pub fn nats_reconnects(role: &'static str) -> Counter {
    shared()
        .reconnects
        .get_or_create(&RoleLabel { role })
        .clone()
}

/// The counter of requests `role`'s service dropped past their deadline.
pub fn rpc_shed(role: &'static str) -> Counter {
    shared().shed.get_or_create(&RoleLabel { role }).clone()
}

/// Records `role`'s database pool now: `size` connections, `idle` of them idle.
pub fn sample_pool(role: &'static str, size: u32, idle: usize) {
    let idle = i64::try_from(idle).unwrap_or(i64::MAX);
    let pool = &shared().pool;
    pool.get_or_create(&PoolLabel {
        role,
        state: "idle",
    })
    .set(idle);
    pool.get_or_create(&PoolLabel {
        role,
        state: "used",
    })
    .set(i64::from(size) - idle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_in_prometheus_style() {
        nats_reconnects("gateway").inc();
        sample_pool("auth", 5, 2);
        let text = encode();
        assert!(
            text.contains("# TYPE parley_nats_reconnects_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"parley_nats_reconnects_total{role="gateway"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"parley_db_pool_connections{role="auth",state="used"} 3"#),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
