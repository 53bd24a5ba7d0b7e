//! When a route's next ACME order is due: a pure function of what is on disk and the clock,
//! so a restart decides exactly what the running process would have.
//!
//! ```text
//!  certificate covering the hosts ──▶ renew at notBefore + 2/3 of its lifetime
//!  none, expired or for other hosts ──▶ now
//!  either way, never before `attempts.not_before` (backoff, Retry-After, an order in flight)
//! ```
//! `not_before` is written *before* each order: a process that crashes mid-order (or
//! crash-loops) waits out the backoff on its next start instead of ordering again at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Wait after the first failure; each further failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(15);
/// The longest wait between two orders after failures.
pub const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

/// A route's failed orders, persisted as `attempts.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempts {
    /// Orders that failed in a row.
    pub failures: u32,
    /// No order before this time (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// The last failure, for people reading the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_problem: Option<String>,
}

/// The certificate a route holds.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Whether it names every host of the route.
    pub covers_hosts: bool,
}

impl Held {
    /// Two thirds into its lifetime: a 90-day certificate renews with 30 days left.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }

    /// Whether it can be served at `now`.
    pub fn usable(&self, now: SystemTime) -> bool {
        self.covers_hosts && self.not_before <= now && now < self.not_after
    }
}

/// When the next order is due (may be in the past: at once).
pub fn next_order(held: Option<&Held>, attempts: &Attempts) -> SystemTime {
    let wanted = match held {
        Some(held) if held.covers_hosts => held.renew_at(),
        _ => UNIX_EPOCH,
    };
    wanted.max(attempts.not_before.map_or(UNIX_EPOCH, from_unix))
}

/// The wait after `failures` failures in a row (at least one).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// What to persist just before ordering: were this order to fail or the process to die,
/// the next one waits as after one more failure.
pub fn before_order(attempts: &Attempts, now: SystemTime) -> Attempts {
    Attempts {
        not_before: Some(to_unix(now + backoff(attempts.failures + 1))),
        ..attempts.clone()
    }
}

/// What to persist after a failed order: one more failure, and the next order after the
/// backoff or the CA's Retry-After, whichever is later.
pub fn after_failure(
    attempts: &Attempts,
    now: SystemTime,
    retry_after: Option<SystemTime>,
    problem: &str,
) -> Attempts {
    let failures = attempts.failures.saturating_add(1);
    let next = (now + backoff(failures)).max(retry_after.unwrap_or(UNIX_EPOCH));
    Attempts {
        failures,
        not_before: Some(to_unix(next)),
        last_problem: Some(problem.to_owned()),
    }
}

pub fn to_unix(t: SystemTime) -> u64 {
    // Rounded up: a wait is never cut short by the truncation.
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn held(issued: SystemTime, days: u32, covers_hosts: bool) -> Held {
        Held {
            not_before: issued,
            not_after: issued + DAY * days,
            covers_hosts,
        }
    }

    #[test]
    fn a_certificate_renews_two_thirds_into_its_lifetime() {
        let issued = from_unix(1_800_000_000);
        let cert = held(issued, 90, true);
        assert_eq!(
            next_order(Some(&cert), &Attempts::default()),
            issued + DAY * 60
        );
        // Short-lived certificates too (six days: renew after four).
        assert_eq!(cert_renew(issued, 6), issued + DAY * 4);
    }

    fn cert_renew(issued: SystemTime, days: u32) -> SystemTime {
        held(issued, days, true).renew_at()
    }

    #[test]
    fn no_certificate_or_one_for_other_hosts_orders_at_once() {
        let issued = from_unix(1_800_000_000);
        assert_eq!(next_order(None, &Attempts::default()), UNIX_EPOCH);
        let other_hosts = held(issued, 90, false);
        assert_eq!(
            next_order(Some(&other_hosts), &Attempts::default()),
            UNIX_EPOCH
        );
    }

    #[test]
    fn backoff_doubles_from_fifteen_seconds_to_six_hours() {
        let waits: Vec<u64> = (1..=6).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [15, 30, 60, 120, 240, 480]);
        assert_eq!(backoff(30), MAX_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
        assert_eq!(backoff(0), FIRST_RETRY);
    }

    #[test]
    fn a_failure_waits_for_the_backoff_or_retry_after_whichever_is_later() {
        let now = from_unix(1_800_000_000);
        let one = after_failure(&Attempts::default(), now, None, "dns");
        assert_eq!(one.failures, 1);
        assert_eq!(one.not_before, Some(1_800_000_015));
        let two = after_failure(&one, now, Some(now + Duration::from_secs(3600)), "rate");
        assert_eq!(two.failures, 2);
        assert_eq!(two.not_before, Some(1_800_003_600));
        assert_eq!(two.last_problem.as_deref(), Some("rate"));
        // A Retry-After sooner than the backoff does not shorten it.
        let three = after_failure(&two, now, Some(now + Duration::from_secs(1)), "x");
        assert_eq!(three.not_before, Some(1_800_000_060));
    }

    #[test]
    fn the_backoff_holds_even_with_a_certificate_due_for_renewal() {
        let issued = from_unix(1_800_000_000);
        let cert = held(issued, 90, true);
        let now = issued + DAY * 70;
        let failed = after_failure(&Attempts::default(), now, None, "connection");
        assert_eq!(
            next_order(Some(&cert), &failed),
            now + Duration::from_secs(15)
        );
    }

    #[test]
    fn an_order_in_flight_holds_off_the_next_start() {
        // A process that dies mid-order: the next start sees `not_before` in the future
        // and waits, so a crash loop never becomes a burst of orders.
        let now = from_unix(1_800_000_000);
        let started = before_order(&Attempts::default(), now);
        assert_eq!(started.failures, 0);
        assert_eq!(next_order(None, &started), now + FIRST_RETRY);
        let again = before_order(&after_failure(&started, now, None, "x"), now);
        assert_eq!(next_order(None, &again), now + backoff(2));
    }

    #[test]
    fn usable_means_covering_and_within_validity() {
        let issued = from_unix(1_800_000_000);
        let cert = held(issued, 90, true);
        assert!(cert.usable(issued + DAY));
        assert!(!cert.usable(issued + DAY * 91));
        assert!(!held(issued, 90, false).usable(issued + DAY));
    }

    #[test]
    fn attempts_round_trip_as_json() {
        let a = after_failure(&Attempts::default(), from_unix(10), None, "dns: no record");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Attempts>(&json).unwrap(), a);
    }
}
