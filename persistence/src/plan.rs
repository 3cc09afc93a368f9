//! What a batch of commands does to the conversations it touches, decided without I/O.
//!
//! The consumer reads the state (the locked conversations, the sends already stored), asks
//! [`plan`] what to write, writes it, and announces the outcomes. Everything that decides lives
//! here: which send is a duplicate, which sender may not write, which seq each new message
//! takes, what a read receipt may move.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use parley_common::wire::{Message, ReadCommand, SendCommand};
use uuid::Uuid;

/// What `PARLEY_IN` carries.
#[derive(Debug, Clone)]
pub enum Command {
    Send(SendCommand),
    Read(ReadCommand),
}

impl Command {
    pub fn conversation_id(&self) -> Uuid {
        match self {
            Command::Send(c) => c.conversation_id,
            Command::Read(c) => c.conversation_id,
        }
    }
}

/// A conversation as locked for the batch.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub participant_ids: Vec<String>,
    pub last_seq: i64,
    pub direct: bool,
}

impl Conversation {
    fn has(&self, user: &str) -> bool {
        self.participant_ids.iter().any(|u| u == user)
    }
}

/// What one command comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// A new message (also in [`Plan::inserts`]) or one stored before (a client's retry, a
    /// redelivery): announce it to these users.
    Announce {
        message: Message,
        participants: Vec<String>,
    },
    /// Move `read.user_id`'s position to `read.seq` (already capped at the conversation's last
    /// seq) and, if that moves it, tell these users.
    Read {
        read: ReadCommand,
        direct: bool,
        participants: Vec<String>,
    },
    /// Nothing to do or say: a receipt from a non-member (stale: the gateway checked before it
    /// published, so saying so would only tell a former member about the conversation) or
    /// about a conversation that does not exist.
    Quiet,
    /// The sender is not a member, or there is no such conversation.
    Forbidden,
}

/// The batch's writes, and one [`Planned`] per command in its order.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub outcomes: Vec<Planned>,
    /// New messages, in seq order within each conversation.
    pub inserts: Vec<Message>,
    /// Each conversation's new last seq.
    pub advanced: Vec<(Uuid, i64)>,
    /// When the gateway accepted each insert, in the same order.
    pub accepted: Vec<DateTime<Utc>>,
}

