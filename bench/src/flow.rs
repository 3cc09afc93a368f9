//! `dm` and `group`: conversations of `members` users, every member sending, at a set total
//! rate for a set time. Every member reads every message of its conversation (its own too:
//! the sender's other devices must see them), and checks as it reads that they come exactly
//! once and in seq order. Each message carries the moment it was sent, so every delivery gives
//! one send→deliver latency sample.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{SinkExt, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Client, Incoming, Transport, Writer};
use crate::ctx::{Ctx, micros_since};
use crate::report::{self, Report};
use crate::system::{self, System};

/// How long the bench waits, after the last send, for deliveries that still make progress.
const DRAIN_IDLE: Duration = Duration::from_secs(15);
/// Request ids of sends start here, clear of the ids setup requests used.
const FIRST_SEND_ID: u64 = 1_000_000;
/// Histogram shards, so readers rarely wait on each other.
const SHARDS: usize = 16;

#[derive(Clone, Debug)]
pub struct FlowParams {
    pub scenario: &'static str,
    pub conversations: usize,
    pub members: usize,
    /// Messages per second, over all senders.
    pub rate: f64,
    pub duration: Duration,
    /// Characters of content per message (at least the 16 of the timestamp).
    pub content: usize,
}

/// What all readers add to while the load runs.
struct Shared {
    epoch: Instant,
    /// Acks of sends, whatever they said.
    acked: AtomicU64,
    /// Deliveries seen, and deliveries owed (members × accepted sends).
    delivered: AtomicU64,
    expected: AtomicU64,
    /// Microseconds since the epoch of the last ack and the last delivery.
    last_ack: AtomicU64,
    last_delivery: AtomicU64,
    latency: Vec<std::sync::Mutex<Histogram<u64>>>,
}

/// What one member saw.
#[derive(Default)]
struct Tally {
    delivered: u64,
    last_seq: i64,
    duplicates: u64,
    missing: u64,
    foreign: u64,
    accepted: u64,
    refused: BTreeMap<String, u64>,
    ended: Option<String>,
}

struct Member {
    conversation: usize,
    conversation_id: String,
    base_seq: i64,
}

