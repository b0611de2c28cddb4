//! The receiver's sliding replay window (RFC 6479): a ring of 64-bit blocks,
//! so moving the window clears whole blocks instead of shifting bits.

const BLOCK_BITS: u64 = 64;
const RING_BLOCKS: u64 = 128;
/// Counters this far behind the newest one are still accepted once.
pub const WINDOW_SIZE: u64 = (RING_BLOCKS - 1) * BLOCK_BITS;

#[derive(Clone)]
pub struct ReplayWindow {
    /// The highest counter accepted so far.
    last: u64,
    ring: [u64; RING_BLOCKS as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow { last: 0, ring: [0; RING_BLOCKS as usize] }
    }
}

impl ReplayWindow {
    /// Accepts `counter` if it is below `limit`, not older than the window and
    /// not seen before, and records it. Call only after the packet
    /// authenticated, so forged counters cannot move the window.
    pub fn accept(&mut self, counter: u64, limit: u64) -> bool {
        if counter >= limit {
            return false;
        }
        let block = counter / BLOCK_BITS;
        if counter > self.last {
            let current = self.last / BLOCK_BITS;
            let advance = (block - current).min(RING_BLOCKS);
            for i in 1..=advance {
                self.ring[((current + i) % RING_BLOCKS) as usize] = 0;
            }
            self.last = counter;
        } else if self.last - counter > WINDOW_SIZE {
            return false;
        }
        let slot = &mut self.ring[(block % RING_BLOCKS) as usize];
        let bit = 1u64 << (counter % BLOCK_BITS);
        let fresh = *slot & bit == 0;
        *slot |= bit;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMIT: u64 = u64::MAX;

    #[test]
    fn in_order_duplicates_and_zero() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(0, LIMIT));
        assert!(!w.accept(0, LIMIT));
        for c in 1..5000 {
            assert!(w.accept(c, LIMIT));
            assert!(!w.accept(c, LIMIT));
        }
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::default();
        let top = 20_000;
        assert!(w.accept(top, LIMIT));
        // Exactly WINDOW_SIZE behind is the oldest accepted; one more is too old.
        assert!(w.accept(top - WINDOW_SIZE, LIMIT));
        assert!(!w.accept(top - WINDOW_SIZE - 1, LIMIT));
        assert!(!w.accept(top - WINDOW_SIZE, LIMIT));
        // Out of order inside the window: each once.
        for c in (top - 2048..top).rev() {
            assert!(w.accept(c, LIMIT), "{c}");
        }
        for c in top - 2048..top {
            assert!(!w.accept(c, LIMIT), "{c} replayed");
        }
    }

    #[test]
    fn a_big_jump_clears_the_whole_ring() {
        let mut w = ReplayWindow::default();
        for c in 0..1000 {
            assert!(w.accept(c, LIMIT));
        }
        let far = 1_000_000;
        assert!(w.accept(far, LIMIT));
        // Counters that share ring slots with old ones are new to the window.
        for c in far - 1000..far {
            assert!(w.accept(c, LIMIT), "{c}");
        }
        assert!(!w.accept(999, LIMIT));
    }

    #[test]
    fn the_limit_is_exclusive() {
        let mut w = ReplayWindow::default();
        assert!(!w.accept(100, 100));
        assert!(w.accept(99, 100));
        assert!(!w.accept(u64::MAX, u64::MAX));
    }

    proptest! {
        /// Against a model that remembers everything: accepted iff new, below
        /// the limit, and within WINDOW_SIZE of the highest accepted counter.
        #[test]
        fn matches_a_set_model(counters in proptest::collection::vec(0u64..30_000, 1..2000)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut highest: Option<u64> = None;
            for c in counters {
                let too_old = highest.is_some_and(|h| h > c && h - c > WINDOW_SIZE);
                let expect = !too_old && !seen.contains(&c);
                prop_assert_eq!(w.accept(c, LIMIT), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
