//! Hostile clients against the account routes and the token rules (issue 15, findings 8 and
//! 10): the attacks tried for real, through the gateway, the auth role, NATS and Postgres.

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Process, SECRET, TestEnv};

const PASSWORD: &str = "correct horse battery";

/// A client reaching the gateway through the test's "ingress": the peer is 127.0.0.1, which
/// the test trusts or not, and `X-Forwarded-For` names `client`, if any.
async fn post(gw: &Process, path: &str, client: Option<&str>, body: Value) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("http://{}{path}", gw.addr()))
        .json(&body);
    if let Some(client) = client {
        r = r.header("x-forwarded-for", client);
    }
    r.send().await.unwrap()
}

async fn login(gw: &Process, client: Option<&str>, user: &str, password: &str) -> u16 {
    post(
        gw,
        "/api/auth/login",
        client,
        json!({"username": user, "password": password}),
    )
    .await
    .status()
    .as_u16()
}

async fn register(gw: &Process, client: Option<&str>, user: &str) -> reqwest::Response {
    post(
        gw,
        "/api/auth/register",
        client,
        json!({"username": user, "email": format!("{user}@example.com"), "password": PASSWORD}),
    )
    .await
}

async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn behind_a_trusted_proxy_one_addresss_failures_lock_out_only_that_address() {
    let env = TestEnv::with_settings(&[
        ("PARLEY_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("AUTH_LOGIN_FAILURES_PER_ADDRESS", "5"),
        ("AUTH_LOGIN_FAILURES_PER_ACCOUNT", "3"),
    ])
    .await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    assert_eq!(register(&gw, Some("192.0.2.1"), "walt").await.status(), 201);
    assert_eq!(register(&gw, Some("192.0.2.2"), "vera").await.status(), 201);

    // One attacker tries many accounts: after 5 failures its address is refused...
    let attacker = Some("203.0.113.9");
    for n in 0..5 {
        assert_eq!(
            login(&gw, attacker, &format!("guess{n}"), "wrong password").await,
            401
        );
    }
    assert_eq!(login(&gw, attacker, "walt", PASSWORD).await, 429);
    // ...while everyone else behind the same ingress signs in.
    assert_eq!(
        login(&gw, Some("198.51.100.7"), "walt", PASSWORD).await,
        200
    );

    // Another attacker guesses vera's password until refused; vera, elsewhere, is not locked
    // out by it (3 wrong passwords per account from one address, in this test).
    let other = Some("203.0.113.10");
    for _ in 0..3 {
        assert_eq!(login(&gw, other, "vera", "wrong password").await, 401);
    }
    assert_eq!(login(&gw, other, "vera", PASSWORD).await, 429);
    assert_eq!(
        login(&gw, Some("198.51.100.8"), "vera", PASSWORD).await,
        200
    );
}

#[tokio::test]
async fn an_untrusted_peer_cannot_escape_the_address_limit_by_writing_x_forwarded_for() {
    let env = TestEnv::with_settings(&[("AUTH_LOGIN_FAILURES_PER_ADDRESS", "3")]).await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    for n in 0..3 {
        let forged = format!("198.51.100.{n}");
        assert_eq!(
            login(&gw, Some(&forged), &format!("guess{n}"), "wrong password").await,
            401
        );
    }
    let r = post(
        &gw,
        "/api/auth/login",
        Some("198.51.100.99"),
        json!({"username": "guess9", "password": "wrong password"}),
    )
    .await;
    let (status, code, _) = error_of(r).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
}

#[tokio::test]
async fn sign_ups_are_limited_per_client_address() {
    let env = TestEnv::with_settings(&[
        ("PARLEY_TRUSTED_PROXIES", "127.0.0.1"),
        ("AUTH_REGISTER_PER_ADDRESS_PER_HOUR", "2"),
    ])
    .await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let bot = Some("203.0.113.50");
    assert_eq!(register(&gw, bot, "bot1").await.status(), 201);
    // A taken name counts too: probing names is an attempt.
    assert_eq!(register(&gw, bot, "bot1").await.status(), 400);
    let (status, code, message) = error_of(register(&gw, bot, "bot3").await).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    assert!(message.contains("sign-ups"), "{message}");
    // Someone else signs up meanwhile.
    assert_eq!(
        register(&gw, Some("198.51.100.20"), "human").await.status(),
        201
    );
}

#[tokio::test]
async fn account_requests_that_are_not_json_are_refused_and_sign_nobody_in() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    assert_eq!(register(&gw, None, "carol").await.status(), 201);
    let url = |path: &str| format!("http://{}{path}", gw.addr());

    // What a cross-site form can send: text/plain with a JSON-looking body.
    let body = json!({"username": "carol", "password": PASSWORD}).to_string();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut r = reqwest::Client::new()
            .post(url("/api/auth/login"))
            .body(body.clone());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        let r = r.send().await.unwrap();
        assert!(r.headers().get("set-cookie").is_none(), "{ct:?}");
        let (status, code, message) = error_of(r).await;
        assert_eq!((status, code.as_str()), (415, "invalid"), "{ct:?}");
        assert!(message.contains("application/json"), "{message}");
    }
    for path in ["/api/auth/register", "/api/auth/refresh"] {
        let r = reqwest::Client::new()
            .post(url(path))
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{path}");
    }
    // A body past 16 KiB is too large, before anything reads it.
    let huge = json!({"username": "x".repeat(20_000), "password": "x"});
    let (status, code, _) = error_of(post(&gw, "/api/auth/login", None, huge).await).await;
    assert_eq!((status, code.as_str()), (413, "too_large"));
}

