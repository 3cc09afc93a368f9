//! The account side of the HTTP API of DESIGN §7: accounts (calling the auth role over NATS),
//! user search and the JWKS; and what every route shares: errors as `{error: {code, message}}`
//! with the matching status, also for a query string or path that does not parse. Each route is
//! described by its `#[utoipa::path]`, from which [`crate::openapi`] builds the document.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parley_auth::api::{
    AuthOp, LoginRequest, LogoutRequest, PublicUser, RefreshRequest, RegisterRequest,
    SessionRequest, SignedIn, TokenReply, UsersReply, UsersRequest,
};
use parley_common::rpc;
use parley_common::wire::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{AuthUser, SESSION_COOKIE, cookie_value};
use crate::state::AppState;

/// How long the session cookie lives; the session itself expires on the same schedule.
const SESSION_MAX_AGE_SECS: u64 = 30 * 24 * 3600;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/auth/token", get(token))
        .route("/api/auth/refresh", post(refresh))
        .route("/api/auth/logout", post(logout))
        .route("/api/users", get(users))
        .route("/.well-known/jwks.json", get(jwks))
}

/// `{error: {code, message}}`: every refusal.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// An [`ApiError`] as an HTTP response.
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Invalid => StatusCode::BAD_REQUEST,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(ErrorBody { error: self.0 })).into_response()
    }
}

/// A query string, or `invalid` (400, JSON) naming what is wrong with it.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| HttpError(ApiError::invalid(format!("query: {}", e.body_text()))))
    }
}

/// A path parameter, or `invalid` (400, JSON).
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| HttpError(ApiError::invalid(format!("path: {}", e.body_text()))))
    }
}

type HttpResult<T> = Result<T, HttpError>;

/// Calls the auth service and decodes its reply.
async fn call<Req: Serialize, Rep: DeserializeOwned>(
    state: &AppState,
    op: AuthOp,
    req: &Req,
) -> Result<Rep, ApiError> {
    let payload = serde_json::to_vec(req).expect("requests serialise");
    let reply = state
        .js
        .client()
        .request(state.subjects.rpc_auth(op.as_str()), payload.into())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, op = op.as_str(), "auth service did not answer");
            ApiError::unavailable()
        })?;
    rpc::decode(&reply.payload)
}

/// A JSON body, or `invalid` naming what is wrong with it.
pub fn body<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

/// Whether the request reached us over https (directly or through a proxy that says so).
fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn session_cookie(secret: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are base64url")
}

