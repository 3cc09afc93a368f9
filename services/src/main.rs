//! `parley`: every role of Parley in one binary (DESIGN §1). Parse the environment, start
//! telemetry, build the role, run it until Ctrl-C or SIGTERM, drain, flush.
//!
//! # Layout
//! - `main.rs`: the command line and the exit codes (64: a bad setting, named; 1: a failure).
//! - `roles.rs`: building and running each role, and the admin port beside it.

mod roles;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use parley_common::config::{ConfigError, Env};
use parley_common::telemetry::{self, TelemetryConfig};

#[derive(Parser)]
#[command(name = "parley", version, about = "Parley real-time messaging backend")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand, Clone, Copy)]
pub enum Role {
    /// The edge: HTTP API and /ws on PORT.
    Gateway,
    /// The JetStream consumer that writes Postgres, and the chat queries.
    Persistence,
    /// Accounts, sessions and tokens, over NATS only.
    Auth,
    /// Every role in one process, still talking over NATS.
    All,
    /// Bring the database schema up to date and exit.
    Migrate,
    /// Start signing access tokens with a new key (the old one stays in the JWKS until its
    /// tokens have expired) and exit. Auth replicas pick it up within a minute.
    RotateKey,
}

/// The exit code for a missing or malformed setting (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    let telemetry_config = match TelemetryConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("parley: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let _telemetry = telemetry::init(&telemetry_config);
        let config = match roles::Config::from_env(cli.role, &env) {
            Ok(c) => c,
            Err(e) => return config_error(&e),
        };
        match roles::run(config, parley_common::shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "parley stopped with an error");
                eprintln!("parley: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("parley: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}
