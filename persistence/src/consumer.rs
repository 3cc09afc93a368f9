//! The partitioned consumer of `PARLEY_IN` (DESIGN §2, docs/durability.md).
//!
//! The stream stores each command under its conversation's partition, and each partition has
//! a durable consumer of its own whose priority group pins one pulling client at a time. This
//! replica pulls the partitions [`ownership`](crate::ownership) assigns to it, each in a loop of
//! its own: partitions are written in parallel, one partition strictly in stream order.
//!
//! Within a partition, whatever commands are ready (up to the batch size) are written in one
//! Postgres transaction: lock the conversations, find the commands already stored (a client
//! retry after the broker's dedupe window, or a redelivery after a crash), plan the batch
//! ([`plan`](crate::plan)), insert it. After the commit every participant is told, NATS is
//! flushed, and only then are the commands acked. The next batch's transaction may run while
//! the previous batch is announced and acked; it commits after it, and is announced after it. A
//! crash anywhere before the ack redelivers the batch, and the next pass finds the rows and
//! re-announces them with their original id and seq: stored once, never lost.
//!
//! A new owner of a partition (a takeover after a crash, a handover, a pin that moved) writes
//! nothing until no command of the partition is still in another replica's hands: until the
//! consumer's count of unacknowledged commands is what this replica holds. Commands a dead
//! owner held come back after the ack wait and are written first, in order.
//!
//! When Postgres is down the batch is held and retried with backoff (telling the broker the work
//! is in progress, so it is not handed out again), and whatever else arrives joins it in order.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull};
use bytes::Bytes;
use chrono::DateTime;
use futures::{FutureExt, StreamExt};
use opentelemetry::trace::TraceContextExt;
use parley_common::domain::Content;
use parley_common::nats::deliver;
use parley_common::subjects::{CommandKind, Subjects};
use parley_common::wire::{
    ConversationKind, ErrorCode, ErrorEvent, Message, ReadEvent, SendCommand, ServerEvent,
};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::chat::{HARD_MAX_CONTENT_CHARS, now_micros};
use crate::config::PersistenceConfig;
use crate::error::{Error, Result};
use crate::metrics::PersistenceMetrics;
use crate::ownership::{self, HEARTBEAT_EVERY, Heartbeat, Membership};
use crate::plan::{self, Command, Planned};
use crate::store::{conversations, messages};

/// Header on a dead-lettered command naming why it can never succeed.
pub const DLQ_REASON_HEADER: &str = "Parley-Dlq-Reason";
/// Header on a dead-lettered command naming the subject it came from.
pub const DLQ_SUBJECT_HEADER: &str = "Parley-Dlq-Subject";

/// The priority group every partition consumer pins one client of.
pub const PRIORITY_GROUP: &str = "persist";

/// How long one pull request waits before it is renewed; well under [`PRIORITY_TIMEOUT`].
const PULL_EXPIRES: Duration = Duration::from_secs(4);
/// The server's heartbeat on an idle pull, so a lost pull request is noticed and renewed.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// A pinned client that stops pulling for this long loses its pin.
const PRIORITY_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest wait before a failed pull is renewed (see [`Backoff::pulls`]).
const PULL_RETRY_MAX: Duration = Duration::from_millis(500);
/// How long a starting replica listens for the others before it takes partitions.
const SETTLE: Duration = Duration::from_millis(300);
/// How often an owner looks at its partition's consumer when it has nothing to do.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// One partition's durable consumer.
#[derive(Clone)]
pub struct Partition {
    pub number: u16,
    pub name: String,
    pub consumer: PullConsumer,
}

/// `PARLEY_IN` and the consumers of its partitions.
#[derive(Clone)]
pub struct Consumers {
    pub stream: jetstream::stream::Stream,
    pub partitions: Vec<Partition>,
}

/// Creates each partition's durable consumer, or finds it and brings its editable settings to
/// this configuration. Removes the single consumer of the stream from before partitions and
/// the consumers of partitions the stream no longer has (the stream was empty when its
/// partition count changed: `ensure_streams` sees to that).
pub async fn create(config: &PersistenceConfig, js: &jetstream::Context) -> Result<Consumers> {
    let subjects = &config.nats.prefix;
    let stream = js
        .get_stream(subjects.stream_in())
        .await
        .map_err(Error::nats)?;
    let wanted: BTreeSet<String> = (0..config.streams.partitions)
        .map(|p| subjects.consumer_partition(p))
        .collect();
    let mut names = stream.consumer_names();
    let mut stale = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(Error::nats)?;
        let ours = name == subjects.consumer_persist()
            || name.starts_with(&format!("{}_", subjects.consumer_persist()));
        if ours && !wanted.contains(&name) {
            stale.push(name);
        }
    }
    for name in stale {
        tracing::info!(consumer = %name, "removing a consumer of a former partitioning");
        stream.delete_consumer(&name).await.map_err(Error::nats)?;
    }
    let mut partitions = Vec::with_capacity(wanted.len());
    for number in 0..config.streams.partitions {
        let name = subjects.consumer_partition(number);
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!(
                    "Parley persistence: writes partition {number} to Postgres"
                )),
                filter_subject: subjects.partition_filter(number),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                // -1: redeliver for ever. A command that can never succeed is dead-lettered by
                // us with its reason; one that waits for the database must not be dropped.
                max_deliver: -1,
                max_ack_pending: config.max_ack_pending,
                priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
                priority_groups: vec![PRIORITY_GROUP.to_owned()],
                priority_timeout: PRIORITY_TIMEOUT,
                ..Default::default()
            })
            .await
            .map_err(Error::nats)?;
        partitions.push(Partition {
            number,
            name,
            consumer,
        });
    }
    Ok(Consumers { stream, partitions })
}

