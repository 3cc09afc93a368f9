//! Socket.IO v4 at `/socket.io/` on the gateway's port (socketioxide as a layer on the axum
//! router), namespace `/`: what apps moving from a Node Socket.IO server already speak
//! (DESIGN §6). It only translates: events go through the same [`Command`] parsing and the same
//! [`Session`] as `/ws`; requests are answered with Socket.IO acknowledgements (the same
//! `{ok, ...}` envelope), and server events are plain emits.
//!
//! Authentication is connect middleware: `auth.token` from the handshake, else the session
//! cookies. A refused connect reaches the client as `connect_error` with the message
//! `Authentication error`, whatever the reason (the reason is logged).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parley_auth::Verified;
use parley_common::wire::{ApiError, ErrorCode, ErrorEvent, ServerEvent};
use serde::Deserialize;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::{DisconnectReason, Socket};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::authenticate;
use crate::fanout::{AttachError, Attachment, UserLimiter};
use crate::protocol::Command;
use crate::session::{Dispatch, Session};
use crate::state::AppState;

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
        .with_state(state)
        .build_layer();
    io.ns("/", on_connect.with(authenticate_connect));
    (layer, io)
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

/// A connection's state, kept in the socket's extensions.
struct Conn {
    session: Session,
    limiter: UserLimiter,
    /// The token's expiry; `auth:refresh` moves it.
    exp: watch::Sender<i64>,
    /// Messages are numbered as they arrive and started in that order, so one client's sends
    /// keep their order although socketioxide runs each handler as its own task.
    arrived: AtomicU64,
    turn: watch::Sender<u64>,
    /// Set at connect, taken by the pump task.
    attachment: Mutex<Option<Attachment>>,
    /// Cancelled when the socket goes, to stop the pump.
    gone: CancellationToken,
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
            crate::metrics::Transport::SocketIo,
        )
        .await
    {
        Ok(a) => a,
        Err(e @ (AttachError::TooManyConnections | AttachError::Unavailable)) => {
            tracing::info!(user = %verified.user_id, "refused a Socket.IO connection: {e}");
            return Err(AuthError);
        }
    };
    let conn = Conn {
        session: Session::new(state.clone(), verified.user_id.clone()),
        limiter: attachment.limiter(),
        exp: watch::Sender::new(verified.exp),
        arrived: AtomicU64::new(0),
        turn: watch::Sender::new(0),
        attachment: Mutex::new(Some(attachment)),
        gone: CancellationToken::new(),
    };
    let conn = Arc::new(conn);
    s.extensions.insert(ConnRef(conn.clone()));
    // Handlers go in before the connection is acknowledged: socketioxide sends the connect
    // packet before it runs the connect handler, and a quick client's first request must not
    // arrive at a socket with no handler.
    s.on_fallback(on_message);
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
    let Some(attachment) = conn.attachment.lock().await.take() else {
        return;
    };
    state
        .sockets
        .spawn(pump(s.clone(), state.clone(), conn, attachment));
}

/// Writes delivery events to the socket and ends it when it must end: drain, slowness,
/// sign-out, expiry.
async fn pump(s: SocketRef, state: AppState, conn: Arc<Conn>, mut attachment: Attachment) {
    let mut exp_rx = conn.exp.subscribe();
    // One round per token: `auth:refresh` starts the next with the new exp.
    'token: loop {
        let exp = *exp_rx.borrow_and_update();
        let (deadline, warn_at) = super::expiry_deadlines(exp);
        let mut warned = Instant::now() >= warn_at && {
            emit_raw(&s, ServerEvent::TokenExpiring { exp }.to_json().as_ref());
            true
        };
        let warning = tokio::time::sleep_until(warn_at);
        tokio::pin!(warning);
        let expired = tokio::time::sleep_until(deadline);
        tokio::pin!(expired);
        loop {
            tokio::select! {
                biased;
                () = conn.gone.cancelled() => return,
                () = state.draining.cancelled() => {
                    let jitter = super::reconnect_jitter_ms();
                    emit_raw(&s, &ServerEvent::ServerDraining { reconnect_after_ms: jitter }.to_json());
                    let _ = s.clone().disconnect();
                    return;
                }
                () = attachment.revoked.cancelled() => {
                    emit_error(&s, ErrorCode::Unauthenticated, "signed out", None);
                    let _ = s.clone().disconnect();
                    return;
                }
                () = attachment.slow.cancelled() => {
                    let _ = s.clone().disconnect();
                    return;
                }
                () = &mut expired => {
                    emit_error(&s, ErrorCode::Unauthenticated, "token expired", None);
                    let _ = s.clone().disconnect();
                    return;
                }
                () = &mut warning, if !warned => {
                    warned = true;
                    emit_raw(&s, &ServerEvent::TokenExpiring { exp }.to_json());
                }
                changed = exp_rx.changed() => {
                    if changed.is_err() { return; }
                    continue 'token;
                }
                out = attachment.rx.recv() => {
                    let Some(frame) = out else { return };
                    if !emit_raw(&s, &frame) {
                        let _ = s.clone().disconnect();
                        return;
                    }
                }
            }
        }
    }
}

