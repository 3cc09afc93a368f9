//! The edge of Parley: the only public surface. It authenticates every connection, turns client
//! frames into typed commands, checks membership (cached), hands sends to JetStream and answers
//! once the broker has them, asks persistence for queries, and writes delivery events to the
//! sockets of the users connected to it (DESIGN §2, §6). It never touches Postgres.
//!
//! # Layout
//! - [`config`]: settings from the environment.
//! - [`error`]: the start-up error type.
//! - [`auth`]: finding and verifying the token of an HTTP request or upgrade; which origins may
//!   use the session cookie.
//! - [`client_addr`]: the client address per-address limits count (`PARLEY_TRUSTED_PROXIES`).
//! - [`jwks`]: the auth role's public keys, fetched over NATS and refetched on an unknown `kid`.
//! - [`http`]: the HTTP API (accounts, user search, JWKS).
//! - [`rest`]: the conversation and message routes, the socket's commands over HTTP.
//! - [`openapi`]: the OpenAPI 3.1 document of the HTTP API, from the routes' attributes.
//! - [`protocol`]: client frames and the typed commands they carry, validated.
//! - [`session`]: one authenticated user's commands, whatever the transport.
//! - [`chat`]: the persistence service's client and the membership cache (dropped on a
//!   membership change announced on `{p}.ctl.conversation.*`).
//! - [`typing`]: typing indicators, throttled and cleared by themselves.
//! - [`presence`]: online/offline/last seen across gateways, in a NATS key-value bucket.
//! - [`revocation`]: closing the sockets of a session that was signed out, and remembering it so
//!   its tokens are refused (loaded from the auth role at start).
//! - [`fanout`]: one NATS subscription per connected user, shared by that user's sockets.
//! - [`metrics`]: the gateway's Prometheus metrics.
//! - [`limits`]: the token bucket behind the per-user rate limit, and [`limits::UserRates`],
//!   every user's bucket on this gateway (the HTTP API spends it; bounded and expiring).
//! - [`transport::ws`]: the plain WebSocket transport at `/ws`;
//!   [`transport::socketio`]: Socket.IO v4 at `/socket.io/`.
//! - [`web`]: the web chat app's files at `/`.
//! - [`startup`]: [`startup::Application`], which binds, serves and drains.

pub mod addresses;
pub mod auth;
pub mod chat;
pub mod client_addr;
pub mod config;
pub mod error;
pub mod fanout;
pub mod http;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod presence;
pub mod protocol;
pub mod rest;
pub mod revocation;
pub mod session;
pub mod startup;
pub mod state;
pub mod transport;
pub mod typing;
pub mod web;

pub use config::GatewayConfig;
pub use startup::Application;