/// Runs this replica's share of the partitions until `shutdown` is cancelled: announces itself,
/// follows the other replicas, and starts or releases partitions as the assignment changes. At
/// shutdown every partition finishes and acks what it committed, hands back what it holds, and
/// the replica says it is leaving, so the others take over at once.
pub async fn run(
    config: &PersistenceConfig,
    consumers: Consumers,
    js: jetstream::Context,
    pool: PgPool,
    shutdown: CancellationToken,
) -> Result<()> {
    let writer = Arc::new(Writer {
        js: js.clone(),
        pool,
        subjects: config.nats.prefix.clone(),
        metrics: PersistenceMetrics::get(),
        batch_size: config.batch_size,
        parallel: Semaphore::new(config.parallel),
    });
    let nats = js.client();
    let subject = writer.subjects.ctl_persist_replicas();
    let mut beats = nats.subscribe(subject.clone()).await.map_err(Error::nats)?;
    let me = Uuid::new_v4().simple().to_string();
    let mut membership = Membership::new(&me);
    let beat = |leaving| -> Bytes {
        serde_json::to_vec(&Heartbeat {
            replica: me.clone(),
            leaving,
        })
        .expect("a heartbeat serialises")
        .into()
    };
    tracing::info!(replica = %me, partitions = consumers.partitions.len(), "persistence consumer started");

    let mut running: HashMap<u16, Owned> = HashMap::new();
    // Before the first assignment, listen a moment: the others answer a newcomer's first
    // heartbeat with theirs at once, and a replica that took every partition would give most
    // back right away.
    let settled_at = Instant::now() + SETTLE;
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY / 2);
    let mut last_beat = Instant::now() - HEARTBEAT_EVERY;
    loop {
        let changed = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if last_beat.elapsed() >= HEARTBEAT_EVERY {
                    if let Err(e) = nats.publish(subject.clone(), beat(false)).await {
                        tracing::debug!(error = %e, "cannot send a heartbeat");
                    }
                    last_beat = Instant::now();
                }
                true
            }
            msg = beats.next() => {
                let Some(msg) = msg else {
                    tracing::error!("the heartbeat subscription ended");
                    break;
                };
                match serde_json::from_slice::<Heartbeat>(&msg.payload) {
                    Ok(heard) => {
                        let new = membership.observe(&heard, Instant::now());
                        if new && !heard.leaving {
                            // A newcomer hears of this replica at once, not a second later.
                            if let Err(e) = nats.publish(subject.clone(), beat(false)).await {
                                tracing::debug!(error = %e, "cannot send a heartbeat");
                            }
                        }
                        new
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring a malformed replica heartbeat");
                        false
                    }
                }
            }
        };
        if changed && Instant::now() >= settled_at {
            let live = membership.live(Instant::now());
            let mine = ownership::owned_by(config.streams.partitions, &live, &me);
            reassign(&writer, &consumers, &mut running, &mine, live.len());
        }
    }

    for owned in running.values() {
        owned.release.cancel();
    }
    for (_, owned) in running.drain() {
        if let Err(e) = owned.task.await {
            tracing::error!(error = %e, "a partition task failed");
        }
    }
    if let Err(e) = nats.publish(subject, beat(true)).await {
        tracing::debug!(error = %e, "cannot say this replica is leaving");
    }
    let _ = nats.flush().await;
    tracing::info!("persistence consumer stopped");
    Ok(())
}

