//! The broker is a trust boundary: on a nats-server configured with the authorization block
//! Parley renders (`parley nats-config`), each role connects as its own user and can do what its
//! role does and nothing else, and a client without the right password cannot connect at all.
//! The server is a private one (the pinned nats-server, `PARLEY_TEST_NATS_SERVER`), started for
//! the test with this test's prefix, since the shared test server lets everyone in.

use std::path::PathBuf;
use std::process::Stdio;

use async_nats::{ConnectErrorKind, Event};
use parley_common::config::{Env, NatsConfig};
use parley_common::nats_auth::{BrokerRole, render_server_config};
use parley_common::subjects::Subjects;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::helpers::{PATIENCE, TestEnv, WsClient, eventually, free_port, nats_answers};

/// The pinned nats-server `./dev test` names; the test fails, never skips, without it.
fn nats_server() -> PathBuf {
    let path = std::env::var_os("PARLEY_TEST_NATS_SERVER").expect(
        "PARLEY_TEST_NATS_SERVER names the nats-server 2.11+ to run privately (./dev test sets it)",
    );
    PathBuf::from(path)
}

/// A private nats-server with JetStream and Parley's authorization for `prefix`, each role's
/// password in its environment; its log and store in a fresh folder, removed on drop.
struct SecuredNats {
    url: String,
    monitor: u16,
    dir: PathBuf,
    passwords: Vec<(BrokerRole, String)>,
    _child: Child,
}

impl SecuredNats {
    async fn start(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("parley-broker-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("nats.conf");
        let subjects = Subjects::new(prefix).unwrap();
        std::fs::write(&conf, render_server_config(&subjects, false)).unwrap();
        let passwords: Vec<(BrokerRole, String)> = BrokerRole::ALL
            .into_iter()
            .map(|role| (role, uuid::Uuid::new_v4().simple().to_string()))
            .collect();
        let (port, monitor) = (free_port(), free_port());
        let mut cmd = Command::new(nats_server());
        cmd.arg("-c")
            .arg(&conf)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string(), "-sd"])
            .arg(dir.join("store"))
            .arg("-l")
            .arg(dir.join("nats.log"))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        for (role, password) in &passwords {
            cmd.env(role.password_var(), password);
        }
        let child = cmd.spawn().expect("start the pinned nats-server");
        nats_answers(port).await;
        Self {
            url: format!("nats://127.0.0.1:{port}"),
            monitor,
            dir,
            passwords,
            _child: child,
        }
    }

    fn password(&self, role: BrokerRole) -> &str {
        &self.passwords.iter().find(|(r, _)| *r == role).unwrap().1
    }

    /// Every role's credentials, as `parley all` takes them (`PARLEY_<ROLE>_NATS_*`).
    fn role_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for role in BrokerRole::ALL {
            let scope = role.user().to_ascii_uppercase();
            env.push((format!("PARLEY_{scope}_NATS_USER"), role.user().to_owned()));
            env.push((
                role.password_var().to_owned(),
                self.password(role).to_owned(),
            ));
        }
        env
    }

    /// The server's log lines that report a permission or authorization violation.
    fn violations(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("nats.log")).expect("the server's log");
        assert!(log.contains("Server is ready"), "{log}");
        log.lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_owned)
            .collect()
    }

    /// A client as `role` would connect (its credentials and its inbox prefix), whose server
    /// errors arrive on the returned channel.
    async fn client_as(
        &self,
        prefix: &str,
        role: BrokerRole,
    ) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let scope = role.user().to_ascii_uppercase();
        let env = Env::from_pairs([
            ("NATS_URL".to_owned(), self.url.clone()),
            ("PARLEY_NATS_PREFIX".to_owned(), prefix.to_owned()),
            (format!("PARLEY_{scope}_NATS_USER"), role.user().to_owned()),
            (
                role.password_var().to_owned(),
                self.password(role).to_owned(),
            ),
        ]);
        let cfg = NatsConfig::for_role(&env, role).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let client = parley_common::nats_auth::apply(async_nats::ConnectOptions::new(), &cfg)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect as {}: {e}", role.user()));
        (client, rx)
    }
}

