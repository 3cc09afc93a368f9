//! Socket.IO v4 at `/socket.io/` on the gateway's port (socketioxide as a layer on the axum
//! router), namespace `/`: what apps moving from a Node Socket.IO server already speak
//! (DESIGN §6). Only a codec: events become the same requests as `/ws` frames and run through
//! the same connection ([`crate::session::connection`]); requests are answered with Socket.IO
//! acknowledgements (the same `{ok, ...}` envelope), and server events are plain emits.
//!
//! Authentication is connect middleware: `auth.token` from the handshake, else the session
//! cookies. A refused connect reaches the client as `connect_error` with the message
//! `Authentication error`, whatever the reason (the reason is logged). Nothing of a connection
//! is kept before it authenticates but Engine.IO's own session, which is dropped when the
//! client does not connect within [`CONNECT_TIMEOUT`], and counted against its address.
//!
//! Packets are taken off the socket in order, synchronously, as socketioxide reads them (an
//! extractor, run before socketioxide spawns a handler), and queued for the connection, which
//! reads them like `/ws` frames. A client that keeps more than the queue holds unread is a
//! flood.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request as HttpRequest;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use parley_auth::Verified;
use parley_common::wire::{ApiError, ErrorEvent, ServerEvent};
use serde::Deserialize;
use serde_json::Value;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{SendError, SocketError, SocketIo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::addresses::AddressGuard;
use crate::auth::authenticate;
use crate::client_addr::ClientAddr;
use crate::fanout::Attachment;
use crate::metrics::Transport;
use crate::session::Answer;
use crate::session::connection::{self, Codec, End, Identity, Incoming, Request};
use crate::state::AppState;

/// Before the server disconnects a socket, how long the client may go on sending at most, and
/// how long a pause counts as its having stopped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
const QUIET: Duration = Duration::from_millis(250);
/// How long a client has from the Engine.IO handshake to an authenticated connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Socket.IO layer to mount on the router, and its handle.
pub fn layer(state: AppState) -> (SocketIoLayer, SocketIo) {
    let max = state.limits.max_frame_bytes;
    let (layer, io) = SocketIo::builder()
        .req_path("/socket.io")
        .max_buffer_size(state.limits.outbound_queue)
        .max_payload(max as u64)
        .ws_read_buffer_size(4 * 1024)
        .ws_max_message_size(max)
        .ws_max_frame_size(max)
        .connect_timeout(CONNECT_TIMEOUT)
        // Engine.IO's heartbeat: a ping answered within the write timeout, or the socket is
        // closed (a client that stopped reading never answers, nor can its ping be queued).
        .ping_interval(state.limits.socketio_ping_interval)
        .ping_timeout(state.limits.write_timeout)
        .with_state(state)
        .build_layer();
    io.ns("/", on_connect.with(authenticate_connect));
    (layer, io)
}

/// Middleware in front of the Socket.IO layer: a request that opens an Engine.IO session (no
/// `sid` yet) takes a place of its address's socket cap until the connect timeout, so one
/// address cannot pile up sessions that never authenticate.
pub async fn admit_handshake(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: HttpRequest,
    next: Next,
) -> Response {
    let opens_session = req.uri().path().starts_with("/socket.io")
        && !req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|kv| kv.starts_with("sid="));
    let client = ClientAddr::of(
        req.extensions(),
        req.headers(),
        &state.limits.trusted_proxies,
    );
    if opens_session && let Some(refused) = crate::rest::refuse_connect(&state) {
        return refused;
    }
    if let (true, Some(client)) = (opens_session, client) {
        let Some(place) = state.addresses.acquire(client) else {
            tracing::info!(address = %client, "refusing a Socket.IO handshake: too many from this address");
            let body = serde_json::json!({ "error": ApiError::new(
                parley_common::wire::ErrorCode::RateLimited,
                "too many connections from this address",
            )});
            return (axum::http::StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        };
        tokio::spawn(async move {
            tokio::time::sleep(CONNECT_TIMEOUT).await;
            drop(place);
        });
    }
    next.run(req).await
}

/// The connect error every refusal shows, as the seed's clients expect.
#[derive(Debug)]
pub struct AuthError;

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authentication error")
    }
}

impl std::error::Error for AuthError {}

#[derive(Deserialize)]
struct AuthPayload {
    #[serde(default)]
    token: Option<String>,
}

/// How a request is answered: its acknowledgement, when the client asked for one.
type Reply = Option<AckSender>;