/// A partition this replica runs (or is releasing).
struct Owned {
    release: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts the partitions in `mine` that are not running, and releases those running that are
/// not in it. A partition released and wanted again starts once its release has finished.
fn reassign(
    writer: &Arc<Writer>,
    consumers: &Consumers,
    running: &mut HashMap<u16, Owned>,
    mine: &BTreeSet<u16>,
    replicas: usize,
) {
    let current: BTreeSet<u16> = running
        .iter()
        .filter(|(_, o)| !o.release.is_cancelled())
        .map(|(p, _)| *p)
        .collect();
    if &current == mine {
        return;
    }
    tracing::info!(owned = ?mine, replicas, "partition assignment changed");
    for (p, owned) in running.iter() {
        if !mine.contains(p) {
            owned.release.cancel();
        }
    }
    for &p in mine {
        if current.contains(&p) {
            continue;
        }
        let before = running.remove(&p).map(|o| o.task);
        let release = CancellationToken::new();
        let partition = consumers.partitions[usize::from(p)].clone();
        let (writer, stream, token) = (writer.clone(), consumers.stream.clone(), release.clone());
        let task = tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            own(writer, partition, stream, token).await;
        });
        running.insert(p, Owned { release, task });
    }
    // Forget releases that have finished.
    running.retain(|p, o| mine.contains(p) || !o.task.is_finished());
}

/// Writes one partition until `release`; then hands it back (see [`Owner::release`]).
async fn own(
    writer: Arc<Writer>,
    partition: Partition,
    stream: jetstream::stream::Stream,
    release: CancellationToken,
) {
    let owned = writer.metrics.partition_owned(partition.number);
    owned.set(1);
    let mut owner = Owner {
        writer: writer.clone(),
        partition,
        stream,
        next_delivery: None,
        verified: false,
        held: Vec::new(),
        in_flight: None,
        received: false,
        delivered: 0,
    };
    let mut backoff = Backoff::pulls();
    while !release.is_cancelled() {
        let pull = owner
            .partition
            .consumer
            .stream()
            .group(PRIORITY_GROUP)
            .max_messages_per_batch(writer.batch_size)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await;
        match pull {
            Ok(pull) => {
                let mut chunks = pull.ready_chunks(writer.batch_size);
                let released = owner.pull(&mut chunks, &release).await;
                if released {
                    owner.release(&mut chunks).await;
                    break;
                }
                if owner.delivered > 0 {
                    backoff = Backoff::pulls();
                }
                owner.delivered = 0;
            }
            Err(e) => {
                tracing::warn!(partition = owner.partition.number, error = %e, "cannot pull, retrying")
            }
        }
        backoff.wait(&release).await;
    }
    owner.finish_in_flight().await;
    owned.set(0);
}

type PullItem = std::result::Result<jetstream::Message, pull::MessagesError>;

/// A partition's pull, in chunks of what is ready.
type Chunks = futures::stream::ReadyChunks<pull::Stream>;

/// The state of one owned partition.
struct Owner {
    writer: Arc<Writer>,
    partition: Partition,
    stream: jetstream::stream::Stream,
    /// The consumer sequence the next delivery should carry: deliveries this replica did not
    /// see in between went to someone else.
    next_delivery: Option<u64>,
    /// No command of the partition is in another replica's hands.
    verified: bool,
    /// Commands received and not yet written, waiting for `verified` (or for a database).
    held: Vec<jetstream::Message>,
    /// The previous batch's announcements and acks.
    in_flight: Option<JoinHandle<()>>,
    /// Whether anything arrived since the last check.
    received: bool,
    /// Commands received on the current pull.
    delivered: u64,
}

impl Owner {
    /// Writes what the pull delivers until `release` (true) or the pull ends or fails (false:
    /// pull again).
    async fn pull(&mut self, chunks: &mut Chunks, release: &CancellationToken) -> bool {
        let start = tokio::time::Instant::now() + CHECK_EVERY;
        let mut check = tokio::time::interval_at(start, CHECK_EVERY);
        loop {
            tokio::select! {
                biased;
                () = release.cancelled() => return true,
                _ = check.tick() => self.check(chunks, release).await,
                next = chunks.next() => {
                    let Some(items) = next else { return false };
                    let (batch, failed) = collect(items);
                    if !batch.is_empty() {
                        self.received = true;
                        self.delivered += batch.len() as u64;
                        self.take(batch, chunks, release).await;
                    }
                    if failed {
                        return false;
                    }
                }
            }
        }
    }

    /// Takes a chunk: notes whether deliveries were missed, then writes what it holds if no
    /// command of the partition is elsewhere.
    async fn take(
        &mut self,
        batch: Vec<jetstream::Message>,
        chunks: &mut Chunks,
        release: &CancellationToken,
    ) {
        for msg in &batch {
            if let Ok(info) = msg.info() {
                if self.next_delivery != Some(info.consumer_sequence) {
                    self.verified = false;
                }
                self.next_delivery = Some(info.consumer_sequence + 1);
                if info.delivered > 1 {
                    self.writer.metrics.redeliveries.inc();
                }
            }
        }
        self.held.extend(batch);
        self.write_held(chunks, release).await;
    }

