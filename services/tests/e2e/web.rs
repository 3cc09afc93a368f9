//! The web chat app (issue 8): the gateway serves it, and two people chat with it in real
//! browsers (Debian's chromium driven by playwright-core, `web/e2e/chat.test.mjs`).

use std::path::{Path, PathBuf};

use crate::helpers::TestEnv;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn the_gateway_serves_the_app_with_caching_that_fits_each_file() {
    let dir = std::env::temp_dir().join(format!("parley-web-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(
        dir.join("index.html"),
        "<!doctype html><title>Parley</title>",
    )
    .unwrap();
    std::fs::write(dir.join("assets/app-1a2b3c.js"), "console.log(1)").unwrap();
    let env = TestEnv::with_settings(&[("PARLEY_WEB_DIR", dir.to_str().unwrap())]).await;
    let gw = env.spawn_gateway().await;
    let base = format!("http://{}", gw.addr());
    let get = |path: &str| reqwest::get(format!("{base}{path}"));

    let index = get("/").await.unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["cache-control"], "no-cache");
    assert!(
        index.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let asset = get("/assets/app-1a2b3c.js").await.unwrap();
    assert_eq!(asset.status(), 200);
    assert_eq!(
        asset.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    // The app's own routes get the app; the API and its errors stay JSON.
    let route = get("/conversations/some-id").await.unwrap();
    assert_eq!(route.status(), 200);
    assert!(
        route
            .text()
            .await
            .unwrap()
            .contains("<title>Parley</title>")
    );
    let api = get("/api/openapi.json").await.unwrap();
    assert_eq!(api.headers()["content-type"], "application/json");
    let missing = get("/assets/nope.js").await.unwrap();
    assert_eq!(missing.status(), 404);
    std::fs::remove_dir_all(&dir).unwrap();

    // Without a built app, / says so.
    let env = TestEnv::new().await;
    let gw = env.spawn_gateway().await;
    let r = reqwest::get(format!("http://{}/", gw.addr()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("not built"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_people_chat_in_real_browsers() {
    let dist = root().join("web/dist");
    assert!(
        dist.join("index.html").is_file(),
        "build the web app first (./dev test does)"
    );
    let env = TestEnv::with_settings(&[
        ("PARLEY_WEB_DIR", dist.to_str().unwrap()),
        ("PARLEY_PRESENCE_TTL_SECONDS", "6"),
    ])
    .await;
    let _persistence = env.spawn_persistence().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    // Emptied first: a file from an earlier run must not stand for one this run failed to take.
    let screenshots = root().join("out/screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    std::fs::create_dir_all(&screenshots).unwrap();
    let out = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=tap", "e2e/chat.test.mjs"])
        .current_dir(root().join("web"))
        .env("PARLEY_URL", format!("http://{}", gw.addr()))
        .env("SCREENSHOTS", &screenshots)
        .env("CHROMIUM", "/usr/bin/chromium")
        .output()
        .await
        .expect("run node (npm ci in web/)");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(report.contains("# fail 0"), "{report}");
    for shot in [
        "desktop-list",
        "desktop-conversation",
        "phone-list",
        "phone-conversation",
    ] {
        let png = std::fs::read(screenshots.join(format!("{shot}.png")))
            .unwrap_or_else(|e| panic!("{shot}.png: {e}\n{report}"));
        assert!(
            png.len() > 1_000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{shot}.png is not a screenshot ({} bytes)",
            png.len()
        );
    }
}
