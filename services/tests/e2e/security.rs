//! Who may connect, and who may see what.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{SECRET, TestEnv, WsClient, token_with};

/// The HTTP status of a refused upgrade.
async fn upgrade_status(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> u16 {
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected upgrade failure: {e}"),
    }
}

#[tokio::test]
async fn a_missing_expired_or_wrongly_signed_token_gets_401_at_the_upgrade() {
    let env = TestEnv::new().await;
    let gw = env.spawn_gateway().await;
    let base = format!("ws://{}/ws", gw.addr());

    let missing = base.clone().into_client_request().unwrap();
    assert_eq!(upgrade_status(missing).await, 401);

    let expired = format!("{base}?token={}", env.token("alice", -120))
        .into_client_request()
        .unwrap();
    assert_eq!(upgrade_status(expired).await, 401);

    let forged = token_with("alice", 3600, "some-other-secret-entirely-000");
    let wrong = format!("{base}?token={forged}")
        .into_client_request()
        .unwrap();
    assert_eq!(upgrade_status(wrong).await, 401);

    let mut tampered = env.token("alice", 3600);
    tampered.insert(tampered.len() - 2, 'x');
    let tampered = format!("{base}?token={tampered}")
        .into_client_request()
        .unwrap();
    assert_eq!(upgrade_status(tampered).await, 401);

    let bad_sub = token_with("alice.>", 3600, SECRET);
    let bad_sub = format!("{base}?token={bad_sub}")
        .into_client_request()
        .unwrap();
    assert_eq!(upgrade_status(bad_sub).await, 401);

    // The header form works, and so does the right token in it.
    let mut ok = base.clone().into_client_request().unwrap();
    ok.headers_mut().insert(
        "authorization",
        format!("Bearer {}", env.token("alice", 3600))
            .parse()
            .unwrap(),
    );
    assert_eq!(upgrade_status(ok).await, 101);
    let mut bad = base.into_client_request().unwrap();
    bad.headers_mut()
        .insert("authorization", format!("Bearer {forged}").parse().unwrap());
    assert_eq!(upgrade_status(bad).await, 401);
}

#[tokio::test]
async fn a_non_participant_cannot_send_to_read_or_sync_a_conversation_and_learns_nothing() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut mallory = env.connect(&gw, "mallory").await;
    let conv = alice.open_dm("bob").await;
    alice.send_message(&conv, "secret-1", "for bob only").await;
    // Stored once alice hears of it (every device of the sender is told).
    alice.messages(&conv, 1).await;
    let missing = uuid::Uuid::now_v7().to_string();

    for target in [&conv, &missing] {
        let send = mallory.send_message(target, "m-1", "let me in").await;
        let history = mallory
            .request("message:history", json!({"conversationId": target}))
            .await;
        let sync = mallory
            .request(
                "sync",
                json!({"conversations": [{"conversationId": target, "afterSeq": 0}]}),
            )
            .await;
        for reply in [&send, &history, &sync] {
            // An existing conversation and a made-up id read exactly the same.
            assert_eq!(
                reply,
                &json!({"ok": false, "error": {"code": "forbidden", "message": "you are not a member of this conversation"}})
            );
        }
    }
    // Asking for a conversation one is in together with one one is not is refused whole.
    let own = mallory.open_dm("trent").await;
    let mixed = mallory
        .request(
            "sync",
            json!({"conversations": [
            {"conversationId": own, "afterSeq": 0}, {"conversationId": conv, "afterSeq": 0}]}),
        )
        .await;
    assert_eq!(mixed["error"]["code"], "forbidden");

    assert_eq!(
        env.stored(&conv).await.len(),
        1,
        "nothing of mallory's was stored"
    );
    // And mallory received nothing of the conversation. Sync point: a message of the
    // conversation sent now has reached alice, and after it one of mallory's own has reached
    // mallory; anything of the conversation sent her way would have come before (one
    // persistence, one connection, events in the order published).
    alice.send_message(&conv, "secret-2", "still for bob").await;
    alice.next_message_is(&conv, "secret-2").await;
    let ack = mallory.send_message(&own, "own-1", "to trent").await;
    assert_eq!(ack["ok"], true, "{ack}");
    mallory.next_message_is(&own, "own-1").await;
    assert_eq!(mallory.buffered_messages_of(&conv), 0);
}

