//! Persistence's metrics (DESIGN §10), registered once per process.

use std::sync::{Arc, OnceLock};

use parley_common::metrics::{Counter, Family, Gauge, Histogram, latency_histogram, register};
use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone)]
pub struct PersistenceMetrics {
    /// New rows stored (a redelivered duplicate is not counted again).
    pub persisted: Counter,
    pub batch_size: Histogram,
    /// From the gateway accepting a send to its row committed.
    pub persist_latency: Histogram,
    /// Commands in the stream not yet handed to any replica.
    pub pending: Gauge,
    /// Commands handed out and not yet acknowledged.
    pub ack_pending: Gauge,
    /// Commands the broker handed out again (after a crash, a timeout or a nak).
    pub redeliveries: Counter,
    pub dead_lettered: Counter,
    /// Seconds per batch transaction, from its start (waiting for a slot included) to commit.
    pub batch_seconds: Histogram,
    /// 1 for each partition this replica writes now.
    partition_owned: Family<PartitionLabel, Gauge>,
    /// Commands of each partition not yet acknowledged (waiting or being written).
    partition_lag: Family<PartitionLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: u16,
}

impl PersistenceMetrics {
    /// The gauge that says whether this replica writes `partition`.
    pub fn partition_owned(&self, partition: u16) -> Gauge {
        self.partition_owned
            .get_or_create(&PartitionLabel { partition })
            .clone()
    }

    /// The gauge of `partition`'s lag.
    pub fn partition_lag(&self, partition: u16) -> Gauge {
        self.partition_lag
            .get_or_create(&PartitionLabel { partition })
            .clone()
    }

    pub fn get() -> Arc<Self> {
        static METRICS: OnceLock<Arc<PersistenceMetrics>> = OnceLock::new();
        METRICS.get_or_init(|| Arc::new(Self::register())).clone()
    }

    fn register() -> Self {
        let m = Self {
            persisted: Counter::default(),
            batch_size: Histogram::new([
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
            ]),
            persist_latency: latency_histogram(),
            pending: Gauge::default(),
            ack_pending: Gauge::default(),
            redeliveries: Counter::default(),
            dead_lettered: Counter::default(),
            batch_seconds: latency_histogram(),
            partition_owned: Family::default(),
            partition_lag: Family::default(),
        };
        register(|r| {
            r.register(
                "messages_persisted",
                "Messages stored in Postgres",
                m.persisted.clone(),
            );
            r.register(
                "persist_batch_size",
                "Commands written per Postgres transaction",
                m.batch_size.clone(),
            );
            r.register(
                "persist_latency_seconds",
                "Stage: from a send accepted by the gateway to its row committed",
                m.persist_latency.clone(),
            );
            r.register(
                "consumer_pending",
                "Commands in PARLEY_IN not yet handed to a persistence replica",
                m.pending.clone(),
            );
            r.register(
                "consumer_ack_pending",
                "Commands handed to persistence replicas and not yet acknowledged",
                m.ack_pending.clone(),
            );
            r.register(
                "consumer_redeliveries",
                "Commands the broker delivered more than once",
                m.redeliveries.clone(),
            );
            r.register(
                "messages_dead_lettered",
                "Commands moved to the dead-letter stream",
                m.dead_lettered.clone(),
            );
            r.register(
                "persist_batch_seconds",
                "Seconds per batch transaction, waiting for a slot included",
                m.batch_seconds.clone(),
            );
            r.register(
                "persist_partition_owned",
                "1 for each partition of PARLEY_IN this replica writes",
                m.partition_owned.clone(),
            );
            r.register(
                "persist_partition_lag",
                "Commands of each partition not yet acknowledged (waiting or being written)",
                m.partition_lag.clone(),
            );
        });
        m
    }
}
