//! Delivery to sockets: one NATS subscription per connected user, shared by all of that user's
//! sockets on this gateway, reference-counted (DESIGN §2). The user's entry also holds what is
//! per user rather than per socket: the rate limit and the connection count.
//!
//! A delivery event's payload is already the `/ws` frame, so it is written to every socket as
//! it came: serialised once, however many sockets receive it. Each socket has a bounded queue;
//! a socket whose queue is full is not reading, and is dropped rather than buffered without
//! limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parley_common::domain::UserId;
use parley_common::subjects::Subjects;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::metrics::{ConnectionGuard, GatewayMetrics, Transport};
use crate::presence::Tracker;

/// How long setting up a user's subscription may take before the connection is refused.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a user's events go on this gateway.
pub struct Fanout {
    nats: async_nats::Client,
    subjects: Subjects,
    limits: Limits,
    users: Mutex<HashMap<UserId, Arc<UserEntry>>>,
    next_id: AtomicU64,
    /// Told, under the `users` lock so in order, when a user comes and goes here.
    presence: Tracker,
    metrics: Arc<GatewayMetrics>,
}

struct UserEntry {
    sockets: RwLock<Vec<Sink>>,
    /// `None` until the subscription is in place; then whether it was.
    ready: watch::Sender<Option<bool>>,
    forwarder: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Sink {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// Cancelled when this socket falls too far behind.
    slow: CancellationToken,
    /// The Parley session the socket authenticated with, and what ends it with the session.
    session: Option<String>,
    revoked: CancellationToken,
}

impl Sink {
    /// Queues `frame` for the socket; one whose queue is full is closed as slow. True when the
    /// socket took it.
    fn hand(&self, frame: Bytes) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// One socket's place in the fan-out. Dropping it detaches the socket; the last socket of a
/// user to go ends the user's subscription.
pub struct Attachment {
    pub rx: mpsc::Receiver<Bytes>,
    /// Cancelled when the socket did not keep up: close it.
    pub slow: CancellationToken,
    /// Where the session queues its own frames (replies) for this socket.
    pub tx: mpsc::Sender<Bytes>,
    /// Cancelled when the user signs out of the session this socket authenticated with.
    pub revoked: CancellationToken,
    detach: Option<(Arc<Fanout>, UserId, u64)>,
    _counted: ConnectionGuard,
}

impl Attachment {
    /// The socket now speaks for Parley session `session` (an `auth:refresh` with another
    /// session's token): signing out of that session ends it, signing out of the old one no
    /// longer does.
    pub fn rebind_session(&self, session: Option<String>) {
        if let Some((fanout, user, id)) = &self.detach {
            fanout.rebind(user, *id, session);
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some((fanout, user, id)) = self.detach.take() {
            fanout.detach(&user, id);
        }
    }
}

/// Why a socket could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("cannot subscribe to the user's delivery subject")]
    Unavailable,
    #[error("the user has too many connections on this gateway")]
    TooManyConnections,
}

impl Fanout {
    pub fn new(
        nats: async_nats::Client,
        subjects: Subjects,
        limits: Limits,
        presence: Tracker,
        metrics: Arc<GatewayMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            nats,
            subjects,
            limits,
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            presence,
            metrics,
        })
    }

