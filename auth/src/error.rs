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
    /// Every password-hashing slot stayed taken for `AUTH_HASH_WAIT_MS`.
    #[error("password hashing is at capacity (AUTH_HASH_CONCURRENCY)")]
    Busy,
}

impl Error {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }
}

/// A failure inside is `unavailable` to the caller, with the cause logged. Busy is load, not
/// a fault: a warning, and a message that says to retry.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        if let Error::Busy = e {
            tracing::warn!(error = %e, "auth request refused: busy");
            return ApiError::new(
                parley_common::wire::ErrorCode::Unavailable,
                "too many sign-ins at once, try again in a moment",
            );
        }
        tracing::error!(error = %e, "auth request failed");
        ApiError::unavailable()
    }
}
