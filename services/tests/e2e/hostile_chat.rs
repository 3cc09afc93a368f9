//! Hostile clients against the chat (issue 15, findings 3 and 4): replies too large for NATS,
//! control characters, REST without limits, conversations of a thousand members.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::{TestEnv, WsClient, eventually};

/// The longest legal content at the default limit that weighs the most as JSON: 4,000
/// characters of four bytes each (16,000 bytes). A hundred of them are 1.6 MB, past NATS's
/// 1 MiB payload.
fn heaviest_content() -> String {
    "😀".repeat(4_000)
}

/// Settings that keep this test's own traffic clear of the rate limit.
const FAST: [(&str, &str); 2] = [
    ("PARLEY_SEND_RATE", "10000"),
    ("PARLEY_SEND_BURST", "10000"),
];

async fn ok(client: &mut WsClient, event: &str, data: Value) -> Value {
    let reply = client.request(event, data.clone()).await;
    assert_eq!(reply["ok"], true, "{event} {data} -> {reply}");
    reply
}

fn seqs(messages: &Value) -> Vec<i64> {
    messages
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect()
}

/// Waits until `n` messages of `conversation` are stored.
async fn stored(env: &TestEnv, conversation: &str, n: usize) {
    eventually(|| async { (env.stored(conversation).await.len() >= n).then_some(()) }).await;
}

