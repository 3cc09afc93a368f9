//! Errors of the persistence role, and the one question that matters about a database error:
//! will trying again help?

use parley_common::wire::ApiError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("NATS: {0}")]
    Nats(String),
}

impl Error {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }

    /// True when the same work may succeed later unchanged: the database or the network is
    /// down, busy, or aborted the transaction (deadlock, serialisation). False when the work
    /// itself is at fault (a constraint, bad data), so repeating it would fail for ever.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(e) => is_transient(e),
            Error::Migrate(_) => false,
            Error::Nats(_) => true,
        }
    }
}

/// See [`Error::is_transient`]. SQLSTATE classes: 08 connection, 40 transaction rollback,
/// 53 insufficient resources, 57 operator intervention (e.g. shutdown), 58 system error.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|p| c.starts_with(p))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// What a client is told when a query fails inside: `unavailable`, with the cause logged.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        tracing::error!(error = %e, "query failed");
        ApiError::unavailable()
    }
}
