//! `parley-bench`: load for the real gateway, checked as it is measured.
//!
//! It connects many clients over `/ws` (or Socket.IO), from several `127.0.0.x` source
//! addresses, with HS256 tokens it mints itself, drives one scenario (or the standard set), and
//! prints a table, with JSON beside it for machines. With `--parley` it starts the gateway and
//! persistence (`--persistence N` replicas) itself from that binary, so it can read their memory
//! and metrics and restart the gateway. With `--reference` it starts the reference server
//! instead (`bench/reference/`: the seed plan's messaging in one Node process with Socket.IO
//! and Postgres) and drives it with the same load over Socket.IO, so Parley's figures can be
//! set beside it.
//! `chaos` (`chaos/`) is apart: it starts its own NATS, Postgres and roles and breaks them one at
//! a time under load, reporting the recovery time of each fault.
//! Speed is reported, never asserted; what is asserted is that every message arrived once, in
//! order, to every recipient.

mod chaos;
mod client;
mod ctx;
mod flow;
mod idle;
mod reconnect;
mod reference;
mod report;
mod system;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::client::{Target, Transport};
use crate::ctx::Ctx;
use crate::flow::FlowParams;
use crate::reference::Reference;
use crate::report::Report;
use crate::system::System;

#[derive(Parser)]
#[command(
    name = "parley-bench",
    about = "Load generator and benchmark harness for Parley"
)]
struct Cli {
    /// Start the gateway and persistence from this `parley` binary, with this environment
    /// (NATS_URL, DATABASE_URL, PARLEY_NATS_PREFIX, AUTH_SECRET ...). Needed for the memory
    /// figures and for `reconnect`. Without it, load goes to --gateway.
    #[arg(long, env = "PARLEY_BIN")]
    parley: Option<PathBuf>,
    /// Instead of Parley, start the reference server in this folder (bench/reference, its npm
    /// packages installed) with `node server.mjs`, on DATABASE_URL, and load it over Socket.IO.
    /// `dm`, `group` and `idle` only.
    #[arg(long, conflicts_with_all = ["parley", "gateway", "gateway_pid"])]
    reference: Option<PathBuf>,
    /// Persistence replicas to start with --parley; they share PARLEY_IN's partitions.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    persistence: u16,
    /// A gateway already running (when --parley is not given).
    #[arg(long, default_value = "127.0.0.1:3000")]
    gateway: SocketAddr,
    /// That gateway's pid, for its memory figures.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// The gateway's AUTH_SECRET: the bench signs HS256 tokens with it.
    #[arg(long, env = "AUTH_SECRET", hide_env_values = true)]
    secret: String,
    /// Connect from 127.0.0.1 .. 127.0.0.N in turn (each address has ~28k ephemeral ports).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// `ws` unless --reference is given, which speaks Socket.IO only.
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Also write the reports as a JSON array here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the logs of the roles the bench starts go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Delete the prefix's streams from NATS at the end (for a prefix made for this run).
    #[arg(long)]
    cleanup: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// Hold N authenticated connections; the gateway's memory per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connections per user (devices); at most the gateway's per-user cap.
        #[arg(long, default_value_t = 1)]
        per_user: usize,
        /// Seconds to hold them, checking they stay up.
        #[arg(long, default_value_t = 10)]
        hold: u64,
    },
    /// Pairs of users in DMs, both sending, at a total rate for a time.
    Dm {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        /// Messages per second, all senders together.
        #[arg(long, default_value_t = 5_000.0)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Characters of content per message.
        #[arg(long, default_value_t = 64)]
        content: usize,
    },
    /// Rooms of K members, every member sending: fan-out.
    Group {
        #[arg(long, default_value_t = 50)]
        rooms: usize,
        #[arg(long, default_value_t = 20)]
        members: usize,
        /// Messages per second, all senders together (deliveries are K times as many).
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 30)]
        duration: u64,
        #[arg(long, default_value_t = 64)]
        content: usize,
    },
    /// N clients connected; the gateway restarted; time until all are back and synced.
    Reconnect {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// TERM (a drain, as in a rolling restart) or KILL (a crash).
        #[arg(long, default_value = "TERM", value_parser = ["TERM", "KILL"])]
        signal: String,
    },
    /// The set `./dev bench` runs: each scenario above, sized for this machine, a few minutes.
    Standard,
    /// Load through two gateways while NATS, Postgres and each role are broken in turn (the
    /// run starts its own, needs --parley); recovery time per fault, and nothing lost, doubled
    /// or reordered. Writes results.txt and results.json into --out. See docs/operations.md.
    Chaos(chaos::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("parley-bench: some checks failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("parley-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenarios; true when every check held.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let fds = rlimit::increase_nofile_limit(u64::MAX).context("raise the open-file limit")?;
    eprintln!(
        "parley-bench: open-file limit {fds} (the gateway inherits it when the bench starts it)"
    );
    let transport = match (&cli.reference, cli.transport) {
        (Some(_), Some(Transport::Ws)) => {
            bail!("the reference server speaks Socket.IO only: drop --transport ws")
        }
        (Some(_), _) => Transport::SocketIo,
        (None, transport) => transport.unwrap_or(Transport::Ws),
    };
    if cli.reference.is_some()
        && let Scenario::Reconnect { .. } | Scenario::Chaos(_) | Scenario::Standard = &cli.scenario
    {
        bail!(
            "reconnect, chaos and the standard set restart or break Parley's own roles: \
             against --reference, run dm, group or idle"
        );
    }
    if let Scenario::Chaos(args) = &cli.scenario {
        let bin = cli
            .parley
            .as_deref()
            .context("chaos starts every role itself: give the parley binary with --parley")?;
        return chaos::run(
            args.clone(),
            bin,
            &cli.out,
            &cli.secret,
            usize::from(cli.persistence),
        )
        .await;
    }
    let plan: Vec<(Transport, Scenario)> = match &cli.scenario {
        Scenario::Standard => standard(fds),
        one => vec![(transport, one.clone())],
    };
    for (_, s) in &plan {
        let needed = match s {
            Scenario::Idle { connections, .. } => *connections,
            Scenario::Reconnect { clients, .. } => *clients,
            Scenario::Dm { pairs, .. } => 2 * pairs,
            Scenario::Group { rooms, members, .. } => rooms * members,
            Scenario::Standard | Scenario::Chaos(_) => 0,
        } as u64;
        if needed + 200 > fds {
            bail!(
                "{needed} connections need more open files than this process may have ({fds}); \
                 raise the hard limit (ulimit -Hn) or ask for fewer"
            );
        }
    }

    let mut reports = Vec::new();
    let run_id = format!("b{:x}", chrono::Utc::now().timestamp_millis());
    let reference_db = match &cli.reference {
        Some(_) => Some(std::env::var("DATABASE_URL").context(
            "--reference needs DATABASE_URL: a database the reference server may create its \
             tables in",
        )?),
        None => None,
    };
    for (n, (transport, scenario)) in plan.into_iter().enumerate() {
        let logs = cli.out.join(format!("{run_id}-{n}"));
        let reference = match (&cli.reference, &reference_db) {
            (Some(dir), Some(db)) => Some(Reference::start(dir, &logs, db, &cli.secret).await?),
            _ => None,
        };
        let system = match &cli.parley {
            Some(bin) => {
                Some(System::start(bin, &logs, system_env(), usize::from(cli.persistence)).await?)
            }
            None => None,
        };
        let addr = match (&system, &reference) {
            (Some(system), _) => system.gateway_addr,
            (None, Some(reference)) => reference.addr,
            (None, None) => cli.gateway,
        };
        let mut ctx = Ctx {
            target: Target {
                addr,
                sources: (1..=cli.sources)
                    .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                    .collect::<Arc<[_]>>(),
                transport,
            },
            secret: cli.secret.clone(),
            run: format!("{run_id}{n}"),
            connect_concurrency: cli.connect_concurrency,
            system,
            reference,
            gateway_pid: cli.gateway_pid,
            epoch: Instant::now(),
        };
        let report = run_one(&mut ctx, scenario).await;
        if let Some(system) = ctx.system.take() {
            system.stop().await?;
        }
        if let Some(reference) = ctx.reference.take() {
            reference.stop().await?;
        }
        let mut report = report?;
        if let Some(params) = report.params.as_object_mut() {
            if cli.parley.is_some() {
                params.insert("server".into(), "parley".into());
                params.insert("persistence".into(), cli.persistence.into());
            } else if cli.reference.is_some() {
                params.insert("server".into(), "reference".into());
            }
        }
        println!("{}", report.table());
        reports.push(report);
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("parley-bench: wrote {}", path.display());
    }
    if cli.cleanup {
        cleanup().await?;
    }
    Ok(reports.iter().all(|r| r.verified))
}

async fn run_one(ctx: &mut Ctx, scenario: Scenario) -> anyhow::Result<Report> {
    match scenario {
        Scenario::Idle {
            connections,
            per_user,
            hold,
        } => idle::run(ctx, connections, per_user, Duration::from_secs(hold)).await,
        Scenario::Dm {
            pairs,
            rate,
            duration,
            content,
        } => {
            let p = FlowParams {
                scenario: "dm",
                conversations: pairs,
                members: 2,
                rate,
                duration: Duration::from_secs(duration),
                content,
            };
            flow::run(ctx, p).await
        }
        Scenario::Group {
            rooms,
            members,
            rate,
            duration,
            content,
        } => {
            let p = FlowParams {
                scenario: "group",
                conversations: rooms,
                members,
                rate,
                duration: Duration::from_secs(duration),
                content,
            };
            flow::run(ctx, p).await
        }
        Scenario::Reconnect { clients, signal } => reconnect::run(ctx, clients, &signal).await,
        Scenario::Standard | Scenario::Chaos(_) => unreachable!("expanded or run before"),
    }
}

/// The standard set, sized to the open-file limit (each client is one socket in the bench and
/// one in the gateway). Everything over `/ws` but one DM run over Socket.IO.
fn standard(fds: u64) -> Vec<(Transport, Scenario)> {
    let most = (fds.saturating_sub(1_000) as usize).min(50_000) / 1_000 * 1_000;
    let ws = Transport::Ws;
    vec![
        (
            ws,
            Scenario::Idle {
                connections: most,
                per_user: 1,
                hold: 10,
            },
        ),
        (
            ws,
            Scenario::Dm {
                pairs: 100,
                rate: 5_000.0,
                duration: 30,
                content: 64,
            },
        ),
        (
            ws,
            Scenario::Dm {
                pairs: 200,
                rate: 20_000.0,
                duration: 20,
                content: 64,
            },
        ),
        (
            ws,
            Scenario::Group {
                rooms: 50,
                members: 20,
                rate: 1_000.0,
                duration: 30,
                content: 64,
            },
        ),
        (
            Transport::SocketIo,
            Scenario::Dm {
                pairs: 50,
                rate: 2_000.0,
                duration: 20,
                content: 64,
            },
        ),
        (
            ws,
            Scenario::Reconnect {
                clients: most.min(20_000),
                signal: "TERM".into(),
            },
        ),
    ]
}

/// What the bench sets for the roles it starts, over its own environment: the per-user send
/// rate and the connections and sockets one address may hold are abuse guards (50/s, 256 and
/// 200 by default), lifted
/// so the offered load is what is measured (the bench's thousands of clients come from eight
/// loopback addresses); tokens are the bench's HS256; logs stay quiet.
fn system_env() -> Vec<(String, String)> {
    let mut env = vec![
        ("PARLEY_SEND_RATE", "1000000"),
        ("PARLEY_SEND_BURST", "1000000"),
        ("PARLEY_MAX_SOCKETS_PER_ADDRESS", "1000000"),
        ("PARLEY_MAX_CONNECTIONS_PER_ADDRESS", "0"),
        ("AUTH_TOKEN_KINDS", "hs256"),
        ("LOG_FORMAT", "json"),
    ];
    if std::env::var_os("RUST_LOG").is_none() {
        env.push(("RUST_LOG", "warn"));
    }
    env.into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Deletes the streams of PARLEY_NATS_PREFIX.
async fn cleanup() -> anyhow::Result<()> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix =
        std::env::var("PARLEY_NATS_PREFIX").context("--cleanup needs PARLEY_NATS_PREFIX")?;
    let subjects = parley_common::subjects::Subjects::new(&prefix).map_err(anyhow::Error::msg)?;
    let servers = parley_common::config::server_addrs(&url)
        .map_err(|e| anyhow::anyhow!("NATS_URL is invalid: {e}"))?;
    let nats = async_nats::connect(servers).await?;
    let js = async_nats::jetstream::new(nats);
    for stream in [
        subjects.stream_in(),
        subjects.stream_dlq(),
        format!("KV_{}", subjects.presence_bucket()),
    ] {
        let _ = js.delete_stream(&stream).await;
    }
    Ok(())
}