/// Finding 3: a hundred messages of the heaviest legal content made `message:history` and
/// `sync` answer `unavailable` for ever (the reply passed NATS's max payload), and seventy
/// conversations with such a last message did the same to `conversation:list`. Each page now
/// stops early with `hasMore`, and paging reaches every message and conversation, over the
/// socket and over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_of_the_heaviest_messages_stop_early_with_has_more_and_every_message_is_reachable() {
    let env = TestEnv::with_settings(&FAST).await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let content = heaviest_content();

    let dm = alice.open_dm("bob").await;
    const N: i64 = 100;
    for i in 1..=N {
        ok(
            &mut alice,
            "message:send",
            json!({"conversationId": dm, "clientMsgId": format!("h-{i}"), "content": content}),
        )
        .await;
    }
    stored(&env, &dm, N as usize).await;

    // history, newest first page by page, over the socket.
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    let mut pages = 0;
    loop {
        let reply = ok(
            &mut alice,
            "message:history",
            json!({"conversationId": dm, "limit": 200, "beforeSeq": before}),
        )
        .await;
        let page = seqs(&reply["messages"]);
        assert!(!page.is_empty(), "a page always makes progress: {reply}");
        assert!(page.windows(2).all(|w| w[0] + 1 == w[1]), "{page:?}");
        assert!(
            reply["messages"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["content"] == content.as_str())
        );
        pages += 1;
        seen.splice(0..0, page.iter().copied());
        before = Some(page[0]);
        if reply["hasMore"] == false {
            break;
        }
        assert!(pages < 100, "history never ends");
    }
    assert!(pages >= 2, "a 1.6 MB history came in one page");
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());

    // The same over HTTP.
    let http = reqwest::Client::new();
    let base = format!("http://{}", gw.addr());
    let token = env.token("alice", 600);
    let mut over_http = Vec::new();
    let mut query = String::new();
    loop {
        let r = http
            .get(format!(
                "{base}/api/conversations/{dm}/messages?limit=200{query}"
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let reply: Value = r.json().await.unwrap();
        let page = seqs(&reply["messages"]);
        assert!(!page.is_empty(), "a page always makes progress: {reply}");
        over_http.splice(0..0, page.iter().copied());
        if reply["hasMore"] == false {
            break;
        }
        query = format!("&beforeSeq={}", page[0]);
        assert!(over_http.len() < 1_000, "history over HTTP never ends");
    }
    assert_eq!(over_http, seen);

    // sync from the start, page by page.
    let mut after = 0;
    let mut synced = Vec::new();
    let mut pages = 0;
    loop {
        let reply = ok(
            &mut alice,
            "sync",
            json!({"conversations": [{"conversationId": dm, "afterSeq": after}], "limit": 1000}),
        )
        .await;
        let page = seqs(&reply["messages"]);
        assert!(!page.is_empty(), "a page always makes progress: {reply}");
        pages += 1;
        after = *page.last().unwrap();
        synced.extend(page);
        if reply["hasMore"] == false {
            break;
        }
        assert!(pages < 100, "sync never ends");
    }
    assert!(pages >= 2, "a 1.6 MB sync came in one page");
    assert_eq!(synced, (1..=N).collect::<Vec<_>>());

    // Seventy groups, each with the heaviest last message: the list is 1.1 MB.
    let mut groups = BTreeSet::from([dm.clone()]);
    for i in 0..70 {
        let reply = ok(
            &mut alice,
            "conversation:open",
            json!({"participantIds": ["bob", "carol"], "title": format!("g{i}")}),
        )
        .await;
        let id = reply["conversation"]["id"].as_str().unwrap().to_owned();
        ok(
            &mut alice,
            "message:send",
            json!({"conversationId": id, "clientMsgId": format!("g-{i}"), "content": content}),
        )
        .await;
        groups.insert(id);
    }
    for id in &groups {
        stored(&env, id, 1).await;
    }
    let mut listed = BTreeSet::new();
    let mut cursor = Value::Null;
    let mut pages = 0;
    loop {
        let reply = ok(
            &mut alice,
            "conversation:list",
            json!({"limit": 200, "before": cursor}),
        )
        .await;
        let page = reply["conversations"].as_array().unwrap();
        assert!(!page.is_empty(), "a page always makes progress: {reply}");
        pages += 1;
        for c in page {
            assert!(listed.insert(c["id"].as_str().unwrap().to_owned()), "{c}");
        }
        assert_eq!(reply["hasMore"], reply["nextBefore"] != Value::Null);
        if reply["hasMore"] == false {
            break;
        }
        cursor = reply["nextBefore"].clone();
        assert!(pages < 100, "the list never ends");
    }
    assert!(pages >= 2, "a 1.1 MB list came in one page");
    assert_eq!(listed, groups);

    let r = http
        .get(format!("{base}/api/conversations?limit=200"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["hasMore"], true);
    assert!(list["nextBefore"].is_string());
}

/// Finding 3, the other half: 4,000 U+0001 characters (six bytes each as JSON) are refused as
/// content, on the socket and over HTTP, in sends and in edits, with an error naming the rule;
/// tab, line feed and carriage return stay legal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_content_are_refused_everywhere_with_the_rule_named() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let dm = alice.open_dm("bob").await;
    let hostile = "\u{1}".repeat(4_000);

    let reply = alice.send_message(&dm, "c-1", &hostile).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("control characters"), "{message}");
    assert!(message.contains("U+0001"), "{message}");

    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "http://{}/api/conversations/{dm}/messages",
            gw.addr()
        ))
        .bearer_auth(env.token("alice", 600))
        .json(&json!({"content": hostile, "clientMsgId": "c-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid", "{body}");

    // Legal whitespace is content; an edit cannot smuggle an escape sequence in.
    ok(
        &mut alice,
        "message:send",
        json!({"conversationId": dm, "clientMsgId": "c-3", "content": "a\tb\r\nc\n"}),
    )
    .await;
    stored(&env, &dm, 1).await;
    let reply = alice
        .request(
            "message:edit",
            json!({"conversationId": dm, "seq": 1, "content": "\u{1b}[2J gone"}),
        )
        .await;
    assert_eq!(reply["error"]["code"], "invalid", "{reply}");

    let stored = env.stored(&dm).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].3, "a\tb\r\nc\n");
}

