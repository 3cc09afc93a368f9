//! A figure for the issue note until `parley-bench` exists: messages per second through the whole
//! path (gateway → JetStream → persistence → Postgres → delivery) with one gateway and one
//! persistence. Ignored by default (run with `--run-ignored only`, ideally `--release`); it
//! asserts only that every message arrived, once, in order. Speed is printed, never asserted.

use std::time::Instant;

use serde_json::json;

use crate::helpers::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test of behaviour"]
async fn measure_messages_per_second_through_the_whole_path() {
    const PAIRS: usize = 20;
    const PER_SENDER: usize = 500;
    const WINDOW: usize = 100;
    let env = TestEnv::with_settings(&[
        ("PARLEY_SEND_RATE", "1000000"),
        ("PARLEY_SEND_BURST", "1000000"),
        ("RUST_LOG", "warn"),
    ])
    .await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;

    let mut tasks = Vec::new();
    let started = Instant::now();
    for p in 0..PAIRS {
        let mut sender = env.connect(&gw, &format!("s{p}")).await;
        let mut receiver = env.connect(&gw, &format!("r{p}")).await;
        let conv = sender.open_dm(&format!("r{p}")).await;
        let send_conv = conv.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in 0..PER_SENDER / WINDOW {
                let ids = chunk * WINDOW..(chunk + 1) * WINDOW;
                for n in ids.clone() {
                    sender
                        .send_frame(&json!({"type": "message:send", "id": n, "data": {
                            "conversationId": send_conv, "clientMsgId": format!("m{n}"), "content": "benchmark message"}}))
                        .await;
                }
                for n in ids {
                    let ack = sender.wait_for(|f| f["type"] == "ack" && f["id"] == n).await;
                    assert_eq!(ack["data"]["ok"], true);
                }
            }
            sender
        }));
        tasks.push(tokio::spawn(async move {
            let got = receiver.messages(&conv, PER_SENDER).await;
            let seqs: Vec<i64> = got.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
            assert_eq!(seqs, (1..=PER_SENDER as i64).collect::<Vec<_>>());
            receiver
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let total = PAIRS * PER_SENDER;
    println!(
        "measure: {total} messages, {PAIRS} pairs, one gateway + one persistence: {:.2}s, {:.0} messages/s accepted, persisted and delivered",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}
