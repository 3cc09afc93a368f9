//! Issue 6: one trace per message across the broker, metrics that promtool accepts and that
//! count what happened, and a gateway drained by SIGTERM under steady sends losing nothing.
//! These run the real `parley` binary, one process per role, as in production.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::helpers::{Role, TestEnv, WsClient, eventually};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    links: Vec<(String, String)>,
}

/// A real OTLP/HTTP receiver: `POST /v1/traces` with protobuf `ExportTraceServiceRequest`s.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

async fn export(State(receiver): State<Receiver>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut spans = receiver.0.lock().unwrap();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
            spans.push(Span {
                service: service.clone(),
                name: s.name,
                trace_id: hex::encode(&s.trace_id),
                span_id: hex::encode(&s.span_id),
                parent: hex::encode(&s.parent_span_id),
                links: s
                    .links
                    .iter()
                    .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                    .collect(),
            });
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// Show 1: a message's trace runs from the client's send through the sending gateway, the
/// stream and persistence to the delivering gateway, with correct parent/child links; the
/// batch that wrote it links to it and holds the database insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_follows_a_message_from_the_client_through_the_broker_to_the_recipient() {
    let env = TestEnv::new().await;
    let (receiver, otlp) = Receiver::start().await;
    let otel = |service: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
    };
    let _persistence = Role::start(&env, "persistence", &otel("persistence")).await;
    let gw_a = Role::start(&env, "gateway", &otel("gateway-a")).await;
    let gw_b = Role::start(&env, "gateway", &otel("gateway-b")).await;
    let mut alice = WsClient::connect(gw_a.addr(), &env.token("alice", 600)).await;
    let mut bob = WsClient::connect(gw_b.addr(), &env.token("bob", 600)).await;
    let conv = alice.open_dm("bob").await;

    // The client starts the trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    alice
        .send_frame(&json!({
            "type": "message:send", "id": 1,
            "traceparent": format!("00-{trace_id}-{client_span}-01"),
            "data": {"conversationId": conv, "clientMsgId": "traced", "content": "follow me"}
        }))
        .await;
    bob.messages(&conv, 1).await;

    let spans = eventually(|| {
        let receiver = receiver.clone();
        async move {
            let spans: Vec<Span> = receiver
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            let has = |service: &str, name: &str| {
                spans.iter().any(|s| s.service == service && s.name == name)
            };
            let all = receiver.spans();
            let batch_done = ["persist.batch", "db.write", "db.insert"]
                .iter()
                .all(|n| all.iter().any(|s| s.name == *n));
            (has("gateway-a", "command")
                && has("gateway-a", "publish")
                && has("persistence", "persist.message")
                && has("gateway-b", "deliver")
                && batch_done)
                .then_some(spans)
        }
    })
    .await;
    for s in &spans {
        eprintln!(
            "{:<12} {:<16} {} <- {}",
            s.service, s.name, s.span_id, s.parent
        );
    }
    let by_id: BTreeMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let find = |service: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {name} span from {service} in {spans:#?}"))
    };
    // gateway-a: the command, under the client's span; the publish under it.
    let command = find("gateway-a", "command");
    assert_eq!(command.parent, client_span);
    let publish = find("gateway-a", "publish");
    assert_eq!(publish.parent, command.span_id);
    // persistence: the message's span, a child of the publish that put it on the stream.
    let persisted = find("persistence", "persist.message");
    assert_eq!(persisted.parent, publish.span_id);
    // gateway-b: delivery to bob's socket, a child of persistence's span.
    let delivered = find("gateway-b", "deliver");
    assert_eq!(delivered.parent, persisted.span_id);
    // Every span of the trace hangs together: each parent is in the trace, or is the client.
    for s in &spans {
        assert!(
            s.parent == client_span || by_id.contains_key(s.parent.as_str()),
            "{s:?} has a parent outside the trace"
        );
    }
    // The batch that wrote it has its own trace, linked to the message, and holds the insert.
    let all = receiver.spans();
    let batch = all
        .iter()
        .find(|s| {
            s.name == "persist.batch"
                && s.links
                    .iter()
                    .any(|(t, span)| t == trace_id && *span == publish.span_id)
        })
        .unwrap_or_else(|| panic!("no batch linked to the message in {all:#?}"));
    assert!(
        persisted
            .links
            .iter()
            .any(|(t, s)| *t == batch.trace_id && *s == batch.span_id)
    );
    let write = all
        .iter()
        .find(|s| s.name == "db.write" && s.parent == batch.span_id)
        .expect("the database write under the batch");
    assert!(
        all.iter()
            .any(|s| s.name == "db.insert" && s.parent == write.span_id),
        "the insert under the write"
    );
}

