//! Sockets per client address: one address (a script, a botnet node) may not hold more than
//! `PARLEY_MAX_SOCKETS_PER_ADDRESS` sockets of either transport on a gateway, counting
//! Socket.IO handshakes not yet authenticated. The map holds only addresses with a socket open,
//! so it is as large as the connections are, never larger.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct AddressCounter {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One socket of an address, counted until dropped.
pub struct AddressGuard {
    counter: Arc<AddressCounter>,
    addr: IpAddr,
}

impl AddressCounter {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more socket of `addr`; `None` when it already holds the most it may.
    pub fn acquire(self: &Arc<Self>, addr: IpAddr) -> Option<AddressGuard> {
        let mut counts = self.counts.lock().expect("address lock");
        let n = counts.entry(addr).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressGuard {
            counter: self.clone(),
            addr,
        })
    }

    /// Sockets `addr` holds now.
    pub fn held(&self, addr: IpAddr) -> usize {
        let counts = self.counts.lock().expect("address lock");
        counts.get(&addr).copied().unwrap_or(0)
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut counts = self.counter.counts.lock().expect("address lock");
        if let Some(n) = counts.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_the_cap_and_gets_a_place_back_when_one_closes() {
        let counter = AddressCounter::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counter.acquire(a).expect("first");
        let _second = counter.acquire(a).expect("second");
        assert!(counter.acquire(a).is_none(), "a third is refused");
        assert!(
            counter.acquire(b).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert!(
            counter.acquire(a).is_some(),
            "a closed socket frees its place"
        );
    }

    #[test]
    fn an_address_with_nothing_open_is_forgotten() {
        let counter = AddressCounter::new(3);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        drop(counter.acquire(a));
        assert_eq!(counter.held(a), 0);
        assert!(counter.counts.lock().unwrap().is_empty());
    }
}
