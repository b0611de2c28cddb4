//! The cloud's time, as a gateway or a relay keeps it. Session and
//! allocation end times are instants on the cloud's clock, so a peer
//! measures them against the cloud's clock too, never against its own wall
//! clock, which a bad RTC, an NTP step or `date -s` can move by hours.
//!
//! Every control connection starts with the cloud's time (the
//! `ServerHello`'s `server_time_ms`); the peer pins it to a monotonic clock
//! of its own (the gateway: CLOCK_BOOTTIME, kept on disk with the boot id;
//! the relay: its process's) and counts from there. Pure arithmetic: the
//! caller reads the clocks.

use serde::{Deserialize, Serialize};

/// The cloud's time at one instant of the peer's monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The kernel's boot id when it was taken: the monotonic clock's era.
    pub boot_id: String,
    /// CLOCK_BOOTTIME, in milliseconds.
    pub boot_ms: u64,
    /// The cloud's clock then, in milliseconds since the Unix epoch.
    pub cloud_ms: u64,
}

/// The cloud's time, once a connection told it (or a pin of this boot was
/// restored).
#[derive(Clone, Debug, Default)]
pub struct CloudClock {
    pin: Option<Pin>,
}

impl CloudClock {
    /// A clock restored from `saved`, if it was pinned during this boot
    /// (`boot_id`) and not in the monotonic clock's future.
    pub fn restored(saved: Option<Pin>, boot_id: &str, boot_ms: u64) -> CloudClock {
        // An unreadable boot id (empty) matches nothing, not even a pin
        // saved with an empty one: which boot that was is unknown.
        let pin = saved.filter(|p| !boot_id.is_empty() && p.boot_id == boot_id && p.boot_ms <= boot_ms);
        CloudClock { pin }
    }

    /// Pins the cloud's time `cloud_ms` to the monotonic `boot_ms` (a new
    /// connection's hello): it replaces the previous pin, so a cloud whose
    /// own clock was corrected is followed.
    pub fn pin(&mut self, boot_id: &str, boot_ms: u64, cloud_ms: u64) -> &Pin {
        self.pin.insert(Pin { boot_id: boot_id.to_string(), boot_ms, cloud_ms })
    }

    /// The cloud's time at the monotonic `boot_ms`; `None` until it is known.
    pub fn now(&self, boot_ms: u64) -> Option<u64> {
        let pin = self.pin.as_ref()?;
        Some(pin.cloud_ms.saturating_add(boot_ms.saturating_sub(pin.boot_ms)))
    }

    pub fn is_known(&self) -> bool {
        self.pin.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_monotonic_time_since_the_pin() {
        let mut clock = CloudClock::default();
        assert_eq!(clock.now(5_000), None);
        clock.pin("boot-a", 5_000, 1_000_000);
        assert_eq!(clock.now(5_000), Some(1_000_000));
        assert_eq!(clock.now(65_000), Some(1_060_000));
        // A new connection's hello replaces the pin, also backwards.
        clock.pin("boot-a", 70_000, 900_000);
        assert_eq!(clock.now(71_000), Some(901_000));
    }

    #[test]
    fn a_pin_of_another_boot_or_from_the_future_is_not_restored() {
        let pin = Pin { boot_id: "boot-a".into(), boot_ms: 5_000, cloud_ms: 1_000_000 };
        assert_eq!(CloudClock::restored(Some(pin.clone()), "boot-a", 8_000).now(8_000), Some(1_003_000));
        assert!(!CloudClock::restored(Some(pin.clone()), "boot-b", 8_000).is_known());
        assert!(!CloudClock::restored(Some(pin), "boot-a", 4_000).is_known());
        assert!(!CloudClock::restored(None, "boot-a", 4_000).is_known());
        let unknown = Pin { boot_id: String::new(), boot_ms: 5_000, cloud_ms: 1_000_000 };
        assert!(!CloudClock::restored(Some(unknown), "", 8_000).is_known(), "an unknown boot is no boot");
    }
}
