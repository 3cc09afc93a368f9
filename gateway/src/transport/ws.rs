//! The plain WebSocket transport at `/ws` (DESIGN §6): one JSON object per text frame,
//! `{"type": EVENT, "id": REQ_ID?, "data": {...}}`; a request with an `id` is answered
//! `{"type": "ack", "id": REQ_ID, "data": REPLY}`. A frame without an `id` that fails gets an
//! `error` event instead. Bad frames never close the connection; a flood, a client that does
//! not read, an expired token or a draining server do, with a close reason.
//!
//! The socket loop owns the connection's expiry: `token:expiring` shortly before `exp`, a close
//! at `exp`, and `auth:refresh`, which moves both to a new token's `exp`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use parley_auth::Verified;
use parley_common::rpc;
use parley_common::wire::{ApiError, ErrorCode, ErrorEvent, ServerEvent};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use crate::auth::AuthUser;
use crate::fanout::{AttachError, Attachment};
use crate::protocol::{Command, Frame};
use crate::session::{Dispatch, Refreshed, Session};
use crate::state::AppState;

/// Close codes sent to clients.
pub mod close {
    /// The server is shutting down or restarting: reconnect.
    pub const GOING_AWAY: u16 = 1001;
    /// Flood, or a client that does not read.
    pub const POLICY: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The access token expired and was not refreshed.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The session the socket authenticated with was signed out (or revoked).
    pub const SIGNED_OUT: u16 = 4002;
}

/// How long writing one frame may take before the client counts as not reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server pings.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Silence after which a connection is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(90);
/// How long the server waits for the client's half of the closing handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bytes read from the socket at a time: small, so idle connections stay cheap.
const READ_BUFFER: usize = 1024;

/// `GET /ws`: authenticate, subscribe for the user, then upgrade.
pub async fn upgrade(
    State(state): State<AppState>,
    AuthUser(verified): AuthUser,
    ws: WebSocketUpgrade,
) -> Response {
    if state.draining.is_cancelled() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "server draining",
        );
    }
    let attachment = match state
        .fanout
        .attach_session(
            &verified.user_id,
            verified.session_id.clone(),
            crate::metrics::Transport::Ws,
        )
        .await
    {
        Ok(a) => a,
        Err(e @ AttachError::TooManyConnections) => {
            tracing::info!(user = %verified.user_id, "refusing a connection: {e}");
            return api_error(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many connections for this user",
            );
        }
        Err(e @ AttachError::Unavailable) => {
            tracing::warn!(error = %e, "refusing a connection");
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "try again shortly",
            );
        }
    };
    let max = state.limits.max_frame_bytes;
    let tracker = state.sockets.clone();
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(max * 4)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| tracker.track_future(run(socket, state, verified, attachment)))
}

/// `{error: {code, message}}` with a status, for a refused upgrade.
fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": ApiError::new(code, message) });
    (status, axum::Json(body)).into_response()
}

