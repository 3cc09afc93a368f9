//! The ways clients reach a session. Each only translates frames; the chat logic is in
//! [`crate::session`].

pub mod socketio;
pub mod ws;

use std::time::Duration;

use tokio::time::Instant;

/// How long before `exp` a client is told `token:expiring`.
const EXPIRY_WARNING: Duration = Duration::from_secs(60);
/// Reconnects after a drain are spread over this window.
const RECONNECT_SPREAD_MS: u64 = 5_000;

/// When a connection whose token expires at `exp` (Unix seconds) is closed, and when it is
/// warned.
pub(crate) fn expiry_deadlines(exp: i64) -> (Instant, Instant) {
    let now_unix = chrono::Utc::now().timestamp_millis();
    let left_ms = (exp.saturating_mul(1000) - now_unix).max(0) as u64;
    let at = Instant::now() + Duration::from_millis(left_ms);
    (at, at.checked_sub(EXPIRY_WARNING).unwrap_or(at))
}

/// A random delay for `server:draining`, so clients do not all come back in the same second.
pub(crate) fn reconnect_jitter_ms() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64 % RECONNECT_SPREAD_MS
}
