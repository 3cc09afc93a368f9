//! A connection's life, the same on every transport. `/ws` and Socket.IO are [`Codec`]s: they
//! turn what the client wrote into [`Incoming`] and write what the server says; everything
//! else is here, once:
//!
//! - every frame takes a token of the user's rate (answered `rate_limited` without one) and a
//!   connection that keeps sending into the limit is closed as a flood;
//! - at most `max_inflight` requests run at once, on the connection's own task (no task per
//!   request); at the bound the connection stops reading the client (and keeps writing to it);
//! - every write has a deadline: a client that stops reading is dropped, not waited on;
//! - the token's expiry (`token:expiring`, then the close), moved by `auth:refresh`;
//! - drain, sign-out, a full outbound queue, silence, and the reason each gives the client;
//! - the count of connections closed, by reason.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use parley_common::domain::UserId;
use parley_common::wire::{ApiError, ErrorCode, ServerEvent};
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::Instrument;

use super::gate::{Admit, Gate};
use super::{Answer, Dispatch, Refreshed, Session};
use crate::fanout::Attachment;
use crate::metrics::Transport;
use crate::protocol::Command;
use crate::state::AppState;

/// How often the server pings a transport without a heartbeat of its own.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Silence after which such a connection is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(90);
/// How long before `exp` a client is told `token:expiring`.
const EXPIRY_WARNING: Duration = Duration::from_secs(60);
/// Reconnects after a drain are spread over this window.
const RECONNECT_SPREAD_MS: u64 = 5_000;

/// WebSocket close codes; Socket.IO clients get the same code as `closeCode` in the `error`
/// event sent before the server disconnects them.
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

/// One client request, decoded by the transport.
pub struct Request<R> {
    pub event: String,
    pub data: Option<Box<RawValue>>,
    /// A W3C `traceparent` the client sent, so the server's spans join its trace.
    pub traceparent: Option<String>,
    /// How the transport answers it (a request id, an acknowledgement).
    pub reply: R,
}

/// What the client did, as the transport read it.
pub enum Incoming<R> {
    Request(Request<R>),
    /// A frame that is no request (not JSON, binary): it counts against the rate like one and
    /// is answered with `error`.
    Bad {
        error: ApiError,
        reply: R,
    },
    /// A sign of life with nothing to answer (a pong).
    Alive,
    /// A frame over the size limit.
    TooBig,
    /// The client went, or the socket broke.
    Closed,
    /// The client sent more than the transport holds unread while requests were in flight.
    Overflow,
}

/// A transport: reads the client, writes to it. Every write is given the connection's write
/// deadline by the caller; a write that fails says how the connection ends.
pub trait Codec: Send + Sized + 'static {
    type Reply: Send + 'static;
    const TRANSPORT: Transport;
    /// Whether the connection pings and watches for silence itself (a transport with its own
    /// heartbeat says no).
    const PINGS: bool;
    /// The next thing the client did. Cancel-safe: it is raced against everything else.
    fn recv(&mut self) -> impl Future<Output = Incoming<Self::Reply>> + Send;
    /// A server event, as `{"type": EVENT, "data": {...}}`.
    fn event(&mut self, frame: Bytes) -> impl Future<Output = Result<(), End>> + Send;
    /// The answer to a request.
    fn answer(
        &mut self,
        reply: Self::Reply,
        answer: Answer,
        client_msg_id: Option<String>,
    ) -> impl Future<Output = Result<(), End>> + Send;
    fn ping(&mut self) -> impl Future<Output = Result<(), End>> + Send;
    /// Resolves when the transport learns, on its own, that the client is gone (raced ahead of
    /// the outbound queue, so a busy socket notices too); never, for one that learns it by
    /// reading.
    fn gone(&self) -> impl Future<Output = ()> + Send + 'static;
    /// Ends the connection, telling the client why when it can still hear it.
    fn close(self, end: End) -> impl Future<Output = ()> + Send;
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed, or the socket broke.
    Closed,
    Draining,
    SignedOut,
    TokenExpired,
    /// Refused frames past the flood strikes, or more unread requests than the transport holds.
    Flood,
    /// The outbound queue filled: events were not read.
    TooSlow,
    /// A write did not finish within the write deadline.
    Stalled,
    /// Nothing heard for [`IDLE_LIMIT`].
    Idle,
    TooBig,
}

impl End {
    /// The close code and reason; `None` when the socket is already gone.
    pub fn close_frame(self) -> Option<(u16, &'static str)> {
        Some(match self {
            End::Closed => return None,
            End::Draining => (close::GOING_AWAY, "server draining, reconnect"),
            End::SignedOut => (close::SIGNED_OUT, "signed out"),
            End::TokenExpired => (close::TOKEN_EXPIRED, "token expired"),
            End::Flood => (close::POLICY, "flood: too many frames"),
            End::TooSlow => (close::POLICY, "too slow: events were not read"),
            End::Stalled => (close::POLICY, "too slow: a write did not finish in time"),
            End::Idle => (close::POLICY, "no sign of life"),
            End::TooBig => (close::TOO_BIG, "frame too large"),
        })
    }