/// The value of a sample in Prometheus text, e.g. `parley_messages_accepted_total`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// `promtool check metrics` on a role's `/metrics`.
async fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (./dev test installs Debian's prometheus package)");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Shows 2 and 3: every role's `/metrics` passes `promtool check metrics`, and after a scripted
/// run the counters say what happened: n sent → n accepted, n persisted, n × recipients
/// delivered, refusals by code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metrics_pass_promtool_and_count_what_happened() {
    let env = TestEnv::new().await;
    let persistence = Role::start(&env, "persistence", &[]).await;
    let auth = Role::start(&env, "auth", &[]).await;
    let gw = Role::start(&env, "gateway", &[]).await;
    let mut alice = WsClient::connect(gw.addr(), &env.token("alice", 600)).await;
    let mut bob = WsClient::connect(gw.addr(), &env.token("bob", 600)).await;
    let mut carol = WsClient::connect(gw.addr(), &env.token("carol", 600)).await;
    let reply = alice
        .request(
            "conversation:open",
            json!({"participantIds": ["bob", "carol"], "title": "three"}),
        )
        .await;
    let group = reply["conversation"]["id"].as_str().unwrap().to_owned();

    let n: u32 = 25;
    for i in 0..n {
        let ack = alice
            .send_message(&group, &format!("m{i}"), &format!("hello {i}"))
            .await;
        assert_eq!(ack["ok"], true);
    }
    // A retry of an accepted send is accepted again and stored once.
    alice.send_message(&group, "m0", "hello 0").await;
    // Two refusals: too long, and a stranger's conversation.
    let long = alice.send_message(&group, "long", &"x".repeat(4001)).await;
    assert_eq!(long["error"]["code"], "too_large");
    let mut mallory = WsClient::connect(gw.addr(), &env.token("mallory", 600)).await;
    let r = mallory.send_message(&group, "sneak", "hi").await;
    assert_eq!(r["error"]["code"], "forbidden");
    for c in [&mut alice, &mut bob, &mut carol] {
        c.messages(&group, n as usize).await;
    }

    let text = eventually(|| {
        let gw = &gw;
        let persistence = &persistence;
        async move {
            let g = gw.metrics().await;
            let p = persistence.metrics().await;
            (sample(&g, "parley_messages_delivered_total") >= f64::from(n * 3)
                && sample(&p, "parley_messages_persisted_total") >= f64::from(n))
            .then_some((g, p))
        }
    })
    .await;
    let (g, p) = text;
    assert_eq!(
        sample(&g, "parley_messages_accepted_total"),
        f64::from(n + 1)
    );
    assert_eq!(sample(&p, "parley_messages_persisted_total"), f64::from(n));
    assert_eq!(
        sample(&g, "parley_messages_delivered_total"),
        f64::from(n * 3)
    );
    assert_eq!(
        sample(&g, r#"parley_messages_rejected_total{code="too_large"}"#),
        1.0
    );
    assert_eq!(
        sample(&g, r#"parley_messages_rejected_total{code="forbidden"}"#),
        1.0
    );
    assert_eq!(sample(&g, r#"parley_connections{transport="ws"}"#), 4.0);
    assert_eq!(
        sample(&g, "parley_delivery_latency_seconds_count"),
        f64::from(n * 3)
    );
    assert!(sample(&p, "parley_persist_batch_size_count") >= 1.0);
    assert!(p.contains(r#"parley_db_pool_connections{role="persistence",state="used"}"#));
    assert!(g.contains(r#"parley_nats_reconnects_total{role="gateway"} 0"#));
    // No user or conversation id is ever a label.
    for text in [&g, &p] {
        assert!(!text.contains("alice") && !text.contains(&group));
    }
    drop(mallory);
    let mut every = String::new();
    for role in [&gw, &persistence, &auth] {
        let text = role.metrics().await;
        promtool_accepts(&text).await;
        every.push_str(&text);
    }
    // The dashboard and the alerts ask only for metrics that exist.
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana/dashboards/parley.json")).unwrap(),
    )
    .unwrap();
    let mut queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    queries.push(std::fs::read_to_string(deploy.join("prometheus/alerts.yml")).unwrap());
    let mut asked = BTreeSet::new();
    for q in &queries {
        for word in q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(name) = word.strip_prefix("parley_") {
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
                asked.insert(format!("parley_{name}"));
            }
        }
    }
    assert!(asked.len() >= 12, "{asked:?}");
    for name in &asked {
        assert!(
            every.contains(&format!("# TYPE {name} ")),
            "{name} is charted or alerted on but no role exports it"
        );
    }
}

/// The scrape configuration and its rules pass `promtool check config`.
#[tokio::test]
async fn the_prometheus_config_passes_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir)
        .output()
        .await
        .expect("run promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Show 4: SIGTERM to one of two gateways under steady sends. Its clients are told to
/// reconnect, go to the other gateway, resend what was not acknowledged with the same
/// clientMsgId and `sync` from their last seq; every message is stored once and reaches every
/// recipient, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_to_a_gateway_under_steady_sends_loses_nothing() {
    let env = TestEnv::new().await;
    let fast = [
        ("PARLEY_SEND_RATE", "100000".to_owned()),
        ("PARLEY_SEND_BURST", "100000".to_owned()),
    ];
    let _persistence = Role::start(&env, "persistence", &[]).await;
    let mut gw_a = Role::start(&env, "gateway", &fast).await;
    let gw_b = Role::start(&env, "gateway", &fast).await;
    let mut carol = WsClient::connect(gw_b.addr(), &env.token("carol", 600)).await;
    let mut alice = WsClient::connect(gw_a.addr(), &env.token("alice", 600)).await;
    let mut bob = WsClient::connect(gw_a.addr(), &env.token("bob", 600)).await;
    let reply = alice
        .request(
            "conversation:open",
            json!({"participantIds": ["bob", "carol"], "title": "steady"}),
        )
        .await;
    let group = reply["conversation"]["id"].as_str().unwrap().to_owned();

    // alice sends steadily, a message every few milliseconds, reading acks as they come;
    // halfway, gateway A gets SIGTERM.
    let total: u32 = 200;
    let frame = |i: u32| {
        json!({"type": "message:send", "id": i, "data": {
            "conversationId": group, "clientMsgId": format!("s{i}"), "content": format!("n{i}")}})
    };
    let mut unacked: BTreeSet<u32> = BTreeSet::new();
    let mut draining = false;
    let mut closed = false;
    let mut next = 0;
    let mut take = |frames: Vec<Value>, unacked: &mut BTreeSet<u32>| {
        for f in frames {
            if f["type"] == "ack" && f["data"]["ok"] == true {
                unacked.remove(&(f["id"].as_u64().unwrap() as u32));
            }
            draining |= f["type"] == "server:draining";
        }
    };
    while next < total && !closed {
        if next == total / 2 {
            gw_a.terminate();
        }
        if !alice.try_send_frame(&frame(next)).await {
            break;
        }
        unacked.insert(next);
        next += 1;
        let (frames, gone) = alice.poll_frames(Duration::from_millis(5)).await;
        take(frames, &mut unacked);
        closed = gone;
    }
    if !closed {
        take(alice.received_until_closed().await, &mut unacked);
    }
    assert!(next > total / 2, "gateway A took sends until it drained");
    assert!(draining, "alice was told server:draining before the close");
    eprintln!(
        "sent {next} to gateway A, {} of them not acknowledged before it closed",
        unacked.len()
    );
    let status = gw_a.exited().await;
    assert!(status.success(), "the drained gateway exits 0: {status}");

    // Reconnect to B; resend what was never acknowledged, with the same clientMsgIds, and send
    // the rest.
    unacked.extend(next..total);
    let mut alice = WsClient::connect(gw_b.addr(), &env.token("alice", 600)).await;
    for &i in &unacked {
        let ack = alice
            .send_message(&group, &format!("s{i}"), &format!("n{i}"))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
    }

    // Every message stored once, in seq order, whatever the order of the retries.
    let stored = eventually(|| {
        let env = &env;
        let group = &group;
        async move {
            let rows = env.stored(group).await;
            (rows.len() >= total as usize).then_some(rows)
        }
    })
    .await;
    let ids: BTreeSet<String> = stored.iter().map(|r| r.2.clone()).collect();
    assert_eq!(stored.len(), total as usize, "stored once each");
    assert_eq!(ids.len(), total as usize);
    assert_eq!(
        stored.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=total as i64).collect::<Vec<_>>()
    );

    // bob, cut off with gateway A, reconnects to B and syncs from what he saw.
    let seen: Vec<i64> = bob
        .received_until_closed()
        .await
        .iter()
        .filter(|f| f["type"] == "message:new")
        .map(|f| f["data"]["seq"].as_i64().unwrap())
        .collect();
    eprintln!("bob saw {} live on gateway A", seen.len());
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "live on A, in order and each once: {seen:?}"
    );
    let mut bob = WsClient::connect(gw_b.addr(), &env.token("bob", 600)).await;
    let after = seen.iter().copied().max().unwrap_or(0);
    let mut all: Vec<i64> = seen.clone();
    let mut cursor = after;
    loop {
        let page = bob
            .request(
                "sync",
                json!({"conversations": [{"conversationId": group, "afterSeq": cursor}]}),
            )
            .await;
        for m in page["messages"].as_array().unwrap() {
            cursor = m["seq"].as_i64().unwrap();
            all.push(cursor);
        }
        if page["hasMore"] != true {
            break;
        }
    }
    // What he saw live, then what sync gave him: every seq once, in order, with no gap at the
    // seam.
    assert_eq!(
        all,
        (1..=total as i64).collect::<Vec<_>>(),
        "bob has every message, in order, each once"
    );
    // carol never moved: everything arrived live on B, in seq order, each once...
    let got: Vec<Value> = carol.messages(&group, total as usize).await;
    let seqs: Vec<i64> = got.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=total as i64).collect::<Vec<_>>());
    // ...and nothing after: the next message:new she gets is a last message sent now (a late
    // duplicate would come before it).
    let ack = alice.send_message(&group, "last", "the end").await;
    assert_eq!(ack["ok"], true, "{ack}");
    let next = carol.messages(&group, 1).await;
    assert_eq!(next[0]["seq"], total as i64 + 1, "{next:?}");
}
