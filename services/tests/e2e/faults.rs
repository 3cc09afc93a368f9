//! Crashes, outages and shutdowns: nothing accepted is lost or stored twice.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::{Proxy, TestEnv, database_url_via, eventually, postgres_addr};

fn seq_set(messages: &[Value]) -> BTreeSet<i64> {
    messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn persistence_killed_mid_stream_and_restarted_stores_every_accepted_message_once() {
    let env = TestEnv::with_settings(&[
        ("PARLEY_SEND_RATE", "100000"),
        ("PARLEY_SEND_BURST", "100000"),
    ])
    .await;
    let persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let conv = alice.open_dm("bob").await;

    const TOTAL: usize = 600;
    // Alice streams her sends, 50 in flight at a time, reading as a live client does.
    let sender = tokio::spawn({
        let conv = conv.clone();
        async move {
            let acks = alice
                .send_pipelined(&conv, 0..TOTAL, 50, |n| (format!("k{n}"), format!("m{n}")))
                .await;
            (0..TOTAL)
                .zip(acks)
                .filter(|(_, ack)| ack["data"]["ok"] == true)
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        }
    });
    // Bob reads as a live client does (one that stops reading is dropped once its queue is
    // full). Redelivered commands may be announced again (with their original seq): count
    // distinct.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn({
        let conv = conv.clone();
        async move {
            let mut seen = BTreeSet::new();
            let mut first_tx = Some(first_tx);
            while seen.len() < TOTAL {
                let m = bob.wait_for(|f| f["type"] == "message:new").await;
                assert_eq!(m["data"]["conversationId"], conv.as_str());
                seen.insert(m["data"]["seq"].as_i64().unwrap());
                if seen.len() == 50 {
                    let _ = first_tx.take().map(|tx| tx.send(()));
                }
            }
            seen
        }
    });
    // Kill persistence once the first messages are through, in the middle of the stream.
    first_rx.await.expect("the first 50 arrived");
    persistence.kill();
    let accepted = sender.await.unwrap();
    assert_eq!(
        accepted.len(),
        TOTAL,
        "JetStream accepts while persistence is down"
    );

    let _persistence = env.spawn_persistence().await;
    let seen = reader.await.unwrap();
    assert_eq!(seen, (1..=TOTAL as i64).collect::<BTreeSet<_>>());
    let stored = env.stored(&conv).await;
    assert_eq!(
        stored.len(),
        TOTAL,
        "every accepted message stored exactly once"
    );
    assert_eq!(
        stored.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=TOTAL as i64).collect::<Vec<_>>()
    );
    let keys: BTreeSet<_> = stored.iter().map(|r| r.2.clone()).collect();
    assert_eq!(keys.len(), TOTAL);
    assert!(seen.iter().all(|s| (1..=TOTAL as i64).contains(s)));
}

#[tokio::test]
async fn with_postgres_down_sends_are_accepted_then_stored_and_delivered_when_it_returns() {
    let env = TestEnv::new().await;
    let proxy = Proxy::start(postgres_addr()).await;
    let persistence = env
        .spawn_persistence_with(
            env.env()
                .with("DATABASE_URL", database_url_via(&env, &proxy)),
        )
        .await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let conv = alice.open_dm("bob").await;
    alice
        .send_message(&conv, "before", "before the outage")
        .await;
    bob.messages(&conv, 1).await;

    proxy.cut();
    for n in 0..20 {
        let ack = alice
            .send_message(&conv, &format!("during-{n}"), &format!("during {n}"))
            .await;
        assert_eq!(ack["ok"], true, "accepted while Postgres is down: {ack}");
    }
    // A read receipt waits in the stream too; an edit, which must answer with the stored
    // message, says `unavailable` (retry) rather than pretend.
    let read = bob
        .request("message:read", json!({"conversationId": conv, "seq": 1}))
        .await;
    assert_eq!(read["ok"], true, "{read}");
    let edit = alice
        .request(
            "message:edit",
            json!({"conversationId": conv, "seq": 1, "content": "edited"}),
        )
        .await;
    assert_eq!(edit["error"]["code"], "unavailable", "{edit}");
    // Postgres really was out of reach for persistence: nothing new is stored yet.
    assert_eq!(env.stored(&conv).await.len(), 1);

    proxy.restore();
    let receipt = alice.wait_for(|f| f["type"] == "message:read").await;
    assert_eq!(receipt["data"]["userId"], "bob");
    assert_eq!(receipt["data"]["seq"], 1);
    let got = bob.messages(&conv, 20).await;
    assert_eq!(seq_set(&got), (2..=21).collect());
    let stored = env.stored(&conv).await;
    assert_eq!(
        stored.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=21).collect::<Vec<_>>()
    );
    drop(persistence);
}

