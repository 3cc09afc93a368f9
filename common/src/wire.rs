//! The JSON that crosses a process boundary: what clients see (DESIGN §4, §6) and the commands
//! the gateway hands persistence through JetStream (DESIGN §3).
//!
//! JSON is camelCase with the seed's field names; timestamps are RFC 3339 UTC strings.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{ClientMsgId, UserId};

/// Headers on a `message:new` delivery event, for the delivering gateway's latency figures.
pub mod headers {
    /// When the gateway accepted the send: Unix microseconds.
    pub const ACCEPTED_AT: &str = "Parley-Accepted-At";
    /// When persistence committed it: Unix microseconds.
    pub const STORED_AT: &str = "Parley-Stored-At";
}

/// The stable error codes a client may see (DESIGN §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Unauthenticated,
    /// Not a member, and also a conversation that does not exist: ids reveal nothing.
    Forbidden,
    NotFound,
    /// A bad frame or field.
    Invalid,
    TooLarge,
    RateLimited,
    /// Broker or database down: retry (with the same `clientMsgId` for a send).
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Invalid => "invalid",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// `{code, message}`: what a client is told when something is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, ToSchema)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    /// The one answer for "not a member" and "no such conversation".
    pub fn forbidden() -> Self {
        Self::new(
            ErrorCode::Forbidden,
            "you are not a member of this conversation",
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "the service is temporarily unavailable, try again",
        )
    }
}

/// Content over the limit is `too_large`; blank content or a NUL is `invalid`.
impl From<crate::domain::ContentError> for ApiError {
    fn from(e: crate::domain::ContentError) -> Self {
        use crate::domain::ContentError;
        match e {
            ContentError::TooLong { .. } => ApiError::new(ErrorCode::TooLarge, e.to_string()),
            ContentError::Blank | ContentError::Nul => ApiError::invalid(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
}

impl ConversationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    /// Position in the conversation: 1, 2, 3… with no gap and no repeat.
    pub seq: i64,
    pub sender_id: String,
    pub client_msg_id: String,
    pub content: String,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A conversation, as listed and as announced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: Uuid,
    pub kind: ConversationKind,
    pub title: Option<String>,
    /// Sorted.
    pub participant_ids: Vec<String>,
    pub last_seq: i64,
    pub last_message_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A conversation in a list: with its newest message and the caller's unread count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedConversation {
    #[serde(flatten)]
    pub conversation: Conversation,
    pub last_message: Option<Message>,
    /// Messages after the caller's read position, not sent by the caller and not deleted.
    pub unread_count: i64,
}

/// `message:read`: `user_id` has read everything up to `seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadEvent {
    pub conversation_id: Uuid,
    pub user_id: String,
    pub seq: i64,
    pub read_at: DateTime<Utc>,
}

/// `typing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TypingEvent {
    pub conversation_id: Uuid,
    pub user_id: String,
    pub is_typing: bool,
}

/// `presence`, and one entry of a `presence:get` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub user_id: String,
    pub online: bool,
    /// When the user was last connected; now-ish while online, `None` if never seen.
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// Every server → client event (DESIGN §6). Serialised as the `/ws` frame
/// `{"type": EVENT, "data": {...}}`, which is also the payload of a delivery event on
/// `{p}.out.user.<user>`, so a gateway forwards it to sockets without re-encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ServerEvent {
    #[serde(rename = "message:new")]
    MessageNew(Message),
    #[serde(rename = "message:updated")]
    MessageUpdated(Message),
    #[serde(rename = "message:read")]
    MessageRead(ReadEvent),
    #[serde(rename = "typing")]
    Typing(TypingEvent),
    #[serde(rename = "presence")]
    Presence(Presence),
    #[serde(rename = "conversation:new")]
    ConversationNew(Conversation),
    #[serde(rename = "conversation:updated")]
    ConversationUpdated(Conversation),
    #[serde(rename = "error")]
    Error(ErrorEvent),
    #[serde(rename = "token:expiring")]
    TokenExpiring { exp: i64 },
    #[serde(rename = "server:draining")]
    ServerDraining {
        #[serde(rename = "reconnectAfterMs")]
        reconnect_after_ms: u64,
    },
    /// The gateway lost the broker for a while and is back: deliveries announced meanwhile may
    /// not have reached this socket, so the client syncs every conversation it follows.
    #[serde(rename = "server:resync")]
    ServerResync {},
}

