//! The chaos run's clients, each one a user in a DM who behaves as a real client does: it sends
//! one message at a time with a fresh `clientMsgId` and waits for its ack; on `unavailable`, no
//! ack in time or a dropped connection it reconnects (after 100-500 ms, jittered; to its own
//! gateway, else the other) and sends the same `clientMsgId` again; after every connect, and
//! whenever a live message skips a seq, it syncs from the last seq it holds, as `clients/js`
//! does. Everything it sees goes into the [`Ledger`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::ledger::{Key, Ledger, Row};
use crate::client::{self, Client, Incoming, Target, Transport};
use crate::ctx::micros_since;
use crate::reconnect::jitter;

/// How long a client waits for the ack of a send or the answer to a sync before it gives up on
/// the connection.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnect backoff: at least this, plus up to `BACKOFF_JITTER`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_JITTER: Duration = Duration::from_millis(400);

/// One user of the run.
#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub token: String,
    /// The gateway it connects to first (an index into [`Shared::gateways`]).
    pub home: usize,
    pub peer: String,
    pub conversation: String,
}

/// Counters of what the clients went through, over all of them.
#[derive(Default, Debug)]
pub struct Counters {
    pub connects: AtomicU64,
    pub failed_connects: AtomicU64,
    /// Connections given up on (dropped, an answer late, `unavailable`).
    pub reconnects: AtomicU64,
    pub unavailable: AtomicU64,
    pub timeouts: AtomicU64,
    pub dropped: AtomicU64,
    /// Sends of a `clientMsgId` sent before (after a reconnect).
    pub resends: AtomicU64,
    pub syncs: AtomicU64,
    /// Messages first had by `sync` rather than live.
    pub by_sync: AtomicU64,
    /// Connected now to the other gateway than their own.
    pub away: AtomicU64,
    /// Errors other than `unavailable` (none in a sound run), by their text.
    pub other_errors: Mutex<BTreeMap<String, u64>>,
}

/// What every client shares.
pub struct Shared {
    pub ledger: Mutex<Ledger>,
    pub epoch: Instant,
    /// Gateway A, gateway B.
    pub gateways: Vec<SocketAddr>,
    /// Time between one user's sends.
    pub interval: Duration,
    /// Set when the load stops: no new messages, the unacked ones are still sent.
    pub stop_sending: CancellationToken,
    /// Set when the run ends.
    pub stop: CancellationToken,
    pub counters: Counters,
}

impl Shared {
    pub fn now(&self) -> u64 {
        micros_since(self.epoch)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }
}

/// A message as the server sends it (`message:new`, a `sync` reply).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    id: String,
    conversation_id: String,
    seq: i64,
    sender_id: String,
    client_msg_id: String,
}

impl Wire {
    fn row(&self) -> Row {
        Row {
            conversation: self.conversation_id.clone(),
            seq: self.seq,
            id: self.id.clone(),
            key: Key::new(&self.sender_id, &self.client_msg_id),
        }
    }
}

/// What one client holds across its connections.
struct State {
    user: User,
    n: usize,
    /// Messages made so far (the next clientMsgId's number).
    made: u64,
    /// The message waiting for its ack: its clientMsgId, and its JSON.
    pending: Option<(String, String)>,
    /// Seqs of its conversation held: all up to `contiguous`, and these above it.
    contiguous: i64,
    above: BTreeSet<i64>,
    next_due: TokioInstant,
    connects: u64,
}

impl State {
    fn hold(&mut self, seq: i64) {
        if seq > self.contiguous {
            self.above.insert(seq);
        }
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }
}

/// Why a connection ended.
enum Ended {
    Stopped,
    Failed,
}

