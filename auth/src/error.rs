//! Errors of the auth role.

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
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }
}

/// A failure inside is `unavailable` to the caller, with the cause logged.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        tracing::error!(error = %e, "auth request failed");
        ApiError::unavailable()
    }
}
