//! The chat around the pipeline (issue 5): conversations and groups, read state, edits and
//! deletes, typing, presence, recovery, across gateways and devices.

use serde_json::{Value, json};

use crate::helpers::{TestEnv, WsClient};

async fn ok(client: &mut WsClient, event: &str, data: Value) -> Value {
    let reply = client.request(event, data.clone()).await;
    assert_eq!(reply["ok"], true, "{event} {data} -> {reply}");
    reply
}

/// The caller's view of one conversation in `conversation:list`.
async fn listed(client: &mut WsClient, conversation: &str) -> Value {
    let list = ok(client, "conversation:list", json!({"limit": 200})).await;
    list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == conversation)
        .cloned()
        .unwrap_or_else(|| panic!("{conversation} not listed in {list}"))
}

async fn history(client: &mut WsClient, conversation: &str) -> Vec<Value> {
    let reply = ok(
        client,
        "message:history",
        json!({"conversationId": conversation, "limit": 200}),
    )
    .await;
    reply["messages"].as_array().unwrap().clone()
}

/// Show 1: a DM and a group of five on two gateways, one user on two devices. After a scripted
/// conversation every member and device agrees on the list, history, unread counts and read
/// receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dm_and_a_group_of_five_agree_for_every_member_and_device() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let g1 = env.spawn_gateway().await;
    let g2 = env.spawn_gateway().await;
    // alice has a phone on one gateway and a laptop on the other.
    let mut alice_phone = env.connect(&g1, "alice").await;
    let mut alice_laptop = env.connect(&g2, "alice").await;
    let mut bob = env.connect(&g2, "bob").await;
    let mut carol = env.connect(&g1, "carol").await;
    let mut dave = env.connect(&g2, "dave").await;
    let mut erin = env.connect(&g1, "erin").await;

    // The DM: the same pair always gets the same conversation, from either side.
    let dm = alice_phone.open_dm("bob").await;
    assert_eq!(bob.open_dm("alice").await, dm);
    // The group: every member hears of it on every device.
    let reply = ok(
        &mut carol,
        "conversation:open",
        json!({"participantIds": ["alice", "bob", "dave", "erin"], "title": "Five"}),
    )
    .await;
    let group = reply["conversation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(reply["conversation"]["kind"], "group");
    for c in [
        &mut alice_phone,
        &mut alice_laptop,
        &mut bob,
        &mut carol,
        &mut dave,
        &mut erin,
    ] {
        let ev = c
            .wait_for(|f| f["type"] == "conversation:new" && f["data"]["id"] == group.as_str())
            .await;
        assert_eq!(ev["data"]["participantIds"].as_array().unwrap().len(), 5);
    }

    // The script: three DMs from alice, one back from bob, then a round in the group.
    for i in 1..=3 {
        ok(
            &mut alice_phone,
            "message:send",
            json!({"conversationId": dm, "clientMsgId": format!("a-dm-{i}"), "content": format!("hi {i}")}),
        )
        .await;
    }
    ok(
        &mut bob,
        "message:send",
        json!({"conversationId": dm, "clientMsgId": "b-dm-1", "content": "hey"}),
    )
    .await;
    // Everyone has the DM live, in order, on every device. (Stored, so the group's round
    // comes after it: conversations in different partitions are written independently, and
    // "accepted" is not "stored".)
    for c in [&mut alice_phone, &mut alice_laptop, &mut bob] {
        let got = c.messages(&dm, 4).await;
        let seqs: Vec<i64> = got.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }
    for (client, who) in [
        (&mut alice_laptop, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
        (&mut dave, "dave"),
        (&mut erin, "erin"),
    ] {
        ok(
            client,
            "message:send",
            json!({"conversationId": group, "clientMsgId": format!("{who}-g-1"), "content": format!("{who} here")}),
        )
        .await;
    }
    for c in [
        &mut alice_phone,
        &mut alice_laptop,
        &mut bob,
        &mut carol,
        &mut dave,
        &mut erin,
    ] {
        let got = c.messages(&group, 5).await;
        let seqs: Vec<i64> = got.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }

    // Unread before anyone reads: what others sent.
    assert_eq!(listed(&mut bob, &dm).await["unreadCount"], 3);
    assert_eq!(listed(&mut alice_phone, &dm).await["unreadCount"], 1);
    assert_eq!(listed(&mut alice_laptop, &dm).await["unreadCount"], 1);
    assert_eq!(listed(&mut dave, &group).await["unreadCount"], 4);

    // bob reads the DM up to 3 (alice's messages); alice reads bob's on her laptop; the group
    // is read to the end by carol and, on her phone, by alice.
    ok(
        &mut bob,
        "message:read",
        json!({"conversationId": dm, "seq": 3}),
    )
    .await;
    ok(
        &mut alice_laptop,
        "message:read",
        json!({"conversationId": dm, "seq": 4}),
    )
    .await;
    ok(
        &mut carol,
        "message:read",
        json!({"conversationId": group, "seq": 5}),
    )
    .await;
    ok(
        &mut alice_phone,
        "message:read",
        json!({"conversationId": group, "seq": 5}),
    )
    .await;

    // Receipts reach the other members and the reader's other devices.
    for c in [&mut alice_phone, &mut alice_laptop] {
        let r = c
            .wait_for(|f| f["type"] == "message:read" && f["data"]["userId"] == "bob")
            .await;
        assert_eq!(r["data"]["seq"], 3);
        assert_eq!(r["data"]["conversationId"], dm.as_str());
    }
    let r = bob
        .wait_for(|f| {
            f["type"] == "message:read"
                && f["data"]["userId"] == "alice"
                && f["data"]["conversationId"] == dm.as_str()
        })
        .await;
    assert_eq!(r["data"]["seq"], 4);
    alice_phone
        .wait_for(|f| {
            f["type"] == "message:read"
                && f["data"]["userId"] == "alice"
                && f["data"]["conversationId"] == dm.as_str()
        })
        .await;
    for c in [&mut bob, &mut dave, &mut erin, &mut alice_laptop] {
        c.wait_for(|f| {
            f["type"] == "message:read"
                && f["data"]["userId"] == "carol"
                && f["data"]["conversationId"] == group.as_str()
        })
        .await;
    }

    // Every device of every member now agrees.
    let dm_history = history(&mut bob, &dm).await;
    for c in [&mut alice_phone, &mut alice_laptop] {
        assert_eq!(history(c, &dm).await, dm_history);
    }
    // readAt: set on what the reader read, in a DM, and only there.
    let read_at: Vec<bool> = dm_history.iter().map(|m| !m["readAt"].is_null()).collect();
    assert_eq!(read_at, [true, true, true, true]);
    let group_history = history(&mut carol, &group).await;
    assert!(group_history.iter().all(|m| m["readAt"].is_null()));
    for c in [
        &mut alice_phone,
        &mut alice_laptop,
        &mut bob,
        &mut dave,
        &mut erin,
    ] {
        assert_eq!(history(c, &group).await, group_history);
    }
    async fn agrees(c: &mut WsClient, conversation: &str, unread: i64, last_seq: i64) {
        let l = listed(c, conversation).await;
        assert_eq!(l["unreadCount"], unread, "{l}");
        assert_eq!(l["lastSeq"], last_seq, "{l}");
        assert_eq!(l["lastMessage"]["seq"], last_seq, "{l}");
    }
    for c in [&mut alice_phone, &mut alice_laptop, &mut bob] {
        agrees(c, &dm, 0, 4).await;
    }
    for c in [&mut alice_phone, &mut alice_laptop, &mut carol] {
        agrees(c, &group, 0, 5).await;
    }
    for c in [&mut bob, &mut dave, &mut erin] {
        agrees(c, &group, 4, 5).await;
    }
    // The list is newest first: the group had the last message.
    let list = ok(&mut erin, "conversation:list", json!({})).await;
    assert_eq!(list["conversations"][0]["id"], group.as_str());
    let list = ok(&mut bob, "conversation:list", json!({})).await;
    let order: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, [group.as_str(), dm.as_str()]);

    // A read position never moves back, and a stale receipt says nothing. Commands of one
    // conversation are applied in order, and its events reach a member in that order: once
    // alice's next message (sent after bob's stale receipt was accepted) has reached both, the
    // receipt has been applied, and any event it made would have reached alice before it.
    let bob_read = |f: &Value| {
        f["type"] == "message:read"
            && f["data"]["userId"] == "bob"
            && f["data"]["conversationId"] == dm.as_str()
    };
    alice_phone.discard(bob_read);
    ok(
        &mut bob,
        "message:read",
        json!({"conversationId": dm, "seq": 1}),
    )
    .await;
    let next = alice_phone
        .send_message(&dm, "after-stale", "one more")
        .await;
    assert_eq!(next["ok"], true, "{next}");
    for c in [&mut alice_phone, &mut bob] {
        c.wait_for(|f| f["type"] == "message:new" && f["data"]["clientMsgId"] == "after-stale")
            .await;
    }
    assert_eq!(
        alice_phone.buffered_count_where(bob_read),
        0,
        "a stale receipt was announced"
    );
    let l = listed(&mut bob, &dm).await;
    assert_eq!(l["unreadCount"], 1, "only the new message is unread: {l}");
}

