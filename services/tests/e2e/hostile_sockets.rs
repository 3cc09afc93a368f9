//! Hostile clients against the sockets, on `/ws` and on Socket.IO (the real socket.io-client,
//! `services/tests/fixtures/sioclient/hostile.mjs`, or a raw Engine.IO socket): floods of every
//! client event, clients that stop reading, typing floods, too many sockets from one address, a
//! Socket.IO client that piles up requests, and a socket refreshed onto another session.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use parley_gateway::protocol::CLIENT_EVENTS;

use crate::helpers::{Role, TestEnv, WsClient, browser, eventually};

/// A tight limit, so a flood is quick: 2 frames of burst, then 5 refusals, then the close.
const TIGHT: [(&str, &str); 3] = [
    ("PARLEY_SEND_RATE", "0.1"),
    ("PARLEY_SEND_BURST", "2"),
    ("PARLEY_FLOOD_STRIKES", "5"),
];

/// No rate limit to speak of, for tests about something else.
const UNLIMITED: [(&str, &str); 2] = [
    ("PARLEY_SEND_RATE", "100000"),
    ("PARLEY_SEND_BURST", "100000"),
];

/// Runs a scenario of `hostile.mjs` against `gw` as the holder of `token`; returns its report.
async fn sio(gw: SocketAddr, token: &str, args: &[&str]) -> Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sioclient");
    let out = tokio::process::Command::new("node")
        .arg("hostile.mjs")
        .args(args)
        .current_dir(&dir)
        .env("GW", format!("http://{gw}"))
        .env("TOKEN", token)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run node (npm ci in services/tests/fixtures/sioclient)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON report")
}

#[tokio::test]
async fn every_client_event_past_the_limit_is_rate_limited_then_closed_as_a_flood_on_ws() {
    let env = TestEnv::with_settings(&TIGHT).await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let floods = CLIENT_EVENTS.iter().enumerate().map(|(i, event)| {
        let token = env.token(&format!("ws-flooder-{i}"), 600);
        let addr = gw.addr();
        async move {
            let mut client = WsClient::connect(addr, &token).await;
            for n in 0..40 {
                let frame = json!({"type": event, "id": n, "data": {"n": n}});
                if !client.try_send_frame(&frame).await {
                    break;
                }
            }
            let frames = client.received_until_closed().await;
            (*event, frames, client.closed.clone())
        }
    });
    for (event, frames, closed) in futures::future::join_all(floods).await {
        let refused = frames
            .iter()
            .filter(|f| f["type"] == "ack" && f["data"]["error"]["code"] == "rate_limited")
            .count();
        assert_eq!(refused, 5, "{event}: {frames:?}");
        assert_eq!(
            closed,
            Some((1008, "flood: too many frames".to_owned())),
            "{event}"
        );
    }
}

#[tokio::test]
async fn every_client_event_past_the_limit_is_rate_limited_then_closed_as_a_flood_on_socketio() {
    let env = TestEnv::with_settings(&TIGHT).await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let floods = CLIENT_EVENTS.iter().enumerate().map(|(i, event)| {
        let token = env.token(&format!("sio-flooder-{i}"), 600);
        let addr = gw.addr();
        async move { (*event, sio(addr, &token, &["flood", event, "40"]).await) }
    });
    for (event, report) in futures::future::join_all(floods).await {
        let acks = report["acks"].as_array().expect("acks");
        let refused = acks.iter().filter(|a| *a == "rate_limited").count();
        assert_eq!(refused, 5, "{event}: {report}");
        assert_eq!(
            report["errors"],
            json!([{"code": "rate_limited", "message": "flood: too many frames", "closeCode": 1008}]),
            "{event}"
        );
        assert_eq!(report["disconnect"], "io server disconnect", "{event}");
    }
}

