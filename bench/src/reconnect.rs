//! `reconnect`: N clients in DMs, each holding one message; then a second message is sent in
//! every conversation and at once the gateway is restarted. Each client does what a real one
//! does: waits as `server:draining` asks (or backs off, after a crash), reconnects, sends again
//! any message whose ack it never got (same clientMsgId: stored once whatever happened), and
//! syncs from the last seq it holds. The figure is the time from the restart until every client
//! is back and synced; the check is that every client ends holding both messages, each once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt, StreamExt, TryStreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Client, Incoming, Target};
use crate::ctx::{Ctx, micros_since};
use crate::report::{self, Report};
use crate::system::{CpuSample, Front};

/// How long a client keeps trying to come back.
const GIVE_UP: Duration = Duration::from_secs(120);
/// Backoff after a failed connect: from the first to the cap, doubling, with full jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The request id of the second message's first send.
const SECOND_ID: u64 = 2_000_000;

/// The second message of a conversation: sent as the gateway stops, and sent again with the
/// same clientMsgId if its ack never came.
fn second_message(conversation: &str) -> String {
    json!({ "conversationId": conversation, "clientMsgId": "r2", "content": "during the restart" })
        .to_string()
}

struct Peer {
    n: usize,
    token: String,
    conversation: String,
    base: i64,
    /// The member that sends (the other only receives).
    sender: bool,
}

#[derive(Default)]
struct Outcome {
    /// Microseconds since the bench's epoch when it was back and synced.
    synced_at: Option<u64>,
    attempts: u64,
    resent: bool,
    recovered: u64,
    live_duplicates: u64,
    /// Requests answered `unavailable` and tried again, as the protocol asks.
    retries: u64,
    /// Connects refused with a time to come back (the gateway's connect rate).
    told_to_wait: u64,
    seen: BTreeSet<i64>,
    error: Option<String>,
}

/// Counters the main task watches.
#[derive(Default)]
struct Progress {
    /// Clients holding the first message.
    primed: AtomicU64,
    /// Senders that wrote the second message.
    second_written: AtomicU64,
    /// Clients back and synced.
    synced: AtomicU64,
}

