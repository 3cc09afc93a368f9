//! Attempt counting for sign-in and sign-up, in sliding windows. In memory, so per replica of
//! the auth role (with N replicas an attacker gets at most N times the budget).
//!
//! Every map is bounded twice: an entry is forgotten once its window has passed (a sweep runs
//! at most once a window, on the next use), and the number of keys is capped. At the cap the
//! keys whose last attempt is oldest are evicted first, a tenth at a time: a flood of fresh
//! keys can only make the limiter forget the stalest counts, never refuse everyone, and never
//! wipe the whole map (which the old `clear()` at 100k keys did, resetting every lockout).
//!
//! Client addresses are counted by network: an IPv4 address alone, an IPv6 address by its
//! /64, which one subscriber usually holds whole (counting single IPv6 addresses would give
//! an attacker 2^64 budgets).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys one window tracks at most.
pub const MAX_KEYS: usize = 100_000;

/// Counts attempts per key in a sliding window, up to `limit`.
pub struct SlidingWindow {
    limit: u32,
    window: Duration,
    max_keys: usize,
    state: Mutex<State>,
}

struct State {
    /// The attempts in the window, oldest first; at most `limit` are kept per key.
    hits: HashMap<String, VecDeque<Instant>>,
    last_sweep: Instant,
}

impl SlidingWindow {
    pub fn new(limit: u32, window: Duration, max_keys: usize) -> Self {
        Self {
            limit,
            window,
            max_keys: max_keys.max(10),
            state: Mutex::new(State {
                hits: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Attempts of `key` still in the window at `now`.
    pub fn count_at(&self, key: &str, now: Instant) -> u32 {
        let mut state = self.state.lock().expect("limiter lock");
        let window = self.window;
        state.hits.get_mut(key).map_or(0, |q| {
            expire(q, now, window);
            q.len() as u32
        })
    }

    /// Whether `key` is under its limit at `now`.
    pub fn allowed_at(&self, key: &str, now: Instant) -> bool {
        self.count_at(key, now) < self.limit
    }

    /// Counts an attempt of `key` at `now`.
    pub fn record_at(&self, key: &str, now: Instant) {
        let mut state = self.state.lock().expect("limiter lock");
        self.maintain(&mut state, now);
        let q = state.hits.entry(key.to_owned()).or_default();
        q.push_back(now);
        while q.len() > self.limit.max(1) as usize {
            q.pop_front();
        }
    }

    /// Counts an attempt of `key` at `now` if it is under its limit; whether it was.
    pub fn try_take_at(&self, key: &str, now: Instant) -> bool {
        let mut state = self.state.lock().expect("limiter lock");
        let window = self.window;
        if let Some(q) = state.hits.get_mut(key) {
            expire(q, now, window);
            if q.len() as u32 >= self.limit {
                return false;
            }
        }
        self.maintain(&mut state, now);
        state.hits.entry(key.to_owned()).or_default().push_back(now);
        true
    }

    /// Keys held now (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.state.lock().expect("limiter lock").hits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets what has expired (at most once a window), then, at the cap, the stalest keys.
    fn maintain(&self, state: &mut State, now: Instant) {
        let window = self.window;
        if now.saturating_duration_since(state.last_sweep) >= window
            || state.hits.len() >= self.max_keys
        {
            state.hits.retain(|_, q| {
                expire(q, now, window);
                !q.is_empty()
            });
            state.last_sweep = now;
        }
        if state.hits.len() >= self.max_keys {
            let mut by_age: Vec<(Instant, String)> = state
                .hits
                .iter()
                .map(|(k, q)| (*q.back().expect("non-empty after sweep"), k.clone()))
                .collect();
            let evict = (self.max_keys / 10).max(1);
            by_age.select_nth_unstable_by_key(evict - 1, |(t, _)| *t);
            for (_, key) in by_age.into_iter().take(evict) {
                state.hits.remove(&key);
            }
        }
    }
}

fn expire(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        q.pop_front();
    }
}

/// The key a client address is counted under: an IPv4 address, or an IPv6 /64. Anything
/// that is not an address (a caller that sent garbage over NATS) is counted as itself,
/// truncated.
pub fn address_key(addr: &str) -> String {
    match addr.trim().parse::<IpAddr>().map(|a| a.to_canonical()) {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Err(_) => addr.chars().take(64).collect(),
    }
}

/// Wrong passwords, counted three ways in a minute: per account from one address (tight: a
/// guesser is stopped, and an attacker elsewhere cannot lock the owner out), per address over
/// all accounts (one address trying many accounts), and per account over all addresses (a
/// ceiling on distributed guessing, loose so that locking an owner out takes many addresses).
pub struct LoginLimiter {
    per_account_address: SlidingWindow,
    per_address: SlidingWindow,
    per_account: SlidingWindow,
}

/// How many wrong passwords a [`LoginLimiter`] allows in its minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Per account from one address (`AUTH_LOGIN_FAILURES_PER_ACCOUNT`, default 10).
    pub per_account_address: u32,
    /// Per address over all accounts (`AUTH_LOGIN_FAILURES_PER_ADDRESS`, default 100).
    pub per_address: u32,
    /// Per account over all addresses (`AUTH_LOGIN_FAILURES_PER_ACCOUNT_TOTAL`, default 100).
    pub per_account: u32,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_account_address: 10,
            per_address: 100,
            per_account: 100,
        }
    }
}

