//! The conversation and message routes of the HTTP API (DESIGN §7), for app servers and for
//! clients that would rather not hold a socket. They go the same way as the socket's commands,
//! through [`Session`]: a server-side send is checked, published to JetStream and idempotent on
//! `clientMsgId` exactly like `message:send`. Every route spends the caller's request budget
//! ([`Limited`]), the same per-user rate limit as a socket's frames.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parley_common::rpc::{self, ListReply, MessagesReply, OpenReply};
use parley_common::wire::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::http::{ErrorBody, HttpError, P, Q, body};
use crate::protocol::{Command, HistoryData, ListData, OpenData};
use crate::session::{Dispatch, Session};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/conversations",
            get(list_conversations).post(open_conversation),
        )
        .route(
            "/api/conversations/{id}/messages",
            get(list_messages).post(send_message),
        )
}

type HttpResult<T> = Result<T, HttpError>;

/// The caller, authenticated ([`AuthUser`]) and within their request budget: each request
/// takes one token of the user's bucket in [`crate::limits::UserRates`] (`PARLEY_SEND_RATE`,
/// `PARLEY_SEND_BURST`). Past it: 429 `rate_limited` with `Retry-After`.
pub struct Limited(pub AuthUser);

impl FromRequestParts<AppState> for Limited {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        state.rates.allow(&user.0.user_id).map_err(rate_limited)?;
        Ok(Limited(user))
    }
}

/// 429 `{error: {code: "rate_limited", ...}}` with `Retry-After` in whole seconds, at least 1.
pub fn rate_limited(wait: Duration) -> Response {
    with_retry_after(ErrorCode::RateLimited, "too many requests", wait)
}

/// Admits a connect (`/ws`, a Socket.IO handshake) at the gateway's connect rate
/// ([`crate::limits::ConnectGate`]), or refuses it, counted: the answer is then 503
/// `{error: {code: "unavailable", ...}}` with `Retry-After`.
pub fn refuse_connect(state: &AppState) -> Option<Response> {
    let wait = state.connects.admit().err()?;
    crate::metrics::GatewayMetrics::get().connect_refused();
    Some(with_retry_after(
        ErrorCode::Unavailable,
        "too many connections opening",
        wait,
    ))
}

/// `{error: {code, message: "<what>: retry in N s"}}` with `Retry-After: N`.
fn with_retry_after(code: ErrorCode, what: &str, wait: Duration) -> Response {
    let secs = retry_after_secs(wait);
    let mut response =
        HttpError(ApiError::new(code, format!("{what}: retry in {secs} s"))).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// [`refuse_connect`] as middleware on `/ws` (Socket.IO's handshake calls it itself): a connect
/// past the connect rate is refused before its token is verified or anything is subscribed.
pub async fn connect_rate(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match refuse_connect(&state) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

/// A wait as `Retry-After` seconds: rounded up (retrying sooner would be refused again), at
/// least 1 (0 would invite a busy loop).
fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}

/// Runs a command as `user` and decodes its `{ok: true, ...}` answer.
async fn run<T: serde::de::DeserializeOwned>(
    state: &AppState,
    Limited(user): Limited,
    command: Command,
) -> Result<T, ApiError> {
    let session = Session::new(state.clone(), user.0.user_id);
    let answer = match session.dispatch(command).await {
        Dispatch::Now(a) => a,
        Dispatch::Later(f) => f.await,
    }?;
    rpc::decode(&answer)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// The `nextBefore` of the previous page.
    #[serde(default)]
    before: Option<String>,
    /// At most this many (default 50, at most 200).
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// The caller's conversations, the most recently active first, each with its last message and
/// the caller's unread count.
#[utoipa::path(get, path = "/api/conversations", tag = "conversations",
    params(ListQuery),
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "A page of conversations", body = ListReply),
        (status = 400, description = "Malformed query or cursor", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Over the caller's request rate: retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds, at least 1, until a retry can be accepted"))),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn list_conversations(
    State(state): State<AppState>,
    user: Limited,
    Q(q): Q<ListQuery>,
) -> HttpResult<Json<ListReply>> {
    let command = Command::List(ListData {
        before: q.before,
        limit: q.limit,
    });
    Ok(Json(run(&state, user, command).await?))
}

/// `conversation:open`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenBody {
    /// The others (the caller is a member whether listed or not). Two members and no title is
    /// a direct conversation, the same one every time for the same pair.
    #[schema(value_type = Vec<String>, pattern = "^[A-Za-z0-9_-]{1,128}$")]
    participant_ids: Vec<parley_common::domain::UserId>,
    /// Makes a group.
    #[serde(default)]
    title: Option<String>,
}

