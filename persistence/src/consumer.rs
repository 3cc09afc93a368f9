//! The batch consumer of `PARLEY_IN` (DESIGN §2).
//!
//! Whatever commands are ready (up to the batch size) are written in one Postgres transaction:
//! lock the conversations, find the commands already stored (a client retry after the broker's
//! dedupe window, or a redelivery after a crash), hand each new message the next seq of its
//! conversation, insert them all in one statement. After the commit, every participant is
//! told, NATS is flushed, and only then are the commands acked. A crash anywhere before the
//! ack redelivers the batch, and the second pass finds the rows and re-announces them with
//! their original id and seq: stored once, never lost.
//!
//! When Postgres is down the batch is held and retried with backoff (telling the broker the work
//! is in progress, so it is not handed to another replica), and no new pull request is made
//! until it is written: one pull at a time, of at most one batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull};
use bytes::Bytes;
use chrono::DateTime;
use futures::{FutureExt, StreamExt};
use opentelemetry::trace::TraceContextExt;
use parley_common::domain::Content;
use parley_common::nats::deliver;
use parley_common::subjects::Subjects;
use parley_common::wire::{
    ConversationKind, ErrorCode, ErrorEvent, Message, ReadCommand, ReadEvent, SendCommand,
    ServerEvent,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::chat::{HARD_MAX_CONTENT_CHARS, now_micros};
use crate::config::PersistenceConfig;
use crate::error::{Error, Result};
use crate::metrics::PersistenceMetrics;
use crate::store::{conversations, messages};

/// Header on a dead-lettered command naming why it can never succeed.
pub const DLQ_REASON_HEADER: &str = "Parley-Dlq-Reason";
/// Header on a dead-lettered command naming the subject it came from.
pub const DLQ_SUBJECT_HEADER: &str = "Parley-Dlq-Subject";

/// Creates the durable consumer replicas share, or finds it.
pub async fn create(config: &PersistenceConfig, js: &jetstream::Context) -> Result<PullConsumer> {
    let subjects = &config.nats.prefix;
    let stream = js
        .get_stream(subjects.stream_in())
        .await
        .map_err(Error::nats)?;
    // `create_consumer` also brings an existing durable consumer's editable settings (ack wait,
    // max ack pending) to this configuration.
    stream
        .create_consumer(pull::Config {
            durable_name: Some(subjects.consumer_persist()),
            description: Some("Parley persistence: writes commands to Postgres".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            // -1: redeliver for ever. A command that can never succeed is dead-lettered by
            // us with its reason; one that waits for the database must not be dropped.
            max_deliver: -1,
            max_ack_pending: config.max_ack_pending,
            ..Default::default()
        })
        .await
        .map_err(Error::nats)
}

/// Runs the consumer until `shutdown` is cancelled. The batch in hand when that happens is
/// finished and acked first.
pub async fn run(
    config: &PersistenceConfig,
    consumer: PullConsumer,
    js: jetstream::Context,
    pool: PgPool,
    shutdown: CancellationToken,
) -> Result<()> {
    let writer = Writer {
        js,
        pool,
        subjects: config.nats.prefix.clone(),
        shutdown: shutdown.clone(),
        metrics: PersistenceMetrics::get(),
    };
    tracing::info!(consumer = %writer.subjects.consumer_persist(), "persistence consumer started");

    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        // One pull request at a time, for at most a batch: nothing more is handed to this
        // replica while it writes (or holds, in an outage) what it has, so the rest of the
        // stream stays available to other replicas and keeps its order.
        let pull = match consumer
            .batch()
            .max_messages(config.batch_size)
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull from the stream, retrying");
                backoff.wait(&shutdown).await;
                continue;
            }
        };
        let mut chunks = pull.ready_chunks(config.batch_size);
        let mut failed = false;
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => break,
                next = chunks.next() => next,
            };
            let Some(items) = next else { break };
            let batch = collect(items, &mut failed);
            if !batch.is_empty() {
                backoff.reset();
                writer.handle(batch, &mut chunks).await;
            }
        }
        if failed && !shutdown.is_cancelled() {
            backoff.wait(&shutdown).await;
        }
    }
    tracing::info!("persistence consumer stopped");
    Ok(())
}

