//! The chaos run's books: what each client sent and when it was acknowledged, what reached each
//! recipient (live or by `sync`), and what Postgres holds. From these alone, with no I/O, it
//! decides what was lost, stored twice, left a gap, stored out of order, and how long the system
//! took to catch up after each fault.
//!
//! Times are microseconds since the run's epoch (one clock for the clients and the poller).

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A message, as its sender knows it: `(senderId, clientMsgId)`, unique by the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub sender: String,
    pub client_msg_id: String,
}

impl Key {
    pub fn new(sender: &str, client_msg_id: &str) -> Key {
        Key {
            sender: sender.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
        }
    }
}

/// A stored message (a row of `messages`) or a delivered one (`message:new`, a `sync` reply):
/// the same fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub conversation: String,
    pub seq: i64,
    pub id: String,
    pub key: Key,
}

/// What the ledger knows of one message the clients sent.
#[derive(Clone, Debug)]
struct Sent {
    conversation: String,
    recipient: String,
    /// Its place among its sender's messages: a client sends the next one only once this one is
    /// acknowledged, so the stored seqs must follow this order.
    order: u64,
    first_send: u64,
    ack: Option<u64>,
    /// When the poller first saw it in Postgres.
    stored: Option<u64>,
    /// When its recipient first had it.
    delivered: Option<u64>,
}

impl Sent {
    /// When it was both stored and delivered, if it was.
    fn done(&self) -> Option<u64> {
        Some(self.stored?.max(self.delivered?))
    }
}

#[derive(Default)]
pub struct Ledger {
    sent: HashMap<Key, Sent>,
    next_order: HashMap<String, u64>,
    /// Stored rows by (conversation, seq).
    stored: BTreeMap<(String, i64), Row>,
    /// Stored rows by key: more than one is a message stored twice.
    stored_keys: HashMap<Key, BTreeSet<(String, i64)>>,
    /// What each recipient was handed at each (conversation, seq): more than one id is a seq
    /// delivered twice with different messages.
    delivered: HashMap<(String, String, i64), BTreeSet<String>>,
    /// Deliveries of messages the ledger never saw sent (none in a sound run).
    unknown_deliveries: u64,
}

/// The run's totals and verdict.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Totals {
    pub sent: u64,
    pub acknowledged: u64,
    /// Acknowledged and in Postgres.
    pub stored: u64,
    /// Acknowledged and handed to the recipient.
    pub delivered: u64,
    /// Acknowledged, never stored.
    pub lost: u64,
    /// Acknowledged and stored, never handed to the recipient.
    pub undelivered: u64,
    /// Messages stored more than once, plus seqs a recipient was handed with two different ids.
    pub duplicated: u64,
    /// Seqs missing from a conversation's 1..=max.
    pub seq_gaps: u64,
    /// Pairs of one sender's consecutive messages stored in the opposite order.
    pub order_violations: u64,
    /// Deliveries that do not match what Postgres holds at that seq (another id), or of
    /// messages no client sent.
    pub mismatched: u64,
    /// Of the acknowledged: the last to be both stored and delivered, after the last send (None
    /// when some never were).
    pub settled_after_last_send_us: Option<u64>,
}

impl Totals {
    /// Nothing lost, stored or delivered twice, no gap, no reordering.
    pub fn sound(&self) -> bool {
        self.lost == 0
            && self.undelivered == 0
            && self.duplicated == 0
            && self.seq_gaps == 0
            && self.order_violations == 0
            && self.mismatched == 0
    }
}

impl Ledger {
    /// A send (or a resend: only the first counts) of `key` to `recipient` in `conversation`.
    pub fn send(&mut self, key: &Key, conversation: &str, recipient: &str, at: u64) {
        if self.sent.contains_key(key) {
            return;
        }
        let order = self.next_order.entry(key.sender.clone()).or_default();
        *order += 1;
        self.sent.insert(
            key.clone(),
            Sent {
                conversation: conversation.to_owned(),
                recipient: recipient.to_owned(),
                order: *order,
                first_send: at,
                ack: None,
                stored: None,
                delivered: None,
            },
        );
    }

    /// The gateway acknowledged `key` (`status: "accepted"`). The first ack counts.
    pub fn ack(&mut self, key: &Key, at: u64) {
        if let Some(s) = self.sent.get_mut(key) {
            s.ack.get_or_insert(at);
        }
    }