    /// Writes the held commands in stream order, a batch at a time, once it is safe to.
    async fn write_held(&mut self, chunks: &mut Chunks, release: &CancellationToken) {
        if self.held.is_empty() {
            return;
        }
        if !self.verified {
            self.finish_in_flight().await;
            if !self.verify().await {
                for msg in &self.held {
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
                return;
            }
            self.verified = true;
        }
        let mut held = in_stream_order(std::mem::take(&mut self.held));
        while !held.is_empty() {
            let rest = held.split_off(held.len().min(self.writer.batch_size));
            let batch = std::mem::replace(&mut held, rest);
            self.write_batch(batch, chunks, release).await;
        }
    }

    /// Writes one batch, then announces it after the previous one, while the next is written.
    async fn write_batch(
        &mut self,
        batch: Vec<jetstream::Message>,
        chunks: &mut Chunks,
        release: &CancellationToken,
    ) {
        let span = tracing::info_span!(
            "persist.batch",
            partition = self.partition.number,
            commands = batch.len()
        );
        for msg in &batch {
            parley_common::trace::link(&span, msg.headers.as_ref());
        }
        let parsed = self.writer.parse_all(batch).instrument(span.clone()).await;
        let Some(done) = Box::pin(self.write(parsed, chunks, release))
            .instrument(span.clone())
            .await
        else {
            return;
        };
        if let Some(before) = self.in_flight.take() {
            let _ = before.await;
        }
        let writer = self.writer.clone();
        self.in_flight = Some(tokio::spawn(
            async move { writer.finish(done).await }.instrument(span),
        ));
    }

    /// True when every unacknowledged command of the partition is in this replica's hands or on
    /// its way to them, so nothing older than what it holds can still be written by someone else
    /// (see [`nothing_elsewhere`]).
    async fn verify(&self) -> bool {
        let mut held = BTreeSet::new();
        let mut held_redelivered = 0;
        for info in self.held.iter().filter_map(|m| m.info().ok()) {
            if held.insert(info.stream_sequence) && info.delivered > 1 {
                held_redelivered += 1;
            }
        }
        let last_seen = self.next_delivery.unwrap_or(1) - 1;
        match self.partition.consumer.get_info().await {
            Ok(info) => {
                let state = ConsumerState {
                    ack_pending: info.num_ack_pending,
                    redelivered_pending: info.num_redelivered,
                    last_delivered: info.delivered.consumer_sequence,
                };
                let ok = nothing_elsewhere(&state, held.len(), held_redelivered, last_seen);
                if !ok {
                    tracing::info!(
                        partition = self.partition.number,
                        ack_pending = info.num_ack_pending,
                        held = held.len(),
                        "waiting for commands another owner holds"
                    );
                }
                ok
            }
            Err(e) => {
                tracing::warn!(partition = self.partition.number, error = %e, "cannot read the partition's consumer");
                false
            }
        }
    }

    /// Every [`CHECK_EVERY`]: retries what waits for [`Owner::verify`]; and when nothing
    /// arrived although commands wait, takes the pin from whoever holds it (a replica that
    /// died, or one that no longer owns the partition), since this replica is the owner.
    async fn check(&mut self, chunks: &mut Chunks, release: &CancellationToken) {
        let received = std::mem::take(&mut self.received);
        if !self.held.is_empty() && !self.verified {
            self.write_held(chunks, release).await;
            return;
        }
        if received {
            return;
        }
        let Ok(info) = self.partition.consumer.get_info().await else {
            return;
        };
        let full =
            i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX) >= info.config.max_ack_pending;
        if info.num_pending > 0 && !full {
            tracing::info!(
                partition = self.partition.number,
                waiting = info.num_pending,
                "commands wait but none arrive: taking the pin"
            );
            self.unpin().await;
        }
    }

    async fn unpin(&self) {
        if let Err(e) = self
            .stream
            .unpin_consumer(&self.partition.name, PRIORITY_GROUP)
            .await
        {
            tracing::debug!(partition = self.partition.number, error = %e, "cannot unpin");
        }
    }

    /// Waits for the previous batch's announcements and acks.
    async fn finish_in_flight(&mut self) {
        if let Some(task) = self.in_flight.take() {
            let _ = task.await;
        }
    }

