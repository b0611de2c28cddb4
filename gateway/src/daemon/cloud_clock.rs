//! The cloud's time, as the gateway keeps it. Session and peer end times
//! are instants on the cloud's clock, so the gateway measures them against
//! the cloud's clock too, never against its own wall clock: a bad RTC at
//! boot, an NTP step or an operator's `date -s` moves that one by hours,
//! and a step back would keep an ended session open.
//!
//! Every connection to the cloud starts with the cloud's time (the
//! `ServerHello`'s `server_time_ms`, read at once). The gateway pins it to
//! its monotonic clock, CLOCK_BOOTTIME (no step moves it, and it counts a
//! suspend), and counts from there: the cloud's time now is the pinned
//! time plus the monotonic time since. The error is the hello's one-way
//! delay (the estimate lags, so an end comes that much late: milliseconds),
//! plus the drift of the gateway's oscillator since the connection began,
//! which is the wall clock's own drift between NTP corrections (the kernel
//! slews both clocks alike).
//!
//! The pin is kept on disk with the kernel's boot id, so that a restarted
//! daemon (same boot: CLOCK_BOOTTIME went on) still knows the cloud's time
//! without the cloud. After a reboot it is worthless (CLOCK_BOOTTIME began
//! again), and until the cloud is heard again the gateway does not know
//! the time: it forwards nothing for the sessions it kept (see
//! `policy::Status::ClockUnknown`), rather than trust a wall clock that may
//! be hours behind.
//!
//! The arithmetic is pure ([`CloudClock`]); reading the clocks and the file
//! is the shell's (the functions below it).

use std::path::{Path, PathBuf};

use anyhow::Result;

const FILE: &str = "cloud-clock.json";

pub use ferry_control::cloud_clock::{CloudClock, Pin};

/// CLOCK_BOOTTIME in milliseconds (see [`crate::cmd::monotonic_ms`]).
pub fn boot_ms() -> u64 {
    crate::cmd::monotonic_ms()
}

/// The kernel's id of this boot (`/proc/sys/kernel/random/boot_id`); empty
/// if it cannot be read, which never matches a saved pin.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

pub fn load(data_dir: &Path) -> Result<Option<Pin>> {
    crate::state::file::load_json(&path(data_dir))
}

pub fn save(data_dir: &Path, pin: &Pin) -> Result<()> {
    crate::state::file::save_json(&path(data_dir), pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_round_trips_through_its_private_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let pin = Pin { boot_id: "b".into(), boot_ms: 1, cloud_ms: 2 };
        save(dir.path(), &pin).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(pin));
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = boot_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(boot_ms() >= a + 20);
        assert!(!boot_id().is_empty());
    }
}
