//! Test harness: each test gets its own database and its own NATS subject prefix (DESIGN §3),
//! so tests run in parallel against one Postgres and one NATS and leave nothing behind.
//!
//! Every role runs on its own Tokio runtime, the way it would in its own process: killing one
//! ([`Process::kill`]) drops its tasks and its NATS and Postgres connections at once, like a
//! crash, while [`Process::stop`] is the graceful SIGTERM path.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use parley_common::config::Env;
use serde_json::{Value, json};
use sqlx::{Connection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const SECRET: &str = "test-secret-that-is-long-enough-0123456789";

/// How long a test waits for something that should happen before it calls it a failure.
/// A guard against hangs, not a speed assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn server_url() -> String {
    std::env::var("PARLEY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("PARLEY_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The servers of a NATS URL, which may list several separated by commas.
pub fn nats_servers(url: &str) -> Vec<async_nats::ServerAddr> {
    parley_common::config::server_addrs(url).expect("a NATS URL")
}

/// `url` with its database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let slash = base.rfind('/').expect("a database URL has a path");
    let rebuilt = format!("{}/{db}", &base[..slash]);
    match query {
        Some(q) => format!("{rebuilt}?{q}"),
        None => rebuilt,
    }
}

/// One test's private world: a database, a subject prefix, and the roles it starts.
pub struct TestEnv {
    pub db_name: String,
    pub database_url: String,
    pub prefix: String,
    pub nats_url: String,
    pub pool: PgPool,
    extra: Vec<(String, String)>,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with_settings(&[]).await
    }

    /// With extra environment settings for the roles (e.g. rate limits).
    pub async fn with_settings(extra: &[(&str, &str)]) -> Self {
        Self::on_nats(&nats_url(), extra).await
    }

    /// On the NATS at `nats_url` (one URL, or the comma-separated URLs of a cluster) rather
    /// than the shared test server, with extra settings for the roles.
    pub async fn on_nats(nats_url: &str, extra: &[(&str, &str)]) -> Self {
        parley_common::telemetry::init_for_tests();
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("parley_test_{}", &id[..16]);
        let prefix = format!("t{}", &id[..16]);
        let server = server_url();
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .expect("connect to the test Postgres server (PARLEY_TEST_DATABASE_URL)");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"create database "{db_name}""#
        )))
        .execute(&mut admin)
        .await
        .expect("create the test database");
        let database_url = with_database(&server, &db_name);
        let pool = PgPool::connect(&database_url)
            .await
            .expect("connect to the test database");
        parley_persistence::db::migrate(&pool)
            .await
            .expect("migrate");
        Self {
            db_name,
            database_url,
            prefix,
            nats_url: nats_url.to_owned(),
            pool,
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// The environment a role of this test sees.
    pub fn env(&self) -> Env {
        let mut env = Env::from_pairs([
            ("DATABASE_URL", self.database_url.as_str()),
            ("NATS_URL", self.nats_url.as_str()),
            ("PARLEY_NATS_PREFIX", self.prefix.as_str()),
            ("AUTH_SECRET", SECRET),
            ("PORT", "0"),
            ("HOST", "127.0.0.1"),
            ("PARLEY_ACK_WAIT_SECONDS", "3"),
            ("PARLEY_DRAIN_SECONDS", "5"),
        ]);
        for (k, v) in &self.extra {
            env = env.with(k, v.clone());
        }
        env
    }

    pub async fn spawn_persistence(&self) -> Process {
        self.spawn_persistence_with(self.env()).await
    }

    pub async fn spawn_persistence_with(&self, env: Env) -> Process {
        let config =
            parley_persistence::PersistenceConfig::from_env(&env).expect("persistence config");
        Process::start(move |stop| async move {
            let app = parley_persistence::Application::build(config)
                .await
                .expect("build persistence");
            (
                None,
                Box::pin(async move {
                    app.run_until_stopped(stop.cancelled_owned())
                        .await
                        .expect("persistence run");
                }) as RoleFuture,
            )
        })
        .await
    }

    pub async fn spawn_auth(&self) -> Process {
        let config = parley_auth::AuthConfig::from_env(&self.env()).expect("auth config");
        Process::start(move |stop| async move {
            let app = parley_auth::Application::build(config)
                .await
                .expect("build auth");
            (
                None,
                Box::pin(async move {
                    app.run_until_stopped(stop.cancelled_owned())
                        .await
                        .expect("auth run");
                }) as RoleFuture,
            )
        })
        .await
    }

    pub async fn spawn_gateway(&self) -> Process {
        self.spawn_gateway_with(self.env()).await
    }

    pub async fn spawn_gateway_with(&self, env: Env) -> Process {
        let config = parley_gateway::GatewayConfig::from_env(&env).expect("gateway config");
        Process::start(move |stop| async move {
            let app = parley_gateway::Application::build(config)
                .await
                .expect("build gateway");
            let addr = app.local_addr();
            (
                Some(addr),
                Box::pin(async move {
                    app.run_until_stopped(stop.cancelled_owned())
                        .await
                        .expect("gateway run");
                }) as RoleFuture,
            )
        })
        .await
    }

    /// A token for `user`, valid for `ttl_secs` (negative: already expired).
    pub fn token(&self, user: &str, ttl_secs: i64) -> String {
        token_with(user, ttl_secs, SECRET)
    }

    /// Connects `user` to a gateway's `/ws` with a fresh token.
    pub async fn connect(&self, gateway: &Process, user: &str) -> WsClient {
        WsClient::connect(gateway.addr(), &self.token(user, 3600)).await
    }

    /// Publishes a raw command onto `PARLEY_IN` for `conversation`, behind the gateway's back
    /// (a forged or malformed command), and waits for the broker to take it.
    pub async fn publish_command(
        &self,
        js: &async_nats::jetstream::Context,
        conversation: impl std::fmt::Display,
        payload: String,
    ) {
        js.publish(
            format!("{}.in.msg.{conversation}", self.prefix),
            payload.into(),
        )
        .await
        .expect("publish")
        .await
        .expect("the stream took the command");
    }

    /// A raw NATS client, for publishing behind the gateway's back.
    pub async fn nats(&self) -> async_nats::Client {
        async_nats::connect(nats_servers(&self.nats_url))
            .await
            .expect("connect NATS")
    }

    /// Stored messages of a conversation, in seq order: (seq, sender, clientMsgId, content).
    pub async fn stored(&self, conversation: &str) -> Vec<(i64, String, String, String)> {
        sqlx::query_as(
            "select seq, sender_id, client_msg_id, content from messages
             where conversation_id = $1::uuid order by seq",
        )
        .bind(conversation)
        .fetch_all(&self.pool)
        .await
        .expect("read messages")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let db = self.db_name.clone();
        let server = server_url();
        let nats = self.nats_url.clone();
        let subjects = parley_common::subjects::Subjects::new(&self.prefix).expect("prefix");
        // A runtime of its own: Drop may run inside or outside one.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async move {
                // `with (force)` ends this test's own pool connections too; closing the pool
                // here would wait on the test's runtime, which is blocked in this drop.
                if let Ok(mut admin) = sqlx::PgConnection::connect(&server).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        r#"drop database if exists "{db}" with (force)"#
                    )))
                    .execute(&mut admin)
                    .await;
                }
                if let Ok(client) = async_nats::connect(nats_servers(&nats)).await {
                    let js = async_nats::jetstream::new(client);
                    let _ = js.delete_stream(subjects.stream_in()).await;
                    let _ = js.delete_stream(subjects.stream_dlq()).await;
                    let _ = js.delete_stream(subjects.presence_stream()).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

pub fn token_with(user: &str, ttl_secs: i64, secret: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + ttl_secs;
    jsonwebtoken::encode(
        &Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": user, "exp": exp }),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a token")
}

type RoleFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A role running on its own runtime, as if in its own process.
pub struct Process {
    runtime: Option<tokio::runtime::Runtime>,
    stop: CancellationToken,
    done: Option<oneshot::Receiver<()>>,
    addr: Option<SocketAddr>,
    /// Names this role's threads, so a panic in any of its tasks is traced to it.
    id: u64,
}

/// The roles (by [`Process::id`]) in which some task panicked. Tokio catches a task's panic
/// and the role carries on without it; the test must not.
fn panicked_roles() -> &'static Mutex<BTreeSet<u64>> {
    static PANICKED: std::sync::OnceLock<Mutex<BTreeSet<u64>>> = std::sync::OnceLock::new();
    PANICKED.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let role = std::thread::current()
                .name()
                .and_then(|n| n.strip_prefix(ROLE_THREAD))
                .and_then(|id| id.parse().ok());
            if let Some(id) = role {
                panicked_roles().lock().unwrap().insert(id);
            }
            default(info);
        }));
        Mutex::new(BTreeSet::new())
    })
}

