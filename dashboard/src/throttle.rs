//! Sign-in throttling: failed attempts are counted per account and per client address over a
//! sliding window; past the limit, attempts are refused without checking the password until
//! the oldest failure leaves the window. A success clears the account's failures.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most per table (oldest dropped): memory stays bounded under a flood.
const MAX_KEYS: usize = 50_000;

pub struct Throttle {
    per_account: usize,
    per_address: usize,
    window: Duration,
    accounts: Mutex<HashMap<String, VecDeque<Instant>>>,
    addresses: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// Why an attempt is refused, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Account(Duration),
    Address(Duration),
}

fn retry_after(q: &VecDeque<Instant>, window: Duration, now: Instant) -> Duration {
    q.front().map_or(Duration::ZERO, |t| window.saturating_sub(now.duration_since(*t)))
}

fn recent<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, VecDeque<Instant>>,
    key: &K,
    window: Duration,
    now: Instant,
) -> usize {
    if let Some(q) = map.get_mut(key) {
        while q.front().is_some_and(|t| now.duration_since(*t) > window) {
            q.pop_front();
        }
        q.len()
    } else {
        0
    }
}

fn record<K: std::hash::Hash + Eq + Clone>(map: &mut HashMap<K, VecDeque<Instant>>, key: K, cap: usize, now: Instant) {
    if map.len() >= MAX_KEYS && !map.contains_key(&key) {
        if let Some(oldest) = map.iter().min_by_key(|(_, q)| q.back().copied()).map(|(k, _)| k.clone()) {
            map.remove(&oldest);
        }
    }
    let q = map.entry(key).or_default();
    q.push_back(now);
    while q.len() > cap {
        q.pop_front();
    }
}

impl Throttle {
    pub fn new(per_account: usize, per_address: usize, window: Duration) -> Throttle {
        Throttle {
            per_account,
            per_address,
            window,
            accounts: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an attempt for `account` from `address` may be checked now.
    pub fn check(&self, account: &str, address: IpAddr) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if recent(&mut addresses, &address, self.window, now) >= self.per_address {
            return Err(Refusal::Address(retry_after(&addresses[&address], self.window, now)));
        }
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let key = account.to_string();
        if recent(&mut accounts, &key, self.window, now) >= self.per_account {
            return Err(Refusal::Account(retry_after(&accounts[&key], self.window, now)));
        }
        Ok(())
    }

    pub fn failed(&self, account: &str, address: IpAddr) {
        let now = Instant::now();
        record(
            &mut self.accounts.lock().unwrap_or_else(|p| p.into_inner()),
            account.to_string(),
            self.per_account,
            now,
        );
        record(&mut self.addresses.lock().unwrap_or_else(|p| p.into_inner()), address, self.per_address, now);
    }

    pub fn succeeded(&self, account: &str) {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner()).remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_account_and_per_address() {
        let t = Throttle::new(3, 5, Duration::from_millis(300));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(t.check("alice", a).is_ok());
            t.failed("alice", a);
        }
        assert!(matches!(t.check("alice", a), Err(Refusal::Account(_))));
        assert!(matches!(t.check("alice", b), Err(Refusal::Account(_))), "the account is throttled from anywhere");
        assert!(t.check("bob", a).is_ok(), "another account from the same address is not");
        t.failed("bob", a);
        t.failed("carol", a);
        assert!(matches!(t.check("dave", a), Err(Refusal::Address(_))), "five failures from one address");
        assert!(t.check("dave", b).is_ok());
        std::thread::sleep(Duration::from_millis(350));
        assert!(t.check("alice", a).is_ok(), "failures leave the window");
    }

    #[test]
    fn success_clears_the_account() {
        let t = Throttle::new(2, 100, Duration::from_secs(60));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        t.failed("alice", a);
        t.succeeded("alice");
        t.failed("alice", a);
        assert!(t.check("alice", a).is_ok());
        t.failed("alice", a);
        match t.check("alice", a) {
            Err(Refusal::Account(d)) => assert!(d > Duration::from_secs(50) && d <= Duration::from_secs(60)),
            other => panic!("{other:?}"),
        }
    }
}