    /// Hands the partition back: what was received and not written goes back to the broker
    /// (nak: redelivered at once to the next owner, before anything newer), the pin is
    /// released so the next owner is pinned now, and the last batch is announced and acked.
    async fn release(&mut self, chunks: &mut Chunks) {
        while let Some(Some(items)) = chunks.next().now_or_never() {
            self.held.extend(collect(items).0);
        }
        for msg in self.held.drain(..) {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
        self.unpin().await;
        self.finish_in_flight().await;
        tracing::info!(partition = self.partition.number, "partition released");
    }
    /// Writes `parsed` (in stream order) and returns each command with its outcome, for
    /// [`Writer::finish`]. While the database is down the batch is held, kept alive with
    /// progress acks, and joined by whatever else the pull delivers; when the partition is
    /// released meanwhile, it goes back to the broker. A batch that fails for a reason of its
    /// own is written one command at a time, so only the faulty one is dead-lettered.
    async fn write(
        &mut self,
        mut parsed: Vec<Parsed>,
        chunks: &mut Chunks,
        release: &CancellationToken,
    ) -> Option<Vec<(Parsed, Outcome)>> {
        if parsed.is_empty() {
            return None;
        }
        let mut backoff = Backoff::default();
        loop {
            let written = {
                let _permit = self.writer.parallel.acquire().await;
                let started = Instant::now();
                let written = self
                    .writer
                    .write(&parsed)
                    .instrument(tracing::info_span!("db.write", commands = parsed.len()))
                    .await;
                self.writer
                    .metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                written
            };
            match written {
                Ok(outcomes) => {
                    self.writer.metrics.batch_size.observe(parsed.len() as f64);
                    return Some(parsed.into_iter().zip(outcomes).collect());
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(partition = self.partition.number, error = %e, batch = parsed.len(), "database unavailable, holding the batch");
                    if release.is_cancelled() {
                        for p in &parsed {
                            let _ = p.msg.ack_with(AckKind::Nak(None)).await;
                        }
                        return None;
                    }
                    let mut arrived = Vec::new();
                    while let Some(Some(items)) = chunks.next().now_or_never() {
                        arrived.extend(collect(items).0);
                    }
                    let known: BTreeSet<u64> =
                        parsed.iter().filter_map(|p| p.stream_sequence()).collect();
                    arrived.retain(|m| m.info().is_ok_and(|i| !known.contains(&i.stream_sequence)));
                    parsed.extend(self.writer.parse_all(in_stream_order(arrived)).await);
                    for p in &parsed {
                        let _ = p.msg.ack_with(AckKind::Progress).await;
                    }
                    backoff.wait(release).await;
                }
                Err(e) if parsed.len() > 1 => {
                    tracing::warn!(partition = self.partition.number, error = %e, batch = parsed.len(), "batch failed, retrying one by one");
                    let mut done = Vec::with_capacity(parsed.len());
                    for p in parsed {
                        if let Some(one) = Box::pin(self.write(vec![p], chunks, release)).await {
                            done.extend(one);
                        }
                    }
                    return Some(done);
                }
                Err(e) => {
                    let p = &parsed[0];
                    tracing::error!(error = %e, "command cannot be stored");
                    if let Command::Send(cmd) = &p.cmd {
                        self.writer
                            .tell_sender(
                                cmd,
                                ErrorCode::Invalid,
                                "the message cannot be stored; do not retry it",
                            )
                            .await;
                    }
                    self.writer
                        .dead_letter(&p.msg, &format!("cannot be stored: {e}"))
                        .await;
                    return None;
                }
            }
        }
    }
}

/// What a partition's consumer says of the commands it handed out.
#[derive(Debug, Clone, Copy)]
struct ConsumerState {
    /// Handed out and not acknowledged.
    ack_pending: usize,
    /// Of those, handed out more than once.
    redelivered_pending: usize,
    /// The consumer sequence of the last delivery, to anyone.
    last_delivered: u64,
}

/// Whether an owner that holds `held` unacknowledged commands (`held_redelivered` of them
/// delivered more than once), and has seen deliveries up to consumer sequence `last_seen`, may
/// write: every command handed out and not acknowledged is in its hands or on its way to them.
/// Deliveries after `last_seen` are on their way to it (a pinned client gets every delivery; one
/// that went elsewhere shows as a gap later, and is checked then). Those first delivered come in
/// stream order, after everything held; a redelivery on its way may be older than what is held,
/// so while one is, the owner waits for it.
fn nothing_elsewhere(
    state: &ConsumerState,
    held: usize,
    held_redelivered: usize,
    last_seen: u64,
) -> bool {
    let on_the_way =
        usize::try_from(state.last_delivered.saturating_sub(last_seen)).unwrap_or(usize::MAX);
    state.ack_pending <= held.saturating_add(on_the_way)
        && state.redelivered_pending <= held_redelivered
}

/// The messages of a chunk, and whether the pull reported an error (logged here).
fn collect(items: Vec<PullItem>) -> (Vec<jetstream::Message>, bool) {
    let mut batch = Vec::with_capacity(items.len());
    let mut failed = false;
    for item in items {
        match item {
            Ok(m) => batch.push(m),
            Err(e) => {
                failed = true;
                tracing::warn!(error = %e, "pull error");
            }
        }
    }
    (batch, failed)
}

/// Commands sorted by stream sequence, each once (the latest delivery of a redelivered one).
/// Each message's ack subject is parsed once.
fn in_stream_order(batch: Vec<jetstream::Message>) -> Vec<jetstream::Message> {
    let mut keyed: Vec<(u64, jetstream::Message)> = batch
        .into_iter()
        .map(|m| (m.info().map(|i| i.stream_sequence).unwrap_or(0), m))
        .collect();
    // Stable: for one sequence, later deliveries stay after earlier ones.
    keyed.sort_by_key(|(seq, _)| *seq);
    let mut out: Vec<(u64, jetstream::Message)> = Vec::with_capacity(keyed.len());
    for (seq, msg) in keyed {
        if out.last().is_some_and(|(last, _)| *last == seq && seq != 0) {
            out.pop();
        }
        out.push((seq, msg));
    }
    out.into_iter().map(|(_, m)| m).collect()
}

/// Exponential backoff from 100 ms to 5 s, cut short by `stop`.
#[derive(Default)]
struct Backoff {
    attempt: u32,
    /// A lower ceiling than 5 s, in ms ([`Backoff::pulls`]).
    max_ms: Option<u64>,
}

impl Backoff {
    /// For renewing a failed pull: from 100 ms to [`PULL_RETRY_MAX`]. While JetStream elects a
    /// new leader for the partition's consumer (a node died: 4 to 9 s) each pull fails at once
    /// with "no responders"; a longer ceiling would leave the partition idle for up to 5 s after
    /// the leader is back.
    fn pulls() -> Self {
        Self {
            attempt: 0,
            max_ms: Some(PULL_RETRY_MAX.as_millis() as u64),
        }
    }

