//! Parley's own accounts, walked as a browser and an app would: HTTP with a cookie jar, then the
//! socket with the token the cookie gets.

use serde_json::{Value, json};

use crate::helpers::{Process, TestEnv, WsClient, browser};

async fn register(http: &reqwest::Client, gw: &Process, name: &str) -> Value {
    let r = http
        .post(format!("http://{}/api/auth/register", gw.addr()))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse battery", "displayName": name.to_uppercase()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    r.json().await.unwrap()
}

async fn token_from_cookie(http: &reqwest::Client, gw: &Process) -> reqwest::Response {
    http.get(format!("http://{}/api/auth/token", gw.addr()))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_browser_registers_signs_in_gets_a_token_from_its_cookie_and_chats() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;

    // Register: 201, an httpOnly session cookie, and a token in the body.
    let alice_browser = browser();
    let r = alice_browser
        .post(format!("http://{}/api/auth/register", gw.addr()))
        .json(&json!({"username": "alice", "email": "alice@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("parley_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain http: no Secure flag");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["username"], "alice");
    assert_eq!(body["user"]["displayName"], "alice");
    assert!(
        body.get("session").is_none(),
        "the session secret stays in the cookie"
    );
    let alice_id = body["user"]["id"].as_str().unwrap().to_owned();

    // The same name again is refused.
    let again = browser()
        .post(format!("http://{}/api/auth/register", gw.addr()))
        .json(&json!({"username": "ALICE", "email": "other@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400);

    // Bob signs in (after registering in another browser) with his email.
    let bob_browser = browser();
    let bob_id = register(&bob_browser, &gw, "bob").await["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = bob_browser
        .post(format!("http://{}/api/auth/login", gw.addr()))
        .json(&json!({"username": "BOB@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The route the seed's browser code calls: {token} from the cookie.
    let r = token_from_cookie(&alice_browser, &gw).await;
    assert_eq!(r.status(), 200);
    let alice_token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = token_from_cookie(&bob_browser, &gw).await;
    let bob_token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        token_from_cookie(&browser(), &gw).await.status(),
        401,
        "no cookie, no token"
    );

    // Both connect with their tokens and chat.
    let mut alice = WsClient::connect(gw.addr(), &alice_token).await;
    let mut bob = WsClient::connect(gw.addr(), &bob_token).await;
    let conv = alice.open_dm(&bob_id).await;
    alice.send_message(&conv, "h1", "hello bob").await;
    let got = bob.messages(&conv, 1).await;
    assert_eq!(got[0]["senderId"], alice_id.as_str());

    // User search, signed in only.
    let r = alice_browser
        .get(format!("http://{}/api/users?query=bo", gw.addr()))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let users: Value = r.json().await.unwrap();
    assert_eq!(
        users["users"],
        json!([{"id": bob_id, "username": "bob", "displayName": "BOB"}])
    );
    // And by id, as the web app names a conversation's members (unknown ids are left out).
    let by_id: Value = alice_browser
        .get(format!(
            "http://{}/api/users?ids={bob_id},not-a-user",
            gw.addr()
        ))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_id["users"], users["users"]);
    let r = reqwest::get(format!("http://{}/api/users?query=bo", gw.addr()))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The JWKS is public.
    let jwks: Value = reqwest::get(format!("http://{}/.well-known/jwks.json", gw.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
}

#[tokio::test]
async fn a_browser_connects_with_just_its_session_cookie() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let _persistence = env.spawn_persistence().await;
    let gw = env.spawn_gateway().await;
    let http = browser();
    let carol = register(&http, &gw, "carol").await["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dave = register(&browser(), &gw, "dave").await["user"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http
        .post(format!("http://{}/api/auth/login", gw.addr()))
        .json(&json!({"username": "carol", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/ws", gw.addr())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the cookie alone upgrades");
    // The socket is carol's: what it opens, carol is a participant of.
    use futures::{SinkExt, StreamExt};
    let open = json!({"id": 1, "type": "conversation:open", "data": {"participantIds": [dave]}});
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            open.to_string(),
        ))
        .await
        .unwrap();
    let reply = loop {
        let frame = socket.next().await.expect("a reply").unwrap();
        let Ok(text) = frame.to_text() else { continue };
        let v: Value = serde_json::from_str(text).unwrap();
        if v["type"] == "ack" && v["id"] == 1 {
            break v;
        }
    };
    assert_eq!(reply["data"]["ok"], true, "{reply}");
    let mut members: Vec<String> =
        serde_json::from_value(reply["data"]["conversation"]["participantIds"].clone()).unwrap();
    members.sort();
    let mut expected = vec![carol, dave];
    expected.sort();
    assert_eq!(members, expected);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_whole_session() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let http = browser();
    let first = register(&http, &gw, "dave").await["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let refresh = |token: String| {
        let url = format!("http://{}/api/auth/refresh", gw.addr());
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"refreshToken": token}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = refresh(first.clone()).await;
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    let second_token = second["refreshToken"].as_str().unwrap().to_owned();
    assert_ne!(second_token, first, "rotated");
    assert!(second["token"].is_string());

    // The spent one comes back (stolen): refused, and the whole session with it.
    assert_eq!(refresh(first).await.status(), 401);
    assert_eq!(
        refresh(second_token).await.status(),
        401,
        "the family is revoked"
    );
    assert_eq!(
        token_from_cookie(&http, &gw).await.status(),
        401,
        "the cookie's session too"
    );
    assert_eq!(refresh("made-up".into()).await.status(), 401);
}

#[tokio::test]
async fn the_eleventh_wrong_password_in_a_minute_is_rate_limited_and_others_still_sign_in() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let http = browser();
    register(&http, &gw, "erin").await;
    register(&http, &gw, "frank").await;
    let login = |user: &'static str, password: &'static str| {
        let url = format!("http://{}/api/auth/login", gw.addr());
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"username": user, "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    for _ in 0..10 {
        assert_eq!(login("erin", "wrong password!").await.status(), 401);
    }
    let r = login("erin", "wrong password!").await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    // Even the right password waits out the minute for that account...
    assert_eq!(login("erin", "correct horse battery").await.status(), 429);
    // ...while another account signs in from the same address.
    assert_eq!(login("frank", "correct horse battery").await.status(), 200);
    // An unknown account is the same 401 as a wrong password.
    let r = login("nobody", "whatever-password").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["message"],
        "wrong username or password"
    );
}

#[tokio::test]
async fn bad_account_requests_get_clear_errors() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let url = format!("http://{}/api/auth/register", gw.addr());
    for (body, what) in [
        (
            json!({"username": "x", "email": "x@example.com", "password": "long enough pw"}),
            "username",
        ),
        (
            json!({"username": "xavier", "email": "not-an-email", "password": "long enough pw"}),
            "email",
        ),
        (
            json!({"username": "xavier", "email": "x@example.com", "password": "short"}),
            "password",
        ),
        // Postgres text cannot hold NUL: refused up front, not a database error.
        (
            json!({"username": "xavier", "email": "x\u{0}@example.com", "password": "long enough pw"}),
            "email",
        ),
        (
            json!({"username": "xavier", "email": "x@example.com", "password": "long enough pw", "displayName": "X\u{0}"}),
            "displayName",
        ),
    ] {
        let r = reqwest::Client::new()
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(what),
            "{e}"
        );
    }
    let r = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/auth/login", gw.addr()))
        .json(&json!({"username": "x\u{0}", "password": "whatever1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = reqwest::Client::new()
        .get(format!("http://{}/api/users?query=a%00b", gw.addr()))
        .bearer_auth(env.token("alice", 60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Users by id: one of query and ids, ids that are user ids, at most 100 of them.
    let many = vec!["u"; 101].join(",");
    for q in ["", "query=a&ids=b", "ids=a.b", &format!("ids={many}")] {
        let r = reqwest::Client::new()
            .get(format!("http://{}/api/users?{q}", gw.addr()))
            .bearer_auth(env.token("alice", 60))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
    }
    let r: Value = reqwest::Client::new()
        .get(format!(
            "http://{}/api/users?ids=nobody,nobody-else",
            gw.addr()
        ))
        .bearer_auth(env.token("alice", 60))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["users"], serde_json::json!([]));
}

#[tokio::test]
async fn with_the_auth_role_down_sign_in_answers_503() {
    let env = TestEnv::new().await;
    let gw = env.spawn_gateway().await;
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/auth/login", gw.addr()))
        .json(&json!({"username": "alice", "password": "whatever-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unavailable"
    );
}

#[tokio::test]
async fn logout_closes_that_sessions_sockets_on_every_gateway_and_no_others() {
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let _persistence = env.spawn_persistence().await;
    let gw_a = env.spawn_gateway().await;
    let gw_b = env.spawn_gateway().await;

    let laptop = browser();
    register(&laptop, &gw_a, "gina").await;
    let phone = browser();
    let r = phone
        .post(format!("http://{}/api/auth/login", gw_b.addr()))
        .json(&json!({"username": "gina", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let laptop_token = token_from_cookie(&laptop, &gw_a)
        .await
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let phone_token = token_from_cookie(&phone, &gw_b)
        .await
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The laptop's session has sockets on both gateways; the phone's session one.
    let mut laptop_a = WsClient::connect(gw_a.addr(), &laptop_token).await;
    let mut laptop_b = WsClient::connect(gw_b.addr(), &laptop_token).await;
    let mut phone_b = WsClient::connect(gw_b.addr(), &phone_token).await;

    let r = laptop
        .post(format!("http://{}/api/auth/logout", gw_a.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    assert_eq!(laptop_a.closed().await, (4002, "signed out".to_owned()));
    assert_eq!(laptop_b.closed().await, (4002, "signed out".to_owned()));
    // The other session is untouched.
    let conv = phone_b.open_dm("someone").await;
    assert_eq!(
        phone_b.send_message(&conv, "p1", "still here").await["ok"],
        true
    );
    // And the signed-out cookie gets no new token.
    assert_eq!(token_from_cookie(&laptop, &gw_a).await.status(), 401);
}

#[tokio::test]
async fn after_a_key_rotation_old_tokens_still_verify_and_new_ones_use_the_new_key() {
    let env = TestEnv::new().await;
    let auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let http = browser();
    let old_token = register(&http, &gw, "hank").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The gateway learns the first key.
    WsClient::connect(gw.addr(), &old_token).await;

    let new_kid = parley_auth::store::keys::rotate(&env.pool).await.unwrap();
    // An auth replica picks the rotation up (a restart here; a running one within a minute).
    auth.stop().await;
    let _auth = env.spawn_auth().await;

    let new_token = token_from_cookie(&http, &gw)
        .await
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let header = jsonwebtoken::decode_header(&new_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
    // The gateway has never seen the new kid: it refetches the JWKS and accepts the token...
    WsClient::connect(gw.addr(), &new_token).await;
    // ...and the old token, signed by the retired key, is still good until it expires.
    WsClient::connect(gw.addr(), &old_token).await;
    let jwks: Value = reqwest::get(format!("http://{}/.well-known/jwks.json", gw.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn every_forged_parley_token_gets_401_and_only_unauthenticated() {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let env = TestEnv::new().await;
    let _auth = env.spawn_auth().await;
    let gw = env.spawn_gateway().await;
    let http = browser();
    let genuine = register(&http, &gw, "ivan").await;
    let user = genuine["user"]["id"].as_str().unwrap().to_owned();
    let jwks: Value = reqwest::get(format!("http://{}/.well-known/jwks.json", gw.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let exp = chrono::Utc::now().timestamp() + 600;

    // An attacker's own key, passed off under the real kid.
    let mut theirs = parley_auth::signing::generate();
    theirs.kid = kid.clone();
    let attacker = parley_auth::signing::KeyRing::new(vec![theirs]).unwrap();
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some(kid.clone());
    let forged = [
        (
            "another key, same kid",
            attacker.sign(&user, "s", "parley", "parley", 600).0,
        ),
        (
            "unknown kid",
            parley_auth::signing::KeyRing::new(vec![parley_auth::signing::generate()])
                .unwrap()
                .sign(&user, "s", "parley", "parley", 600)
                .0,
        ),
        (
            "HS256 keyed with the public key",
            jsonwebtoken::encode(
                &confused,
                &json!({"sub": user, "exp": exp, "iss": "parley", "aud": "parley"}),
                &EncodingKey::from_secret(public_x.as_bytes()),
            )
            .unwrap(),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&format!(r#"{{"alg":"none","kid":"{kid}"}}"#)),
                b64(&format!(
                    r#"{{"sub":"{user}","exp":{exp},"iss":"parley","aud":"parley"}}"#
                ))
            ),
        ),
        ("oversized", format!("{}.{}.x", b64("{}"), "a".repeat(9000))),
    ];
    let expected =
        json!({"error": {"code": "unauthenticated", "message": "a valid token is required"}});
    for (what, token) in forged {
        let r = reqwest::Client::new()
            .get(format!("http://{}/api/users?query=iv", gw.addr()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.json::<Value>().await.unwrap(), expected, "{what}");
    }
    // The genuine token passes the same door.
    let r = reqwest::Client::new()
        .get(format!("http://{}/api/users?query=iv", gw.addr()))
        .bearer_auth(genuine["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
