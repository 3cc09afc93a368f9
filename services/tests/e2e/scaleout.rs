//! Issue 14: several persistence replicas, each a real `parley persistence` process, write
//! every conversation in stream order, share the partitions evenly, and take over a killed
//! replica's partitions: each sender's messages stored in the order sent, nothing lost or
//! doubled, whatever happens to a replica mid-run.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::helpers::{PATIENCE, Role, TestEnv, WsClient, eventually, free_port, within};

const PAIRS: usize = 20;
const SENDS: usize = 300;

/// What happens to the replicas while the messages flow.
#[derive(Clone, Copy, PartialEq)]
enum MidRun {
    Nothing,
    /// One of three replicas is killed with SIGKILL.
    KillOne,
    /// A third replica joins two.
    StartOne,
}

/// The partitions a replica says it writes, from its `/metrics`.
fn owned(metrics: &str) -> BTreeSet<u16> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("parley_persist_partition_owned{partition=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter(|(_, v)| v.trim() == "1")
        .map(|(p, _)| p.parse().expect("a partition number"))
        .collect()
}

async fn stored_count(env: &TestEnv) -> i64 {
    sqlx::query_scalar("select count(*) from messages")
        .fetch_one(&env.pool)
        .await
        .expect("count messages")
}

/// Three replicas (or two, and a third mid-run) behind two gateways; in each of 20 DMs both
/// members pipeline 300 sends without waiting for acks.
async fn every_sender_stays_in_order(mid_run: MidRun) {
    let env = TestEnv::with_settings(&[
        ("PARLEY_SEND_RATE", "100000"),
        ("PARLEY_SEND_BURST", "100000"),
    ])
    .await;
    let first = if mid_run == MidRun::StartOne { 2 } else { 3 };
    let mut replicas = Vec::new();
    for _ in 0..first {
        replicas.push(Role::start(&env, "persistence", &[]).await);
    }
    let gateways = [env.spawn_gateway().await, env.spawn_gateway().await];

    let mut conversations = Vec::new();
    let mut senders = Vec::new();
    for i in 0..PAIRS {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        let mut ca = env.connect(&gateways[0], &a).await;
        let cb = env.connect(&gateways[1], &b).await;
        let conversation = ca.open_dm(&b).await;
        conversations.push((conversation.clone(), a.clone(), b.clone()));
        senders.push((ca, a, conversation.clone()));
        senders.push((cb, b, conversation));
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(client, user, conversation)| tokio::spawn(pipeline(client, user, conversation)))
        .collect();

    match mid_run {
        MidRun::Nothing => {}
        MidRun::KillOne => {
            eventually(|| async { (stored_count(&env).await >= 2_000).then_some(()) }).await;
            replicas.remove(0).kill().await;
        }
        MidRun::StartOne => {
            eventually(|| async { (stored_count(&env).await >= 2_000).then_some(()) }).await;
            replicas.push(Role::start(&env, "persistence", &[]).await);
        }
    }
    for task in tasks {
        task.await.expect("a sender finished");
    }

    let total = (PAIRS * 2 * SENDS) as i64;
    tokio::time::timeout(PATIENCE * 4, async {
        while stored_count(&env).await < total {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("every accepted message was stored");

    for (conversation, a, b) in &conversations {
        let stored = env.stored(conversation).await;
        let seqs: Vec<i64> = stored.iter().map(|m| m.0).collect();
        assert_eq!(
            seqs,
            (1..=(2 * SENDS) as i64).collect::<Vec<_>>(),
            "{conversation}"
        );
        for sender in [a, b] {
            let sent: Vec<usize> = stored
                .iter()
                .filter(|m| &m.1 == sender)
                .map(|m| m.3.parse().expect("content is the send's number"))
                .collect();
            assert_eq!(
                sent,
                (0..SENDS).collect::<Vec<_>>(),
                "{sender}'s messages in {conversation}: stored out of the order sent"
            );
        }
    }
    assert_eq!(stored_count(&env).await, total, "nothing stored twice");
}

/// Sends `SENDS` messages back to back without waiting for acks, while another task reads
/// everything the socket delivers (as a live client does: one that stops reading is dropped
/// once its queue is full); returns once every send is acked as accepted.
async fn pipeline(client: WsClient, user: String, conversation: String) {
    let (mut sink, mut stream) = client.into_inner().split();
    let reader = tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        while acked.len() < SENDS {
            let frame = tokio::time::timeout(PATIENCE, stream.next())
                .await
                .expect("a frame arrived in time");
            let Some(Ok(Ws::Text(text))) = frame else {
                panic!("the socket closed: {frame:?}");
            };
            let frame: Value = serde_json::from_str(&text).expect("JSON");
            if frame["type"] == "ack" {
                assert_eq!(frame["data"]["status"], "accepted", "{frame}");
                acked.insert(frame["id"].as_u64().expect("an id"));
            }
        }
    });
    for k in 0..SENDS {
        let frame = json!({
            "type": "message:send",
            "id": k,
            "data": {
                "conversationId": conversation,
                "clientMsgId": format!("{user}-{k:04}"),
                "content": k.to_string(),
            },
        });
        sink.send(Ws::text(frame.to_string())).await.expect("send");
    }
    reader.await.expect("every send accepted");
    drop(sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_store_each_senders_messages_in_the_order_sent() {
    every_sender_stays_in_order(MidRun::Nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_run_loses_and_reorders_nothing() {
    every_sender_stays_in_order(MidRun::KillOne).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_mid_run_loses_and_reorders_nothing() {
    every_sender_stays_in_order(MidRun::StartOne).await;
}

/// Three replicas and 16 partitions settle at 5 or 6 each, none shared, within 10 s; when one
/// is killed, the other two own all 16 within the ack wait (3 s here) and 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_are_shared_evenly_and_taken_over_from_a_killed_replica() {
    let env = TestEnv::new().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Role::start(&env, "persistence", &[]).await);
    }
    let shares = |replicas: &[Role]| {
        let admin: Vec<String> = replicas.iter().map(Role::metrics_url).collect();
        async move {
            let mut shares = Vec::new();
            for url in admin {
                let text = reqwest::get(url).await.ok()?.text().await.ok()?;
                shares.push(owned(&text));
            }
            Some(shares)
        }
    };
    let settled = within(Duration::from_secs(10), || async {
        let shares = shares(&replicas).await?;
        let all: BTreeSet<u16> = shares.iter().flatten().copied().collect();
        let even = shares.iter().all(|s| s.len() == 5 || s.len() == 6);
        let disjoint = shares.iter().map(BTreeSet::len).sum::<usize>() == 16;
        (all.len() == 16 && even && disjoint).then_some(shares)
    })
    .await;
    let killed: BTreeSet<u16> = settled[0].clone();

    replicas.remove(0).kill().await;
    // Settled means 8 each: on the way there a survivor may still hold a partition it hands to
    // the other while it already writes the killed replica's (9 and 7, all 16 owned once).
    let after = within(Duration::from_secs(3 + 5), || async {
        let shares = shares(&replicas).await?;
        let all: BTreeSet<u16> = shares.iter().flatten().copied().collect();
        let even = shares.iter().all(|s| s.len() == 8);
        (all.len() == 16 && even).then_some(shares)
    })
    .await;
    assert!(
        killed.iter().all(|p| after.iter().any(|s| s.contains(p))),
        "the killed replica's partitions {killed:?} all have a new owner: {after:?}"
    );
}

#[test]
fn owned_partitions_are_read_from_the_metrics_text() {
    let text = "# TYPE parley_persist_partition_owned gauge\n\
                parley_persist_partition_owned{partition=\"3\"} 1\n\
                parley_persist_partition_owned{partition=\"4\"} 0\n\
                parley_persist_partition_owned{partition=\"12\"} 1\n";
    assert_eq!(owned(text), BTreeSet::from([3, 12]));
}

/// A role given another partition count than the stream's refuses to start while the stream
/// holds commands, naming both counts and the migration; once the stream is empty the count
/// changes, and the consumers of partitions the stream no longer has are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_count_changes_only_on_an_empty_stream() {
    let env = TestEnv::new().await;
    // The stream made with 16 partitions, and their consumers.
    let mut first = Role::start(&env, "persistence", &[]).await;
    first.terminate();
    assert!(first.exited().await.success());
    let js = async_nats::jetstream::new(env.nats().await);
    env.publish_command(&js, uuid::Uuid::now_v7(), "{}".into())
        .await;

    let mut cmd = env.parley_role("persistence", free_port(), free_port());
    cmd.env("PARLEY_PARTITIONS", "8")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .expect("exited in time")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("has 16 partitions")
            && stderr.contains("holds 1 commands")
            && stderr.contains("PARLEY_PARTITIONS is 8"),
        "{stderr}"
    );

    let stream_name = format!("{}_IN", env.prefix.to_uppercase());
    js.get_stream(&stream_name)
        .await
        .unwrap()
        .purge()
        .await
        .expect("drain the stream");
    let _persistence = Role::start(&env, "persistence", &[("PARLEY_PARTITIONS", "8".into())]).await;
    let stream = js.get_stream(&stream_name).await.unwrap();
    let mut names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
    names.sort();
    let upper = env.prefix.to_uppercase();
    let mut wanted: Vec<String> = (0..8).map(|p| format!("{upper}_PERSIST_{p}")).collect();
    wanted.sort();
    assert_eq!(names, wanted);
}
