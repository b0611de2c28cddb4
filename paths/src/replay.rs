//! The nonces of probes a peer sent us lately, to drop replays.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::probe::NONCE_LEN;

/// A bounded memory of recently accepted nonces.
///
/// Only authenticated probes are recorded, so an attacker cannot fill it; when
/// an honest peer outpaces the bound, the oldest entries go first. That is
/// safe: a replayed ping that slips past only earns a same-size pong to its
/// source, and a replayed pong answers a transaction that is used up or expired.
#[derive(Debug, Default)]
pub(crate) struct NonceCache {
    order: VecDeque<(Instant, u64)>,
    seen: HashSet<u64>,
}

impl NonceCache {
    /// How long a nonce is remembered.
    pub(crate) const WINDOW: Duration = Duration::from_secs(120);
    /// How many nonces are remembered at most (per peer).
    pub(crate) const CAPACITY: usize = 1024;

    /// Nonces are random; 64 of their bits tell honest ones apart (the
    /// collision chance among 1024 is about 2^-44, and a collision only drops one probe).
    fn short(nonce: &[u8; NONCE_LEN]) -> u64 {
        let mut word = [0u8; 8];
        for (slot, byte) in word.iter_mut().zip(nonce.iter()) {
            *slot = *byte;
        }
        u64::from_le_bytes(word)
    }

    pub(crate) fn contains(&self, nonce: &[u8; NONCE_LEN]) -> bool {
        self.seen.contains(&Self::short(nonce))
    }

    pub(crate) fn insert(&mut self, nonce: &[u8; NONCE_LEN], now: Instant) {
        let short = Self::short(nonce);
        if !self.seen.insert(short) {
            return;
        }
        while self.order.len() >= Self::CAPACITY {
            self.pop_oldest();
        }
        self.order.push_back((now, short));
    }

    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < Self::WINDOW {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, short)) = self.order.pop_front() {
            self.seen.remove(&short);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(i: u32) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&i.to_le_bytes());
        n
    }

    #[test]
    fn remembers_for_the_window_then_forgets() {
        let t0 = Instant::now();
        let mut cache = NonceCache::default();
        cache.insert(&nonce(1), t0);
        assert!(cache.contains(&nonce(1)));
        assert!(!cache.contains(&nonce(2)));
        cache.expire(t0 + NonceCache::WINDOW - Duration::from_millis(1));
        assert!(cache.contains(&nonce(1)));
        cache.expire(t0 + NonceCache::WINDOW);
        assert!(!cache.contains(&nonce(1)));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn stays_within_capacity_dropping_the_oldest() {
        let t0 = Instant::now();
        let mut cache = NonceCache::default();
        let total = NonceCache::CAPACITY as u32 + 10;
        for i in 0..total {
            cache.insert(&nonce(i), t0);
        }
        assert_eq!(cache.len(), NonceCache::CAPACITY);
        assert_eq!(cache.seen.len(), NonceCache::CAPACITY);
        assert!(!cache.contains(&nonce(0)));
        assert!(cache.contains(&nonce(total - 1)));
    }
}