    async fn wait(&mut self, stop: &CancellationToken) {
        let ms = (100u64 << self.attempt.min(6)).min(self.max_ms.unwrap_or(5_000));
        self.attempt += 1;
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
        }
    }
}

struct Writer {
    js: jetstream::Context,
    pool: PgPool,
    subjects: Subjects,
    metrics: Arc<PersistenceMetrics>,
    batch_size: usize,
    /// Bounds the partitions writing a transaction at once.
    parallel: Semaphore,
}

/// A command read from the stream and checked.
struct Parsed {
    msg: jetstream::Message,
    cmd: Command,
}

impl Parsed {
    fn stream_sequence(&self) -> Option<u64> {
        self.msg.info().ok().map(|i| i.stream_sequence)
    }
}

/// What became of one command in a committed transaction.
enum Outcome {
    /// Stored now, or found stored before: announce it to these users.
    Announce {
        message: Message,
        participants: Vec<String>,
    },
    /// A read position moved: tell these users.
    Read {
        event: ReadEvent,
        participants: Vec<String>,
    },
    /// Nothing to say (a read receipt that moved nothing).
    Quiet,
    /// The sender is not a member (or there is no such conversation).
    Forbidden,
}

impl Writer {
    /// Parses each message; those that can never be commands are dead-lettered.
    async fn parse_all(&self, batch: Vec<jetstream::Message>) -> Vec<Parsed> {
        let mut parsed = Vec::with_capacity(batch.len());
        for msg in batch {
            match self.parse(&msg) {
                Ok(cmd) => parsed.push(Parsed { msg, cmd }),
                Err((reason, cmd)) => {
                    if let Some(Command::Send(cmd)) = cmd.as_deref() {
                        self.tell_sender(cmd, ErrorCode::Invalid, &reason).await;
                    }
                    self.dead_letter(&msg, &reason).await;
                }
            }
        }
        parsed
    }

    /// Sends an `error` event about one of the sender's messages to all their devices.
    async fn tell_sender(&self, cmd: &SendCommand, code: ErrorCode, message: &str) {
        let event = ServerEvent::Error(ErrorEvent {
            code,
            message: message.into(),
            client_msg_id: Some(cmd.client_msg_id.as_str().to_owned()),
            close_code: None,
        })
        .to_json();
        if let Err(e) = self
            .js
            .client()
            .publish(self.subjects.out_user(cmd.sender_id.as_str()), event)
            .await
        {
            tracing::warn!(error = %e, "cannot tell a sender their message failed");
        }
    }

    /// Checks a command's subject and payload. A refusal carries the command when it could be
    /// read, so its sender can be told.
    fn parse(
        &self,
        msg: &jetstream::Message,
    ) -> std::result::Result<Command, (String, Option<Box<Command>>)> {
        let subject = self
            .subjects
            .parse_command(msg.subject.as_str())
            .map_err(|e| (e.0, None))?;
        let malformed = |e: serde_json::Error| (format!("malformed command: {e}"), None);
        let cmd = match subject.kind {
            CommandKind::Send => {
                Command::Send(serde_json::from_slice(&msg.payload).map_err(malformed)?)
            }
            CommandKind::Read => {
                Command::Read(serde_json::from_slice(&msg.payload).map_err(malformed)?)
            }
        };
        if subject.conversation != cmd.conversation_id() {
            return Err((
                "subject and conversationId disagree".into(),
                Some(Box::new(cmd)),
            ));
        }
        match &cmd {
            Command::Send(send) => {
                if let Err(e) = Content::parse(send.content.clone(), HARD_MAX_CONTENT_CHARS) {
                    return Err((format!("invalid content: {e}"), Some(Box::new(cmd))));
                }
            }
            Command::Read(read) => {
                if read.seq < 1 {
                    return Err(("seq must be at least 1".into(), None));
                }
            }
        }
        Ok(cmd)
    }

