//! What the auth service does, as plain functions of an [`AuthContext`].

use std::sync::{Arc, RwLock};

use parley_common::domain::UserId;
use parley_common::subjects::Subjects;
use parley_common::wire::{ApiError, ErrorCode};
use sqlx::PgPool;

use crate::api::{
    LoginRequest, LogoutRequest, PublicUser, RefreshRequest, RegisterRequest, SessionRequest,
    SessionRevoked, SignedIn, TokenReply, UsersReply, UsersRequest,
};
use crate::config::AuthConfig;
use crate::error::Error;
use crate::limiter::{LoginLimiter, RegisterLimiter};
use crate::password::{self, Hasher};
use crate::signing::{Jwks, KeyRing};
use crate::store::{keys, sessions, users};

pub struct AuthContext {
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub subjects: Subjects,
    pub config: AuthConfig,
    pub keys: RwLock<Arc<KeyRing>>,
    pub limiter: LoginLimiter,
    pub register_limiter: RegisterLimiter,
    /// Every argon2 computation goes through it: a bounded number at a time.
    pub hasher: Hasher,
    /// Verified against when a login names no account, so timing does not tell.
    pub dummy_hash: String,
}

impl AuthContext {
    /// Loads the published keys (creating the first one if needed).
    pub async fn load_keys(pool: &PgPool, config: &AuthConfig) -> Result<KeyRing, Error> {
        keys::ensure_active(pool).await?;
        let keep = config.access_ttl.as_secs() as i64 + 60;
        let stored = keys::published(pool, keep).await?;
        KeyRing::new(stored).ok_or_else(|| Error::Internal("no signing key".into()))
    }

    pub async fn reload_keys(&self) -> Result<(), Error> {
        let ring = Self::load_keys(&self.pool, &self.config).await?;
        *self.keys.write().expect("keys lock") = Arc::new(ring);
        Ok(())
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.keys.read().expect("keys lock").clone()
    }

    fn access_token(&self, user: &str, sid: &str) -> (String, i64) {
        self.ring().sign(
            user,
            sid,
            &self.config.issuer,
            &self.config.audience,
            self.config.access_ttl.as_secs() as i64,
        )
    }

    async fn start_session(&self, user: PublicUser) -> Result<SignedIn, ApiError> {
        let (session, secret, refresh) =
            sessions::create(&self.pool, &user.id, self.config.session_ttl)
                .await
                .map_err(Error::from)?;
        let (token, exp) = self.access_token(&user.id, &session.id.to_string());
        Ok(SignedIn {
            token,
            exp,
            refresh_token: refresh,
            session: Some(secret),
            user,
        })
    }
}

fn invalid(message: &str) -> ApiError {
    ApiError::invalid(message)
}

/// Postgres text cannot hold NUL; a field with one is refused, not passed to the database.
fn refuse_nul(fields: &[(&str, &str)]) -> Result<(), ApiError> {
    match fields.iter().find(|(_, v)| v.contains('\0')) {
        Some((name, _)) => Err(ApiError::invalid(format!("{name} must not contain NUL"))),
        None => Ok(()),
    }
}

/// The longest login name (a username or an email).
pub const MAX_LOGIN_LEN: usize = 254;
/// The longest session secret or refresh token looked up (they are 43 characters).
pub const MAX_SECRET_LEN: usize = 128;

/// `invalid` naming the field, when it is longer than `max` characters.
fn cap(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    // Bytes bound characters from above: only a long value pays for the count.
    if value.len() > max && value.chars().count() > max {
        return Err(invalid(&format!(
            "{field} must be at most {max} characters"
        )));
    }
    Ok(())
}

