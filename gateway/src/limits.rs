//! The rate limit every user's requests pass through: a [`TokenBucket`] per user, kept in
//! [`UserRates`] whether the user holds a socket or calls the HTTP API.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use parley_common::domain::UserId;

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
        Self::new_at(rate, burst, Instant::now())
    }

    /// A full bucket as of `now`.
    pub fn new_at(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    /// Takes one token if there is one (tests read the answer as a yes or no).
    #[cfg(test)]
    fn allow_at(&mut self, now: Instant) -> bool {
        self.take_at(now).is_ok()
    }

    /// Takes one token if there is one; otherwise how long until there is.
    pub fn take_at(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// How long an untouched bucket takes to fill from empty: after that it is the same as a new
    /// one, and can be forgotten.
    fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.rate)
    }

    /// Whether the bucket has refilled completely by `now`.
    fn idle_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= self.refill_time()
    }
}

/// Admission of new connections on one gateway (`PARLEY_CONNECT_RATE` a second, a second's
/// worth at once): past it a connect is answered 503 with `Retry-After`, before its token is
/// verified or anything is subscribed, so a herd of thousands of clients coming back at once is
/// spread out instead of making everyone, the connected included, wait.
///
/// Each refused connect is told a different time to come back: the next free slot at the
/// admitted rate after those already promised, so the retries arrive spread out as well rather
/// than together a second later. Promises reach at most [`ConnectGate::HORIZON`] ahead.
#[derive(Debug)]
pub struct ConnectGate {
    /// One connect's share of a second.
    interval: Duration,
    /// How far ahead of now admissions may run: the burst.
    burst: Duration,
    /// When the admissions so far would have finished at the rate (GCRA's theoretical time).
    admitted_until: Instant,
    /// The last slot promised to a refused connect.
    promised_until: Instant,
}

impl ConnectGate {
    /// The furthest a refused connect is told to wait.
    pub const HORIZON: Duration = Duration::from_secs(30);

    pub fn new_at(rate_per_second: u32, now: Instant) -> Self {
        let rate = rate_per_second.max(1);
        Self {
            interval: Duration::from_secs(1) / rate,
            burst: Duration::from_secs(1),
            admitted_until: now,
            promised_until: now,
        }
    }

    /// Admits a connect at `now`, or says how long until it should come back.
    pub fn admit_at(&mut self, now: Instant) -> Result<(), Duration> {
        let from = self.admitted_until.max(now);
        if from < now + self.burst {
            self.admitted_until = from + self.interval;
            return Ok(());
        }
        // The next slot after the admitted ones and the promises already made.
        let after = self.promised_until.max(from - self.burst).max(now) + self.interval;
        let wait = (after - now).min(Self::HORIZON);
        self.promised_until = now + wait;
        Err(wait)
    }
}

/// [`ConnectGate`] shared by the gateway's handlers: one short lock, no await.
pub struct Connects(Mutex<ConnectGate>);

impl Connects {
    pub fn new(rate_per_second: u32) -> Self {
        Self(Mutex::new(ConnectGate::new_at(
            rate_per_second,
            Instant::now(),
        )))
    }

    pub fn admit(&self) -> Result<(), Duration> {
        self.0
            .lock()
            .expect("connect gate lock")
            .admit_at(Instant::now())
    }
}

/// The most users whose buckets one gateway keeps by default (about 200 bytes each).
pub const USER_RATES_CAPACITY: usize = 100_000;

/// Every user's token bucket on this gateway, for sockets and HTTP alike, so one budget holds
/// whichever way a user sends (`PARLEY_SEND_RATE`, `PARLEY_SEND_BURST`).
///
/// Bounded and expiring: a bucket left alone for a full refill (`burst / rate` seconds) is the
/// same as a new one, so it is forgotten when room is needed. If the map is full of buckets in
/// use, the least recently used eighth is dropped; those users get a fresh burst, which is the
/// most this bound ever forgives. Cheap and synchronous: one short lock, no await.
pub struct UserRates {
    rate: f64,
    burst: f64,
    capacity: usize,
    buckets: Mutex<HashMap<UserId, TokenBucket>>,
}