    /// The transaction: one round of locks, one duplicate lookup, the plan, one insert, one
    /// update, and the read positions.
    async fn write(&self, batch: &[Parsed]) -> Result<Vec<Outcome>> {
        let mut tx = self.pool.begin().await?;

        let mut ids: Vec<Uuid> = batch.iter().map(|p| p.cmd.conversation_id()).collect();
        ids.sort_unstable();
        ids.dedup();
        let locked: HashMap<Uuid, plan::Conversation> = conversations::lock(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|c| {
                let direct = c.kind == ConversationKind::Direct.as_str();
                (
                    c.id,
                    plan::Conversation {
                        participant_ids: c.participant_ids,
                        last_seq: c.last_seq,
                        direct,
                    },
                )
            })
            .collect();

        let sends = || {
            batch.iter().filter_map(|p| match &p.cmd {
                Command::Send(c) => Some(c),
                Command::Read(_) => None,
            })
        };
        let senders: Vec<&str> = sends().map(|c| c.sender_id.as_str()).collect();
        let client_ids: Vec<&str> = sends().map(|c| c.client_msg_id.as_str()).collect();
        let stored = messages::find_by_client_ids(&mut tx, &senders, &client_ids).await?;

        let now = now_micros();
        let plan = plan::plan(
            batch.iter().map(|p| &p.cmd),
            locked,
            stored,
            now,
            Uuid::now_v7,
        );

        messages::insert_batch(&mut tx, &plan.inserts)
            .instrument(tracing::info_span!("db.insert", rows = plan.inserts.len()))
            .await?;
        if !plan.advanced.is_empty() {
            let (ids, seqs): (Vec<Uuid>, Vec<i64>) = plan.advanced.iter().copied().unzip();
            let at = vec![now; ids.len()];
            conversations::advance(&mut tx, &ids, &seqs, &at).await?;
        }
        let mut outcomes = Vec::with_capacity(plan.outcomes.len());
        for planned in plan.outcomes {
            outcomes.push(match planned {
                Planned::Announce {
                    message,
                    participants,
                } => Outcome::Announce {
                    message,
                    participants,
                },
                Planned::Read {
                    read,
                    direct,
                    participants,
                } => apply_read(&mut tx, read, direct, participants).await?,
                Planned::Quiet => Outcome::Quiet,
                Planned::Forbidden => Outcome::Forbidden,
            });
        }
        tx.commit().await?;
        self.metrics.persisted.inc_by(plan.inserts.len() as u64);
        for accepted_at in plan.accepted {
            let took = (now - accepted_at).to_std().unwrap_or_default();
            self.metrics.persist_latency.observe(took.as_secs_f64());
        }
        tracing::debug!(
            stored = plan.inserts.len(),
            batch = batch.len(),
            "batch committed"
        );
        Ok(outcomes)
    }

    /// After the commit: announce, flush, then ack.
    async fn finish(&self, done: Vec<(Parsed, Outcome)>) {
        let nats = self.js.client();
        let mut forbidden = vec![false; done.len()];
        for (i, (p, outcome)) in done.iter().enumerate() {
            match outcome {
                Outcome::Announce {
                    message,
                    participants,
                } => {
                    let headers = delivery_headers(p, message);
                    let event: Bytes = ServerEvent::MessageNew(message.clone()).to_json();
                    let users = participants.iter().map(String::as_str);
                    deliver(&nats, &self.subjects, users, &headers, &event).await;
                }
                Outcome::Read {
                    event,
                    participants,
                } => {
                    let span = tracing::info_span!("persist.read");
                    parley_common::trace::continue_from(&span, p.msg.headers.as_ref());
                    let mut headers = async_nats::HeaderMap::new();
                    parley_common::trace::inject(&span, &mut headers);
                    let event = ServerEvent::MessageRead(event.clone()).to_json();
                    let users = participants.iter().map(String::as_str);
                    deliver(&nats, &self.subjects, users, &headers, &event).await;
                }
                Outcome::Quiet => {}
                Outcome::Forbidden => {
                    if let Command::Send(cmd) = &p.cmd {
                        self.tell_sender(
                            cmd,
                            ErrorCode::Forbidden,
                            "you are not a member of this conversation",
                        )
                        .await;
                    }
                    forbidden[i] = true;
                }
            }
        }
        if let Err(e) = nats.flush().await {
            tracing::warn!(error = %e, "cannot flush delivery events");
        }
        for ((p, _), forbidden) in done.iter().zip(forbidden) {
            if forbidden {
                self.dead_letter(&p.msg, "sender is not a member of the conversation")
                    .await;
            } else if let Err(e) = p.msg.ack().await {
                // The broker redelivers; the next pass finds the row and re-announces it.
                tracing::warn!(error = %e, "cannot ack a stored command");
            }
        }
    }