/// Finding 4: 300 HTTP sends at once were all accepted. Now they spend the user's request
/// budget: past it they are 429 `rate_limited` with a `Retry-After` of at least a second, the
/// other routes share the budget, and every send that got 202 is stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_sends_past_the_rate_limit_get_429_with_retry_after_and_none_accepted_is_lost() {
    // A burst of 20, then one request per 100 s: nothing refills while the test runs, so what
    // is accepted does not depend on how fast this machine answers.
    // 300 connections at once from one address: past the HTTP server's per-address cap, which
    // is not what this test is about.
    let env = TestEnv::with_settings(&[
        ("PARLEY_SEND_RATE", "0.01"),
        ("PARLEY_SEND_BURST", "20"),
        ("PARLEY_MAX_CONNECTIONS_PER_ADDRESS", "0"),
    ])
    .await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let dm = alice.open_dm("bob").await;

    let http = reqwest::Client::new();
    let url = format!("http://{}/api/conversations/{dm}/messages", gw.addr());
    let token = env.token("alice", 600);
    let sends = (0..300).map(|i| {
        let request = http
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({"content": format!("flood {i}"), "clientMsgId": format!("f-{i}")}));
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().expect("whole seconds"));
            let body: Value = r.json().await.unwrap();
            (i, status, retry_after, body)
        }
    });
    let answers = futures::future::join_all(sends).await;

    let mut accepted = BTreeSet::new();
    let mut limited = 0;
    for (i, status, retry_after, body) in answers {
        match status {
            202 => {
                accepted.insert(format!("f-{i}"));
            }
            429 => {
                limited += 1;
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
            }
            other => panic!("send {i}: {other} {body}"),
        }
    }
    assert!(limited > 0, "300 sends at once were all accepted");
    assert!(!accepted.is_empty());
    assert!(
        accepted.len() <= 21,
        "{} accepted past a burst of 20",
        accepted.len()
    );

    // The other routes spend the same budget, which is now empty.
    let r = http
        .get(format!("http://{}/api/conversations", gw.addr()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));

    // Every accepted send is stored, once; nothing refused is.
    stored(&env, &dm, accepted.len()).await;
    let stored: BTreeSet<String> = env
        .stored(&dm)
        .await
        .into_iter()
        .map(|(_, _, client_msg_id, _)| client_msg_id)
        .collect();
    assert_eq!(stored, accepted);
}

async fn count(env: &TestEnv, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Finding 4: a conversation opened with 1,000 participant ids wrote 1,000 members. Now past
/// `PARLEY_MAX_MEMBERS` (default 256) it is refused as `invalid`, over HTTP and over the socket,
/// before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_of_a_thousand_participants_is_refused_and_nothing_is_written() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    // 1,000 ids, the caller's among them: 1,000 members, which the old cap let through.
    let ids: Vec<String> = std::iter::once("alice".to_owned())
        .chain((1..1_000).map(|i| format!("u{i}")))
        .collect();

    let r = reqwest::Client::new()
        .post(format!("http://{}/api/conversations", gw.addr()))
        .bearer_auth(env.token("alice", 600))
        .json(&json!({"participantIds": ids, "title": "everyone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("256"),
        "{body}"
    );

    let mut alice = env.connect(&gw, "alice").await;
    let reply = alice
        .request(
            "conversation:open",
            json!({"participantIds": ids, "title": "everyone"}),
        )
        .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid");
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("256"),
        "{reply}"
    );

    // Just over the cap, counting the caller, is refused too.
    let over: Vec<String> = (0..256).map(|i| format!("u{i}")).collect();
    let reply = alice
        .request("conversation:open", json!({"participantIds": over}))
        .await;
    assert_eq!(reply["error"]["code"], "invalid", "{reply}");

    assert_eq!(count(&env, "conversations").await, 0);
    assert_eq!(count(&env, "conversation_members").await, 0);
}

/// Finding 4: `member:add` cannot push a group past the cap either, however it is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_never_pushes_a_group_past_the_member_cap() {
    let env = TestEnv::with_settings(&[("PARLEY_MAX_MEMBERS", "3")]).await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let reply = ok(
        &mut alice,
        "conversation:open",
        json!({"participantIds": ["bob", "carol"], "title": "three"}),
    )
    .await;
    let group = reply["conversation"]["id"].as_str().unwrap().to_owned();

    let reply = alice
        .request(
            "member:add",
            json!({"conversationId": group, "userId": "dave"}),
        )
        .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 3 members"),
        "{reply}"
    );
    // Room again once someone leaves.
    ok(
        &mut alice,
        "member:remove",
        json!({"conversationId": group, "userId": "carol"}),
    )
    .await;
    let reply = ok(
        &mut alice,
        "member:add",
        json!({"conversationId": group, "userId": "dave"}),
    )
    .await;
    assert_eq!(
        reply["conversation"]["participantIds"],
        json!(["alice", "bob", "dave"])
    );
    assert_eq!(count(&env, "conversation_members").await, 3);
}
