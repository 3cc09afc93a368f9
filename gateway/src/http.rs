//! The HTTP API of DESIGN §7 that the gateway serves today: accounts (calling the auth role over
//! NATS), user search and the JWKS. Errors are `{error: {code, message}}` with the matching
//! status.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parley_auth::api::{
    AuthOp, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest, SessionRequest, SignedIn,
    TokenReply, UsersReply, UsersRequest,
};
use parley_common::rpc;
use parley_common::wire::{ApiError, ErrorCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

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
        (status, Json(json!({ "error": self.0 }))).into_response()
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
fn body<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
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

/// The body of a sign-in, without the session secret (that goes in the cookie only).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SignedInBody {
    token: String,
    exp: i64,
    refresh_token: String,
    user: parley_auth::api::PublicUser,
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

async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> HttpResult<Response> {
    let mut req: RegisterRequest = body(&raw)?;
    req.client_addr = Some(peer.ip().to_string());
    let s: SignedIn = call(&state, AuthOp::Register, &req).await?;
    Ok(signed_in(StatusCode::CREATED, &headers, s))
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> HttpResult<Response> {
    let mut req: LoginRequest = body(&raw)?;
    req.client_addr = Some(peer.ip().to_string());
    let s: SignedIn = call(&state, AuthOp::Login, &req).await?;
    Ok(signed_in(StatusCode::OK, &headers, s))
}

/// `{token}` from the session cookie: the route the seed's browser code calls.
async fn token(State(state): State<AppState>, headers: HeaderMap) -> HttpResult<Json<TokenReply>> {
    let session = cookie_value(&headers, SESSION_COOKIE)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "not signed in"))?;
    Ok(Json(
        call(&state, AuthOp::Token, &SessionRequest { session }).await?,
    ))
}

async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> HttpResult<Response> {
    let req: RefreshRequest = body(&raw)?;
    let s: SignedIn = call(&state, AuthOp::Refresh, &req).await?;
    Ok(signed_in(StatusCode::OK, &headers, s))
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> HttpResult<Response> {
    let mut req: LogoutRequest = if raw.is_empty() {
        LogoutRequest::default()
    } else {
        body(&raw)?
    };
    req.session = cookie_value(&headers, SESSION_COOKIE);
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

#[derive(serde::Deserialize)]
struct UsersQuery {
    query: String,
    #[serde(default)]
    limit: Option<u32>,
}

async fn users(
    State(state): State<AppState>,
    _user: AuthUser,
    Query(q): Query<UsersQuery>,
) -> HttpResult<Json<UsersReply>> {
    let req = UsersRequest {
        query: q.query,
        limit: q.limit,
    };
    Ok(Json(call(&state, AuthOp::Users, &req).await?))
}

async fn jwks(State(state): State<AppState>) -> HttpResult<Response> {
    let jwks: parley_auth::signing::Jwks = call(&state, AuthOp::Jwks, &json!({})).await?;
    let mut response = Json(jwks).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}
