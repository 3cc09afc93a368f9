//! Gateway settings (DESIGN §8, §9).

use std::time::Duration;

use parley_auth::VerifierConfig;
use parley_common::config::{ConfigError, Env, NatsConfig, port};
use parley_common::domain::Content;
use parley_common::nats::StreamSettings;

use crate::client_addr::TrustedProxies;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `PORT`: HTTP, `/ws`; 0 picks a free port (tests).
    pub port: u16,
    pub host: String,
    pub nats: NatsConfig,
    pub streams: StreamSettings,
    pub auth: VerifierConfig,
    pub limits: Limits,
    /// How long shutdown waits for sockets to close after telling them to reconnect.
    pub drain_timeout: Duration,
    /// `PARLEY_PRESENCE_TTL_SECONDS`, default 30: a user whose gateways all stopped
    /// heartbeating for this long is offline (a crashed gateway's users go offline by
    /// themselves). Gateways heartbeat three times per TTL.
    pub presence_ttl: Duration,
    /// `PARLEY_WEB_DIR`: the built web app (`web/dist`), served at `/`; unset, `/` says the
    /// app is not built.
    pub web_dir: Option<std::path::PathBuf>,
    /// `PARLEY_ALLOWED_ORIGINS`: the origins whose pages may authenticate with the session
    /// cookie (comma-separated, e.g. `https://chat.example.com`); unset, the request's own host.
    pub allowed_origins: crate::auth::AllowedOrigins,
    /// `PARLEY_REVOKED_SESSIONS_MAX`, default 100,000: signed-out sessions remembered (for the
    /// access-token lifetime) so their tokens are refused.
    pub revoked_sessions_max: usize,
    /// Header-read and idle timeouts, connections per address (`PARLEY_HTTP_*`,
    /// `PARLEY_MAX_CONNECTIONS_PER_ADDRESS`).
    pub http: parley_common::http_server::HttpLimits,
}

/// What one client may do (DESIGN §9).
#[derive(Debug, Clone)]
pub struct Limits {
    /// `PARLEY_MAX_CONTENT_CHARS`, default 4,000.
    pub max_content_chars: usize,
    /// `PARLEY_MAX_FRAME_BYTES`, default 64 KiB: a larger frame closes the connection (1009).
    pub max_frame_bytes: usize,
    /// Frames queued for one socket before it counts as not reading and is dropped.
    pub outbound_queue: usize,
    /// Requests one socket may have in flight; past it the gateway stops reading that socket.
    pub max_inflight: usize,
    /// Frames (requests) per second per user, sustained (`PARLEY_SEND_RATE`).
    pub send_rate: f64,
    /// Frames allowed in a burst above the rate (`PARLEY_SEND_BURST`).
    pub send_burst: f64,
    /// Frames refused for the rate limit within ten seconds before the connection is closed as
    /// a flood.
    pub flood_strikes: u32,
    /// Sockets one user may hold on one gateway (`PARLEY_MAX_CONNECTIONS_PER_USER`).
    pub max_connections_per_user: usize,
    /// How long writing one frame to a client may take before the client counts as not reading
    /// and is dropped (`PARLEY_WRITE_TIMEOUT_SECONDS`, default 10).
    pub write_timeout: Duration,
    /// Sockets (both transports, and Socket.IO handshakes not yet authenticated) one client
    /// address may hold on one gateway (`PARLEY_MAX_SOCKETS_PER_ADDRESS`, default 200).
    pub max_sockets_per_address: usize,
    /// New connections (both transports) one gateway admits a second, a second's worth at once
    /// (`PARLEY_CONNECT_RATE`, default 2,000); past it a connect is answered 503 with
    /// `Retry-After`.
    pub connect_rate: u32,
    /// Engine.IO's heartbeat for Socket.IO: a ping this often, to be answered within the write
    /// timeout (`PARLEY_SOCKETIO_PING_SECONDS`, default 25, as Socket.IO's own default).
    pub socketio_ping_interval: Duration,
    /// `PARLEY_MAX_MEMBERS`, default 256: participant ids one `POST /api/conversations` may
    /// name, refused before the request goes on (persistence enforces the same setting on
    /// every path that writes members).
    pub max_members: usize,
    /// `PARLEY_TRUSTED_PROXIES`, default none: the proxies whose `X-Forwarded-For` names the
    /// client address that per-address limits count ([`crate::client_addr`]).
    pub trusted_proxies: TrustedProxies,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_chars: Content::DEFAULT_MAX_CHARS,
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            max_inflight: 64,
            send_rate: 50.0,
            send_burst: 200.0,
            flood_strikes: 200,
            max_connections_per_user: 20,
            write_timeout: Duration::from_secs(10),
            max_sockets_per_address: 200,
            connect_rate: 2_000,
            socketio_ping_interval: Duration::from_secs(25),
            max_members: 256,
            trusted_proxies: TrustedProxies::none(),
        }
    }
}

