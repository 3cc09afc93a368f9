//! Request/reply over NATS between the gateway and the `parley-persistence` service.
//!
//! A reply is the same envelope a client gets in its acknowledgement: `{"ok": true, ...body}` or
//! `{"ok": false, "error": {code, message}}`. A gateway can therefore hand a query's reply to the
//! client as it came, without decoding it.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::UserId;
use crate::wire::{ApiError, Conversation, ErrorCode, ListedConversation, Message};

#[derive(Serialize)]
struct OkEnvelope<'a, T> {
    ok: bool,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize, Deserialize)]
struct ErrEnvelope {
    ok: bool,
    error: ApiError,
}

/// `{"ok": true, ...body}`; `body` must serialise as a JSON object.
pub fn encode_ok<T: Serialize>(body: &T) -> Bytes {
    serde_json::to_vec(&OkEnvelope { ok: true, body })
        .expect("reply bodies always serialise")
        .into()
}

/// `{"ok": false, "error": {code, message}}`.
pub fn encode_err(error: &ApiError) -> Bytes {
    serde_json::to_vec(&ErrEnvelope {
        ok: false,
        error: error.clone(),
    })
    .expect("errors always serialise")
    .into()
}

pub fn encode<T: Serialize>(result: &Result<T, ApiError>) -> Bytes {
    match result {
        Ok(body) => encode_ok(body),
        Err(e) => encode_err(e),
    }
}

/// Reads a reply envelope. A payload that is not one is reported as `unavailable`: the peer is
/// broken or not what we expect, and the caller can do nothing but retry.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    #[derive(Deserialize)]
    struct Head {
        ok: bool,
    }
    let head: Head = serde_json::from_slice(payload).map_err(|_| ApiError::unavailable())?;
    if head.ok {
        serde_json::from_slice(payload).map_err(|_| ApiError::unavailable())
    } else {
        let env: ErrEnvelope =
            serde_json::from_slice(payload).map_err(|_| ApiError::unavailable())?;
        Err(env.error)
    }
}

/// `conversation:open` on behalf of `user_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenRequest {
    pub user_id: UserId,
    pub participant_ids: Vec<UserId>,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenReply {
    pub conversation: Conversation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRequest {
    pub user_id: UserId,
    pub conversation_id: Uuid,
    #[serde(default)]
    pub before_seq: Option<i64>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagesReply {
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncPosition {
    pub conversation_id: Uuid,
    pub after_seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRequest {
    pub user_id: UserId,
    pub conversations: Vec<SyncPosition>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReply {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// Who is in a conversation, asked by a member (the gateway's membership cache fills from it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersRequest {
    pub user_id: UserId,
    pub conversation_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersReply {
    pub participant_ids: Vec<String>,
}

/// `conversation:list`: the caller's conversations, the most recently active first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListRequest {
    pub user_id: UserId,
    /// The `nextBefore` cursor of the previous page.
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListReply {
    pub conversations: Vec<ListedConversation>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next_before: Option<String>,
}

/// `message:edit`, by the sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditRequest {
    pub user_id: UserId,
    pub conversation_id: Uuid,
    pub seq: i64,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageReply {
    pub message: Message,
}

/// `message:delete`, by the sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRequest {
    pub user_id: UserId,
    pub conversation_id: Uuid,
    pub seq: i64,
}

/// `{"ok": true}` and nothing else.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

/// `member:add` / `member:remove`, by a member of a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRequest {
    pub user_id: UserId,
    pub conversation_id: Uuid,
    /// Who is added or removed.
    pub member_id: UserId,
}

/// Who shares a conversation with `user_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactsRequest {
    pub user_id: UserId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactsReply {
    pub user_ids: Vec<String>,
}

/// An `ApiError` for a request the service could not parse.
pub fn bad_request(e: &serde_json::Error) -> ApiError {
    ApiError::new(ErrorCode::Invalid, format!("malformed request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_through_the_envelope() {
        let ok = encode_ok(&MembersReply {
            participant_ids: vec!["a".into()],
        });
        assert_eq!(&ok[..], br#"{"ok":true,"participantIds":["a"]}"#);
        let back: MembersReply = decode(&ok).unwrap();
        assert_eq!(back.participant_ids, ["a"]);

        let err = encode_err(&ApiError::forbidden());
        assert_eq!(
            decode::<MembersReply>(&err).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn garbage_reads_as_unavailable() {
        assert_eq!(
            decode::<MembersReply>(b"nope").unwrap_err().code,
            ErrorCode::Unavailable
        );
    }
}