/// `name{labels} value` of a Prometheus text exposition, 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Sends `message:send`s of 4,000 characters into `conversation` from a socket whose replies
/// are read by a task of their own, in batches, until `done` says so; returns how many.
async fn push_until<F, Fut>(sender: WsClient, conversation: &str, mut done: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let (mut sink, mut stream) = sender.into_inner().split();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let content = "x".repeat(4_000);
    let mut sent = 0;
    for _batch in 0..40 {
        for _ in 0..100 {
            sent += 1;
            let frame = json!({"type": "message:send", "id": sent, "data": {
                "conversationId": conversation, "clientMsgId": format!("push-{sent}"), "content": content}});
            sink.send(Ws::text(frame.to_string())).await.expect("send");
        }
        if done().await {
            reader.abort();
            return sent;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the condition never came true after {sent} messages");
}

/// A gateway (a real process) whose only way to drop a client that stops reading is the write
/// deadline (2 s; Engine.IO's ping every 2 s), with persistence, and Alice in a DM with Bob.
async fn stalling_world(env: &TestEnv) -> (Role, Role, WsClient, String) {
    let settings = [
        ("PARLEY_WRITE_TIMEOUT_SECONDS", "2".to_owned()),
        ("PARLEY_SOCKETIO_PING_SECONDS", "2".to_owned()),
        // The queue would hold everything.
        ("PARLEY_OUTBOUND_QUEUE", "1000000".to_owned()),
        ("PARLEY_SEND_RATE", "100000".to_owned()),
        ("PARLEY_SEND_BURST", "100000".to_owned()),
    ];
    let persistence = Role::start(env, "persistence", &[]).await;
    let gw = Role::start(env, "gateway", &settings).await;
    let mut alice = WsClient::connect(gw.addr(), &env.token("alice", 600)).await;
    let conv = alice.open_dm("bob").await;
    (persistence, gw, alice, conv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ws_client_that_stops_reading_is_dropped_at_the_write_deadline() {
    let env = TestEnv::new().await;
    let (_persistence, gw, alice, conv) = stalling_world(&env).await;
    // Bob connects and never reads again.
    let bob = WsClient::connect(gw.addr(), &env.token("bob", 600)).await;
    let dropped = r#"parley_connections_closed_total{transport="ws",reason="write_timeout"}"#;
    let url = gw.metrics_url();
    push_until(alice, &conv, || {
        let url = url.clone();
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            metric(&text, dropped) >= 1.0
        }
    })
    .await;
    // Bob's socket is gone: what he reads now ends without everything that was sent.
    let frames = tokio::time::timeout(Duration::from_secs(30), async move {
        let mut ws = bob.into_inner();
        let mut n = 0usize;
        while let Some(Ok(_)) = ws.next().await {
            n += 1;
        }
        n
    })
    .await
    .expect("the dropped socket ends");
    assert!(frames > 0);
}

/// A raw Engine.IO websocket that authenticates as Socket.IO does, then is never read again
/// (nor does it answer Engine.IO's pings).
async fn stalled_socketio(addr: SocketAddr, token: &str) -> impl Sized + use<> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let open = ws.next().await.expect("open").expect("open");
    assert!(open.to_text().unwrap().starts_with('0'), "{open:?}");
    let auth = format!("40{}", json!({"token": token}));
    ws.send(Ws::text(auth)).await.unwrap();
    // Engine.IO may ping before the connect is answered: answer until connected.
    loop {
        let packet = ws.next().await.expect("connect").expect("connect");
        match packet.to_text().unwrap() {
            "2" => ws.send(Ws::text("3")).await.unwrap(),
            text => {
                assert!(text.starts_with("40"), "{text}");
                break;
            }
        }
    }
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_client_that_stops_reading_is_dropped_by_the_heartbeat() {
    let env = TestEnv::new().await;
    let (_persistence, gw, mut alice, conv) = stalling_world(&env).await;
    let _bob = stalled_socketio(gw.addr(), &env.token("bob", 600)).await;
    let open = r#"parley_connections{transport="socketio"}"#;
    let url = gw.metrics_url();
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, open), 1.0, "{text}");
    // Events for Bob go out; he reads none of them, nor Engine.IO's pings.
    for n in 0..5 {
        let sent = alice
            .send_message(&conv, &format!("unread-{n}"), "hi")
            .await;
        assert_eq!(sent["ok"], true, "{sent}");
    }
    eventually(|| {
        let url = url.clone();
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            (metric(&text, open) == 0.0).then_some(())
        }
    })
    .await;
}