    /// The error code of the `error` event a transport without close codes sends.
    pub fn error_code(self) -> ErrorCode {
        match self {
            End::SignedOut | End::TokenExpired => ErrorCode::Unauthenticated,
            End::Flood | End::TooSlow | End::Stalled => ErrorCode::RateLimited,
            End::TooBig => ErrorCode::TooLarge,
            End::Closed | End::Draining | End::Idle => ErrorCode::Unavailable,
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            End::Closed => "client",
            End::Draining => "draining",
            End::SignedOut => "signed_out",
            End::TokenExpired => "token_expired",
            End::Flood => "flood",
            End::TooSlow => "too_slow",
            End::Stalled => "write_timeout",
            End::Idle => "idle",
            End::TooBig => "too_big",
        }
    }
}

/// Who is connected, as authentication found them.
pub struct Identity {
    pub user: UserId,
    /// The token's expiry, seconds since the Unix epoch.
    pub exp: i64,
}

/// A request's answer, ready to be written.
struct Answered<R> {
    reply: R,
    answer: Answer,
    client_msg_id: Option<String>,
}

/// Runs a connection until it ends, then closes it with the reason.
// A debug span: an info one would live as long as the socket, in memory and in the trace
// (OpenTelemetry records every info span), for every idle connection.
#[tracing::instrument(level = "debug", skip_all, fields(user = %who.user, transport = ?C::TRANSPORT))]
pub async fn run<C: Codec>(mut codec: C, state: AppState, who: Identity, attachment: Attachment) {
    tracing::debug!("connected");
    let end = Live::new(state.clone(), who, attachment)
        .serve(&mut codec)
        .await;
    tracing::debug!(reason = end.label(), "closing");
    state.metrics.closed(C::TRANSPORT, end.label());
    codec.close(end).await;
}

/// A connection's state while it lives.
struct Live<R> {
    session: Session,
    gate: Gate,
    attachment: Attachment,
    /// Requests being answered (a send waiting for the broker's ack, a query), polled by the
    /// connection's loop itself: no task and no channel per request.
    inflight: FuturesUnordered<BoxFuture<'static, Answered<R>>>,
    max_inflight: usize,
    write_timeout: Duration,
    exp: i64,
}