/// The list pages newest first by an opaque cursor, with nothing missed or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_list_pages_newest_first() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut opened = Vec::new();
    for i in 0..7 {
        opened.push(alice.open_dm(&format!("friend{i}")).await);
    }
    // A message moves the oldest to the top.
    alice.send_message(&opened[0], "m1", "back to you").await;
    alice.messages(&opened[0], 1).await;
    let mut seen = Vec::new();
    let mut before = Value::Null;
    loop {
        let mut data = json!({"limit": 3});
        if !before.is_null() {
            data["before"] = before.clone();
        }
        let page = ok(&mut alice, "conversation:list", data).await;
        for c in page["conversations"].as_array().unwrap() {
            seen.push(c["id"].as_str().unwrap().to_owned());
        }
        before = page["nextBefore"].clone();
        if before.is_null() {
            break;
        }
    }
    let mut want = vec![opened[0].clone()];
    want.extend(opened[1..].iter().rev().cloned());
    assert_eq!(seen, want);
    let bad = alice
        .request("conversation:list", json!({"before": "yesterday"}))
        .await;
    assert_eq!(bad["error"]["code"], "invalid", "{bad}");
}

/// Show 3: a client away for 1,000 messages gets all of them from `sync`, in order, paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_away_for_a_thousand_messages_gets_them_all_from_sync() {
    let env = TestEnv::with_settings(&[
        ("PARLEY_SEND_RATE", "100000"),
        ("PARLEY_SEND_BURST", "100000"),
    ])
    .await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let dm = alice.open_dm("bob").await;
    alice.send_message(&dm, "before", "seen live").await;
    let seen = bob.messages(&dm, 1).await;
    let last_seen = seen[0]["seq"].as_i64().unwrap();
    drop(bob);

    // Pipelined, 100 at a time, reading the acks (and the echoes) in between as a live client
    // does: one that stops reading is closed as too slow once its queue is full.
    let acks = alice
        .send_pipelined(&dm, 0..1000, 100, |i| {
            (format!("away-{i}"), format!("n{i}"))
        })
        .await;
    for ack in acks {
        assert_eq!(ack["data"]["ok"], true, "{ack}");
    }
    // All stored (alice hears each one back).
    alice.messages(&dm, 1001).await;

    let mut bob = env.connect(&gw, "bob").await;
    let mut after = last_seen;
    let mut got = Vec::new();
    loop {
        let page = ok(
            &mut bob,
            "sync",
            json!({"conversations": [{"conversationId": dm, "afterSeq": after}]}),
        )
        .await;
        let messages = page["messages"].as_array().unwrap();
        for m in messages {
            got.push(m["content"].as_str().unwrap().to_owned());
            after = m["seq"].as_i64().unwrap();
        }
        if page["hasMore"] == false {
            break;
        }
        assert!(!messages.is_empty(), "hasMore with an empty page");
    }
    let want: Vec<String> = (0..1000).map(|i| format!("n{i}")).collect();
    assert_eq!(got, want);
    assert_eq!(after, 1001);

    // History pages backwards to the very first message, each page in order.
    let mut before: Option<i64> = None;
    let mut pages: Vec<Vec<i64>> = Vec::new();
    loop {
        let mut data = json!({"conversationId": dm, "limit": 200});
        if let Some(b) = before {
            data["beforeSeq"] = json!(b);
        }
        let page = ok(&mut bob, "message:history", data).await;
        let seqs: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect();
        let Some(&first) = seqs.first() else { break };
        before = Some(first);
        pages.push(seqs);
    }
    assert_eq!(pages.len(), 6);
    let all: Vec<i64> = pages.into_iter().rev().flatten().collect();
    assert_eq!(all, (1..=1001).collect::<Vec<i64>>());
}