impl Drop for SecuredNats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for the server's error `Permissions Violation for <what> to "<subject>"`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    let wanted = format!("Permissions Violation for {what} to \"{subject}\"");
    tokio::time::timeout(PATIENCE, async {
        while let Some(e) = errors.recv().await {
            if e.contains(&wanted) {
                return;
            }
        }
        panic!("the connection ended before the server refused {subject}");
    })
    .await
    .unwrap_or_else(|_| panic!("the server never answered `{wanted}`"));
}

#[tokio::test]
async fn each_role_runs_as_its_own_broker_user_and_a_message_goes_end_to_end() {
    let mut env = TestEnv::new().await;
    let nats = SecuredNats::start(&env.prefix).await;
    env.nats_url = nats.url.clone();
    let (port, admin) = (free_port(), free_port());
    let mut cmd = env.parley_role("all", port, admin);
    cmd.envs(nats.role_env())
        .env("PARLEY_DRAIN_SECONDS", "5")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(nats.dir.join("parley.log")).unwrap());
    let mut all = cmd.spawn().expect("start parley all");
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    tokio::select! {
        () = eventually(|| {
            let (http, ready) = (http.clone(), ready.clone());
            async move {
                let ok = http.get(&ready).send().await.ok()?.status().is_success();
                ok.then_some(())
            }
        }) => {}
        status = all.wait() => panic!(
            "parley all exited ({status:?}): {}",
            std::fs::read_to_string(nats.dir.join("parley.log")).unwrap_or_default()
        ),
    }

    // Each role's connection is its own user.
    let connz: Value = http
        .get(format!("http://127.0.0.1:{}/connz?auth=true", nats.monitor))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let users: Vec<(String, String)> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["authorized_user"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for role in BrokerRole::ALL {
        assert!(
            users.contains(&(role.service_name().to_owned(), role.user().to_owned())),
            "{} should be connected as {}: {users:?}",
            role.service_name(),
            role.user()
        );
    }

    // Auth answers through the gateway (rpc.auth), as the auth user.
    let base = format!("http://127.0.0.1:{port}");
    let registered = http
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"username": "carol", "email": "carol@example.com", "password": "a-long-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        registered.status(),
        201,
        "{}",
        registered.text().await.unwrap()
    );

    // A message from alice to bob: command, stream, persistence, Postgres, delivery; typing
    // goes from gateway to gateway.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut alice = WsClient::connect(addr, &env.token("alice", 3600)).await;
    let mut bob = WsClient::connect(addr, &env.token("bob", 3600)).await;
    let conversation = alice.open_dm("bob").await;
    let reply = alice.send_message(&conversation, "m-1", "hello bob").await;
    assert_eq!(reply["ok"], true, "{reply}");
    let got = bob.messages(&conversation, 1).await;
    assert_eq!(got[0]["content"], "hello bob");
    assert_eq!(got[0]["senderId"], "alice");
    assert_eq!(env.stored(&conversation).await.len(), 1);
    alice
        .send_frame(
            &json!({"type": "typing", "data": {"conversationId": conversation, "isTyping": true}}),
        )
        .await;
    let typing = bob.wait_for(|f| f["type"] == "typing").await;
    assert_eq!(typing["data"]["userId"], "alice");

    // Persistence acked the command: the work-queue stream is empty again.
    let (reader, _) = nats.client_as(&env.prefix, BrokerRole::Persistence).await;
    let js = async_nats::jetstream::new(reader);
    let stream_in = Subjects::new(&env.prefix).unwrap().stream_in();
    eventually(|| {
        let (js, stream_in) = (js.clone(), stream_in.clone());
        async move {
            let mut stream = js.get_stream(stream_in).await.ok()?;
            (stream.info().await.ok()?.state.messages == 0).then_some(())
        }
    })
    .await;

    // Nothing any role did was refused along the way.
    assert_eq!(nats.violations(), Vec::<String>::new());
    all.start_kill().unwrap();
    let _ = all.wait().await;
}

