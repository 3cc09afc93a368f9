//! What every Parley role shares: typed configuration from the environment, the NATS subject
//! and stream names, the validated domain values, the wire types of the client protocol and of
//! the NATS payloads between roles, telemetry set-up, and the small admin HTTP server.
//!
//! Nothing here talks to Postgres; nothing here knows about sockets.
//!
//! # Layout
//! - [`config`]: parsing environment variables (from a map, so tests never touch the process
//!   environment) into typed values, with errors that name the variable.
//! - [`subjects`]: every NATS subject, stream and consumer name, derived from one prefix.
//! - [`domain`]: newtypes that can only hold valid values (`UserId`, `ClientMsgId`, `Content`).
//! - [`wire`]: the JSON shapes of DESIGN §4 and §6, and the commands carried over JetStream.
//! - [`rpc`]: the request/reply envelope used over NATS and echoed to clients.
//! - [`nats`]: connecting, and creating the JetStream streams idempotently.
//! - [`nats_auth`]: each role's broker credentials, and the permissions the broker gives it
//!   (rendered as the nats-server authorization block).
//! - [`nats_version`]: the oldest NATS server Parley runs on (2.11), checked at connect.
//! - [`service`]: running a NATS request/reply service with bounded concurrency.
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics` on each role's admin port.
//! - [`http_server`]: the HTTP server under every port: header-read and idle timeouts, a cap on
//!   connections per address, graceful shutdown.
//! - [`telemetry`]: logging set-up.
//! - [`shutdown`]: the one shutdown signal (Ctrl-C or SIGTERM).

pub mod admin;
pub mod config;
pub mod domain;
pub mod http_server;
pub mod metrics;
pub mod nats;
pub mod nats_auth;
pub mod nats_version;
pub mod rpc;
pub mod service;
pub mod shutdown;
pub mod subjects;
pub mod telemetry;
pub mod trace;
pub mod wire;
