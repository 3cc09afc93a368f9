//! The ways clients reach a session. Each only translates frames; the chat logic is in
//! [`crate::session`].

pub mod socketio;
pub mod ws;