/// Why a connection ended, for the close frame and the log.
enum End {
    Closed,
    Send(u16, &'static str),
}

/// What the socket loop does after a client frame.
enum Step {
    Continue,
    /// `auth:refresh` was accepted: the connection now lives until this `exp` (Unix seconds).
    Refreshed(i64),
    End(End),
}

impl From<Option<End>> for Step {
    fn from(end: Option<End>) -> Self {
        end.map_or(Step::Continue, Step::End)
    }
}

// A debug span: an info one would live as long as the socket, in memory and in the trace
// (OpenTelemetry records every info span), for every idle connection.
#[tracing::instrument(level = "debug", skip_all, fields(user = %verified.user_id))]
async fn run(socket: WebSocket, state: AppState, verified: Verified, mut attachment: Attachment) {
    tracing::debug!("socket connected");
    let (mut sink, mut stream) = socket.split();
    let session = Session::new(state.clone(), verified.user_id.clone());
    let inflight = Arc::new(Semaphore::new(state.limits.max_inflight));
    let mut flood = Flood::new(state.limits.flood_strikes);
    let replies = attachment.tx.clone();

    // The token's expiry: the close at `exp` and the warning before it, both moved by
    // `auth:refresh`.
    let mut exp = verified.exp;
    let (expires_at, warn_at) = super::expiry_deadlines(exp);
    let expired = tokio::time::sleep_until(expires_at);
    tokio::pin!(expired);
    let warning = tokio::time::sleep_until(warn_at);
    tokio::pin!(warning);
    let mut warned = false;
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();

    let end = loop {
        tokio::select! {
            biased;
            () = state.draining.cancelled() => {
                let jitter = super::reconnect_jitter_ms();
                let bye = ServerEvent::ServerDraining { reconnect_after_ms: jitter }.to_json();
                let _ = write(&mut sink, bye).await;
                break End::Send(close::GOING_AWAY, "server draining, reconnect");
            }
            () = attachment.revoked.cancelled() => {
                break End::Send(close::SIGNED_OUT, "signed out");
            }
            () = attachment.slow.cancelled() => {
                break End::Send(close::POLICY, "too slow: events were not read");
            }
            () = &mut expired => break End::Send(close::TOKEN_EXPIRED, "token expired"),
            () = &mut warning, if !warned => {
                warned = true;
                let ev = ServerEvent::TokenExpiring { exp }.to_json();
                let _ = replies.try_send(ev);
            }
            out = attachment.rx.recv() => {
                let Some(frame) = out else { break End::Closed };
                if write(&mut sink, frame).await.is_err() {
                    break End::Closed;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_LIMIT {
                    break End::Send(close::POLICY, "no sign of life");
                }
                if sink.send(WsMessage::Ping(Bytes::new())).await.is_err() {
                    break End::Closed;
                }
            }
            // At the bound of requests in flight, stop reading the socket (but keep writing
            // to it) until one finishes.
            _ = inflight.acquire(), if inflight.available_permits() == 0 => {}
            incoming = stream.next(), if inflight.available_permits() > 0 => {
                last_heard = Instant::now();
                let text = match incoming {
                    Some(Ok(WsMessage::Text(t))) => Some(t),
                    Some(Ok(WsMessage::Binary(_))) => None,
                    Some(Ok(WsMessage::Close(_))) | None => break End::Closed,
                    Some(Ok(_)) => continue, // ping / pong
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "socket read failed");
                        if is_too_big(e) {
                            break End::Send(close::TOO_BIG, "frame too large");
                        }
                        break End::Closed;
                    }
                };
                // Every data frame counts against the user's rate, before any parsing.
                if !attachment.allow() {
                    if flood.refused() {
                        break End::Send(close::POLICY, "flood: too many frames");
                    }
                    let e = ApiError::new(ErrorCode::RateLimited, "too many requests, slow down");
                    let id = text.as_deref().and_then(|t| Frame::parse(t).ok()).and_then(|f| f.id);
                    match queue(&replies, answer_frame(id.as_deref(), Err(e), None)) {
                        Some(end) => break end,
                        None => continue,
                    }
                }
                let step = match text {
                    // Boxed: the command's future is large, and only exists while a frame is
                    // handled; inline, every idle socket's task would carry its space.
                    Some(text) => Box::pin(handle_frame(&session, &text, &attachment, &inflight)).await,
                    None => queue(&replies, error_event(ApiError::invalid("binary frames are not supported; send JSON text"), None)).into(),
                };
                match step {
                    Step::Continue => {}
                    Step::Refreshed(new_exp) => {
                        tracing::debug!(old = exp, new = new_exp, "token refreshed");
                        exp = new_exp;
                        let (expires_at, warn_at) = super::expiry_deadlines(exp);
                        expired.as_mut().reset(expires_at);
                        warning.as_mut().reset(warn_at);
                        warned = false;
                    }
                    Step::End(end) => break end,
                }
            }
        }
    };
    if let End::Send(code, reason) = end {
        tracing::debug!(code, reason, "closing socket");
        let _ = tokio::time::timeout(
            WRITE_TIMEOUT,
            sink.send(WsMessage::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }))),
        )
        .await;
        // The closing handshake: read (and drop) what the client still sends until it answers
        // the close. Dropping a socket with unread input would reset it, and the client would
        // never see the close frame and its reason.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(msg)) = stream.next().await {
                if matches!(msg, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    tracing::debug!("socket closed");
}

