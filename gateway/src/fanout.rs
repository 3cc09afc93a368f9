//! Delivery to sockets: one NATS subscription per connected user, shared by all of that user's
//! sockets on this gateway, reference-counted (DESIGN §2).
//!
//! A delivery event's payload is already the `/ws` frame, so it is written to every socket as
//! it came: serialised once, however many sockets receive it. Each socket has a bounded queue;
//! a socket whose queue is full is not reading, and is dropped rather than buffered without
//! limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use futures::StreamExt;
use parley_common::domain::UserId;
use parley_common::subjects::Subjects;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Where a user's events go on this gateway.
pub struct Fanout {
    nats: async_nats::Client,
    subjects: Subjects,
    users: Mutex<HashMap<UserId, Arc<UserEntry>>>,
    next_id: AtomicU64,
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
}

/// One socket's place in the fan-out. Dropping it detaches the socket; the last socket of a
/// user to go ends the user's subscription.
pub struct Attachment {
    pub rx: mpsc::Receiver<Bytes>,
    /// Cancelled when the socket did not keep up: close it.
    pub slow: CancellationToken,
    /// Where the session queues its own frames (replies) for this socket.
    pub tx: mpsc::Sender<Bytes>,
    detach: Option<(Arc<Fanout>, UserId, u64)>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some((fanout, user, id)) = self.detach.take() {
            fanout.detach(&user, id);
        }
    }
}

/// The subscription could not be made (NATS is down).
#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to the user's delivery subject")]
pub struct Unavailable;

impl Fanout {
    pub fn new(nats: async_nats::Client, subjects: Subjects) -> Arc<Self> {
        Arc::new(Self {
            nats,
            subjects,
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Attaches a socket of `user`, with a queue of `capacity` frames. Returns once the user's
    /// subscription is in place at the server, so no event published after this returns is
    /// missed.
    pub async fn attach(
        self: &Arc<Self>,
        user: &UserId,
        capacity: usize,
    ) -> Result<Attachment, Unavailable> {
        let (tx, rx) = mpsc::channel(capacity);
        let slow = CancellationToken::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sink = Sink {
            id,
            tx: tx.clone(),
            slow: slow.clone(),
        };
        let (entry, first) = {
            let mut users = self.users.lock().expect("fanout lock");
            match users.get(user) {
                Some(entry) => {
                    entry.sockets.write().expect("sockets lock").push(sink);
                    (entry.clone(), false)
                }
                None => {
                    let entry = Arc::new(UserEntry {
                        sockets: RwLock::new(vec![sink]),
                        ready: watch::Sender::new(None),
                        forwarder: Mutex::new(None),
                    });
                    users.insert(user.clone(), entry.clone());
                    (entry, true)
                }
            }
        };
        let attachment = Attachment {
            rx,
            slow,
            tx,
            detach: Some((self.clone(), user.clone(), id)),
        };
        if first {
            let ok = self.subscribe(user, &entry).await;
            entry.ready.send_replace(Some(ok));
        }
        let mut ready = entry.ready.subscribe();
        match ready.wait_for(Option::is_some).await.map(|r| *r) {
            Ok(Some(true)) => Ok(attachment),
            _ => Err(Unavailable),
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
        if let Err(e) = self.nats.flush().await {
            tracing::warn!(error = %e, "cannot confirm a subscription");
            return false;
        }
        let weak = Arc::downgrade(entry);
        let forwarder = tokio::spawn(async move {
            while let Some(msg) = subscription.next().await {
                let Some(entry) = weak.upgrade() else { break };
                let sockets = entry.sockets.read().expect("sockets lock");
                for sink in sockets.iter() {
                    if let Err(mpsc::error::TrySendError::Full(_)) =
                        sink.tx.try_send(msg.payload.clone())
                    {
                        sink.slow.cancel();
                    }
                }
            }
        });
        *entry.forwarder.lock().expect("forwarder lock") = Some(forwarder);
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
        if empty
            && let Some(entry) = users.remove(user)
            && let Some(task) = entry.forwarder.lock().expect("forwarder lock").take()
        {
            // Dropping the subscription with the task unsubscribes at the server.
            task.abort();
        }
    }

    /// Users with at least one socket here.
    pub fn connected_users(&self) -> usize {
        self.users.lock().expect("fanout lock").len()
    }
}
