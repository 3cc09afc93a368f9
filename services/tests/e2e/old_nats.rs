//! Parley needs NATS 2.11 or newer: against an older server every role that connects stops at
//! start with exit 64, naming the server's version and the one it needs. The old server is a
//! real one, Debian's `nats-server` 2.9 (which `./dev test` installs), run privately for the test.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::helpers::{PATIENCE, TestEnv, free_port, nats_answers};

/// Debian's nats-server, or whichever `nats-server` is on `PATH`, as long as it is older than
/// 2.11. Fails the test, never skips it, when there is none.
fn old_nats_server() -> (PathBuf, String) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = [PathBuf::from("/usr/sbin/nats-server")]
        .into_iter()
        .chain(std::env::split_paths(&path).map(|dir| dir.join("nats-server")));
    for bin in candidates.filter(|p| p.is_file()) {
        let Ok(out) = std::process::Command::new(&bin).arg("--version").output() else {
            continue;
        };
        // "nats-server: v2.9.10"
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.trim().rsplit(' ').next().unwrap_or_default();
        let version = version.trim_start_matches('v').to_owned();
        if parley_common::nats_version::check(&version).is_err() {
            return (bin, version);
        }
    }
    panic!(
        "no nats-server older than 2.11 found (/usr/sbin/nats-server or on PATH); this test \
         needs one: apt-get install nats-server (Debian's is 2.9), as ./dev test does"
    );
}

/// A private nats-server with JetStream on a free loopback port, its store in a fresh folder;
/// killed and the folder removed on drop.
struct OldNats {
    url: String,
    version: String,
    store: PathBuf,
    _child: Child,
}

impl OldNats {
    async fn start() -> Self {
        let (bin, version) = old_nats_server();
        let port = free_port();
        let store = std::env::temp_dir().join(format!("parley-old-nats-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&store).unwrap();
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        nats_answers(port).await;
        Self {
            url: format!("nats://127.0.0.1:{port}"),
            version,
            store,
            _child: child,
        }
    }
}

impl Drop for OldNats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

#[tokio::test]
async fn every_role_refuses_a_nats_older_than_2_11_with_exit_64_naming_both_versions() {
    let nats = OldNats::start().await;
    let env = TestEnv::new().await;
    let runs = ["gateway", "persistence", "auth", "all"].map(|role| {
        let mut cmd = env.parley_role(role, free_port(), free_port());
        cmd.env("NATS_URL", &nats.url);
        async move {
            let out = tokio::time::timeout(PATIENCE, cmd.output())
                .await
                .unwrap_or_else(|_| panic!("parley {role} still running after {PATIENCE:?}"))
                .unwrap();
            (role, out)
        }
    });
    for (role, out) in futures::future::join_all(runs).await {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "parley {role}: {err}");
        assert!(
            err.contains(&format!("NATS server {} is too old", nats.version))
                && err.contains("needs NATS 2.11 or newer"),
            "parley {role}: {err}"
        );
    }
}
