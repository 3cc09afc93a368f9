//! Who is connecting: token verification for every connection and request the gateway serves.
//!
//! The gateway links this crate and calls [`verify::Verifier::verify`] before anything else
//! happens on a connection (DESIGN §5). Each kind of token is switched on by
//! `AUTH_TOKEN_KINDS`: `hs256`, shared-secret JWTs signed with `AUTH_SECRET`, for apps that mint
//! their own tokens; `authjs`, the encrypted session token of an Auth.js v5 (Next.js) app.
//!
//! # Layout
//! - [`verify`]: the verifier, its configuration and the reasons a token is refused.
//! - [`authjs`]: decrypting Auth.js session tokens and finding them in cookies.

pub mod authjs;
pub mod verify;

pub use verify::{Verified, Verifier, VerifierConfig, VerifyError};
