//! Building and running the persistence role.

use std::future::Future;

use async_nats::jetstream;
use parley_common::admin::Readiness;
use parley_common::nats;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::chat::ChatContext;
use crate::config::PersistenceConfig;
use crate::error::{Error, Result};
use crate::service::ChatService;
use crate::{consumer, db};

/// The persistence role, connected and ready to run.
pub struct Application {
    config: PersistenceConfig,
    pool: PgPool,
    writers: PgPool,
    nats: async_nats::Client,
    js: jetstream::Context,
    consumers: consumer::Consumers,
    service: ChatService,
}

impl Application {
    /// Connects to Postgres (and migrates it) and to NATS (declares the streams, creates the
    /// consumer, subscribes the service's endpoints). Fails when either does not answer. Once
    /// this returns, queries find a responder.
    pub async fn build(config: PersistenceConfig) -> Result<Self> {
        let pool = db::connect(&config, config.pool_size).await?;
        db::migrate(&pool).await?;
        // The partition writers' own connections (`PARLEY_PERSIST_PARALLEL`), apart from the
        // queries' pool: the chat queries get all of theirs whatever the writers do.
        let writers = db::connect(&config, config.parallel as u32).await?;
        let nats = nats::connect(&config.nats, "parley-persistence", "persistence")
            .await
            .map_err(Error::nats)?;
        let js = jetstream::new(nats.clone());
        nats::ensure_streams(&js, &config.nats.prefix, config.streams)
            .await
            .map_err(Error::nats)?;
        let consumers = consumer::create(&config, &js).await?;
        let service = ChatService::start(ChatContext {
            pool: pool.clone(),
            nats: nats.clone(),
            subjects: config.nats.prefix.clone(),
            max_members: config.max_members,
        })
        .await?;
        Ok(Self {
            config,
            pool,
            writers,
            nats,
            js,
            consumers,
            service,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `/readyz` checks: NATS connected, Postgres answering.
    pub fn readiness(&self) -> Readiness {
        let mut r = Readiness::default();
        r.add_nats(self.nats.clone());
        let pool = self.pool.clone();
        r.add("postgres", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("select 1")
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        });
        r
    }

    /// Consumes and serves until `shutdown` resolves; then stops pulling, finishes and acks the
    /// batch in hand, and lets queries in flight answer.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let Self {
            config,
            pool,
            writers,
            nats,
            js,
            consumers,
            service,
        } = self;
        let token = CancellationToken::new();
        let sampler = sample(consumers.clone(), pool.clone(), token.clone());
        // Whichever part ends first (shutdown, or a part failing) stops the others.
        let consumer = async {
            let r = consumer::run(&config, consumers, js, writers, token.clone()).await;
            token.cancel();
            r
        };
        let service = async {
            let r = service.run(token.clone()).await;
            token.cancel();
            r
        };
        let stop = async {
            tokio::select! {
                () = shutdown => token.cancel(),
                () = token.cancelled() => {}
            }
        };
        let ((), (), consumed, served) = tokio::join!(stop, sampler, consumer, service);
        if let Err(e) = nats.flush().await {
            tracing::warn!(error = %e, "cannot flush NATS at shutdown");
        }
        consumed.and(served)
    }
}

/// How often the partitions' backlog and the pool's use are sampled for `/metrics`.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Samples the partitions' backlog and the pool's use until `stop`. Every replica reports every
/// partition (the same figures): a partition nobody writes still shows its backlog.
async fn sample(consumers: consumer::Consumers, pool: PgPool, stop: CancellationToken) {
    let metrics = crate::metrics::PersistenceMetrics::get();
    loop {
        parley_common::metrics::sample_pool("persistence", pool.size(), pool.num_idle());
        let (mut pending, mut ack_pending) = (0u64, 0u64);
        for partition in &consumers.partitions {
            match partition.consumer.get_info().await {
                Ok(info) => {
                    pending += info.num_pending;
                    ack_pending += info.num_ack_pending as u64;
                    let lag = info.num_pending + info.num_ack_pending as u64;
                    metrics
                        .partition_lag(partition.number)
                        .set(i64::try_from(lag).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::debug!(error = %e, "cannot read a partition's consumer"),
            }
        }
        metrics
            .pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        metrics
            .ack_pending
            .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}