    /// Attaches a socket of `user` on `transport`, which authenticated with Parley session
    /// `session` (if any). Returns once the user's subscription is registered at the NATS
    /// server, so no event published after this returns is missed.
    pub async fn attach_session(
        self: &Arc<Self>,
        user: &UserId,
        session: Option<String>,
        transport: Transport,
    ) -> Result<Attachment, AttachError> {
        let (tx, rx) = mpsc::channel(self.limits.outbound_queue);
        let slow = CancellationToken::new();
        let revoked = CancellationToken::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sink = Sink {
            id,
            tx: tx.clone(),
            slow: slow.clone(),
            session,
            revoked: revoked.clone(),
        };
        let (entry, first) = {
            let mut users = self.users.lock().expect("fanout lock");
            match users.get(user) {
                Some(entry) => {
                    let mut sockets = entry.sockets.write().expect("sockets lock");
                    if sockets.len() >= self.limits.max_connections_per_user {
                        return Err(AttachError::TooManyConnections);
                    }
                    sockets.push(sink);
                    drop(sockets);
                    (entry.clone(), false)
                }
                None => {
                    let entry = Arc::new(UserEntry {
                        sockets: RwLock::new(vec![sink]),
                        ready: watch::Sender::new(None),
                        forwarder: Mutex::new(None),
                    });
                    users.insert(user.clone(), entry.clone());
                    self.presence.up(user);
                    (entry, true)
                }
            }
        };
        let attachment = Attachment {
            rx,
            slow,
            tx,
            revoked,
            detach: Some((self.clone(), user.clone(), id)),
            _counted: self.metrics.connected(transport),
        };
        if first {
            // A task of its own, so the outcome is recorded even if this caller goes away
            // (a client that hangs up mid-upgrade); other sockets of the user wait on it.
            let fanout = self.clone();
            let (user, entry) = (user.clone(), entry.clone());
            tokio::spawn(async move {
                let ok = fanout.subscribe(&user, &entry).await;
                entry.ready.send_replace(Some(ok));
            });
        }
        let mut ready = entry.ready.subscribe();
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready.wait_for(Option::is_some)).await {
            Ok(Ok(r)) if *r == Some(true) => Ok(attachment),
            _ => Err(AttachError::Unavailable),
        }
    }

    async fn subscribe(&self, user: &UserId, entry: &Arc<UserEntry>) -> bool {
        let subject = self.subjects.out_user(user.as_str());
        let mut subscription = match self.nats.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe for a user");
                return false;
            }
        };
        if let Err(e) = parley_common::nats::round_trip(&self.nats).await {
            tracing::warn!(error = %e, "cannot confirm a subscription");
            return false;
        }
        let weak = Arc::downgrade(entry);
        let metrics = self.metrics.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(msg) = subscription.next().await {
                let Some(entry) = weak.upgrade() else { break };
                forward(&entry, &msg, &metrics);
            }
        });
        *entry.forwarder.lock().expect("forwarder lock") = Some(forwarder);
        // The last socket may have gone while we subscribed: then nobody will detach again.
        if entry.sockets.read().expect("sockets lock").is_empty()
            && let Some(task) = entry.forwarder.lock().expect("forwarder lock").take()
        {
            task.abort();
        }
        true
    }

    fn detach(&self, user: &UserId, id: u64) {
        let mut users = self.users.lock().expect("fanout lock");
        let Some(entry) = users.get(user) else { return };
        let empty = {
            let mut sockets = entry.sockets.write().expect("sockets lock");
            sockets.retain(|s| s.id != id);
            sockets.is_empty()
        };
        if empty && let Some(entry) = users.remove(user) {
            self.presence.down(user);
            if let Some(task) = entry.forwarder.lock().expect("forwarder lock").take() {
                // Dropping the subscription with the task unsubscribes at the server.
                task.abort();
            }
        }
    }

    fn rebind(&self, user: &UserId, id: u64, session: Option<String>) {
        let users = self.users.lock().expect("fanout lock");
        let Some(entry) = users.get(user) else { return };
        let mut sockets = entry.sockets.write().expect("sockets lock");
        if let Some(sink) = sockets.iter_mut().find(|s| s.id == id) {
            sink.session = session;
        }
    }

    /// Ends every socket here that authenticated with `session` of `user`; returns how many.
    pub fn revoke_session(&self, user: &UserId, session: &str) -> usize {
        let users = self.users.lock().expect("fanout lock");
        let Some(entry) = users.get(user) else {
            return 0;
        };
        let sockets = entry.sockets.read().expect("sockets lock");
        let mut n = 0;
        for sink in sockets
            .iter()
            .filter(|s| s.session.as_deref() == Some(session))
        {
            sink.revoked.cancel();
            n += 1;
        }
        n
    }

    /// Hands `event` to every socket here (a socket whose queue is full is closed as slow, as
    /// for any delivery); returns how many took it.
    pub fn to_everyone(&self, event: &parley_common::wire::ServerEvent) -> usize {
        let payload = event.to_json();
        let users = self.users.lock().expect("fanout lock");
        let mut handed = 0;
        for entry in users.values() {
            for sink in entry.sockets.read().expect("sockets lock").iter() {
                handed += usize::from(sink.hand(payload.clone()));
            }
        }
        handed
    }

    /// Users with at least one socket here.
    pub fn connected_users(&self) -> usize {
        self.users.lock().expect("fanout lock").len()
    }
}

/// Hands one delivery event to every socket of the user here. A traced event continues its
/// trace in a `deliver` span; a `message:new` counts as delivered once per socket, with its
/// latency since the send was accepted.
fn forward(entry: &UserEntry, msg: &async_nats::Message, metrics: &GatewayMetrics) {
    let headers = msg.headers.as_ref();
    let span = headers.filter(|h| h.get("traceparent").is_some()).map(|h| {
        let span = tracing::info_span!("deliver", sockets = tracing::field::Empty);
        parley_common::trace::continue_from(&span, Some(h));
        span
    });
    let _in_span = span.as_ref().map(tracing::Span::enter);
    let sockets = entry.sockets.read().expect("sockets lock");
    let mut handed = 0u64;
    for sink in sockets.iter() {
        handed += u64::from(sink.hand(msg.payload.clone()));
    }
    if let Some(span) = &span {
        span.record("sockets", handed);
    }
    let micros = |name| {
        headers?
            .get(name)?
            .as_str()
            .parse::<i64>()
            .ok()
            .and_then(chrono::DateTime::from_timestamp_micros)
    };
    if let Some(accepted) = micros(parley_common::wire::headers::ACCEPTED_AT) {
        let now = chrono::Utc::now();
        let since = |t: chrono::DateTime<chrono::Utc>| (now - t).to_std().unwrap_or_default();
        metrics.delivered.inc_by(handed);
        for _ in 0..handed {
            metrics
                .delivery_latency
                .observe(since(accepted).as_secs_f64());
        }
        if let Some(stored) = micros(parley_common::wire::headers::STORED_AT) {
            metrics.deliver_latency.observe(since(stored).as_secs_f64());
        }
    }
}
