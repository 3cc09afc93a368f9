//! `parley-bench` against the real binary, at a size that proves its checks and not its
//! speed: every scenario must come back verified (each message delivered exactly once, in seq
//! order, to every member; every client back after a restart), and the figures must add up
//! (deliveries = members × accepted). No figure is compared with a threshold.
//! The same checks hold for the reference server (`bench/reference`, `--reference`), the point
//! Parley's figures are compared with.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use crate::helpers::{SECRET, TestEnv};

/// `parley-bench`, built beside `parley` in the same target folder.
fn bench_bin() -> PathBuf {
    let parley = PathBuf::from(env!("CARGO_BIN_EXE_parley"));
    let bench = parley.with_file_name(format!("parley-bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bench.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        bench.display()
    );
    bench
}

/// The reference server's folder, its npm packages installed (`./dev test` runs `npm ci` there).
fn reference_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/reference");
    assert!(
        dir.join("node_modules").is_dir(),
        "{} has no node_modules: run `npm ci` there (./dev test does)",
        dir.display()
    );
    dir
}

/// Runs the bench with `args` against this test's database and prefix (the roles it starts
/// get the test secret); returns its exit code,
/// its reports (when it wrote them) and its stderr.
async fn run_bench(env: &TestEnv, args: &[&str]) -> (i32, Vec<Value>, String) {
    let parley = [
        OsString::from("--parley"),
        env!("CARGO_BIN_EXE_parley").into(),
    ];
    run_bench_against(env, &parley, args).await
}

/// Runs the bench with `args` against the reference server instead of Parley, on this test's
/// database.
async fn run_reference_bench(env: &TestEnv, args: &[&str]) -> (i32, Vec<Value>, String) {
    let reference = [OsString::from("--reference"), reference_dir().into()];
    run_bench_against(env, &reference, args).await
}

/// Runs the bench with `system` (what it starts and loads) and `args`; see [`run_bench`].
async fn run_bench_against(
    env: &TestEnv,
    system: &[OsString],
    args: &[&str],
) -> (i32, Vec<Value>, String) {
    let dir = std::env::temp_dir().join(format!("parley-bench-test-{}", env.prefix));
    std::fs::create_dir_all(&dir).expect("a folder for the bench's output");
    let json = dir.join("results.json");
    let output = tokio::process::Command::new(bench_bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NATS_URL", &env.nats_url)
        .env("DATABASE_URL", &env.database_url)
        .env("PARLEY_NATS_PREFIX", &env.prefix)
        .env("AUTH_SECRET", SECRET)
        .env("PARLEY_DRAIN_SECONDS", "5")
        .args(system)
        .arg("--out")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run parley-bench");
    let reports = std::fs::read_to_string(&json)
        .ok()
        .map(|s| serde_json::from_str(&s).expect("the reports are JSON"))
        .unwrap_or_default();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    (output.status.code().unwrap_or(-1), reports, stderr)
}

/// A figure of a report, by name.
fn figure(report: &Value, name: &str) -> f64 {
    report["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no figure {name:?} in {report}"))["value"]
        .as_f64()
        .expect("a number")
}

fn assert_verified(report: &Value) {
    assert_eq!(
        report["verified"], true,
        "the bench's checks failed: {}",
        report["problems"]
    );
}

