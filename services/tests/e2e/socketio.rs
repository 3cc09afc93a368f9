//! Socket.IO v4 on the gateway's port, driven by the real `socket.io-client` from npm
//! (`services/tests/fixtures/sioclient`, installed by `./dev test`).

use crate::helpers::{SECRET, TestEnv, token_with};

#[tokio::test]
async fn the_engine_io_handshake_answers_on_the_gateway_port_beside_ws_and_http() {
    let env = TestEnv::new().await;
    let gw = env.spawn_gateway().await;
    let body = reqwest::get(format!(
        "http://{}/socket.io/?EIO=4&transport=polling",
        gw.addr()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(body.starts_with(r#"0{"sid":"#), "{body}");
    // /ws and the HTTP API are still there on the same port.
    let ws = reqwest::get(format!("http://{}/ws", gw.addr()))
        .await
        .unwrap();
    assert_eq!(ws.status(), 401);
    let jwks = reqwest::get(format!("http://{}/api/auth/token", gw.addr()))
        .await
        .unwrap();
    assert_eq!(jwks.status(), 401);
}

#[tokio::test]
async fn the_real_socket_io_client_chats_across_gateways_and_with_ws_users() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw_a = env.spawn_gateway().await;
    let gw_b = env.spawn_gateway().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sioclient");
    let out = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=tap", "chat.test.mjs"])
        .current_dir(&dir)
        .env("GW_A", format!("http://{}", gw_a.addr()))
        .env("GW_B", format!("http://{}", gw_b.addr()))
        .env("TOKEN_ALICE", env.token("alice", 600))
        .env("TOKEN_BOB", env.token("bob", 600))
        .env("TOKEN_CAROL", env.token("carol", 600))
        .env("SECRET", SECRET)
        .env(
            "TOKEN_FORGED",
            token_with("alice", 600, "not-this-servers-secret-00000000"),
        )
        .env("TOKEN_EXPIRED", token_with("alice", -120, SECRET))
        .env("BOB_ID", "bob")
        .env("CAROL_ID", "carol")
        .output()
        .await
        .expect("run node (npm ci in services/tests/fixtures/sioclient)");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("# pass 9"), "{report}");
    assert!(report.contains("# fail 0"), "{report}");
}