/// Edits and deletes by the sender reach everyone as `message:updated`; nobody else may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_edit_and_delete_their_own_messages() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let dm = alice.open_dm("bob").await;
    alice.send_message(&dm, "m1", "helo").await;
    alice.send_message(&dm, "m2", "oops").await;
    bob.messages(&dm, 2).await;

    let edited = ok(
        &mut alice,
        "message:edit",
        json!({"conversationId": dm, "seq": 1, "content": "hello"}),
    )
    .await;
    assert_eq!(edited["message"]["content"], "hello");
    assert!(!edited["message"]["editedAt"].is_null());
    let ev = bob.wait_for(|f| f["type"] == "message:updated").await;
    assert_eq!(ev["data"], edited["message"]);

    ok(
        &mut alice,
        "message:delete",
        json!({"conversationId": dm, "seq": 2}),
    )
    .await;
    let ev = bob
        .wait_for(|f| f["type"] == "message:updated" && f["data"]["seq"] == 2)
        .await;
    assert_eq!(ev["data"]["content"], "");
    assert!(!ev["data"]["deletedAt"].is_null());
    // Deleting again is a no-op; editing a deleted message is not possible.
    ok(
        &mut alice,
        "message:delete",
        json!({"conversationId": dm, "seq": 2}),
    )
    .await;
    let r = alice
        .request(
            "message:edit",
            json!({"conversationId": dm, "seq": 2, "content": "back"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");

    // Not bob's to change; no such seq.
    for (event, data) in [
        (
            "message:edit",
            json!({"conversationId": dm, "seq": 1, "content": "mine now"}),
        ),
        ("message:delete", json!({"conversationId": dm, "seq": 1})),
    ] {
        let r = bob.request(event, data).await;
        assert_eq!(r["error"]["code"], "forbidden", "{event} {r}");
    }
    let r = alice
        .request("message:delete", json!({"conversationId": dm, "seq": 99}))
        .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");

    // The rows and their seqs stay; history shows the change.
    let h = history(&mut bob, &dm).await;
    let view: Vec<(i64, &str, bool)> = h
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().unwrap(),
                m["content"].as_str().unwrap(),
                m["deletedAt"].is_null(),
            )
        })
        .collect();
    assert_eq!(view, [(1, "hello", true), (2, "", false)]);
    // A deleted message is not unread.
    assert_eq!(listed(&mut bob, &dm).await["unreadCount"], 1);
}

