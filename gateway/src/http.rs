//! The account side of the HTTP API of DESIGN §7: accounts (calling the auth role over NATS),
//! user search and the JWKS; and what every route shares: errors as `{error: {code, message}}`
//! with the matching status, also for a query string or path that does not parse. Each route is
//! described by its `#[utoipa::path]`, from which [`crate::openapi`] builds the document.
//!
//! The account routes read their bodies through [`JsonBody`]: JSON only when the request says
//! `Content-Type: application/json` (a cross-site form can send `text/plain`, never that, so a
//! page elsewhere cannot sign a browser in or up), at most 16 KiB. Sign-in and sign-up pass the
//! [`ClientAddr`] to the auth role, which limits attempts per address.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
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

use crate::auth::{SESSION_COOKIE, cookie_value};
use crate::client_addr::ClientAddr;
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

/// The largest body an account route reads: every field has a cap far below it.
pub const MAX_JSON_BODY_BYTES: usize = 16 * 1024;

/// Whether the request declares a JSON body: `application/json`, parameters (a charset)
/// allowed, case-insensitive.
pub fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Why a body was not read: 415 without the JSON content type, 413 past
/// [`MAX_JSON_BODY_BYTES`], 400 when it does not parse; each `{error: {code, message}}`.
#[derive(Debug)]
pub enum BodyRejection {
    NotJson,
    TooLarge,
    Invalid(ApiError),
}

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        match self {
            BodyRejection::NotJson => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(ErrorBody {
                    error: ApiError::invalid("Content-Type must be application/json"),
                }),
            )
                .into_response(),
            BodyRejection::TooLarge => HttpError(ApiError::new(
                ErrorCode::TooLarge,
                format!("request body must be at most {MAX_JSON_BODY_BYTES} bytes"),
            ))
            .into_response(),
            BodyRejection::Invalid(e) => HttpError(e).into_response(),
        }
    }
}

/// Reads a body, if there is one, as JSON of a declared JSON content type.
async fn read_json<T: DeserializeOwned>(req: Request) -> Result<Option<T>, BodyRejection> {
    let declared = declares_json(req.headers());
    let raw = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY_BYTES)
        .await
        .map_err(|_| BodyRejection::TooLarge)?;
    if raw.is_empty() && !declared {
        return Ok(None);
    }
    if !declared {
        return Err(BodyRejection::NotJson);
    }
    body(&raw).map(Some).map_err(BodyRejection::Invalid)
}

/// A JSON request body (see [`BodyRejection`] for what is refused). An empty body without a
/// content type is refused as not JSON too.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = BodyRejection;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        read_json(req)
            .await?
            .map(JsonBody)
            .ok_or(BodyRejection::NotJson)
    }
}

/// An optional JSON body: none at all is `T::default()`; one that is there is held to the
/// rules of [`JsonBody`].
pub struct OptionalJsonBody<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = BodyRejection;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(OptionalJsonBody(read_json(req).await?.unwrap_or_default()))
    }
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
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not Content-Type: application/json", body = ErrorBody),
        (status = 429, description = "Too many sign-ups from this address", body = ErrorBody),
        (status = 503, description = "Try again (also: too many sign-ins at once)", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    JsonBody(b): JsonBody<RegisterBody>,
) -> HttpResult<Response> {
    let req = RegisterRequest {
        username: b.username,
        email: b.email,
        password: b.password,
        display_name: b.display_name,
        client_addr: Some(client.to_string()),
    };
    let s: SignedIn = call(&state, AuthOp::Register, &req).await?;
    Ok(signed_in(StatusCode::CREATED, &headers, s))
}

/// Signs in with a username (or email) and password: sets the session cookie.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginBody,
    responses(
        (status = 200, description = "Signed in", body = SignedInBody),
        (status = 400, description = "Malformed, or a field too long", body = ErrorBody),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not Content-Type: application/json", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "Try again (also: too many sign-ins at once)", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    JsonBody(b): JsonBody<LoginBody>,
) -> HttpResult<Response> {
    let req = LoginRequest {
        username: b.username,
        password: b.password,
        client_addr: Some(client.to_string()),
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
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not Content-Type: application/json", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<RefreshBody>,
) -> HttpResult<Response> {
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
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "A body that is not Content-Type: application/json", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    OptionalJsonBody(b): OptionalJsonBody<LogoutBody>,
) -> HttpResult<Response> {
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
        (status = 429, description = "Over the caller's request budget; see Retry-After", body = ErrorBody),
        (status = 503, description = "Try again", body = ErrorBody),
    ))]
