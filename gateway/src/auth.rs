//! Finding a request's token and verifying it (DESIGN §5): the `Authorization: Bearer` header,
//! else the `token` query parameter, else Parley's own `parley_session` cookie (exchanged with
//! the auth role for an access token), else an Auth.js session cookie. A refusal is logged with
//! its reason and answered with only a code: 401 `unauthenticated` for a bad, expired or
//! signed-out token, 403 `forbidden` for a cookie sent from an origin that is not allowed.
//!
//! # Cookies and origins
//!
//! A browser attaches the session cookie to whatever page makes the request, so a request that
//! authenticates with a cookie is only taken from an allowed origin ([`AllowedOrigins`],
//! `PARLEY_ALLOWED_ORIGINS`, default: the request's own host): the `/ws` upgrade and Socket.IO's
//! connect (cross-site WebSocket hijacking), and every unsafe HTTP call that is not
//! token-authenticated ([`guard_unsafe_requests`]), which must also send its body as
//! `application/json`, a type no cross-site form or simple request can send (CSRF, login CSRF).
//! A token (`Authorization: Bearer`, `?token=`, Socket.IO's `auth.token`) is not origin-bound: a
//! page cannot read another origin's token. A request with no `Origin` header is taken: browsers
//! send one on every WebSocket handshake, cross-origin request and cross-site POST, so it comes
//! from a non-browser client or a same-origin GET (Socket.IO's polling handshake); one that says
//! `Sec-Fetch-Site: cross-site` without an `Origin` is refused all the same.

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parley_auth::{Verified, VerifyError};
use parley_common::wire::{ApiError, ErrorCode};
use serde_json::json;

use crate::state::AppState;

/// The user an HTTP request or upgrade speaks for.
#[derive(Debug, Clone)]
pub struct AuthUser(pub Verified);

/// Why a request, upgrade or `auth:refresh` was refused. Logged; the client sees only
/// [`IntoResponse`]'s code and message.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Token(#[from] VerifyError),
    #[error("the token's session was signed out")]
    SignedOut,
    #[error("origin {0:?} is not allowed to use the session cookie")]
    Origin(String),
    #[error("a cookie-authenticated {0} must send its body as application/json")]
    ContentType(Method),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Refusal::Token(_) | Refusal::SignedOut => (
                StatusCode::UNAUTHORIZED,
                ApiError::new(ErrorCode::Unauthenticated, "a valid token is required"),
            ),
            Refusal::Origin(_) => (
                StatusCode::FORBIDDEN,
                ApiError::new(ErrorCode::Forbidden, "origin not allowed"),
            ),
            Refusal::ContentType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ApiError::new(ErrorCode::Invalid, "Content-Type must be application/json"),
            ),
        };
        (status, Json(json!({ "error": body }))).into_response()
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).or_else(|| query_token(&parts.uri));
        let result = match token {
            // A cookie-authenticated unsafe call, also where the router has no guard layer.
            None => check_unsafe(&state.origins, &parts.method, &parts.headers),
            Some(_) => Ok(()),
        };
        let result = match result {
            Ok(()) => authenticate(state, token, &parts.headers).await,
            Err(e) => Err(e),
        };
        result.map(AuthUser).inspect_err(|reason| match reason {
            Refusal::Token(_) | Refusal::SignedOut => {
                tracing::info!(%reason, path = %parts.uri.path(), "refused a token");
            }
            _ => tracing::info!(%reason, path = %parts.uri.path(), "refused a request"),
        })
    }
}

/// Checks the token a client presented, or, without one, its cookies: Parley's session cookie
/// (exchanged with the auth role for an access token), else an Auth.js session cookie, once the
/// request's origin is allowed to use them. Both transports authenticate through here.
pub async fn authenticate(
    state: &AppState,
    token: Option<String>,
    headers: &HeaderMap,
) -> Result<Verified, Refusal> {
    let mut token = token.filter(|t| !t.trim().is_empty());
    if token.is_none() {
        check_origin(&state.origins, headers)?;
        if let Some(session) = cookie_value(headers, SESSION_COOKIE) {
            token = exchange_session(state, session).await;
        }
    }
    match token {
        Some(t) => state.jwks.verify(&state.verifier, &t).await,
        None => {
            let verified = state.verifier.verify_cookies(&cookies(headers))?;
            state.jwks.check_session(&verified)?;
            Ok(verified)
        }
    }
}