#[tokio::test]
async fn a_send_forged_straight_onto_the_stream_by_a_non_member_is_refused_by_persistence() {
    // The gateway's membership check is a cache; persistence is the authority.
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut mallory = env.connect(&gw, "mallory").await;
    let conv = alice.open_dm("bob").await;
    let js = async_nats::jetstream::new(env.nats().await);
    let command = json!({"conversationId": conv, "senderId": "mallory", "clientMsgId": "sneaky",
                         "content": "hi", "acceptedAt": chrono::Utc::now()});
    env.publish_command(&js, &conv, command.to_string()).await;
    let err = mallory.wait_for(|f| f["type"] == "error").await;
    assert_eq!(err["data"]["code"], "forbidden");
    assert_eq!(err["data"]["clientMsgId"], "sneaky");
    assert!(env.stored(&conv).await.is_empty());
}

/// The `exp` of a token this test minted, read back from the token itself.
fn exp_of(token: &str) -> i64 {
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .expect("a token of ours")
        .claims["exp"]
        .as_i64()
        .expect("exp")
}

/// Sleeps until the wall clock is past `exp` (Unix seconds).
async fn sleep_past(exp: i64) {
    let left = exp * 1000 + 100 - chrono::Utc::now().timestamp_millis();
    if left > 0 {
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// The server enforces `exp`: a socket not refreshed is warned, then closed 4001 by itself, not
/// before `exp`; and no frame is served after it. Order, not distance: nothing here depends on
/// how quickly a loaded machine runs it.
#[tokio::test]
async fn a_connection_not_refreshed_is_closed_at_exp_and_served_nothing_after() {
    let env = TestEnv::new().await;
    let gw = env.spawn_gateway().await;
    let token = env.token("alice", 5);
    let exp = exp_of(&token);
    let mut alice = WsClient::connect(gw.addr(), &token).await;
    // A second socket, silent until after exp.
    let late_token = env.token("alice", 5);
    let mut late = WsClient::connect(gw.addr(), &late_token).await;
    // Warned first (the token is already inside the warning window)...
    let warning = alice.wait_for(|f| f["type"] == "token:expiring").await;
    assert_eq!(warning["data"]["exp"], exp);
    // ...then closed, by the server, not before exp.
    let (code, reason) = alice.closed().await;
    let closed_at_ms = chrono::Utc::now().timestamp_millis();
    assert_eq!((code, reason.as_str()), (4001, "token expired"));
    assert!(
        closed_at_ms >= exp * 1000,
        "closed {} ms before exp",
        exp * 1000 - closed_at_ms
    );

    // The second socket speaks only after its exp: no answer, only the close.
    sleep_past(exp_of(&late_token)).await;
    // (The write may fail: the server may have closed the socket already.)
    late.try_send_frame(&json!({"type": "presence:get", "id": 1, "data": {"userIds": ["bob"]}}))
        .await;
    let frames = late.received_until_closed().await;
    assert_eq!(late.closed.as_ref().map(|c| c.0), Some(4001));
    assert!(
        !frames.iter().any(|f| f["type"] == "ack"),
        "a request was served after exp: {frames:?}"
    );
}

#[tokio::test]
async fn a_connection_refreshed_before_exp_stays_open() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    // Long enough to be refreshed in time on any runner; the test then waits it out.
    let short = env.token("alice", 10);
    let mut alice = WsClient::connect(gw.addr(), &short).await;
    let warning = alice.wait_for(|f| f["type"] == "token:expiring").await;
    assert_eq!(warning["data"]["exp"], exp_of(&short));

    let fresh = env.token("alice", 3600);
    let reply = alice
        .request("auth:refresh", json!({ "token": fresh }))
        .await;
    assert_eq!(reply, json!({"ok": true, "exp": exp_of(&fresh)}));

    // Past the first token's exp, the connection still serves.
    sleep_past(exp_of(&short)).await;
    alice.open_dm("bob").await;
    assert_eq!(alice.closed, None);
}

#[tokio::test]
async fn auth_refresh_with_a_bad_or_foreign_token_is_refused_and_changes_nothing() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let token = env.token("alice", 10);
    let exp = exp_of(&token);
    let mut alice = WsClient::connect(gw.addr(), &token).await;

    let refused =
        json!({"ok": false, "error": {"code": "unauthenticated", "message": "token refused"}});
    let forged = token_with("alice", 3600, "some-other-secret-entirely-000");
    let mut tampered = env.token("alice", 3600);
    tampered.insert(tampered.len() - 2, 'x');
    for bad in [
        forged,
        tampered,
        env.token("alice", -2),
        "not a token".into(),
    ] {
        let reply = alice.request("auth:refresh", json!({ "token": bad })).await;
        assert_eq!(reply, refused);
    }
    let bobs = env.token("bob", 3600);
    let reply = alice
        .request("auth:refresh", json!({ "token": bobs }))
        .await;
    assert_eq!(
        reply,
        json!({"ok": false, "error": {"code": "forbidden", "message": "token is for another user"}})
    );
    let reply = alice.request("auth:refresh", json!({})).await;
    assert_eq!(reply["error"]["code"], "invalid");

    // The connection is still up and still alice's...
    let conv = alice.open_dm("bob").await;
    assert_eq!(
        alice.send_message(&conv, "r-1", "still here").await["ok"],
        true
    );
    // ...and still ends at the first token's exp: none of the refused tokens' hours were
    // granted. A request after it is not served; the socket is closed 4001.
    sleep_past(exp).await;
    alice
        .try_send_frame(&json!({"type": "presence:get", "id": 99, "data": {"userIds": ["bob"]}}))
        .await;
    let frames = alice.received_until_closed().await;
    assert_eq!(alice.closed.as_ref().map(|c| c.0), Some(4001));
    assert!(
        !frames.iter().any(|f| f["type"] == "ack" && f["id"] == 99),
        "served after exp: {frames:?}"
    );
}

