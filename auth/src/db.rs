//! The auth role's pool and migrations: its own schema `auth`, with its own migrations table
//! (`auth._sqlx_migrations`), so it never mixes with persistence's.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::AuthConfig;
use crate::error::Result;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn connect(config: &AuthConfig) -> Result<PgPool> {
    let options: PgConnectOptions = config.database_url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await?)
}

/// Brings the `auth` schema up to date.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("create schema if not exists auth")
        .execute(&mut *conn)
        .await?;
    // The migrations table is created in the first schema of the search path.
    sqlx::query("set search_path to auth")
        .execute(&mut *conn)
        .await?;
    let result = MIGRATOR.run_direct(None, &mut *conn, false).await;
    sqlx::query("reset search_path").execute(&mut *conn).await?;
    result?;
    Ok(())
}
