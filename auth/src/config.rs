//! Settings of the auth role (DESIGN §5, §8).

use std::time::Duration;

use parley_common::config::{ConfigError, Env, NatsConfig, Secret};

use crate::limiter::LoginLimits;

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
    /// Wrong passwords allowed in a minute: per account from one address, per address, per
    /// account in total (`AUTH_LOGIN_FAILURES_PER_ACCOUNT`, `..._PER_ADDRESS`,
    /// `..._PER_ACCOUNT_TOTAL`; 10, 100, 100).
    pub login_limits: LoginLimits,
    /// `AUTH_REGISTER_PER_ADDRESS_PER_HOUR`, default 20: sign-up attempts one client address
    /// may make in an hour.
    pub register_per_address_per_hour: u32,
    /// `AUTH_HASH_CONCURRENCY`, default 4: argon2id computations at once. Each holds 19 MiB, so
    /// size it to the memory limit: (limit - ~100 MiB for the rest) / 19 MiB, and no more than
    /// the cores (4 × 19 = 76 MiB fits the shipped 384 Mi with room).
    pub hash_concurrency: usize,
    /// `AUTH_HASH_WAIT_MS`, default 2000: how long a sign-in or sign-up waits for a hashing
    /// slot before it is answered `unavailable`; below the gateway's 10 s request timeout.
    pub hash_wait: Duration,
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
            nats: NatsConfig::for_role(env, parley_common::nats_auth::BrokerRole::Auth)?,
            issuer: env.string_or("AUTH_ISSUER", DEFAULT_ISSUER),
            audience: env.string_or("AUTH_AUDIENCE", DEFAULT_AUDIENCE),
            access_ttl: Duration::from_secs(env.parse_or("AUTH_ACCESS_TTL_SECONDS", 900)?),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            login_limits: login_limits(env)?,
            register_per_address_per_hour: at_least_one(
                env,
                "AUTH_REGISTER_PER_ADDRESS_PER_HOUR",
                20,
            )?,
            hash_concurrency: at_least_one(env, "AUTH_HASH_CONCURRENCY", 4)? as usize,
            hash_wait: Duration::from_millis(env.parse_or("AUTH_HASH_WAIT_MS", 2000)?),
        })
    }
}

fn login_limits(env: &Env) -> Result<LoginLimits, ConfigError> {
    let d = LoginLimits::default();
    Ok(LoginLimits {
        per_account_address: at_least_one(
            env,
            "AUTH_LOGIN_FAILURES_PER_ACCOUNT",
            d.per_account_address,
        )?,
        per_address: at_least_one(env, "AUTH_LOGIN_FAILURES_PER_ADDRESS", d.per_address)?,
        per_account: at_least_one(env, "AUTH_LOGIN_FAILURES_PER_ACCOUNT_TOTAL", d.per_account)?,
    })
}

/// A count that must be at least 1 (0 would refuse everyone).
fn at_least_one(env: &Env, name: &'static str, default: u32) -> Result<u32, ConfigError> {
    match env.parse_or(name, default)? {
        0 => Err(ConfigError::Invalid {
            name,
            reason: "must be at least 1".into(),
        }),
        n => Ok(n),
    }
}
