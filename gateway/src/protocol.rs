//! Client → server frames and the typed commands they carry (DESIGN §6).
//!
//! Both transports hand this module an event name and its `data`; what comes out is a
//! [`Command`] whose fields already hold valid values, or the [`ApiError`] that tells the client
//! what is wrong (`invalid`, `too_large`). A bad frame never closes the connection.

use parley_common::domain::{ClientMsgId, Content, UserId};
use parley_common::rpc::SyncPosition;
use parley_common::wire::ApiError;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

/// The largest request id echoed back, in bytes of JSON.
const MAX_ID_BYTES: usize = 100;
/// A W3C `traceparent` is 55 bytes; longer ones are not one.
pub const MAX_TRACEPARENT_BYTES: usize = 64;

/// One `/ws` text frame: `{"type": EVENT, "id": REQ_ID?, "data": {...}}`.
#[derive(Debug)]
pub struct Frame {
    pub event: String,
    /// The request id as the client wrote it (a JSON string or number), echoed in the ack.
    pub id: Option<Box<RawValue>>,
    pub data: Option<Box<RawValue>>,
    /// A W3C `traceparent` the client sent, so the server's spans join the client's trace.
    pub traceparent: Option<String>,
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
            #[serde(default)]
            traceparent: Option<serde_json::Value>,
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
            // Anything but a plausible string is ignored: tracing is never a reason to refuse.
            traceparent: raw
                .traceparent
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|t| t.len() <= MAX_TRACEPARENT_BYTES),
        })
    }
}

/// Every event a client may send (DESIGN §6), as [`Command::name`] names them.
pub const CLIENT_EVENTS: [&str; 13] = [
    "message:send",
    "conversation:open",
    "message:history",
    "sync",
    "message:read",
    "typing",
    "conversation:list",
    "message:edit",
    "message:delete",
    "member:add",
    "member:remove",
    "presence:get",
    "auth:refresh",
];

/// A request, checked.
#[derive(Debug)]
pub enum Command {
    Send(SendData),
    Open(OpenData),
    History(HistoryData),
    Sync(SyncData),
    Read(ReadData),
    Typing(TypingData),
    List(ListData),
    Edit(EditData),
    Delete(DeleteData),
    MemberAdd(MemberData),
    MemberRemove(MemberData),
    PresenceGet(PresenceData),
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

/// `message:read`: everything up to `seq` is read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadData {
    pub conversation_id: Uuid,
    pub seq: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TypingData {
    pub conversation_id: Uuid,
    pub is_typing: bool,
}

/// `conversation:list`; `data` may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListData {
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug)]
pub struct EditData {
    pub conversation_id: Uuid,
    pub seq: i64,
    pub content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteData {
    pub conversation_id: Uuid,
    pub seq: i64,
}

/// `member:add` / `member:remove`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberData {
    pub conversation_id: Uuid,
    pub user_id: UserId,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresenceData {
    pub user_ids: Vec<UserId>,
}

/// The most users one `presence:get` may name.
pub const MAX_PRESENCE_USERS: usize = 500;

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
    /// The event name, for spans and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Send(_) => "message:send",
            Command::Open(_) => "conversation:open",
            Command::History(_) => "message:history",
            Command::Sync(_) => "sync",
            Command::Read(_) => "message:read",
            Command::Typing(_) => "typing",
            Command::List(_) => "conversation:list",
            Command::Edit(_) => "message:edit",
            Command::Delete(_) => "message:delete",
            Command::MemberAdd(_) => "member:add",
            Command::MemberRemove(_) => "member:remove",
            Command::PresenceGet(_) => "presence:get",
            Command::AuthRefresh { .. } => "auth:refresh",
        }
    }

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
            "message:read" => {
                let read: ReadData = fields(event, data).map_err(plain)?;
                positive_seq(read.seq).map_err(plain)?;
                Ok(Command::Read(read))
            }
            "typing" => Ok(Command::Typing(fields(event, data).map_err(plain)?)),
            "conversation:list" => Ok(Command::List(match data {
                None => ListData::default(),
                Some(_) => fields(event, data).map_err(plain)?,
            })),
            "message:edit" => parse_edit(data, max_content_chars).map_err(plain),
            "message:delete" => {
                let delete: DeleteData = fields(event, data).map_err(plain)?;
                positive_seq(delete.seq).map_err(plain)?;
                Ok(Command::Delete(delete))
            }
            "member:add" => Ok(Command::MemberAdd(fields(event, data).map_err(plain)?)),
            "member:remove" => Ok(Command::MemberRemove(fields(event, data).map_err(plain)?)),
            "presence:get" => {
                let get: PresenceData = fields(event, data).map_err(plain)?;
                if get.user_ids.len() > MAX_PRESENCE_USERS {
                    return Err(plain(ApiError::invalid(format!(
                        "presence:get may name at most {MAX_PRESENCE_USERS} users"
                    ))));
                }
                Ok(Command::PresenceGet(get))
            }
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

fn positive_seq(seq: i64) -> Result<(), ApiError> {
    if seq < 1 {
        Err(ApiError::invalid("seq must be at least 1"))
    } else {
        Ok(())
    }
}

/// Whether `c` is a control character content may not hold: C0 (U+0000 to U+001F) other than
/// tab, line feed and carriage return. They are invisible or disruptive in chat text (terminal
/// escapes, bells, backspaces), and JSON writes each as six bytes (`\u0001`), so they would
/// make the heaviest messages there are.
pub fn is_refused_control(c: char) -> bool {
    c < '\u{20}' && !matches!(c, '\t' | '\n' | '\r')
}

