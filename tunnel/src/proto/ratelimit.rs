//! Per-source rate limiting of handshake messages, applied under load (as
//! wireguard-go does): a token bucket per source IP address.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// Handshakes per second one source address may start under load.
pub const PACKETS_PER_SECOND: u32 = 20;
/// How many a source may send at once before the rate applies.
pub const BURST: u32 = 5;
/// Sources idle this long are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(1);
/// At most this many sources are tracked. When full, untracked sources are
/// let through: they already proved with mac2 that they receive at their
/// address, and refusing every newcomer would let one attacker lock everyone
/// out.
const MAX_SOURCES: usize = 65_536;

#[derive(Default)]
pub struct RateLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    last_sweep: Option<Instant>,
}

struct Bucket {
    /// Tokens, in nanoseconds of allowance (one packet costs 1 s / rate).
    tokens: u64,
    updated: Instant,
}

const COST: u64 = 1_000_000_000 / PACKETS_PER_SECOND as u64;
const MAX_TOKENS: u64 = COST * BURST as u64;

impl RateLimiter {
    /// Whether one more handshake from `source` is allowed at `now`.
    pub fn allow(&mut self, now: Instant, source: IpAddr) -> bool {
        self.sweep(now);
        let source = match source {
            IpAddr::V4(_) => source,
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        };
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            return true;
        }
        let bucket = self.buckets.entry(source).or_insert(Bucket { tokens: MAX_TOKENS, updated: now });
        let elapsed =
            now.saturating_duration_since(bucket.updated).as_nanos().min(u128::from(MAX_TOKENS)) as u64;
        bucket.tokens = (bucket.tokens + elapsed).min(MAX_TOKENS);
        bucket.updated = now;
        if bucket.tokens >= COST {
            bucket.tokens -= COST;
            true
        } else {
            false
        }
    }

    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now.saturating_duration_since(t) < FORGET_AFTER) {
            return;
        }
        self.last_sweep = Some(now);
        self.buckets.retain(|_, b| now.saturating_duration_since(b.updated) < FORGET_AFTER);
    }

    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..BURST {
            assert!(limiter.allow(now, a));
        }
        assert!(!limiter.allow(now, a), "burst exhausted");
        assert!(limiter.allow(now, b), "another source has its own bucket");
        let step = Duration::from_nanos(COST);
        assert!(limiter.allow(now + step, a));
        assert!(!limiter.allow(now + step, a));
        // Over one second, about PACKETS_PER_SECOND more.
        let allowed = (1..=100u32)
            .filter(|i| limiter.allow(now + step + Duration::from_millis(10 * u64::from(*i)), a))
            .count();
        assert!((19..=21).contains(&allowed), "{allowed}");
    }

    #[test]
    fn an_ipv6_slash_64_shares_one_bucket() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        for i in 0..BURST {
            assert!(limiter.allow(now, IpAddr::V6(format!("2001:db8:1:2::{i:x}").parse().unwrap())));
        }
        assert!(!limiter.allow(now, "2001:db8:1:2:ffff::1".parse().unwrap()), "same /64");
        assert!(limiter.allow(now, "2001:db8:1:3::1".parse().unwrap()), "another /64");
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let mut limiter = RateLimiter::default();
        let now = Instant::now();
        for i in 0..100u32 {
            limiter.allow(now, IpAddr::V4(i.into()));
        }
        assert_eq!(limiter.tracked_sources(), 100);
        limiter.allow(now + Duration::from_secs(2), "192.0.2.9".parse().unwrap());
        assert_eq!(limiter.tracked_sources(), 1);
    }
}
