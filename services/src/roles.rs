//! Building and running each role with its admin port.

use std::future::Future;

use anyhow::Context;
use parley_auth::AuthConfig;
use parley_common::admin::{self, Readiness};
use parley_common::config::{ConfigError, Env, port};
use parley_gateway::GatewayConfig;
use parley_persistence::PersistenceConfig;
use tokio_util::sync::CancellationToken;

use crate::Role;

/// Everything a role needs, parsed before anything starts.
// Built once per process; boxing the variants would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum Config {
    Gateway {
        gateway: GatewayConfig,
        admin_port: u16,
    },
    Persistence {
        persistence: PersistenceConfig,
        admin_port: u16,
    },
    Auth {
        auth: AuthConfig,
        admin_port: u16,
    },
    All {
        gateway: GatewayConfig,
        persistence: PersistenceConfig,
        auth: AuthConfig,
        admin_port: u16,
    },
    Migrate {
        persistence: PersistenceConfig,
        auth: AuthConfig,
    },
    RotateKey {
        auth: AuthConfig,
    },
    Probe {
        admin_port: u16,
    },
}

impl Config {
    /// The NATS server the role connects to, if it connects to one.
    fn nats(&self) -> Option<&parley_common::config::NatsConfig> {
        match self {
            Config::Gateway { gateway, .. } | Config::All { gateway, .. } => Some(&gateway.nats),
            Config::Persistence { persistence, .. } => Some(&persistence.nats),
            Config::Auth { auth, .. } => Some(&auth.nats),
            Config::Migrate { .. } | Config::RotateKey { .. } | Config::Probe { .. } => None,
        }
    }

    pub fn from_env(role: Role, env: &Env) -> Result<Self, ConfigError> {
        let admin_port = || port(env, "ADMIN_PORT", 9100);
        Ok(match role {
            Role::Gateway => Config::Gateway {
                gateway: GatewayConfig::from_env(env)?,
                admin_port: admin_port()?,
            },
            Role::Persistence => Config::Persistence {
                persistence: PersistenceConfig::from_env(env)?,
                admin_port: admin_port()?,
            },
            Role::Auth => Config::Auth {
                auth: AuthConfig::from_env(env)?,
                admin_port: admin_port()?,
            },
            Role::All => Config::All {
                gateway: GatewayConfig::from_env(env)?,
                persistence: PersistenceConfig::from_env(env)?,
                auth: AuthConfig::from_env(env)?,
                admin_port: admin_port()?,
            },
            Role::RotateKey => Config::RotateKey {
                auth: AuthConfig::from_env(env)?,
            },
            // Answered in main, before anything starts.
            Role::Probe | Role::NatsConfig { .. } => Config::Probe {
                admin_port: admin_port()?,
            },
            Role::Migrate => Config::Migrate {
                persistence: PersistenceConfig::from_env(env)?,
                auth: AuthConfig::from_env(env)?,
            },
        })
    }
}

/// Runs the configured role until `shutdown` resolves and it has drained.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    if let Some(nats) = config.nats() {
        parley_common::nats::require_supported_server(nats).await?;
    }
    match config {
        Config::Probe { admin_port } => {
            anyhow::ensure!(
                probe(admin_port) == std::process::ExitCode::SUCCESS,
                "not ready"
            );
            Ok(())
        }
        Config::RotateKey { auth } => {
            let pool = parley_auth::db::connect(&auth)
                .await
                .context("cannot connect to the database")?;
            parley_auth::db::migrate(&pool)
                .await
                .context("auth migrations failed")?;
            let kid = parley_auth::store::keys::rotate(&pool)
                .await
                .context("key rotation failed")?;
            tracing::info!(%kid, "signing key rotated");
            Ok(())
        }
        Config::Migrate { persistence, auth } => {
            let pool = parley_persistence::db::connect(&persistence, persistence.pool_size)
                .await
                .context("cannot connect to the database")?;
            parley_persistence::db::migrate(&pool)
                .await
                .context("migrations failed")?;
            let pool = parley_auth::db::connect(&auth)
                .await
                .context("cannot connect to the database")?;
            parley_auth::db::migrate(&pool)
                .await
                .context("auth migrations failed")?;
            tracing::info!("database schema is up to date");
            Ok(())
        }
        Config::Gateway {
            gateway,
            admin_port,
        } => {
            let app = parley_gateway::Application::build(gateway)
                .await
                .context("gateway")?;
            let admin = serve_admin(admin_port, app.readiness(), stop.clone()).await?;
            let result = app.run_until_stopped(stop.cancelled_owned()).await;
            admin.cancel();
            Ok(result?)
        }
        Config::Persistence {
            persistence,
            admin_port,
        } => {
            let app = parley_persistence::Application::build(persistence)
                .await
                .context("persistence")?;
            let admin = serve_admin(admin_port, app.readiness(), stop.clone()).await?;
            let result = app.run_until_stopped(stop.cancelled_owned()).await;
            admin.cancel();
            Ok(result?)
        }
        Config::Auth { auth, admin_port } => {
            let app = parley_auth::Application::build(auth)
                .await
                .context("auth")?;
            let admin = serve_admin(admin_port, app.readiness(), stop.clone()).await?;
            let result = app.run_until_stopped(stop.cancelled_owned()).await;
            admin.cancel();
            Ok(result?)
        }
        Config::All {
            gateway,
            persistence,
            auth,
            admin_port,
        } => {
            let persistence = parley_persistence::Application::build(persistence)
                .await
                .context("persistence")?;
            let auth = parley_auth::Application::build(auth)
                .await
                .context("auth")?;
            let gateway = parley_gateway::Application::build(gateway)
                .await
                .context("gateway")?;
            let mut readiness = persistence.readiness();
            readiness.merge(auth.readiness());
            readiness.merge(gateway.readiness());
            let admin = serve_admin(admin_port, readiness, stop.clone()).await?;
            // Each role on a task of its own, as if in its own process: joined in one task, a
            // role's work held up the others' (the auth role answered the gateway late).
            let g = tokio::spawn(gateway.run_until_stopped(stop.clone().cancelled_owned()));
            let p = tokio::spawn(persistence.run_until_stopped(stop.clone().cancelled_owned()));
            let a = tokio::spawn(auth.run_until_stopped(stop.clone().cancelled_owned()));
            let (g, p, a) = tokio::join!(g, p, a);
            admin.cancel();
            g.context("the gateway role's task")??;
            p.context("the persistence role's task")??;
            a.context("the auth role's task")??;
            Ok(())
        }
    }
}

/// Serves `/healthz` and `/readyz` until the returned token is cancelled; `/readyz` turns false
/// as soon as `stop` is.
async fn serve_admin(
    port: u16,
    readiness: Readiness,
    stop: CancellationToken,
) -> anyhow::Result<CancellationToken> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("cannot bind the admin port {port} (ADMIN_PORT)"))?;
    tracing::info!(addr = %listener.local_addr()?, "admin listening");
    let done = CancellationToken::new();
    {
        let readiness = readiness.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            readiness.set_draining();
        });
    }
    let until = done.clone();
    tokio::spawn(async move {
        if let Err(e) = admin::serve(listener, readiness, until.cancelled_owned()).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok(done)
}

/// `GET /readyz` on the local admin port: success when it answers 200.
pub fn probe(port: u16) -> std::process::ExitCode {
    use std::io::{Read, Write};
    let ask = || -> std::io::Result<bool> {
        let timeout = std::time::Duration::from_secs(3);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && &head[8..12] == b" 200")
    };
    match ask() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("parley: not ready");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("parley: cannot reach the admin port {port}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
