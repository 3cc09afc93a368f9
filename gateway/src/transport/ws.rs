//! The plain WebSocket transport at `/ws` (DESIGN §6): one JSON object per text frame,
//! `{"type": EVENT, "id": REQ_ID?, "data": {...}}`; a request with an `id` is answered
//! `{"type": "ack", "id": REQ_ID, "data": REPLY}`. A frame without an `id` that fails gets an
//! `error` event instead. Bad frames never close the connection.
//!
//! Only a codec: the connection's life (limits, expiry, drain, close reasons) is
//! [`crate::session::connection`].

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use parley_common::rpc;
use parley_common::wire::{ApiError, ErrorCode, ErrorEvent, ServerEvent};
use serde_json::value::RawValue;

use crate::auth::AuthUser;
use crate::client_addr::ClientAddr;
use crate::fanout::AttachError;
use crate::metrics::Transport;
use crate::protocol::Frame;
use crate::session::Answer;
use crate::session::connection::{self, Codec, End, Identity, Incoming, Request};
use crate::state::AppState;

pub use crate::session::connection::close;

/// How long the server waits for the client's half of the closing handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bytes read from the socket at a time: small, so idle connections stay cheap.
const READ_BUFFER: usize = 1024;

/// `GET /ws`: authenticate, subscribe for the user, then upgrade.
pub async fn upgrade(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
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
    let Some(place) = state.addresses.acquire(client) else {
        tracing::info!(address = %client, "refusing a connection: too many from this address");
        return api_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many connections from this address",
        );
    };
    let attachment = match state
        .fanout
        .attach_session(
            &verified.user_id,
            verified.session_id.clone(),
            Transport::Ws,
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
    let who = Identity {
        user: verified.user_id.clone(),
        exp: verified.exp,
    };
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        // Room for the largest reply (a page is cut at REPLY_CEILING) whatever the frame limit.
        .max_write_buffer_size((max * 4).max(parley_common::rpc::REPLY_CEILING + 64 * 1024))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                let (sink, stream) = socket.split();
                connection::run(WsCodec { sink, stream }, state, who, attachment).await;
                drop(place);
            })
        })
}

/// `{error: {code, message}}` with a status, for a refused upgrade.
fn api_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": ApiError::new(code, message) });
    (status, axum::Json(body)).into_response()
}

/// JSON text frames on a WebSocket.
struct WsCodec {
    sink: SplitSink<WebSocket, WsMessage>,
    stream: SplitStream<WebSocket>,
}

impl Codec for WsCodec {
    /// The request's id, echoed in its ack.
    type Reply = Option<Box<RawValue>>;
    const TRANSPORT: Transport = Transport::Ws;
    const PINGS: bool = true;

    async fn recv(&mut self) -> Incoming<Self::Reply> {
        match self.stream.next().await {
            Some(Ok(WsMessage::Text(text))) => match Frame::parse(&text) {
                Ok(frame) => Incoming::Request(Request {
                    event: frame.event,
                    data: frame.data,
                    traceparent: frame.traceparent,
                    reply: frame.id,
                }),
                Err(error) => Incoming::Bad { error, reply: None },
            },
            Some(Ok(WsMessage::Binary(_))) => Incoming::Bad {
                error: ApiError::invalid("binary frames are not supported; send JSON text"),
                reply: None,
            },
            Some(Ok(WsMessage::Close(_))) | None => Incoming::Closed,
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => Incoming::Alive,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "socket read failed");
                if is_too_big(e) {
                    Incoming::TooBig
                } else {
                    Incoming::Closed
                }
            }
        }
    }

    async fn event(&mut self, frame: Bytes) -> Result<(), End> {
        self.text(frame).await
    }

    async fn answer(
        &mut self,
        reply: Self::Reply,
        answer: Answer,
        client_msg_id: Option<String>,
    ) -> Result<(), End> {
        self.text(answer_frame(reply.as_deref(), answer, client_msg_id))
            .await
    }

    async fn ping(&mut self) -> Result<(), End> {
        self.sink
            .send(WsMessage::Ping(Bytes::new()))
            .await
            .map_err(write_failed)
    }

    fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    async fn close(mut self, end: End) {
        let Some((code, reason)) = end.close_frame() else {
            return;
        };
        let frame = WsMessage::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        // A client that stopped reading cannot take the close frame either.
        if end == End::Stalled
            || tokio::time::timeout(CLOSE_GRACE, self.sink.send(frame))
                .await
                .is_err()
        {
            return;
        }
        // The closing handshake: read (and drop) what the client still sends until it answers
        // the close. Dropping a socket with unread input would reset it, and the client would
        // never see the close frame and its reason.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(msg)) = self.stream.next().await {
                if matches!(msg, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

impl WsCodec {
    /// Writes one text frame; an empty one (a request without id that succeeded) is skipped.
    async fn text(&mut self, frame: Bytes) -> Result<(), End> {
        if frame.is_empty() {
            return Ok(());
        }
        let text = Utf8Bytes::try_from(frame).map_err(|_| End::Closed)?;
        self.sink
            .send(WsMessage::Text(text))
            .await
            .map_err(write_failed)
    }
}

/// How a failed write ends the connection: a write the HTTP server gave up on at its deadline
/// is a client that stopped reading; anything else, a socket that broke.
fn write_failed(e: axum::Error) -> End {
    match e.into_inner().downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut => {
            End::Stalled
        }
        _ => End::Closed,
    }
}

/// The frame that answers a request: an ack when it had an id, else an `error` event when it
/// failed, else nothing (an empty frame, which is not sent).
fn answer_frame(id: Option<&RawValue>, answer: Answer, client_msg_id: Option<String>) -> Bytes {
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
        (None, Err(e)) => ServerEvent::Error(ErrorEvent {
            code: e.code,
            message: e.message,
            client_msg_id,
            close_code: None,
        })
        .to_json(),
    }
}

/// Whether a read failed because a frame or message was over the size limit.
fn is_too_big(e: axum::Error) -> bool {
    e.into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}