pub async fn run(ctx: &mut Ctx, clients: usize, signal: &str) -> anyhow::Result<Report> {
    let clients = clients.max(2) & !1;
    let mut report = Report::new(
        "reconnect",
        json!({ "transport": ctx.target.transport, "clients": clients, "signal": signal }),
    );
    if ctx.system.is_none() {
        bail!("reconnect restarts the gateway: start it from the bench with --parley");
    }
    let users: Vec<String> = (0..clients).map(|n| ctx.user("reconnect", n)).collect();
    eprintln!("reconnect: connecting {clients} clients");
    let (connected, connect_time) = ctx.connect_all(&users).await?;
    report.figure("clients", clients as f64, "");
    report.figure("first connect time", connect_time.as_secs_f64(), "s");

    // A DM per pair, and its first message.
    let mut pairs = Vec::new();
    let mut it = connected.into_iter();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        pairs.push((a, b));
    }
    let opened: Vec<(Client, Client, String, i64)> = futures::stream::iter(pairs.into_iter().enumerate())
        .map(|(k, (mut a, b))| {
            let peer = users[2 * k + 1].clone();
            async move {
                let reply = a
                    .call("conversation:open", &json!({ "participantIds": [peer] }).to_string())
                    .await?;
                let id = reply["conversation"]["id"].as_str().context("conversation id")?.to_owned();
                let base = reply["conversation"]["lastSeq"].as_i64().unwrap_or(0);
                let send = json!({ "conversationId": id, "clientMsgId": "r1", "content": "before the restart" });
                a.call("message:send", &send.to_string()).await?;
                Ok::<_, anyhow::Error>((a, b, id, base))
            }
        })
        .buffered(64)
        .try_collect()
        .await?;

    eprintln!(
        "reconnect: {} DMs opened, each with its first message",
        opened.len()
    );
    let progress = Arc::new(Progress::default());
    let (go, go_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (k, (a, b, id, base)) in opened.into_iter().enumerate() {
        for (i, client) in [a, b].into_iter().enumerate() {
            let n = 2 * k + i;
            let peer = Peer {
                n,
                token: ctx.token(&users[n]),
                conversation: id.clone(),
                base,
                sender: i == 0,
            };
            tasks.push(tokio::spawn(live(
                client,
                peer,
                ctx.target.clone(),
                ctx.epoch,
                progress.clone(),
                go_rx.clone(),
            )));
        }
    }
    wait_for(
        &progress.primed,
        clients as u64,
        "every client to hold the first message",
    )
    .await?;
    let settled = settle(ctx).await?;
    eprintln!(
        "reconnect: system at rest after {:.1} s",
        settled.as_secs_f64()
    );
    go.send_replace(true);
    wait_for(
        &progress.second_written,
        clients as u64 / 2,
        "the second messages to be written",
    )
    .await?;

    let system = ctx.system.as_mut().expect("checked above");
    let cpu_before = CpuSample::take(Front::Gateway(None), &system.persistence_pids());
    let restart_at = micros_since(ctx.epoch);
    let restart = Instant::now();
    eprintln!("reconnect: restarting the gateway (SIG{signal})");
    system.stop_gateway(signal).await?;
    let stopped = restart.elapsed();
    system.start_gateway().await?;
    let ready = restart.elapsed();

    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await?);
    }
    report.cpu_cores = ctx.cpu().cores_since(&cpu_before);
    report.figure("old gateway gone after", stopped.as_secs_f64(), "s");
    report.figure("new gateway ready after", ready.as_secs_f64(), "s");

    let mut times = report::histogram();
    let (mut failed, mut attempts, mut resent, mut recovered, mut dups) = (0, 0, 0, 0, 0);
    let (mut retries, mut told_to_wait) = (0, 0);
    for o in &outcomes {
        attempts += o.attempts;
        told_to_wait += o.told_to_wait;
        retries += o.retries;
        resent += u64::from(o.resent);
        recovered += o.recovered;
        dups += o.live_duplicates;
        match (o.synced_at, &o.error) {
            (Some(at), None) => {
                let _ = times.record(at.saturating_sub(restart_at).max(1));
            }
            (_, error) => {
                failed += 1;
                if failed <= 3 {
                    report.problem(format!(
                        "a client did not come back: {}",
                        error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
    }
    if failed > 0 {
        report.problem(format!("{failed} clients did not reconnect and sync"));
    }
    if dups > 0 {
        report.problem(format!("{dups} messages were delivered live twice"));
    }
    let all = times.max() as f64 / 1e6;
    report.figure("all back and synced after", all, "s");
    report.figure(
        "per client p50",
        times.value_at_quantile(0.5) as f64 / 1e6,
        "s",
    );
    report.figure(
        "per client p99",
        times.value_at_quantile(0.99) as f64 / 1e6,
        "s",
    );
    report.figure("connect attempts", attempts as f64, "");
    report.figure("connects told to come back later", told_to_wait as f64, "");
    report.figure("requests retried after unavailable", retries as f64, "");
    report.figure("unacked sends resent", resent as f64, "msgs");
    report.figure("messages recovered by sync", recovered as f64, "msgs");
    Ok(report)
}

async fn wait_for(counter: &AtomicU64, target: u64, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + GIVE_UP;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            bail!(
                "gave up waiting for {what}: {} of {target}",
                counter.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One client's life across the restart.
async fn live(
    mut client: Client,
    peer: Peer,
    target: Target,
    epoch: Instant,
    progress: Arc<Progress>,
    mut go: watch::Receiver<bool>,
) -> Outcome {
    let mut o = Outcome::default();
    let result = async {
        let first = peer.base + 1;
        let second = peer.base + 2;
        let mut primed = false;
        let mut second_acked = false;
        let mut second_sent = false;
        let mut wait_ms: Option<u64> = None;
        // Until the connection ends: take deliveries (first those that came during setup),
        // and send the second message on cue.
        let mut backlog = std::mem::take(&mut client.skipped).into_iter();
        loop {
            if let Some(text) = backlog.next() {
                handle(&text, client.transport, &mut o, first, &mut primed, &progress, &mut wait_ms, &mut second_acked)?;
                continue;
            }
            let frame = tokio::select! {
                // `wait_for` sees a cue given before this client was primed too (the last
                // client primed races the main task's flip).
                cue = async { go.wait_for(|go| *go).await.map(drop) }, if peer.sender && primed && !second_sent => {
                    second_sent = true;
                    if cue.is_ok() {
                        let frame = client::encode(client.transport, Some(SECOND_ID), "message:send", &second_message(&peer.conversation));
                        client.writer.lock().await.send(Message::text(frame)).await?;
                        progress.second_written.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                f = client.reader.next() => f,
            };
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => continue,
            };
            if matches!(client::parse(client.transport, &text), Incoming::Ping) {
                client::pong(&client.writer).await?;
                continue;
            }
            handle(&text, client.transport, &mut o, first, &mut primed, &progress, &mut wait_ms, &mut second_acked)?;
        }
        drop(client);

        // Back: as the server asked, else after a backoff; then again until it answers.
        let gone = Instant::now();
        let mut delay = match wait_ms {
            Some(ms) => Duration::from_millis(ms),
            None => jitter(BACKOFF_FIRST, peer.n as u64),
        };
        let mut backoff = BACKOFF_FIRST;
        let mut client = loop {
            tokio::time::sleep(delay).await;
            o.attempts += 1;
            match Client::connect(&target, target.source(peer.n), &peer.token).await {
                Ok(c) => break c,
                Err(e) if gone.elapsed() > GIVE_UP => return Err(e.context("reconnect")),
                // Told when to come back (the gateway's connect rate).
                Err(e) if let Some(wait) = Client::told_to_wait(&e, peer.n as u64 + o.attempts) => {
                    o.told_to_wait += 1;
                    delay = wait;
                }
                Err(_) => {
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    delay = jitter(backoff, peer.n as u64 + o.attempts);
                }
            }
        };
        if peer.sender && !second_acked {
            o.resent = true;
            call_retrying(&mut client, "message:send", &second_message(&peer.conversation), &peer, &mut o.retries)
                .await
                .context("resend")?;
        }
        let after = o.seen.iter().copied().filter(|s| *s <= second).max().unwrap_or(peer.base);
        let sync = json!({ "conversations": [{ "conversationId": peer.conversation, "afterSeq": after }] });
        let reply = call_retrying(&mut client, "sync", &sync.to_string(), &peer, &mut o.retries)
            .await
            .context("sync")?;
        for m in reply["messages"].as_array().into_iter().flatten() {
            if let Some(seq) = m["seq"].as_i64()
                && o.seen.insert(seq)
            {
                o.recovered += 1;
            }
        }
        o.synced_at = Some(micros_since(epoch));
        progress.synced.fetch_add(1, Ordering::Relaxed);

        // A message stored after this sync still comes live (perhaps while the resend or the
        // sync waited for its answer).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut backlog = std::mem::take(&mut client.skipped).into_iter();
        while !o.seen.contains(&second) {
            let text = match backlog.next() {
                Some(text) => text,
                None => tokio::time::timeout_at(deadline, client::next_text(&mut client.reader))
                    .await
                    .map_err(|_| anyhow::anyhow!("the second message never came"))??,
            };
            match client::parse(client.transport, &text) {
                Incoming::Event { name: "message:new", data } => {
                    let seq = serde_json::from_str::<serde_json::Value>(data.get())?["seq"].as_i64().unwrap_or(0);
                    o.seen.insert(seq);
                }
                Incoming::Ping => client::pong(&client.writer).await?,
                _ => {}
            }
        }
        let _ = client.writer.lock().await.close().await;
        if o.seen != BTreeSet::from([first, second]) {
            bail!("holds seqs {:?}, expected {first} and {second}", o.seen);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        o.error = Some(format!("{e:#}"));
    }
    o
}

/// CPU of the system under test (every process but the bench) below which it is at rest.
const REST_CORES: f64 = 0.15;
/// The longest wait for it: on a machine that something else keeps busy (a test run beside the
/// bench) the system never looks at rest, and the restart goes ahead.
const REST_WAIT: Duration = Duration::from_secs(15);

/// Brings the system to where a restart would find it in production, long after its clients
/// connected: the planner's statistics current (the database was empty a minute ago, and
/// autovacuum's analyze has not run yet: plans made for empty tables scan them whole) and the
/// work of the connect phase done (every arrival recorded and announced to its contacts).
/// Returns how long it took (at most about [`REST_WAIT`]).
async fn settle(ctx: &Ctx) -> anyhow::Result<Duration> {
    let started = Instant::now();
    if let Ok(url) = std::env::var("DATABASE_URL") {
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .context("connect to DATABASE_URL to analyze")?;
        sqlx::raw_sql("analyze")
            .execute(&mut db)
            .await
            .context("analyze")?;
    }
    loop {
        let before = ctx.cpu();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy: f64 = ctx
            .cpu()
            .cores_since(&before)
            .iter()
            .filter(|(process, _)| {
                process.as_str() != "bench" && !process.starts_with("persistence ")
            })
            .map(|(_, cores)| cores)
            .sum();
        if busy < REST_CORES {
            return Ok(started.elapsed());
        }
        if started.elapsed() > REST_WAIT {
            eprintln!(
                "reconnect: the system is not at rest after {REST_WAIT:?} ({busy:.2} cores, perhaps \
                 from outside it): restarting anyway"
            );
            return Ok(started.elapsed());
        }
    }
}

/// A request, tried again after a backoff while the answer is `unavailable` (the protocol's
/// "retry": the gateway or persistence is overloaded or restarting), as a real client does.
async fn call_retrying(
    client: &mut Client,
    event: &str,
    data: &str,
    peer: &Peer,
    retries: &mut u64,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let mut backoff = BACKOFF_FIRST;
    loop {
        let reply = client.request(event, data).await?;
        if reply["ok"] == true {
            return Ok(reply);
        }
        if reply["error"]["code"] != "unavailable" || started.elapsed() > GIVE_UP {
            bail!("{event} refused: {}", reply["error"]);
        }
        *retries += 1;
        backoff = (backoff * 2).min(BACKOFF_CAP);
        tokio::time::sleep(jitter(backoff, peer.n as u64 + *retries)).await;
    }
}

/// One frame before the restart: a delivery (the first one primes the client), the drain
/// notice, or the ack of the second message.
#[allow(clippy::too_many_arguments)]
fn handle(
    text: &str,
    transport: client::Transport,
    o: &mut Outcome,
    first: i64,
    primed: &mut bool,
    progress: &Progress,
    wait_ms: &mut Option<u64>,
    second_acked: &mut bool,
) -> anyhow::Result<()> {
    match client::parse(transport, text) {
        Incoming::Event {
            name: "message:new",
            data,
        } => {
            let seq = serde_json::from_str::<serde_json::Value>(data.get())?["seq"]
                .as_i64()
                .unwrap_or(0);
            if !o.seen.insert(seq) {
                o.live_duplicates += 1;
            }
            if seq == first && !*primed {
                *primed = true;
                progress.primed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Incoming::Event {
            name: "server:draining",
            data,
        } => {
            *wait_ms =
                serde_json::from_str::<serde_json::Value>(data.get())?["reconnectAfterMs"].as_u64();
        }
        Incoming::Ack {
            id: SECOND_ID,
            data,
        } => {
            *second_acked = serde_json::from_str::<serde_json::Value>(data.get())?["ok"] == true;
        }
        _ => {}
    }
    Ok(())
}

/// A delay in [0, max) that differs from client to client (full jitter).
pub(crate) fn jitter(max: Duration, seed: u64) -> Duration {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (std::process::id() as u64);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    let max = max.as_micros().max(1) as u64;
    Duration::from_micros(x % max)
}