    /// Moves a command that can never succeed to `{p}.dlq` with its reason, then terminates it.
    /// If the dead-letter stream does not take it, the command is left for redelivery.
    async fn dead_letter(&self, msg: &jetstream::Message, reason: &str) {
        tracing::warn!(subject = %msg.subject, reason, "dead-lettering a command");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            DLQ_REASON_HEADER,
            reason.replace(['\r', '\n'], " ").as_str(),
        );
        headers.insert(DLQ_SUBJECT_HEADER, msg.subject.as_str());
        let published = async {
            self.js
                .publish_with_headers(self.subjects.dlq(), headers, msg.payload.clone())
                .await?
                .await
        };
        match published.await {
            Ok(_) => {
                self.metrics.dead_lettered.inc();
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "cannot terminate a dead-lettered command");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot dead-letter a command, leaving it for redelivery");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }
}

/// The headers of a `message:new` delivery: the message's own trace continued in a
/// `persist.message` span (linked to the batch that wrote it), and the times for the delivering
/// gateway's latency figures.
fn delivery_headers(p: &Parsed, message: &Message) -> async_nats::HeaderMap {
    let span = tracing::info_span!("persist.message", seq = message.seq);
    parley_common::trace::continue_from(&span, p.msg.headers.as_ref());
    let batch = tracing::Span::current().context();
    span.add_link(batch.span().span_context().clone());
    let mut headers = async_nats::HeaderMap::new();
    parley_common::trace::inject(&span, &mut headers);
    if let Command::Send(cmd) = &p.cmd {
        headers.insert(
            parley_common::wire::headers::ACCEPTED_AT,
            cmd.accepted_at.timestamp_micros().to_string().as_str(),
        );
    }
    headers.insert(
        parley_common::wire::headers::STORED_AT,
        message.created_at.timestamp_micros().to_string().as_str(),
    );
    headers
}

/// Moves a reader's position forward (never back; the plan capped it at the last message)
/// and, in a direct conversation, stamps `readAt` on what the other sent.
async fn apply_read(
    tx: &mut sqlx::PgConnection,
    read: parley_common::wire::ReadCommand,
    direct: bool,
    participants: Vec<String>,
) -> Result<Outcome> {
    let reader = read.user_id.as_str();
    let Some(from) = conversations::mark_read(tx, read.conversation_id, reader, read.seq).await?
    else {
        return Ok(Outcome::Quiet);
    };
    let at = DateTime::from_timestamp_micros(read.at.timestamp_micros()).unwrap_or(read.at);
    if direct {
        messages::mark_read(tx, read.conversation_id, reader, (from, read.seq), at).await?;
    }
    Ok(Outcome::Read {
        event: ReadEvent {
            conversation_id: read.conversation_id,
            user_id: reader.to_owned(),
            seq: read.seq,
            read_at: at,
        },
        participants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ack_pending: usize, redelivered_pending: usize, last_delivered: u64) -> ConsumerState {
        ConsumerState {
            ack_pending,
            redelivered_pending,
            last_delivered,
        }
    }

    #[test]
    fn an_owner_holding_everything_handed_out_may_write() {
        assert!(nothing_elsewhere(&state(0, 0, 0), 0, 0, 0));
        assert!(nothing_elsewhere(&state(50, 0, 50), 50, 0, 50));
    }

    #[test]
    fn deliveries_on_their_way_to_the_owner_do_not_hold_it_back() {
        // Under a steady load the consumer has handed out more than the owner has read yet.
        assert!(nothing_elsewhere(&state(80, 0, 130), 50, 0, 100));
    }

    #[test]
    fn commands_a_dead_owner_held_hold_the_new_owner_back() {
        // 20 handed to the old owner (never acked), 50 to the new one.
        assert!(!nothing_elsewhere(&state(70, 0, 70), 50, 0, 70));
        // After the ack wait they are on their way back: redelivered, maybe older than what is
        // held, so the owner waits until they arrive...
        assert!(!nothing_elsewhere(&state(70, 20, 90), 50, 0, 70));
        assert!(!nothing_elsewhere(&state(70, 20, 90), 60, 10, 80));
        // ...and writes once they all have.
        assert!(nothing_elsewhere(&state(70, 20, 90), 70, 20, 90));
    }

    #[test]
    fn commands_given_back_and_not_yet_redelivered_hold_the_new_owner_back() {
        // A released partition's 10 unwritten commands were nak'ed: pending, not yet redelivered.
        assert!(!nothing_elsewhere(&state(60, 0, 110), 50, 0, 110));
    }
}
