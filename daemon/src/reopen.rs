//! Opening a single-writer database (sled) whose lock our own previous handle
//! may still hold for a moment.
//!
//! sled releases its file lock only when its background flusher thread ends,
//! shortly after the last handle is dropped. Reopening a store in the same
//! process (a test's restart, a reload) can therefore find it locked by
//! nobody who is still using it. Another live process holding the lock still
//! fails, after the wait.

use std::time::{Duration, Instant};

/// How long a lock held by a handle that is going away may take to be released.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(20);

/// Runs `open` until it succeeds, fails for another reason than `is_locked`,
/// or [`LOCK_WAIT`] has passed.
pub fn retrying_while_locked<T, E>(
    mut open: impl FnMut() -> Result<T, E>,
    is_locked: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match open() {
            Err(e) if is_locked(&e) && Instant::now() < deadline => std::thread::sleep(POLL),
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_lock_that_goes_away_is_waited_for_and_other_errors_are_not() {
        let tries = Cell::new(0);
        let opened = retrying_while_locked(
            || {
                tries.set(tries.get() + 1);
                if tries.get() < 3 { Err("locked") } else { Ok("db") }
            },
            |e| *e == "locked",
        );
        assert_eq!((opened, tries.get()), (Ok("db"), 3));

        tries.set(0);
        let failed: Result<(), _> = retrying_while_locked(
            || {
                tries.set(tries.get() + 1);
                Err("corrupt")
            },
            |e| *e == "locked",
        );
        assert_eq!((failed, tries.get()), (Err("corrupt"), 1));
    }
}