pub async fn users(
    State(state): State<AppState>,
    _user: crate::rest::Limited,
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use proptest::prelude::*;

    fn post(content_type: Option<&str>, body: impl Into<Body>) -> Request {
        let mut b = axum::http::Request::post("/api/auth/login");
        if let Some(ct) = content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(body.into()).unwrap()
    }

    async fn login_body(req: Request) -> Result<JsonBody<LoginBody>, BodyRejection> {
        JsonBody::<LoginBody>::from_request(req, &()).await
    }

    const LOGIN: &str = r#"{"username":"alice","password":"correct horse"}"#;

    #[tokio::test]
    async fn a_login_posted_as_a_cross_site_form_is_refused_as_not_json() {
        for ct in [
            Some("text/plain"),
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            None,
        ] {
            assert!(
                matches!(
                    login_body(post(ct, LOGIN)).await,
                    Err(BodyRejection::NotJson)
                ),
                "{ct:?}"
            );
        }
        let r = BodyRejection::NotJson.into_response();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn json_of_the_declared_type_is_read_and_bad_json_is_invalid() {
        let JsonBody(b) = login_body(post(Some("Application/JSON; charset=utf-8"), LOGIN))
            .await
            .ok()
            .unwrap();
        assert_eq!(b.username, "alice");
        assert!(matches!(
            login_body(post(Some("application/json"), "{nope")).await,
            Err(BodyRejection::Invalid(e)) if e.code == ErrorCode::Invalid
        ));
    }

    #[tokio::test]
    async fn a_body_over_16_kib_is_too_large() {
        let huge = format!(
            r#"{{"username":"{}","password":"x"}}"#,
            "a".repeat(MAX_JSON_BODY_BYTES)
        );
        let r = login_body(post(Some("application/json"), huge)).await;
        assert!(matches!(r, Err(BodyRejection::TooLarge)));
        assert_eq!(
            BodyRejection::TooLarge.into_response().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn logout_without_a_body_needs_no_content_type_but_a_body_does() {
        let OptionalJsonBody(b) = OptionalJsonBody::<LogoutBody>::from_request(post(None, ""), &())
            .await
            .ok()
            .unwrap();
        assert!(b.refresh_token.is_none());
        let r = OptionalJsonBody::<LogoutBody>::from_request(
            post(Some("text/plain"), r#"{"refreshToken":"x"}"#),
            &(),
        )
        .await;
        assert!(matches!(r, Err(BodyRejection::NotJson)));
    }

    proptest! {
        /// Whatever bytes arrive as `Cookie` headers, `cookie_value` neither panics nor returns
        /// anything but a non-empty value that the header holds as `name=value`.
        #[test]
        fn cookie_parsing_never_panics_and_returns_only_what_is_there(
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4),
            name in prop_oneof![Just("parley_session"), Just("a"), Just("")],
        ) {
            let mut headers = HeaderMap::new();
            for v in &values {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    headers.append(header::COOKIE, v);
                }
            }
            if let Some(v) = cookie_value(&headers, name) {
                prop_assert!(!v.is_empty());
                prop_assert!(!v.contains(';'));
                let joined = crate::auth::cookies(&headers);
                let pair = format!("{name}={v}");
                prop_assert!(joined.contains(&pair));
            }
        }

        /// Arbitrary bodies and content types never panic the body reader.
        #[test]
        fn any_body_is_read_or_refused_with_a_reason(
            raw in proptest::collection::vec(any::<u8>(), 0..300),
            ct in prop_oneof![Just(Some("application/json")), Just(Some("text/plain")), Just(None)],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let r = rt.block_on(login_body(post(ct, raw)));
            if let Err(e) = r {
                let status = e.into_response().status();
                prop_assert!(matches!(status.as_u16(), 400 | 413 | 415));
            }
        }
    }
}