#[tokio::test]
async fn sends_are_accepted_with_no_persistence_running_and_stored_once_it_starts() {
    let env = TestEnv::new().await;
    let persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let conv = alice.open_dm("bob").await;
    persistence.stop().await;

    for n in 0..10 {
        let ack = alice.send_message(&conv, &format!("q{n}"), "queued").await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let _persistence = env.spawn_persistence().await;
    let got = alice.messages(&conv, 10).await;
    assert_eq!(seq_set(&got), (1..=10).collect());
    assert_eq!(env.stored(&conv).await.len(), 10);
}

#[tokio::test]
async fn a_draining_gateway_tells_clients_to_reconnect_and_closes() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let addr = gw.addr();
    let stopping = tokio::spawn(gw.stop());
    let event = alice.wait_for(|f| f["type"] == "server:draining").await;
    let after = event["data"]["reconnectAfterMs"].as_u64().expect("a delay");
    assert!(after < 5_000, "{event}");
    let (code, reason) = alice.closed().await;
    assert_eq!(code, 1001, "{reason}");
    stopping.await.unwrap();
    // And it takes no new connections.
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/ws?token={}",
        env.token("alice", 60)
    ))
    .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn a_command_that_can_never_succeed_goes_to_the_dead_letter_stream_with_its_reason() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let js = async_nats::jetstream::new(env.nats().await);
    let conv = uuid::Uuid::now_v7();
    env.publish_command(&js, &conv, "{not json".to_owned())
        .await;

    let subjects = parley_common::subjects::Subjects::new(&env.prefix).unwrap();
    let stream = js.get_stream(subjects.stream_dlq()).await.unwrap();
    let message = eventually(|| async {
        stream
            .get_last_raw_message_by_subject(&subjects.dlq())
            .await
            .ok()
    })
    .await;
    assert_eq!(&message.payload[..], b"{not json");
    let reason = message
        .headers
        .get(parley_persistence::consumer::DLQ_REASON_HEADER)
        .expect("a reason header")
        .to_string();
    assert!(reason.starts_with("malformed command"), "{reason}");
    // And it left the work queue.
    eventually(|| {
        let (js, name) = (js.clone(), subjects.stream_in());
        async move {
            let mut stream = js.get_stream(name).await.ok()?;
            (stream.info().await.ok()?.state.messages == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_stored_command_that_fails_checks_is_dead_lettered_and_its_sender_told() {
    // A command that got past a gateway (an older one, or a forged publish) with content
    // Postgres cannot hold: never silently lost, and the sender learns which message failed.
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let conv = alice.open_dm("bob").await;
    let js = async_nats::jetstream::new(env.nats().await);
    let command = json!({"conversationId": conv, "senderId": "alice", "clientMsgId": "nul-1",
                         "content": "a\u{0}b", "acceptedAt": chrono::Utc::now()});
    env.publish_command(&js, &conv, command.to_string()).await;
    let err = alice.wait_for(|f| f["type"] == "error").await;
    assert_eq!(err["data"]["code"], "invalid");
    assert_eq!(err["data"]["clientMsgId"], "nul-1");
    let subjects = parley_common::subjects::Subjects::new(&env.prefix).unwrap();
    let stream = js.get_stream(subjects.stream_dlq()).await.unwrap();
    let dead = eventually(|| async {
        stream
            .get_last_raw_message_by_subject(&subjects.dlq())
            .await
            .ok()
    })
    .await;
    let reason = dead
        .headers
        .get(parley_persistence::consumer::DLQ_REASON_HEADER)
        .unwrap()
        .to_string();
    assert!(reason.contains("NUL"), "{reason}");
    assert!(env.stored(&conv).await.is_empty());
}

/// NATS itself killed -9 and started again two seconds later, on its own store, under open
/// sockets: while it is away a send is answered `unavailable` (and the client retries it); once
/// it is back every socket is told `server:resync` (deliveries announced meanwhile may have
/// missed it), the retried send is stored once and delivered, and typing and presence work
/// again.
#[tokio::test]
async fn nats_killed_and_restarted_under_open_sockets_resyncs_them_and_everything_comes_back() {
    use crate::helpers::{NatsServer, free_port, pinned_nats_server};
    let (bin, dir, port) = (pinned_nats_server(), NatsServer::scratch_dir(), free_port());
    let config = format!(
        "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n",
        dir.join("js").display().to_string()
    );
    let mut nats = NatsServer::start(&bin, &dir, port, &config).await;
    let env = TestEnv::on_nats(&nats.url, &[]).await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let conv = alice.open_dm("bob").await;
    let first = alice
        .send_message(&conv, "before", "before the outage")
        .await;
    assert_eq!(first["ok"], true, "{first}");
    bob.wait_for(|f| f["type"] == "message:new" && f["data"]["seq"] == 1)
        .await;

    nats.kill().await;
    let send = json!({"conversationId": conv, "clientMsgId": "during", "content": "during"});
    let refused = alice.request("message:send", send.clone()).await;
    assert_eq!(refused["error"]["code"], "unavailable", "{refused}");

    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    nats.restart().await;
    // Every socket, still open, is told to sync.
    alice.wait_for(|f| f["type"] == "server:resync").await;
    bob.wait_for(|f| f["type"] == "server:resync").await;

    // The client retries its send with the same clientMsgId until it is accepted.
    let mut accepted = Value::Null;
    for _ in 0..100 {
        accepted = alice.request("message:send", send.clone()).await;
        if accepted["ok"] == true {
            break;
        }
        assert_eq!(accepted["error"]["code"], "unavailable", "{accepted}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(accepted["ok"], true, "{accepted}");
    let delivered = bob
        .wait_for(|f| f["type"] == "message:new" && f["data"]["clientMsgId"] == "during")
        .await;
    assert_eq!(delivered["data"]["seq"], 2);
    let stored = eventually(|| {
        let env = &env;
        let conv = conv.clone();
        async move {
            let rows = env.stored(&conv).await;
            (rows.len() == 2).then_some(rows)
        }
    })
    .await;
    assert_eq!(stored[1].2, "during", "stored once, in order: {stored:?}");

    // Typing and presence run over the broker too: they are back.
    alice
        .send_frame(&json!({"type": "typing", "data": {"conversationId": conv, "isTyping": true}}))
        .await;
    let typing = bob.wait_for(|f| f["type"] == "typing").await;
    assert_eq!(typing["data"]["userId"], "alice");
    let presence = bob
        .request("presence:get", json!({"userIds": ["alice"]}))
        .await;
    assert_eq!(presence["presence"][0]["online"], true, "{presence}");
}

/// A query that waited in the queue past its deadline is dropped unanswered (its caller has
/// told its client `unavailable` and the client is retrying), and counted; one still within
/// it is answered, as is one without a deadline (an older gateway).
#[tokio::test]
async fn a_query_past_its_deadline_is_dropped_and_counted() {
    use parley_common::rpc::{DEADLINE_HEADER, DEADLINE_SLACK_MS, deadline_ms};
    use parley_common::subjects::{ChatOp, Subjects};

    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let nats = env.nats().await;
    let subject = Subjects::new(&env.prefix).unwrap().rpc_chat(ChatOp::Sync);
    let body = json!({"userId": "alice", "conversations": []}).to_string();
    let now = chrono::Utc::now().timestamp_millis();
    let late = now - parley_common::rpc::REQUEST_TIMEOUT.as_millis() as i64 - DEADLINE_SLACK_MS - 1;
    let with_deadline = |deadline: i64| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(DEADLINE_HEADER, deadline.to_string().as_str());
        headers
    };

    // The stale request's answer, if any, would come to this inbox.
    let inbox = nats.new_inbox();
    let mut stale_replies = nats.subscribe(inbox.clone()).await.unwrap();
    nats.publish_with_reply_and_headers(
        subject.clone(),
        inbox,
        with_deadline(deadline_ms(late)),
        body.clone().into(),
    )
    .await
    .unwrap();
    // Behind it on the same endpoint: one within its deadline and one with none.
    for headers in [
        with_deadline(deadline_ms(now)),
        async_nats::HeaderMap::new(),
    ] {
        let reply = nats
            .request_with_headers(subject.clone(), headers, body.clone().into())
            .await
            .expect("an answer within the deadline");
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let metrics = parley_common::metrics::encode();
    assert!(
        metrics.contains("parley_rpc_requests_shed_total{role=\"parley-persistence\"} 1"),
        "{metrics}"
    );
    assert!(
        futures::FutureExt::now_or_never(futures::StreamExt::next(&mut stale_replies)).is_none(),
        "the stale request was answered"
    );
}
