//! `auth.sessions` and `auth.refresh_tokens`.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{hash_secret, new_secret};

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: Uuid,
    pub user_id: String,
}

/// Starts a session; returns it with its cookie secret and first refresh token.
pub async fn create(
    pool: &PgPool,
    user_id: &str,
    ttl: Duration,
) -> sqlx::Result<(Session, String, String)> {
    let id = Uuid::now_v7();
    let secret = new_secret();
    let refresh = new_secret();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into auth.sessions (id, user_id, secret_hash, expires_at)
         values ($1, $2, $3, now() + make_interval(secs => $4))",
    )
    .bind(id)
    .bind(user_id)
    .bind(hash_secret(&secret))
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    sqlx::query("insert into auth.refresh_tokens (token_hash, session_id) values ($1, $2)")
        .bind(hash_secret(&refresh))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((
        Session {
            id,
            user_id: user_id.to_owned(),
        },
        secret,
        refresh,
    ))
}

/// The live session a cookie secret opens.
pub async fn by_secret(pool: &PgPool, secret: &str) -> sqlx::Result<Option<Session>> {
    let row: Option<(Uuid, String)> = sqlx::query_as(
        "select id, user_id from auth.sessions
         where secret_hash = $1 and revoked_at is null and expires_at > now()",
    )
    .bind(hash_secret(secret))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, user_id)| Session { id, user_id }))
}

/// What using a refresh token did.
pub enum Refreshed {
    /// A fresh token, the old one now spent.
    Rotated(Session, String),
    /// The token was already spent: it was stolen or replayed. The session is now revoked.
    Reused(Session),
    /// Unknown, or its session is over.
    Invalid,
}

/// Spends a refresh token and issues the next one, in one transaction.
pub async fn refresh(pool: &PgPool, token: &str) -> sqlx::Result<Refreshed> {
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, String, bool, bool)> = sqlx::query_as(
        "select s.id, s.user_id, r.used_at is not null,
                s.revoked_at is null and s.expires_at > now()
         from auth.refresh_tokens r join auth.sessions s on s.id = r.session_id
         where r.token_hash = $1
         for update of r, s",
    )
    .bind(hash_secret(token))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((session_id, user_id, used, live)) = row else {
        return Ok(Refreshed::Invalid);
    };
    let session = Session {
        id: session_id,
        user_id,
    };
    if used {
        sqlx::query(
            "update auth.sessions set revoked_at = coalesce(revoked_at, now()) where id = $1",
        )
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Refreshed::Reused(session));
    }
    if !live {
        return Ok(Refreshed::Invalid);
    }
    sqlx::query("update auth.refresh_tokens set used_at = now() where token_hash = $1")
        .bind(hash_secret(token))
        .execute(&mut *tx)
        .await?;
    let next = new_secret();
    sqlx::query("insert into auth.refresh_tokens (token_hash, session_id) values ($1, $2)")
        .bind(hash_secret(&next))
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Refreshed::Rotated(session, next))
}

/// The session a refresh token belongs to (spent or not), if any.
pub async fn by_refresh_token(pool: &PgPool, token: &str) -> sqlx::Result<Option<Session>> {
    let row: Option<(Uuid, String)> = sqlx::query_as(
        "select s.id, s.user_id from auth.refresh_tokens r
         join auth.sessions s on s.id = r.session_id where r.token_hash = $1",
    )
    .bind(hash_secret(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, user_id)| Session { id, user_id }))
}

pub async fn revoke(pool: &PgPool, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("update auth.sessions set revoked_at = coalesce(revoked_at, now()) where id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Sessions revoked within the last `within`, in id order after `after`, at most `limit`.
pub async fn revoked_since(
    pool: &PgPool,
    within: Duration,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<(Uuid, i64)>> {
    sqlx::query_as(
        "select id, extract(epoch from revoked_at)::bigint from auth.sessions
         where revoked_at > now() - make_interval(secs => $1)
           and ($2::uuid is null or id > $2)
         order by id limit $3",
    )
    .bind(within.as_secs_f64())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