/// How long one pull request waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

type PullItem = std::result::Result<jetstream::Message, async_nats::Error>;

/// What else the current pull delivers, while a batch is in hand.
type MoreMessages<'a> = dyn futures::Stream<Item = Vec<PullItem>> + Send + Unpin + 'a;

/// The messages of a chunk; errors are logged and noted in `failed`.
fn collect(items: Vec<PullItem>, failed: &mut bool) -> Vec<jetstream::Message> {
    let mut batch = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(m) => batch.push(m),
            Err(e) => {
                *failed = true;
                tracing::warn!(error = %e, "pull error");
            }
        }
    }
    batch
}

/// Exponential backoff from 100 ms to 5 s, cut short by shutdown.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    async fn wait(&mut self, shutdown: &CancellationToken) {
        let ms = (100u64 << self.attempt.min(6)).min(5_000);
        self.attempt += 1;
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

struct Writer {
    js: jetstream::Context,
    pool: PgPool,
    subjects: Subjects,
    shutdown: CancellationToken,
    metrics: Arc<PersistenceMetrics>,
}

/// A command read from the stream and checked.
struct Parsed {
    msg: jetstream::Message,
    cmd: Command,
}

/// What `PARLEY_IN` carries.
enum Command {
    Send(SendCommand),
    Read(ReadCommand),
}

impl Command {
    fn conversation_id(&self) -> Uuid {
        match self {
            Command::Send(c) => c.conversation_id,
            Command::Read(c) => c.conversation_id,
        }
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
    /// Handles one batch from the stream: every message in it ends acked, dead-lettered, or
    /// left for redelivery (only when shutting down during an outage). While the database is
    /// down, whatever else the pull delivers (`more`) joins the held batch, so it too is kept
    /// alive with progress acks and is written in order once the database returns.
    ///
    /// The batch has a span of its own, linked to the trace of each message in it.
    async fn handle(&self, batch: Vec<jetstream::Message>, more: &mut MoreMessages<'_>) {
        let span = tracing::info_span!("persist.batch", commands = batch.len());
        for msg in &batch {
            parley_common::trace::link(&span, msg.headers.as_ref());
        }
        self.handle_in_span(batch, more).instrument(span).await;
    }

    async fn handle_in_span(&self, batch: Vec<jetstream::Message>, more: &mut MoreMessages<'_>) {
        let mut parsed = self.parse_all(batch).await;
        if parsed.is_empty() {
            return;
        }
        let mut backoff = Backoff::default();
        loop {
            let written = self
                .write(&parsed)
                .instrument(tracing::info_span!("db.write", commands = parsed.len()))
                .await;
            match written {
                Ok(outcomes) => {
                    self.metrics.batch_size.observe(parsed.len() as f64);
                    self.finish(&parsed, outcomes).await;
                    return;
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, batch = parsed.len(), "database unavailable, holding the batch");
                    if self.shutdown.is_cancelled() {
                        // Unacked, so the broker redelivers after ack_wait: nothing is lost.
                        return;
                    }
                    let mut ignored = false;
                    while let Some(Some(items)) = more.next().now_or_never() {
                        let arrived = collect(items, &mut ignored);
                        parsed.extend(self.parse_all(arrived).await);
                    }
                    for p in &parsed {
                        let _ = p.msg.ack_with(AckKind::Progress).await;
                    }
                    backoff.wait(&self.shutdown).await;
                }
                Err(e) if parsed.len() > 1 => {
                    // Something in the batch is at fault: write the commands one at a time so
                    // only the faulty one is dead-lettered.
                    tracing::warn!(error = %e, batch = parsed.len(), "batch failed, retrying one by one");
                    for p in parsed {
                        Box::pin(self.handle(vec![p.msg], &mut futures::stream::empty())).await;
                    }
                    return;
                }
                Err(e) => {
                    let p = &parsed[0];
                    tracing::error!(error = %e, "command cannot be stored");
                    if let Command::Send(cmd) = &p.cmd {
                        self.tell_sender(
                            cmd,
                            ErrorCode::Invalid,
                            "the message cannot be stored; do not retry it",
                        )
                        .await;
                    }
                    self.dead_letter(&p.msg, &format!("cannot be stored: {e}"))
                        .await;
                    return;
                }
            }
        }
    }

