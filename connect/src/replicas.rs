//! Which of several cloud addresses a long-lived channel (the gateway's, the
//! relay's) uses next, and how long it waits first: a failure moves to the
//! next replica at once, and the backoff applies only once a whole round of
//! them failed. Pure: the caller sleeps.

use std::time::Duration;

use crate::backoff::Backoff;

/// How soon the next replica is tried after one failed, while some of them
/// have not been tried since the last success.
pub const NEXT_REPLICA_AFTER: Duration = Duration::from_millis(200);

/// How long a channel must have lasted to count as a replica that served.
/// A cloud that accepts and closes at once (a failing store, a bug) must not
/// turn every gateway and relay into a reconnect loop at 200 ms intervals.
pub const SERVED_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Rotation {
    count: usize,
    index: usize,
    failed_in_a_row: usize,
}

impl Rotation {
    /// For `count` addresses (at least one is assumed).
    pub fn new(count: usize) -> Rotation {
        Rotation { count: count.max(1), index: 0, failed_in_a_row: 0 }
    }

    /// The index of the address to use now.
    pub fn current(&self) -> usize {
        self.index
    }

    /// The channel to the current address ended; `connected_for`: how long
    /// it had been connected, if it connected at all. Moves to the next
    /// address and returns how long to wait before trying it.
    pub fn ended(
        &mut self,
        connected_for: Option<Duration>,
        backoff: &mut Backoff,
        rng: &mut impl rand_core::RngCore,
    ) -> Duration {
        let served = connected_for.is_some_and(|d| d >= SERVED_AFTER);
        self.index = (self.index + 1) % self.count;
        // A replica that served and then failed: the others are tried at once.
        self.failed_in_a_row = if served { 1 } else { self.failed_in_a_row + 1 };
        if self.count > 1 && self.failed_in_a_row < self.count {
            NEXT_REPLICA_AFTER
        } else {
            self.failed_in_a_row = 0;
            backoff.next_delay(rng)
        }
    }

    /// The channel to the current address ended although that address
    /// serves (the daemon's own side of the connection was stuck): stays on
    /// it and returns how long to wait, always by the backoff, so that
    /// stalls in a row slow down.
    pub fn retry_same(&mut self, backoff: &mut Backoff, rng: &mut impl rand_core::RngCore) -> Duration {
        self.failed_in_a_row = 0;
        backoff.next_delay(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_of_failures_moves_on_at_once_then_backs_off() {
        let (mut backoff, mut rng) = (Backoff::new(), rand_core::OsRng);
        let mut three = Rotation::new(3);
        assert_eq!(three.current(), 0);
        assert_eq!(three.ended(None, &mut backoff, &mut rng), NEXT_REPLICA_AFTER);
        assert_eq!(three.current(), 1);
        assert_eq!(three.ended(None, &mut backoff, &mut rng), NEXT_REPLICA_AFTER);
        assert_eq!(three.current(), 2);
        // The third failure in a row completes the round: the backoff's turn.
        assert_eq!(backoff.attempt(), 0);
        three.ended(None, &mut backoff, &mut rng);
        assert_eq!((three.current(), backoff.attempt()), (0, 1));
        // One that served and failed: the other two are tried at once.
        let served = Some(SERVED_AFTER);
        assert_eq!(three.ended(served, &mut backoff, &mut rng), NEXT_REPLICA_AFTER);
        assert_eq!(three.ended(None, &mut backoff, &mut rng), NEXT_REPLICA_AFTER);
        three.ended(None, &mut backoff, &mut rng);
        assert_eq!(backoff.attempt(), 2);
    }

    #[test]
    fn replicas_that_accept_and_close_at_once_still_back_off() {
        let (mut backoff, mut rng) = (Backoff::new(), rand_core::OsRng);
        let mut two = Rotation::new(2);
        let brief = Some(Duration::from_millis(50));
        for _ in 0..6 {
            two.ended(brief, &mut backoff, &mut rng);
        }
        // Every second end completed a round without a replica that served.
        assert_eq!(backoff.attempt(), 3);
    }

    #[test]
    fn a_retry_of_the_same_address_stays_on_it_and_backs_off() {
        let (mut backoff, mut rng) = (Backoff::new(), rand_core::OsRng);
        let mut three = Rotation::new(3);
        three.ended(None, &mut backoff, &mut rng);
        for attempt in 1..=3 {
            three.retry_same(&mut backoff, &mut rng);
            assert_eq!((three.current(), backoff.attempt()), (1, attempt));
        }
        // It served: a failure afterwards tries the others at once.
        assert_eq!(three.ended(None, &mut backoff, &mut rng), NEXT_REPLICA_AFTER);
    }

    #[test]
    fn a_single_address_always_backs_off() {
        let (mut backoff, mut rng) = (Backoff::new(), rand_core::OsRng);
        let mut one = Rotation::new(1);
        one.ended(Some(SERVED_AFTER), &mut backoff, &mut rng);
        one.ended(None, &mut backoff, &mut rng);
        assert_eq!((one.current(), backoff.attempt()), (0, 2));
    }
}