    /// `recipient` was handed `row` (live or by sync). The sender's own echo is not a delivery.
    pub fn deliver(&mut self, recipient: &str, row: &Row, at: u64) {
        self.delivered
            .entry((recipient.to_owned(), row.conversation.clone(), row.seq))
            .or_default()
            .insert(row.id.clone());
        match self.sent.get_mut(&row.key) {
            Some(s) if s.recipient == recipient => {
                s.delivered.get_or_insert(at);
            }
            Some(_) => {}
            None => self.unknown_deliveries += 1,
        }
    }

    /// The poller saw `row` in Postgres (again, perhaps: the first sighting counts).
    pub fn store(&mut self, row: &Row, at: u64) {
        let place = (row.conversation.clone(), row.seq);
        if self.stored.contains_key(&place) {
            return;
        }
        self.stored.insert(place.clone(), row.clone());
        self.stored_keys
            .entry(row.key.clone())
            .or_default()
            .insert(place);
        if let Some(s) = self.sent.get_mut(&row.key) {
            s.stored.get_or_insert(at);
        }
    }

    /// The highest seq of each conversation below which every seq is stored: the poller asks
    /// only for what lies above.
    pub fn stored_watermarks(&self, conversations: &[String]) -> Vec<i64> {
        conversations
            .iter()
            .map(|c| {
                let mut seq = 0;
                while self.stored.contains_key(&(c.clone(), seq + 1)) {
                    seq += 1;
                }
                seq
            })
            .collect()
    }

    /// Messages acknowledged at or before `at` that are not yet both stored and delivered.
    pub fn outstanding(&self, at: u64) -> usize {
        self.sent
            .values()
            .filter(|s| s.ack.is_some_and(|a| a <= at) && s.done().is_none())
            .count()
    }

