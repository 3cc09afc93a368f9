//! The Postgres pool and the schema migrations.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::PersistenceConfig;
use crate::error::Result;

/// The migrations in `persistence/migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects a pool of `size` connections. Fails at once when the database does not answer, so
/// a misconfigured role stops at start; later outages are ridden out by the pool.
pub async fn connect(config: &PersistenceConfig, size: u32) -> Result<PgPool> {
    let options: PgConnectOptions = config.database_url.expose().parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Brings the schema up to date; concurrent callers wait on the migrator's advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