/// One user's life until the run stops.
pub async fn run(user: User, n: usize, shared: Arc<Shared>) {
    let interval = shared.interval;
    // Users start spread over one interval, so the sends do not come in bursts.
    let offset = interval.mul_f64(n as f64 / 64.0 % 1.0);
    let mut state = State {
        user,
        n,
        made: 0,
        pending: None,
        contiguous: 0,
        above: BTreeSet::new(),
        next_due: TokioInstant::now() + offset,
        connects: 0,
    };
    let mut attempt = 0usize;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let gateway = (state.user.home + attempt) % shared.gateways.len();
        let target = Target {
            addr: shared.gateways[gateway],
            sources: Arc::from([IpAddr::V4(Ipv4Addr::LOCALHOST)]),
            transport: Transport::Ws,
        };
        let connect = tokio::select! {
            () = shared.stop.cancelled() => return,
            c = Client::connect(&target, target.source(0), &state.user.token) => c,
        };
        let ended = match connect {
            Ok(client) => {
                attempt = 0;
                shared.counters.connects.fetch_add(1, Ordering::Relaxed);
                let away = gateway != state.user.home;
                if away {
                    shared.counters.away.fetch_add(1, Ordering::Relaxed);
                }
                let ended = session(&mut state, client, &shared).await;
                if away {
                    shared.counters.away.fetch_sub(1, Ordering::Relaxed);
                }
                ended
            }
            Err(_) => {
                attempt += 1;
                shared
                    .counters
                    .failed_connects
                    .fetch_add(1, Ordering::Relaxed);
                Ended::Failed
            }
        };
        match ended {
            Ended::Stopped => return,
            Ended::Failed => {
                let seed = (state.n as u64) << 32 | state.connects << 8 | attempt as u64;
                let backoff = BACKOFF_MIN + jitter(BACKOFF_JITTER, seed);
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// One connection: sync, send again what waits for its ack, then send on schedule and read,
/// until the connection fails or the run stops.
async fn session(state: &mut State, client: Client, shared: &Shared) -> Ended {
    state.connects += 1;
    let Client {
        writer, mut reader, ..
    } = client;
    let mut next_id = 1u64;
    let mut send_id: Option<u64> = None;
    let mut sync_id: Option<u64> = None;
    // When the answer to the request in flight (send or sync) is due.
    let mut send_due = TokioInstant::now();
    let mut sync_due = TokioInstant::now();
    let mut want_sync = true;
    let result: anyhow::Result<Ended> = async {
        loop {
            if want_sync && sync_id.is_none() {
                want_sync = false;
                let data = json!({ "conversations": [{
                    "conversationId": state.user.conversation, "afterSeq": state.contiguous }] });
                let id = next_id;
                next_id += 1;
                let frame = client::encode(Transport::Ws, Some(id), "sync", &data.to_string());
                writer.lock().await.send(Message::text(frame)).await?;
                shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
                sync_id = Some(id);
                sync_due = TokioInstant::now() + ANSWER_TIMEOUT;
            }
            if send_id.is_none()
                && let Some((cmid, data)) = &state.pending
            {
                // Sent before this connection (or its ack never came): the same clientMsgId.
                let key = Key::new(&state.user.id, cmid);
                shared.ledger().send(
                    &key,
                    &state.user.conversation,
                    &state.user.peer,
                    shared.now(),
                );
                let id = next_id;
                next_id += 1;
                let frame = client::encode(Transport::Ws, Some(id), "message:send", data);
                writer.lock().await.send(Message::text(frame)).await?;
                send_id = Some(id);
                send_due = TokioInstant::now() + ANSWER_TIMEOUT;
            }
            let sending = !shared.stop_sending.is_cancelled() && state.pending.is_none();
            let frame = tokio::select! {
                () = shared.stop.cancelled() => return Ok(Ended::Stopped),
                () = tokio::time::sleep_until(state.next_due), if sending => {
                    state.made += 1;
                    let cmid = format!("{}-{}", state.user.id, state.made);
                    let data = json!({ "conversationId": state.user.conversation,
                        "clientMsgId": cmid, "content": format!("chaos {}", state.made) });
                    state.pending = Some((cmid, data.to_string()));
                    let now = TokioInstant::now();
                    state.next_due = (state.next_due + shared.interval).max(now);
                    continue;
                }
                () = tokio::time::sleep_until(send_due), if send_id.is_some() => {
                    shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    return Ok(Ended::Failed);
                }
                () = tokio::time::sleep_until(sync_due), if sync_id.is_some() => {
                    shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    return Ok(Ended::Failed);
                }
                f = reader.next() => f,
            };
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(Ended::Failed);
                }
                Some(Ok(_)) => continue,
            };
            match client::parse(Transport::Ws, &text) {
                Incoming::Ack { id, data } if Some(id) == send_id => {
                    send_id = None;
                    let reply: serde_json::Value = serde_json::from_str(data.get())?;
                    if reply["ok"] == true {
                        let (cmid, _) = state.pending.take().expect("a send in flight");
                        shared
                            .ledger()
                            .ack(&Key::new(&state.user.id, &cmid), shared.now());
                    } else {
                        return Ok(refused(shared, &reply));
                    }
                }
                Incoming::Ack { id, data } if Some(id) == sync_id => {
                    sync_id = None;
                    let reply: serde_json::Value = serde_json::from_str(data.get())?;
                    if reply["ok"] != true {
                        return Ok(refused(shared, &reply));
                    }
                    let messages: Vec<Wire> = serde_json::from_value(reply["messages"].clone())?;
                    let now = shared.now();
                    let before = state.contiguous;
                    for m in &messages {
                        take(state, shared, m, now, true);
                    }
                    // More pages, or a gap still open that this page narrowed: ask again (a gap
                    // Postgres cannot fill yet waits for the next live message).
                    want_sync = reply["hasMore"] == true
                        || (!state.above.is_empty() && state.contiguous > before);
                }
                Incoming::Event {
                    name: "message:new",
                    data,
                } => {
                    let m: Wire = serde_json::from_str(data.get())?;
                    take(state, shared, &m, shared.now(), false);
                    if !state.above.is_empty() {
                        // A seq skipped: fetch what lies between.
                        want_sync = true;
                    }
                }
                // The gateway is back from a broker outage: what was announced meanwhile may
                // not have come, with no gap to show for it yet.
                Incoming::Event {
                    name: "server:resync",
                    ..
                } => want_sync = true,
                _ => {}
            }
        }
    }
    .await;
    match result {
        Ok(ended) => {
            if matches!(ended, Ended::Failed) {
                shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                if state.pending.is_some() {
                    shared.counters.resends.fetch_add(1, Ordering::Relaxed);
                }
            }
            ended
        }
        Err(e) => {
            // A write to a dead socket, or (a problem to report) a frame that does not parse.
            if e.downcast_ref::<serde_json::Error>().is_some() {
                note(shared, format!("{e:#}"));
            }
            shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            Ended::Failed
        }
    }
}

/// A message handed over (live, or by sync when `by_sync`).
fn take(state: &mut State, shared: &Shared, m: &Wire, now: u64, by_sync: bool) {
    if m.conversation_id != state.user.conversation {
        return;
    }
    let new = m.seq > state.contiguous && !state.above.contains(&m.seq);
    if new && by_sync && m.sender_id != state.user.id {
        shared.counters.by_sync.fetch_add(1, Ordering::Relaxed);
    }
    state.hold(m.seq);
    shared.ledger().deliver(&state.user.id, &m.row(), now);
}

/// A request refused: `unavailable` is the protocol's "try again" (the client reconnects and
/// sends the same clientMsgId); anything else is noted as a problem, and tried again too.
fn refused(shared: &Shared, reply: &serde_json::Value) -> Ended {
    if reply["error"]["code"] == "unavailable" {
        shared.counters.unavailable.fetch_add(1, Ordering::Relaxed);
    } else {
        note(shared, reply["error"].to_string());
    }
    Ended::Failed
}

fn note(shared: &Shared, what: String) {
    *shared
        .counters
        .other_errors
        .lock()
        .expect("errors lock")
        .entry(what)
        .or_default() += 1;
}
