//! Persistence settings (DESIGN §8).

use std::time::Duration;

use parley_common::config::{ConfigError, Env, NatsConfig, Secret};
use parley_common::nats::StreamSettings;

#[derive(Debug, Clone)]
pub struct PersistenceConfig {
    pub database_url: Secret,
    /// Connections in the pool (`DATABASE_POOL_SIZE`).
    pub pool_size: u32,
    pub nats: NatsConfig,
    pub streams: StreamSettings,
    /// The most commands written in one transaction (`PARLEY_PERSIST_BATCH`).
    pub batch_size: usize,
    /// Commands handed to this consumer and not yet acked, across all replicas.
    pub max_ack_pending: i64,
    /// How long the broker waits for an ack before redelivering.
    pub ack_wait: Duration,
}

impl PersistenceConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let batch_size: usize = env.parse_or("PARLEY_PERSIST_BATCH", 500)?;
        if batch_size == 0 || batch_size > 10_000 {
            return Err(ConfigError::Invalid {
                name: "PARLEY_PERSIST_BATCH",
                reason: format!("{batch_size}: expected 1 to 10000"),
            });
        }
        Ok(Self {
            database_url: env.secret("DATABASE_URL").ok_or(ConfigError::Missing {
                name: "DATABASE_URL",
            })?,
            pool_size: env.parse_or("DATABASE_POOL_SIZE", 10)?,
            nats: NatsConfig::from_env(env)?,
            streams: StreamSettings {
                replicas: env.parse_or("PARLEY_STREAM_REPLICAS", 1)?,
            },
            batch_size,
            max_ack_pending: 20_000,
            ack_wait: Duration::from_secs(env.parse_or("PARLEY_ACK_WAIT_SECONDS", 30)?),
        })
    }
}