    /// Parses each message; those that can never be commands are dead-lettered.
    async fn parse_all(&self, batch: Vec<jetstream::Message>) -> Vec<Parsed> {
        let mut parsed = Vec::with_capacity(batch.len());
        for msg in batch {
            if msg.info().is_ok_and(|i| i.delivered > 1) {
                self.metrics.redeliveries.inc();
            }
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
        let unsupported = || (format!("unsupported command subject {}", msg.subject), None);
        let rest = msg
            .subject
            .as_str()
            .strip_prefix(self.subjects.prefix())
            .and_then(|r| r.strip_prefix(".in."))
            .ok_or_else(unsupported)?;
        let (kind, conversation) = rest.split_once('.').ok_or_else(unsupported)?;
        let malformed = |e: serde_json::Error| (format!("malformed command: {e}"), None);
        let cmd = match kind {
            "msg" => Command::Send(serde_json::from_slice(&msg.payload).map_err(malformed)?),
            "read" => Command::Read(serde_json::from_slice(&msg.payload).map_err(malformed)?),
            _ => return Err(unsupported()),
        };
        if conversation != cmd.conversation_id().to_string() {
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

    /// The transaction: one round of locks, one duplicate lookup, one insert, one update.
    async fn write(&self, batch: &[Parsed]) -> Result<Vec<Outcome>> {
        let mut tx = self.pool.begin().await?;

        let mut ids: Vec<Uuid> = batch.iter().map(|p| p.cmd.conversation_id()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut locked: HashMap<Uuid, conversations::Locked> = conversations::lock(&mut tx, &ids)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();

        let sends = || {
            batch.iter().filter_map(|p| match &p.cmd {
                Command::Send(c) => Some(c),
                Command::Read(_) => None,
            })
        };
        let senders: Vec<&str> = sends().map(|c| c.sender_id.as_str()).collect();
        let client_ids: Vec<&str> = sends().map(|c| c.client_msg_id.as_str()).collect();
        let mut known: HashMap<(String, String), Message> =
            messages::find_by_client_ids(&mut tx, &senders, &client_ids)
                .await?
                .into_iter()
                .map(|m| ((m.sender_id.clone(), m.client_msg_id.clone()), m))
                .collect();

        let now = now_micros();
        let mut inserts: Vec<Message> = Vec::new();
        // When each new message was accepted, for the persist latency.
        let mut accepted = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut advanced: HashMap<Uuid, i64> = HashMap::new();
        // Reads are applied after the batch's messages are in, at their place in `outcomes`.
        let mut reads: Vec<(usize, &ReadCommand)> = Vec::new();
        for p in batch {
            let cmd = match &p.cmd {
                Command::Send(cmd) => cmd,
                Command::Read(read) => {
                    reads.push((outcomes.len(), read));
                    outcomes.push(Outcome::Quiet);
                    continue;
                }
            };
            let key = (
                cmd.sender_id.as_str().to_owned(),
                cmd.client_msg_id.as_str().to_owned(),
            );
            let participants_of =
                |conversation: Uuid| locked.get(&conversation).map(|c| c.participant_ids.clone());
            if let Some(existing) = known.get(&key) {
                // Stored before: re-announce the original. A clientMsgId reused in another
                // conversation names the original too, and goes to its sender only.
                let participants = participants_of(existing.conversation_id)
                    .unwrap_or_else(|| vec![key.0.clone()]);
                outcomes.push(Outcome::Announce {
                    message: existing.clone(),
                    participants,
                });
                continue;
            }
            let Some(conversation) = locked.get_mut(&cmd.conversation_id) else {
                outcomes.push(Outcome::Forbidden);
                continue;
            };
            if !conversation
                .participant_ids
                .iter()
                .any(|u| u == cmd.sender_id.as_str())
            {
                outcomes.push(Outcome::Forbidden);
                continue;
            }
            conversation.last_seq += 1;
            let message = Message {
                id: Uuid::now_v7(),
                conversation_id: cmd.conversation_id,
                seq: conversation.last_seq,
                sender_id: key.0.clone(),
                client_msg_id: key.1.clone(),
                content: cmd.content.clone(),
                read_at: None,
                created_at: now,
                edited_at: None,
                deleted_at: None,
            };
            advanced.insert(cmd.conversation_id, conversation.last_seq);
            outcomes.push(Outcome::Announce {
                message: message.clone(),
                participants: conversation.participant_ids.clone(),
            });
            known.insert(key, message.clone());
            inserts.push(message);
            accepted.push(cmd.accepted_at);
        }

        messages::insert_batch(&mut tx, &inserts)
            .instrument(tracing::info_span!("db.insert", rows = inserts.len()))
            .await?;
        if !advanced.is_empty() {
            let (ids, seqs): (Vec<Uuid>, Vec<i64>) = advanced.into_iter().unzip();
            let at = vec![now; ids.len()];
            conversations::advance(&mut tx, &ids, &seqs, &at).await?;
        }
        for (slot, read) in reads {
            outcomes[slot] = apply_read(&mut tx, &locked, read).await?;
        }
        tx.commit().await?;
        self.metrics.persisted.inc_by(inserts.len() as u64);
        for accepted_at in accepted {
            let took = (now - accepted_at).to_std().unwrap_or_default();
            self.metrics.persist_latency.observe(took.as_secs_f64());
        }
        tracing::debug!(
            stored = inserts.len(),
            batch = batch.len(),
            "batch committed"
        );
        Ok(outcomes)
    }

    /// After the commit: announce, flush, then ack.
    async fn finish(&self, batch: &[Parsed], outcomes: Vec<Outcome>) {
        let nats = self.js.client();
        let mut forbidden = Vec::new();
        for (p, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Outcome::Announce {
                    message,
                    participants,
                } => {
                    let headers = delivery_headers(p, &message);
                    let event: Bytes = ServerEvent::MessageNew(message).to_json();
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
                    let event = ServerEvent::MessageRead(event).to_json();
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
                    forbidden.push(p);
                }
            }
        }
        if let Err(e) = nats.flush().await {
            tracing::warn!(error = %e, "cannot flush delivery events");
        }
        for p in batch {
            if forbidden.iter().any(|f| std::ptr::eq(*f, p)) {
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

/// Moves a reader's position forward (never back, never past the last message) and, in a
/// direct conversation, stamps `readAt` on what the other sent. A receipt from someone who is
/// not a member is dropped: the gateway checked before publishing, so it is stale, and saying
/// so would only tell a former member about the conversation.
async fn apply_read(
    tx: &mut sqlx::PgConnection,
    locked: &HashMap<Uuid, conversations::Locked>,
    read: &ReadCommand,
) -> Result<Outcome> {
    let Some(conversation) = locked.get(&read.conversation_id) else {
        return Ok(Outcome::Quiet);
    };
    let reader = read.user_id.as_str();
    if !conversation.participant_ids.iter().any(|u| u == reader) {
        tracing::info!(user = reader, "dropped a read receipt from a non-member");
        return Ok(Outcome::Quiet);
    }
    let seq = read.seq.min(conversation.last_seq);
    let Some(from) = conversations::mark_read(tx, read.conversation_id, reader, seq).await? else {
        return Ok(Outcome::Quiet);
    };
    let at = DateTime::from_timestamp_micros(read.at.timestamp_micros()).unwrap_or(read.at);
    if conversation.kind == ConversationKind::Direct.as_str() {
        messages::mark_read(tx, read.conversation_id, reader, (from, seq), at).await?;
    }
    Ok(Outcome::Read {
        event: ReadEvent {
            conversation_id: read.conversation_id,
            user_id: reader.to_owned(),
            seq,
            read_at: at,
        },
        participants: conversation.participant_ids.clone(),
    })
}
