//! Who is connecting, and Parley's own accounts.
//!
//! The gateway links this crate and calls [`verify::Verifier::verify`] before anything else
//! happens on a connection (DESIGN §5). Each kind of token is switched on by
//! `AUTH_TOKEN_KINDS`: `parley`, EdDSA access tokens this crate's auth role issues; `hs256`,
//! shared-secret JWTs signed with `AUTH_SECRET`, for apps that mint their own tokens; `authjs`,
//! the encrypted session token of an Auth.js v5 (Next.js) app.
//!
//! The auth role (`parley auth`) keeps users, signing keys, sessions and refresh tokens in the
//! Postgres schema `auth`, and answers over NATS only (`{p}.rpc.auth.*`).
//!
//! # Layout
//! - [`verify`]: the verifier, its configuration and the reasons a token is refused.
//! - [`authjs`]: decrypting Auth.js session tokens and finding them in cookies.
//! - [`api`]: the auth service's requests and replies, shared with the gateway.
//! - [`config`], [`error`], [`db`] (schema `auth`, `auth/migrations/`).
//! - [`password`]: argon2id, off the async runtime, a bounded number at a time.
//! - [`signing`]: Ed25519 access tokens and the JWKS.
//! - [`store`]: all SQL of the role.
//! - [`limiter`]: failed sign-ins and sign-ups counted per account and address, bounded.
//! - [`accounts`]: register, login, token, refresh, logout, search.
//! - [`service`]: the NATS endpoints; [`startup`]: the role.

pub mod accounts;
pub mod api;
pub mod authjs;
pub mod config;
pub mod db;
pub mod error;
pub mod limiter;
pub mod password;
pub mod service;
pub mod signing;
pub mod startup;
pub mod store;
pub mod verify;

pub use config::AuthConfig;
pub use startup::Application;
pub use verify::{Verified, Verifier, VerifierConfig, VerifyError};