/// A session token from the real `@auth/core` `encode()`, as a Next.js app sets it.
fn authjs_token(user: &str, secret: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/authjs");
    let params = json!({"secret": secret, "salt": "authjs.session-token", "token": {"sub": user}, "maxAge": 3600});
    let out = std::process::Command::new("node")
        .arg("encode.mjs")
        .arg(params.to_string())
        .current_dir(&dir)
        .output()
        .expect("run node (npm ci in services/tests/fixtures/authjs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_browser_signed_in_to_a_next_js_app_connects_with_its_auth_js_cookie() {
    let env = TestEnv::with_settings(&[("AUTH_TOKEN_KINDS", "hs256,authjs")]).await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let base = format!("ws://{}/ws", gw.addr());

    let session = authjs_token("alice", SECRET);
    let mut request = base.clone().into_client_request().unwrap();
    request.headers_mut().insert(
        "cookie",
        format!("theme=dark; authjs.session-token={session}")
            .parse()
            .unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("cookie accepted");
    let mut alice = WsClient::from_stream(ws);
    let conv = alice.open_dm("bob").await;
    let ack = alice
        .send_message(&conv, "c1", "from a Next.js session")
        .await;
    assert_eq!(ack["ok"], true);
    assert_eq!(alice.messages(&conv, 1).await[0]["senderId"], "alice");

    // The same token as a bearer token (what socket.io's auth.token carries) works too.
    let mut bearer = base.clone().into_client_request().unwrap();
    bearer.headers_mut().insert(
        "authorization",
        format!("Bearer {session}").parse().unwrap(),
    );
    assert_eq!(upgrade_status(bearer).await, 101);

    // A session cookie of another app (another secret) is refused.
    let foreign = authjs_token("alice", "a-different-next-app-secret-0000");
    let mut request = base.into_client_request().unwrap();
    request.headers_mut().insert(
        "cookie",
        format!("authjs.session-token={foreign}").parse().unwrap(),
    );
    assert_eq!(upgrade_status(request).await, 401);
}