const ROLE_THREAD: &str = "parley-role-";

impl Process {
    async fn start<F, Fut>(build: F) -> Process
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = (Option<SocketAddr>, RoleFuture)> + Send,
    {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        panicked_roles();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("{ROLE_THREAD}{id}"))
            .enable_all()
            .build()
            .expect("role runtime");
        let stop = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let token = stop.clone();
        runtime.spawn(async move {
            let (addr, run) = build(token).await;
            let _ = ready_tx.send(addr);
            run.await;
            let _ = done_tx.send(());
        });
        let addr = tokio::time::timeout(PATIENCE, ready_rx)
            .await
            .expect("role started in time")
            .expect("role built");
        Process {
            runtime: Some(runtime),
            stop,
            done: Some(done_rx),
            addr,
            id,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("this role has no HTTP address")
    }

    /// SIGTERM: drain and stop; returns when the role has finished.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(done) = self.done.take() {
            tokio::time::timeout(PATIENCE, done)
                .await
                .expect("role stopped in time")
                .expect("role finished");
        }
    }

    /// SIGKILL: every task and connection of the role ends now.
    pub fn kill(mut self) {
        self.stop.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Why the role is dead though the test never stopped it: its run ended or failed, or one
    /// of its tasks panicked.
    fn died(&mut self) -> Option<&'static str> {
        if panicked_roles().lock().unwrap().contains(&self.id) {
            return Some("a task of the role panicked");
        }
        if self.stop.is_cancelled() {
            return None;
        }
        match self.done.as_mut()?.try_recv() {
            Ok(()) => Some("the role stopped by itself"),
            Err(oneshot::error::TryRecvError::Closed) => Some("the role failed (its run panicked)"),
            Err(oneshot::error::TryRecvError::Empty) => None,
        }
    }
}

