//! The happy path, ordering, and idempotency.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::TestEnv;

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn two_users_on_two_gateways_exchange_messages_both_ways_in_seq_order() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw_a = env.spawn_gateway().await;
    let gw_b = env.spawn_gateway().await;
    let mut alice = env.connect(&gw_a, "alice").await;
    let mut bob = env.connect(&gw_b, "bob").await;

    let conv = alice.open_dm("bob").await;
    // The same pair gets the same conversation, whoever opens it.
    assert_eq!(bob.open_dm("alice").await, conv);

    for i in 0..5 {
        let ack = alice
            .send_message(&conv, &format!("a{i}"), &format!("hello {i}"))
            .await;
        assert_eq!(
            ack,
            json!({"ok": true, "clientMsgId": format!("a{i}"), "conversationId": conv, "status": "accepted"})
        );
        let ack = bob
            .send_message(&conv, &format!("b{i}"), &format!("hi {i}"))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }

    // Each side sees all ten (its own too, for its other devices), once each, in seq order.
    let at_bob = bob.messages(&conv, 10).await;
    let at_alice = alice.messages(&conv, 10).await;
    assert_eq!(seqs(&at_bob), (1..=10).collect::<Vec<_>>());
    assert_eq!(seqs(&at_alice), (1..=10).collect::<Vec<_>>());
    assert_eq!(at_alice, at_bob);

    let from_alice: Vec<_> = at_bob
        .iter()
        .filter(|m| m["senderId"] == "alice")
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(
        from_alice,
        (0..5)
            .map(|i| json!(format!("hello {i}")))
            .collect::<Vec<_>>()
    );

    // The rows carry the seed's fields.
    let first = &at_bob[0];
    assert_eq!(first["readAt"], Value::Null);
    assert!(
        first["createdAt"].as_str().unwrap().ends_with('Z'),
        "{first}"
    );
    let row: (
        Option<chrono::DateTime<chrono::Utc>>,
        chrono::DateTime<chrono::Utc>,
        String,
    ) = sqlx::query_as("select read_at, created_at, content from messages where id = $1::uuid")
        .bind(first["id"].as_str().unwrap())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(row.0, None);
    assert_eq!(serde_json::to_value(row.1).unwrap(), first["createdAt"]);
    assert_eq!(env.stored(&conv).await.len(), 10);

    // History returns the same messages in order; paging backwards works.
    let page = bob
        .request(
            "message:history",
            json!({"conversationId": conv, "limit": 4}),
        )
        .await;
    assert_eq!(
        seqs(page["messages"].as_array().unwrap()),
        vec![7, 8, 9, 10]
    );
    let page = bob
        .request(
            "message:history",
            json!({"conversationId": conv, "beforeSeq": 7, "limit": 4}),
        )
        .await;
    assert_eq!(seqs(page["messages"].as_array().unwrap()), vec![3, 4, 5, 6]);

    // Nothing extra arrived: the next message bob gets is one sent now.
    alice.send_message(&conv, "marker", "the last").await;
    bob.next_message_is(&conv, "marker").await;
}

