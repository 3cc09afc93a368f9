//! The rate limit every user's frames pass through.

use std::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            last: Instant::now(),
            rate,
            burst,
        }
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_is_allowed_then_the_rate_refills() {
        let start = Instant::now();
        let mut b = TokenBucket::new(2.0, 3.0);
        b.last = start;
        assert!((0..3).all(|_| b.allow_at(start)));
        assert!(!b.allow_at(start));
        assert!(b.allow_at(start + Duration::from_millis(500)));
        assert!(!b.allow_at(start + Duration::from_millis(500)));
    }

    #[test]
    fn saved_tokens_never_exceed_the_burst() {
        let start = Instant::now();
        let mut b = TokenBucket::new(100.0, 2.0);
        b.last = start;
        let later = start + Duration::from_secs(60);
        assert!(b.allow_at(later) && b.allow_at(later));
        assert!(!b.allow_at(later));
    }
}
