//! `chaos`: real-looking load through two gateways while the run breaks one thing at a time,
//! and how long the system takes to catch up after each fault.
//!
//! The run owns everything it breaks: a private nats-server (JetStream, its store in the output
//! folder), a private Postgres cluster, and the roles as processes of the `parley` binary (auth,
//! persistence, gateway A and gateway B). Users in DM pairs, one member on each gateway, send at
//! a total rate as real clients do ([`clients`]). Between stretches of steady load it injects,
//! in turn: persistence, gateway B and auth killed -9 and started again; Postgres stopped for a
//! while and started; every Parley connection to Postgres terminated; NATS killed -9 and started
//! again (same port, same store) a little later.
//!
//! For each fault: the recovery time, from the heal (the process started again, the server
//! back) until every message acknowledged by then is in Postgres and with its recipient, and
//! the longest send → ack while it lasted. At the end the totals and the checks, decided by the
//! [`ledger`] from what the clients saw and what a poller read from Postgres.
//!
//! # Layout
//! - `mod.rs`: the run: start, load, faults one after another, drain, report.
//! - `infra.rs`: the processes: nats-server, Postgres, the roles.
//! - `clients.rs`: the users.
//! - `ledger.rs`: the books, and every decision taken from them (pure, unit-tested).

mod clients;
mod infra;
mod ledger;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, PgPool};
use tokio_util::sync::CancellationToken;

use self::clients::{Shared, User};
use self::infra::{Nats, Postgres, Role, mark};
use self::ledger::{Key, Ledger, Row, Totals};
use crate::client::{Client, Target, Transport};

/// How often the poller reads what Postgres holds.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// The database the roles use on the private cluster.
const DB: &str = "parley";
/// `application_name` of the run's own connections, which the connection reset spares.
const OWN_APP: &str = "parley-chaos";

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// kill -9 a persistence replica (the first), then start it again.
    Persistence,
    /// kill -9 gateway B (half the users' own), then start it again.
    GatewayB,
    /// kill -9 auth, then start it again.
    Auth,
    /// Postgres stopped (`pg_ctl stop -m fast`) for --pg-down seconds, then started.
    PgStop,
    /// `pg_terminate_backend` of every Parley connection to Postgres.
    PgReset,
    /// kill -9 nats-server; started again --nats-down seconds later, same port and store.
    Nats,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::Persistence => "kill -9 persistence, restart",
            Fault::GatewayB => "kill -9 gateway B, restart",
            Fault::Auth => "kill -9 auth, restart",
            Fault::PgStop => "Postgres stopped, started",
            Fault::PgReset => "Postgres connections reset",
            Fault::Nats => "kill -9 NATS, restart",
        }
    }
}

/// The chaos run's settings (`parley-bench chaos --help`).
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The nats-server binary (2.11 or newer) to run privately.
    #[arg(long)]
    pub nats_server: PathBuf,
    /// Postgres's bin folder (initdb, pg_ctl), e.g. /usr/lib/postgresql/15/bin.
    #[arg(long)]
    pub pg_bindir: PathBuf,
    /// Users, in DM pairs, one member of each pair on each gateway.
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Messages per second, all users together.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of steady load before the first fault and after each heal (longer when the
    /// recovery takes longer: the next fault waits for it).
    #[arg(long, default_value_t = 5.0)]
    pub steady: f64,
    /// Seconds Postgres stays stopped.
    #[arg(long, default_value_t = 6.0)]
    pub pg_down: f64,
    /// Seconds NATS stays dead.
    #[arg(long, default_value_t = 2.0)]
    pub nats_down: f64,
    /// A recovery longer than this (seconds) fails the run.
    #[arg(long, default_value_t = 3.0)]
    pub max_recovery: f64,
    /// Every acknowledged message must be stored and delivered this many seconds after the last
    /// send.
    #[arg(long, default_value_t = 5.0)]
    pub settle_within: f64,
    /// How long to wait for a recovery (and, at the end, for the last messages) before moving on.
    #[arg(long, default_value_t = 60.0)]
    pub give_up: f64,
    /// The faults, in order (default: all of them, in the order listed here).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "persistence,gateway-b,auth,pg-stop,pg-reset,nats"
    )]
    pub faults: Vec<Fault>,
}

