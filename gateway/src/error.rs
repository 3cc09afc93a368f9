//! Errors that stop the gateway from starting. Per-request failures are
//! [`parley_common::wire::ApiError`]s, told to the client with a stable code.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
}
