//! The conversation and message routes of the HTTP API (DESIGN §7), for app servers and for
//! clients that would rather not hold a socket. They go the same way as the socket's commands,
//! through [`Session`]: a server-side send is checked, published to JetStream and idempotent on
//! `clientMsgId` exactly like `message:send`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parley_common::rpc::{self, ListReply, MessagesReply, OpenReply};
use parley_common::wire::ApiError;
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

/// Runs a command as `user` and decodes its `{ok: true, ...}` answer.
async fn run<T: serde::de::DeserializeOwned>(
    state: &AppState,
    user: AuthUser,
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
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn list_conversations(
    State(state): State<AppState>,
    user: AuthUser,
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
        (status = 400, description = "Malformed, or no other participant", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn open_conversation(
    State(state): State<AppState>,
    user: AuthUser,
    raw: axum::body::Bytes,
) -> HttpResult<Json<OpenReply>> {
    let b: OpenBody = body(&raw)?;
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
        (status = 403, description = "Not a member, or no such conversation", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn list_messages(
    State(state): State<AppState>,
    user: AuthUser,
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
    /// 1 to 4,000 characters (configurable), not blank, no NUL.
    #[schema(
        min_length = 1,
        max_length = 4000,
        pattern = "^[^\\u0000]*\\S[^\\u0000]*$"
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
        (status = 400, description = "Malformed id or body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not a member, or no such conversation", body = ErrorBody),
        (status = 413, description = "Content too long", body = ErrorBody),
        (status = 503, description = "Not accepted: retry with the same clientMsgId", body = ErrorBody),
    ))]
pub async fn send_message(
    State(state): State<AppState>,
    user: AuthUser,
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