impl Drop for Process {
    /// A role that died during the test fails it (unless the test is failing already).
    fn drop(&mut self) {
        let died = self.died();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if let Some(why) = died
            && !std::thread::panicking()
        {
            panic!("{why} during the test (see its output above)");
        }
    }
}

/// A `/ws` client that keeps events which arrive while it waits for something else.
pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    buffered: VecDeque<Value>,
    next_id: u64,
    pub closed: Option<(u16, String)>,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr, token: &str) -> WsClient {
        let url = format!("ws://{addr}/ws?token={token}");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        WsClient::from_stream(ws)
    }

    pub fn from_stream(
        ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    ) -> WsClient {
        WsClient {
            ws,
            buffered: VecDeque::new(),
            next_id: 1,
            closed: None,
        }
    }

    /// The socket itself, for a test that reads and writes it from two tasks; frames already
    /// buffered are dropped.
    pub fn into_inner(
        self,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
        self.ws
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Ws::text(text)).await.expect("ws send");
    }

    pub async fn send_frame(&mut self, frame: &Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// Sends a request with a fresh id and returns the ack's `data`.
    pub async fn request(&mut self, event: &str, data: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_frame(&json!({"type": event, "id": id, "data": data}))
            .await;
        let frame = self.wait_for(|f| f["type"] == "ack" && f["id"] == id).await;
        frame["data"].clone()
    }

    /// `message:send`; returns the ack data.
    pub async fn send_message(
        &mut self,
        conversation: &str,
        client_msg_id: &str,
        content: &str,
    ) -> Value {
        self.request(
            "message:send",
            json!({"conversationId": conversation, "clientMsgId": client_msg_id, "content": content}),
        )
        .await
    }

    /// `message:send` for each of `ids` (the frame's id; `message(n)` gives its clientMsgId and
    /// content), `window` in flight at a time, reading the acks in between as a live client does
    /// (one that stops reading is closed as too slow once its queue is full). Returns the ack
    /// frames, in the order of `ids`.
    pub async fn send_pipelined(
        &mut self,
        conversation: &str,
        ids: std::ops::Range<usize>,
        window: usize,
        message: impl Fn(usize) -> (String, String),
    ) -> Vec<Value> {
        let ids: Vec<usize> = ids.collect();
        let mut acks = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(window) {
            for &n in chunk {
                let (client_msg_id, content) = message(n);
                self.send_frame(&json!({"type": "message:send", "id": n, "data": {
                    "conversationId": conversation, "clientMsgId": client_msg_id, "content": content}}))
                    .await;
            }
            for &n in chunk {
                acks.push(self.wait_for(|f| f["type"] == "ack" && f["id"] == n).await);
            }
        }
        acks
    }

    /// Opens a DM with `other`; returns the conversation id.
    pub async fn open_dm(&mut self, other: &str) -> String {
        let reply = self
            .request("conversation:open", json!({"participantIds": [other]}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        reply["conversation"]["id"].as_str().expect("id").to_owned()
    }

    async fn read(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame arrived in time");
            match msg {
                Some(Ok(Ws::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("server frames are JSON"));
                }
                Some(Ok(Ws::Close(frame))) => {
                    self.closed = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return None;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Waits for the first frame matching `pred`, keeping the others for later.
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.buffered.iter().position(&pred) {
            return self.buffered.remove(pos).expect("present");
        }
        // One deadline for the whole wait: pings and other frames must not keep it alive.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let read = tokio::time::timeout_at(deadline, self.read()).await;
            let Ok(read) = read else {
                panic!(
                    "no matching frame within {PATIENCE:?}; meanwhile: {:?}",
                    self.buffered
                );
            };
            let Some(f) = read else {
                panic!("socket closed while waiting for a frame: {:?}", self.closed);
            };
            if pred(&f) {
                return f;
            }
            self.buffered.push_back(f);
        }
    }

    /// Waits for `n` `message:new` events of `conversation` and returns their data.
    pub async fn messages(&mut self, conversation: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let f = self
                .wait_for(|f| {
                    f["type"] == "message:new" && f["data"]["conversationId"] == conversation
                })
                .await;
            out.push(f["data"].clone());
        }
        out
    }

    /// Waits until the server closes the socket; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        while self.read().await.is_some() {}
        self.closed.clone().unwrap_or((0, String::new()))
    }

    /// Sends a frame; false when the connection is gone.
    pub async fn try_send_frame(&mut self, frame: &Value) -> bool {
        self.ws.send(Ws::text(frame.to_string())).await.is_ok()
    }

    /// The frames that arrive within `wait` of each other (none: returns after `wait`), and
    /// whether the socket closed.
    pub async fn poll_frames(&mut self, wait: Duration) -> (Vec<Value>, bool) {
        let mut frames: Vec<Value> = self.buffered.drain(..).collect();
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return (frames, false),
                Ok(Some(Ok(Ws::Text(t)))) => {
                    frames.push(serde_json::from_str(&t).expect("server frames are JSON"));
                }
                Ok(Some(Ok(Ws::Close(frame)))) => {
                    self.closed = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return (frames, true);
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return (frames, true),
            }
        }
    }

    /// Every frame buffered or still to come, until the server closes the socket.
    pub async fn received_until_closed(&mut self) -> Vec<Value> {
        let mut frames: Vec<Value> = self.buffered.drain(..).collect();
        while let Some(f) = self.read().await {
            frames.push(f);
        }
        frames
    }

    /// How many `event` frames are buffered, unread.
    pub fn buffered_count(&self, event: &str) -> usize {
        self.buffered_count_where(|f| f["type"] == event)
    }

    /// How many `message:new` frames of `conversation` are buffered, unread.
    pub fn buffered_messages_of(&self, conversation: &str) -> usize {
        self.buffered_count_where(|f| {
            f["type"] == "message:new" && f["data"]["conversationId"] == conversation
        })
    }

    /// The sync point of a "nothing else arrived" check: the next `message:new` of
    /// `conversation` this socket gets is the one with `client_msg_id`, sent after whatever
    /// must not have arrived (a stray one of the same conversation would come before it).
    pub async fn next_message_is(&mut self, conversation: &str, client_msg_id: &str) {
        let next = self.messages(conversation, 1).await;
        assert_eq!(
            next[0]["clientMsgId"], client_msg_id,
            "another message came first: {}",
            next[0]
        );
    }

    /// Drops the buffered frames that match `pred` (frames still on their way are not touched).
    pub fn discard(&mut self, pred: impl Fn(&Value) -> bool) {
        self.buffered.retain(|f| !pred(f));
    }

    /// How many buffered frames match `pred`.
    pub fn buffered_count_where(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.buffered.iter().filter(|f| pred(f)).count()
    }
}

