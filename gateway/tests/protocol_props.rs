//! Property tests of what a client can send: `/ws` frames and the commands they carry, whatever
//! the bytes. Nothing panics, and every refusal is `invalid` or `too_large` with a message.

use parley_common::wire::ErrorCode;
use parley_gateway::protocol::{CLIENT_EVENTS, Command, Frame};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Every client event, and one that does not exist.
fn events() -> Vec<&'static str> {
    let mut events = CLIENT_EVENTS.to_vec();
    events.push("no:such:event");
    events
}

/// Any JSON value, a few levels deep, with the field names the commands read.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("00000000-0000-7000-8000-000000000000")),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("conversationId".to_owned()),
                    Just("clientMsgId".to_owned()),
                    Just("content".to_owned()),
                    Just("participantIds".to_owned()),
                    Just("limit".to_owned()),
                    Just("seq".to_owned()),
                    Just("token".to_owned()),
                    "[a-zA-Z]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn refused_clearly(code: ErrorCode, message: &str) -> bool {
    matches!(code, ErrorCode::Invalid | ErrorCode::TooLarge) && !message.is_empty()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_a_frame_or_a_clear_invalid(text in ".{0,200}") {
        if let Err(e) = Frame::parse(&text) {
            prop_assert_eq!(e.code, ErrorCode::Invalid);
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn any_frame_shape_parses_or_is_refused_invalid(
        event in prop::sample::select(events()),
        id in prop::option::of(json_value()),
        data in prop::option::of(json_value()),
        traceparent in prop::option::of(json_value()),
    ) {
        let mut frame = serde_json::Map::new();
        frame.insert("type".into(), json!(event));
        if let Some(id) = &id { frame.insert("id".into(), id.clone()); }
        if let Some(data) = &data { frame.insert("data".into(), data.clone()); }
        if let Some(t) = &traceparent { frame.insert("traceparent".into(), t.clone()); }
        match Frame::parse(&Value::Object(frame).to_string()) {
            Ok(f) => {
                prop_assert_eq!(f.event.as_str(), event);
                // An id echoed back is a string or a number, and short.
                if let Some(id) = &f.id {
                    let value: Value = serde_json::from_str(id.get()).unwrap();
                    prop_assert!(value.is_string() || value.is_number());
                    prop_assert!(id.get().len() <= 100);
                }
                if let Some(t) = &f.traceparent { prop_assert!(t.len() <= 64); }
                // Whatever the data, the command is read or refused with a clear code.
                if let Err(r) = Command::parse(&f.event, f.data.as_deref(), 4_000) {
                    prop_assert!(refused_clearly(r.error.code, &r.error.message), "{:?}", r.error);
                }
            }
            Err(e) => prop_assert_eq!(e.code, ErrorCode::Invalid),
        }
    }

    #[test]
    fn any_data_for_any_event_is_a_command_or_a_clear_refusal(
        event in prop::sample::select(events()),
        data in json_value(),
    ) {
        let raw = serde_json::value::to_raw_value(&data).unwrap();
        match Command::parse(event, Some(&raw), 4_000) {
            Ok(c) => prop_assert_eq!(c.name(), event),
            Err(r) => prop_assert!(refused_clearly(r.error.code, &r.error.message), "{:?}", r.error),
        }
    }

    #[test]
    fn content_is_taken_up_to_the_limit_in_characters_and_too_large_past_it(
        content in "[^\\x00-\\x1f\\x7f]{0,60}",
        max in 1usize..50,
    ) {
        let data = json!({
            "conversationId": "00000000-0000-7000-8000-000000000000",
            "clientMsgId": "c1",
            "content": content,
        });
        let raw = serde_json::value::to_raw_value(&data).unwrap();
        let chars = content.chars().count();
        match Command::parse("message:send", Some(&raw), max) {
            Ok(Command::Send(_)) => prop_assert!(chars <= max, "{} > {}", chars, max),
            Ok(other) => prop_assert!(false, "{}", other.name()),
            Err(r) if chars > max => {
                prop_assert_eq!(r.error.code, ErrorCode::TooLarge);
                prop_assert_eq!(r.client_msg_id.as_deref(), Some("c1"));
            }
            Err(r) => prop_assert_eq!(r.error.code, ErrorCode::Invalid, "{:?}", r.error),
        }
    }
}
