//! Configuration from environment variables (DESIGN §8).
//!
//! Every role parses its settings once, at start, from an [`Env`]: a plain map, filled from the
//! process environment by the binary and from literals by tests. A missing or malformed required
//! value is an error that names the variable, and the binary exits with it.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// A snapshot of environment variables. It remembers every name it was asked for (clones share
/// the record), so `parley <role> --check-config` can say which variables a role reads.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    asked: Arc<Mutex<BTreeSet<String>>>,
}

/// A variable that is missing or cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is required but not set")]
    Missing { name: &'static str },
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl Env {
    /// The process environment, read once.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
            asked: Arc::default(),
        }
    }

    /// A map of literals, for tests and embedding.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            asked: Arc::default(),
        }
    }

    /// Sets one variable, returning the changed snapshot.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.insert(name.to_owned(), value.into());
        self
    }

    /// Every variable name read so far, set or not.
    pub fn names_read(&self) -> Vec<String> {
        self.asked
            .lock()
            .expect("env record lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The raw value; an empty string counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.asked
            .lock()
            .expect("env record lock")
            .insert(name.to_owned());
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name)
            .map(str::to_owned)
            .ok_or(ConfigError::Missing { name })
    }

    pub fn string_or(&self, name: &'static str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// A parsed value, or `default` when unset.
    pub fn parse_or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    name,
                    reason: format!("{raw:?}: {e}"),
                }),
        }
    }

    /// A secret value, wrapped so that it never prints.
    pub fn secret(&self, name: &'static str) -> Option<Secret> {
        self.get(name).map(|v| Secret(v.to_owned()))
    }
}

/// A string that must not end up in logs: `Debug` and `Display` print `[redacted]`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Settings every role needs to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `NATS_URL` as given: one server, or several separated by commas (the nodes of a cluster).
    pub url: String,
    /// The servers of `url`, parsed: the client starts with any of them and moves to another
    /// when its server goes away (it also learns the rest of a cluster from the server).
    pub servers: Vec<async_nats::ServerAddr>,
    /// `PARLEY_NATS_PREFIX`: the first token of every subject, stream and consumer name.
    pub prefix: crate::subjects::Subjects,
    /// `NATS_CONNECT_WAIT_SECONDS` (30): how long a starting role keeps trying a NATS that does
    /// not answer yet (it may be starting too) before it gives up; 0 gives up at once.
    pub connect_wait: std::time::Duration,
    /// Who the connection is to the broker (`NATS_USER`/`NATS_PASSWORD`, `NATS_TOKEN`,
    /// `NATS_CREDS` or `NATS_NKEY`, each also as `PARLEY_<ROLE>_NATS_*`).
    pub credentials: crate::nats_auth::NatsCredentials,
    /// The role connecting, when there is one: it picks the role's own credentials and inbox.
    pub role: Option<crate::nats_auth::BrokerRole>,
}

impl NatsConfig {
    /// The settings of `role`: its own `PARLEY_<ROLE>_NATS_*` credentials ahead of `NATS_*`
    /// (docs/operations.md, "Broker credentials and permissions").
    pub fn for_role(env: &Env, role: crate::nats_auth::BrokerRole) -> Result<Self, ConfigError> {
        Self::read(env, Some(role))
    }

    /// The settings of a connection that is no role's (tools, tests): the generic `NATS_*`
    /// credentials and the default inbox.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Self::read(env, None)
    }

    fn read(env: &Env, role: Option<crate::nats_auth::BrokerRole>) -> Result<Self, ConfigError> {
        let prefix = env.string_or("PARLEY_NATS_PREFIX", "parley");
        let prefix =
            crate::subjects::Subjects::new(&prefix).map_err(|reason| ConfigError::Invalid {
                name: "PARLEY_NATS_PREFIX",
                reason,
            })?;
        let url = env.string_or("NATS_URL", "nats://127.0.0.1:4222");
        let servers = server_addrs(&url).map_err(|reason| ConfigError::Invalid {
            name: "NATS_URL",
            reason,
        })?;
        Ok(Self {
            url,
            servers,
            prefix,
            connect_wait: std::time::Duration::from_secs(
                env.parse_or("NATS_CONNECT_WAIT_SECONDS", 30)?,
            ),
            credentials: crate::nats_auth::NatsCredentials::from_env(env, role)?,
            role,
        })
    }
}

/// The servers of a `NATS_URL`: one URL, or several separated by commas
/// (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`); blanks around each are ignored. async-nats
/// reads a string as one URL, so a list is split here.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{s:?} is not a NATS server URL: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(format!("{url:?} names no server"));
    }
    Ok(servers)
}

/// A TCP port from `name`, or `default`.
pub fn port(env: &Env, name: &'static str, default: u16) -> Result<u16, ConfigError> {
    env.parse_or(name, default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_required_variable_is_named_in_the_error() {
        let err = Env::default().required("DATABASE_URL").unwrap_err();
        assert_eq!(err.to_string(), "DATABASE_URL is required but not set");
    }

    #[test]
    fn a_malformed_number_is_named_with_its_value() {
        let env = Env::from_pairs([("PORT", "eighty")]);
        let err = port(&env, "PORT", 3000).unwrap_err();
        assert!(
            err.to_string().starts_with("PORT is invalid: \"eighty\""),
            "{err}"
        );
    }

    #[test]
    fn an_empty_value_counts_as_unset() {
        let env = Env::from_pairs([("PORT", "  ")]);
        assert_eq!(port(&env, "PORT", 3000).unwrap(), 3000);
    }

    #[test]
    fn secrets_never_print() {
        let env = Env::from_pairs([("AUTH_SECRET", "hunter2")]);
        let s = env.secret("AUTH_SECRET").unwrap();
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn nats_url_may_list_the_servers_of_a_cluster() {
        let env = Env::from_pairs([(
            "NATS_URL",
            "nats://127.0.0.1:4301, nats://127.0.0.1:4302,nats://127.0.0.1:4303",
        )]);
        let cfg = NatsConfig::from_env(&env).unwrap();
        let ports: Vec<u16> = cfg.servers.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4301, 4302, 4303]);
        let one = NatsConfig::from_env(&Env::default()).unwrap();
        assert_eq!(one.servers.len(), 1);
        assert_eq!(one.servers[0].port(), 4222);
    }

    #[test]
    fn a_malformed_nats_url_is_named_with_the_bad_part() {
        for bad in [
            "nats://127.0.0.1:4222,http://x:1",
            "nats://127.0.0.1:99999",
            ",,",
        ] {
            let env = Env::from_pairs([("NATS_URL", bad)]);
            let err = NatsConfig::from_env(&env).unwrap_err().to_string();
            assert!(err.starts_with("NATS_URL is invalid"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_prefix_with_a_dot_is_refused() {
        let env = Env::from_pairs([("PARLEY_NATS_PREFIX", "a.b")]);
        let err = NatsConfig::from_env(&env).unwrap_err();
        assert!(err.to_string().contains("PARLEY_NATS_PREFIX"), "{err}");
    }
}