pub async fn run(ctx: &Ctx, p: FlowParams) -> anyhow::Result<Report> {
    let transport = ctx.target.transport;
    let mut report = Report::new(
        p.scenario,
        json!({
            "transport": transport,
            "conversations": p.conversations,
            "members": p.members,
            "rate": p.rate,
            "seconds": p.duration.as_secs_f64(),
            "contentChars": p.content,
        }),
    );
    let users: Vec<String> = (0..p.conversations * p.members)
        .map(|n| ctx.user(p.scenario, n))
        .collect();
    eprintln!(
        "{}: connecting {} clients over {transport:?}",
        p.scenario,
        users.len()
    );
    let (clients, connect_time) = ctx.connect_all(&users).await?;
    report.figure("connections", users.len() as f64, "");
    report.figure("connect time", connect_time.as_secs_f64(), "s");

    // One conversation per group of `members` clients, opened by its first member.
    let mut groups: Vec<Vec<Client>> = Vec::new();
    let mut clients = clients.into_iter();
    for _ in 0..p.conversations {
        groups.push(clients.by_ref().take(p.members).collect());
    }
    let opened: Vec<(Vec<Client>, String, i64)> =
        futures::stream::iter(groups.into_iter().enumerate())
            .map(|(c, mut group)| {
                let others: Vec<&str> = (1..p.members)
                    .map(|k| users[c * p.members + k].as_str())
                    .collect();
                let data = if p.members == 2 {
                    json!({ "participantIds": others })
                } else {
                    json!({ "participantIds": others, "title": format!("bench room {c}") })
                };
                async move {
                    let reply = group[0]
                        .call("conversation:open", &data.to_string())
                        .await
                        .context("open a conversation")?;
                    let conversation = &reply["conversation"];
                    let id = conversation["id"]
                        .as_str()
                        .context("conversation id")?
                        .to_owned();
                    let base = conversation["lastSeq"].as_i64().unwrap_or(0);
                    Ok::<_, anyhow::Error>((group, id, base))
                }
            })
            .buffered(64)
            .try_collect()
            .await?;

    let shared = Arc::new(Shared {
        epoch: ctx.epoch,
        acked: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        last_ack: AtomicU64::new(0),
        last_delivery: AtomicU64::new(0),
        latency: (0..SHARDS)
            .map(|_| std::sync::Mutex::new(report::histogram()))
            .collect(),
    });
    let stop = CancellationToken::new();
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let mut members = Vec::new();
    for (c, (group, id, base)) in opened.into_iter().enumerate() {
        for client in group {
            let n = members.len();
            members.push(Member {
                conversation: c,
                conversation_id: id.clone(),
                base_seq: base,
            });
            writers.push((client.writer.clone(), id.clone()));
            readers.push(tokio::spawn(read(
                client,
                id.clone(),
                base,
                p.members as u64,
                shared.clone(),
                stop.clone(),
                n % SHARDS,
            )));
        }
    }

    // The load: every member sends its share of the rate.
    let per_sender = p.rate / writers.len() as f64;
    let pad = "x".repeat(p.content.saturating_sub(16));
    eprintln!(
        "{}: {} messages/s for {:?} ({per_sender:.2}/s from each of {} senders)",
        p.scenario,
        p.rate,
        p.duration,
        writers.len()
    );
    // Read before the CPU is: for the reference, counting its rows is a query of its own.
    let persisted_before = ctx.persisted().await;
    let cpu_before = ctx.cpu();
    let lag = ctx.system.as_ref().map(System::watch_lag);
    let started = Instant::now();
    let start_micros = ctx.micros();
    let deadline = started + p.duration;
    let senders: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(n, (writer, conversation))| {
            // Senders spread evenly over one sender's period, so the offered load is smooth
            // rather than every sender firing in the same instant.
            let phase = (n as f64 * 0.618_033_988_75).fract();
            let offset =
                Duration::from_secs_f64(phase / per_sender.max(1e-3)).min(Duration::from_secs(1));
            tokio::spawn(send(
                writer,
                transport,
                conversation,
                per_sender,
                started + offset,
                deadline,
                ctx.epoch,
                pad.clone(),
            ))
        })
        .collect();
    let mut sent = 0u64;
    let mut send_errors = 0u64;
    for s in senders {
        match s.await? {
            Ok(n) => sent += n,
            Err((n, e)) => {
                sent += n;
                send_errors += 1;
                if send_errors <= 3 {
                    report.problem(format!("a sender stopped: {e:#}"));
                }
            }
        }
    }
    let send_time = started.elapsed();
    let cpu_after = ctx.cpu();
    report.cpu_cores = cpu_after.cores_since(&cpu_before);

    // Wait for every ack and every delivery owed, as long as they keep coming.
    let mut last = (u64::MAX, u64::MAX);
    let mut quiet_since = Instant::now();
    loop {
        let acked = shared.acked.load(Ordering::Relaxed);
        let delivered = shared.delivered.load(Ordering::Relaxed);
        if acked >= sent && delivered >= shared.expected.load(Ordering::Relaxed) {
            break;
        }
        if (acked, delivered) != last {
            last = (acked, delivered);
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > DRAIN_IDLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What every message cost, from the first send until the last was acknowledged and
    // delivered (a load the system cannot keep up with is still paid for in full).
    let cpu_done = ctx.cpu();
    report.cpu_us_per_message =
        system::micros_per_message(&cpu_done.seconds_since(&cpu_before), sent);
    // A little longer, so a duplicate that would follow is seen too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lag = match lag {
        Some(watch) => Some(watch.finish().await),
        None => None,
    };
    stop.cancel();
    let mut tallies = Vec::new();
    for r in readers {
        tallies.push(r.await?);
    }

    // Every member must have seen exactly the messages its conversation accepted, in order.
    let mut accepted_in = vec![0u64; p.conversations];
    let mut refused: BTreeMap<String, u64> = BTreeMap::new();
    for (m, t) in members.iter().zip(&tallies) {
        accepted_in[m.conversation] += t.accepted;
        for (code, n) in &t.refused {
            *refused.entry(code.clone()).or_default() += n;
        }
    }
    let accepted: u64 = accepted_in.iter().sum();
    let (mut short, mut duplicates, mut missing, mut foreign, mut ended) = (0, 0, 0, 0, 0);
    for (m, t) in members.iter().zip(&tallies) {
        let owed = accepted_in[m.conversation];
        let got_to = (t.last_seq - m.base_seq).max(0) as u64;
        if t.delivered != owed || got_to != owed {
            short += 1;
        }
        duplicates += t.duplicates;
        missing += t.missing + owed.saturating_sub(got_to);
        foreign += t.foreign;
        if let Some(why) = &t.ended {
            ended += 1;
            if ended <= 3 {
                report.problem(format!(
                    "a member's connection ended ({}): {why}",
                    m.conversation_id
                ));
            }
        }
    }
    if short > 0 {
        report.problem(format!(
            "{short} members did not get exactly their conversation's accepted messages"
        ));
    }
    if duplicates > 0 {
        report.problem(format!(
            "{duplicates} deliveries were duplicates or out of order"
        ));
    }
    if missing > 0 {
        report.problem(format!(
            "{missing} accepted messages were never delivered to a member"
        ));
    }
    if foreign > 0 {
        report.problem(format!("{foreign} deliveries were of another conversation"));
    }
    let acked = shared.acked.load(Ordering::Relaxed);
    if acked < sent {
        report.problem(format!("{} sends were never acknowledged", sent - acked));
    }

    let delivered = shared.delivered.load(Ordering::Relaxed);
    let last_delivery = shared.last_delivery.load(Ordering::Relaxed);
    let seconds = |micros: u64| (micros.saturating_sub(start_micros) as f64 / 1e6).max(1e-6);
    report.figure("sent", sent as f64, "msgs");
    report.figure("accepted", accepted as f64, "msgs");
    for (code, n) in &refused {
        report.figure(format!("refused: {code}"), *n as f64, "msgs");
    }
    report.figure("send phase", send_time.as_secs_f64(), "s");
    report.figure(
        "accepted/s",
        accepted as f64 / seconds(shared.last_ack.load(Ordering::Relaxed)),
        "msgs/s",
    );
    report.figure("delivered", delivered as f64, "deliveries");
    report.figure(
        "delivered/s",
        delivered as f64 / seconds(last_delivery),
        "deliveries/s",
    );
    if let (Some(after), Some(before)) = (ctx.persisted().await, persisted_before) {
        // A message is delivered only once its row is committed, so the last delivery closes
        // the time the rows took too.
        let persisted = after - before;
        report.figure("persisted", persisted, "msgs");
        report.figure("persisted/s", persisted / seconds(last_delivery), "msgs/s");
    }
    let mut latency = report::histogram();
    for shard in &shared.latency {
        latency.add(&*shard.lock().expect("histogram lock"))?;
    }
    report.latencies("send→deliver", &latency);
    if let Some(system) = &ctx.system {
        for (stage, value) in system.stage_means().await {
            let unit = if stage.starts_with("stage") {
                "ms (mean)"
            } else {
                "cmds"
            };
            report.figure(stage, value, unit);
        }
        if let Some(lag) = lag {
            report.figure("partition lag max", lag.partition as f64, "cmds");
            report.figure("all partitions' lag max", lag.total as f64, "cmds");
        }
        for (n, owned) in system.partitions_owned().await.into_iter().enumerate() {
            report.figure(
                format!("partitions owned: persistence {}", n + 1),
                owned as f64,
                "",
            );
        }
    }
    let front = ctx.front();
    if let Some(pid) = front.pid()
        && let Some(rss) = system::rss_bytes(pid)
    {
        report.figure(
            format!("{} RSS", front.name()),
            rss as f64 / (1 << 20) as f64,
            "MiB",
        );
    }
    let pids = ctx.persistence_pids();
    let rss: Vec<u64> = pids
        .iter()
        .filter_map(|&pid| system::rss_bytes(pid))
        .collect();
    if !rss.is_empty() {
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        report.figure("persistence RSS", mib(rss.iter().sum()), "MiB");
        if rss.len() > 1 {
            for (n, bytes) in rss.iter().enumerate() {
                report.figure(format!("persistence {} RSS", n + 1), mib(*bytes), "MiB");
            }
        }
    }
    Ok(report)
}