/// Emits a `/ws`-shaped frame `{"type", "data"}` as a Socket.IO event; false when the socket's
/// buffer is full (the client is not reading).
fn emit_raw(s: &SocketRef, frame: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Frame {
        #[serde(rename = "type")]
        event: String,
        #[serde(default)]
        data: Value,
    }
    let Ok(f) = serde_json::from_slice::<Frame>(frame) else {
        return true;
    };
    s.emit(f.event.as_str(), &f.data).is_ok()
}

fn emit_error(s: &SocketRef, code: ErrorCode, message: &str, client_msg_id: Option<String>) {
    let event = ServerEvent::Error(ErrorEvent {
        code,
        message: message.into(),
        client_msg_id,
    });
    emit_raw(s, &event.to_json());
}

/// Whether the client asked for an acknowledgement.
struct WantsAck(bool);

impl<A: socketioxide::adapter::Adapter> FromMessageParts<A> for WantsAck {
    type Error = std::convert::Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        Ok(WantsAck(ack_id.is_some()))
    }
}

/// The message's place in arrival order, taken when socketioxide receives it (extractors run
/// in order, before the handler's task is spawned).
struct Arrival(u64);

impl<A: socketioxide::adapter::Adapter> FromMessageParts<A> for Arrival {
    type Error = std::convert::Infallible;
    fn from_message_parts(
        s: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        _: &Option<i64>,
    ) -> Result<Self, Self::Error> {
        let n = s
            .extensions
            .get::<ConnRef>()
            .map_or(0, |ConnRef(c)| c.arrived.fetch_add(1, Ordering::SeqCst));
        Ok(Arrival(n))
    }
}

/// Lets the next message start when dropped.
struct Turn<'a>(&'a Conn);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.turn.send_modify(|t| *t += 1);
    }
}

async fn on_message(
    s: SocketRef,
    Arrival(n): Arrival,
    Event(event): Event,
    TryData(data): TryData<Value>,
    WantsAck(wants_ack): WantsAck,
    ack: AckSender,
) {
    let Some(ConnRef(conn)) = s.extensions.get::<ConnRef>() else {
        return;
    };
    // Wait for this message's turn, so sends are published in the order they arrived.
    let mut turn = conn.turn.subscribe();
    if turn.wait_for(|t| *t >= n).await.is_err() {
        return;
    }
    let turn = Turn(&conn);
    let answer = |result: Result<bytes::Bytes, ApiError>, client_msg_id: Option<String>| match (
        wants_ack, result,
    ) {
        (true, result) => {
            let body = result.unwrap_or_else(|e| parley_common::rpc::encode_err(&e));
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let _ = ack.send(&value);
        }
        (false, Ok(_)) => {}
        (false, Err(e)) => emit_error(&s, e.code, &e.message, client_msg_id),
    };
    if !conn.limiter.allow() {
        drop(turn);
        answer(
            Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many requests, slow down",
            )),
            None,
        );
        return;
    }
    // A `traceparent` in the data joins the client's trace; it is not part of the command.
    let mut data = data.ok();
    let traceparent = data
        .as_mut()
        .and_then(Value::as_object_mut)
        .and_then(|o| o.remove("traceparent"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|t| t.len() <= 64);
    let raw = data.and_then(|v| serde_json::value::to_raw_value(&v).ok());
    let limits = &conn.session.state.limits;
    let command = match Command::parse(&event, raw.as_deref(), limits.max_content_chars) {
        Ok(c) => c,
        Err(rejected) => {
            drop(turn);
            if event == "message:send" {
                conn.session.state.metrics.rejected(rejected.error.code);
            }
            answer(Err(rejected.error), rejected.client_msg_id);
            return;
        }
    };
    if let Command::AuthRefresh { token } = &command {
        let result = conn.session.refresh(token).await;
        drop(turn);
        match result {
            Ok(r) => {
                conn.exp.send_replace(r.exp);
                answer(Ok(r.reply), None);
            }
            Err(e) => answer(Err(e), None),
        }
        return;
    }
    let client_msg_id = match &command {
        Command::Send(d) => Some(d.client_msg_id.as_str().to_owned()),
        _ => None,
    };
    let span = tracing::info_span!("command", event = command.name());
    parley_common::trace::continue_from_client(&span, traceparent.as_deref());
    let dispatched = conn
        .session
        .dispatch(command)
        .instrument(span.clone())
        .await;
    drop(turn);
    let result = match dispatched {
        Dispatch::Now(a) => a,
        Dispatch::Later(fut) => fut.instrument(span).await,
    };
    answer(result, client_msg_id);
}
