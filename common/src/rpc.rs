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

/// How long a caller waits for a reply (the NATS client's request timeout, every role).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The header on a request saying when its caller stops waiting: Unix milliseconds. A service
/// that takes a request off its queue after then drops it unanswered: the caller has already
/// told its client `unavailable`, and the client is retrying. Without it, a service that falls
/// behind spends its time on answers nobody reads while the retries pile up behind them (a
/// reconnect storm of 19,000 `sync`s never recovered, issue 17).
pub const DEADLINE_HEADER: &str = "Parley-Deadline";

/// Clocks of different hosts disagree a little: a request is only dropped when it is this far
/// past its deadline by the service's clock.
pub const DEADLINE_SLACK_MS: i64 = 1_000;

/// The deadline of a request sent at `now_ms`.
pub fn deadline_ms(now_ms: i64) -> i64 {
    now_ms + REQUEST_TIMEOUT.as_millis() as i64
}

/// Whether a request whose deadline header says `deadline` is past it at `now_ms`. A request
/// without the header, or with one that does not parse, is never past it.
pub fn past_deadline(deadline: Option<&str>, now_ms: i64) -> bool {
    deadline
        .and_then(|d| d.trim().parse::<i64>().ok())
        .is_some_and(|d| now_ms > d.saturating_add(DEADLINE_SLACK_MS))
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

/// The largest reply a query may send, whatever the server allows. Two limits meet here: NATS
/// refuses a message over its `max_payload` (1 MiB by default), and a gateway's socket refuses
/// to queue a frame over its write buffer (four times `PARLEY_MAX_FRAME_BYTES`: 256 KiB by
/// default); either way the reply would reach the client as `unavailable` or a dropped socket.
/// Pages stop early (`hasMore`) rather than grow past it; smaller pages also reach a client
/// sooner.
pub const REPLY_CEILING: usize = 192 * 1024;
/// Room left under the ceiling for the envelope around a page (`{"ok":true,...}`, the `/ws`
/// ack frame) and the NATS headers (trace context), which count against `max_payload` too.
pub const REPLY_MARGIN: usize = 16 * 1024;

/// The bytes of JSON a page's items may take, for a server whose `max_payload` is
/// `max_payload`.
pub fn reply_budget(max_payload: usize) -> usize {
    max_payload.min(REPLY_CEILING).saturating_sub(REPLY_MARGIN)
}

/// The length of `value` as JSON, without building the JSON.
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("reply items always serialise");
    count.0
}

/// How many of `items`, from the first, fit in a JSON array of at most `budget` bytes; never
/// fewer than one when there is one, so a page always makes progress (a single item is bounded
/// by the content and member caps, far below any budget).
pub fn fitting<T: Serialize>(items: &[T], budget: usize) -> usize {
    // `[` and `]`, then each item and the comma before all but the first.
    let mut used = 2;
    for (i, item) in items.iter().enumerate() {
        used += json_len(item) + usize::from(i > 0);
        if used > budget {
            return i.max(1);
        }
    }
    items.len()
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
    /// Oldest first.
    pub messages: Vec<Message>,
    /// Older messages exist before the first of this page: ask again with its `seq` as
    /// `beforeSeq`. A page may stop before `limit` to stay within the reply size bound.
    #[serde(default)]
    pub has_more: bool,
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
    /// More messages remain after this page (it stopped at `limit` or at the reply size
    /// bound): ask again from the last `seq` received in each conversation.
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
    /// Whether there is a next page (`nextBefore` is set). A page may stop before `limit` to
    /// stay within the reply size bound.
    #[serde(default)]
    pub has_more: bool,
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
    fn a_request_is_past_its_deadline_only_beyond_the_slack() {
        let deadline = deadline_ms(10_000);
        assert_eq!(deadline, 15_000);
        let d = deadline.to_string();
        assert!(!past_deadline(Some(&d), 14_000));
        assert!(
            !past_deadline(Some(&d), 15_000 + DEADLINE_SLACK_MS),
            "within the slack"
        );
        assert!(past_deadline(Some(&d), 15_001 + DEADLINE_SLACK_MS));
    }

    #[test]
    fn a_request_without_a_readable_deadline_is_never_late() {
        assert!(!past_deadline(None, i64::MAX));
        assert!(!past_deadline(Some("soon"), i64::MAX));
        assert!(!past_deadline(Some(""), i64::MAX));
        assert!(
            !past_deadline(Some(&i64::MAX.to_string()), i64::MAX),
            "no overflow"
        );
    }

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
    fn json_len_is_the_length_of_the_json() {
        let v = serde_json::json!({"a": "\u{1}😀\"", "b": [1, 2]});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len());
    }

    #[test]
    fn a_page_stops_before_the_item_that_would_pass_the_budget() {
        let items = vec!["x".repeat(10); 5]; // 12 bytes each as JSON
        // [a,b,c] = 2 + 12 * 3 + 2 = 40 bytes.
        assert_eq!(fitting(&items, 40), 3);
        assert_eq!(fitting(&items, 39), 2);
        assert_eq!(fitting(&items, 10_000), 5);
        let fits = fitting(&items, 40);
        assert_eq!(json_len(&items[..fits]), 40);
    }

    #[test]
    fn a_page_always_makes_progress() {
        let items = vec!["x".repeat(100); 3];
        assert_eq!(fitting(&items, 10), 1);
        assert_eq!(fitting::<String>(&[], 10), 0);
    }

    #[test]
    fn the_budget_leaves_a_margin_under_the_server_limit_and_the_ceiling() {
        assert_eq!(reply_budget(1024 * 1024), REPLY_CEILING - REPLY_MARGIN);
        assert_eq!(reply_budget(128 * 1024), 128 * 1024 - REPLY_MARGIN);
        assert_eq!(reply_budget(0), 0);
    }

    #[test]
    fn garbage_reads_as_unavailable() {
        assert_eq!(
            decode::<MembersReply>(b"nope").unwrap_err().code,
            ErrorCode::Unavailable
        );
    }
}