/// Sends `rate` messages per second from `start` until `deadline`, each stamped with the
/// moment it was written. Returns how many were sent (and why it stopped early, if it did).
#[allow(clippy::too_many_arguments)]
async fn send(
    writer: Writer,
    transport: Transport,
    conversation: String,
    rate: f64,
    start: Instant,
    deadline: Instant,
    epoch: Instant,
    pad: String,
) -> Result<u64, (u64, anyhow::Error)> {
    tokio::time::sleep_until(start.into()).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= deadline {
            return Ok(sent);
        }
        let due = (rate * now.duration_since(start).as_secs_f64()) as u64 + 1;
        let mut w = writer.lock().await;
        while sent < due {
            let id = FIRST_SEND_ID + sent;
            let stamp = micros_since(epoch);
            let data = format!(
                r#"{{"conversationId":"{conversation}","clientMsgId":"{id}","content":"{stamp:016x}{pad}"}}"#
            );
            let frame = client::encode(transport, Some(id), "message:send", &data);
            if let Err(e) = w.feed(Message::text(frame)).await {
                return Err((sent, e.into()));
            }
            sent += 1;
        }
        if let Err(e) = w.flush().await {
            return Err((sent, e.into()));
        }
    }
}

#[derive(Deserialize)]
struct NewMessage<'a> {
    #[serde(rename = "conversationId")]
    conversation_id: &'a str,
    seq: i64,
    #[serde(borrow)]
    content: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct AckData {
    ok: bool,
    error: Option<AckError>,
}

