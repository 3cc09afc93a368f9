//! Settings of the auth role (DESIGN §5, §8).

use std::time::Duration;

use parley_common::config::{ConfigError, Env, NatsConfig, Secret};

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub database_url: Secret,
    pub pool_size: u32,
    pub nats: NatsConfig,
    /// `AUTH_ISSUER`: the `iss` of Parley access tokens.
    pub issuer: String,
    /// `AUTH_AUDIENCE`: their `aud`.
    pub audience: String,
    /// Access token lifetime: 15 minutes.
    pub access_ttl: Duration,
    /// How long a session (cookie and refresh tokens) lasts: 30 days.
    pub session_ttl: Duration,
    /// Wrong passwords allowed per account, and per client address, in a minute.
    pub login_attempts_per_minute: u32,
}

pub const DEFAULT_ISSUER: &str = "parley";
pub const DEFAULT_AUDIENCE: &str = "parley";

impl AuthConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: env.secret("DATABASE_URL").ok_or(ConfigError::Missing {
                name: "DATABASE_URL",
            })?,
            pool_size: env.parse_or("DATABASE_POOL_SIZE", 10)?,
            nats: NatsConfig::from_env(env)?,
            issuer: env.string_or("AUTH_ISSUER", DEFAULT_ISSUER),
            audience: env.string_or("AUTH_AUDIENCE", DEFAULT_AUDIENCE),
            access_ttl: Duration::from_secs(env.parse_or("AUTH_ACCESS_TTL_SECONDS", 900)?),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            login_attempts_per_minute: 10,
        })
    }
}