/// What one fault did.
#[derive(Debug, Serialize)]
struct FaultResult {
    fault: Fault,
    what: &'static str,
    /// Seconds since the run's start.
    injected_at: f64,
    healed_at: f64,
    /// Injection → heal.
    down_s: f64,
    /// Heal → the restarted role answering `/readyz` (roles only).
    ready_after_s: Option<f64>,
    /// Acknowledged by the heal but not yet both stored and delivered, at the heal.
    owed_at_heal: usize,
    /// Heal → every message acknowledged by then stored and delivered; None: not within
    /// --give-up.
    recovery_s: Option<f64>,
    /// The longest send → ack of a message waiting between injection and heal.
    max_ack_latency_s: f64,
    /// The longest ack → stored-and-delivered of a message acknowledged in the --steady seconds
    /// after the heal.
    max_settle_after_heal_s: f64,
    /// Connections the reset ended (pg-reset only).
    connections_ended: Option<u64>,
    within_max: bool,
}

/// Runs the whole thing; true when every check held.
pub async fn run(
    args: Args,
    bin: &Path,
    out: &Path,
    secret: &str,
    replicas: usize,
) -> anyhow::Result<bool> {
    if args.users < 2 || !args.users.is_multiple_of(2) {
        bail!(
            "--users must be an even number, at least 2 (DM pairs); got {}",
            args.users
        );
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number of messages per second");
    }
    if args.faults.is_empty() {
        bail!("--faults names no fault");
    }
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let out = std::fs::canonicalize(out)?;
    let started = Instant::now();
    eprintln!("chaos: output in {}", out.display());

    let mut nats = Nats::start(&args.nats_server, &out).await?;
    let pg = Postgres::start(&args.pg_bindir, &out).await?;
    let result = with_servers(&args, bin, &out, secret, replicas, &mut nats, &pg, started).await;
    // Whatever happened, nothing the run started outlives it, and its stores go (the logs and
    // results stay).
    let _ = nats.kill().await;
    if let Err(e) = pg.down().await {
        eprintln!("chaos: could not stop the private Postgres: {e:#}");
    } else {
        let _ = std::fs::remove_dir_all(out.join("pg").join("data"));
    }
    let _ = std::fs::remove_dir_all(out.join("nats-store"));
    result
}