#[derive(Deserialize)]
struct AckError {
    code: String,
}

/// Reads one member's frames until told to stop: counts acks of its sends, and checks that
/// message:new comes exactly once per seq, in order, for its conversation only.
async fn read(
    mut client: Client,
    conversation: String,
    base_seq: i64,
    members: u64,
    shared: Arc<Shared>,
    stop: CancellationToken,
    shard: usize,
) -> Tally {
    let mut t = Tally {
        last_seq: base_seq,
        ..Tally::default()
    };
    let transport = client.transport;
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => break,
            f = client.reader.next() => f,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                t.ended = Some(format!("closed by the server: {frame:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                t.ended = Some(e.to_string());
                break;
            }
            None => {
                t.ended = Some("connection ended".into());
                break;
            }
        };
        let now = micros_since(shared.epoch);
        match client::parse(transport, &text) {
            Incoming::Event {
                name: "message:new",
                data,
            } => {
                let Ok(m) = serde_json::from_str::<NewMessage<'_>>(data.get()) else {
                    t.foreign += 1;
                    continue;
                };
                if m.conversation_id != conversation {
                    t.foreign += 1;
                    continue;
                }
                t.delivered += 1;
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                shared.last_delivery.fetch_max(now, Ordering::Relaxed);
                if m.seq <= t.last_seq {
                    t.duplicates += 1;
                } else {
                    t.missing += (m.seq - t.last_seq - 1) as u64;
                    t.last_seq = m.seq;
                }
                if let Some(stamp) = m
                    .content
                    .get(..16)
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                {
                    let mut h = shared.latency[shard].lock().expect("histogram lock");
                    let _ = h.record(now.saturating_sub(stamp).max(1));
                }
            }
            Incoming::Ack { id, data } if id >= FIRST_SEND_ID => {
                shared.acked.fetch_add(1, Ordering::Relaxed);
                shared.last_ack.fetch_max(now, Ordering::Relaxed);
                match serde_json::from_str::<AckData>(data.get()) {
                    Ok(AckData { ok: true, .. }) => {
                        t.accepted += 1;
                        shared.expected.fetch_add(members, Ordering::Relaxed);
                    }
                    Ok(AckData { error, .. }) => {
                        let code = error.map_or_else(|| "unknown".to_owned(), |e| e.code);
                        *t.refused.entry(code).or_default() += 1;
                    }
                    Err(_) => *t.refused.entry("unreadable".into()).or_default() += 1,
                }
            }
            Incoming::Ping if client::pong(&client.writer).await.is_err() => {
                t.ended = Some("pong failed".into());
                break;
            }
            _ => {}
        }
    }
    let _ = client.writer.lock().await.close().await;
    t
}
