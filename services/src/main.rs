//! `parley`: every role of Parley in one binary (DESIGN §1). Parse the environment, start
//! telemetry, build the role, run it until Ctrl-C or SIGTERM, drain, flush.
//!
//! # Layout
//! - `main.rs`: the command line and the exit codes (64: a bad setting, named, or a NATS server
//!   older than 2.11; 1: a failure).
//! - `roles.rs`: building and running each role, and the admin port beside it.

mod roles;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use parley_common::config::{ConfigError, Env};
use parley_common::nats_version::NatsTooOld;
use parley_common::telemetry::{self, TelemetryConfig};

#[derive(Parser)]
#[command(name = "parley", version, about = "Parley real-time messaging backend")]
struct Cli {
    #[command(subcommand)]
    role: Role,
    /// Check the role's settings and exit: print the variables it reads as JSON, or name the
    /// one that is missing or malformed (exit 64). Nothing is connected to.
    #[arg(long, global = true)]
    check_config: bool,
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
    /// Ask the admin port on this host (ADMIN_PORT) whether the role is ready: exit 0 when
    /// `/readyz` answers 200, else 1. For container healthchecks in an image without curl.
    Probe,
    /// Print the nats-server authorization block for PARLEY_NATS_PREFIX: one user per role,
    /// held to the subjects it uses (docs/operations.md). deploy/nats/ ships it rendered.
    NatsConfig {
        /// Add a user allowed everything, which clients without credentials become
        /// (`no_auth_user`): for a development server that tests and tools share.
        #[arg(long)]
        dev: bool,
    },
}

/// The exit code for a missing or malformed setting, or a NATS server too old (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    let telemetry_config = match TelemetryConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if cli.check_config {
        return match roles::Config::from_env(cli.role, &env) {
            Ok(_) => {
                let read: Vec<String> = env.names_read();
                println!("{}", serde_json::json!({ "ok": true, "read": read }));
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        };
    }
    if let Role::NatsConfig { dev } = cli.role {
        return match parley_common::config::NatsConfig::from_env(&env) {
            Ok(nats) => {
                print!(
                    "{}",
                    parley_common::nats_auth::render_server_config(&nats.prefix, dev)
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        };
    }
    if let Role::Probe = cli.role {
        return match parley_common::config::port(&env, "ADMIN_PORT", 9100) {
            Ok(port) => roles::probe(port),
            Err(e) => config_error(&e),
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("parley: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (code, telemetry) = runtime.block_on(async {
        let telemetry = telemetry::init(&telemetry_config, cli.role.service_name());
        let config = match roles::Config::from_env(cli.role, &env) {
            Ok(c) => c,
            Err(e) => return (config_error(&e), telemetry),
        };
        let code = match roles::run(config, parley_common::shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "parley stopped with an error");
                eprintln!("parley: {e:#}");
                failure_code(&e)
            }
        };
        (code, telemetry)
    });
    // Flushes the spans still buffered, outside `block_on` but with the runtime still up (the
    // gRPC exporter runs on it).
    drop(telemetry);
    code
}

impl Role {
    /// The default `service.name` of the role's traces (`OTEL_SERVICE_NAME` overrides it).
    fn service_name(self) -> &'static str {
        match self {
            Role::Gateway => "parley-gateway",
            Role::Persistence => "parley-persistence",
            Role::Auth => "parley-auth",
            Role::All => "parley",
            Role::Migrate | Role::RotateKey | Role::Probe | Role::NatsConfig { .. } => {
                "parley-admin"
            }
        }
    }
}

/// 64 when the NATS server is older than Parley supports (the roles check it before they
/// build): like a bad setting, it is the deployment that is wrong, and a restart will not help.
/// 1 for any other failure.
fn failure_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<NatsTooOld>().is_some() {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("parley: configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}