#[allow(clippy::too_many_arguments)]
async fn with_servers(
    args: &Args,
    bin: &Path,
    out: &Path,
    secret: &str,
    replicas: usize,
    nats: &mut Nats,
    pg: &Postgres,
    started: Instant,
) -> anyhow::Result<bool> {
    let admin = connect(&pg.url("postgres"), 1).await?;
    sqlx::query("create database parley")
        .execute(&admin)
        .await
        .context("create the database")?;
    admin.close().await;

    let env = role_env(&nats.url(), &pg.url(DB), secret);
    infra::migrate(bin, &env, out).await?;
    let mut auth = Role::new(bin, "auth", "auth", env.clone(), out)?;
    let mut persistence = (1..=replicas)
        .map(|n| {
            Role::new(
                bin,
                "persistence",
                &format!("persistence-{n}"),
                env.clone(),
                out,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut gateways = vec![
        Role::new(bin, "gateway", "gateway-a", env.clone(), out)?,
        Role::new(bin, "gateway", "gateway-b", env.clone(), out)?,
    ];
    let mut roles: Vec<&mut Role> = std::iter::once(&mut auth)
        .chain(persistence.iter_mut())
        .chain(gateways.iter_mut())
        .collect();
    for r in &mut roles {
        r.spawn()?;
    }
    for r in &mut roles {
        r.ready().await?;
    }
    drop(roles);
    eprintln!(
        "chaos: NATS {}, Postgres {}, auth, {replicas} persistence, gateways A and B ready",
        nats.url(),
        pg.port
    );

    let mut system = System {
        nats,
        pg,
        auth,
        persistence,
        gateways,
    };
    let outcome = load_and_faults(args, &mut system, secret, out, started).await;
    for r in system.roles() {
        r.stop().await;
    }
    let (report, pass) = outcome?;
    print!("{report}");
    std::fs::write(out.join("results.txt"), &report)?;
    Ok(pass)
}

/// The processes, for the faults to reach.
struct System<'a> {
    nats: &'a mut Nats,
    pg: &'a Postgres,
    auth: Role,
    persistence: Vec<Role>,
    gateways: Vec<Role>,
}

impl System<'_> {
    fn roles(&mut self) -> impl Iterator<Item = &mut Role> {
        std::iter::once(&mut self.auth)
            .chain(self.persistence.iter_mut())
            .chain(self.gateways.iter_mut())
    }

    /// The role a fault kills, if it kills one.
    fn role_of(&mut self, fault: Fault) -> Option<&mut Role> {
        match fault {
            Fault::Persistence => Some(&mut self.persistence[0]),
            Fault::GatewayB => Some(&mut self.gateways[1]),
            Fault::Auth => Some(&mut self.auth),
            Fault::PgStop | Fault::PgReset | Fault::Nats => None,
        }
    }

    fn mark_all(&mut self, what: &str) {
        mark(&self.nats.log, what);
        let logs: Vec<PathBuf> = self.roles().map(|r| r.log.clone()).collect();
        for log in logs {
            mark(&log, what);
        }
    }
}

/// What the roles get, over the run's own environment: the private servers, HS256 tokens the
/// run mints, the per-user send rate (an abuse guard) lifted, JSON logs at info.
fn role_env(nats: &str, db: &str, secret: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("NATS_URL", nats.to_owned()),
        ("DATABASE_URL", db.to_owned()),
        ("PARLEY_NATS_PREFIX", "chaos".to_owned()),
        ("AUTH_SECRET", secret.to_owned()),
        ("AUTH_TOKEN_KINDS", "hs256".to_owned()),
        ("PARLEY_SEND_RATE", "1000000".to_owned()),
        ("PARLEY_SEND_BURST", "1000000".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ];
    if std::env::var_os("RUST_LOG").is_none() {
        env.push(("RUST_LOG", "info".to_owned()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

async fn connect(url: &str, max: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?
        .application_name(OWN_APP)
        .disable_statement_logging();
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await
        .with_context(|| format!("connect to {url}"))
}

/// The users, the load, the faults, the drain; the report and whether it passed.
async fn load_and_faults(
    args: &Args,
    system: &mut System<'_>,
    secret: &str,
    out: &Path,
    started: Instant,
) -> anyhow::Result<(String, bool)> {
    let gateway_addrs: Vec<SocketAddr> = system
        .gateways
        .iter()
        .map(|g| SocketAddr::from(([127, 0, 0, 1], g.port.expect("a gateway's port"))))
        .collect();
    let run = format!("c{:x}", chrono::Utc::now().timestamp_millis());
    let users = open_dms(args.users, &run, secret, &gateway_addrs).await?;
    let conversations: Vec<String> = users.iter().map(|u| u.conversation.clone()).collect();
    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::default()),
        epoch: started,
        gateways: gateway_addrs,
        interval: Duration::from_secs_f64(args.users as f64 / args.rate),
        stop_sending: CancellationToken::new(),
        stop: CancellationToken::new(),
        counters: clients::Counters::default(),
    });

    let db = connect(&system.pg.url(DB), 1).await?;
    let poller = tokio::spawn(poll(db.clone(), conversations.clone(), shared.clone()));
    let tasks: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(n, u)| tokio::spawn(clients::run(u, n, shared.clone())))
        .collect();
    eprintln!(
        "chaos: {} users sending {} msg/s; faults: {:?}",
        args.users, args.rate, args.faults
    );

    let give_up = Duration::from_secs_f64(args.give_up);
    let steady = Duration::from_secs_f64(args.steady);
    let mut results = Vec::new();
    tokio::time::sleep(steady).await;
    for &fault in &args.faults {
        // Each fault meets a settled system: what the last one left behind (a backlog acked
        // while it lasted) is written and delivered first, so no figure carries another's.
        let deadline = Instant::now() + give_up;
        while Instant::now() < deadline {
            let settled_by = shared.now().saturating_sub(1_000_000);
            if shared
                .ledger
                .lock()
                .expect("ledger lock")
                .outstanding(settled_by)
                == 0
            {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        let r = inject(fault, args, system, &shared, give_up).await?;
        eprintln!(
            "chaos: {:<32} recovery {}, max ack latency {:.2}s",
            r.what,
            r.recovery_s
                .map_or_else(|| "NEVER (gave up)".to_owned(), |s| format!("{s:.2}s")),
            r.max_ack_latency_s
        );
        results.push(r);
    }

    // The load stops; what waits for its ack is still sent, and the rest should settle.
    shared.stop_sending.cancel();
    let last_send = shared.now();
    eprintln!("chaos: load stopped; waiting for the last messages");
    let deadline = Instant::now() + give_up;
    while Instant::now() < deadline {
        let (owed, unacked) = {
            let l = shared.ledger.lock().expect("ledger lock");
            (l.outstanding(u64::MAX), l.unacknowledged())
        };
        if owed == 0 && unacked == 0 {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    shared.stop.cancel();
    for t in tasks {
        t.await?;
    }
    poller.abort();
    // One last full read, so the totals see every row, whatever the poller's watermarks.
    let final_read = read_rows(&db, &conversations, &vec![0; conversations.len()]).await?;
    {
        let now = shared.now();
        let mut l = shared.ledger.lock().expect("ledger lock");
        for row in &final_read {
            l.store(row, now);
        }
    }
    db.close().await;

    let totals = shared.ledger.lock().expect("ledger lock").totals(last_send);
    let (text, pass) = verdict(args, &results, &totals, &shared, out)?;
    Ok((text, pass))
}

/// The users, in pairs, each pair's DM opened (by its first member, on gateway A).
async fn open_dms(
    n: usize,
    run: &str,
    secret: &str,
    gateways: &[SocketAddr],
) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::with_capacity(n);
    for pair in 0..n / 2 {
        let (a, b) = (
            format!("{run}-{}", 2 * pair),
            format!("{run}-{}", 2 * pair + 1),
        );
        let token = crate::ctx::token(secret, &a);
        let target = Target {
            addr: gateways[0],
            sources: Arc::from([std::net::IpAddr::from([127, 0, 0, 1])]),
            transport: Transport::Ws,
        };
        let mut client = Client::connect(&target, target.source(0), &token).await?;
        let reply = client
            .call(
                "conversation:open",
                &json!({ "participantIds": [b] }).to_string(),
            )
            .await?;
        let conversation = reply["conversation"]["id"]
            .as_str()
            .context("conversation:open without an id")?
            .to_owned();
        drop(client);
        for (i, (me, peer)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
            users.push(User {
                id: me.clone(),
                token: crate::ctx::token(secret, me),
                home: i % gateways.len(),
                peer: peer.clone(),
                conversation: conversation.clone(),
            });
        }
    }
    Ok(users)
}

/// Reads what Postgres holds of the run's conversations above each one's watermark, every
/// [`POLL_EVERY`], into the ledger. A failed read (Postgres down) is simply tried again.
async fn poll(db: PgPool, conversations: Vec<String>, shared: Arc<Shared>) {
    loop {
        let marks = shared
            .ledger
            .lock()
            .expect("ledger lock")
            .stored_watermarks(&conversations);
        if let Ok(rows) = read_rows(&db, &conversations, &marks).await {
            let now = shared.now();
            let mut l = shared.ledger.lock().expect("ledger lock");
            for row in &rows {
                l.store(row, now);
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn read_rows(
    db: &PgPool,
    conversations: &[String],
    above: &[i64],
) -> anyhow::Result<Vec<Row>> {
    let rows: Vec<(String, i64, String, String, String)> = sqlx::query_as(
        "select m.conversation_id::text, m.seq, m.id::text, m.sender_id, m.client_msg_id \
         from messages m \
         join unnest($1::text[], $2::int8[]) as w(c, s) \
           on m.conversation_id = w.c::uuid and m.seq > w.s",
    )
    .bind(conversations)
    .bind(above)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(conversation, seq, id, sender, cmid)| Row {
            conversation,
            seq,
            id,
            key: Key::new(&sender, &cmid),
        })
        .collect())
}

/// Injects one fault, heals it, and waits (up to `give_up`) for the recovery.
async fn inject(
    fault: Fault,
    args: &Args,
    system: &mut System<'_>,
    shared: &Shared,
    give_up: Duration,
) -> anyhow::Result<FaultResult> {
    let secs = |us: u64| us as f64 / 1e6;
    system.mark_all(&format!("fault {} injected", fault.describe()));
    let injected = shared.now();
    let mut connections_ended = None;
    match fault {
        Fault::Persistence | Fault::GatewayB | Fault::Auth => {
            let r = system.role_of(fault).expect("a role's fault");
            r.kill().await?;
            r.spawn()?;
        }
        Fault::PgStop => {
            system.pg.down().await?;
            tokio::time::sleep(Duration::from_secs_f64(args.pg_down)).await;
            system.pg.up().await?;
        }
        Fault::PgReset => {
            let admin = connect(&system.pg.url("postgres"), 1).await?;
            let (ended,): (i64,) = sqlx::query_as(
                "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity \
                 where datname = $1 and pid <> pg_backend_pid() and application_name <> $2",
            )
            .bind(DB)
            .bind(OWN_APP)
            .fetch_one(&admin)
            .await
            .context("pg_terminate_backend")?;
            admin.close().await;
            connections_ended = Some(ended as u64);
        }
        Fault::Nats => {
            system.nats.kill().await?;
            tokio::time::sleep(Duration::from_secs_f64(args.nats_down)).await;
            system.nats.spawn().await?;
        }
    }
    let healed = shared.now();
    let owed_at_heal = shared
        .ledger
        .lock()
        .expect("ledger lock")
        .outstanding(healed);
    let label = format!("fault {} healed", fault.describe());
    system.mark_all(&label);
    let ready_after = match system.role_of(fault) {
        Some(r) => {
            r.ready().await?;
            Some(secs(shared.now() - healed))
        }
        None => None,
    };
    let deadline = Instant::now() + give_up;
    loop {
        let owed = shared
            .ledger
            .lock()
            .expect("ledger lock")
            .outstanding(healed);
        if owed == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Steady load after the heal (its first seconds give the settle figure), before the next.
    let after = healed + (args.steady * 1e6) as u64;
    while shared.now() < after {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let l = shared.ledger.lock().expect("ledger lock");
    let now = shared.now();
    let recovery_s = l.recovery(healed).map(secs);
    Ok(FaultResult {
        fault,
        what: fault.describe(),
        injected_at: secs(injected),
        healed_at: secs(healed),
        down_s: secs(healed - injected),
        ready_after_s: ready_after,
        owed_at_heal,
        recovery_s,
        max_ack_latency_s: secs(l.max_ack_latency(injected, healed, now)),
        max_settle_after_heal_s: secs(l.max_settle_latency(healed, after, now)),
        connections_ended,
        within_max: recovery_s.is_some_and(|s| s <= args.max_recovery),
    })
}

/// The report (text, also written as results.json) and whether the run passed.
fn verdict(
    args: &Args,
    results: &[FaultResult],
    totals: &Totals,
    shared: &Shared,
    out: &Path,
) -> anyhow::Result<(String, bool)> {
    let c = &shared.counters;
    let settled_s = totals.settled_after_last_send_us.map(|us| us as f64 / 1e6);
    let settled_in_time = settled_s.is_some_and(|s| s <= args.settle_within);
    let recoveries_ok = results.iter().all(|r| r.within_max);
    let pass = totals.sound() && recoveries_ok;

    let mut t = String::new();
    writeln!(
        t,
        "chaos: {} users in {} DMs over gateways A and B, {} msg/s; --max-recovery {}s",
        args.users,
        args.users / 2,
        args.rate,
        args.max_recovery
    )?;
    writeln!(
        t,
        "{:<30} {:>7} {:>7} {:>6} {:>10} {:>9} {:>12}",
        "fault", "down", "ready", "owed", "recovery", "max ack", "settle after"
    )?;
    let s = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}s"));
    for r in results {
        writeln!(
            t,
            "{:<30} {:>7} {:>7} {:>6} {:>10} {:>9} {:>12}{}",
            r.what,
            s(Some(r.down_s)),
            s(r.ready_after_s),
            r.owed_at_heal,
            r.recovery_s
                .map_or_else(|| "NEVER".to_owned(), |v| format!("{v:.2}s")),
            s(Some(r.max_ack_latency_s)),
            s(Some(r.max_settle_after_heal_s)),
            if r.within_max { "" } else { "  > max" }
        )?;
    }
    writeln!(
        t,
        "  down: injection → heal; ready: heal → /readyz of the restarted role; owed: acknowledged \
         but not yet stored+delivered at the heal;\n  recovery: heal → all acknowledged by then \
         stored and delivered; max ack: longest send → ack while down; settle after: longest \
         ack → stored+delivered of messages acknowledged in the --steady seconds after the heal"
    )?;
    writeln!(
        t,
        "totals: sent {}, acknowledged {}, stored {}, delivered {}, lost {}, undelivered {}, \
         duplicated {}, seq gaps {}, order violations {}, mismatched {}",
        totals.sent,
        totals.acknowledged,
        totals.stored,
        totals.delivered,
        totals.lost,
        totals.undelivered,
        totals.duplicated,
        totals.seq_gaps,
        totals.order_violations,
        totals.mismatched
    )?;
    writeln!(
        t,
        "every acknowledged message stored and delivered within {}s of the last send: {} \
         (the last after {})",
        args.settle_within,
        if settled_in_time { "yes" } else { "NO" },
        settled_s.map_or_else(|| "never".to_owned(), |s| format!("{s:.2}s"))
    )?;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    writeln!(
        t,
        "clients: {} connects ({} failed), {} reconnects (dropped {}, answer late {}, unavailable \
         {}), {} resends, {} syncs, {} messages first had by sync",
        n(&c.connects),
        n(&c.failed_connects),
        n(&c.reconnects),
        n(&c.dropped),
        n(&c.timeouts),
        n(&c.unavailable),
        n(&c.resends),
        n(&c.syncs),
        n(&c.by_sync)
    )?;
    let other = c.other_errors.lock().expect("errors lock").clone();
    if !other.is_empty() {
        writeln!(t, "other errors the clients saw: {other:?}")?;
    }
    writeln!(
        t,
        "{}",
        if pass {
            "chaos: PASSED (nothing lost, doubled, gapped or reordered; every recovery within the maximum)"
        } else {
            "chaos: FAILED"
        }
    )?;

    let json = json!({
        "params": {
            "users": args.users, "rate": args.rate, "steady_s": args.steady,
            "pg_down_s": args.pg_down, "nats_down_s": args.nats_down,
            "max_recovery_s": args.max_recovery, "settle_within_s": args.settle_within,
        },
        "faults": results,
        "totals": totals,
        "settled_after_last_send_s": settled_s,
        "settled_within": settled_in_time,
        "clients": {
            "connects": n(&c.connects), "failed_connects": n(&c.failed_connects),
            "reconnects": n(&c.reconnects), "dropped": n(&c.dropped),
            "answer_late": n(&c.timeouts), "unavailable": n(&c.unavailable),
            "resends": n(&c.resends), "syncs": n(&c.syncs), "by_sync": n(&c.by_sync),
            "other_errors": other,
        },
        "sound": totals.sound(),
        "recoveries_within_max": recoveries_ok,
        "passed": pass,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok((t, pass))
}