fn valid_username(u: &str) -> bool {
    (3..=32).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Signs up: every field is checked first, then the address's sign-up budget, then whether the
/// name or email is taken, and only then is the password hashed (the expensive part).
#[tracing::instrument(skip_all)]
pub async fn register(ctx: &AuthContext, req: RegisterRequest) -> Result<SignedIn, ApiError> {
    let username = req.username.trim();
    let email = req.email.trim();
    refuse_nul(&[
        ("email", email),
        ("displayName", req.display_name.as_deref().unwrap_or("")),
    ])?;
    if !valid_username(username) {
        return Err(invalid(
            "username must be 3 to 32 characters of A-Z, a-z, 0-9, '_', '-' or '.'",
        ));
    }
    cap("email", email, MAX_LOGIN_LEN)?;
    if !email.contains('@') || email.contains(char::is_whitespace) {
        return Err(invalid("email is not a valid address"));
    }
    if !(password::MIN_LEN..=password::MAX_LEN).contains(&req.password.chars().count()) {
        return Err(invalid("password must be 8 to 256 characters"));
    }
    let display_name = req
        .display_name
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(username);
    if display_name.chars().count() > 64 {
        return Err(invalid("displayName must be at most 64 characters"));
    }
    if !ctx
        .register_limiter
        .try_register(req.client_addr.as_deref())
    {
        tracing::warn!("sign-up refused: too many from this address");
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many sign-ups from this address, try again later",
        ));
    }
    match users::taken(&ctx.pool, username, email)
        .await
        .map_err(Error::from)?
    {
        (true, _) => return Err(invalid("username is taken")),
        (_, true) => return Err(invalid("email is already registered")),
        (false, false) => {}
    }
    let hash = ctx.hasher.hash(req.password).await?;
    let id = crate::verify::new_account_id();
    match users::create(&ctx.pool, &id, username, email, display_name, &hash).await {
        Ok(()) => {}
        Err(users::CreateError::UsernameTaken) => return Err(invalid("username is taken")),
        Err(users::CreateError::EmailTaken) => return Err(invalid("email is already registered")),
        Err(users::CreateError::Db(e)) => return Err(Error::from(e).into()),
    }
    tracing::info!(user = %id, "account registered");
    ctx.start_session(PublicUser {
        id,
        username: username.to_owned(),
        display_name: display_name.to_owned(),
    })
    .await
}

#[tracing::instrument(skip_all)]
pub async fn login(ctx: &AuthContext, req: LoginRequest) -> Result<SignedIn, ApiError> {
    let login = req.username.trim();
    refuse_nul(&[("username", login)])?;
    if login.is_empty() {
        return Err(invalid("username is required"));
    }
    cap("username", login, MAX_LOGIN_LEN)?;
    cap("password", &req.password, password::MAX_LEN)?;
    let addr = req.client_addr.as_deref();
    if !ctx.limiter.allowed(login, addr) {
        tracing::warn!("login refused: too many failed attempts");
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many failed sign-in attempts, try again in a minute",
        ));
    }
    let user = users::by_login(&ctx.pool, login)
        .await
        .map_err(Error::from)?;
    let (hash, user) = match user {
        Some(u) => (u.password_hash.clone(), Some(u)),
        None => (ctx.dummy_hash.clone(), None),
    };
    let ok = ctx.hasher.verify(req.password, hash).await?;
    match user {
        Some(user) if ok => {
            tracing::info!(user = %user.id, "signed in");
            ctx.start_session(user.public()).await
        }
        _ => {
            ctx.limiter.failed(login, addr);
            Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "wrong username or password",
            ))
        }
    }
}

/// A fresh access token for the session a cookie names.
pub async fn token(ctx: &AuthContext, req: SessionRequest) -> Result<TokenReply, ApiError> {
    if req.session.len() > MAX_SECRET_LEN {
        return Err(signed_out());
    }
    let session = sessions::by_secret(&ctx.pool, &req.session)
        .await
        .map_err(Error::from)?
        .ok_or_else(signed_out)?;
    let (token, exp) = ctx.access_token(&session.user_id, &session.id.to_string());
    Ok(TokenReply { token, exp })
}

fn signed_out() -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, "not signed in")
}

