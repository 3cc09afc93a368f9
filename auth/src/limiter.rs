//! Failed-login counting: per account and per client address, in a sliding minute. In memory, so
//! per replica of the auth role (with N replicas an attacker gets at most N times the budget).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked at most; past it the oldest entries are dropped.
const MAX_KEYS: usize = 100_000;

pub struct LoginLimiter {
    per_account: u32,
    per_address: u32,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(per_account: u32, per_address: u32) -> Self {
        Self {
            per_account,
            per_address,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(account: &str, address: Option<&str>) -> (String, Option<String>) {
        (
            format!("account:{}", account.to_lowercase()),
            address.map(|a| format!("address:{a}")),
        )
    }

    /// Whether another attempt may be made now.
    pub fn allowed(&self, account: &str, address: Option<&str>) -> bool {
        let (acct, addr) = Self::keys(account, address);
        let mut failures = self.failures.lock().expect("limiter lock");
        let now = Instant::now();
        let mut count = |key: &str| {
            failures.get_mut(key).map_or(0, |q| {
                while q.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
                    q.pop_front();
                }
                q.len() as u32
            })
        };
        count(&acct) < self.per_account && addr.is_none_or(|a| count(&a) < self.per_address)
    }

    /// Counts a failed attempt.
    pub fn failed(&self, account: &str, address: Option<&str>) {
        let (acct, addr) = Self::keys(account, address);
        let mut failures = self.failures.lock().expect("limiter lock");
        if failures.len() > MAX_KEYS {
            failures.clear();
        }
        let now = Instant::now();
        for key in std::iter::once(acct).chain(addr) {
            failures.entry(key).or_default().push_back(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eleventh_failure_in_a_minute_is_refused_for_that_account_only() {
        let l = LoginLimiter::new(10, 100);
        for _ in 0..10 {
            assert!(l.allowed("Alice", Some("1.2.3.4")));
            l.failed("alice", Some("1.2.3.4"));
        }
        assert!(!l.allowed("ALICE", Some("5.6.7.8")));
        assert!(l.allowed("bob", Some("1.2.3.4")));
    }

    #[test]
    fn an_address_trying_many_accounts_is_refused() {
        let l = LoginLimiter::new(10, 3);
        for n in 0..3 {
            l.failed(&format!("user{n}"), Some("9.9.9.9"));
        }
        assert!(!l.allowed("fresh", Some("9.9.9.9")));
        assert!(l.allowed("fresh", Some("8.8.8.8")));
    }
}
