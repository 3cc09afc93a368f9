//! The ways clients reach a session. Each only translates frames ([`crate::session::connection::Codec`]);
//! a connection's life and the chat logic are in [`crate::session`].

pub mod socketio;
pub mod ws;