/// Message text as a client sent it, checked: the domain rules of [`Content`] (not blank, no
/// NUL, at most `max_content_chars`), then no refused control character. Every send and edit,
/// over a socket or the HTTP API, is checked here.
pub fn content(raw: String, max_content_chars: usize) -> Result<Content, ApiError> {
    let content = Content::parse(raw, max_content_chars).map_err(ApiError::from)?;
    if let Some(c) = content.as_str().chars().find(|&c| is_refused_control(c)) {
        return Err(ApiError::invalid(format!(
            "content must not contain control characters U+0000 to U+001F other than tab, \
             line feed and carriage return (found U+{:04X})",
            u32::from(c)
        )));
    }
    Ok(content)
}

fn parse_edit(data: Option<&RawValue>, max_content_chars: usize) -> Result<Command, ApiError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Raw {
        conversation_id: Uuid,
        seq: i64,
        content: String,
    }
    let raw: Raw = fields("message:edit", data)?;
    positive_seq(raw.seq)?;
    Ok(Command::Edit(EditData {
        conversation_id: raw.conversation_id,
        seq: raw.seq,
        content: content(raw.content, max_content_chars)?,
    }))
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
    let content = content(raw.content, max_content_chars).map_err(reject)?;
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
    use parley_common::wire::ErrorCode;

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
    fn the_chat_events_check_their_fields() {
        let c = Uuid::now_v7();
        let parse = |event: &str, data: &str| Command::parse(event, Some(&raw(data)), 10);
        assert!(matches!(
            parse(
                "message:read",
                &format!(r#"{{"conversationId":"{c}","seq":3}}"#)
            ),
            Ok(Command::Read(ReadData { seq: 3, .. }))
        ));
        assert!(matches!(
            parse(
                "typing",
                &format!(r#"{{"conversationId":"{c}","isTyping":true}}"#)
            ),
            Ok(Command::Typing(TypingData {
                is_typing: true,
                ..
            }))
        ));
        assert!(matches!(
            Command::parse("conversation:list", None, 10),
            Ok(Command::List(ListData {
                before: None,
                limit: None
            }))
        ));
        assert!(matches!(
            parse(
                "member:add",
                &format!(r#"{{"conversationId":"{c}","userId":"bob"}}"#)
            ),
            Ok(Command::MemberAdd(_))
        ));
        let bad = [
            (
                "message:read",
                format!(r#"{{"conversationId":"{c}","seq":0}}"#),
            ),
            ("message:read", format!(r#"{{"conversationId":"{c}"}}"#)),
            (
                "message:delete",
                format!(r#"{{"conversationId":"{c}","seq":-1}}"#),
            ),
            (
                "message:edit",
                format!(r#"{{"conversationId":"{c}","seq":1,"content":" "}}"#),
            ),
            (
                "typing",
                format!(r#"{{"conversationId":"{c}","isTyping":"yes"}}"#),
            ),
            (
                "member:remove",
                format!(r#"{{"conversationId":"{c}","userId":"a.b"}}"#),
            ),
            ("presence:get", r#"{"userIds":"bob"}"#.to_owned()),
            ("conversation:list", r#"{"limit":-1}"#.to_owned()),
        ];
        for (event, data) in bad {
            let r = parse(event, &data).unwrap_err();
            assert_eq!(r.error.code, ErrorCode::Invalid, "{event} {data}");
        }
        let long = parse(
            "message:edit",
            &format!(r#"{{"conversationId":"{c}","seq":1,"content":"12345678901"}}"#),
        );
        assert_eq!(long.unwrap_err().error.code, ErrorCode::TooLarge);
        let many: Vec<String> = (0..=MAX_PRESENCE_USERS).map(|i| format!("u{i}")).collect();
        let r = parse(
            "presence:get",
            &serde_json::json!({ "userIds": many }).to_string(),
        );
        assert_eq!(r.unwrap_err().error.code, ErrorCode::Invalid);
    }

    #[test]
    fn c0_control_characters_are_refused_in_content_and_name_the_rule() {
        for c in ('\u{1}'..='\u{1f}').filter(|c| !matches!(c, '\t' | '\n' | '\r')) {
            let data =
                serde_json::json!({"to": "bob", "content": format!("a{c}b"), "clientMsgId": "m"});
            let r = send(&data.to_string()).unwrap_err();
            assert_eq!(r.error.code, ErrorCode::Invalid, "U+{:04X}", u32::from(c));
            assert!(
                r.error.message.contains("control characters")
                    && r.error.message.contains(&format!("U+{:04X}", u32::from(c))),
                "{}",
                r.error.message
            );
            assert_eq!(r.client_msg_id.as_deref(), Some("m"));
        }
        let c = Uuid::now_v7();
        let edit = serde_json::json!({"conversationId": c, "seq": 1, "content": "x\u{1b}[2J"});
        let r = Command::parse("message:edit", Some(&raw(&edit.to_string())), 10).unwrap_err();
        assert_eq!(r.error.code, ErrorCode::Invalid);
    }

    #[test]
    fn tabs_newlines_and_other_characters_are_content() {
        for ok in ["a\tb", "l\r\nl\n", "\u{7f}\u{85}😀", "中文"] {
            let data = serde_json::json!({"to": "bob", "content": ok, "clientMsgId": "m"});
            assert!(send(&data.to_string()).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn a_bad_user_id_in_to_is_invalid() {
        let r = send(r#"{"to":"bob.*","content":"x","clientMsgId":"m3"}"#).unwrap_err();
        assert_eq!(r.error.code, ErrorCode::Invalid);
    }

    #[test]
    fn every_client_event_is_one_the_parser_knows() {
        let empty = RawValue::from_string("{}".into()).unwrap();
        for event in CLIENT_EVENTS {
            if let Err(r) = Command::parse(event, Some(&empty), 4_000) {
                assert!(!r.error.message.contains("unknown event"), "{event}");
            }
        }
    }
}
