//! Presence across all gateways, kept in a NATS key-value bucket (DESIGN §2: ephemeral, never
//! in Postgres).
//!
//! - `u.<user>`: `{"gateways": {"<gateway>": <unix ms of its last heartbeat>}, "lastSeenAt"}`.
//!   A user is online while any gateway's heartbeat in it is younger than the TTL, so a crashed
//!   gateway's users go offline by themselves, without anyone cleaning up. Written with
//!   compare-and-set, so gateways holding the same user never overwrite each other.
//! - `g.<gateway>`: the gateway's own heartbeat, which every gateway watches.
//! - `m.<gateway>.<user>`: the users a gateway holds, so that when a gateway stops heartbeating,
//!   one surviving gateway (the live one with the smallest id) can tell those users' contacts
//!   they went offline, and tidy up.
//!
//! Changes are announced as `presence` events to everyone who shares a conversation with the
//! user (the `contacts` query of persistence). Only online/offline transitions are announced,
//! not heartbeats.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use parley_common::domain::UserId;
use parley_common::nats::{SetupError, StreamSettings};
use parley_common::rpc::{self, ContactsReply, ContactsRequest};
use parley_common::subjects::{ChatOp, Subjects};
use parley_common::wire::{self, ServerEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Compare-and-set attempts before a change is given up (and logged).
const CAS_ATTEMPTS: usize = 8;
/// Heartbeats written at once.
const BEAT_CONCURRENCY: usize = 32;
/// Arrivals and departures taken off the queue and written together.
const CHANGE_BATCH: usize = 1024;
/// A dead gateway is forgotten after this many TTLs (it was swept long before).
const FORGET_AFTER_TTLS: u32 = 10;
/// How soon a heartbeat or a user's arrival that the broker did not take is tried again.
const RETRY_AFTER_OUTAGE: Duration = Duration::from_millis(500);

/// A user's presence record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(default)]
    gateways: BTreeMap<String, i64>,
    #[serde(default)]
    last_seen_at: Option<DateTime<Utc>>,
}

impl Record {
    fn online(&self, now_ms: i64, ttl_ms: i64) -> bool {
        self.gateways.values().any(|&beat| now_ms - beat < ttl_ms)
    }