/// The origins whose pages may use the session cookie (`PARLEY_ALLOWED_ORIGINS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    /// `scheme://host[:port]`, lowercase, without a default port; empty: the request's own host.
    list: Vec<String>,
}

impl AllowedOrigins {
    /// Comma-separated origins, e.g. `https://chat.example.com,http://localhost:5173`; empty:
    /// only the request's own host (its `Origin`'s host and port equal its `Host` header).
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut list = Vec::new();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let origin = normalize_origin(entry.trim_end_matches('/')).ok_or_else(|| {
                format!("{entry:?} is not an origin like https://chat.example.com")
            })?;
            list.push(origin.to_string());
        }
        Ok(Self { list })
    }

    /// Whether a page at `origin` may use the cookie of a request made to `host`.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let Some(origin) = normalize_origin(origin) else {
            return false;
        };
        if !self.list.is_empty() {
            return self.list.iter().any(|o| *o == origin.to_string());
        }
        let Some(host) = host else {
            return false;
        };
        let host = host.trim().to_ascii_lowercase();
        host == origin.authority()
            || origin
                .default_port()
                .is_some_and(|p| host == format!("{}:{p}", origin.host))
    }
}

/// An origin's parts, lowercase, with a default port dropped.
struct Origin {
    scheme: &'static str,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn default_port(&self) -> Option<u16> {
        match self.scheme {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        }
    }

    fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority())
    }
}

/// `http(s)://host[:port]` as a browser serialises an `Origin`; `None` for anything else
/// (`null`, a path, credentials, another scheme).
fn normalize_origin(origin: &str) -> Option<Origin> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => "https",
        "http" => "http",
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let authority: Uri = format!("{scheme}://{rest}").parse().ok()?;
    let host = authority.host()?.to_ascii_lowercase();
    let mut o = Origin {
        scheme,
        host,
        port: authority.port_u16(),
    };
    if o.port == o.default_port() {
        o.port = None;
    }
    Some(o)
}

/// Refuses a cookie-authenticated request from an origin that may not use the cookie.
pub fn check_origin(allowed: &AllowedOrigins, headers: &HeaderMap) -> Result<(), Refusal> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match headers.get(header::ORIGIN) {
        Some(origin) => {
            let origin = origin.to_str().unwrap_or("(not text)");
            if allowed.allows(origin, host) {
                Ok(())
            } else {
                Err(Refusal::Origin(origin.chars().take(200).collect()))
            }
        }
        // No Origin: a non-browser client, or a browser's same-origin GET.
        None if headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site")) =>
        {
            Err(Refusal::Origin("(none, cross-site)".into()))
        }
        None => Ok(()),
    }
}

