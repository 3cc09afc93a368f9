//! Hostile clients at the edge (issue 15, findings 1, 2 and 9): a signed-out token, a page on
//! another origin holding the user's cookie, and slow or greedy HTTP clients.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, ORIGIN};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{PATIENCE, Process, TestEnv, WsClient, eventually};

const EVIL: &str = "https://evil.example";

/// Registers `name`; returns its access token and its session cookie (`parley_session=...`).
async fn register(gw: &Process, name: &str) -> (String, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/auth/register", gw.addr()))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body: Value = r.json().await.unwrap();
    (body["token"].as_str().unwrap().to_owned(), cookie)
}

/// Signs `name` in again: a second session.
async fn login(gw: &Process, name: &str) -> (String, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/auth/login", gw.addr()))
        .json(&json!({"username": name, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body: Value = r.json().await.unwrap();
    (body["token"].as_str().unwrap().to_owned(), cookie)
}

/// A `/ws` upgrade with the given query token and headers: the status it got (101 if it
/// upgraded) and the refusal's body.
async fn ws_upgrade(
    addr: SocketAddr,
    token: Option<&str>,
    headers: &[(&'static str, &str)],
) -> (u16, Value) {
    let url = match token {
        Some(t) => format!("ws://{addr}/ws?token={t}"),
        None => format!("ws://{addr}/ws"),
    };
    let mut request = url.into_client_request().unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_ws, response)) => (response.status().as_u16(), Value::Null),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("ws upgrade failed: {e}"),
    }
}

/// A Socket.IO connect over Engine.IO long-polling, as a browser's first transport does: the
/// handshake, the connect packet (with `auth.token` if given), then the poll that carries the
/// server's answer: `40{...}` (connected) or `44{...}` (`connect_error`).
async fn socketio_connect(
    addr: SocketAddr,
    token: Option<&str>,
    headers: &[(&'static str, &str)],
) -> String {
    let http = reqwest::Client::new();
    let with = |mut rb: reqwest::RequestBuilder| {
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb
    };
    let base = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
    let open = with(http.get(&base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet"))
        .unwrap_or_else(|_| panic!("handshake: {open}"));
    let sid = handshake["sid"].as_str().unwrap();
    let url = format!("{base}&sid={sid}");
    let connect = match token {
        Some(t) => format!("40{}", json!({ "token": t })),
        None => "40".to_owned(),
    };
    let posted = with(http.post(&url))
        .header(CONTENT_TYPE, "text/plain;charset=UTF-8")
        .body(connect)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let mut answer = String::new();
    while !answer.contains("40") && !answer.contains("44") {
        let polled = tokio::time::timeout(PATIENCE, with(http.get(&url)).send())
            .await
            .expect("the poll answers")
            .unwrap();
        answer += &polled.text().await.unwrap();
    }
    answer
}

fn connected(answer: &str) -> bool {
    answer.contains("40{\"sid\"")
}

fn refused(answer: &str) -> bool {
    answer.contains("44{") && answer.contains("Authentication error")
}

async fn users_status(gw: &Process, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{}/api/users?query=zz", gw.addr()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_signed_out_token_is_refused_on_ws_socketio_rest_and_by_a_gateway_started_later() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let (token, cookie) = register(&gw, "olga").await;

    // Before: the token opens sockets on both transports and calls the API.
    assert_eq!(ws_upgrade(gw.addr(), Some(&token), &[]).await.0, 101);
    assert!(connected(
        &socketio_connect(gw.addr(), Some(&token), &[]).await
    ));
    assert_eq!(users_status(&gw, &token).await, 200);

    let r = reqwest::Client::new()
        .post(format!("http://{}/api/auth/logout", gw.addr()))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // After: the same token, still unexpired, is refused everywhere.
    let (status, body) = eventually(|| async {
        let (status, body) = ws_upgrade(gw.addr(), Some(&token), &[]).await;
        (status != 101).then_some((status, body))
    })
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(refused(
        &socketio_connect(gw.addr(), Some(&token), &[]).await
    ));
    assert_eq!(users_status(&gw, &token).await, 401);

    // A gateway started after the sign-out learns of it from the auth role.
    let later = env.spawn_gateway().await;
    assert_eq!(ws_upgrade(later.addr(), Some(&token), &[]).await.0, 401);
    assert!(refused(
        &socketio_connect(later.addr(), Some(&token), &[]).await
    ));
    assert_eq!(users_status(&later, &token).await, 401);
}

#[tokio::test]
async fn auth_refresh_refuses_a_token_of_a_signed_out_session() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let (laptop_token, laptop_cookie) = register(&gw, "petra").await;
    let (phone_token, _) = login(&gw, "petra").await;
    let mut phone = WsClient::connect(gw.addr(), &phone_token).await;
    // Before: the laptop's token refreshes the phone's socket (same user).
    let before = phone
        .request("auth:refresh", json!({ "token": laptop_token }))
        .await;
    assert_eq!(before["ok"], true, "{before}");
    // Back onto the phone's own session (a socket belongs to the session of its newest token,
    // and the laptop's sign-out would close it otherwise).
    let back = phone
        .request("auth:refresh", json!({ "token": phone_token }))
        .await;
    assert_eq!(back["ok"], true, "{back}");

    let r = reqwest::Client::new()
        .post(format!("http://{}/api/auth/logout", gw.addr()))
        .header(COOKIE, &laptop_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually(|| async {
        (ws_upgrade(gw.addr(), Some(&laptop_token), &[]).await.0 == 401).then_some(())
    })
    .await;
    let after = phone
        .request("auth:refresh", json!({ "token": laptop_token }))
        .await;
    assert_eq!(after["ok"], false, "{after}");
    assert_eq!(after["error"]["code"], "unauthenticated");
}

#[tokio::test]
async fn a_cookie_from_another_origin_opens_no_socket_but_the_same_origin_and_tokens_do() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let (token, cookie) = register(&gw, "quinn").await;
    let own = format!("http://{}", gw.addr());

    // /ws: the cookie from evil.example is refused 403; from the page's own origin it works.
    let (status, body) =
        ws_upgrade(gw.addr(), None, &[("cookie", &cookie), ("origin", EVIL)]).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        json!({"error": {"code": "forbidden", "message": "origin not allowed"}})
    );
    let (status, _) = ws_upgrade(gw.addr(), None, &[("cookie", &cookie), ("origin", &own)]).await;
    assert_eq!(status, 101);
    // A token is not origin-bound.
    let (status, _) = ws_upgrade(gw.addr(), Some(&token), &[("origin", EVIL)]).await;
    assert_eq!(status, 101);

    // Socket.IO likewise: connect_error for the cookie from evil.example.
    let cookie_evil = [("cookie", cookie.as_str()), ("origin", EVIL)];
    assert!(refused(
        &socketio_connect(gw.addr(), None, &cookie_evil).await
    ));
    let cookie_own = [("cookie", cookie.as_str()), ("origin", own.as_str())];
    assert!(connected(
        &socketio_connect(gw.addr(), None, &cookie_own).await
    ));
    assert!(connected(
        &socketio_connect(gw.addr(), Some(&token), &[("origin", EVIL)]).await
    ));
}

#[tokio::test]
async fn cookie_authenticated_unsafe_calls_need_an_allowed_origin_and_json() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let (token, cookie) = register(&gw, "rosa").await;
    let own = format!("http://{}", gw.addr());
    let url = format!("http://{}/api/conversations", gw.addr());
    let open = json!({"participantIds": ["sam"]}).to_string();
    let http = reqwest::Client::new();
    let post = |origin: Option<&str>, content_type: &str| {
        let mut rb = http
            .post(&url)
            .header(COOKIE, &cookie)
            .header(CONTENT_TYPE, content_type)
            .body(open.clone());
        if let Some(o) = origin {
            rb = rb.header(ORIGIN, o);
        }
        rb
    };

    let r = post(Some(EVIL), "application/json").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "forbidden"
    );
    // A form can post text/plain cross-site without a preflight: refused whatever the origin.
    let r = post(Some(&own), "text/plain").send().await.unwrap();
    assert_eq!(r.status(), 415);
    let r = post(None, "text/plain").send().await.unwrap();
    assert_eq!(r.status(), 415);
    // The page's own origin, and a client that sends no Origin at all, with JSON: accepted.
    let r = post(Some(&own), "application/json").send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = post(None, "application/json").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A bearer token from any origin: accepted.
    let r = http
        .post(&url)
        .bearer_auth(&token)
        .header(ORIGIN, EVIL)
        .header(CONTENT_TYPE, "application/json")
        .body(open.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Login CSRF: a sign-in posted from another origin, or as a text/plain form, is refused.
    let login = json!({"username": "rosa", "password": "correct horse battery"}).to_string();
    let r = http
        .post(format!("http://{}/api/auth/login", gw.addr()))
        .header(ORIGIN, EVIL)
        .header(CONTENT_TYPE, "application/json")
        .body(login.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("http://{}/api/auth/login", gw.addr()))
        .header(CONTENT_TYPE, "text/plain")
        .body(login)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn allowed_origins_let_a_configured_app_origin_use_the_cookie() {
    let env = TestEnv::with_settings(&[(
        "PARLEY_ALLOWED_ORIGINS",
        "https://app.example.com, http://localhost:5173",
    )])
    .await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let (_, cookie) = register(&gw, "sven").await;
    let (status, _) = ws_upgrade(
        gw.addr(),
        None,
        &[("cookie", &cookie), ("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(status, 101);
    // Once a list is set, the gateway's own host is no longer implied.
    let own = format!("http://{}", gw.addr());
    let (status, _) = ws_upgrade(gw.addr(), None, &[("cookie", &cookie), ("origin", &own)]).await;
    assert_eq!(status, 403);
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_sending_its_headers_a_byte_a_second_is_disconnected() {
    let env = TestEnv::with_settings(&[("PARLEY_HTTP_HEADER_TIMEOUT_SECONDS", "2")]).await;
    let gw = env.spawn_gateway().await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    // Longer than the test's patience at a byte a second: only a timeout ends it.
    let head = format!(
        "GET /api/openapi.json HTTP/1.1\r\nHost: {}\r\nX-Slow: {}\r\n\r\n",
        gw.addr(),
        "a".repeat(100)
    );
    let trickle = tokio::spawn(async move {
        for byte in head.bytes() {
            if write.write_all(&[byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        true
    });
    let mut buf = [0u8; 1024];
    let answered = tokio::time::timeout(PATIENCE, read.read(&mut buf))
        .await
        .expect("the server closed the connection");
    assert!(
        matches!(answered, Ok(0) | Err(_)),
        "a half-sent request gets no answer, only a close"
    );
    trickle.abort();
}

#[tokio::test]
async fn past_the_per_address_cap_a_new_connection_is_refused_until_one_closes() {
    let env = TestEnv::with_settings(&[
        ("PARLEY_MAX_CONNECTIONS_PER_ADDRESS", "3"),
        ("PARLEY_HTTP_HEADER_TIMEOUT_SECONDS", "120"),
    ])
    .await;
    let gw = env.spawn_gateway().await;
    let request = format!("GET /ws HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr());
    // Three keep-alive connections, each proven accepted by an answer (401: no token).
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 401"));
        open.push(tcp);
    }
    // The fourth from the same address is answered 429 and closed.
    let mut fourth = TcpStream::connect(gw.addr()).await.unwrap();
    let _ = fourth.write_all(request.as_bytes()).await;
    let got = read_to_close(&mut fourth).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 429"),
        "refused, not served: {got}"
    );
    assert!(!got.contains("401"), "{got}");
    // One closes: a new connection is served again.
    drop(open.pop());
    eventually(|| async {
        let mut tcp = TcpStream::connect(gw.addr()).await.ok()?;
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut buf = [0u8; 512];
        let n = tcp.read(&mut buf).await.ok()?;
        buf[..n].starts_with(b"HTTP/1.1 401").then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_upload_that_stalls_is_disconnected_after_the_idle_timeout() {
    let env = TestEnv::with_settings(&[("PARLEY_HTTP_IDLE_TIMEOUT_SECONDS", "30")]).await;
    let gw = env.spawn_gateway().await;
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    // The head in full, then ten of the hundred bytes it announces, then nothing.
    let head = format!(
        "POST /api/auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"username\"",
        gw.addr()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    // A deadline well past the 30 s setting: only the idle timeout ends the wait.
    let answered = tokio::time::timeout(Duration::from_secs(120), tcp.read(&mut buf))
        .await
        .expect("the server closed the stalled connection");
    assert!(
        matches!(answered, Ok(0) | Err(_)),
        "a stalled upload gets no answer, only a close"
    );
}
