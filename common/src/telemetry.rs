//! Logging set-up: `tracing` to stdout, JSON or human-readable (`LOG_FORMAT`), filtered by
//! `RUST_LOG`. OpenTelemetry export joins here (DESIGN §10).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{ConfigError, Env};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// What [`init`] needs, from the environment.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    pub filter: String,
}

impl TelemetryConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let format = match env.get("LOG_FORMAT").unwrap_or("json") {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::Invalid {
                    name: "LOG_FORMAT",
                    reason: format!("{other:?}: expected json or pretty"),
                });
            }
        };
        Ok(Self {
            format,
            filter: env.string_or("RUST_LOG", "info"),
        })
    }
}

/// Flushes whatever telemetry is buffered when dropped; keep it alive for the process's life.
#[must_use = "telemetry is flushed when the guard drops"]
pub struct Guard {
    _private: (),
}

/// Installs the global subscriber. Call once, at the start of `main`.
pub fn init(config: &TelemetryConfig) -> Guard {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match config.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer()).init(),
    }
    Guard { _private: () }
}

/// For tests: logs to the test writer only when `TEST_LOG` is set; safe to call many times.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_none() {
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_test_writer())
        .try_init();
}
