//! The requests and replies of the `parley-auth` NATS service (`{p}.rpc.auth.<op>`), shared by
//! the auth role and the gateway that calls it. Replies use the envelope of
//! [`parley_common::rpc`].

use serde::{Deserialize, Serialize};

/// The operations of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOp {
    Register,
    Login,
    /// A session cookie for a fresh access token.
    Token,
    /// A refresh token for a new one and a fresh access token.
    Refresh,
    Logout,
    Users,
    Jwks,
    /// The sessions revoked recently enough that their access tokens may still be live: what a
    /// gateway loads at start so it refuses them too.
    Revoked,
}

impl AuthOp {
    pub const ALL: [AuthOp; 8] = [
        AuthOp::Register,
        AuthOp::Login,
        AuthOp::Token,
        AuthOp::Refresh,
        AuthOp::Logout,
        AuthOp::Users,
        AuthOp::Jwks,
        AuthOp::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthOp::Register => "register",
            AuthOp::Login => "login",
            AuthOp::Token => "token",
            AuthOp::Refresh => "refresh",
            AuthOp::Logout => "logout",
            AuthOp::Users => "users",
            AuthOp::Jwks => "jwks",
            AuthOp::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    pub username: String,
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The caller's address, for rate limits (set by the gateway, not the client).
    #[serde(default)]
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    /// Username or email.
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublicUser {
    pub id: String,
    pub username: String,
    pub display_name: String,
}

/// What register, login and refresh return. `session` is the opaque secret of the session
/// cookie; the gateway puts it in `parley_session` and never shows it in a body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedIn {
    pub token: String,
    pub exp: i64,
    pub refresh_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub user: PublicUser,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRequest {
    pub session: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenReply {
    pub token: String,
    pub exp: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Ends a session, named by its cookie or by one of its refresh tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogoutRequest {
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsersRequest {
    /// A prefix of a username or display name.
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub limit: Option<u32>,
    /// Or: these users, by id (the names of a conversation's members).
    #[serde(default)]
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsersReply {
    pub users: Vec<PublicUser>,
}

/// Published on `{p}.ctl.user.<user>` when a session ends, so every gateway closes the sockets
/// that authenticated with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRevoked {
    pub user_id: String,
    pub session_id: String,
}

/// A page of [`AuthOp::Revoked`]: sessions in id order, after `after`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedRequest {
    #[serde(default)]
    pub after: Option<uuid::Uuid>,
}

/// Sessions revoked within the access-token lifetime (older ones' tokens have expired).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedReply {
    pub sessions: Vec<RevokedSession>,
    /// Whether another page follows (ask again with `after` = the last id).
    pub more: bool,
    /// How long after its revocation a session's access tokens can still verify: the access
    /// token lifetime plus the verifier's leeway. Gateways keep announced revocations this long.
    pub keep_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedSession {
    pub id: uuid::Uuid,
    /// When it was revoked, seconds since the Unix epoch.
    pub revoked_at: i64,
}
