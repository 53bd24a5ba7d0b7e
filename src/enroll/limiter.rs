//! Failed claims per client address, in bounded memory: a guesser gets a few tries per
//! window, and a flood of addresses cannot grow the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failed claims allowed per address (IPv6: per /64) in one window.
pub const MAX_FAILURES: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);
/// Addresses remembered at once; beyond that, new addresses share one overflow budget.
pub const CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

impl Window {
    fn fresh(now: Instant) -> Self {
        Window {
            start: now,
            failures: 0,
        }
    }
}

#[derive(Debug)]
struct State {
    by_client: HashMap<IpAddr, Window>,
    /// Shared by addresses that found the table full: an attacker with many addresses
    /// exhausts only this, never a known client's own budget.
    overflow: Window,
}

/// Counts failed claims; see the module docs.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
    max_failures: u32,
    window: Duration,
    capacity: usize,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(MAX_FAILURES, WINDOW, CAPACITY)
    }
}

impl Limiter {
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> Self {
        Limiter {
            state: Mutex::new(State {
                by_client: HashMap::new(),
                overflow: Window::fresh(Instant::now()),
            }),
            max_failures,
            window,
            capacity,
        }
    }

    /// Whether `client` may try a claim now.
    pub fn allowed(&self, client: IpAddr, now: Instant) -> bool {
        self.with_window(client, now, |w| w.failures < self.max_failures)
    }

    /// Records a failed claim by `client`.
    pub fn failed(&self, client: IpAddr, now: Instant) {
        self.with_window(client, now, |w| w.failures = w.failures.saturating_add(1));
    }

    fn with_window<T>(&self, client: IpAddr, now: Instant, f: impl FnOnce(&mut Window) -> T) -> T {
        let key = bucket(client);
        let window = self.window;
        let expired = move |w: &Window| now.saturating_duration_since(w.start) >= window;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.by_client.contains_key(&key) && state.by_client.len() >= self.capacity {
            state.by_client.retain(|_, w| !expired(w));
        }
        let State {
            by_client,
            overflow,
        } = &mut *state;
        let w = if by_client.contains_key(&key) || by_client.len() < self.capacity {
            by_client.entry(key).or_insert_with(|| Window::fresh(now))
        } else {
            overflow
        };
        if expired(w) {
            *w = Window::fresh(now);
        }
        f(w)
    }

    /// Addresses remembered (for tests and the curious).
    pub fn len(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One budget per IPv4 address, per IPv6 /64 (what one household or host gets), and an
/// IPv4-mapped IPv6 address counts as its IPv4 address.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_each_address_for_a_window() {
        let l = Limiter::new(3, Duration::from_secs(60), 100);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.allowed(ip("192.0.2.1"), t));
            l.failed(ip("192.0.2.1"), t);
        }
        assert!(!l.allowed(ip("192.0.2.1"), t));
        assert!(!l.allowed(ip("::ffff:192.0.2.1"), t), "mapped is the same");
        assert!(l.allowed(ip("192.0.2.2"), t), "others are not affected");
        assert!(l.allowed(ip("192.0.2.1"), t + Duration::from_secs(60)));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = Limiter::new(1, Duration::from_secs(60), 100);
        let t = Instant::now();
        l.failed(ip("2001:db8:1:2::1"), t);
        assert!(!l.allowed(ip("2001:db8:1:2:ffff::9"), t));
        assert!(l.allowed(ip("2001:db8:1:3::1"), t));
    }

    #[test]
    fn memory_is_bounded_and_known_clients_keep_their_budget() {
        let l = Limiter::new(2, Duration::from_secs(60), 8);
        let t = Instant::now();
        l.failed(ip("198.51.100.1"), t);
        for n in 0..1000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            l.failed(a, t);
        }
        assert!(l.len() <= 8);
        // The flood exhausted the shared overflow budget, not the known client's.
        assert!(l.allowed(ip("198.51.100.1"), t));
        assert!(!l.allowed(ip("203.0.113.9"), t));
        // Once windows expire, the table makes room again.
        let later = t + Duration::from_secs(61);
        assert!(l.allowed(ip("203.0.113.9"), later));
        assert!(l.len() <= 8);
    }
}
