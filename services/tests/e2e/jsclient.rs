//! The `clients/js` package's React hook against a real gateway, in vitest with jsdom
//! (`./dev test` installs the package's npm dependencies first).

use crate::helpers::TestEnv;

#[tokio::test]
async fn the_use_socket_hook_connects_reports_recovers_missed_messages_and_closes() {
    let env = TestEnv::new().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let out = tokio::process::Command::new("npx")
        .args(["vitest", "run", "--config", "vitest.e2e.config.ts"])
        .current_dir(&dir)
        .env("PARLEY_GW", format!("http://{}", gw.addr()))
        .env("TOKEN_ALICE", env.token("alice", 600))
        .env("TOKEN_BOB", env.token("bob", 600))
        .env("CI", "true")
        .output()
        .await
        .expect("run vitest (npm ci in clients/js)");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("3 passed"), "{report}");
}
