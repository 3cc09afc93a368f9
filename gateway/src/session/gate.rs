//! What a connection lets through: every client frame, whatever the transport, takes a token of
//! the user's rate (the same budget as their REST calls, `UserRates`); a frame without one is answered `rate_limited`, and a connection that keeps
//! sending into a refusal is a flood and is closed. Pure: the clock is an argument.

use std::time::Duration;

use tokio::time::Instant;

use parley_common::domain::UserId;

use crate::state::AppState;

/// What happens to one client frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Handle it.
    Yes,
    /// Answer it `rate_limited`.
    Refused,
    /// Close the connection: it went on sending into the limit.
    Flood,
}

/// The rate limit and flood count of one connection.
pub struct Gate {
    state: AppState,
    user: UserId,
    flood: Flood,
}

impl Gate {
    pub fn new(state: AppState, user: UserId) -> Self {
        let strikes = state.limits.flood_strikes;
        Self {
            state,
            user,
            flood: Flood::new(strikes, Instant::now()),
        }
    }

    /// Takes one frame's worth of the user's rate.
    pub fn admit(&mut self) -> Admit {
        match self.state.rates.allow(&self.user) {
            Ok(()) => Admit::Yes,
            Err(_retry_after) => self.flood.refused(Instant::now()),
        }
    }
}

/// Frames refused by the rate limit within a window; more than `max` and the client floods.
#[derive(Debug)]
pub struct Flood {
    window_start: Instant,
    refusals: u32,
    max: u32,
}

impl Flood {
    pub const WINDOW: Duration = Duration::from_secs(10);

    pub fn new(max: u32, now: Instant) -> Self {
        Self {
            window_start: now,
            refusals: 0,
            max,
        }
    }

    /// Counts one refusal at `now`.
    pub fn refused(&mut self, now: Instant) -> Admit {
        if now.saturating_duration_since(self.window_start) > Self::WINDOW {
            self.window_start = now;
            self.refusals = 0;
        }
        self.refusals += 1;
        if self.refusals > self.max {
            Admit::Flood
        } else {
            Admit::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_the_strikes_within_the_window_are_a_flood() {
        let start = Instant::now();
        let mut flood = Flood::new(3, start);
        for _ in 0..3 {
            assert_eq!(flood.refused(start), Admit::Refused);
        }
        assert_eq!(flood.refused(start), Admit::Flood);
        assert_eq!(flood.refused(start), Admit::Flood);
    }

    #[test]
    fn a_new_window_starts_the_count_again() {
        let start = Instant::now();
        let mut flood = Flood::new(2, start);
        assert_eq!(flood.refused(start), Admit::Refused);
        assert_eq!(flood.refused(start), Admit::Refused);
        let later = start + Flood::WINDOW + Duration::from_millis(1);
        assert_eq!(flood.refused(later), Admit::Refused);
        assert_eq!(flood.refused(later), Admit::Refused);
        assert_eq!(flood.refused(later), Admit::Flood);
    }
}