    /// Sent, not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.sent.values().filter(|s| s.ack.is_none()).count()
    }

    /// How long after `healed` every message acknowledged by then was both stored and
    /// delivered; zero when all were before it, None when some never were.
    pub fn recovery(&self, healed: u64) -> Option<u64> {
        let mut last = healed;
        for s in self
            .sent
            .values()
            .filter(|s| s.ack.is_some_and(|a| a <= healed))
        {
            last = last.max(s.done()?);
        }
        Some(last - healed)
    }

    /// The longest send → ack among messages whose wait overlapped `[from, to]` (first sent by
    /// `to`, acknowledged at or after `from`, or never); a message still waiting counts up to
    /// `now`.
    pub fn max_ack_latency(&self, from: u64, to: u64, now: u64) -> u64 {
        self.sent
            .values()
            .filter(|s| s.first_send <= to && s.ack.is_none_or(|a| a >= from))
            .map(|s| s.ack.unwrap_or(now).saturating_sub(s.first_send))
            .max()
            .unwrap_or(0)
    }

    /// The longest ack → stored-and-delivered among messages acknowledged in `[from, to]`; a
    /// message not yet done counts up to `now`.
    pub fn max_settle_latency(&self, from: u64, to: u64, now: u64) -> u64 {
        self.sent
            .values()
            .filter_map(|s| Some((s.ack.filter(|a| (from..=to).contains(a))?, s.done())))
            .map(|(ack, done)| done.unwrap_or(now).saturating_sub(ack))
            .max()
            .unwrap_or(0)
    }

    /// The totals, with `last_send` the moment the load stopped.
    pub fn totals(&self, last_send: u64) -> Totals {
        let mut t = Totals {
            sent: self.sent.len() as u64,
            mismatched: self.unknown_deliveries,
            ..Totals::default()
        };
        let mut settled = Some(last_send);
        for s in self.sent.values().filter(|s| s.ack.is_some()) {
            t.acknowledged += 1;
            match (s.stored, s.delivered) {
                (None, _) => t.lost += 1,
                (Some(_), None) => t.undelivered += 1,
                (Some(_), Some(_)) => {}
            }
            t.stored += u64::from(s.stored.is_some());
            t.delivered += u64::from(s.delivered.is_some());
            settled = match (settled, s.done()) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        t.settled_after_last_send_us = settled.map(|at| at - last_send);

        t.duplicated = self
            .stored_keys
            .values()
            .map(|places| places.len() as u64 - 1)
            .sum::<u64>()
            + self
                .delivered
                .values()
                .map(|ids| ids.len() as u64 - 1)
                .sum::<u64>();
        for ((_, conversation, seq), ids) in &self.delivered {
            match self.stored.get(&(conversation.clone(), *seq)) {
                Some(row) if ids.contains(&row.id) => {}
                // Not stored (or stored with another id): what the recipient was handed is not
                // what Postgres holds.
                _ => t.mismatched += 1,
            }
        }

        // Gaps: each conversation's stored seqs against 1..=max.
        let mut by_conversation: BTreeMap<&str, (i64, u64)> = BTreeMap::new();
        for (conversation, seq) in self.stored.keys() {
            let e = by_conversation.entry(conversation).or_default();
            e.0 = e.0.max(*seq);
            e.1 += 1;
        }
        t.seq_gaps = by_conversation
            .values()
            .map(|(max, count)| *max as u64 - count)
            .sum();

        // Order: each sender's stored messages, in the order they were sent, must have rising
        // seqs (each sender writes to one conversation per message; compare within one).
        let mut by_sender: BTreeMap<(&str, &str), Vec<(u64, i64)>> = BTreeMap::new();
        for (key, places) in &self.stored_keys {
            let (Some(s), Some((conversation, seq))) = (self.sent.get(key), places.first()) else {
                continue;
            };
            debug_assert_eq!(&s.conversation, conversation);
            by_sender
                .entry((&key.sender, conversation))
                .or_default()
                .push((s.order, *seq));
        }
        for stored in by_sender.values_mut() {
            stored.sort_unstable();
            t.order_violations += stored.windows(2).filter(|w| w[1].1 < w[0].1).count() as u64;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        Key::new("alice", &format!("m{n}"))
    }

    fn row(n: u32, seq: i64) -> Row {
        Row {
            conversation: "c".into(),
            seq,
            id: format!("id{n}"),
            key: key(n),
        }
    }

    /// Alice sends `n` messages to bob, each acked 10 µs after it was sent at `10 * n`.
    fn sent(n: u32) -> Ledger {
        let mut l = Ledger::default();
        for i in 1..=n {
            l.send(&key(i), "c", "bob", u64::from(i) * 100);
            l.ack(&key(i), u64::from(i) * 100 + 10);
        }
        l
    }

    #[test]
    fn messages_stored_and_delivered_once_in_order_are_sound() {
        let mut l = sent(3);
        for i in 1..=3 {
            l.store(&row(i, i64::from(i)), 1_000);
            l.deliver("bob", &row(i, i64::from(i)), 1_500);
        }
        let t = l.totals(300);
        assert!(t.sound(), "{t:?}");
        assert_eq!((t.acknowledged, t.stored, t.delivered), (3, 3, 3));
        assert_eq!(t.settled_after_last_send_us, Some(1_200));
    }

    #[test]
    fn an_acknowledged_message_never_stored_is_lost_and_never_settles() {
        let mut l = sent(2);
        l.store(&row(1, 1), 500);
        l.deliver("bob", &row(1, 1), 500);
        let t = l.totals(200);
        assert_eq!((t.lost, t.undelivered), (1, 0));
        assert_eq!(t.settled_after_last_send_us, None);
        assert!(!t.sound());
    }

    #[test]
    fn an_unacknowledged_message_is_not_owed() {
        let mut l = sent(1);
        l.send(&key(2), "c", "bob", 150);
        l.store(&row(1, 1), 500);
        l.deliver("bob", &row(1, 1), 500);
        let t = l.totals(200);
        assert!(t.sound(), "{t:?}");
        assert_eq!((t.sent, t.acknowledged), (2, 1));
        assert_eq!(l.unacknowledged(), 1);
    }

    #[test]
    fn stored_but_never_handed_to_the_recipient_is_undelivered() {
        let mut l = sent(1);
        l.store(&row(1, 1), 500);
        // The sender's own echo is not the recipient's delivery.
        l.deliver("alice", &row(1, 1), 500);
        let t = l.totals(100);
        assert_eq!((t.lost, t.undelivered, t.delivered), (0, 1, 0));
    }

    #[test]
    fn a_seq_handed_over_twice_with_different_ids_is_a_duplicate() {
        let mut l = sent(2);
        l.store(&row(1, 1), 500);
        l.store(&row(2, 2), 500);
        l.deliver("bob", &row(1, 1), 600);
        l.deliver("bob", &row(1, 1), 650); // the same again (live, then by sync): fine
        l.deliver("bob", &row(2, 2), 600);
        assert!(l.totals(200).sound());
        let mut other = row(2, 1);
        other.id = "id-other".into();
        l.deliver("bob", &other, 700);
        let t = l.totals(200);
        assert_eq!(t.duplicated, 1);
        assert_eq!(
            t.mismatched, 0,
            "seq 1's stored id was among those handed over"
        );
    }

    #[test]
    fn a_client_msg_id_stored_at_two_seqs_is_a_duplicate() {
        let mut l = sent(1);
        l.store(&row(1, 1), 500);
        l.store(&row(1, 2), 600);
        l.deliver("bob", &row(1, 1), 600);
        assert_eq!(l.totals(100).duplicated, 1);
    }

    #[test]
    fn missing_seqs_are_gaps_and_the_watermark_stops_below_them() {
        let mut l = sent(3);
        l.store(&row(1, 1), 500);
        l.store(&row(3, 4), 500);
        assert_eq!(l.totals(300).seq_gaps, 2);
        assert_eq!(l.stored_watermarks(&["c".into(), "d".into()]), vec![1, 0]);
        l.store(&row(2, 2), 600);
        assert_eq!(l.stored_watermarks(&["c".into()]), vec![2]);
    }

    #[test]
    fn a_later_message_stored_before_an_earlier_one_is_an_order_violation() {
        let mut l = sent(3);
        l.store(&row(1, 1), 500);
        l.store(&row(3, 2), 500);
        l.store(&row(2, 3), 500);
        assert_eq!(l.totals(300).order_violations, 1);
    }

    #[test]
    fn recovery_runs_from_the_heal_until_everything_acknowledged_by_then_is_done() {
        let mut l = sent(3); // acks at 110, 210, 310
        l.store(&row(1, 1), 150);
        l.deliver("bob", &row(1, 1), 160);
        l.store(&row(2, 2), 900);
        // Healed at 250: messages 1 and 2 are owed; 2 is not delivered yet.
        assert_eq!(l.outstanding(250), 1);
        assert_eq!(l.recovery(250), None);
        l.deliver("bob", &row(2, 2), 1_250);
        assert_eq!(l.outstanding(250), 0);
        assert_eq!(l.recovery(250), Some(1_000));
        // Message 3, acknowledged after the heal, is not owed at 250.
        assert_eq!(l.outstanding(310), 1);
        assert_eq!(l.recovery(120), Some(40));
        // Everything owed was done before the heal: zero.
        assert_eq!(l.recovery(200), Some(0));
    }

    #[test]
    fn ack_latency_covers_messages_waiting_across_the_window() {
        let mut l = Ledger::default();
        l.send(&key(1), "c", "bob", 100);
        l.ack(&key(1), 110); // before the window
        l.send(&key(2), "c", "bob", 200);
        l.ack(&key(2), 2_200); // waited across it
        l.send(&key(3), "c", "bob", 2_300); // after it
        l.ack(&key(3), 2_310);
        l.send(&key(4), "c", "bob", 900); // never acknowledged
        assert_eq!(l.max_ack_latency(1_000, 2_000, 2_500), 2_000);
        assert_eq!(l.max_ack_latency(1_000, 2_000, 5_000), 4_100);
        assert_eq!(l.max_ack_latency(5_000, 6_000, 6_000), 5_100);
        assert_eq!(l.max_ack_latency(50, 150, 6_000), 10);
    }

    #[test]
    fn settle_latency_is_ack_to_stored_and_delivered() {
        let mut l = sent(2); // acks at 110, 210
        l.store(&row(1, 1), 400);
        l.deliver("bob", &row(1, 1), 500);
        assert_eq!(l.max_settle_latency(0, 150, 1_000), 390);
        assert_eq!(
            l.max_settle_latency(0, 300, 1_000),
            790,
            "message 2 still waits"
        );
    }

    #[test]
    fn a_resend_keeps_the_first_send_time_and_order() {
        let mut l = Ledger::default();
        l.send(&key(1), "c", "bob", 100);
        l.send(&key(1), "c", "bob", 500);
        l.ack(&key(1), 600);
        l.ack(&key(1), 700);
        assert_eq!(l.max_ack_latency(0, 1_000, 1_000), 500);
        assert_eq!(l.totals(0).sent, 1);
    }
}
