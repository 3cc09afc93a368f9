//! Every NATS subject, stream and consumer name Parley uses (DESIGN §3), derived from one prefix.
//!
//! Tests give each run its own prefix, so many runs share one NATS server without seeing each
//! other's messages, streams or consumers.

use uuid::Uuid;

/// The names under one prefix. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    /// The prefix as it appears in stream and consumer names: upper case, `-` folded to `_`.
    upper: String,
}

impl Subjects {
    /// Accepts `^[A-Za-z0-9_-]{1,32}$`: one subject token, also valid in a stream name.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 32
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(format!(
                "{prefix:?} must be 1 to 32 characters of A-Z, a-z, 0-9, '_' or '-'"
            ));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            upper: prefix.to_ascii_uppercase().replace('-', "_"),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix as this prefix's stream, consumer and bucket names carry it: `PARLEY` for the
    /// default (`PARLEY_IN`, `KV_PARLEY_PRESENCE`).
    pub fn name_stem(&self) -> &str {
        &self.upper
    }

    /// `{p}.in.msg.<conversation>`: a send command, into `PARLEY_IN`.
    pub fn in_msg(&self, conversation: Uuid) -> String {
        format!("{}.in.msg.{conversation}", self.prefix)
    }

    /// `{p}.in.read.<conversation>`: a read receipt, into `PARLEY_IN`, ordered with the sends.
    pub fn in_read(&self, conversation: Uuid) -> String {
        format!("{}.in.read.{conversation}", self.prefix)
    }

    /// `{p}.in.*.*`: what `PARLEY_IN` takes (`{p}.in.<kind>.<conversation>`).
    pub fn in_all(&self) -> String {
        format!("{}.in.*.*", self.prefix)
    }

    /// The stream's subject transform: `{p}.in.<kind>.<conversation>` is stored as
    /// `{p}.part.<n>.<kind>.<conversation>`, `n` the server's hash of the conversation id
    /// modulo `partitions`. Every command of one conversation lands in one partition, in order.
    pub fn partition_transform(&self, partitions: u16) -> (String, String) {
        (
            self.in_all(),
            format!(
                "{}.part.{{{{partition({partitions},2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
                self.prefix
            ),
        )
    }

    /// `{p}.part.<n>.>`: the commands of partition `n`, as stored.
    pub fn partition_filter(&self, partition: u16) -> String {
        format!("{}.part.{partition}.>", self.prefix)
    }

    /// The durable consumer of partition `n`, pinned to one persistence replica at a time.
    pub fn consumer_partition(&self, partition: u16) -> String {
        format!("{}_PERSIST_{partition}", self.upper)
    }

    /// `{p}.ctl.persist.replicas`: persistence replicas' heartbeats, from which each works out
    /// which partitions are its own.
    pub fn ctl_persist_replicas(&self) -> String {
        format!("{}.ctl.persist.replicas", self.prefix)
    }