/// Group membership: a member adds and removes; a removed member gets nothing afterwards and
/// may read nothing; a newcomer starts with nothing unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_come_and_go_and_a_removed_member_sees_nothing_after() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let g1 = env.spawn_gateway().await;
    let g2 = env.spawn_gateway().await;
    let mut alice = env.connect(&g1, "alice").await;
    let mut bob = env.connect(&g2, "bob").await;
    let mut carol = env.connect(&g2, "carol").await;
    let mut dave = env.connect(&g1, "dave").await;
    let reply = ok(
        &mut alice,
        "conversation:open",
        json!({"participantIds": ["bob", "carol"], "title": "Trio"}),
    )
    .await;
    let group = reply["conversation"]["id"].as_str().unwrap().to_owned();
    alice.send_message(&group, "m1", "one").await;
    carol.messages(&group, 1).await;
    // carol typed on g2 (her gateway caches the members); bob removes her there.
    ok(
        &mut carol,
        "typing",
        json!({"conversationId": group, "isTyping": true}),
    )
    .await;
    let removed = ok(
        &mut bob,
        "member:remove",
        json!({"conversationId": group, "userId": "carol"}),
    )
    .await;
    assert_eq!(
        removed["conversation"]["participantIds"],
        json!(["alice", "bob"])
    );
    let ev = carol
        .wait_for(|f| f["type"] == "conversation:updated")
        .await;
    assert_eq!(ev["data"]["participantIds"], json!(["alice", "bob"]));
    alice
        .wait_for(|f| f["type"] == "conversation:updated")
        .await;

    // dave joins and starts with nothing unread.
    let added = ok(
        &mut alice,
        "member:add",
        json!({"conversationId": group, "userId": "dave"}),
    )
    .await;
    assert_eq!(
        added["conversation"]["participantIds"],
        json!(["alice", "bob", "dave"])
    );
    dave.wait_for(|f| f["type"] == "conversation:new" && f["data"]["id"] == group.as_str())
        .await;
    assert_eq!(listed(&mut dave, &group).await["unreadCount"], 0);

    alice.send_message(&group, "m2", "two").await;
    let two = dave.messages(&group, 1).await;
    assert_eq!(two[0]["content"], "two");
    bob.messages(&group, 2).await;
    // carol: nothing of it, and every way in is shut.
    for (event, data) in [
        ("message:history", json!({"conversationId": group})),
        (
            "sync",
            json!({"conversations": [{"conversationId": group, "afterSeq": 0}]}),
        ),
        (
            "message:send",
            json!({"conversationId": group, "clientMsgId": "c2", "content": "still here?"}),
        ),
        (
            "member:add",
            json!({"conversationId": group, "userId": "carol"}),
        ),
    ] {
        let r = carol.request(event, data).await;
        assert_eq!(r["error"]["code"], "forbidden", "{event} {r}");
    }
    // Sync point: a group message sent now has reached dave, and after it a message of a DM
    // carol is in has reached carol; any group message sent her way would have come before.
    alice.send_message(&group, "m3", "three").await;
    dave.next_message_is(&group, "m3").await;
    let carols = alice.open_dm("carol").await;
    alice
        .send_message(&carols, "to-carol", "still friends")
        .await;
    carol.next_message_is(&carols, "to-carol").await;
    assert_eq!(carol.buffered_messages_of(&group), 0);
    // Only groups change members; removing a non-member is not_found.
    let dm = alice.open_dm("bob").await;
    let r = alice
        .request(
            "member:add",
            json!({"conversationId": dm, "userId": "dave"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid", "{r}");
    let r = alice
        .request(
            "member:remove",
            json!({"conversationId": group, "userId": "carol"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
}

/// Typing reaches the other members, not the typer, and clears by itself without a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_others_and_clears_by_itself() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let mut bob = env.connect(&gw, "bob").await;
    let dm = alice.open_dm("bob").await;
    // Many keystrokes, no id: one announcement.
    for _ in 0..5 {
        alice
            .send_frame(
                &json!({"type": "typing", "data": {"conversationId": dm, "isTyping": true}}),
            )
            .await;
    }
    let on = bob.wait_for(|f| f["type"] == "typing").await;
    assert_eq!(
        on["data"],
        json!({"conversationId": dm, "userId": "alice", "isTyping": true})
    );
    // No refresh: the gateway clears it.
    let off = bob.wait_for(|f| f["type"] == "typing").await;
    assert_eq!(off["data"]["isTyping"], false);
    // An explicit stop is announced at once.
    ok(
        &mut alice,
        "typing",
        json!({"conversationId": dm, "isTyping": true}),
    )
    .await;
    bob.wait_for(|f| f["type"] == "typing" && f["data"]["isTyping"] == true)
        .await;
    ok(
        &mut alice,
        "typing",
        json!({"conversationId": dm, "isTyping": false}),
    )
    .await;
    bob.wait_for(|f| f["type"] == "typing" && f["data"]["isTyping"] == false)
        .await;
    // alice heard none of her own: her own message, sent after, arrives with nothing before.
    alice.send_message(&dm, "sync-point", "x").await;
    alice.messages(&dm, 1).await;
    assert_eq!(alice.buffered_count("typing"), 0);
}

/// Presence: online when connected, offline with lastSeenAt when gone, told to contacts; and
/// show 4: when a gateway process is killed, its users go offline within the TTL by themselves,
/// while a user it shared with a live gateway stays online.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_follows_users_and_a_killed_gateway_takes_its_users_offline() {
    let env = TestEnv::with_settings(&[("PARLEY_PRESENCE_TTL_SECONDS", "2")]).await;
    let _persistence = env.spawn_persistence().await;
    let g1 = env.spawn_gateway().await;
    let g2 = env.spawn_gateway().await;
    let mut bob = env.connect(&g1, "bob").await;
    bob.open_dm("alice").await;
    bob.open_dm("erin").await;
    // Strangers read as never seen, whatever they are: zed is online (yuri, who shares a
    // conversation with him, sees it), and bob, who shares none, learns nothing.
    let mut yuri = env.connect(&g2, "yuri").await;
    yuri.open_dm("zed").await;
    let _zed = env.connect(&g2, "zed").await;
    yuri.wait_for(|f| {
        f["type"] == "presence" && f["data"]["userId"] == "zed" && f["data"]["online"] == true
    })
    .await;
    assert_eq!(presence(&mut yuri, &["zed"]).await[0]["online"], true);
    let stranger = presence(&mut bob, &["zed"]).await;
    assert_eq!(
        stranger[0],
        json!({"userId": "zed", "online": false, "lastSeenAt": null})
    );

    let alice = env.connect(&g2, "alice").await;
    let on = bob
        .wait_for(|f| f["type"] == "presence" && f["data"]["userId"] == "alice")
        .await;
    assert_eq!(on["data"]["online"], true);
    assert_eq!(presence(&mut bob, &["alice"]).await[0]["online"], true);

    // A goodbye: offline at once, with when.
    drop(alice);
    let off = bob
        .wait_for(|f| f["type"] == "presence" && f["data"]["userId"] == "alice")
        .await;
    assert_eq!(off["data"]["online"], false);
    assert!(!off["data"]["lastSeenAt"].is_null());

    // alice on g1 and g3; erin on g3 only.
    let g3 = env.spawn_gateway().await;
    let _alice_g1 = env.connect(&g1, "alice").await;
    let _alice_g3 = env.connect(&g3, "alice").await;
    let _erin = env.connect(&g3, "erin").await;
    for user in ["alice", "erin"] {
        bob.wait_for(|f| {
            f["type"] == "presence" && f["data"]["userId"] == user && f["data"]["online"] == true
        })
        .await;
    }
    // Killed: no goodbye from g3, only silence.
    g3.kill();
    let off = bob
        .wait_for(|f| f["type"] == "presence" && f["data"]["userId"] == "erin")
        .await;
    assert_eq!(off["data"]["online"], false);
    assert!(!off["data"]["lastSeenAt"].is_null());
    let now = presence(&mut bob, &["erin", "alice"]).await;
    assert_eq!(now[0]["online"], false);
    assert_eq!(now[1]["online"], true, "alice is still on g1");
}

async fn presence(client: &mut WsClient, users: &[&str]) -> Vec<Value> {
    let reply = ok(client, "presence:get", json!({"userIds": users})).await;
    reply["presence"].as_array().unwrap().clone()
}
