//! Who is connecting: token verification for every connection and request the gateway serves.
//!
//! The gateway links this crate and calls [`verify::Verifier::verify`] before anything else
//! happens on a connection (DESIGN §5). Each kind of token is switched on by
//! `AUTH_TOKEN_KINDS`; today that is `hs256`, shared-secret JWTs signed with `AUTH_SECRET`, for
//! apps that mint their own tokens.
//!
//! # Layout
//! - [`verify`]: the verifier, its configuration and the reasons a token is refused.

pub mod verify;

pub use verify::{Verified, Verifier, VerifierConfig, VerifyError};
