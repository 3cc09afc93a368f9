//! `auth.users`.

use sqlx::PgPool;

use crate::api::PublicUser;

#[derive(Debug, sqlx::FromRow)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
}

impl User {
    pub fn public(&self) -> PublicUser {
        PublicUser {
            id: self.id.clone(),
            username: self.username.clone(),
            display_name: self.display_name.clone(),
        }
    }
}

/// Why an account could not be created.
pub enum CreateError {
    UsernameTaken,
    EmailTaken,
    Db(sqlx::Error),
}

pub async fn create(
    pool: &PgPool,
    id: &str,
    username: &str,
    email: &str,
    display_name: &str,
    password_hash: &str,
) -> Result<(), CreateError> {
    let result = sqlx::query(
        "insert into auth.users (id, username, email, display_name, password_hash)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(username)
    .bind(email)
    .bind(display_name)
    .bind(password_hash)
    .execute(pool)
    .await;
    match result {
        Ok(_) => Ok(()),
        // Mapped by constraint name, not by message text.
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("users_username_lower") => {
            Err(CreateError::UsernameTaken)
        }
        Err(sqlx::Error::Database(db)) if db.constraint() == Some("users_email_lower") => {
            Err(CreateError::EmailTaken)
        }
        Err(e) => Err(CreateError::Db(e)),
    }
}

/// Whether a username, and an email, already belong to an account (case-insensitively):
/// checked before a password is hashed, so a taken name costs no argon2. The unique indexes
/// still decide a race ([`create`]).
pub async fn taken(pool: &PgPool, username: &str, email: &str) -> sqlx::Result<(bool, bool)> {
    sqlx::query_as(
        "select exists(select 1 from auth.users where lower(username) = lower($1)),
                exists(select 1 from auth.users where lower(email) = lower($2))",
    )
    .bind(username)
    .bind(email)
    .fetch_one(pool)
    .await
}

/// The account a login names, by username or email, case-insensitively.
pub async fn by_login(pool: &PgPool, login: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as(
        "select id, username, display_name, password_hash from auth.users
         where lower(username) = lower($1) or lower(email) = lower($1)
         limit 1",
    )
    .bind(login)
    .fetch_optional(pool)
    .await
}

pub async fn by_id(pool: &PgPool, id: &str) -> sqlx::Result<Option<User>> {
    sqlx::query_as("select id, username, display_name, password_hash from auth.users where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Users whose username or display name starts with `query`, case-insensitively.
pub async fn search(pool: &PgPool, query: &str, limit: i64) -> sqlx::Result<Vec<PublicUser>> {
    let pattern = format!(
        "{}%",
        query
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "select id, username, display_name from auth.users
         where lower(username) like $1 or lower(display_name) like $1
         order by username
         limit $2",
    )
    .bind(pattern)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, username, display_name)| PublicUser {
            id,
            username,
            display_name,
        })
        .collect())
}

/// The users among `ids` that exist, in no particular order.
pub async fn by_ids(pool: &PgPool, ids: &[String]) -> sqlx::Result<Vec<PublicUser>> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("select id, username, display_name from auth.users where id = any($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, username, display_name)| PublicUser {
            id,
            username,
            display_name,
        })
        .collect())
}
