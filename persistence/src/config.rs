//! Persistence settings (DESIGN §8).

use std::time::Duration;

use parley_common::config::{ConfigError, Env, NatsConfig, Secret};
use parley_common::nats::StreamSettings;

#[derive(Debug, Clone)]
pub struct PersistenceConfig {
    pub database_url: Secret,
    /// Connections in the pool of the chat queries (`DATABASE_POOL_SIZE`); the partition
    /// writers have a pool of their own, of `parallel` connections.
    pub pool_size: u32,
    pub nats: NatsConfig,
    pub streams: StreamSettings,
    /// The most commands written in one transaction (`PARLEY_PERSIST_BATCH`).
    pub batch_size: usize,
    /// Commands of one partition handed to its owner and not yet acked.
    pub max_ack_pending: i64,
    /// The most partitions writing a transaction at once (`PARLEY_PERSIST_PARALLEL`).
    pub parallel: usize,
    /// How long the broker waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// `PARLEY_MAX_MEMBERS`, default 256: the most members a conversation may have, enforced
    /// where members are written (open, member:add), so every path is covered.
    pub max_members: usize,
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
        let pool_size: u32 = env.parse_or("DATABASE_POOL_SIZE", 10)?;
        // The writers' own pool is this size, beside the queries' pool: a burst of writes (a
        // backlog after an outage, a reconnect storm's resends) never leaves the queries
        // (sync, members, contacts) waiting for a connection, nor the other way round.
        let parallel: usize = env.parse_or(
            "PARLEY_PERSIST_PARALLEL",
            (pool_size as usize).saturating_sub(2).max(1),
        )?;
        if parallel == 0 {
            return Err(ConfigError::Invalid {
                name: "PARLEY_PERSIST_PARALLEL",
                reason: "must be at least 1".into(),
            });
        }
        let max_members: usize =
            env.parse_or("PARLEY_MAX_MEMBERS", crate::chat::DEFAULT_MAX_MEMBERS)?;
        if !(2..=crate::chat::MAX_MEMBERS_LIMIT).contains(&max_members) {
            return Err(ConfigError::Invalid {
                name: "PARLEY_MAX_MEMBERS",
                reason: format!(
                    "{max_members}: expected 2 to {}",
                    crate::chat::MAX_MEMBERS_LIMIT
                ),
            });
        }
        Ok(Self {
            database_url: env.secret("DATABASE_URL").ok_or(ConfigError::Missing {
                name: "DATABASE_URL",
            })?,
            pool_size,
            nats: NatsConfig::for_role(env, parley_common::nats_auth::BrokerRole::Persistence)?,
            streams: StreamSettings::from_env(env)?,
            batch_size,
            max_ack_pending: 20_000,
            parallel,
            ack_wait: ack_wait(env)?,
            max_members,
        })
    }
}

/// `PARLEY_ACK_WAIT_SECONDS` (2): how long a command handed to a replica waits for its ack
/// before the broker hands it out again. It bounds recovery after a replica or the broker dies
/// with commands in hand, so it is short; commands held longer (a slow write, a database
/// outage) are reported in progress every second, hence at least 2 s.
fn ack_wait(env: &Env) -> Result<Duration, ConfigError> {
    let seconds: u64 = env.parse_or("PARLEY_ACK_WAIT_SECONDS", 2)?;
    if !(2..=3_600).contains(&seconds) {
        return Err(ConfigError::Invalid {
            name: "PARLEY_ACK_WAIT_SECONDS",
            reason: format!("{seconds}: expected 2 to 3600 seconds"),
        });
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ack_wait_is_two_seconds_unless_set_and_never_under_two() {
        let read = |v: &str| ack_wait(&Env::from_pairs([("PARLEY_ACK_WAIT_SECONDS", v)]));
        assert_eq!(ack_wait(&Env::default()).unwrap(), Duration::from_secs(2));
        assert_eq!(read("30").unwrap(), Duration::from_secs(30));
        for bad in ["0", "1", "3601", "soon"] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains("PARLEY_ACK_WAIT_SECONDS"), "{bad}: {err}");
        }
    }
}