/// For an unsafe method (anything but GET, HEAD, OPTIONS, TRACE) that a cookie may authenticate:
/// the origin must be allowed, and a body must be `application/json`.
fn check_unsafe(
    allowed: &AllowedOrigins,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    if method.is_safe() {
        return Ok(());
    }
    check_origin(allowed, headers)?;
    if has_body(headers) && !is_json(headers) {
        return Err(Refusal::ContentType(method.clone()));
    }
    Ok(())
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key(header::CONTENT_TYPE)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Middleware on the HTTP API: an unsafe call that is not token-authenticated (a cookie's, or
/// a sign-in that sets one) must come from an allowed origin and send JSON. Socket.IO's polling
/// requests are not under `/api/` and authenticate at connect.
pub async fn guard_unsafe_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let token_authenticated =
        bearer(request.headers()).is_some() || query_token(request.uri()).is_some();
    if request.uri().path().starts_with("/api/")
        && !token_authenticated
        && let Err(reason) = check_unsafe(&state.origins, request.method(), request.headers())
    {
        tracing::info!(%reason, path = %request.uri().path(), "refused a request");
        return reason.into_response();
    }
    next.run(request).await
}

/// Parley's session cookie.
pub const SESSION_COOKIE: &str = "parley_session";

/// Every `Cookie` header of a request, joined.
pub fn cookies(headers: &axum::http::HeaderMap) -> String {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The value of cookie `name`, if the request has it.
pub fn cookie_value(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    cookies(headers).split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

/// An access token for a session cookie, from the auth role.
async fn exchange_session(state: &AppState, session: String) -> Option<String> {
    use parley_auth::api::{AuthOp, SessionRequest, TokenReply};
    let payload = serde_json::to_vec(&SessionRequest { session }).ok()?;
    let reply = state
        .js
        .client()
        .request(
            state.subjects.rpc_auth(AuthOp::Token.as_str()),
            payload.into(),
        )
        .await
        .ok()?;
    parley_common::rpc::decode::<TokenReply>(&reply.payload)
        .ok()
        .map(|r| r.token)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn query_token(uri: &Uri) -> Option<String> {
    let query = uri.query()?;
    form_urlencoded_pairs(query).find_map(|(k, v)| (k == "token").then_some(v))
}

/// `a=b&c=d` pairs, percent-decoded.
fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Some((percent_decode(k)?, percent_decode(v)?))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_percent_decoded() {
        let pairs: Vec<_> = form_urlencoded_pairs("a=1&token=x%2Ey%3D&b").collect();
        assert_eq!(pairs[1], ("token".into(), "x.y=".into()));
        assert_eq!(pairs[2], ("b".into(), String::new()));
        assert!(percent_decode("%zz").is_none());
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn by_default_only_the_requests_own_host_may_use_the_cookie() {
        let same = AllowedOrigins::default();
        assert!(same.allows("http://localhost:3000", Some("localhost:3000")));
        assert!(same.allows("https://Chat.Example.com", Some("chat.example.com")));
        assert!(same.allows("https://chat.example.com", Some("chat.example.com:443")));
        assert!(!same.allows("https://evil.example", Some("chat.example.com")));
        assert!(!same.allows("http://localhost:3001", Some("localhost:3000")));
        assert!(!same.allows("null", Some("localhost:3000")));
        assert!(!same.allows("http://localhost:3000", None));
        assert!(!same.allows("http://localhost:3000/path", Some("localhost:3000")));
    }

    #[test]
    fn a_configured_list_is_matched_exactly_whatever_the_host() {
        let list =
            AllowedOrigins::parse("https://app.example.com, http://localhost:5173/").unwrap();
        assert!(list.allows("https://app.example.com", Some("api.example.com")));
        assert!(list.allows("https://app.example.com:443", Some("api.example.com")));
        assert!(list.allows("http://localhost:5173", Some("localhost:3000")));
        assert!(!list.allows("http://app.example.com", Some("app.example.com")));
        assert!(!list.allows("https://api.example.com", Some("api.example.com")));
        assert!(AllowedOrigins::parse("app.example.com").is_err());
        assert!(AllowedOrigins::parse("ftp://x").is_err());
        assert_eq!(
            AllowedOrigins::parse(" , ").unwrap(),
            AllowedOrigins::default()
        );
    }

    #[test]
    fn without_an_origin_only_a_declared_cross_site_request_is_refused() {
        let same = AllowedOrigins::default();
        assert!(check_origin(&same, &headers(&[("host", "a:1")])).is_ok());
        assert!(
            check_origin(
                &same,
                &headers(&[("host", "a:1"), ("sec-fetch-site", "cross-site")])
            )
            .is_err()
        );
        assert!(
            check_origin(
                &same,
                &headers(&[("host", "a:1"), ("origin", "http://a:1")])
            )
            .is_ok()
        );
    }

    #[test]
    fn a_cookie_authenticated_unsafe_call_must_send_json() {
        let same = AllowedOrigins::default();
        let post = Method::POST;
        let json = headers(&[("content-type", "application/json; charset=utf-8")]);
        assert!(check_unsafe(&same, &post, &json).is_ok());
        let text = headers(&[("content-type", "text/plain"), ("content-length", "2")]);
        assert!(matches!(
            check_unsafe(&same, &post, &text),
            Err(Refusal::ContentType(_))
        ));
        assert!(check_unsafe(&same, &Method::GET, &text).is_ok());
        // An empty body (a sign-out) has nothing to misread.
        assert!(check_unsafe(&same, &post, &headers(&[("content-length", "0")])).is_ok());
        assert!(check_unsafe(&same, &post, &HeaderMap::new()).is_ok());
    }
}
