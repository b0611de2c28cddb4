//! TAI64N timestamps, the handshake's defence against replayed initiations.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// TAI64 label of the Unix epoch, as WireGuard counts it (2^62 + 10 s).
const TAI64_EPOCH: u64 = 0x4000_0000_0000_000a;
/// Nanoseconds are rounded down to 2^24 ns (about 16 ms), as in wireguard-go
/// and the kernel, so a timestamp does not reveal the sender's exact clock.
const WHITENER_MASK: u32 = 0x00ff_ffff;

/// A 12-byte TAI64N timestamp; byte order is big-endian, so comparing the bytes
/// compares the times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tai64N(pub [u8; 12]);

impl Tai64N {
    /// The timestamp of a moment given as time since the Unix epoch.
    pub fn from_unix(since_epoch: Duration) -> Tai64N {
        let mut out = [0u8; 12];
        out[..8].copy_from_slice(&(TAI64_EPOCH + since_epoch.as_secs()).to_be_bytes());
        out[8..].copy_from_slice(&(since_epoch.subsec_nanos() & !WHITENER_MASK).to_be_bytes());
        Tai64N(out)
    }

    /// The smallest timestamp after this one (one whitened step, about
    /// 16 ms, later).
    pub fn after(self) -> Tai64N {
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&self.0[..8]);
        let mut nanos = [0u8; 4];
        nanos.copy_from_slice(&self.0[8..]);
        let since_epoch = Duration::new(
            u64::from_be_bytes(secs).saturating_sub(TAI64_EPOCH),
            u32::from_be_bytes(nanos).min(999_999_999),
        );
        Tai64N::from_unix(since_epoch.saturating_add(Duration::from_nanos(u64::from(WHITENER_MASK) + 1)))
    }

    /// Now, by the system's wall clock. Only the IO shell calls this.
    pub fn now() -> Tai64N {
        Tai64N::from_unix(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_is_greater_and_precision_is_whitened() {
        let a = Tai64N::from_unix(Duration::new(1_700_000_000, 0));
        let b = Tai64N::from_unix(Duration::new(1_700_000_000, 20_000_000));
        let c = Tai64N::from_unix(Duration::new(1_700_000_001, 0));
        assert!(a < b && b < c);
        // Within one 2^24 ns step the stamp does not change.
        assert_eq!(a, Tai64N::from_unix(Duration::new(1_700_000_000, 16_000_000)));
        assert_eq!(&a.0[..8], &(0x4000_0000_0000_000au64 + 1_700_000_000).to_be_bytes());
    }

    #[test]
    fn after_is_the_next_whitened_step_across_a_second_too() {
        let a = Tai64N::from_unix(Duration::new(1_700_000_000, 0));
        assert!(a.after() > a);
        assert_eq!(a.after(), Tai64N::from_unix(Duration::new(1_700_000_000, 1 << 24)));
        // The last step of a second: the next is in the next second.
        let last = Tai64N::from_unix(Duration::new(1_700_000_000, 999_999_999));
        assert!(last.after() > last);
        assert_eq!(&last.after().0[..8], &(0x4000_0000_0000_000au64 + 1_700_000_001).to_be_bytes());
    }
}