impl GatewayConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Limits::default();
        let limits = Limits {
            max_content_chars: env.parse_or("PARLEY_MAX_CONTENT_CHARS", d.max_content_chars)?,
            max_frame_bytes: env.parse_or("PARLEY_MAX_FRAME_BYTES", d.max_frame_bytes)?,
            outbound_queue: env.parse_or("PARLEY_OUTBOUND_QUEUE", d.outbound_queue)?,
            send_rate: env.parse_or("PARLEY_SEND_RATE", d.send_rate)?,
            send_burst: env.parse_or("PARLEY_SEND_BURST", d.send_burst)?,
            max_connections_per_user: env.parse_or(
                "PARLEY_MAX_CONNECTIONS_PER_USER",
                d.max_connections_per_user,
            )?,
            flood_strikes: env.parse_or("PARLEY_FLOOD_STRIKES", d.flood_strikes)?,
            write_timeout: Duration::from_secs(
                env.parse_or("PARLEY_WRITE_TIMEOUT_SECONDS", d.write_timeout.as_secs())?,
            ),
            max_sockets_per_address: env
                .parse_or("PARLEY_MAX_SOCKETS_PER_ADDRESS", d.max_sockets_per_address)?,
            max_members: env.parse_or("PARLEY_MAX_MEMBERS", d.max_members)?,
            connect_rate: env.parse_or("PARLEY_CONNECT_RATE", d.connect_rate)?,
            trusted_proxies: TrustedProxies::from_env(env)?,
            ..d
        };
        if limits.write_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                name: "PARLEY_WRITE_TIMEOUT_SECONDS",
                reason: "must be at least 1".into(),
            });
        }
        if limits.socketio_ping_interval.is_zero() {
            return Err(ConfigError::Invalid {
                name: "PARLEY_SOCKETIO_PING_SECONDS",
                reason: "must be at least 1".into(),
            });
        }
        if limits.connect_rate == 0 {
            return Err(ConfigError::Invalid {
                name: "PARLEY_CONNECT_RATE",
                reason: "must be at least 1".into(),
            });
        }
        if limits.max_sockets_per_address == 0 {
            return Err(ConfigError::Invalid {
                name: "PARLEY_MAX_SOCKETS_PER_ADDRESS",
                reason: "must be at least 1".into(),
            });
        }
        if limits.outbound_queue < 16 {
            return Err(ConfigError::Invalid {
                name: "PARLEY_OUTBOUND_QUEUE",
                reason: "must be at least 16".into(),
            });
        }
        if limits.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid {
                name: "PARLEY_MAX_FRAME_BYTES",
                reason: "must be at least 1024".into(),
            });
        }
        if limits.send_rate <= 0.0 || limits.send_burst < 1.0 {
            return Err(ConfigError::Invalid {
                name: "PARLEY_SEND_RATE",
                reason: "rate must be positive and burst at least 1".into(),
            });
        }
        Ok(Self {
            port: port(env, "PORT", 3000)?,
            host: env.string_or("HOST", "0.0.0.0"),
            nats: NatsConfig::for_role(env, parley_common::nats_auth::BrokerRole::Gateway)?,
            streams: StreamSettings::from_env(env)?,
            auth: VerifierConfig::from_env(env)?,
            limits,
            drain_timeout: Duration::from_secs(env.parse_or("PARLEY_DRAIN_SECONDS", 20)?),
            presence_ttl: presence_ttl(env)?,
            web_dir: env.get("PARLEY_WEB_DIR").map(std::path::PathBuf::from),
            allowed_origins: crate::auth::AllowedOrigins::parse(
                env.get("PARLEY_ALLOWED_ORIGINS").unwrap_or(""),
            )
            .map_err(|reason| ConfigError::Invalid {
                name: "PARLEY_ALLOWED_ORIGINS",
                reason,
            })?,
            revoked_sessions_max: env.parse_or("PARLEY_REVOKED_SESSIONS_MAX", 100_000)?,
            http: parley_common::http_server::HttpLimits::from_env(env)?,
        })
    }
}

fn presence_ttl(env: &Env) -> Result<Duration, ConfigError> {
    let secs: u64 = env.parse_or("PARLEY_PRESENCE_TTL_SECONDS", 30)?;
    if !(2..=3600).contains(&secs) {
        return Err(ConfigError::Invalid {
            name: "PARLEY_PRESENCE_TTL_SECONDS",
            reason: "must be 2 to 3600 seconds".into(),
        });
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let base = [
            ("NATS_URL", "nats://127.0.0.1:4222"),
            ("AUTH_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        Env::from_pairs(base.iter().chain(pairs).map(|(k, v)| (*k, *v)))
    }

    #[test]
    fn the_connect_rate_defaults_to_two_thousand_and_must_be_at_least_one() {
        let config = GatewayConfig::from_env(&env(&[])).expect("defaults");
        assert_eq!(config.limits.connect_rate, 2_000);
        let config = GatewayConfig::from_env(&env(&[("PARLEY_CONNECT_RATE", "50")])).unwrap();
        assert_eq!(config.limits.connect_rate, 50);
        for bad in ["0", "-1", "lots"] {
            let err = GatewayConfig::from_env(&env(&[("PARLEY_CONNECT_RATE", bad)]))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(err.to_string().contains("PARLEY_CONNECT_RATE"), "{err}");
        }
    }
}