    fn view(&self, user: &str, now_ms: i64, ttl_ms: i64) -> wire::Presence {
        let online = self.online(now_ms, ttl_ms);
        let last_beat = self
            .gateways
            .values()
            .max()
            .and_then(|&ms| DateTime::from_timestamp_millis(ms));
        wire::Presence {
            user_id: user.to_owned(),
            online,
            last_seen_at: match (self.last_seen_at, last_beat) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// What the fan-out tells presence: a user's first socket here came, or their last one went.
#[derive(Debug)]
pub enum Change {
    Up(UserId),
    Down(UserId),
}

/// Where the fan-out sends [`Change`]s. In order, since both are sent under the fan-out's lock.
#[derive(Clone)]
pub struct Tracker(mpsc::UnboundedSender<Change>);

impl Tracker {
    pub fn up(&self, user: &UserId) {
        let _ = self.0.send(Change::Up(user.clone()));
    }

    pub fn down(&self, user: &UserId) {
        let _ = self.0.send(Change::Down(user.clone()));
    }
}

pub struct Presence {
    kv: kv::Store,
    stream: jetstream::stream::Stream,
    /// `$KV.<bucket>.`
    key_prefix: String,
    gateway: String,
    ttl: Duration,
    nats: async_nats::Client,
    subjects: Subjects,
}

impl Presence {
    /// Declares the bucket and gives this gateway a fresh id.
    pub async fn start(
        js: &jetstream::Context,
        subjects: Subjects,
        settings: StreamSettings,
        ttl: Duration,
    ) -> Result<(Arc<Self>, Tracker, mpsc::UnboundedReceiver<Change>), SetupError> {
        let kv = parley_common::nats::ensure_presence_bucket(js, &subjects, settings).await?;
        let bucket = subjects.presence_bucket();
        let stream = js
            .get_stream(format!("KV_{bucket}"))
            .await
            .map_err(|e| SetupError(format!("cannot open the presence stream: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let presence = Arc::new(Self {
            kv,
            stream,
            key_prefix: format!("$KV.{bucket}."),
            gateway: uuid::Uuid::now_v7().simple().to_string(),
            ttl,
            nats: js.client(),
            subjects,
        });
        Ok((presence, Tracker(tx), rx))
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// The presence of each of `users`, as every gateway sees it.
    pub async fn get(&self, users: &[UserId]) -> Result<Vec<wire::Presence>, wire::ApiError> {
        let now = Utc::now().timestamp_millis();
        let ttl = self.ttl_ms();
        futures::stream::iter(users.iter().cloned())
            .map(|user: UserId| async move {
                let record = self.read(user.as_str()).await?.map(|(r, _)| r);
                Ok::<_, wire::ApiError>(record.unwrap_or_default().view(user.as_str(), now, ttl))
            })
            .buffered(BEAT_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn read(&self, user: &str) -> Result<Option<(Record, u64)>, wire::ApiError> {
        let entry = self.kv.entry(format!("u.{user}")).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read presence");
            wire::ApiError::unavailable()
        })?;
        Ok(entry.map(|e| {
            let record = match e.operation {
                kv::Operation::Put => serde_json::from_slice(&e.value).unwrap_or_default(),
                _ => Record::default(),
            };
            (record, e.revision)
        }))
    }

    /// Applies `change` to a user's record with compare-and-set; returns it before and after.
    async fn modify(
        &self,
        user: &str,
        change: impl Fn(&mut Record, i64),
    ) -> Result<(Record, Record), String> {
        let key = format!("u.{user}");
        let mut last_error = String::new();
        for _ in 0..CAS_ATTEMPTS {
            let now = Utc::now().timestamp_millis();
            let (before, revision) = match self.read(user).await {
                Ok(Some((r, rev))) => (r, Some(rev)),
                Ok(None) => (Record::default(), None),
                Err(e) => return Err(e.message),
            };
            let mut after = before.clone();
            change(&mut after, now);
            let ttl = self.ttl_ms();
            after.gateways.retain(|_, beat| now - *beat < ttl);
            let value: Bytes = serde_json::to_vec(&after)
                .expect("records serialise")
                .into();
            let written = match revision {
                Some(rev) => self
                    .kv
                    .update(&key, value, rev)
                    .await
                    .map_err(|e| e.to_string()),
                None => self.kv.create(&key, value).await.map_err(|e| e.to_string()),
            };
            match written {
                Ok(_) => return Ok((before, after)),
                // Another gateway wrote in between: read again.
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Whether the broker is there: while it is not, a write would only wait out its timeout.
    fn connected(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// The user's first socket on this gateway arrived. False when it could not be recorded
    /// (the broker is away): the caller tries again.
    async fn up(&self, user: &UserId) -> bool {
        if !self.connected() {
            return false;
        }
        // Where the user is, first: once the arrival is announced, a crash of this gateway
        // must leave what the sweeper needs to announce the departure.
        let key = format!("m.{}.{user}", self.gateway);
        if let Err(e) = self.kv.put(key, Bytes::new()).await {
            tracing::warn!(error = %e, "cannot record where a user is connected");
            return false;
        }
        let me = self.gateway.clone();
        let now = Utc::now();
        match self
            .modify(user.as_str(), |r, ms| {
                r.gateways.insert(me.clone(), ms);
                r.last_seen_at = Some(now);
            })
            .await
        {
            Ok((before, after)) => {
                let ms = now.timestamp_millis();
                if !before.online(ms, self.ttl_ms()) {
                    let view = after.view(user.as_str(), ms, self.ttl_ms());
                    self.announce(user.as_str(), view).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record a user online");
                return false;
            }
        }
        true
    }

    /// The user's last socket on this gateway went.
    async fn down(&self, user: &UserId) {
        let me = self.gateway.clone();
        let now = Utc::now();
        match self
            .modify(user.as_str(), |r, _| {
                r.gateways.remove(&me);
                r.last_seen_at = Some(now);
            })
            .await
        {
            Ok((_, after)) => {
                let ms = now.timestamp_millis();
                if !after.online(ms, self.ttl_ms()) {
                    let view = after.view(user.as_str(), ms, self.ttl_ms());
                    self.announce(user.as_str(), view).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot record a user offline"),
        }
        self.forget_member(&self.gateway, user.as_str()).await;
    }

    /// [`Self::up`] for each of `users`, `BEAT_CONCURRENCY` at a time; returns those that
    /// could not be recorded.
    async fn ups(&self, users: &[UserId]) -> Vec<UserId> {
        futures::stream::iter(users.iter().cloned())
            .map(|user: UserId| async move { (!self.up(&user).await).then_some(user) })
            .buffer_unordered(BEAT_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// [`Self::down`] for each of `users`, `BEAT_CONCURRENCY` at a time.
    async fn downs(&self, users: &[UserId]) {
        futures::stream::iter(users)
            .for_each_concurrent(BEAT_CONCURRENCY, |user| self.down(user))
            .await;
    }

    async fn forget_member(&self, gateway: &str, user: &str) {
        let subject = format!("{}m.{gateway}.{user}", self.key_prefix);
        if let Err(e) = self.stream.purge().filter(subject).await {
            tracing::debug!(error = %e, "cannot forget where a user was connected");
        }
    }

    /// Tells everyone who shares a conversation with `user`.
    async fn announce(&self, user: &str, presence: wire::Presence) {
        let Ok(user_id) = UserId::parse(user) else {
            return;
        };
        let reply = self
            .nats
            .request(
                self.subjects.rpc_chat(ChatOp::Contacts),
                serde_json::to_vec(&ContactsRequest { user_id })
                    .expect("requests serialise")
                    .into(),
            )
            .await;
        let contacts = match reply.map(|m| rpc::decode::<ContactsReply>(&m.payload)) {
            Ok(Ok(c)) => c.user_ids,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot find whom to tell of a presence change");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot find whom to tell of a presence change");
                return;
            }
        };
        let event = ServerEvent::Presence(presence).to_json();
        let headers = parley_common::trace::headers();
        let users = contacts.iter().map(String::as_str);
        parley_common::nats::deliver(&self.nats, &self.subjects, users, &headers, &event).await;
    }

    /// Writes this gateway's heartbeat and refreshes every user it holds. False when the
    /// heartbeat could not be written (the broker is away).
    async fn beat(&self, local: &HashSet<UserId>) -> bool {
        if !self.connected() {
            return false;
        }
        let now = Utc::now();
        let ms = now.timestamp_millis();
        if let Err(e) = self
            .kv
            .put(format!("g.{}", self.gateway), ms.to_string().into())
            .await
        {
            tracing::warn!(error = %e, "cannot write the gateway heartbeat");
            return false;
        }
        let me = &self.gateway;
        futures::stream::iter(local)
            .for_each_concurrent(BEAT_CONCURRENCY, |user| async move {
                let refreshed = self
                    .modify(user.as_str(), |r, ms| {
                        r.gateways.insert(me.clone(), ms);
                        r.last_seen_at = Some(now);
                    })
                    .await;
                if let Err(e) = refreshed {
                    tracing::warn!(error = %e, "cannot refresh a user's presence");
                }
            })
            .await;
        true
    }

    /// Takes the dead gateway out of one user's record; announces the user offline if that
    /// was their last one.
    async fn sweep_user(&self, dead: &str, user: &str) {
        let gone = dead.to_owned();
        match self
            .modify(user, |r, _| {
                r.gateways.remove(&gone);
            })
            .await
        {
            Ok((before, after)) => {
                let ms = Utc::now().timestamp_millis();
                if before.gateways.contains_key(dead) && !after.online(ms, self.ttl_ms()) {
                    self.announce(user, after.view(user, ms, self.ttl_ms()))
                        .await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot sweep a user's presence"),
        }
    }

    /// Tells the contacts of a dead gateway's users they went offline (unless they are still
    /// connected elsewhere), and removes what the gateway left behind.
    async fn sweep(&self, dead: &str) {
        let filter = format!("{}m.{dead}.*", self.key_prefix);
        let members: Vec<String> = match self.stream.info_with_subjects(&filter).await {
            Ok(subjects) => {
                subjects
                    .filter_map(|s| async move { s.ok() })
                    .filter_map(|(subject, _)| async move {
                        subject.rsplit('.').next().map(str::to_owned)
                    })
                    .collect()
                    .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list a dead gateway's users");
                return;
            }
        };
        tracing::info!(
            gateway = dead,
            users = members.len(),
            "sweeping a gateway that stopped"
        );
        futures::stream::iter(&members)
            .for_each_concurrent(BEAT_CONCURRENCY, |user| self.sweep_user(dead, user))
            .await;
        let _ = self.stream.purge().filter(filter).await;
        let _ = self
            .stream
            .purge()
            .filter(format!("{}g.{dead}", self.key_prefix))
            .await;
    }

    /// Keeps this gateway's users present until `shutdown`; then stops heartbeating (see the end).
    pub async fn run(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<Change>,
        shutdown: CancellationToken,
    ) {
        let mut local: HashSet<UserId> = HashSet::new();
        // Users who arrived while the broker was away: recorded (and announced) once it is back.
        let mut unrecorded: HashSet<UserId> = HashSet::new();
        let mut gateways: HashMap<String, i64> = HashMap::new();
        let mut watch = None;
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if watch.is_none() {
                watch = self.kv.watch_with_history("g.*").await.ok();
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                first = changes.recv() => {
                    let Some(first) = first else { break };
                    // Everything queued behind it too, settled per user and written at once:
                    // a gateway filling up with thousands of sockets does not record them one
                    // round trip after another.
                    let mut batch = vec![first];
                    while batch.len() < CHANGE_BATCH
                        && let Ok(change) = changes.try_recv()
                    {
                        batch.push(change);
                    }
                    let (arrived, left) = settle(&mut local, batch);
                    for user in &left {
                        unrecorded.remove(user);
                    }
                    let failed = self.ups(&arrived).await;
                    if !failed.is_empty() {
                        unrecorded.extend(failed);
                        tick.reset_after(RETRY_AFTER_OUTAGE);
                    }
                    self.downs(&left).await;
                }
                entry = next_entry(&mut watch) => match entry {
                    Some(e) if e.operation == kv::Operation::Put => {
                        let beat = std::str::from_utf8(&e.value).ok().and_then(|v| v.parse().ok());
                        if let (Some(id), Some(beat)) = (e.key.strip_prefix("g."), beat) {
                            gateways.insert(id.to_owned(), beat);
                        }
                    }
                    Some(e) => {
                        if let Some(id) = e.key.strip_prefix("g.") {
                            gateways.remove(id);
                        }
                    }
                    None => watch = None,
                },
                _ = tick.tick() => {
                    // While the broker is away, try again soon rather than a third of the TTL
                    // later, so presence is back within a second of it.
                    if !self.beat(&local).await {
                        tick.reset_after(RETRY_AFTER_OUTAGE);
                        continue;
                    }
                    let retry: Vec<UserId> = unrecorded.drain().collect();
                    let failed = self.ups(&retry).await;
                    if !failed.is_empty() {
                        unrecorded.extend(failed);
                        tick.reset_after(RETRY_AFTER_OUTAGE);
                    }
                    let now = Utc::now().timestamp_millis();
                    gateways.insert(self.gateway.clone(), now);
                    for dead in self.dead_gateways(&mut gateways, now) {
                        self.sweep(&dead).await;
                    }
                }
            }
        }
        // Draining: nothing is written. The users here are told to reconnect, and their records
        // keep this gateway's last heartbeat for up to the TTL: whoever is back on another
        // gateway by then never looked offline to their contacts (a deploy that marked every
        // user offline and then online again would announce two changes to each contact, and
        // ask persistence for everyone's contacts twice, in the middle of the reconnect storm).
        // Whoever does not come back is swept offline by a surviving gateway once this one's
        // heartbeat is a TTL old, exactly as after a crash.
    }

    /// The gateways whose heartbeat stopped, when this gateway is the one to sweep them: the
    /// live gateway with the smallest id. Long-dead ones are forgotten.
    fn dead_gateways(&self, gateways: &mut HashMap<String, i64>, now: i64) -> Vec<String> {
        let ttl = self.ttl_ms();
        gateways.retain(|_, beat| now - *beat < ttl * i64::from(FORGET_AFTER_TTLS));
        let sweeper = gateways
            .iter()
            .filter(|(_, beat)| now - **beat < ttl)
            .map(|(id, _)| id)
            .min();
        if sweeper != Some(&self.gateway) {
            return Vec::new();
        }
        gateways
            .iter()
            .filter(|(_, beat)| now - **beat >= ttl)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Applies a batch of changes, in order, to the users held here; returns who arrived and who
/// left over the whole batch. A user who came and went within it (or went and came back) is in
/// neither: nothing about them changed.
fn settle(local: &mut HashSet<UserId>, batch: Vec<Change>) -> (Vec<UserId>, Vec<UserId>) {
    let mut last: HashMap<UserId, bool> = HashMap::new();
    let mut order = Vec::new();
    for change in batch {
        let (user, here) = match change {
            Change::Up(user) => (user, true),
            Change::Down(user) => (user, false),
        };
        if last.insert(user.clone(), here).is_none() {
            order.push(user);
        }
    }
    let (mut arrived, mut left) = (Vec::new(), Vec::new());
    for user in order {
        match (last[&user], local.contains(&user)) {
            (true, false) => {
                local.insert(user.clone());
                arrived.push(user);
            }
            (false, true) => {
                local.remove(&user);
                left.push(user);
            }
            _ => {}
        }
    }
    (arrived, left)
}

async fn next_entry(watch: &mut Option<kv::Watch>) -> Option<kv::Entry> {
    match watch {
        Some(w) => match w.next().await {
            Some(Ok(e)) => Some(e),
            _ => None,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_online_while_any_gateway_heartbeat_is_fresh() {
        let mut r = Record::default();
        assert!(!r.online(10_000, 3_000));
        r.gateways.insert("a".into(), 8_000);
        r.gateways.insert("b".into(), 1_000);
        assert!(r.online(10_000, 3_000));
        assert!(!r.online(11_000, 3_000), "a's beat is a TTL old");
        let v = r.view("alice", 11_000, 3_000);
        assert!(!v.online);
        assert_eq!(v.last_seen_at.unwrap().timestamp_millis(), 8_000);
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn a_batch_settles_to_each_users_last_change() {
        let (a, b, c, d) = (user("a"), user("b"), user("c"), user("d"));
        let mut local = HashSet::from([c.clone(), d.clone()]);
        let (arrived, left) = settle(
            &mut local,
            vec![
                Change::Up(a.clone()),
                Change::Up(b.clone()),
                Change::Down(b.clone()),
                Change::Down(c.clone()),
                Change::Down(d.clone()),
                Change::Up(d.clone()),
                Change::Up(a.clone()),
            ],
        );
        assert_eq!(arrived, vec![a.clone()], "b came and went: nothing to say");
        assert_eq!(left, vec![c], "d went and came back: still here");
        assert_eq!(local, HashSet::from([a, d]));
    }

    #[test]
    fn a_repeated_change_is_said_once() {
        let a = user("a");
        let mut local = HashSet::new();
        let (arrived, left) = settle(
            &mut local,
            vec![Change::Up(a.clone()), Change::Up(a.clone())],
        );
        assert_eq!((arrived, left), (vec![a.clone()], vec![]));
        let (arrived, left) = settle(&mut local, vec![Change::Up(a.clone())]);
        assert!(arrived.is_empty() && left.is_empty(), "already here");
        let (arrived, left) = settle(
            &mut local,
            vec![Change::Down(a.clone()), Change::Down(a.clone())],
        );
        assert_eq!((arrived, left), (vec![], vec![a]));
    }
}
