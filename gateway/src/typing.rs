//! Typing indicators: ephemeral, never stored (DESIGN §2). A user typing in a conversation is
//! announced to the other members at most once per [`REFRESH`] however often their client says
//! so, and cleared by the gateway itself when no refresh came for [`TIMEOUT`]: a client that
//! vanishes mid-sentence does not leave others watching "typing…" for ever.
//!
//! The state is per gateway: a user typing on two gateways at once is announced by each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_common::domain::UserId;
use parley_common::subjects::Subjects;
use parley_common::wire::{ServerEvent, TypingEvent};
use tokio::time::Instant;
use uuid::Uuid;

/// How long "typing" holds without a refresh.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The most often a user's "typing" in one conversation is announced.
pub const REFRESH: Duration = Duration::from_secs(3);

pub struct Typing {
    nats: async_nats::Client,
    subjects: Subjects,
    active: Mutex<HashMap<(UserId, Uuid), Active>>,
}

struct Active {
    /// When "typing" ends unless refreshed.
    until: Instant,
    announced: Instant,
    members: Arc<[String]>,
}

impl Typing {
    pub fn new(nats: async_nats::Client, subjects: Subjects) -> Arc<Self> {
        Arc::new(Self {
            nats,
            subjects,
            active: Mutex::new(HashMap::new()),
        })
    }

    /// `user` says they are (or stopped) typing in `conversation`, whose members are `members`.
    pub async fn set(
        self: &Arc<Self>,
        user: &UserId,
        conversation: Uuid,
        members: Arc<[String]>,
        is_typing: bool,
    ) {
        let now = Instant::now();
        let key = (user.clone(), conversation);
        let announce = {
            let mut active = self.active.lock().expect("typing lock");
            if is_typing {
                match active.get_mut(&key) {
                    Some(a) => {
                        a.until = now + TIMEOUT;
                        a.members = members.clone();
                        let due = now.duration_since(a.announced) >= REFRESH;
                        if due {
                            a.announced = now;
                        }
                        due
                    }
                    None => {
                        active.insert(
                            key.clone(),
                            Active {
                                until: now + TIMEOUT,
                                announced: now,
                                members: members.clone(),
                            },
                        );
                        tokio::spawn(self.clone().expire(key.clone()));
                        true
                    }
                }
            } else {
                active.remove(&key).is_some()
            }
        };
        if announce {
            self.announce(user, conversation, &members, is_typing).await;
        }
    }

    /// Clears `key` once it goes [`TIMEOUT`] without a refresh.
    async fn expire(self: Arc<Self>, key: (UserId, Uuid)) {
        loop {
            let until = match self.active.lock().expect("typing lock").get(&key) {
                Some(a) => a.until,
                None => return,
            };
            tokio::time::sleep_until(until).await;
            let members = {
                let mut active = self.active.lock().expect("typing lock");
                match active.get(&key) {
                    Some(a) if a.until <= Instant::now() => active.remove(&key).map(|a| a.members),
                    Some(_) => continue,
                    None => return,
                }
            };
            if let Some(members) = members {
                self.announce(&key.0, key.1, &members, false).await;
            }
            return;
        }
    }

    async fn announce(&self, user: &UserId, conversation: Uuid, members: &[String], on: bool) {
        let event = ServerEvent::Typing(TypingEvent {
            conversation_id: conversation,
            user_id: user.as_str().to_owned(),
            is_typing: on,
        })
        .to_json();
        let others: Vec<&str> = members
            .iter()
            .map(String::as_str)
            .filter(|m| *m != user.as_str())
            .collect();
        let headers = parley_common::trace::headers();
        parley_common::nats::deliver(&self.nats, &self.subjects, others, &headers, &event).await;
    }
}