const LOGIN_WINDOW: Duration = Duration::from_secs(60);

impl LoginLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self::with_max_keys(limits, MAX_KEYS)
    }

    pub fn with_max_keys(limits: LoginLimits, max_keys: usize) -> Self {
        let w = |limit| SlidingWindow::new(limit, LOGIN_WINDOW, max_keys);
        Self {
            per_account_address: w(limits.per_account_address),
            per_address: w(limits.per_address),
            per_account: w(limits.per_account),
        }
    }

    fn keys(account: &str, address: Option<&str>) -> (String, String, Option<String>) {
        let account = account.to_lowercase();
        let address = address.map(address_key);
        let pair = format!("{}|{account}", address.as_deref().unwrap_or("-"));
        (account, pair, address)
    }

    /// Whether another attempt may be made now.
    pub fn allowed(&self, account: &str, address: Option<&str>) -> bool {
        self.allowed_at(account, address, Instant::now())
    }

    pub fn allowed_at(&self, account: &str, address: Option<&str>, now: Instant) -> bool {
        let (account, pair, address) = Self::keys(account, address);
        self.per_account_address.allowed_at(&pair, now)
            && self.per_account.allowed_at(&account, now)
            && address.is_none_or(|a| self.per_address.allowed_at(&a, now))
    }

    /// Counts a failed attempt.
    pub fn failed(&self, account: &str, address: Option<&str>) {
        self.failed_at(account, address, Instant::now());
    }

    pub fn failed_at(&self, account: &str, address: Option<&str>, now: Instant) {
        let (account, pair, address) = Self::keys(account, address);
        self.per_account_address.record_at(&pair, now);
        self.per_account.record_at(&account, now);
        if let Some(a) = address {
            self.per_address.record_at(&a, now);
        }
    }
}

/// Sign-ups per client address in an hour (`AUTH_REGISTER_PER_ADDRESS_PER_HOUR`).
pub struct RegisterLimiter {
    per_address: SlidingWindow,
}

impl RegisterLimiter {
    pub fn new(per_hour: u32) -> Self {
        Self {
            per_address: SlidingWindow::new(per_hour, Duration::from_secs(3600), MAX_KEYS),
        }
    }

