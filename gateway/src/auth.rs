//! Finding a request's token and verifying it (DESIGN §5): the `Authorization: Bearer` header,
//! else the `token` query parameter, else Parley's own `parley_session` cookie (exchanged with
//! the auth role for an access token), else an Auth.js session cookie. A refusal is logged with
//! its reason and answered 401 with only `unauthenticated`.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use parley_auth::Verified;
use parley_common::wire::{ApiError, ErrorCode};
use serde_json::json;

use crate::state::AppState;

/// The user an HTTP request or upgrade speaks for.
#[derive(Debug, Clone)]
pub struct AuthUser(pub Verified);

/// A refused request: 401 `{error: {code: "unauthenticated", ...}}`.
#[derive(Debug)]
pub struct Unauthenticated;

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        let body = ApiError::new(ErrorCode::Unauthenticated, "a valid token is required");
        (StatusCode::UNAUTHORIZED, Json(json!({ "error": body }))).into_response()
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Unauthenticated;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).or_else(|| query_token(parts));
        match authenticate(state, token, &parts.headers).await {
            Ok(v) => Ok(AuthUser(v)),
            Err(reason) => {
                tracing::info!(%reason, path = %parts.uri.path(), "refused a token");
                Err(Unauthenticated)
            }
        }
    }
}

/// Checks the token a client presented, or, without one, its cookies: Parley's session cookie
/// (exchanged with the auth role for an access token), else an Auth.js session cookie. Both
/// transports authenticate through here.
pub async fn authenticate(
    state: &AppState,
    token: Option<String>,
    headers: &axum::http::HeaderMap,
) -> Result<Verified, parley_auth::VerifyError> {
    let mut token = token.filter(|t| !t.trim().is_empty());
    if token.is_none()
        && let Some(session) = cookie_value(headers, SESSION_COOKIE)
    {
        token = exchange_session(state, session).await;
    }
    match token {
        Some(t) => state.jwks.verify(&state.verifier, &t).await,
        None => state.verifier.verify_cookies(&cookies(headers)),
    }
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

fn bearer(parts: &Parts) -> Option<String> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn query_token(parts: &Parts) -> Option<String> {
    let query = parts.uri.query()?;
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
}