#[tokio::test]
async fn gateway_credentials_cannot_consume_commands_answer_auth_revoke_or_read_other_inboxes() {
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let subjects = Subjects::new(&prefix).unwrap();
    let nats = SecuredNats::start(&prefix).await;
    // Persistence declares the streams, as it does at start.
    let (persistence, _) = nats.client_as(&prefix, BrokerRole::Persistence).await;
    let js = async_nats::jetstream::new(persistence);
    parley_common::nats::ensure_streams(&js, &subjects, Default::default())
        .await
        .unwrap();

    let (gateway, mut errors) = nats.client_as(&prefix, BrokerRole::Gateway).await;
    // What a gateway does is allowed: a command goes into the stream.
    let gw_js = async_nats::jetstream::new(gateway.clone());
    gw_js
        .publish(subjects.in_msg(uuid::Uuid::now_v7()), "{}".into())
        .await
        .unwrap()
        .await
        .expect("the gateway may publish a command");

    // It cannot make itself a consumer of the command stream...
    let stream_in = subjects.stream_in();
    let create = format!("$JS.API.CONSUMER.CREATE.{stream_in}.THIEF");
    gateway
        .publish(
            create.clone(),
            r#"{"stream_name":"x","config":{"name":"THIEF"}}"#.into(),
        )
        .await
        .unwrap();
    refused(&mut errors, "Publish", &create).await;
    // ...nor pull from persistence's.
    let next = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{stream_in}.{}",
        subjects.consumer_partition(0)
    );
    gateway.publish(next.clone(), "1".into()).await.unwrap();
    refused(&mut errors, "Publish", &next).await;
    // It cannot answer auth's requests (and read the passwords in them)...
    let _sub = gateway.subscribe(subjects.rpc_auth_all()).await.unwrap();
    refused(&mut errors, "Subscription", &subjects.rpc_auth_all()).await;
    // ...nor end a user's sessions.
    gateway
        .publish(subjects.ctl_user("bob"), "{}".into())
        .await
        .unwrap();
    refused(&mut errors, "Publish", &subjects.ctl_user("bob")).await;
    // ...nor read the replies that come to the other roles, or to everyone.
    for inbox in [
        format!("{}.>", subjects.inbox_prefix("auth")),
        format!("{}.>", subjects.inbox_prefix("persistence")),
        "_INBOX.>".to_owned(),
    ] {
        let _sub = gateway.subscribe(inbox.clone()).await.unwrap();
        refused(&mut errors, "Subscription", &inbox).await;
    }
    // ...nor dead-letter anything.
    gateway.publish(subjects.dlq(), "{}".into()).await.unwrap();
    refused(&mut errors, "Publish", &subjects.dlq()).await;

    // And persistence cannot take the gateway's place: it publishes no commands.
    let (persistence, mut errors) = nats.client_as(&prefix, BrokerRole::Persistence).await;
    let command = subjects.in_msg(uuid::Uuid::now_v7());
    persistence
        .publish(command.clone(), "{}".into())
        .await
        .unwrap();
    refused(&mut errors, "Publish", &command).await;
    // The server logged each refusal with the user's name.
    let logged = nats.violations();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("user:gateway") && l.contains(&subjects.ctl_user("bob"))),
        "{logged:?}"
    );
}

#[tokio::test]
async fn a_client_without_credentials_or_with_a_wrong_password_cannot_connect() {
    let nats = SecuredNats::start("parley").await;
    let anonymous = async_nats::connect(&nats.url).await.unwrap_err();
    assert_eq!(
        anonymous.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{anonymous}"
    );
    let wrong = async_nats::ConnectOptions::with_user_and_password(
        "gateway".into(),
        "not-the-password".into(),
    )
    .connect(&nats.url)
    .await
    .unwrap_err();
    assert_eq!(
        wrong.kind(),
        ConnectErrorKind::AuthorizationViolation,
        "{wrong}"
    );
    // The role binary says which server refused it, and exits.
    let env = Env::from_pairs([
        ("NATS_URL", nats.url.as_str()),
        ("NATS_USER", "gateway"),
        ("NATS_PASSWORD", "not-the-password"),
    ]);
    let cfg = NatsConfig::for_role(&env, BrokerRole::Gateway).unwrap();
    let err = parley_common::nats::connect(&cfg, "parley-gateway", "gateway")
        .await
        .unwrap_err();
    assert!(
        err.0.contains("authorization violation") && !err.0.contains("not-the-password"),
        "{err}"
    );
}
