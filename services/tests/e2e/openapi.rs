//! The HTTP API against its own OpenAPI document (issue 5, show 5): schemathesis from PyPI
//! (installed by `./dev test` into `.dev/venv`) fuzzes every documented operation of a running
//! gateway and checks that nothing answers with a server error, an undocumented status or
//! content type, or a body that breaks the schema. And the conversation routes do what they
//! document.

use serde_json::{Value, json};

use crate::helpers::TestEnv;

fn schemathesis() -> std::path::PathBuf {
    std::env::var_os("PARLEY_SCHEMATHESIS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.dev/venv/bin/schemathesis"),
        Into::into,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_nothing_wrong_with_the_http_api() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    // Something to find: alice has a conversation with a message in it.
    let mut alice = env.connect(&gw, "alice").await;
    let dm = alice.open_dm("bob").await;
    alice.send_message(&dm, "m1", "hello").await;
    alice.messages(&dm, 1).await;

    let workdir = std::env::temp_dir().join(format!("parley-st-{}", env.prefix));
    std::fs::create_dir_all(&workdir).unwrap();
    let out = tokio::process::Command::new(schemathesis())
        .args([
            "run",
            &format!("http://{}/api/openapi.json", gw.addr()),
            "--header",
            &format!("Authorization: Bearer {}", env.token("alice", 3600)),
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "40",
            "--seed",
            "20261127",
            // One worker: hypothesis describes filters with `ast.parse`, which CPython 3.11 does
            // not support from two threads at once (seen here: "AST constructor recursion depth
            // mismatch").
            "--workers",
            "1",
            "--no-color",
        ])
        .current_dir(&workdir)
        .output()
        .await
        .expect("run schemathesis (./dev test installs it into .dev/venv)");
    let _ = std::fs::remove_dir_all(&workdir);
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    // It tested every operation, with many cases, all passing.
    assert!(report.contains("Tested: 11"), "{report}");
    // "970 generated, 970 passed"
    let cases = report.lines().find_map(|l| {
        let (generated, passed) = l
            .trim()
            .strip_suffix(" passed")?
            .split_once(" generated, ")?;
        Some((generated.to_owned(), passed.to_owned()))
    });
    let (generated, passed) = cases.unwrap_or_else(|| panic!("no case count in\n{report}"));
    assert_eq!(generated, passed, "{report}");
    assert!(generated.parse::<u32>().unwrap() >= 200, "{report}");
}

/// The conversation routes, by hand: the same answers as the socket, a server-side send that is
/// idempotent on `clientMsgId`, and clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_routes_work_like_the_socket() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", gw.addr());
    let alice = env.token("alice", 600);
    let mut bob = env.connect(&gw, "bob").await;

    let opened: Value = http
        .post(format!("{base}/api/conversations"))
        .bearer_auth(&alice)
        .json(&json!({"participantIds": ["bob"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dm = opened["conversation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(bob.open_dm("alice").await, dm);

    // Sent twice with one clientMsgId: accepted twice, stored and delivered once.
    for _ in 0..2 {
        let r = http
            .post(format!("{base}/api/conversations/{dm}/messages"))
            .bearer_auth(&alice)
            .json(&json!({"content": "from the server", "clientMsgId": "srv-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            json!({"clientMsgId": "srv-1", "conversationId": dm, "status": "accepted"})
        );
    }
    let got = bob.messages(&dm, 1).await;
    assert_eq!(got[0]["content"], "from the server");
    bob.send_message(&dm, "b1", "and back").await;
    bob.messages(&dm, 1).await;
    assert_eq!(env.stored(&dm).await.len(), 2);

    let get = |path: String| {
        let request = http.get(format!("{base}{path}")).bearer_auth(&alice);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let history = get(format!("/api/conversations/{dm}/messages?limit=1")).await;
    assert_eq!(history["messages"][0]["content"], "and back");
    let list = get("/api/conversations".into()).await;
    assert_eq!(list["conversations"][0]["unreadCount"], 1);
    assert_eq!(list["nextBefore"], Value::Null);

    // Clear errors, as JSON, with the matching status.
    let cases = [
        (
            http.get(format!("{base}/api/conversations/not-a-uuid/messages"))
                .bearer_auth(&alice),
            400,
            "invalid",
        ),
        (
            http.get(format!("{base}/api/conversations/{dm}/messages?limit=x"))
                .bearer_auth(&alice),
            400,
            "invalid",
        ),
        (
            http.get(format!("{base}/api/conversations/{dm}/messages")),
            401,
            "unauthenticated",
        ),
        (
            http.post(format!("{base}/api/conversations/{dm}/messages"))
                .bearer_auth(&alice)
                .body("{"),
            400,
            "invalid",
        ),
        (
            http.post(format!("{base}/api/conversations/{dm}/messages"))
                .bearer_auth(&alice)
                .json(&json!({"content": "x".repeat(4001), "clientMsgId": "long"})),
            413,
            "too_large",
        ),
    ];
    for (request, status, code) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }
}

/// Show 2 by HTTP: a stranger's conversation and one that does not exist read the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reads_and_sends_to_a_strangers_conversation_are_refused_alike() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let mut alice = env.connect(&gw, "alice").await;
    let dm = alice.open_dm("bob").await;
    alice.send_message(&dm, "m1", "private").await;
    alice.messages(&dm, 1).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", gw.addr());
    let mallory = env.token("mallory", 600);
    let nowhere = uuid::Uuid::now_v7().to_string();
    for method in ["GET", "POST"] {
        let mut answers = Vec::new();
        for id in [&dm, &nowhere] {
            let url = format!("{base}/api/conversations/{id}/messages");
            let request = match method {
                "GET" => http.get(url),
                _ => http
                    .post(url)
                    .json(&json!({"content": "let me in", "clientMsgId": "x"})),
            };
            let r = request.bearer_auth(&mallory).send().await.unwrap();
            assert_eq!(r.status(), 403, "{method}");
            answers.push(r.json::<Value>().await.unwrap());
        }
        assert_eq!(answers[0], answers[1], "{method}");
        assert_eq!(answers[0]["error"]["code"], "forbidden");
    }
    assert_eq!(env.stored(&dm).await.len(), 1);
}
