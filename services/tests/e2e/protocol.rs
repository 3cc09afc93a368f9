//! Bad frames get a clear error and the connection keeps working.

use serde_json::json;

use crate::helpers::TestEnv;

#[tokio::test]
async fn bad_frames_get_an_error_with_the_right_code_and_the_connection_keeps_working() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let conv = alice.open_dm("bob").await;

    // Malformed JSON: an error event (there is no id to answer).
    alice.send_text("{this is not json").await;
    let e = alice.wait_for(|f| f["type"] == "error").await;
    assert_eq!(e["data"]["code"], "invalid");

    // An unknown event, without and with an id.
    alice
        .send_frame(&json!({"type": "message:explode", "data": {}}))
        .await;
    let e = alice.wait_for(|f| f["type"] == "error").await;
    assert_eq!(e["data"]["code"], "invalid");
    assert!(
        e["data"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown event"),
        "{e}"
    );
    let r = alice.request("message:explode", json!({})).await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["code"], "invalid");

    // A missing field names the field.
    let r = alice
        .request(
            "message:send",
            json!({"conversationId": conv, "clientMsgId": "c1"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("content"),
        "{r}"
    );

    // Content over the limit: too_large, and without an id the error names the clientMsgId.
    let long = "x".repeat(4_001);
    alice
        .send_frame(&json!({"type": "message:send", "data": {"conversationId": conv, "clientMsgId": "big", "content": long}}))
        .await;
    let e = alice.wait_for(|f| f["type"] == "error").await;
    assert_eq!(e["data"]["code"], "too_large");
    assert_eq!(e["data"]["clientMsgId"], "big");

    // Wrong types, a bad conversation id, blank content, a binary frame.
    let r = alice
        .request(
            "message:send",
            json!({"conversationId": 5, "clientMsgId": "c2", "content": "x"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid");
    let r = alice
        .request(
            "message:send",
            json!({"conversationId": "nope", "clientMsgId": "c3", "content": "x"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid");
    let r = alice
        .request(
            "message:send",
            json!({"conversationId": conv, "clientMsgId": "c4", "content": "   "}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid");
    let r = alice
        .request(
            "message:send",
            json!({"conversationId": conv, "clientMsgId": "c5", "content": "a\u{0}b"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid");
    let r = alice
        .request(
            "message:history",
            json!({"conversationId": conv, "beforeSeq": 0}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid");
    let r = alice
        .request("conversation:open", json!({"participantIds": []}))
        .await;
    assert_eq!(r["error"]["code"], "invalid");
    alice.send_frame_binary(b"\x00\x01").await;
    let e = alice.wait_for(|f| f["type"] == "error").await;
    assert_eq!(e["data"]["code"], "invalid");

    // Still connected and working: nothing bad was stored, and a good send goes through.
    let ok = alice.send_message(&conv, "fine", "still here").await;
    assert_eq!(ok["ok"], true, "{ok}");
    let got = alice.messages(&conv, 1).await;
    assert_eq!(got[0]["content"], "still here");
    assert_eq!(env.stored(&conv).await.len(), 1);
}

#[tokio::test]
async fn sends_past_the_rate_limit_are_refused_and_a_flood_is_disconnected() {
    // A burst of 5 and a refill of one frame per 100 s: however slowly this machine runs the
    // test, no token comes back during it, so the counts below are exact.
    let env =
        TestEnv::with_settings(&[("PARLEY_SEND_RATE", "0.01"), ("PARLEY_SEND_BURST", "5")]).await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let conv = alice.open_dm("bob").await; // uses one token of the burst
    let mut codes = Vec::new();
    for n in 0..8 {
        let r = alice.send_message(&conv, &format!("r{n}"), "x").await;
        codes.push(if r["ok"] == true {
            "ok".to_owned()
        } else {
            r["error"]["code"].as_str().unwrap().to_owned()
        });
    }
    assert_eq!(codes[..4], ["ok", "ok", "ok", "ok"]);
    assert!(codes[4..].iter().all(|c| c == "rate_limited"), "{codes:?}");

    // The limit is the user's, not the socket's: a second connection does not reset it.
    let mut again = env.connect(&gw, "alice").await;
    let r = again.send_message(&conv, "r-second", "x").await;
    assert_eq!(r["error"]["code"], "rate_limited", "{r}");

    // Keep hammering without reading: the connection is closed as a flood.
    for n in 0..400 {
        alice
            .send_frame(&json!({"type": "sync", "id": 1000 + n, "data": {"conversations": []}}))
            .await;
    }
    let (code, reason) = alice.closed().await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("flood"), "{reason}");
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_the_connection_with_1009() {
    let env = TestEnv::with_settings(&[("PARLEY_MAX_FRAME_BYTES", "2048")]).await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let big = json!({"type": "sync", "data": {"pad": "y".repeat(4096)}});
    alice.send_frame(&big).await;
    let (code, _) = alice.closed().await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn a_user_over_the_connection_cap_is_refused_with_429() {
    let env = TestEnv::with_settings(&[("PARLEY_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let gw = env.spawn_gateway().await;
    let _one = env.connect(&gw, "alice").await;
    let _two = env.connect(&gw, "alice").await;
    let url = format!("ws://{}/ws?token={}", gw.addr(), env.token("alice", 600));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    // Another user is not affected.
    let _bob = env.connect(&gw, "bob").await;
}
