//! Slowdown and lockout after failed logins. After `slow_after` consecutive
//! failures each further attempt must wait an exponentially growing delay;
//! at `lock_after` failures the account is locked for `lock_ms`. Attempts
//! during the wait or the lock are refused without checking the password,
//! so guessing cannot go faster by ignoring the delay. The counters
//! ([`Failures`]) are the caller's to store: the cloud keeps them on the
//! user, the gateway's panel in a file, so that a restart does not lift a
//! lock.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lockout {
    pub slow_after: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    pub lock_after: u32,
    pub lock_ms: u64,
}

impl Default for Lockout {
    fn default() -> Self {
        Lockout {
            slow_after: 3,
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
            lock_after: 10,
            lock_ms: 15 * 60 * 1000,
        }
    }
}

/// The failed attempts of one account (or one local password).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// Consecutive failures since the last success or lock.
    pub count: u32,
    pub last_failed_ms: Option<u64>,
    pub locked_until_ms: Option<u64>,
}

/// Why an attempt is not even checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Too soon after the last failure.
    Throttled { retry_after_ms: u64 },
    /// Locked until then.
    Locked { until_ms: u64 },
}

/// How far ahead of this machine's clock a stored time may be and still
/// count (see [`Lockout::check`]).
pub const CLOCK_ALLOWANCE_MS: u64 = 15 * 60 * 1000;

impl Lockout {
    /// How long after the last failure the next attempt may come.
    pub fn delay_ms(&self, failures: u32) -> u64 {
        if failures < self.slow_after {
            return 0;
        }
        let doublings = (failures - self.slow_after).min(30);
        (self.base_delay_ms << doublings).min(self.max_delay_ms)
    }

    /// Whether an attempt may be checked at all now.
    pub fn check(&self, failures: &Failures, now_ms: u64) -> Result<(), Refused> {
        // A time this policy could not have written (a lock ending more than
        // its span from now, a failure after now) comes from a corrupt
        // record or a clock stepped back; judged as it stands it could lock
        // or throttle for ever, so it is ignored. Up to CLOCK_ALLOWANCE_MS
        // ahead is honoured: the cloud's replicas judge each other's
        // records, and their clocks differ a little.
        let horizon = now_ms.saturating_add(CLOCK_ALLOWANCE_MS);
        let possible_lock = |&until: &u64| now_ms < until && until <= horizon.saturating_add(self.lock_ms);
        if let Some(until_ms) = failures.locked_until_ms.filter(possible_lock) {
            return Err(Refused::Locked { until_ms });
        }
        let last_failed_ms = failures.last_failed_ms.filter(|&at| at <= horizon).unwrap_or(0);
        let ready_at = last_failed_ms.saturating_add(self.delay_ms(failures.count));
        if failures.count >= self.slow_after && now_ms < ready_at {
            return Err(Refused::Throttled { retry_after_ms: ready_at - now_ms });
        }
        Ok(())
    }

    /// Counts a failed attempt (one that [`Lockout::check`] let through);
    /// returns the end of the lock when this one locked the account.
    pub fn failed(&self, failures: &mut Failures, now_ms: u64) -> Option<u64> {
        // Saturating, as in `check`: a stored count may be anything.
        failures.count = failures.count.saturating_add(1);
        failures.last_failed_ms = Some(now_ms);
        if failures.count < self.lock_after {
            return None;
        }
        let until_ms = now_ms.saturating_add(self.lock_ms);
        // The lock is the penalty; afterwards counting starts over.
        *failures = Failures { count: 0, last_failed_ms: None, locked_until_ms: Some(until_ms) };
        Some(until_ms)
    }
}

impl Failures {
    /// A successful login clears everything.
    pub fn succeeded(&mut self) {
        *self = Failures::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_down_then_locks_then_starts_over() {
        let policy = Lockout::default();
        let mut f = Failures::default();
        let mut now = 1_000_000;
        for _ in 0..3 {
            policy.check(&f, now).unwrap();
            assert_eq!(policy.failed(&mut f, now), None);
        }
        assert_eq!(policy.check(&f, now + 10), Err(Refused::Throttled { retry_after_ms: 990 }));
        for failures in 3..9 {
            now += policy.delay_ms(failures);
            policy.check(&f, now).unwrap();
            assert_eq!(policy.failed(&mut f, now), None);
        }
        now += policy.delay_ms(9);
        let until = now + policy.lock_ms;
        assert_eq!(policy.failed(&mut f, now), Some(until));
        assert_eq!(policy.check(&f, until - 1), Err(Refused::Locked { until_ms: until }));
        assert_eq!(policy.check(&f, until), Ok(()));
        assert_eq!(f.count, 0, "counting starts over after a lock");
        f.succeeded();
        assert_eq!(f, Failures::default());
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = Lockout::default();
        let delays: Vec<u64> = (0..12).map(|f| policy.delay_ms(f)).collect();
        assert_eq!(delays, [0, 0, 0, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
        assert_eq!(policy.delay_ms(u32::MAX), 60000);
    }

    #[test]
    fn a_record_with_extreme_numbers_is_judged_without_overflow() {
        let policy = Lockout::default();
        let corrupt: Failures = serde_json::from_str(
            r#"{"count":4294967295,"last_failed_ms":18446744073709551615,"locked_until_ms":null}"#,
        )
        .unwrap();
        // A failure "in the future" counts as long ago: throttled only by
        // the longest delay from the epoch, not for ever.
        let later = policy.max_delay_ms + 1;
        assert_eq!(policy.check(&corrupt, later), Ok(()));
        let mut f = corrupt;
        assert_eq!(policy.failed(&mut f, u64::MAX - 1), Some(u64::MAX), "at the count's end it locks");
        // A lock ending further than the policy's span from now is ignored.
        assert_eq!(policy.check(&f, 5_000), Ok(()));
        // One the policy wrote holds, also on a machine whose clock is a
        // minute behind (another replica).
        let mut g = Failures::default();
        let at = 10 * 60_000;
        for _ in 0..policy.lock_after {
            policy.failed(&mut g, at);
        }
        let locked = Err(Refused::Locked { until_ms: at + policy.lock_ms });
        assert_eq!(policy.check(&g, at + 1), locked);
        assert_eq!(policy.check(&g, at - 60_000), locked);
        // And so does a throttle written a minute ahead.
        let mut h = Failures::default();
        for _ in 0..policy.slow_after {
            policy.failed(&mut h, at);
        }
        assert!(matches!(policy.check(&h, at - 60_000), Err(Refused::Throttled { .. })));
    }

    #[test]
    fn failures_survive_a_round_trip_through_json() {
        let f = Failures { count: 4, last_failed_ms: Some(7), locked_until_ms: None };
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Failures>(&text).unwrap(), f);
    }
}