/// A TCP proxy that can be cut, to take a dependency away from one role without stopping the
/// shared server: cut, every connection through it is reset and new ones are refused.
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let task = {
            let (down, conns) = (down.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(relay.abort_handle());
                }
            })
        };
        Proxy {
            addr,
            down,
            conns,
            task,
        }
    }

    /// The dependency goes away: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Postgres' address, from the test server URL.
pub fn postgres_addr() -> SocketAddr {
    let url = server_url();
    let after_at = url.rsplit('@').next().expect("url");
    let hostport = after_at.split('/').next().expect("host");
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport.parse().expect("Postgres host:port")
}

/// The test database's URL through `proxy`.
pub fn database_url_via(env: &TestEnv, proxy: &Proxy) -> String {
    let url = &env.database_url;
    let (scheme_user, rest) = url.rsplit_once('@').expect("url with user");
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    format!("{scheme_user}@{}/{path}", proxy.addr)
}

impl WsClient {
    pub async fn send_frame_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Ws::binary(bytes.to_vec()))
            .await
            .expect("ws send");
    }
}

/// Polls `check` until it returns `Some`, for state that settles asynchronously.
pub async fn eventually<T, F, Fut>(check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(PATIENCE, check).await
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`: for a bound the
/// system promises (a failover deadline), not a guess at speed.
pub async fn within<T, F, Fut>(deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    tokio::time::timeout(deadline, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the condition came true in time")
}

/// The `parley` binary with a clean environment: `PATH` and JSON logs only.
pub fn parley() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A TCP port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestEnv {
    /// The binary as `role` in this test's world: its database, subject prefix and secret, on
    /// `port` (HTTP) and `admin`.
    pub fn parley_role(&self, role: &str, port: u16, admin: u16) -> tokio::process::Command {
        let mut cmd = parley();
        cmd.arg(role)
            .env("DATABASE_URL", &self.database_url)
            .env("NATS_URL", &self.nats_url)
            .env("PARLEY_NATS_PREFIX", &self.prefix)
            .env("AUTH_SECRET", SECRET)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("ADMIN_PORT", admin.to_string());
        cmd
    }
}

/// One role of the real binary, with this test's database and prefix.
pub struct Role {
    child: Child,
    port: u16,
    admin: u16,
    /// Stopped or killed by the test: its exit is expected.
    ended: bool,
}

impl Drop for Role {
    /// A role that exited during the test though the test never stopped it fails the test.
    fn drop(&mut self) {
        if self.ended || std::thread::panicking() {
            return;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("parley exited by itself during the test: {status}");
        }
        let _ = self.child.start_kill();
    }
}

impl Role {
    /// Starts `role` on ports the kernel picks (`PORT=0`, `ADMIN_PORT=0`: no port is chosen
    /// here and released for another process to take first), reads where it listens from its
    /// log, and waits until it is ready.
    pub async fn start(env: &TestEnv, role: &str, extra: &[(&str, String)]) -> Role {
        let mut cmd = env.parley_role(role, 0, 0);
        cmd.env("PARLEY_ACK_WAIT_SECONDS", "3")
            .env("PARLEY_DRAIN_SECONDS", "5")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start parley");
        let stdout = child.stdout.take().expect("piped stdout");
        let serves_http = matches!(role, "gateway" | "all");
        let (port, admin) = tokio::time::timeout(PATIENCE, listening(stdout, serves_http))
            .await
            .expect("the role said where it listens in time");
        let role = Role {
            child,
            port,
            admin,
            ended: false,
        };
        role.ready().await;
        role
    }

    pub async fn ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin);
        eventually(|| {
            let url = url.clone();
            async move {
                let r = reqwest::get(&url).await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// The admin port's `/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.admin)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn terminate(&mut self) {
        self.ended = true;
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: the process ends now, mid-batch if it was in one.
    pub async fn kill(mut self) {
        self.ended = true;
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    pub async fn exited(mut self) -> std::process::ExitStatus {
        self.ended = true;
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("exited in time")
            .unwrap()
    }
}

/// Reads a role's JSON log until it has said where it listens: `(port, admin port)` (port 0 for
/// a role without HTTP). The rest of its output is read and dropped, so the child never blocks
/// on a full pipe.
async fn listening(stdout: tokio::process::ChildStdout, serves_http: bool) -> (u16, u16) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let (mut port, mut admin) = (None, None);
    while port.is_none() && serves_http || admin.is_none() {
        let line = lines
            .next_line()
            .await
            .expect("read the role's output")
            .expect("the role exited before it listened");
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let at = v["fields"]["addr"]
            .as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.port());
        match v["fields"]["message"].as_str() {
            Some("admin listening") => admin = at,
            Some("gateway listening") => port = at,
            _ => {}
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (port.unwrap_or(0), admin.expect("an admin port"))
}

/// A browser: an HTTP client that keeps cookies between requests.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap()
}