/// The body of a sign-in, without the session secret (that goes in the `parley_session`
/// cookie only).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedInBody {
    /// A Parley access token (EdDSA JWT, 15 minutes).
    token: String,
    /// When `token` expires, seconds since the Unix epoch.
    exp: i64,
    /// For `POST /api/auth/refresh`; rotates on every use.
    refresh_token: String,
    user: PublicUser,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterBody {
    #[schema(pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    username: String,
    #[schema(pattern = "^[^@\\s]+@[^@\\s]+$", max_length = 254)]
    email: String,
    #[schema(min_length = 8, max_length = 256)]
    password: String,
    #[serde(default)]
    #[schema(max_length = 64)]
    display_name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginBody {
    /// Username or email.
    username: String,
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshBody {
    refresh_token: String,
}

/// Signs out the session of the cookie, or the one this refresh token belongs to.
#[derive(Deserialize, ToSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogoutBody {
    #[serde(default)]
    refresh_token: Option<String>,
}

fn signed_in(status: StatusCode, headers: &HeaderMap, s: SignedIn) -> Response {
    let mut response = (
        status,
        Json(SignedInBody {
            token: s.token,
            exp: s.exp,
            refresh_token: s.refresh_token,
            user: s.user,
        }),
    )
        .into_response();
    if let Some(secret) = s.session {
        response.headers_mut().append(
            header::SET_COOKIE,
            session_cookie(&secret, SESSION_MAX_AGE_SECS, is_https(headers)),
        );
    }
    response
}

/// Creates an account and signs in: sets the session cookie.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "Signed up and in", body = SignedInBody),
        (status = 400, description = "Malformed, or username or email taken", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> HttpResult<Response> {
    let b: RegisterBody = body(&raw)?;
    let req = RegisterRequest {
        username: b.username,
        email: b.email,
        password: b.password,
        display_name: b.display_name,
        client_addr: Some(peer.ip().to_string()),
    };
    let s: SignedIn = call(&state, AuthOp::Register, &req).await?;
    Ok(signed_in(StatusCode::CREATED, &headers, s))
}

/// Signs in with a username (or email) and password: sets the session cookie.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginBody,
    responses(
        (status = 200, description = "Signed in", body = SignedInBody),
        (status = 400, description = "Malformed", body = ErrorBody),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> HttpResult<Response> {
    let b: LoginBody = body(&raw)?;
    let req = LoginRequest {
        username: b.username,
        password: b.password,
        client_addr: Some(peer.ip().to_string()),
    };
    let s: SignedIn = call(&state, AuthOp::Login, &req).await?;
    Ok(signed_in(StatusCode::OK, &headers, s))
}

/// `{token}` from the session cookie: the route the seed's browser code calls.
#[utoipa::path(get, path = "/api/auth/token", tag = "auth",
    security(("session_cookie" = [])),
    responses(
        (status = 200, description = "A fresh access token", body = TokenReply),
        (status = 401, description = "No session, or it ended", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> HttpResult<Json<TokenReply>> {
    let session = cookie_value(&headers, SESSION_COOKIE)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "not signed in"))?;
    Ok(Json(
        call(&state, AuthOp::Token, &SessionRequest { session }).await?,
    ))
}

/// Trades a refresh token for a new access token and a new refresh token.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth",
    request_body = RefreshBody,
    responses(
        (status = 200, description = "Refreshed", body = SignedInBody),
        (status = 400, description = "Malformed", body = ErrorBody),
        (status = 401, description = "Unknown, used or expired refresh token", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> HttpResult<Response> {
    let b: RefreshBody = body(&raw)?;
    let req = RefreshRequest {
        refresh_token: b.refresh_token,
    };
    let s: SignedIn = call(&state, AuthOp::Refresh, &req).await?;
    Ok(signed_in(StatusCode::OK, &headers, s))
}

/// Ends the session (its sockets close at once) and clears the cookie.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    request_body(content = Option<LogoutBody>, description = "Optional"),
    security((), ("session_cookie" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 400, description = "Malformed", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> HttpResult<Response> {
    let b: LogoutBody = if raw.is_empty() {
        LogoutBody::default()
    } else {
        body(&raw)?
    };
    let req = LogoutRequest {
        session: cookie_value(&headers, SESSION_COOKIE),
        refresh_token: b.refresh_token,
    };
    if req.session.is_some() || req.refresh_token.is_some() {
        let _: serde_json::Value = call(&state, AuthOp::Logout, &req).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        session_cookie("", 0, is_https(&headers)),
    );
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// The start of a username or display name.
    #[serde(default)]
    #[param(pattern = "\\S", max_length = 64)]
    query: Option<String>,
    #[serde(default)]
    #[param(minimum = 1)]
    limit: Option<u32>,
    /// Or: users by id, comma-separated (at most 100), e.g. a conversation's members.
    #[serde(default)]
    ids: Option<String>,
}

/// Finds users to start a conversation with (`query`), or names users by id (`ids`).
#[utoipa::path(get, path = "/api/users", tag = "users",
    params(UsersQuery),
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "Matching users", body = UsersReply),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn users(
    State(state): State<AppState>,
    _user: AuthUser,
    Q(q): Q<UsersQuery>,
) -> HttpResult<Json<UsersReply>> {
    let ids: Vec<String> = q
        .ids
        .as_deref()
        .map(|ids| {
            ids.split(',')
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let req = match (q.query, ids.is_empty()) {
        (Some(query), true) => UsersRequest {
            query,
            limit: q.limit,
            ids,
        },
        (None, false) => UsersRequest {
            query: String::new(),
            limit: None,
            ids,
        },
        _ => {
            return Err(ApiError::invalid("give exactly one of query and ids").into());
        }
    };
    Ok(Json(call(&state, AuthOp::Users, &req).await?))
}

/// The public keys that verify Parley access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses(
        (status = 200, description = "The JWKS", body = parley_auth::signing::Jwks),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn jwks(State(state): State<AppState>) -> HttpResult<Response> {
    let jwks: parley_auth::signing::Jwks = call(&state, AuthOp::Jwks, &json!({})).await?;
    let mut response = Json(jwks).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}
