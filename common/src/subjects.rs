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

    /// `{p}.in.msg.<conversation>`: a send command, into `PARLEY_IN`.
    pub fn in_msg(&self, conversation: Uuid) -> String {
        format!("{}.in.msg.{conversation}", self.prefix)
    }

    /// `{p}.in.read.<conversation>`: a read receipt, into `PARLEY_IN`, ordered with the sends.
    pub fn in_read(&self, conversation: Uuid) -> String {
        format!("{}.in.read.{conversation}", self.prefix)
    }

    /// `{p}.in.>`: everything `PARLEY_IN` stores.
    pub fn in_all(&self) -> String {
        format!("{}.in.>", self.prefix)
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

    /// `{p}.ctl.conversation.*`: what a gateway subscribes to.
    pub fn ctl_conversation_all(&self) -> String {
        format!("{}.ctl.conversation.*", self.prefix)
    }

    /// The presence key-value bucket (`KV_PARLEY_PRESENCE` is its stream).
    pub fn presence_bucket(&self) -> String {
        format!("{}_PRESENCE", self.upper)
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

    /// The durable pull consumer that persistence replicas share.
    pub fn consumer_persist(&self) -> String {
        format!("{}_PERSIST", self.upper)
    }
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
    fn prefixes_that_would_break_a_subject_are_refused() {
        for bad in ["", "a.b", "a b", "a>", "*", &"x".repeat(33)] {
            assert!(Subjects::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
