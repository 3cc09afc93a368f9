//! Client → server frames and the typed commands they carry (DESIGN §6).
//!
//! Both transports hand this module an event name and its `data`; what comes out is a
//! [`Command`] whose fields already hold valid values, or the [`ApiError`] that tells the client
//! what is wrong (`invalid`, `too_large`). A bad frame never closes the connection.

use parley_common::domain::{ClientMsgId, Content, ContentError, UserId};
use parley_common::rpc::SyncPosition;
use parley_common::wire::{ApiError, ErrorCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

/// The largest request id echoed back, in bytes of JSON.
const MAX_ID_BYTES: usize = 100;

/// One `/ws` text frame: `{"type": EVENT, "id": REQ_ID?, "data": {...}}`.
#[derive(Debug)]
pub struct Frame {
    pub event: String,
    /// The request id as the client wrote it (a JSON string or number), echoed in the ack.
    pub id: Option<Box<RawValue>>,
    pub data: Option<Box<RawValue>>,
}

impl Frame {
    /// Reads a frame. On failure the error is for an `error` event (there is no id to ack).
    pub fn parse(text: &str) -> Result<Frame, ApiError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(rename = "type")]
            event: String,
            #[serde(default)]
            id: Option<Box<RawValue>>,
            #[serde(default)]
            data: Option<Box<RawValue>>,
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| ApiError::invalid(format!("malformed frame: {e}")))?;
        if let Some(id) = &raw.id {
            let s = id.get();
            let scalar =
                s.starts_with('"') || s.starts_with('-') || s.as_bytes()[0].is_ascii_digit();
            if !scalar || s.len() > MAX_ID_BYTES {
                return Err(ApiError::invalid(
                    "id must be a string or a number of at most 100 bytes",
                ));
            }
        }
        Ok(Frame {
            event: raw.event,
            id: raw.id.filter(|id| id.get() != "null"),
            data: raw.data,
        })
    }
}

/// A request, checked.
#[derive(Debug)]
pub enum Command {
    Send(SendData),
    Open(OpenData),
    History(HistoryData),
    Sync(SyncData),
    /// `auth:refresh`: a new access token for this connection. It changes the connection, not
    /// the user's data, so each transport answers it where its expiry timers live.
    AuthRefresh {
        token: String,
    },
}

/// Where a send goes: a conversation the sender is in, or a user to open a DM with on the fly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Conversation(Uuid),
    User(UserId),
}