#[tracing::instrument(skip_all)]
pub async fn refresh(ctx: &AuthContext, req: RefreshRequest) -> Result<SignedIn, ApiError> {
    cap("refreshToken", &req.refresh_token, MAX_SECRET_LEN)?;
    match sessions::refresh(&ctx.pool, &req.refresh_token)
        .await
        .map_err(Error::from)?
    {
        sessions::Refreshed::Rotated(session, next) => {
            let user = users::by_id(&ctx.pool, &session.user_id)
                .await
                .map_err(Error::from)?
                .ok_or_else(signed_out)?;
            let (token, exp) = ctx.access_token(&session.user_id, &session.id.to_string());
            Ok(SignedIn {
                token,
                exp,
                refresh_token: next,
                session: None,
                user: user.public(),
            })
        }
        sessions::Refreshed::Reused(session) => {
            tracing::warn!(user = %session.user_id, session = %session.id, "refresh token reused: session revoked");
            announce_revoked(ctx, &session).await;
            Err(signed_out())
        }
        sessions::Refreshed::Invalid => Err(signed_out()),
    }
}

pub async fn logout(ctx: &AuthContext, req: LogoutRequest) -> Result<serde_json::Value, ApiError> {
    cap(
        "session",
        req.session.as_deref().unwrap_or(""),
        MAX_SECRET_LEN,
    )?;
    cap(
        "refreshToken",
        req.refresh_token.as_deref().unwrap_or(""),
        MAX_SECRET_LEN,
    )?;
    let session = match (&req.session, &req.refresh_token) {
        (Some(secret), _) => sessions::by_secret(&ctx.pool, secret).await,
        (None, Some(token)) => sessions::by_refresh_token(&ctx.pool, token).await,
        (None, None) => return Err(invalid("logout needs a session or a refreshToken")),
    }
    .map_err(Error::from)?;
    if let Some(session) = session {
        sessions::revoke(&ctx.pool, session.id)
            .await
            .map_err(Error::from)?;
        tracing::info!(user = %session.user_id, "signed out");
        announce_revoked(ctx, &session).await;
    }
    Ok(serde_json::json!({}))
}

/// Tells every gateway to close the sockets of a session that ended.
async fn announce_revoked(ctx: &AuthContext, session: &sessions::Session) {
    let event = SessionRevoked {
        user_id: session.user_id.clone(),
        session_id: session.id.to_string(),
    };
    let payload = serde_json::to_vec(&event).expect("serialises");
    let nats = &ctx.nats;
    if let Err(e) = nats
        .publish(ctx.subjects.ctl_user(&session.user_id), payload.into())
        .await
    {
        tracing::warn!(error = %e, "cannot announce a revoked session");
    }
    let _ = nats.flush().await;
}

/// The most users one lookup by id may name.
pub const MAX_USER_IDS: usize = 100;

pub async fn search(ctx: &AuthContext, req: UsersRequest) -> Result<UsersReply, ApiError> {
    if !req.ids.is_empty() {
        if req.ids.len() > MAX_USER_IDS {
            return Err(invalid("ids may name at most 100 users"));
        }
        if req.ids.iter().any(|id| UserId::parse(id).is_err()) {
            return Err(invalid("ids must be user ids"));
        }
        let users = users::by_ids(&ctx.pool, &req.ids)
            .await
            .map_err(Error::from)?;
        return Ok(UsersReply { users });
    }
    let query = req.query.trim();
    refuse_nul(&[("query", query)])?;
    if query.is_empty() || query.chars().count() > 64 {
        return Err(invalid("query must be 1 to 64 characters"));
    }
    let limit = i64::from(req.limit.unwrap_or(20).clamp(1, 50));
    let users = users::search(&ctx.pool, query, limit)
        .await
        .map_err(Error::from)?;
    Ok(UsersReply { users })
}

pub fn jwks(ctx: &AuthContext) -> Jwks {
    ctx.ring().jwks()
}
