//! Values checked once at the edge, so that code past it can only hold valid ones.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A user id: `^[A-Za-z0-9_-]{1,128}$`, so it is safe as one NATS subject token (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(format!(
                "a user id must be 1 to {} characters",
                Self::MAX_LEN
            ));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("a user id may hold only A-Z, a-z, 0-9, '_' and '-'".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The client's own id for a message it sends, the key that makes a send idempotent:
/// 1 to 128 printable ASCII characters, no spaces (it travels in a NATS header).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(format!(
                "clientMsgId must be 1 to {} characters",
                Self::MAX_LEN
            ));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("clientMsgId may hold only printable ASCII without spaces".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ClientMsgId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Message text: not blank, at most `max_chars` Unicode scalar values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Content(String);

/// Why a text is not acceptable content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentError {
    Blank,
    /// A NUL character, which Postgres text cannot hold.
    Nul,
    TooLong {
        max_chars: usize,
    },
}

impl fmt::Display for ContentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentError::Blank => f.write_str("content must not be empty"),
            ContentError::Nul => f.write_str("content must not contain NUL characters"),
            ContentError::TooLong { max_chars } => {
                write!(f, "content is longer than {max_chars} characters")
            }
        }
    }
}

impl Content {
    /// The default limit (DESIGN §9).
    pub const DEFAULT_MAX_CHARS: usize = 4_000;

    pub fn parse(raw: String, max_chars: usize) -> Result<Self, ContentError> {
        if raw.trim().is_empty() {
            return Err(ContentError::Blank);
        }
        if raw.contains('\0') {
            return Err(ContentError::Nul);
        }
        // Cheap test first: a string of at most `max_chars` bytes has at most as many chars.
        if raw.len() > max_chars && raw.chars().count() > max_chars {
            return Err(ContentError::TooLong { max_chars });
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_single_subject_tokens() {
        assert!(UserId::parse("alice_01-x").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "ü", &"a".repeat(129)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(UserId::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn user_ids_are_checked_when_deserialised() {
        assert!(serde_json::from_str::<UserId>("\"a.b\"").is_err());
        assert_eq!(
            serde_json::from_str::<UserId>("\"bob\"").unwrap().as_str(),
            "bob"
        );
    }

    #[test]
    fn client_msg_ids_refuse_whitespace_and_control_characters() {
        assert!(ClientMsgId::parse("0190c3e4-7b2a-7c1e-9f00-1234:5").is_ok());
        for bad in ["", "a b", "a\nb", "a\rb", &"x".repeat(129)] {
            assert!(ClientMsgId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn content_counts_characters_not_bytes() {
        let emoji = "😀".repeat(4_000);
        assert!(emoji.len() > 4_000);
        assert!(Content::parse(emoji, 4_000).is_ok());
        assert_eq!(
            Content::parse("x".repeat(4_001), 4_000),
            Err(ContentError::TooLong { max_chars: 4_000 })
        );
    }

    #[test]
    fn nul_characters_are_refused() {
        assert_eq!(Content::parse("a\0b".into(), 10), Err(ContentError::Nul));
    }

    #[test]
    fn blank_content_is_refused() {
        assert_eq!(Content::parse(" \n\t".into(), 10), Err(ContentError::Blank));
        assert_eq!(Content::parse(String::new(), 10), Err(ContentError::Blank));
    }
}
