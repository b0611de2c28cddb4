//! systemd's readiness protocol (`sd_notify(3)`): a datagram to the socket in
//! `$NOTIFY_SOCKET`. Every function is a no-op when that variable is unset,
//! so a daemon started by hand or under another supervisor behaves the same.
//!
//! With `Type=notify` and `WatchdogSec=` in the unit: call [`ready`] once the
//! daemon serves, [`watchdog`] every [`watchdog_interval`] from a task that
//! only runs while the daemon is healthy, and [`stopping`] on shutdown.

use std::{io, os::unix::net::UnixDatagram, time::Duration};

/// `READY=1`: start-up is complete.
pub fn ready() {
    notify("READY=1");
}

/// `STOPPING=1`: the daemon is shutting down.
pub fn stopping() {
    notify("STOPPING=1");
}

/// `STATUS=...`: a one-line status that `systemctl status` shows.
pub fn status(text: &str) {
    // A newline would start another assignment.
    let line: String = text.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
    notify(&format!("STATUS={line}"));
}

/// `WATCHDOG=1`: the daemon is alive.
pub fn watchdog() {
    notify("WATCHDOG=1");
}

/// How often to call [`watchdog`]: half of systemd's `WatchdogSec`, from
/// `$WATCHDOG_USEC`, when the watchdog is meant for this process
/// (`$WATCHDOG_PID` unset or ours). `None` when there is no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

const MIN_WATCHDOG_PERIOD: Duration = Duration::from_millis(10);

fn interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    // At least 10 ms: half of `WATCHDOG_USEC=1` is zero, and a zero period
    // makes `tokio::time::interval` panic in the daemon's startup; a few
    // microseconds would spin the daemon's loop on the notifications.
    Some(Duration::from_micros(usec / 2).max(MIN_WATCHDOG_PERIOD))
}

fn notify(message: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Some(socket) = socket.to_str() else {
        tracing::debug!("NOTIFY_SOCKET is not UTF-8; not notifying systemd");
        return;
    };
    if let Err(e) = send(socket, message) {
        tracing::debug!(error = %e, socket, message, "sd_notify failed");
    }
}

/// Sends `message` to `socket`: a path, or an abstract name written `@name`.
fn send(socket: &str, message: &str) -> io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        datagram.send_to_addr(message.as_bytes(), &address)?;
    } else {
        datagram.send_to(message.as_bytes(), socket)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        assert_eq!(receive(&socket), "READY=1");
    }

    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("ferry-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        send(&format!("@{name}"), "WATCHDOG=1").unwrap();
        assert_eq!(receive(&socket), "WATCHDOG=1");
    }

    #[test]
    fn watchdog_interval_is_half_and_only_for_us() {
        assert_eq!(interval_from(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
        assert_eq!(interval_from(Some("30000000"), Some("7"), 7), Some(Duration::from_secs(15)));
        assert_eq!(interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(interval_from(None, Some("7"), 7), None);
        assert_eq!(interval_from(Some("0"), None, 7), None);
        assert_eq!(interval_from(Some("soon"), None, 7), None);
    }

    #[test]
    fn the_shortest_watchdog_still_gives_a_period_an_interval_accepts() {
        // The daemons build `tokio::time::interval` from it, which panics on zero.
        for usec in ["1", "2", "3", "20000"] {
            assert_eq!(interval_from(Some(usec), None, 7), Some(MIN_WATCHDOG_PERIOD), "{usec}");
        }
        assert_eq!(interval_from(Some("60000000"), None, 7), Some(Duration::from_secs(30)));
    }

    #[test]
    fn without_notify_socket_nothing_happens() {
        // NOTIFY_SOCKET is not set under `cargo test`; these must not fail or block.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            ready();
            status("line one\nline two");
            watchdog();
            stopping();
        }
    }
}