/// A connection's link between socketioxide and its loop, kept in the socket's extensions.
struct Conn {
    inbox: mpsc::Sender<Incoming<Reply>>,
    /// Cancelled when the client sent more than the inbox holds.
    overflow: CancellationToken,
    /// Cancelled when the socket goes.
    gone: CancellationToken,
    /// Set at connect, taken when the connection starts.
    start: Mutex<Option<Start>>,
}

struct Start {
    who: Identity,
    attachment: Attachment,
    inbox: mpsc::Receiver<Incoming<Reply>>,
    place: Option<AddressGuard>,
}

#[derive(Clone)]
struct ConnRef(Arc<Conn>);

async fn authenticate_connect(
    s: SocketRef,
    TryData(auth): TryData<AuthPayload>,
    State(state): State<AppState>,
) -> Result<(), AuthError> {
    if state.draining.is_cancelled() {
        return Err(AuthError);
    }
    let parts = s.req_parts();
    let place = match ClientAddr::of(
        &parts.extensions,
        &parts.headers,
        &state.limits.trusted_proxies,
    ) {
        Some(ip) => match state.addresses.acquire(ip) {
            Some(place) => Some(place),
            None => {
                tracing::info!(address = %ip, "refused a Socket.IO connection: too many from this address");
                return Err(AuthError);
            }
        },
        None => None,
    };
    let token = auth.ok().and_then(|a| a.token);
    let verified: Verified = match authenticate(&state, token, &s.req_parts().headers).await {
        Ok(v) => v,
        Err(reason) => {
            tracing::info!(%reason, "refused a Socket.IO connection");
            return Err(AuthError);
        }
    };
    let attachment = match state
        .fanout
        .attach_session(
            &verified.user_id,
            verified.session_id.clone(),
            Transport::SocketIo,
        )
        .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(user = %verified.user_id, "refused a Socket.IO connection: {e}");
            return Err(AuthError);
        }
    };
    // Room for what may arrive while every request in flight is still running.
    let (tx, rx) = mpsc::channel(state.limits.max_inflight * 2);
    let conn = Arc::new(Conn {
        inbox: tx,
        overflow: CancellationToken::new(),
        gone: CancellationToken::new(),
        start: Mutex::new(Some(Start {
            who: Identity {
                user: verified.user_id,
                exp: verified.exp,
            },
            attachment,
            inbox: rx,
            place,
        })),
    });
    s.extensions.insert(ConnRef(conn.clone()));
    // Handlers go in before the connection is acknowledged: socketioxide sends the connect
    // packet before it runs the connect handler, and a quick client's first request must not
    // arrive at a socket with no handler.
    s.on_fallback(async |_: Received| {});
    s.on_disconnect(async move |_: SocketRef, _: DisconnectReason| {
        conn.gone.cancel();
    });
    Ok(())
}

async fn on_connect(s: SocketRef, State(state): State<AppState>) {
    let Some(ConnRef(conn)) = s.extensions.get::<ConnRef>() else {
        let _ = s.disconnect();
        return;
    };
    let Some(start) = conn.start.lock().expect("start lock").take() else {
        return;
    };
    let codec = SioCodec {
        socket: s.clone(),
        inbox: start.inbox,
        overflow: conn.overflow.clone(),
        gone: conn.gone.clone(),
    };
    let tracker = state.sockets.clone();
    tracker.spawn(async move {
        connection::run(codec, state, start.who, start.attachment).await;
        drop(start.place);
    });
}

/// A packet taken off the socket and queued for the connection, in the order it arrived.
/// socketioxide runs extractors as it reads a packet, before it spawns the handler (which has
/// nothing left to do).
struct Received;