/// Reads one text frame and starts its command. Says when the client must go, or when an
/// `auth:refresh` moved the connection's expiry (which the caller, owning the timers, applies).
///
/// The socket loop is also what drains `replies`, so nothing here may wait on that queue: a full
/// queue means the client is not reading, and the socket is closed.
async fn handle_frame(
    session: &Session,
    text: &str,
    attachment: &Attachment,
    inflight: &Arc<Semaphore>,
) -> Step {
    let limits = &session.state.limits;
    let replies = &attachment.tx;
    let frame = match Frame::parse(text) {
        Ok(f) => f,
        Err(e) => return queue(replies, error_event(e, None)).into(),
    };
    let command = match Command::parse(
        &frame.event,
        frame.data.as_deref(),
        limits.max_content_chars,
    ) {
        Ok(c) => c,
        Err(rejected) => {
            if frame.event == "message:send" {
                session.state.metrics.rejected(rejected.error.code);
            }
            let reply = answer_frame(
                frame.id.as_deref(),
                Err(rejected.error),
                rejected.client_msg_id,
            );
            return queue(replies, reply).into();
        }
    };
    let id = frame.id;
    if let Command::AuthRefresh { token } = &command {
        return match session.refresh(token).await {
            Ok(Refreshed { exp, reply }) => {
                match queue(replies, answer_frame(id.as_deref(), Ok(reply), None)) {
                    Some(end) => Step::End(end),
                    None => Step::Refreshed(exp),
                }
            }
            Err(e) => queue(replies, answer_frame(id.as_deref(), Err(e), None)).into(),
        };
    }
    let client_msg_id = match &command {
        Command::Send(s) => Some(s.client_msg_id.as_str().to_owned()),
        _ => None,
    };
    // The command's span joins the client's trace when the frame carried a traceparent.
    let span = tracing::info_span!("command", event = command.name());
    parley_common::trace::continue_from_client(&span, frame.traceparent.as_deref());
    match session.dispatch(command).instrument(span.clone()).await {
        Dispatch::Now(answer) => {
            queue(replies, answer_frame(id.as_deref(), answer, client_msg_id)).into()
        }
        Dispatch::Later(fut) => {
            // Requests in flight are bounded: the socket loop reads a frame only when a permit
            // is free, so this does not wait (but still notices a client that stopped reading).
            let permit = tokio::select! {
                p = inflight.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return Step::Continue,
                },
                () = attachment.slow.cancelled() => return Step::End(End::Send(close::POLICY, "too slow: replies were not read")),
            };
            let replies = replies.clone();
            let slow = attachment.slow.clone();
            tokio::spawn(async move {
                let answer = fut.instrument(span).await;
                if queue(&replies, answer_frame(id.as_deref(), answer, client_msg_id)).is_some() {
                    slow.cancel();
                }
                drop(permit);
            });
            Step::Continue
        }
    }
}

/// Queues a frame for the socket without waiting; a full queue ends the connection.
fn queue(replies: &tokio::sync::mpsc::Sender<Bytes>, frame: Bytes) -> Option<End> {
    if frame.is_empty() {
        return None;
    }
    match replies.try_send(frame) {
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
            Some(End::Send(close::POLICY, "too slow: replies were not read"))
        }
        _ => None,
    }
}

/// The frame that answers a request: an ack when it had an id, else an `error` event when it
/// failed, else nothing (an empty frame, which [`write`] skips).
fn answer_frame(
    id: Option<&RawValue>,
    answer: Result<Bytes, ApiError>,
    client_msg_id: Option<String>,
) -> Bytes {
    match (id, answer) {
        (Some(id), answer) => {
            let data = answer.unwrap_or_else(|e| rpc::encode_err(&e));
            let mut out = Vec::with_capacity(data.len() + id.get().len() + 32);
            out.extend_from_slice(br#"{"type":"ack","id":"#);
            out.extend_from_slice(id.get().as_bytes());
            out.extend_from_slice(br#","data":"#);
            out.extend_from_slice(&data);
            out.push(b'}');
            out.into()
        }
        (None, Ok(_)) => Bytes::new(),
        (None, Err(e)) => error_event(e, client_msg_id),
    }
}

fn error_event(e: ApiError, client_msg_id: Option<String>) -> Bytes {
    ServerEvent::Error(ErrorEvent {
        code: e.code,
        message: e.message,
        client_msg_id,
    })
    .to_json()
}

async fn write<S>(sink: &mut S, frame: Bytes) -> Result<(), ()>
where
    S: futures::Sink<WsMessage> + Unpin,
{
    if frame.is_empty() {
        return Ok(());
    }
    let text = Utf8Bytes::try_from(frame).map_err(|_| ())?;
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(WsMessage::Text(text))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Frames refused by the rate limit within a window; too many and the client is flooding.
struct Flood {
    window_start: Instant,
    refusals: u32,
    max: u32,
}

impl Flood {
    const WINDOW: Duration = Duration::from_secs(10);

    fn new(max: u32) -> Self {
        Self {
            window_start: Instant::now(),
            refusals: 0,
            max,
        }
    }

    /// Counts one refusal; true when the window has seen more than allowed.
    fn refused(&mut self) -> bool {
        if self.window_start.elapsed() > Self::WINDOW {
            self.window_start = Instant::now();
            self.refusals = 0;
        }
        self.refusals += 1;
        self.refusals > self.max
    }
}

/// Whether a read failed because a frame or message was over the size limit.
fn is_too_big(e: axum::Error) -> bool {
    e.into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}
