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
use crate::{consumer, db, service};

/// The persistence role, connected and ready to run.
pub struct Application {
    config: PersistenceConfig,
    pool: PgPool,
    nats: async_nats::Client,
    js: jetstream::Context,
}

impl Application {
    /// Connects to Postgres (and migrates it) and to NATS (and declares the streams). Fails
    /// when either does not answer.
    pub async fn build(config: PersistenceConfig) -> Result<Self> {
        let pool = db::connect(&config).await?;
        db::migrate(&pool).await?;
        let nats = nats::connect(&config.nats, "parley-persistence")
            .await
            .map_err(Error::nats)?;
        let js = jetstream::new(nats.clone());
        nats::ensure_streams(&js, &config.nats.prefix, config.streams)
            .await
            .map_err(Error::nats)?;
        Ok(Self {
            config,
            pool,
            nats,
            js,
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
        let token = CancellationToken::new();
        let ctx = ChatContext {
            pool: self.pool.clone(),
            nats: self.nats.clone(),
            subjects: self.config.nats.prefix.clone(),
        };
        // Whichever part ends first (shutdown, or a part failing) stops the others.
        let consumer = async {
            let r = consumer::run(
                &self.config,
                self.js.clone(),
                self.pool.clone(),
                token.clone(),
            )
            .await;
            token.cancel();
            r
        };
        let service = async {
            let r = service::run(ctx, token.clone()).await;
            token.cancel();
            r
        };
        let stop = async {
            tokio::select! {
                () = shutdown => token.cancel(),
                () = token.cancelled() => {}
            }
        };
        let ((), consumed, served) = tokio::join!(stop, consumer, service);
        if let Err(e) = self.nats.flush().await {
            tracing::warn!(error = %e, "cannot flush NATS at shutdown");
        }
        consumed.and(served)
    }
}