    /// Counts an attempt from `address`, or refuses it: false when the address has used its
    /// hour's budget. A request without an address (not from the gateway) is not limited here.
    pub fn try_register(&self, address: Option<&str>) -> bool {
        address.is_none_or(|a| {
            self.per_address
                .try_take_at(&address_key(a), Instant::now())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_account_address: u32, per_address: u32, per_account: u32) -> LoginLimits {
        LoginLimits {
            per_account_address,
            per_address,
            per_account,
        }
    }

    #[test]
    fn the_eleventh_failure_in_a_minute_is_refused_for_that_account_from_that_address() {
        let l = LoginLimiter::new(LoginLimits::default());
        for _ in 0..10 {
            assert!(l.allowed("Alice", Some("1.2.3.4")));
            l.failed("alice", Some("1.2.3.4"));
        }
        assert!(!l.allowed("ALICE", Some("1.2.3.4")));
        assert!(l.allowed("bob", Some("1.2.3.4")));
    }

    #[test]
    fn wrong_passwords_from_one_address_do_not_lock_the_owner_out_elsewhere() {
        let l = LoginLimiter::new(LoginLimits::default());
        for _ in 0..50 {
            l.failed("alice", Some("203.0.113.9"));
        }
        assert!(!l.allowed("alice", Some("203.0.113.9")));
        assert!(l.allowed("alice", Some("198.51.100.7")));
    }

    #[test]
    fn an_account_guessed_at_from_many_addresses_hits_the_total_ceiling() {
        let l = LoginLimiter::new(limits(10, 100, 20));
        for n in 0..20 {
            l.failed("alice", Some(&format!("10.0.0.{n}")));
        }
        assert!(!l.allowed("alice", Some("10.0.1.1")));
        assert!(l.allowed("bob", Some("10.0.1.1")));
    }

    #[test]
    fn an_address_trying_many_accounts_is_refused() {
        let l = LoginLimiter::new(limits(10, 3, 100));
        for n in 0..3 {
            l.failed(&format!("user{n}"), Some("9.9.9.9"));
        }
        assert!(!l.allowed("fresh", Some("9.9.9.9")));
        assert!(l.allowed("fresh", Some("8.8.8.8")));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let l = LoginLimiter::new(limits(10, 3, 100));
        for n in 0..3 {
            l.failed(&format!("user{n}"), Some(&format!("2001:db8:1:2::{n}")));
        }
        assert!(!l.allowed("fresh", Some("2001:db8:1:2:ffff::1")));
        assert!(l.allowed("fresh", Some("2001:db8:1:3::1")));
        assert_eq!(address_key("::ffff:1.2.3.4"), "1.2.3.4");
    }

    #[test]
    fn failures_are_forgotten_after_their_window() {
        let l = LoginLimiter::new(LoginLimits::default());
        let t0 = Instant::now();
        for _ in 0..10 {
            l.failed_at("alice", Some("1.2.3.4"), t0);
        }
        assert!(!l.allowed_at("alice", Some("1.2.3.4"), t0 + Duration::from_secs(59)));
        assert!(l.allowed_at("alice", Some("1.2.3.4"), t0 + Duration::from_secs(60)));
    }

    #[test]
    fn expired_keys_leave_the_map_on_the_next_sweep() {
        let w = SlidingWindow::new(5, Duration::from_secs(60), 1000);
        let t0 = Instant::now();
        for n in 0..100 {
            w.record_at(&format!("k{n}"), t0);
        }
        assert_eq!(w.len(), 100);
        w.record_at("later", t0 + Duration::from_secs(61));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn at_the_cap_the_stalest_keys_go_and_recent_counts_stay() {
        let w = SlidingWindow::new(3, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            w.record_at("victim", t0 + Duration::from_secs(30));
        }
        for n in 0..1000 {
            w.record_at(&format!("flood{n}"), t0 + Duration::from_millis(n));
        }
        assert!(w.len() <= 100, "{}", w.len());
        assert!(!w.allowed_at("victim", t0 + Duration::from_secs(31)));
        // Fresh keys are still counted: the map never refuses new clients wholesale.
        w.record_at("fresh", t0 + Duration::from_secs(32));
        assert_eq!(w.count_at("fresh", t0 + Duration::from_secs(32)), 1);
    }

    #[test]
    fn a_key_keeps_no_more_attempts_than_its_limit() {
        let w = SlidingWindow::new(3, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        for _ in 0..1000 {
            w.record_at("k", t0);
        }
        assert_eq!(w.count_at("k", t0), 3);
    }

    #[test]
    fn sign_ups_are_limited_per_address_per_hour() {
        let r = RegisterLimiter::new(2);
        assert!(r.try_register(Some("1.2.3.4")));
        assert!(r.try_register(Some("1.2.3.4")));
        assert!(!r.try_register(Some("1.2.3.4")));
        assert!(r.try_register(Some("5.6.7.8")));
        assert!(r.try_register(None));
    }
}