/// Plans `commands` in order against `conversations` (those that exist, by id) and `stored`
/// (messages already stored under the sends' `(sender, clientMsgId)`). `now` stamps new
/// messages; `new_id` names them.
pub fn plan<'a>(
    commands: impl IntoIterator<Item = &'a Command>,
    mut conversations: HashMap<Uuid, Conversation>,
    stored: Vec<Message>,
    now: DateTime<Utc>,
    mut new_id: impl FnMut() -> Uuid,
) -> Plan {
    let mut known: HashMap<(String, String), Message> = stored
        .into_iter()
        .map(|m| ((m.sender_id.clone(), m.client_msg_id.clone()), m))
        .collect();
    let mut plan = Plan::default();
    let mut advanced: Vec<Uuid> = Vec::new();
    for command in commands {
        let planned = match command {
            Command::Read(read) => match conversations.get(&read.conversation_id) {
                Some(c) if c.has(read.user_id.as_str()) => Planned::Read {
                    read: ReadCommand {
                        seq: read.seq.min(c.last_seq),
                        ..read.clone()
                    },
                    direct: c.direct,
                    participants: c.participant_ids.clone(),
                },
                _ => Planned::Quiet,
            },
            Command::Send(send) => {
                let key = (
                    send.sender_id.as_str().to_owned(),
                    send.client_msg_id.as_str().to_owned(),
                );
                if let Some(existing) = known.get(&key) {
                    // Stored before: re-announce the original. A clientMsgId reused in another
                    // conversation names the original too, and goes to its sender only.
                    let participants = conversations
                        .get(&existing.conversation_id)
                        .map(|c| c.participant_ids.clone())
                        .unwrap_or_else(|| vec![key.0.clone()]);
                    Planned::Announce {
                        message: existing.clone(),
                        participants,
                    }
                } else {
                    match conversations.get_mut(&send.conversation_id) {
                        Some(c) if c.has(&key.0) => {
                            c.last_seq += 1;
                            let message = Message {
                                id: new_id(),
                                conversation_id: send.conversation_id,
                                seq: c.last_seq,
                                sender_id: key.0.clone(),
                                client_msg_id: key.1.clone(),
                                content: send.content.clone(),
                                read_at: None,
                                created_at: now,
                                edited_at: None,
                                deleted_at: None,
                            };
                            if !advanced.contains(&send.conversation_id) {
                                advanced.push(send.conversation_id);
                            }
                            known.insert(key, message.clone());
                            plan.inserts.push(message.clone());
                            plan.accepted.push(send.accepted_at);
                            Planned::Announce {
                                message,
                                participants: c.participant_ids.clone(),
                            }
                        }
                        _ => Planned::Forbidden,
                    }
                }
            }
        };
        plan.outcomes.push(planned);
    }
    plan.advanced = advanced
        .into_iter()
        .map(|id| (id, conversations[&id].last_seq))
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_common::domain::{ClientMsgId, UserId};

    fn conv(members: &[&str], last_seq: i64) -> Conversation {
        Conversation {
            participant_ids: members.iter().map(|s| (*s).to_owned()).collect(),
            last_seq,
            direct: members.len() == 2,
        }
    }

    fn send(conversation: Uuid, sender: &str, client_id: &str) -> Command {
        Command::Send(SendCommand {
            conversation_id: conversation,
            sender_id: UserId::parse(sender).unwrap(),
            client_msg_id: ClientMsgId::parse(client_id).unwrap(),
            content: format!("{sender} {client_id}"),
            accepted_at: DateTime::from_timestamp_micros(1).unwrap(),
        })
    }

    fn read(conversation: Uuid, user: &str, seq: i64) -> Command {
        Command::Read(ReadCommand {
            conversation_id: conversation,
            user_id: UserId::parse(user).unwrap(),
            seq,
            at: DateTime::from_timestamp_micros(2).unwrap(),
        })
    }

    fn run(
        commands: &[Command],
        conversations: &[(Uuid, Conversation)],
        stored: Vec<Message>,
    ) -> Plan {
        let mut n = 0u128;
        plan(
            commands,
            conversations.iter().cloned().collect(),
            stored,
            DateTime::from_timestamp_micros(10).unwrap(),
            || {
                n += 1;
                Uuid::from_u128(n)
            },
        )
    }

    fn seqs(plan: &Plan) -> Vec<(Uuid, i64, String)> {
        plan.inserts
            .iter()
            .map(|m| (m.conversation_id, m.seq, m.client_msg_id.clone()))
            .collect()
    }

    #[test]
    fn new_messages_take_the_next_seqs_of_their_conversation_in_order() {
        let (a, b) = (Uuid::from_u128(100), Uuid::from_u128(200));
        let plan = run(
            &[
                send(a, "ann", "1"),
                send(b, "bob", "1"),
                send(a, "bob", "2"),
                send(a, "ann", "3"),
            ],
            &[(a, conv(&["ann", "bob"], 7)), (b, conv(&["bob", "cy"], 0))],
            vec![],
        );
        assert_eq!(
            seqs(&plan),
            [
                (a, 8, "1".into()),
                (b, 1, "1".into()),
                (a, 9, "2".into()),
                (a, 10, "3".into())
            ]
        );
        assert_eq!(plan.advanced, [(a, 10), (b, 1)]);
        assert_eq!(plan.accepted.len(), 4);
        let Planned::Announce { participants, .. } = &plan.outcomes[1] else {
            panic!("{:?}", plan.outcomes[1])
        };
        assert_eq!(participants, &["bob", "cy"]);
    }

    #[test]
    fn a_send_stored_before_is_announced_again_and_takes_no_seq() {
        let a = Uuid::from_u128(100);
        let first = run(
            &[send(a, "ann", "x")],
            &[(a, conv(&["ann", "bob"], 0))],
            vec![],
        );
        let original = first.inserts[0].clone();
        let again = run(
            &[send(a, "ann", "x"), send(a, "ann", "y")],
            &[(a, conv(&["ann", "bob"], 1))],
            vec![original.clone()],
        );
        assert_eq!(
            again.outcomes[0],
            Planned::Announce {
                message: original,
                participants: vec!["ann".into(), "bob".into()]
            }
        );
        assert_eq!(seqs(&again), [(a, 2, "y".into())]);
    }

    #[test]
    fn a_retry_inside_one_batch_is_stored_once() {
        let a = Uuid::from_u128(100);
        let plan = run(
            &[send(a, "ann", "x"), send(a, "ann", "x")],
            &[(a, conv(&["ann", "bob"], 0))],
            vec![],
        );
        assert_eq!(seqs(&plan), [(a, 1, "x".into())]);
        assert_eq!(plan.outcomes[0], plan.outcomes[1]);
    }

    #[test]
    fn a_client_id_reused_in_another_conversation_names_the_original_to_its_sender() {
        let (a, b) = (Uuid::from_u128(100), Uuid::from_u128(200));
        let original = run(
            &[send(a, "ann", "x")],
            &[(a, conv(&["ann", "bob"], 0))],
            vec![],
        )
        .inserts[0]
            .clone();
        // Conversation `a` is not in this batch, so its members are unknown here.
        let plan = run(
            &[send(b, "ann", "x")],
            &[(b, conv(&["ann", "cy"], 0))],
            vec![original.clone()],
        );
        assert!(plan.inserts.is_empty());
        assert_eq!(
            plan.outcomes[0],
            Planned::Announce {
                message: original,
                participants: vec!["ann".into()]
            }
        );
    }

    #[test]
    fn non_members_and_unknown_conversations_are_refused_without_a_seq() {
        let (a, missing) = (Uuid::from_u128(100), Uuid::from_u128(999));
        let plan = run(
            &[
                send(a, "eve", "1"),
                send(missing, "ann", "2"),
                send(a, "ann", "3"),
            ],
            &[(a, conv(&["ann", "bob"], 4))],
            vec![],
        );
        assert_eq!(plan.outcomes[0], Planned::Forbidden);
        assert_eq!(plan.outcomes[1], Planned::Forbidden);
        assert_eq!(seqs(&plan), [(a, 5, "3".into())]);
        assert_eq!(plan.advanced, [(a, 5)]);
    }

    #[test]
    fn a_read_is_capped_at_the_last_seq_where_it_stands_in_the_batch() {
        let a = Uuid::from_u128(100);
        let plan = run(
            &[
                read(a, "bob", 50),
                send(a, "ann", "1"),
                read(a, "bob", 50),
                read(a, "eve", 1),
            ],
            &[(a, conv(&["ann", "bob"], 3))],
            vec![],
        );
        let capped = |i: usize| match &plan.outcomes[i] {
            Planned::Read { read, direct, .. } => (read.seq, *direct),
            other => panic!("{other:?}"),
        };
        assert_eq!(capped(0), (3, true));
        assert_eq!(capped(2), (4, true));
        assert_eq!(plan.outcomes[3], Planned::Quiet);
        assert_eq!(
            run(&[read(Uuid::from_u128(5), "bob", 1)], &[], vec![]).outcomes,
            [Planned::Quiet]
        );
    }

    #[test]
    fn an_empty_batch_plans_nothing() {
        assert_eq!(run(&[], &[], vec![]), Plan::default());
    }
}