#[derive(Debug)]
pub struct SendData {
    pub target: Target,
    pub content: Content,
    pub client_msg_id: ClientMsgId,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenData {
    pub participant_ids: Vec<UserId>,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryData {
    pub conversation_id: Uuid,
    #[serde(default)]
    pub before_seq: Option<i64>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncData {
    pub conversations: Vec<SyncPosition>,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `auth:refresh` data. The token's size is the verifier's to judge (it refuses oversized
/// tokens before parsing them); the frame limit already bounds it here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshData {
    token: String,
}

/// A command that could not be read, with the `clientMsgId` it carried, if any, so the client
/// can match the error to its pending send.
#[derive(Debug)]
pub struct Rejected {
    pub error: ApiError,
    pub client_msg_id: Option<String>,
}

impl Command {
    /// Reads the `data` of `event`. `max_content_chars` is the configured content limit.
    pub fn parse(
        event: &str,
        data: Option<&RawValue>,
        max_content_chars: usize,
    ) -> Result<Command, Rejected> {
        let plain = |error| Rejected {
            error,
            client_msg_id: None,
        };
        match event {
            "message:send" => parse_send(data, max_content_chars),
            "conversation:open" => Ok(Command::Open(fields(event, data).map_err(plain)?)),
            "message:history" => Ok(Command::History(fields(event, data).map_err(plain)?)),
            "sync" => Ok(Command::Sync(fields(event, data).map_err(plain)?)),
            "auth:refresh" => {
                let RefreshData { token } = fields(event, data).map_err(plain)?;
                Ok(Command::AuthRefresh { token })
            }
            other => Err(plain(ApiError::invalid(format!(
                "unknown event {:?}",
                truncate(other)
            )))),
        }
    }
}

fn fields<T: DeserializeOwned>(event: &str, data: Option<&RawValue>) -> Result<T, ApiError> {
    let data = data.ok_or_else(|| ApiError::invalid(format!("{event} needs data")))?;
    serde_json::from_str(data.get()).map_err(|e| ApiError::invalid(format!("{event}: {e}")))
}

fn parse_send(data: Option<&RawValue>, max_content_chars: usize) -> Result<Command, Rejected> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Raw {
        #[serde(default)]
        conversation_id: Option<Uuid>,
        #[serde(default)]
        to: Option<UserId>,
        content: String,
        client_msg_id: String,
    }
    // Read the clientMsgId first, on its own, so even a send with another fault names it.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct IdOnly {
        #[serde(default)]
        client_msg_id: Option<serde_json::Value>,
    }
    let client_msg_id = data
        .and_then(|d| serde_json::from_str::<IdOnly>(d.get()).ok())
        .and_then(|i| i.client_msg_id)
        .and_then(|v| v.as_str().map(truncate));
    let reject = |error| Rejected {
        error,
        client_msg_id: client_msg_id.clone(),
    };
    let raw: Raw = fields("message:send", data).map_err(reject)?;
    let target = match (raw.conversation_id, raw.to) {
        (Some(c), None) => Target::Conversation(c),
        (None, Some(u)) => Target::User(u),
        _ => {
            return Err(reject(ApiError::invalid(
                "message:send needs exactly one of conversationId and to",
            )));
        }
    };
    let client_msg_id =
        ClientMsgId::parse(&raw.client_msg_id).map_err(|e| reject(ApiError::invalid(e)))?;
    let content = Content::parse(raw.content, max_content_chars).map_err(|e| {
        reject(match e {
            ContentError::TooLong { .. } => ApiError::new(ErrorCode::TooLarge, e.to_string()),
            ContentError::Blank | ContentError::Nul => ApiError::invalid(e.to_string()),
        })
    })?;
    Ok(Command::Send(SendData {
        target,
        content,
        client_msg_id,
    }))
}

fn truncate(s: &str) -> String {
    s.chars().take(ClientMsgId::MAX_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn send(data: &str) -> Result<Command, Rejected> {
        Command::parse("message:send", Some(&raw(data)), 10)
    }

    #[test]
    fn frames_keep_their_id_as_written() {
        let f = Frame::parse(r#"{"type":"sync","id":"r-1","data":{"conversations":[]}}"#).unwrap();
        assert_eq!(f.event, "sync");
        assert_eq!(f.id.unwrap().get(), r#""r-1""#);
        let f = Frame::parse(r#"{"type":"sync","id":42}"#).unwrap();
        assert_eq!(f.id.unwrap().get(), "42");
    }

    #[test]
    fn malformed_frames_and_odd_ids_are_invalid() {
        for bad in [
            "{",
            "[]",
            r#"{"id":1}"#,
            r#"{"type":"x","id":{"a":1}}"#,
            r#"{"type":"x","id":[1]}"#,
        ] {
            assert_eq!(
                Frame::parse(bad).unwrap_err().code,
                ErrorCode::Invalid,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_send_names_a_conversation_or_a_user_not_both() {
        let c = Uuid::now_v7();
        assert!(matches!(
            send(&format!(r#"{{"conversationId":"{c}","content":"hi","clientMsgId":"m1"}}"#)),
            Ok(Command::Send(SendData { target: Target::Conversation(x), .. })) if x == c
        ));
        assert!(matches!(
            send(r#"{"to":"bob","content":"hi","clientMsgId":"m1"}"#),
            Ok(Command::Send(SendData {
                target: Target::User(_),
                ..
            }))
        ));
        let both = send(&format!(
            r#"{{"conversationId":"{c}","to":"bob","content":"hi","clientMsgId":"m1"}}"#
        ));
        assert_eq!(both.unwrap_err().error.code, ErrorCode::Invalid);
    }

    #[test]
    fn content_over_the_limit_is_too_large_and_names_the_client_msg_id() {
        let r = send(r#"{"to":"bob","content":"12345678901","clientMsgId":"m9"}"#).unwrap_err();
        assert_eq!(r.error.code, ErrorCode::TooLarge);
        assert_eq!(r.client_msg_id.as_deref(), Some("m9"));
    }

    #[test]
    fn a_missing_field_is_invalid_and_says_which() {
        let r = send(r#"{"to":"bob","clientMsgId":"m2"}"#).unwrap_err();
        assert_eq!(r.error.code, ErrorCode::Invalid);
        assert!(r.error.message.contains("content"), "{}", r.error.message);
        assert_eq!(r.client_msg_id.as_deref(), Some("m2"));
    }

    #[test]
    fn unknown_events_are_invalid() {
        let r = Command::parse("message:explode", None, 10).unwrap_err();
        assert_eq!(r.error.code, ErrorCode::Invalid);
        assert!(r.error.message.contains("unknown event"));
    }

    #[test]
    fn auth_refresh_carries_its_token_and_nothing_else() {
        let refresh =
            |data: Option<&str>| Command::parse("auth:refresh", data.map(raw).as_deref(), 10);
        assert!(matches!(
            refresh(Some(r#"{"token":"a.b.c"}"#)),
            Ok(Command::AuthRefresh { token }) if token == "a.b.c"
        ));
        for bad in [
            None,
            Some("{}"),
            Some(r#"{"token":7}"#),
            Some(r#"{"token":"a.b.c","user":"bob"}"#),
        ] {
            let r = refresh(bad).unwrap_err();
            assert_eq!(r.error.code, ErrorCode::Invalid, "{bad:?}");
        }
        let missing = refresh(Some("{}")).unwrap_err();
        assert!(
            missing.error.message.contains("token"),
            "{}",
            missing.error.message
        );
    }

    #[test]
    fn a_bad_user_id_in_to_is_invalid() {
        let r = send(r#"{"to":"bob.*","content":"x","clientMsgId":"m3"}"#).unwrap_err();
        assert_eq!(r.error.code, ErrorCode::Invalid);
    }
}
