//! Typing indicators: ephemeral, never stored (DESIGN §2). What the other members are told of
//! one user typing in one conversation is throttled per (user, conversation), whatever frames
//! the client sends: at most one announcement per [`MIN_GAP`] (a change that comes sooner is
//! told when the gap has passed, if it still holds), "typing" re-announced at most once per
//! [`REFRESH`], and cleared by the gateway itself when no refresh came for [`TIMEOUT`], so a
//! client that vanishes mid-sentence does not leave others watching "typing…" for ever.
//!
//! The state is per gateway: a user typing on two gateways at once is announced by each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_common::domain::UserId;
use parley_common::subjects::Subjects;
use parley_common::wire::{ServerEvent, TypingEvent};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

/// How long "typing" holds without a refresh.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The most often "typing" is announced again while it holds.
pub const REFRESH: Duration = Duration::from_secs(3);
/// The least time between two announcements of one user in one conversation.
pub const MIN_GAP: Duration = Duration::from_secs(1);

pub struct Typing {
    nats: async_nats::Client,
    subjects: Subjects,
    active: Mutex<HashMap<(UserId, Uuid), Entry>>,
}

struct Entry {
    throttle: Throttle,
    members: Arc<[String]>,
    /// Wakes the entry's task when the state changed.
    changed: Arc<Notify>,
}

/// What the others were told and what the client last said, for one (user, conversation).
#[derive(Debug, Clone)]
pub struct Throttle {
    /// What the others were last told.
    shown: bool,
    /// What the client last said (false once it timed out).
    wanted: bool,
    /// When "typing" ends without a refresh.
    until: Instant,
    last_told: Option<Instant>,
}

impl Throttle {
    pub fn new(now: Instant) -> Self {
        Self {
            shown: false,
            wanted: false,
            until: now,
            last_told: None,
        }
    }

    /// The client says it is (or stopped) typing at `now`; what to announce now, if anything.
    pub fn set(&mut self, now: Instant, is_typing: bool) -> Option<bool> {
        self.wanted = is_typing;
        if is_typing {
            self.until = now + TIMEOUT;
            if self.shown && self.gap_since(now).is_none_or(|gap| gap >= REFRESH) {
                return self.tell(now, true);
            }
        }
        self.due(now)
    }

    /// What to announce at `now` without anything said: a change held back by the gap, or the
    /// end of a "typing" not refreshed.
    pub fn due(&mut self, now: Instant) -> Option<bool> {
        if self.wanted && self.until <= now {
            self.wanted = false;
        }
        if self.wanted == self.shown || self.gap_since(now).is_some_and(|gap| gap < MIN_GAP) {
            return None;
        }
        self.tell(now, self.wanted)
    }

    /// When [`Throttle::due`] may next have something to say; `None` when the state can be
    /// forgotten (nothing shown, nothing wanted, the gap passed).
    pub fn wake(&self, now: Instant) -> Option<Instant> {
        let gap_ends = self.last_told.map(|t| t + MIN_GAP);
        if self.wanted != self.shown {
            Some(gap_ends.unwrap_or(now).max(now))
        } else if self.wanted {
            Some(self.until)
        } else {
            gap_ends.filter(|t| *t > now)
        }
    }

    fn gap_since(&self, now: Instant) -> Option<Duration> {
        self.last_told.map(|t| now.saturating_duration_since(t))
    }

    fn tell(&mut self, now: Instant, on: bool) -> Option<bool> {
        self.shown = on;
        self.last_told = Some(now);
        Some(on)
    }
}