impl FromMessageParts<LocalAdapter> for Received {
    type Error = Infallible;
    fn from_message_parts(
        s: &Arc<Socket<LocalAdapter>>,
        v: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let Some(ConnRef(conn)) = s.extensions.get::<ConnRef>() else {
            return Ok(Received);
        };
        let reply = ack_id.map(|_| {
            let Ok(ack) = AckSender::from_message_parts(s, v, ack_id);
            ack
        });
        let incoming = match Event::from_message_parts(s, v, ack_id) {
            Ok(Event(event)) => {
                let Ok(TryData(data)) = TryData::<Value>::from_message_parts(s, v, ack_id);
                request(event, data.ok(), reply)
            }
            Err(e) => Incoming::Bad {
                error: ApiError::invalid(format!("malformed event: {e}")),
                reply,
            },
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = conn.inbox.try_send(incoming) {
            conn.overflow.cancel();
        }
        Ok(Received)
    }
}

/// An event and its data as a request; a `traceparent` in the data joins the client's trace
/// and is not part of the command.
fn request(event: String, mut data: Option<Value>, reply: Reply) -> Incoming<Reply> {
    let traceparent = data
        .as_mut()
        .and_then(Value::as_object_mut)
        .and_then(|o| o.remove("traceparent"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|t| t.len() <= crate::protocol::MAX_TRACEPARENT_BYTES);
    Incoming::Request(Request {
        event,
        data: data.and_then(|v| serde_json::value::to_raw_value(&v).ok()),
        traceparent,
        reply,
    })
}

/// A Socket.IO socket.
struct SioCodec {
    socket: SocketRef,
    inbox: mpsc::Receiver<Incoming<Reply>>,
    overflow: CancellationToken,
    gone: CancellationToken,
}

impl Codec for SioCodec {
    type Reply = Reply;
    const TRANSPORT: Transport = Transport::SocketIo;
    /// Engine.IO has its own heartbeat.
    const PINGS: bool = false;

    async fn recv(&mut self) -> Incoming<Reply> {
        tokio::select! {
            biased;
            () = self.gone.cancelled() => Incoming::Closed,
            () = self.overflow.cancelled() => Incoming::Overflow,
            next = self.inbox.recv() => next.unwrap_or(Incoming::Closed),
        }
    }

    async fn event(&mut self, frame: Bytes) -> Result<(), End> {
        emit_frame(&self.socket, &frame)
    }

    async fn answer(
        &mut self,
        reply: Reply,
        answer: Answer,
        client_msg_id: Option<String>,
    ) -> Result<(), End> {
        match (reply, answer) {
            (Some(ack), answer) => {
                let body = answer.unwrap_or_else(|e| parley_common::rpc::encode_err(&e));
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                ack.send(&value).map_err(sent)
            }
            (None, Ok(_)) => Ok(()),
            (None, Err(e)) => emit_error(&self.socket, e, client_msg_id, None),
        }
    }

    async fn ping(&mut self) -> Result<(), End> {
        Ok(())
    }

    fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        self.gone.clone().cancelled_owned()
    }

    async fn close(mut self, end: End) {
        match end {
            // Gone already, or cannot take another packet.
            End::Closed | End::Stalled => {
                let _ = self.socket.disconnect();
                return;
            }
            // `server:draining` went out already.
            End::Draining => {}
            _ => {
                if let Some((code, reason)) = end.close_frame() {
                    let e = ApiError::new(end.error_code(), reason);
                    let _ = emit_error(&self.socket, e, None, Some(code));
                }
            }
        }
        // Closed while the client still sends, the TCP connection would be reset, and the
        // client would lose what it had not read yet (the answers, the reason). Let it go
        // quiet first (what it sends meanwhile is dropped), as `/ws` waits for its close.
        let quiet = async {
            while let Ok(Some(_)) = tokio::time::timeout(QUIET, self.inbox.recv()).await {}
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            tokio::select! {
                () = quiet => {}
                () = self.gone.cancelled() => {}
            }
        })
        .await;
        let _ = self.socket.disconnect();
    }
}

/// What a failed emit means: the socket went, or its buffer is full (the client is not
/// reading).
fn sent(e: SendError) -> End {
    match e {
        SendError::Socket(SocketError::Closed) => End::Closed,
        _ => End::TooSlow,
    }
}

/// Emits a `/ws`-shaped frame `{"type", "data"}` as a Socket.IO event.
fn emit_frame(s: &SocketRef, frame: &[u8]) -> Result<(), End> {
    #[derive(Deserialize)]
    struct Frame {
        #[serde(rename = "type")]
        event: String,
        #[serde(default)]
        data: Value,
    }
    let Ok(f) = serde_json::from_slice::<Frame>(frame) else {
        return Ok(());
    };
    s.emit(f.event.as_str(), &f.data).map_err(sent)
}

fn emit_error(
    s: &SocketRef,
    e: ApiError,
    client_msg_id: Option<String>,
    close_code: Option<u16>,
) -> Result<(), End> {
    let event = ServerEvent::Error(ErrorEvent {
        code: e.code,
        message: e.message,
        client_msg_id,
        close_code,
    });
    emit_frame(s, &event.to_json())
}