#[tokio::test]
async fn four_concurrent_senders_get_contiguous_seqs_and_everyone_sees_all_2000() {
    let env = TestEnv::with_settings(&[
        ("PARLEY_SEND_RATE", "100000"),
        ("PARLEY_SEND_BURST", "100000"),
    ])
    .await;
    let _persistence = env.spawn_persistence().await;
    let gw_a = env.spawn_gateway().await;
    let gw_b = env.spawn_gateway().await;
    let users = ["u1", "u2", "u3", "u4"];
    let mut opener = env.connect(&gw_a, "u1").await;
    let reply = opener
        .request(
            "conversation:open",
            json!({"participantIds": users, "title": "load"}),
        )
        .await;
    let conv = reply["conversation"]["id"].as_str().unwrap().to_owned();
    // A socket that would not read the 2,000 deliveries coming its way goes: it would be
    // closed as too slow, by design.
    drop(opener);

    // A reader for each user, on alternating gateways.
    let mut readers = Vec::new();
    for (i, u) in users.iter().enumerate() {
        readers.push(env.connect(if i % 2 == 0 { &gw_a } else { &gw_b }, u).await);
    }

    // Readers read as the messages come, as live clients do: one that stops reading is
    // dropped once its queue is full.
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            let conv = conv.clone();
            tokio::spawn(async move { reader.messages(&conv, 2000).await })
        })
        .collect();

    let mut senders = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mut client = env.connect(if i % 2 == 0 { &gw_b } else { &gw_a }, u).await;
        let conv = conv.clone();
        let u = (*u).to_owned();
        senders.push(tokio::spawn(async move {
            // Pipelined, 50 frames at a time, reading in between as a live client does (one
            // that stops reading is dropped once its queue is full).
            let acks = client
                .send_pipelined(&conv, 0..500, 50, |n| {
                    (format!("{u}-{n}"), format!("{u} {n}"))
                })
                .await;
            for ack in acks {
                assert_eq!(ack["data"]["ok"], true, "{ack}");
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }

    for reader in readers {
        let got = reader.await.unwrap();
        assert_eq!(seqs(&got), (1..=2000).collect::<Vec<_>>());
    }
    let stored = env.stored(&conv).await;
    assert_eq!(
        stored.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=2000).collect::<Vec<_>>()
    );
    // Each sender's own messages keep the order they were sent in.
    for u in users {
        let mine: Vec<usize> = stored
            .iter()
            .filter(|r| r.1 == u)
            .map(|r| r.2.rsplit('-').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(mine, (0..500).collect::<Vec<_>>(), "{u}'s order");
    }
}

#[tokio::test]
async fn a_client_msg_id_sent_three_times_is_stored_once_and_every_answer_names_it() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let conv = alice.open_dm("bob").await;

    let mut acks = Vec::new();
    for _ in 0..3 {
        acks.push(alice.send_message(&conv, "retry-1", "once only").await);
    }
    for ack in &acks {
        assert_eq!(
            ack,
            &json!({"ok": true, "clientMsgId": "retry-1", "conversationId": conv, "status": "accepted"})
        );
    }
    // A later message proves the pipeline has moved past the retries.
    alice.send_message(&conv, "after", "next").await;
    let got = bob.messages(&conv, 2).await;
    assert_eq!(got[0]["clientMsgId"], "retry-1");
    assert_eq!(got[1]["clientMsgId"], "after");
    assert_eq!(seqs(&got), vec![1, 2]);
    let stored = env.stored(&conv).await;
    assert_eq!(stored.len(), 2);
}

#[tokio::test]
async fn a_duplicate_past_the_broker_dedupe_is_reannounced_with_its_original_id_and_seq() {
    // The broker drops retries inside its dedupe window; this one bypasses it (another
    // Nats-Msg-Id), as a retry after the window would, so persistence itself must catch it.
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let conv = alice.open_dm("bob").await;
    alice.send_message(&conv, "m1", "original").await;
    let first = bob.messages(&conv, 1).await.remove(0);

    let nats = env.nats().await;
    let js = async_nats::jetstream::new(nats);
    let command = json!({"conversationId": conv, "senderId": "alice", "clientMsgId": "m1",
                         "content": "original", "acceptedAt": chrono::Utc::now()});
    for n in 0..2 {
        js.send_publish(
            format!("{}.in.msg.{conv}", env.prefix),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(command.to_string().into())
                .message_id(format!("bypass-{n}")),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let again = bob.messages(&conv, 2).await;
    for m in &again {
        assert_eq!(m, &first, "re-announced as the original");
    }
    assert_eq!(env.stored(&conv).await.len(), 1);
    let ids: HashSet<_> = again.iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn sync_returns_everything_missed_in_order_paged() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let conv = alice.open_dm("bob").await;
    for i in 0..25 {
        alice
            .send_message(&conv, &format!("s{i}"), &format!("m{i}"))
            .await;
    }
    alice.messages(&conv, 25).await;

    // Bob was away the whole time; he catches up from seq 0 in pages of 10.
    let mut bob = env.connect(&gw, "bob").await;
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let reply = bob
            .request("sync", json!({"conversations": [{"conversationId": conv, "afterSeq": after}], "limit": 10}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        let page = reply["messages"].as_array().unwrap().clone();
        after = page.last().map_or(after, |m| m["seq"].as_i64().unwrap());
        all.extend(page);
        if reply["hasMore"] == false {
            break;
        }
    }
    assert_eq!(seqs(&all), (1..=25).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_send_to_a_user_opens_the_dm_on_the_fly() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let ack = alice
        .request(
            "message:send",
            json!({"to": "bob", "clientMsgId": "x1", "content": "hey"}),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let conv = ack["conversationId"].as_str().unwrap().to_owned();
    let announced = bob.wait_for(|f| f["type"] == "conversation:new").await;
    assert_eq!(announced["data"]["id"], conv.as_str());
    assert_eq!(announced["data"]["kind"], "direct");
    assert_eq!(announced["data"]["participantIds"], json!(["alice", "bob"]));
    let got = bob.messages(&conv, 1).await;
    assert_eq!(got[0]["content"], "hey");
    assert_eq!(alice.open_dm("bob").await, conv);
}

#[tokio::test]
async fn every_socket_of_a_user_gets_each_event_and_one_closing_leaves_the_others_subscribed() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw_a = env.spawn_gateway().await;
    let gw_b = env.spawn_gateway().await;
    let mut alice = env.connect(&gw_a, "alice").await;
    // Bob has two devices on one gateway and a third on the other.
    let mut bob_phone = env.connect(&gw_a, "bob").await;
    let mut bob_laptop = env.connect(&gw_a, "bob").await;
    let mut bob_tablet = env.connect(&gw_b, "bob").await;
    let conv = alice.open_dm("bob").await;

    alice.send_message(&conv, "d1", "to every device").await;
    for device in [&mut bob_phone, &mut bob_laptop, &mut bob_tablet] {
        assert_eq!(device.messages(&conv, 1).await[0]["clientMsgId"], "d1");
    }

    // The phone goes away; the shared subscription stays for the laptop.
    drop(bob_phone);
    alice
        .send_message(&conv, "d2", "after the phone left")
        .await;
    assert_eq!(bob_laptop.messages(&conv, 1).await[0]["clientMsgId"], "d2");
    assert_eq!(bob_tablet.messages(&conv, 1).await[0]["clientMsgId"], "d2");
    // Delivered once per socket: the laptop's next message is the next one sent.
    alice.send_message(&conv, "d3", "and one more").await;
    bob_laptop.next_message_is(&conv, "d3").await;
    bob_tablet.next_message_is(&conv, "d3").await;
}