    /// Reads a command's subject as the stream stores it (`{p}.part.<n>.<kind>.<conversation>`).
    pub fn parse_command(&self, subject: &str) -> Result<CommandSubject, SubjectError> {
        let unsupported = || SubjectError(format!("unsupported command subject {subject}"));
        let rest = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(".part."))
            .ok_or_else(unsupported)?;
        let mut tokens = rest.split('.');
        let (Some(partition), Some(kind), Some(conversation), None) =
            (tokens.next(), tokens.next(), tokens.next(), tokens.next())
        else {
            return Err(unsupported());
        };
        let partition = partition.parse().map_err(|_| unsupported())?;
        let kind = match kind {
            "msg" => CommandKind::Send,
            "read" => CommandKind::Read,
            _ => return Err(unsupported()),
        };
        let conversation = Uuid::parse_str(conversation)
            .map_err(|_| SubjectError(format!("{subject}: not a conversation id")))?;
        Ok(CommandSubject {
            partition,
            kind,
            conversation,
        })
    }

    /// `{p}.out.user.<user>`: delivery events for one user, core NATS.
    pub fn out_user(&self, user: &str) -> String {
        format!("{}.out.user.{user}", self.prefix)
    }

    /// `{p}.rpc.chat`: the group of the persistence service's endpoints.
    pub fn rpc_chat_group(&self) -> String {
        format!("{}.rpc.chat", self.prefix)
    }

    /// `{p}.rpc.chat.<op>`.
    pub fn rpc_chat(&self, op: ChatOp) -> String {
        format!("{}.rpc.chat.{}", self.prefix, op.as_str())
    }

    /// `{p}.rpc.auth`: the group of the auth service's endpoints.
    pub fn rpc_auth_group(&self) -> String {
        format!("{}.rpc.auth", self.prefix)
    }

    /// `{p}.rpc.auth.<op>`.
    pub fn rpc_auth(&self, op: &str) -> String {
        format!("{}.rpc.auth.{op}", self.prefix)
    }

    /// `{p}.ctl.user.<user>`: control events about a user for every gateway (a session ended).
    pub fn ctl_user(&self, user: &str) -> String {
        format!("{}.ctl.user.{user}", self.prefix)
    }

    /// `{p}.ctl.user.*`: what a gateway subscribes to.
    pub fn ctl_user_all(&self) -> String {
        format!("{}.ctl.user.*", self.prefix)
    }

    /// `{p}.ctl.conversation.<conversation>`: a conversation's members changed; gateways drop
    /// what they cached of it.
    pub fn ctl_conversation(&self, conversation: Uuid) -> String {
        format!("{}.ctl.conversation.{conversation}", self.prefix)
    }

    /// The conversation of a `{p}.ctl.conversation.<conversation>` subject.
    pub fn parse_ctl_conversation(&self, subject: &str) -> Result<Uuid, SubjectError> {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix(".ctl.conversation."))
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(|| SubjectError(format!("not a conversation control subject: {subject}")))
    }

    /// `{p}.ctl.conversation.*`: what a gateway subscribes to.
    pub fn ctl_conversation_all(&self) -> String {
        format!("{}.ctl.conversation.*", self.prefix)
    }

    /// The presence key-value bucket (`KV_PARLEY_PRESENCE` is its stream).
    pub fn presence_bucket(&self) -> String {
        format!("{}_PRESENCE", self.upper)
    }

    /// `KV_{P}_PRESENCE`: the stream behind the presence bucket.
    pub fn presence_stream(&self) -> String {
        format!("KV_{}", self.presence_bucket())
    }

    /// `$KV.{P}_PRESENCE.>`: every key of the presence bucket, as the stream stores it.
    pub fn presence_keys(&self) -> String {
        format!("$KV.{}.>", self.presence_bucket())
    }

    /// `{p}.out.user.*`: every user's delivery subject.
    pub fn out_user_all(&self) -> String {
        format!("{}.out.user.*", self.prefix)
    }

    /// `{p}.rpc.chat.*`: every operation of the persistence service.
    pub fn rpc_chat_all(&self) -> String {
        format!("{}.rpc.chat.*", self.prefix)
    }

    /// `{p}.rpc.auth.*`: every operation of the auth service.
    pub fn rpc_auth_all(&self) -> String {
        format!("{}.rpc.auth.*", self.prefix)
    }

    /// `_INBOX.{p}.<role>`: where the replies to one role's requests (core and JetStream) come
    /// back, so the broker can keep each role's replies from the others (docs/operations.md).
    pub fn inbox_prefix(&self, role: &str) -> String {
        format!("_INBOX.{}.{role}", self.prefix)
    }

    /// `{p}.dlq`: commands that can never succeed.
    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.prefix)
    }

    /// `PARLEY_IN` for the default prefix.
    pub fn stream_in(&self) -> String {
        format!("{}_IN", self.upper)
    }

    /// `PARLEY_DLQ` for the default prefix.
    pub fn stream_dlq(&self) -> String {
        format!("{}_DLQ", self.upper)
    }

    /// The single durable consumer of `PARLEY_IN` before partitions; also the stem of each
    /// partition's consumer name ([`Subjects::consumer_partition`]).
    pub fn consumer_persist(&self) -> String {
        format!("{}_PERSIST", self.upper)
    }
}

/// A subject that names no command Parley knows, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SubjectError(pub String);

/// What a command's subject says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSubject {
    pub partition: u16,
    pub kind: CommandKind,
    pub conversation: Uuid,
}

/// The kinds of command `PARLEY_IN` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Send,
    Read,
}

/// The operations of the `parley-persistence` request/reply service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatOp {
    Open,
    History,
    Sync,
    Members,
    List,
    Edit,
    Delete,
    MemberAdd,
    MemberRemove,
    /// The users who share a conversation with a user: who hears of their presence.
    Contacts,
}