impl ServerEvent {
    /// The event name, as Socket.IO emits it.
    pub fn name(&self) -> &'static str {
        match self {
            ServerEvent::MessageNew(_) => "message:new",
            ServerEvent::MessageUpdated(_) => "message:updated",
            ServerEvent::MessageRead(_) => "message:read",
            ServerEvent::Typing(_) => "typing",
            ServerEvent::Presence(_) => "presence",
            ServerEvent::ConversationNew(_) => "conversation:new",
            ServerEvent::ConversationUpdated(_) => "conversation:updated",
            ServerEvent::Error(_) => "error",
            ServerEvent::TokenExpiring { .. } => "token:expiring",
            ServerEvent::ServerDraining { .. } => "server:draining",
            ServerEvent::ServerResync {} => "server:resync",
        }
    }

    pub fn to_json(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("server events always serialise")
            .into()
    }
}

/// `error` `{code, message, clientMsgId?, closeCode?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEvent {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// On a transport without close frames (Socket.IO), the last event before the server
    /// disconnects: the WebSocket close code `/ws` would have sent (1008, 4001, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
}

/// A send, as the gateway publishes it to `{p}.in.msg.<conversation>` once the sender is known
/// to be a member. Persistence checks membership again; it is the authority.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendCommand {
    pub conversation_id: Uuid,
    pub sender_id: UserId,
    pub client_msg_id: ClientMsgId,
    pub content: String,
    /// When the gateway accepted it, for latency figures.
    pub accepted_at: DateTime<Utc>,
}

impl SendCommand {
    /// The JetStream `Nats-Msg-Id`: `<senderId>:<clientMsgId>`, so a retry inside the broker's
    /// dedupe window is dropped by the broker itself.
    pub fn dedupe_id(&self) -> String {
        format!("{}:{}", self.sender_id, self.client_msg_id.as_str())
    }
}

/// A read receipt, as the gateway publishes it to `{p}.in.read.<conversation>` once the reader
/// is known to be a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadCommand {
    pub conversation_id: Uuid,
    pub user_id: UserId,
    /// Everything up to here is read; persistence caps it at the conversation's last seq.
    pub seq: i64,
    /// When the reader said so.
    pub at: DateTime<Utc>,
}

impl ReadCommand {
    /// A retried receipt inside the dedupe window is dropped by the broker.
    pub fn dedupe_id(&self) -> String {
        format!(
            "read:{}:{}:{}",
            self.user_id, self.conversation_id, self.seq
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_events_use_the_ws_frame_shape() {
        let ev = ServerEvent::Error(ErrorEvent {
            code: ErrorCode::TooLarge,
            message: "too long".into(),
            client_msg_id: Some("c1".into()),
            close_code: None,
        });
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            json!({"type": "error", "data": {"code": "too_large", "message": "too long", "clientMsgId": "c1"}})
        );
        let ev = ServerEvent::ServerDraining {
            reconnect_after_ms: 1500,
        };
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            json!({"type": "server:draining", "data": {"reconnectAfterMs": 1500}})
        );
        let ev = ServerEvent::ServerResync {};
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            json!({"type": "server:resync", "data": {}})
        );
        assert_eq!(ev.name(), "server:resync");
    }

    #[test]
    fn messages_are_camel_case_with_rfc3339_utc_timestamps() {
        let m = Message {
            id: Uuid::nil(),
            conversation_id: Uuid::nil(),
            seq: 7,
            sender_id: "alice".into(),
            client_msg_id: "c".into(),
            content: "hi".into(),
            read_at: None,
            created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            edited_at: None,
            deleted_at: None,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["createdAt"], "2023-11-14T22:13:20Z");
        assert_eq!(v["readAt"], serde_json::Value::Null);
        assert_eq!(v["conversationId"], Uuid::nil().to_string());
        assert_eq!(v["clientMsgId"], "c");
    }
}