/// Every accepted message reached every member of its conversation once: deliveries are
/// exactly members × accepted, and every latency sample is there.
fn assert_all_delivered(report: &Value, members: f64) {
    assert_verified(report);
    let sent = figure(report, "sent");
    let accepted = figure(report, "accepted");
    assert!(sent > 0.0, "nothing was sent: {report}");
    assert_eq!(accepted, sent, "every send is accepted: {report}");
    assert_eq!(figure(report, "delivered"), members * accepted, "{report}");
    assert!(figure(report, "send→deliver max") >= figure(report, "send→deliver p50"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_over_ws_delivers_every_message_once_in_order_to_both_members() {
    let env = TestEnv::new().await;
    let (code, reports, stderr) = run_bench(
        &env,
        &["dm", "--pairs", "3", "--rate", "60", "--duration", "2"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["params"]["transport"], "ws");
    assert_all_delivered(&reports[0], 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_over_socketio_is_checked_the_same_way() {
    let env = TestEnv::new().await;
    let (code, reports, stderr) = run_bench(
        &env,
        &[
            "--transport",
            "socketio",
            "dm",
            "--pairs",
            "2",
            "--rate",
            "40",
            "--duration",
            "2",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(reports[0]["params"]["transport"], "socketio");
    assert_all_delivered(&reports[0], 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fans_out_to_every_member() {
    let env = TestEnv::new().await;
    let (code, reports, stderr) = run_bench(
        &env,
        &[
            "group",
            "--rooms",
            "2",
            "--members",
            "4",
            "--rate",
            "40",
            "--duration",
            "2",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_all_delivered(&reports[0], 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_connection_and_reads_the_gateways_memory() {
    let env = TestEnv::new().await;
    let (code, reports, stderr) = run_bench(
        &env,
        &[
            "--sources",
            "3",
            "idle",
            "--connections",
            "60",
            "--hold",
            "1",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let report = &reports[0];
    assert_verified(report);
    assert_eq!(figure(report, "still connected"), 60.0);
    assert!(figure(report, "gateway RSS connected") > 0.0);
    assert!(figure(report, "gateway memory per connection").is_finite());
}

/// After a drain and after a crash alike, every client comes back, resends what was not
/// acknowledged, syncs, and holds both messages of its conversation once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_brings_every_client_back_with_both_messages() {
    let env = TestEnv::new().await;
    for signal in ["TERM", "KILL"] {
        let (code, reports, stderr) =
            run_bench(&env, &["reconnect", "--clients", "16", "--signal", signal]).await;
        assert_eq!(code, 0, "SIG{signal}: {stderr}");
        let report = &reports[0];
        assert_verified(report);
        assert_eq!(figure(report, "clients"), 16.0);
        assert!(figure(report, "all back and synced after") > 0.0);
        assert!(figure(report, "connect attempts") >= 16.0, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_stops_the_bench_with_a_clear_error() {
    let env = TestEnv::new().await;
    let (code, reports, stderr) = run_bench(
        &env,
        &[
            "--secret",
            "not-the-gateways-secret-0123456789abcdef",
            "dm",
            "--pairs",
            "1",
            "--rate",
            "10",
            "--duration",
            "1",
        ],
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(reports.is_empty());
    assert!(stderr.contains("401"), "the refusal is named: {stderr}");
}

/// The reference server, loaded like Parley over Socket.IO, is held to the same checks: every
/// message stored, and delivered once and in seq order to both members of its DM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_against_the_reference_server_delivers_every_message_once_in_order() {
    let env = TestEnv::new().await;
    let (code, reports, stderr) = run_reference_bench(
        &env,
        &["dm", "--pairs", "2", "--rate", "20", "--duration", "2"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(report["params"]["server"], "reference");
    assert_eq!(report["params"]["transport"], "socketio");
    assert_all_delivered(report, 2.0);
    assert_eq!(figure(report, "persisted"), figure(report, "accepted"));
    let stored: i64 = sqlx::query_scalar(r#"select count(*) from "Message""#)
        .fetch_one(&env.pool)
        .await
        .expect("the reference server's messages");
    assert_eq!(stored as f64, figure(report, "accepted"), "{report}");
    assert!(
        report["cpu_us_per_message"]["node"].is_number(),
        "node's CPU is measured by pid: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_that_restart_parleys_roles_are_refused_against_the_reference() {
    let env = TestEnv::new().await;
    let (code, reports, stderr) = run_reference_bench(&env, &["reconnect", "--clients", "4"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(reports.is_empty());
    assert!(
        stderr.contains("against --reference, run dm, group or idle"),
        "the refusal says what runs: {stderr}"
    );
}