/// The pinned nats-server (2.15.1) that `./dev test` names in `PARLEY_TEST_NATS_SERVER`, for
/// tests that run servers of their own (a cluster, a server with accounts and permissions).
/// Fails the test, never skips it, when it is not there.
pub fn pinned_nats_server() -> std::path::PathBuf {
    let bin = std::env::var_os("PARLEY_TEST_NATS_SERVER").map(std::path::PathBuf::from);
    match bin {
        Some(bin) if bin.is_file() => bin,
        other => panic!(
            "PARLEY_TEST_NATS_SERVER must name the pinned nats-server binary (./dev test sets it \
             to .dev/nats-venv/bin/nats-server; ./dev services installs it), got {other:?}"
        ),
    }
}

/// Waits until a nats-server answers on loopback `port` (NATS greets every client with INFO).
pub async fn nats_answers(port: u16) {
    eventually(|| async move {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut buf = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut buf)
            .await
            .ok()?;
        (&buf == b"INFO").then_some(())
    })
    .await;
}

/// A private nats-server a test runs from a configuration of its own, in a fresh folder
/// (`dir`: the configuration file, and whatever store the configuration puts there). Killed,
/// and the folder removed, on drop.
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    pub port: u16,
    pub dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// A fresh folder for a server's configuration and store.
    pub fn scratch_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("parley-nats-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create a folder for a nats-server");
        dir
    }

    /// Writes `config` (nats-server configuration text, which must listen on 127.0.0.1:`port`)
    /// to `dir/nats.conf`, runs `bin -c` on it, and returns once the client port answers as NATS.
    pub async fn start(
        bin: &std::path::Path,
        dir: &std::path::Path,
        port: u16,
        config: &str,
    ) -> Self {
        std::fs::write(dir.join("nats.conf"), config).expect("write nats.conf");
        let mut server = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            child: None,
        };
        server.run().await;
        server
    }

    async fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("nats.log"))
            .expect("open nats.log");
        let child = tokio::process::Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
        nats_answers(self.port).await;
    }

    /// Starts the server again on its port, configuration and store (after [`Self::kill`]).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.run().await;
    }

    /// SIGKILL: the server ends now, its connections reset.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill nats-server");
            let _ = child.wait().await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A JetStream cluster of private nats-servers on loopback (the pinned binary), routed to each