#[tokio::test]
async fn every_account_field_has_a_length_cap_with_a_clear_error() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let long = |n: usize| "a".repeat(n);
    let cases = [
        (
            "/api/auth/login",
            json!({"username": long(300), "password": PASSWORD}),
            "username",
        ),
        (
            "/api/auth/login",
            json!({"username": "alice", "password": long(300)}),
            "password",
        ),
        (
            "/api/auth/register",
            json!({"username": long(40), "email": "a@example.com", "password": PASSWORD}),
            "username",
        ),
        (
            "/api/auth/register",
            json!({"username": "alice", "email": format!("{}@example.com", long(300)), "password": PASSWORD}),
            "email",
        ),
        (
            "/api/auth/register",
            json!({"username": "alice", "email": "a@example.com", "password": long(257)}),
            "password",
        ),
        (
            "/api/auth/register",
            json!({"username": "alice", "email": "a@example.com", "password": PASSWORD, "displayName": long(65)}),
            "displayName",
        ),
        (
            "/api/auth/refresh",
            json!({"refreshToken": long(200)}),
            "refreshToken",
        ),
        (
            "/api/auth/logout",
            json!({"refreshToken": long(200)}),
            "refreshToken",
        ),
    ];
    for (path, body, field) in cases {
        let (status, code, message) = error_of(post(&gw, path, None, body).await).await;
        assert_eq!((status, code.as_str()), (400, "invalid"), "{path} {field}");
        assert!(message.contains(field), "{path}: {message}");
    }
}

#[tokio::test]
async fn a_sign_up_flood_with_one_hashing_slot_gets_201s_or_clear_503s_and_auth_carries_on() {
    let env = TestEnv::with_settings(&[
        ("PARLEY_TRUSTED_PROXIES", "127.0.0.1"),
        ("AUTH_HASH_CONCURRENCY", "1"),
        ("AUTH_HASH_WAIT_MS", "1"),
    ])
    .await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let answers = futures::future::join_all((0..24).map(|n| {
        let gw = &gw;
        async move {
            let client = format!("198.51.100.{n}");
            let r = register(gw, Some(&client), &format!("flood{n}")).await;
            (n, error_or_created(r).await)
        }
    }))
    .await;
    let mut created = Vec::new();
    for (n, answer) in answers {
        match answer {
            Ok(()) => created.push(n),
            Err((status, code, message)) => {
                assert_eq!((status, code.as_str()), (503, "unavailable"), "{message}");
                assert!(message.contains("try again"), "{message}");
            }
        }
    }
    assert!(!created.is_empty(), "at least the first sign-up is served");
    // The role is still there and signs people in.
    let n = created[0];
    assert_eq!(
        login(&gw, Some("192.0.2.77"), &format!("flood{n}"), PASSWORD).await,
        200
    );
}

async fn error_or_created(r: reqwest::Response) -> Result<(), (u16, String, String)> {
    if r.status() == 201 {
        Ok(())
    } else {
        Err(error_of(r).await)
    }
}

/// The HTTP status of a WebSocket upgrade with `token`.
async fn upgrade_status(gw: &Process, token: &str) -> u16 {
    let request = format!("ws://{}/ws?token={token}", gw.addr())
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected upgrade failure: {e}"),
    }
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn hs256_tokens_need_an_exp_a_bounded_lifetime_the_issuer_and_an_app_subject() {
    let env = TestEnv::with_settings(&[("AUTH_HS256_ISSUER", "https://app.example")]).await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let account: Value = register(&gw, None, "dana").await.json().await.unwrap();
    let dana_id = account["user"]["id"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().timestamp();
    let iss = "https://app.example";

    let refused = [
        ("no exp", json!({"sub": "alice", "iss": iss})),
        (
            "a year long",
            json!({"sub": "alice", "iss": iss, "exp": now + 365 * 86_400}),
        ),
        (
            "two days from iat",
            json!({"sub": "alice", "iss": iss, "iat": now - 60, "exp": now + 2 * 86_400}),
        ),
        ("no iss", json!({"sub": "alice", "exp": now + 600})),
        (
            "another iss",
            json!({"sub": "alice", "iss": "https://evil.example", "exp": now + 600}),
        ),
        (
            "a Parley account",
            json!({"sub": dana_id, "iss": iss, "exp": now + 600}),
        ),
    ];
    for (what, claims) in refused {
        assert_eq!(upgrade_status(&gw, &hs256(claims)).await, 401, "{what}");
    }
    let ok = hs256(json!({"sub": "alice", "iss": iss, "iat": now, "exp": now + 3600}));
    assert_eq!(upgrade_status(&gw, &ok).await, 101);
    // Dana's own Parley token still works for Dana.
    let token = account["token"].as_str().unwrap();
    assert_eq!(upgrade_status(&gw, token).await, 101);
}
