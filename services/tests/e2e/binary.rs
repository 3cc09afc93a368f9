//! The `parley` binary itself: configuration errors, the admin port, graceful shutdown.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use crate::helpers::{PATIENCE, SECRET, TestEnv, WsClient, eventually, free_port, parley};

#[tokio::test]
async fn a_missing_or_malformed_setting_stops_the_binary_with_64_naming_it() {
    let out = parley().arg("persistence").output().await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DATABASE_URL is required"), "{err}");

    let out = parley()
        .arg("gateway")
        .env("AUTH_SECRET", SECRET)
        .env("PORT", "eighty")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PORT is invalid"));

    let out = parley().arg("gateway").output().await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_SECRET"));
}

#[tokio::test]
async fn an_unreachable_database_fails_the_start_with_a_clear_message() {
    let out = parley()
        .arg("migrate")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
        )
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to the database"), "{err}");
}

async fn spawn_all(env: &TestEnv, port: u16, admin: u16) -> Child {
    let mut cmd = env.parley_role("all", port, admin);
    cmd.env(
        "RUST_LOG",
        "info,parley_persistence=debug,parley_gateway=debug",
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd.spawn().expect("start parley all")
}

#[tokio::test]
async fn parley_all_serves_health_and_readiness_chats_and_drains_on_sigterm() {
    let env = TestEnv::new().await;
    let (port, admin) = (free_port(), free_port());
    let mut child = spawn_all(&env, port, admin).await;
    // The log, read as it is written, so the test can wait for a line before it goes on.
    let log: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let reader = tokio::spawn({
        let log = log.clone();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        async move {
            while let Some(line) = lines.next_line().await.unwrap() {
                log.lock().unwrap().push(line);
            }
        }
    });
    // Standard error too (a panic in one of its tasks is written there), into the same log.
    tokio::spawn({
        let log = log.clone();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        async move {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(format!("stderr: {line}"));
            }
        }
    });
    let logged = |what: &'static str| {
        let log = log.clone();
        async move {
            let said = |log: &std::sync::Mutex<Vec<String>>| {
                log.lock().unwrap().iter().any(|l| l.contains(what))
            };
            let waited = tokio::time::timeout(PATIENCE, async {
                while !said(&log) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if waited.is_err() {
                panic!(
                    "the log never said {what:?}; it said:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        }
    };
    let http = reqwest::Client::new();
    let ready = tokio::time::timeout(PATIENCE, async {
        loop {
            let r = http
                .get(format!("http://127.0.0.1:{admin}/readyz"))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => return r,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "parley all never became ready; its log:\n{}",
            log.lock().unwrap().join("\n")
        )
    });
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["nats"], "ok", "{body}");
    assert_eq!(body["checks"]["postgres"], "ok", "{body}");
    let health = http
        .get(format!("http://127.0.0.1:{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // A chat through the real binary.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut alice = WsClient::connect(addr, &env.token("alice", 600)).await;
    let conv = alice.open_dm("bob").await;
    alice
        .send_message(&conv, "bin-1", "through the binary")
        .await;
    assert_eq!(alice.messages(&conv, 1).await[0]["seq"], 1);

    // A forged token: the client hears only 401 unauthenticated; the log says why.
    let forged = crate::helpers::token_with("alice", 600, "not-the-secret-of-this-server-0000");
    let refused = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/users?query=a"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(
        !body.to_string().contains("signature"),
        "no reason told: {body}"
    );

    // What the log must say by now: the refusal's reason, and the auth role's keys fetched by
    // the gateway (both are written by tasks of their own, so wait for them).
    logged("refused a token").await;
    logged("JWKS fetched").await;

    // SIGTERM: the client is told to reconnect, the socket closes, the process exits 0.
    let pid = child.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let draining = alice.wait_for(|f| f["type"] == "server:draining").await;
    assert!(draining["data"]["reconnectAfterMs"].is_u64());
    assert_eq!(alice.closed().await.0, 1001);
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("exited in time")
        .unwrap();
    assert!(status.success(), "{status}");

    // Logs are JSON and never carry the token or the message text.
    reader.await.unwrap();
    let logs_lines = std::mem::take(&mut *log.lock().unwrap());
    let mut logs = String::new();
    for line in &logs_lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
        logs.push_str(line);
    }
    assert!(logs.contains("gateway listening"), "{logs}");
    // Start-up order: the gateway's first request for the auth role's keys was answered (the
    // auth role starts beside it); it neither timed out nor had to be retried.
    assert!(logs.contains("JWKS fetched"), "{logs}");
    assert!(
        !logs.contains("cannot fetch the JWKS") && !logs.contains("waiting for the auth role"),
        "the gateway waited on its own auth role: {logs}"
    );
    // A line written inside a span carries its trace id.
    let traced = logs_lines
        .iter()
        .find(|l| l.contains("batch committed"))
        .unwrap_or_else(|| panic!("no batch log in {logs}"));
    let line: serde_json::Value = serde_json::from_str(traced).unwrap();
    let trace_id = line["trace_id"].as_str().unwrap_or_default();
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{traced}"
    );
    assert!(
        logs.contains("refused a token") && logs.contains("signature does not verify"),
        "the refusal's reason is logged: {logs}"
    );
    assert!(!logs.contains(&forged), "the token itself is never logged");
    assert!(!logs.contains("through the binary"));
    assert!(!logs.contains(SECRET));
}

/// Start-up order does not matter: a gateway whose auth role is not up yet listens and is ready
/// at once (it does not wait on the auth role), and once auth starts, the Parley tokens it
/// issues are accepted by that gateway.
#[tokio::test]
async fn a_gateway_started_before_its_auth_role_serves_at_once_and_takes_auth_tokens_later() {
    use crate::helpers::Role;
    let env = TestEnv::new().await;
    let _persistence = Role::start(&env, "persistence", &[]).await;
    // Role::start returns once /readyz answers 200: no auth role exists yet.
    let gw = Role::start(&env, "gateway", &[]).await;
    let refused = reqwest::Client::new()
        .post(format!("http://{}/api/auth/login", gw.addr()))
        .json(&serde_json::json!({"username": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503, "no auth role answers yet");

    let _auth = Role::start(&env, "auth", &[]).await;
    let registered: serde_json::Value = eventually(|| {
        let url = format!("http://{}/api/auth/register", gw.addr());
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(
                    &serde_json::json!({"username": "alice", "email": "alice@example.com",
                    "password": "correct horse battery"}),
                )
                .send()
                .await
                .ok()?;
            (r.status() == 201).then_some(r)
        }
    })
    .await
    .json()
    .await
    .unwrap();
    let token = registered["token"].as_str().expect("a token").to_owned();
    let mut alice = WsClient::connect(gw.addr(), &token).await;
    let conv = alice.open_dm("bob").await;
    alice
        .send_message(&conv, "late-auth-1", "after auth came up")
        .await;
    assert_eq!(
        alice.messages(&conv, 1).await[0]["content"],
        "after auth came up"
    );
}