impl Typing {
    pub fn new(nats: async_nats::Client, subjects: Subjects) -> Arc<Self> {
        Arc::new(Self {
            nats,
            subjects,
            active: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `user` has typing state in `conversation` here (so was authorized recently).
    pub fn is_active(&self, user: &UserId, conversation: Uuid) -> bool {
        let active = self.active.lock().expect("typing lock");
        active.contains_key(&(user.clone(), conversation))
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
            let entry = active.entry(key.clone()).or_insert_with(|| {
                let changed = Arc::new(Notify::new());
                tokio::spawn(self.clone().follow(key.clone(), changed.clone()));
                Entry {
                    throttle: Throttle::new(now),
                    members: members.clone(),
                    changed,
                }
            });
            entry.members = members.clone();
            entry.changed.notify_one();
            entry.throttle.set(now, is_typing)
        };
        if let Some(on) = announce {
            self.announce(user, conversation, &members, on).await;
        }
    }

    /// Announces what falls due for `key` (held-back changes, timeouts) until it can be
    /// forgotten.
    async fn follow(self: Arc<Self>, key: (UserId, Uuid), changed: Arc<Notify>) {
        loop {
            let (wake, announce) = {
                let mut active = self.active.lock().expect("typing lock");
                let Some(entry) = active.get_mut(&key) else {
                    return;
                };
                let now = Instant::now();
                let announce = entry
                    .throttle
                    .due(now)
                    .map(|on| (on, entry.members.clone()));
                let wake = entry.throttle.wake(now);
                if wake.is_none() {
                    active.remove(&key);
                }
                (wake, announce)
            };
            if let Some((on, members)) = announce {
                self.announce(&key.0, key.1, &members, on).await;
            }
            let Some(wake) = wake else { return };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = changed.notified() => {}
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays `frames` (milliseconds after the start, isTyping) through a throttle, waking it
    /// when it asks; returns what was announced, when.
    fn play(frames: &[(u64, bool)], until_ms: u64) -> Vec<(u64, bool)> {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut t = Throttle::new(start);
        let mut told = Vec::new();
        let mut frames = frames.iter().peekable();
        let mut now_ms = 0;
        while now_ms <= until_ms {
            while let Some(&&(ms, on)) = frames.peek() {
                if ms > now_ms {
                    break;
                }
                frames.next();
                if let Some(on) = t.set(at(ms), on) {
                    told.push((ms, on));
                }
            }
            if let Some(on) = t.due(at(now_ms)) {
                told.push((now_ms, on));
            }
            now_ms += 10;
        }
        told
    }

    #[test]
    fn alternating_frames_are_told_at_most_once_a_gap() {
        // 200 frames in 2 s, true and false in turn.
        let frames: Vec<(u64, bool)> = (0..200).map(|i| (i * 10, i % 2 == 0)).collect();
        let told = play(&frames, 4_000);
        assert!(told.len() <= 4, "{told:?}");
        for pair in told.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 1_000, "{told:?}");
        }
        // The last frame said false, and that is what the others end up with.
        assert_eq!(told.last().map(|t| t.1), Some(false), "{told:?}");
    }

    #[test]
    fn typing_is_told_at_once_then_refreshed_at_most_every_three_seconds() {
        let frames: Vec<(u64, bool)> = (0..40).map(|i| (i * 200, true)).collect();
        let told = play(&frames, 8_000);
        assert_eq!(told.first(), Some(&(0, true)));
        let trues: Vec<u64> = told.iter().filter(|t| t.1).map(|t| t.0).collect();
        assert_eq!(trues, [0, 3_000, 6_000], "{told:?}");
    }

    #[test]
    fn typing_not_refreshed_ends_after_the_timeout() {
        let told = play(&[(0, true)], 6_000);
        assert_eq!(told, [(0, true), (5_000, false)]);
    }

    #[test]
    fn a_stop_right_after_a_start_is_told_when_the_gap_has_passed() {
        let told = play(&[(0, true), (100, false)], 3_000);
        assert_eq!(told, [(0, true), (1_000, false)]);
    }

    #[test]
    fn a_start_and_stop_within_the_gap_after_a_stop_tell_nothing_new() {
        let told = play(
            &[(0, true), (1_500, false), (1_600, true), (1_700, false)],
            5_000,
        );
        assert_eq!(told, [(0, true), (1_500, false)]);
    }

    #[test]
    fn nothing_shown_and_the_gap_passed_is_forgotten() {
        let start = Instant::now();
        let mut t = Throttle::new(start);
        assert_eq!(t.set(start, false), None);
        assert_eq!(t.wake(start), None);
        assert_eq!(t.set(start, true), Some(true));
        assert_eq!(t.set(start, false), None);
        assert_eq!(t.wake(start), Some(start + MIN_GAP));
        let later = start + MIN_GAP;
        assert_eq!(t.due(later), Some(false));
        assert_eq!(t.wake(later), Some(later + MIN_GAP));
        assert_eq!(t.wake(later + MIN_GAP), None);
    }
}
