//! Unique names for lab objects, and the sweep of objects left by dead runs.
//!
//! A namespace is named `fy-<pid>-<n>-<label>`, so a sweep can tell whether its
//! owner still runs. Interface names are limited to 15 bytes and some (those of
//! wireguard-go, whose control socket lives in a machine-wide folder) must be
//! unique across namespaces: `fy` + the pid in 5 base-36 digits + a 3-digit
//! base-36 sequence + a short suffix.

use std::{
    fs,
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
};

/// The prefix of every object the lab creates.
pub const PREFIX: &str = "fy";

const NETNS_DIR: &str = "/run/netns";
pub(crate) const WIREGUARD_SOCKETS: &str = "/var/run/wireguard";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

pub(crate) fn next_sequence() -> u32 {
    SEQUENCE.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn netns_name(label: &str) -> String {
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .take(24)
        .collect();
    format!("{PREFIX}-{}-{}-{label}", std::process::id(), next_sequence())
}

/// A machine-wide unique interface name ending in `suffix` (at most 5 bytes).
pub(crate) fn ifname(suffix: &str) -> String {
    assert!(suffix.len() <= 5, "interface suffix {suffix:?} is longer than 5 bytes");
    let name = format!(
        "{PREFIX}{}{}{suffix}",
        base36(std::process::id(), 5),
        base36(next_sequence() % 36u32.pow(3), 3)
    );
    debug_assert!(name.len() <= 15);
    name
}

fn base36(mut value: u32, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for slot in digits.iter_mut().rev() {
        *slot = b"0123456789abcdefghijklmnopqrstuvwxyz"[(value % 36) as usize];
        value /= 36;
    }
    String::from_utf8(digits).expect("ascii")
}

fn pid_of_netns(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.strip_prefix('-')?.split('-').next()?.parse().ok()
}

fn pid_of_ifname(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let ours = (8..=13).contains(&rest.len())
        && rest[..8].bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    if !ours {
        return None;
    }
    u32::from_str_radix(&rest[..5], 36).ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The kernel's largest pid; a name that decodes to more was not made by us.
fn pid_max() -> u32 {
    fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304)
}

/// Removes lab namespaces (and the processes in them), wireguard-go control
/// sockets and lab folders whose owning process is gone. The lab never
/// creates interfaces in the root namespace, so there are none to sweep
/// there. Objects of live runs are left alone, so this is safe while other
/// tests run. Returns what was removed.
pub fn sweep_stale() -> Vec<String> {
    sweep(|pid| !alive(pid), true)
}

/// Removes everything the lab made for process `pid`, alive or not: its
/// namespaces with the processes in them, its wireguard-go control sockets
/// and its lab folders. For a program that must clean up at once on a
/// signal, from another thread than the one that owns its [`crate::Lab`]s
/// (then exits without dropping them). Returns what was removed.
pub fn sweep_pid(pid: u32) -> Vec<String> {
    // Its wireguard-go processes were in its namespaces and are being
    // killed; their sockets are the caller's whether they still answer.
    sweep(|owner| owner == pid, false)
}

/// Removes what `owned` says belongs to a pid; with `spare_listening`, a
/// control socket that still answers is left (a live wireguard-go of a
/// pid that was reused).
fn sweep(owned: impl Fn(u32) -> bool, spare_listening: bool) -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if pid_of_netns(&name).is_some_and(&owned) {
                crate::netns::delete_netns(&name);
                removed.push(format!("netns {name}"));
            }
        }
    }
    let pid_max = pid_max();
    if let Ok(entries) = fs::read_dir(WIREGUARD_SOCKETS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".sock") else { continue };
            // Ours, its owner's, and nobody listening: a live wireguard-go
            // (of anyone) answers connect().
            let stale = pid_of_ifname(stem).is_some_and(|pid| pid <= pid_max && owned(pid))
                && !(spare_listening && std::os::unix::net::UnixStream::connect(entry.path()).is_ok());
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed.push(format!("socket {name}"));
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if pid_of_dir(&name).is_some_and(&owned) && fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(format!("folder {}", entry.path().display()));
            }
        }
    }
    removed
}

/// The prefix of a lab folder's name in the temporary folder, which names
/// its owner: `ferry-lab-<pid>-<random>`.
pub(crate) fn dir_prefix() -> String {
    format!("{DIR_PREFIX}{}-", std::process::id())
}

const DIR_PREFIX: &str = "ferry-lab-";

fn pid_of_dir(name: &str) -> Option<u32> {
    let (pid, random) = name.strip_prefix(DIR_PREFIX)?.split_once('-')?;
    if random.is_empty() {
        return None;
    }
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_their_pid() {
        let ns = netns_name("Gate Way!");
        assert_eq!(pid_of_netns(&ns), Some(std::process::id()));
        assert!(ns.ends_with("-gate-way-"), "{ns}");
        let ifname = ifname("wg");
        assert!(ifname.len() <= 15, "{ifname}");
        assert_eq!(pid_of_ifname(&ifname), Some(std::process::id()));
    }

    #[test]
    fn largest_pid_fits() {
        // Linux's pid_max limit is 2^22.
        let digits = base36(4_194_304, 5);
        assert_eq!(u32::from_str_radix(&digits, 36).unwrap(), 4_194_304);
    }

    #[test]
    fn foreign_names_are_not_ours() {
        assert_eq!(pid_of_netns("blue"), None);
        assert_eq!(pid_of_netns("fy-x-1-a"), None);
        assert_eq!(pid_of_ifname("eth0"), None);
        assert_eq!(pid_of_dir("ferry-lab-x"), None);
        assert_eq!(pid_of_dir("ferry-lab-12-"), None);
        assert_eq!(pid_of_dir("other-12-abc"), None);
    }

    #[test]
    fn folder_names_carry_their_pid() {
        let name = format!("{}AbC123", dir_prefix());
        assert_eq!(pid_of_dir(&name), Some(std::process::id()));
    }
}