impl ChatOp {
    pub const ALL: [ChatOp; 10] = [
        ChatOp::Open,
        ChatOp::History,
        ChatOp::Sync,
        ChatOp::Members,
        ChatOp::List,
        ChatOp::Edit,
        ChatOp::Delete,
        ChatOp::MemberAdd,
        ChatOp::MemberRemove,
        ChatOp::Contacts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChatOp::Open => "open",
            ChatOp::History => "history",
            ChatOp::Sync => "sync",
            ChatOp::Members => "members",
            ChatOp::List => "list",
            ChatOp::Edit => "edit",
            ChatOp::Delete => "delete",
            ChatOp::MemberAdd => "member_add",
            ChatOp::MemberRemove => "member_remove",
            ChatOp::Contacts => "contacts",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_gives_the_designed_names() {
        let s = Subjects::new("parley").unwrap();
        let c = Uuid::nil();
        assert_eq!(s.in_msg(c), format!("parley.in.msg.{c}"));
        assert_eq!(s.out_user("alice"), "parley.out.user.alice");
        assert_eq!(s.rpc_chat(ChatOp::History), "parley.rpc.chat.history");
        assert_eq!(s.stream_in(), "PARLEY_IN");
        assert_eq!(s.stream_dlq(), "PARLEY_DLQ");
        assert_eq!(s.dlq(), "parley.dlq");
    }

    #[test]
    fn a_test_prefix_is_folded_into_stream_names() {
        let s = Subjects::new("t-1a_b").unwrap();
        assert_eq!(s.stream_in(), "T_1A_B_IN");
        assert_eq!(s.consumer_persist(), "T_1A_B_PERSIST");
    }

    #[test]
    fn partitions_are_named_from_the_prefix() {
        let s = Subjects::new("parley").unwrap();
        assert_eq!(
            s.partition_transform(16),
            (
                "parley.in.*.*".to_owned(),
                "parley.part.{{partition(16,2)}}.{{wildcard(1)}}.{{wildcard(2)}}".to_owned()
            )
        );
        assert_eq!(s.partition_filter(3), "parley.part.3.>");
        assert_eq!(s.consumer_partition(15), "PARLEY_PERSIST_15");
    }

    #[test]
    fn stored_command_subjects_are_read_back() {
        let s = Subjects::new("t-1").unwrap();
        let c = Uuid::now_v7();
        assert_eq!(
            s.parse_command(&format!("t-1.part.7.msg.{c}")),
            Ok(CommandSubject {
                partition: 7,
                kind: CommandKind::Send,
                conversation: c
            })
        );
        assert_eq!(
            s.parse_command(&format!("t-1.part.0.read.{c}"))
                .unwrap()
                .kind,
            CommandKind::Read
        );
        for bad in [
            format!("t-1.in.msg.{c}"),
            format!("t-2.part.0.msg.{c}"),
            format!("t-1.part.x.msg.{c}"),
            format!("t-1.part.0.edit.{c}"),
            format!("t-1.part.0.msg.{c}.extra"),
            "t-1.part.0.msg.not-a-uuid".to_owned(),
            "t-1.part.0.msg".to_owned(),
            String::new(),
        ] {
            let refused = s.parse_command(&bad).unwrap_err();
            assert!(refused.0.contains(&bad), "{bad:?}: {refused}");
        }
    }

    #[test]
    fn prefixes_that_would_break_a_subject_are_refused() {
        for bad in ["", "a.b", "a b", "a>", "*", &"x".repeat(33)] {
            assert!(Subjects::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_conversation_control_subject_names_its_conversation_and_nothing_else_passes() {
        let subjects = Subjects::new("parley").unwrap();
        let id = Uuid::now_v7();
        let subject = subjects.ctl_conversation(id);
        assert_eq!(subjects.parse_ctl_conversation(&subject).unwrap(), id);
        for bad in [
            "parley.ctl.conversation.not-a-uuid",
            "other.ctl.conversation.0198c3a4-2b7e-7000-8000-000000000000",
            "parley.ctl.user.0198c3a4-2b7e-7000-8000-000000000000",
            "parley.ctl.conversation.",
        ] {
            assert!(subjects.parse_ctl_conversation(bad).is_err(), "{bad}");
        }
    }
}