impl<R: Send + 'static> Live<R> {
    fn new(state: AppState, who: Identity, attachment: Attachment) -> Self {
        let limits = &state.limits;
        Self {
            gate: Gate::new(state.clone(), who.user.clone()),
            inflight: FuturesUnordered::new(),
            max_inflight: limits.max_inflight,
            write_timeout: limits.write_timeout,
            exp: who.exp,
            session: Session::new(state, who.user),
            attachment,
        }
    }

    async fn serve<C: Codec<Reply = R>>(&mut self, codec: &mut C) -> End {
        let state = self.session.state.clone();
        let gone = codec.gone();
        tokio::pin!(gone);
        let (expires_at, warn_at) = expiry_deadlines(self.exp);
        let expired = tokio::time::sleep_until(expires_at);
        tokio::pin!(expired);
        let warning = tokio::time::sleep_until(warn_at);
        tokio::pin!(warning);
        let mut warned = false;
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                biased;
                () = state.draining.cancelled() => {
                    let bye = ServerEvent::ServerDraining { reconnect_after_ms: reconnect_jitter_ms() };
                    let _ = write(self.write_timeout, codec.event(bye.to_json())).await;
                    Err(End::Draining)
                }
                () = &mut gone => Err(End::Closed),
                () = self.attachment.revoked.cancelled() => Err(End::SignedOut),
                () = self.attachment.slow.cancelled() => Err(End::TooSlow),
                () = &mut expired => Err(End::TokenExpired),
                () = &mut warning, if !warned => {
                    warned = true;
                    let event = ServerEvent::TokenExpiring { exp: self.exp };
                    write(self.write_timeout, codec.event(event.to_json())).await.map(|()| None)
                }
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => {
                    let written = codec.answer(done.reply, done.answer, done.client_msg_id);
                    write(self.write_timeout, written).await.map(|()| None)
                }
                out = self.attachment.rx.recv() => match out {
                    Some(frame) => write(self.write_timeout, codec.event(frame)).await.map(|()| None),
                    None => Err(End::Closed),
                },
                _ = ping.tick(), if C::PINGS => {
                    if last_heard.elapsed() > IDLE_LIMIT {
                        Err(End::Idle)
                    } else {
                        write(self.write_timeout, codec.ping()).await.map(|()| None)
                    }
                }
                // At the bound of requests in flight, stop reading the client (but keep
                // writing to it) until one is answered.
                incoming = codec.recv(), if self.inflight.len() < self.max_inflight => {
                    // Nothing is served past the token's exp, even when this task is woken by
                    // the frame before its expiry timer has fired (a busy runtime).
                    let now = Instant::now();
                    if now >= expired.deadline() {
                        return End::TokenExpired;
                    }
                    if !matches!(incoming, Incoming::Closed) {
                        last_heard = now;
                    }
                    // Boxed: a command's future is large and lives only while a frame is
                    // handled; inline, every idle connection's task would carry its space.
                    Box::pin(self.incoming(codec, incoming)).await
                }
            };
            match step {
                Ok(None) => {}
                Ok(Some(exp)) => {
                    tracing::debug!(old = self.exp, new = exp, "token refreshed");
                    self.exp = exp;
                    let (expires_at, warn_at) = expiry_deadlines(exp);
                    expired.as_mut().reset(expires_at);
                    warning.as_mut().reset(warn_at);
                    warned = false;
                }
                Err(end) => return end,
            }
        }
    }

    /// Handles what the client did; `Ok(Some(exp))` when `auth:refresh` moved the expiry.
    async fn incoming<C: Codec<Reply = R>>(
        &mut self,
        codec: &mut C,
        incoming: Incoming<R>,
    ) -> Result<Option<i64>, End> {
        let (request, reply) = match incoming {
            Incoming::Request(r) => (Ok((r.event, r.data, r.traceparent)), r.reply),
            Incoming::Bad { error, reply } => (Err(error), reply),
            Incoming::Alive => return Ok(None),
            Incoming::TooBig => return Err(End::TooBig),
            Incoming::Closed => return Err(End::Closed),
            Incoming::Overflow => return Err(End::Flood),
        };
        match self.gate.admit() {
            Admit::Yes => {}
            Admit::Flood => return Err(End::Flood),
            Admit::Refused => {
                if let Ok((event, ..)) = &request {
                    self.count_refused_send(event, ErrorCode::RateLimited);
                }
                let refused = ApiError::new(ErrorCode::RateLimited, "too many requests, slow down");
                return write(self.write_timeout, codec.answer(reply, Err(refused), None))
                    .await
                    .map(|()| None);
            }
        }
        let (event, data, traceparent) = match request {
            Ok(r) => r,
            Err(error) => {
                return write(self.write_timeout, codec.answer(reply, Err(error), None))
                    .await
                    .map(|()| None);
            }
        };
        let limits = &self.session.state.limits;
        let command = match Command::parse(&event, data.as_deref(), limits.max_content_chars) {
            Ok(c) => c,
            Err(rejected) => {
                self.count_refused_send(&event, rejected.error.code);
                let answer = codec.answer(reply, Err(rejected.error), rejected.client_msg_id);
                return write(self.write_timeout, answer).await.map(|()| None);
            }
        };
        if let Command::AuthRefresh { token } = &command {
            return match self.session.refresh(token).await {
                Ok(Refreshed {
                    exp,
                    session_id,
                    reply: body,
                }) => {
                    // Sign-out of the session the new token belongs to ends this socket now.
                    self.attachment.rebind_session(session_id);
                    write(self.write_timeout, codec.answer(reply, Ok(body), None)).await?;
                    Ok(Some(exp))
                }
                Err(e) => write(self.write_timeout, codec.answer(reply, Err(e), None))
                    .await
                    .map(|()| None),
            };
        }
        let client_msg_id = match &command {
            Command::Send(s) => Some(s.client_msg_id.as_str().to_owned()),
            _ => None,
        };
        // The command's span joins the client's trace when the request carried a traceparent.
        let span = tracing::info_span!("command", event = command.name());
        parley_common::trace::continue_from_client(&span, traceparent.as_deref());
        match self
            .session
            .dispatch(command)
            .instrument(span.clone())
            .await
        {
            Dispatch::Now(answer) => write(
                self.write_timeout,
                codec.answer(reply, answer, client_msg_id),
            )
            .await
            .map(|()| None),
            Dispatch::Later(fut) => {
                // The loop reads only below the bound, so this never passes it.
                self.inflight.push(Box::pin(async move {
                    Answered {
                        answer: fut.instrument(span).await,
                        reply,
                        client_msg_id,
                    }
                }));
                Ok(None)
            }
        }
    }

    fn count_refused_send(&self, event: &str, code: ErrorCode) {
        if event == "message:send" {
            self.session.state.metrics.rejected(code);
        }
    }
}

/// Gives a write the connection's deadline. (A function, not a method: a `&Live` held across
/// the write would make the connection's future need `Live: Sync`.)
async fn write(timeout: Duration, write: impl Future<Output = Result<(), End>>) -> Result<(), End> {
    tokio::time::timeout(timeout, write)
        .await
        .unwrap_or(Err(End::Stalled))
}

/// When a connection whose token expires at `exp` (Unix seconds) is closed, and when it is
/// warned.
fn expiry_deadlines(exp: i64) -> (Instant, Instant) {
    let now_unix = chrono::Utc::now().timestamp_millis();
    let left_ms = (exp.saturating_mul(1000) - now_unix).max(0) as u64;
    let at = Instant::now() + Duration::from_millis(left_ms);
    (at, at.checked_sub(EXPIRY_WARNING).unwrap_or(at))
}

/// A random delay for `server:draining`, so clients do not all come back in the same second.
fn reconnect_jitter_ms() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64 % RECONNECT_SPREAD_MS
}
