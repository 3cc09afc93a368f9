//! Property tests of subject building and parsing (issue 15): whatever text a client sends or a
//! subject holds, building and parsing never panic; a parsed subject is the one that was built;
//! and no hostile token (`.`, `*`, `>`, whitespace, the empty string) ever makes a subject that
//! another user's traffic matches: it is refused first, with a reason.
//!
//! Here rather than in `subjects.rs`'s own tests so they need only the public API, which is
//! what every service builds its subjects through.

use parley_common::domain::UserId;
use parley_common::subjects::{CommandKind, Subjects};
use proptest::prelude::*;
use uuid::Uuid;

/// NATS's subject matching: whether a subscription on `pattern` receives a message published
/// on `subject`.
fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A subject a message can be published on: tokens that are not empty, hold no wildcard and no
/// whitespace.
fn is_publishable(subject: &str) -> bool {
    subject
        .split('.')
        .all(|t| !t.is_empty() && !t.contains(['*', '>']) && !t.contains(char::is_whitespace))
}

/// Text a hostile client might send as a user id or an operator as a prefix: anything, and
/// above all the characters that mean something in a subject.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.*> \t\r\n-]{0,12}",
        "[A-Za-z0-9_-]{1,8}[.*> ][A-Za-z0-9_.*>-]{0,8}",
        Just(String::new()),
        Just("*".to_owned()),
        Just(">".to_owned()),
        Just(".".to_owned()),
        Just("bob.>".to_owned()),
        Just("bob bob".to_owned()),
        // valid ones too, so both branches are exercised
        "[A-Za-z0-9_-]{1,128}",
    ]
}

const PREFIX: &str = "parley";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_user_id_is_refused_with_a_reason_or_makes_one_plain_subject_token(raw in hostile()) {
        let s = Subjects::new(PREFIX).unwrap();
        match UserId::parse(&raw) {
            Ok(id) => {
                for subject in [s.out_user(id.as_str()), s.ctl_user(id.as_str())] {
                    prop_assert!(is_publishable(&subject), "{subject}");
                    prop_assert_eq!(subject.split('.').count(), 4);
                    // Parsed back, the last token is the id as given.
                    prop_assert_eq!(subject.rsplit('.').next(), Some(raw.as_str()));
                }
            }
            Err(reason) => {
                prop_assert!(reason.contains("user id"), "{reason}");
                prop_assert!(
                    raw.is_empty()
                        || raw.len() > UserId::MAX_LEN
                        || raw.bytes().any(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
                );
            }
        }
    }

    #[test]
    fn no_user_id_subscribes_to_another_users_traffic(a in hostile(), b in hostile()) {
        let s = Subjects::new(PREFIX).unwrap();
        let (Ok(a), Ok(b)) = (UserId::parse(&a), UserId::parse(&b)) else {
            return Ok(());
        };
        prop_assume!(a != b);
        prop_assert!(!matches(&s.out_user(a.as_str()), &s.out_user(b.as_str())));
        prop_assert!(!matches(&s.ctl_user(a.as_str()), &s.ctl_user(b.as_str())));
        // Nor does the gateway's own wildcard for control events reach past one token.
        prop_assert!(matches(&s.ctl_user_all(), &s.ctl_user(a.as_str())));
        let deeper = format!("{}.x", s.ctl_user(a.as_str()));
        prop_assert!(!matches(&s.ctl_user_all(), &deeper));
    }

    #[test]
    fn a_prefix_is_refused_with_a_reason_or_is_one_plain_token(raw in hostile(), id in any::<u128>()) {
        let c = Uuid::from_u128(id);
        match Subjects::new(&raw) {
            Ok(s) => {
                prop_assert_eq!(s.prefix(), raw.as_str());
                prop_assert!(is_publishable(&s.in_msg(c)));
                prop_assert_eq!(s.in_msg(c).split('.').count(), 4);
                prop_assert!(matches(&s.in_all(), &s.in_msg(c)));
                prop_assert!(matches(&s.in_all(), &s.in_read(c)));
                // Another deployment's traffic on the same server is not this one's.
                let other = if raw == PREFIX { "other" } else { PREFIX };
                let other = Subjects::new(other).unwrap();
                prop_assert!(!matches(&s.in_all(), &other.in_msg(c)));
                prop_assert!(!matches(&s.ctl_user_all(), &other.ctl_user("bob")));
                prop_assert!(!matches(&s.ctl_conversation_all(), &other.ctl_conversation(c)));
            }
            Err(reason) => prop_assert!(reason.contains("must be"), "{reason}"),
        }
    }

    #[test]
    fn stored_command_subjects_round_trip(
        prefix in "[A-Za-z0-9_-]{1,32}",
        partition in any::<u16>(),
        send in any::<bool>(),
        id in any::<u128>(),
    ) {
        let s = Subjects::new(&prefix).unwrap();
        let c = Uuid::from_u128(id);
        let kind = if send { "msg" } else { "read" };
        // What the stream's transform makes of `{p}.in.<kind>.<c>`.
        let stored = format!("{prefix}.part.{partition}.{kind}.{c}");
        prop_assert!(matches(&s.partition_filter(partition), &stored));
        let parsed = s.parse_command(&stored).unwrap();
        prop_assert_eq!(parsed.partition, partition);
        prop_assert_eq!(parsed.conversation, c);
        prop_assert_eq!(
            parsed.kind,
            if send { CommandKind::Send } else { CommandKind::Read }
        );
        let built = if send { s.in_msg(c) } else { s.in_read(c) };
        prop_assert_eq!(built, format!("{prefix}.in.{kind}.{c}"));
        prop_assert_eq!(
            s.ctl_conversation(c).rsplit('.').next().map(Uuid::parse_str),
            Some(Ok(c))
        );
    }

    #[test]
    fn arbitrary_command_subjects_never_panic_and_refusals_name_the_subject(
        raw in prop_oneof![
            any::<String>(),
            "t-1\\.part\\.[0-9a-z*>]{0,6}\\.(msg|read|edit|\\*|>)\\.[0-9a-f-]{0,40}(\\.x)?",
        ]
    ) {
        let s = Subjects::new("t-1").unwrap();
        match s.parse_command(&raw) {
            Ok(parsed) => {
                prop_assert!(raw.starts_with("t-1.part."));
                prop_assert!(is_publishable(&raw));
                prop_assert!(raw.ends_with(&parsed.conversation.to_string())
                    || Uuid::parse_str(raw.rsplit('.').next().unwrap()) == Ok(parsed.conversation));
            }
            Err(refused) => prop_assert!(refused.0.contains(&raw), "{refused}"),
        }
    }
}