/// Opens a direct conversation (or finds the one the pair has) or creates a group. Every
/// member is told `conversation:new`.
#[utoipa::path(post, path = "/api/conversations", tag = "conversations",
    request_body = OpenBody,
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "The conversation", body = OpenReply),
        (status = 400, description = "Malformed, no other participant, or more participants than `PARLEY_MAX_MEMBERS` (default 256)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Over the caller's request rate: retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds, at least 1, until a retry can be accepted"))),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn open_conversation(
    State(state): State<AppState>,
    user: Limited,
    raw: axum::body::Bytes,
) -> HttpResult<Json<OpenReply>> {
    let b: OpenBody = body(&raw)?;
    // Refused here, before the list travels any further (persistence checks the same cap).
    let max = state.limits.max_members;
    if b.participant_ids.len() > max {
        return Err(HttpError(ApiError::invalid(format!(
            "a conversation may have at most {max} members, the caller included"
        ))));
    }
    let command = Command::Open(OpenData {
        participant_ids: b.participant_ids,
        title: b.title,
    });
    Ok(Json(run(&state, user, command).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct HistoryQuery {
    /// Messages before this seq (default: the newest).
    #[serde(default)]
    #[param(minimum = 1)]
    before_seq: Option<i64>,
    /// At most this many (default 50, at most 200).
    #[serde(default)]
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// A page of a conversation's messages before `beforeSeq`, in seq order.
#[utoipa::path(get, path = "/api/conversations/{id}/messages", tag = "messages",
    params(("id" = Uuid, Path, description = "The conversation"), HistoryQuery),
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Messages, oldest first", body = MessagesReply),
        (status = 400, description = "Malformed id or query", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Over the caller's request rate: retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds, at least 1, until a retry can be accepted"))),
        (status = 403, description = "Not a member, or no such conversation", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn list_messages(
    State(state): State<AppState>,
    user: Limited,
    P(id): P<Uuid>,
    Q(q): Q<HistoryQuery>,
) -> HttpResult<Json<MessagesReply>> {
    let command = Command::History(HistoryData {
        conversation_id: id,
        before_seq: q.before_seq,
        limit: q.limit,
    });
    Ok(Json(run(&state, user, command).await?))
}

/// A server-side send.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendBody {
    /// 1 to 4,000 characters (configurable), not blank, no control characters U+0000 to
    /// U+001F other than tab, line feed and carriage return.
    #[schema(
        min_length = 1,
        max_length = 4000,
        pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F]*\\S[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F]*$"
    )]
    content: String,
    /// The sender's own id for the message: a retry with the same one is stored once.
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    client_msg_id: String,
}

/// The broker has the message: it will be stored and delivered.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    client_msg_id: String,
    conversation_id: Uuid,
    /// Always `accepted`.
    status: String,
}

/// Sends a message as the caller, the same way `message:send` does; idempotent on
/// `clientMsgId`. Answered once JetStream has it: 202.
#[utoipa::path(post, path = "/api/conversations/{id}/messages", tag = "messages",
    params(("id" = Uuid, Path, description = "The conversation")),
    request_body = SendBody,
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 400, description = "Malformed id or body, or content with a refused control character", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Over the caller's request rate: retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds, at least 1, until a retry can be accepted"))),
        (status = 403, description = "Not a member, or no such conversation", body = ErrorBody),
        (status = 413, description = "Content too long", body = ErrorBody),
        (status = 503, description = "Not accepted: retry with the same clientMsgId", body = ErrorBody),
    ))]
pub async fn send_message(
    State(state): State<AppState>,
    user: Limited,
    P(id): P<Uuid>,
    raw: axum::body::Bytes,
) -> HttpResult<Response> {
    let b: SendBody = body(&raw)?;
    // Through the socket's own parser, so the same checks apply.
    let data = serde_json::json!({
        "conversationId": id,
        "content": b.content,
        "clientMsgId": b.client_msg_id,
    });
    let data = RawValue::from_string(data.to_string()).expect("valid JSON");
    let command = Command::parse("message:send", Some(&data), state.limits.max_content_chars)
        .map_err(|r| HttpError(r.error))?;
    let accepted: Accepted = run(&state, user, command).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
    }

    #[tokio::test]
    async fn a_rate_limited_answer_has_the_error_body_and_retry_after() {
        let r = rate_limited(Duration::from_millis(2_500));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limited");
    }
}