/// other, each with its store in its own folder and a monitoring port.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
    /// `n1`, `n2`, ...: each node's `server_name`, which JetStream reports as a leader.
    pub names: Vec<String>,
    monitor: Vec<u16>,
}

impl NatsCluster {
    /// `size` nodes, returned once every one reports the same JetStream meta leader.
    pub async fn start(size: usize) -> Self {
        let bin = pinned_nats_server();
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let cluster = format!("parley-test-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let mut nodes = Vec::new();
        let mut names = Vec::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let dir = NatsServer::scratch_dir();
            let config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{ name: {cluster}, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n",
                store = dir.join("js").display().to_string(),
                routes = routes.join(", "),
            );
            nodes.push(NatsServer::start(&bin, &dir, *client, &config).await);
            names.push(name);
        }
        let cluster = Self {
            nodes,
            names,
            monitor: ports.iter().map(|p| p.2).collect(),
        };
        cluster.meta_leader().await;
        cluster
    }

    /// Every node's URL, comma-separated: a `NATS_URL`.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A monitoring endpoint of node `i` (`/jsz`, `/connz`...), as JSON.
    pub async fn monitor(&self, i: usize, path: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.monitor[i]);
        reqwest::get(url).await.ok()?.json().await.ok()
    }

    /// Waits until every running node is healthy (its `/healthz`: JetStream up and current)
    /// and names the same JetStream meta leader; returns it.
    pub async fn meta_leader(&self) -> String {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        eventually(|| {
            let running = running.clone();
            async move {
                let mut leaders = BTreeSet::new();
                for i in running {
                    let health = format!("http://127.0.0.1:{}/healthz", self.monitor[i]);
                    let healthy = reqwest::get(health).await.ok()?.status().is_success();
                    if !healthy {
                        return None;
                    }
                    let jsz = self.monitor(i, "/jsz").await?;
                    leaders.insert(jsz["meta_cluster"]["leader"].as_str()?.to_owned());
                }
                (leaders.len() == 1).then(|| leaders.pop_first().expect("one"))
            }
        })
        .await
    }

    /// The names of the nodes holding a client connection called `name` (`/connz`).
    pub async fn nodes_with_client(&self, name: &str) -> Vec<String> {
        let mut found = Vec::new();
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            let Some(connz) = self.monitor(i, "/connz?limit=1024").await else {
                continue;
            };
            let conns = connz["connections"].as_array().cloned().unwrap_or_default();
            if conns.iter().any(|c| c["name"] == name) {
                found.push(self.names[i].clone());
            }
        }
        found
    }
}