/// The `typing` events `client` receives within `wait` of each other.
async fn typing_seen(client: &mut WsClient, from: &str) -> Vec<bool> {
    let (frames, _) = client.poll_frames(Duration::from_millis(2_500)).await;
    frames
        .iter()
        .filter(|f| f["type"] == "typing" && f["data"]["userId"] == from)
        .map(|f| f["data"]["isTyping"].as_bool().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_true_and_false_in_turn_reach_the_others_a_few_times_not_two_hundred() {
    let env = TestEnv::with_settings(&UNLIMITED).await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let conv = alice.open_dm("bob").await;

    // Over /ws: 200 frames in 2 s.
    for n in 0..200 {
        alice
            .send_frame(&json!({"type": "typing", "data": {"conversationId": conv, "isTyping": n % 2 == 0}}))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = typing_seen(&mut bob, "alice").await;
    assert!(!seen.is_empty() && seen.len() <= 4, "{seen:?}");
    assert_eq!(seen.last(), Some(&false), "{seen:?}");

    // Over Socket.IO, the same.
    let conv_carol = {
        let mut carol = env.connect(&gw, "carol").await;
        carol.open_dm("bob").await
    };
    let report = sio(
        gw.addr(),
        &env.token("carol", 600),
        &["typing", "200", &conv_carol],
    )
    .await;
    assert_eq!(report["errors"], json!([]), "{report}");
    let seen = typing_seen(&mut bob, "carol").await;
    assert!(!seen.is_empty() && seen.len() <= 4, "{seen:?}");
    assert_eq!(seen.last(), Some(&false), "{seen:?}");
}

#[tokio::test]
async fn a_member_removed_behind_the_gateways_cache_cannot_start_typing() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut carol = env.connect(&gw, "carol").await;
    let reply = alice
        .request(
            "conversation:open",
            json!({"participantIds": ["bob", "carol"], "title": "g"}),
        )
        .await;
    let group = reply["conversation"]["id"].as_str().unwrap().to_owned();
    // Carol sends, so this gateway caches her as a member.
    let sent = carol.send_message(&group, "c1", "hi").await;
    assert_eq!(sent["ok"], true, "{sent}");
    // Removed in the database directly: no announcement reaches the gateway's cache.
    let id: uuid::Uuid = group.parse().unwrap();
    sqlx::query(
        "delete from conversation_members where conversation_id = $1 and user_id = 'carol'",
    )
    .bind(id)
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("update conversations set participant_ids = array_remove(participant_ids, 'carol') where id = $1")
        .bind(id)
        .execute(&env.pool)
        .await
        .unwrap();
    let r = carol
        .request("typing", json!({"conversationId": group, "isTyping": true}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let seen = typing_seen(&mut alice, "carol").await;
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn one_address_holds_at_most_its_cap_of_sockets_on_either_transport() {
    let env = TestEnv::with_settings(&[("PARLEY_MAX_SOCKETS_PER_ADDRESS", "3")]).await;
    let gw = env.spawn_gateway().await;
    let upgrade = |user: &str| {
        let url = format!("ws://{}/ws?token={}", gw.addr(), env.token(user, 600));
        async move { tokio_tungstenite::connect_async(url).await }
    };
    let handshake = || {
        let url = format!("http://{}/socket.io/?EIO=4&transport=polling", gw.addr());
        async move { reqwest::get(url).await.unwrap().status() }
    };
    let a = upgrade("a").await.expect("first");
    let _b = upgrade("b").await.expect("second");
    let _c = upgrade("c").await.expect("third");
    let refused = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status() == 429,
        _ => false,
    };
    assert!(
        refused(upgrade("d").await),
        "a fourth socket from one address"
    );
    assert_eq!(handshake().await, 429, "nor a Socket.IO handshake");
    // A socket that closes gives its place back.
    drop(a);
    let d = eventually(|| async { upgrade("d").await.ok() }).await;
    // An Engine.IO handshake, not yet authenticated, holds a place too (for the connect
    // timeout, 10 s).
    drop(d);
    eventually(|| async { (handshake().await == 200).then_some(()) }).await;
    assert!(
        refused(upgrade("e").await),
        "a socket beside a pending handshake"
    );
}

#[tokio::test]
async fn a_socketio_client_piling_up_requests_while_its_others_run_is_closed_as_a_flood() {
    let env = TestEnv::with_settings(&UNLIMITED).await;
    let gw = env.spawn_gateway().await;
    // A persistence that takes every request and answers none: requests stay in flight.
    let nats = env.nats().await;
    let subjects = parley_common::subjects::Subjects::new(&env.prefix).unwrap();
    let _silent = nats
        .queue_subscribe(format!("{}.>", subjects.rpc_chat_group()), "silent".into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let report = sio(
        gw.addr(),
        &env.token("piler", 600),
        &[
            "flood",
            "message:history",
            "400",
            &json!({"conversationId": uuid::Uuid::now_v7()}).to_string(),
        ],
    )
    .await;
    assert_eq!(
        report["errors"],
        json!([{"code": "rate_limited", "message": "flood: too many frames", "closeCode": 1008}]),
        "{report}"
    );
    assert_eq!(report["disconnect"], "io server disconnect", "{report}");
}

#[tokio::test]
async fn a_socket_refreshed_onto_another_session_closes_when_that_session_signs_out() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let base = format!("http://{}", gw.addr());
    let origin = base.clone();
    let post = |http: &reqwest::Client, path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .header("origin", &origin)
            .json(&body)
            .send()
    };
    let token = |http: &reqwest::Client| {
        let req = http.get(format!("{base}/api/auth/token")).send();
        async move {
            let r: Value = req.await.unwrap().json().await.unwrap();
            r["token"].as_str().expect("a token").to_owned()
        }
    };
    // One account, signed in on two browsers: two sessions.
    let first = browser();
    let r = post(&first, "/api/auth/register", json!({"username": "dora", "email": "dora@example.com", "password": "correct horse battery"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let second = browser();
    let r = post(
        &second,
        "/api/auth/login",
        json!({"username": "dora", "password": "correct horse battery"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // Connected with the first session's token, refreshed with the second's.
    let socket_token = token(&first).await;
    let mut socket = WsClient::connect(gw.addr(), &socket_token).await;
    let second_token = token(&second).await;
    let r = socket
        .request("auth:refresh", json!({"token": second_token}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    // Signing out of the first session no longer concerns it. Once the gateway has taken the
    // sign-out in (its token is refused), the socket still answers.
    let r = post(&first, "/api/auth/logout", json!({})).await.unwrap();
    assert!(r.status().is_success(), "{r:?}");
    let url = format!("ws://{}/ws?token={socket_token}", gw.addr());
    eventually(|| {
        let url = url.clone();
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
    let r = socket
        .request("auth:refresh", json!({"token": second_token}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    // ...signing out of the second ends it.
    let r = post(&second, "/api/auth/logout", json!({})).await.unwrap();
    assert!(r.status().is_success(), "{r:?}");
    assert_eq!(socket.closed().await, (4002, "signed out".to_owned()));
}

/// A herd of connects past the gateway's connect rate (`PARLEY_CONNECT_RATE`, here 1 a second
/// and a burst of one): those past it are answered 503 `unavailable` before their token is
/// looked at, each told a later `Retry-After` than the one before, so they come back spread
/// out; a Socket.IO handshake is held to the same rate; and a refused client that comes back
/// is let in.
#[tokio::test]
async fn connects_past_the_connect_rate_are_told_when_to_come_back_each_later() {
    let env = TestEnv::with_settings(&[("PARLEY_CONNECT_RATE", "1")]).await;
    let gw = env.spawn_gateway().await;
    let upgrade = |user: String| {
        let url = format!("ws://{}/ws?token={}", gw.addr(), env.token(&user, 600));
        async move { tokio_tungstenite::connect_async(url).await }
    };
    let herd = futures::future::join_all((0..12).map(|i| upgrade(format!("h{i}")))).await;
    let mut admitted = 0;
    let mut waits = Vec::new();
    for attempt in herd {
        match attempt {
            Ok(_) => admitted += 1,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 503);
                let body: Value =
                    serde_json::from_slice(r.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
                let secs: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                waits.push(secs);
            }
            Err(e) => panic!("unexpected upgrade failure: {e}"),
        }
    }
    // Twelve at once at one a second: however slow this machine, most wait.
    assert!(
        admitted >= 1 && !waits.is_empty(),
        "admitted {admitted}, refused {waits:?}"
    );
    waits.sort_unstable();
    assert!(waits[0] >= 1, "{waits:?}");
    assert!(
        waits.windows(2).all(|w| w[0] < w[1]),
        "each refusal is told a later time: {waits:?}"
    );
    // Socket.IO's handshake opens a session: the same gate.
    let handshake = reqwest::get(format!(
        "http://{}/socket.io/?EIO=4&transport=polling",
        gw.addr()
    ))
    .await
    .unwrap();
    assert_eq!(handshake.status(), 503);
    assert!(handshake.headers().contains_key("retry-after"));
    // Coming back when told, a client is let in.
    eventually(|| async { upgrade("late".into()).await.ok() }).await;
}
