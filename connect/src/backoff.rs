//! Reconnect delays: exponential with full jitter.
//!
//! Full jitter (a uniform delay between zero and the exponential ceiling)
//! spreads a fleet of gateways that lost the cloud at the same moment, so
//! they do not all come back in the same second.

use std::time::Duration;

/// The ceiling of the first retry.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// No retry waits longer than this.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// The delay before retry number `attempt` (0 for the first retry), drawn
/// with `random` (any uniformly distributed `u64`): between zero and
/// `min(BACKOFF_CAP, BACKOFF_BASE * 2^attempt)`, inclusive.
pub fn backoff_delay(attempt: u32, random: u64) -> Duration {
    let base = BACKOFF_BASE.as_millis() as u64;
    let cap = BACKOFF_CAP.as_millis() as u64;
    let ceiling = 1u64.checked_shl(attempt).map_or(cap, |factor| base.saturating_mul(factor).min(cap));
    Duration::from_millis(random % (ceiling + 1))
}

/// The attempt counter around [`backoff_delay`].
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self, rng: &mut impl rand_core::RngCore) -> Duration {
        let delay = backoff_delay(self.attempt, rng.next_u64());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// After a successful connection (handshake done), so that the next
    /// outage starts again from short delays.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        assert_eq!(backoff_delay(0, 500), Duration::from_millis(500));
        assert_eq!(backoff_delay(0, 501), Duration::ZERO);
        assert_eq!(backoff_delay(0, 0), Duration::ZERO);
        assert_eq!(backoff_delay(1, 1000), Duration::from_millis(1000));
        assert_eq!(backoff_delay(2, 2000), Duration::from_millis(2000));
        assert_eq!(backoff_delay(6, 30_000), Duration::from_secs(30));
        assert_eq!(backoff_delay(7, 30_000), Duration::from_secs(30));
        for attempt in [10, 63, 64, 65, u32::MAX] {
            assert_eq!(backoff_delay(attempt, 30_000), BACKOFF_CAP, "{attempt}");
            assert!(backoff_delay(attempt, u64::MAX) <= BACKOFF_CAP);
        }
    }

    struct Counter(u64);

    impl rand_core::RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 += 7919;
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            rand_core::impls::fill_bytes_via_next(self, dest)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    #[test]
    fn counts_failures_and_resets() {
        let mut backoff = Backoff::new();
        let mut rng = Counter(0);
        for attempt in 0..100u32 {
            let ceiling = BACKOFF_BASE.saturating_mul(1 << attempt.min(20)).min(BACKOFF_CAP);
            assert!(backoff.next_delay(&mut rng) <= ceiling);
        }
        assert_eq!(backoff.attempt(), 100);
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert!(backoff.next_delay(&mut rng) <= BACKOFF_BASE);
    }
}