impl UserRates {
    pub fn new(rate: f64, burst: f64, capacity: usize) -> Self {
        Self {
            rate,
            burst,
            capacity: capacity.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// With the configured send rate and burst (`PARLEY_SEND_RATE`, `PARLEY_SEND_BURST`).
    pub fn from_limits(limits: &crate::config::Limits) -> Self {
        Self::new(limits.send_rate, limits.send_burst, USER_RATES_CAPACITY)
    }

    /// Takes one of `user`'s tokens, or says how long until one is there (for `Retry-After`).
    pub fn allow(&self, user: &UserId) -> Result<(), Duration> {
        self.allow_at(user, Instant::now())
    }

    /// [`UserRates::allow`] at `now`.
    pub fn allow_at(&self, user: &UserId, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("rates lock");
        if let Some(bucket) = buckets.get_mut(user) {
            return bucket.take_at(now);
        }
        if buckets.len() >= self.capacity {
            self.make_room(&mut buckets, now);
        }
        let mut bucket = TokenBucket::new_at(self.rate, self.burst, now);
        let taken = bucket.take_at(now);
        buckets.insert(user.clone(), bucket);
        taken
    }

    /// Users with a bucket now.
    pub fn len(&self) -> usize {
        self.buckets.lock().expect("rates lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets idle buckets; if that frees too little, the least recently used, down to seven
    /// eighths of the capacity, so the sweep runs at most once per `capacity / 8` new users.
    fn make_room(&self, buckets: &mut HashMap<UserId, TokenBucket>, now: Instant) {
        buckets.retain(|_, b| !b.idle_at(now));
        let target = self.capacity - self.capacity / 8 - 1;
        if buckets.len() > target {
            let mut lasts: Vec<Instant> = buckets.values().map(|b| b.last).collect();
            let drop = buckets.len() - target;
            let (_, cut, _) = lasts.select_nth_unstable(drop - 1);
            let cut = *cut;
            let mut dropped = 0;
            buckets.retain(|_, b| {
                if dropped < drop && b.last <= cut {
                    dropped += 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connects_within_the_rate_and_its_burst_are_admitted() {
        let t0 = Instant::now();
        let mut gate = ConnectGate::new_at(100, t0);
        // A second's worth at once.
        for _ in 0..100 {
            assert_eq!(gate.admit_at(t0), Ok(()));
        }
        assert!(gate.admit_at(t0).is_err(), "past the burst");
        // A second later, another second's worth.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..100 {
            assert_eq!(gate.admit_at(t1), Ok(()));
        }
    }

    #[test]
    fn a_herd_is_told_to_come_back_spread_out_at_the_rate() {
        let t0 = Instant::now();
        let mut gate = ConnectGate::new_at(100, t0);
        while gate.admit_at(t0).is_ok() {}
        let waits: Vec<Duration> = (0..300).map(|_| gate.admit_at(t0).unwrap_err()).collect();
        assert!(
            waits.windows(2).all(|w| w[0] < w[1]),
            "each later than the one before"
        );
        // 300 refused at 100 a second: the last comes back about 3 s on (plus the first refusal's
        // slot), not all at once a second later.
        let last = *waits.last().unwrap();
        assert!(
            last >= Duration::from_millis(3_000) && last <= Duration::from_millis(3_100),
            "{last:?}"
        );
        // When they come back at their times, each is admitted.
        let mut back: Vec<Instant> = waits.iter().map(|w| t0 + *w).collect();
        back.sort();
        for at in back {
            assert_eq!(gate.admit_at(at), Ok(()), "at {:?}", at - t0);
        }
    }

    #[test]
    fn a_promise_is_never_further_than_the_horizon() {
        let t0 = Instant::now();
        let mut gate = ConnectGate::new_at(1, t0);
        let _ = gate.admit_at(t0);
        for _ in 0..100 {
            let wait = gate.admit_at(t0).unwrap_err();
            assert!(wait <= ConnectGate::HORIZON);
        }
    }

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

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn a_refused_take_says_when_the_next_token_comes() {
        let start = Instant::now();
        let mut b = TokenBucket::new_at(2.0, 1.0, start);
        assert_eq!(b.take_at(start), Ok(()));
        assert_eq!(b.take_at(start), Err(Duration::from_millis(500)));
        let wait = b.take_at(start + Duration::from_millis(200)).unwrap_err();
        assert!((wait.as_secs_f64() - 0.3).abs() < 1e-9, "{wait:?}");
        assert_eq!(b.take_at(start + Duration::from_millis(500)), Ok(()));
    }

    #[test]
    fn each_user_has_a_budget_of_their_own() {
        let start = Instant::now();
        let rates = UserRates::new(1.0, 2.0, 100);
        let (alice, bob) = (user("alice"), user("bob"));
        assert_eq!(rates.allow_at(&alice, start), Ok(()));
        assert_eq!(rates.allow_at(&alice, start), Ok(()));
        assert_eq!(rates.allow_at(&alice, start), Err(Duration::from_secs(1)));
        assert_eq!(rates.allow_at(&bob, start), Ok(()));
        assert_eq!(
            rates.allow_at(&alice, start + Duration::from_secs(1)),
            Ok(())
        );
    }

    #[test]
    fn idle_buckets_are_forgotten_when_room_is_needed() {
        let start = Instant::now();
        // Refills from empty in 2 s.
        let rates = UserRates::new(1.0, 2.0, 3);
        for name in ["a", "b", "c"] {
            rates.allow_at(&user(name), start).unwrap();
        }
        assert_eq!(rates.len(), 3);
        // "a" keeps sending; "b" and "c" go quiet for a full refill.
        let later = start + Duration::from_secs(2);
        rates.allow_at(&user("a"), later).unwrap();
        rates.allow_at(&user("d"), later).unwrap();
        assert_eq!(rates.len(), 2, "b and c forgotten, a and d kept");
        // a's bucket was kept, not renewed: it has spent a token since refilling.
        rates.allow_at(&user("a"), later).unwrap();
        assert!(rates.allow_at(&user("a"), later).is_err());
    }

    #[test]
    fn a_full_map_of_busy_users_drops_the_least_recently_used() {
        let start = Instant::now();
        let rates = UserRates::new(1.0, 1_000.0, 16);
        for i in 0..16 {
            rates
                .allow_at(&user(&format!("u{i}")), start + Duration::from_millis(i))
                .unwrap();
        }
        rates
            .allow_at(&user("new"), start + Duration::from_millis(20))
            .unwrap();
        // Down to 16 - 2 - 1 = 13 before the newcomer: the oldest three went.
        assert_eq!(rates.len(), 14);
        let buckets = rates.buckets.lock().unwrap();
        for i in 0..3 {
            assert!(!buckets.contains_key(&user(&format!("u{i}"))), "u{i} kept");
        }
        assert!(buckets.contains_key(&user("u15")));
        assert!(buckets.contains_key(&user("new")));
    }

    #[test]
    fn the_map_never_grows_past_its_capacity() {
        let start = Instant::now();
        let rates = UserRates::new(1.0, 1_000.0, 64);
        for i in 0..10_000u64 {
            rates
                .allow_at(&user(&format!("u{i}")), start + Duration::from_micros(i))
                .unwrap();
            assert!(rates.len() <= 64);
        }
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
