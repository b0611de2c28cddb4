//! The customer's and installer's commands: `remote`, `approve`, `deny`,
//! `end`, `sessions`, `diagnose`, `enroll`, `install`, `panel`.

pub mod diagnose;
pub mod enroll;
pub mod http;
pub mod install;
pub mod panel;

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    local::{
        Request, Response, SessionReport,
        client::{self, ClientError},
    },
    state::{Store, StoreError},
};

/// Where the commands find the daemon's state and socket.
#[derive(Debug, Clone)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// CLOCK_BOOTTIME in milliseconds: monotonic and counting suspend, so no
/// step of the wall clock (a bad RTC, NTP, `date -s`) moves it. For what
/// must last a span of time rather than end at a time of day.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration;
    // CLOCK_BOOTTIME exists on every kernel the gateway runs on (2.6.39+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Not on Linux; 0 makes every span look just begun.
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1000).saturating_add(ts.tv_nsec as u64 / 1_000_000)
}

/// Opens the Store for a command while the daemon is stopped.
pub fn open_store(paths: &Paths) -> Result<Store> {
    match Store::open(&paths.data_dir) {
        Ok(store) => Ok(store),
        Err(StoreError::Locked { .. }) => bail!(
            "the ferry-gateway daemon holds the state in {} but does not answer on {}; \
             check `systemctl status ferry-gateway` (or pass the daemon's --socket)",
            paths.data_dir.display(),
            paths.socket.display()
        ),
        Err(e) => {
            Err(e).with_context(|| format!("opening the gateway state in {}", paths.data_dir.display()))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum RemoteAction {
    /// Allow remote maintenance: technicians can start sessions (each one
    /// that needs approval still waits for `ferry-gateway approve`).
    On,
    /// Forbid remote maintenance: ends every session at once.
    Off,
    /// Show whether remote maintenance is allowed.
    Status,
}

fn switch_line(on: bool) -> String {
    format!("remote maintenance: {}", if on { "ON" } else { "OFF" })
}

pub fn remote(paths: &Paths, action: RemoteAction) -> Result<()> {
    let request = match action {
        RemoteAction::On => Request::Remote { on: true },
        RemoteAction::Off => Request::Remote { on: false },
        RemoteAction::Status => Request::Status,
    };
    let (on, changed, daemon) = match client::call(&paths.socket, &request) {
        Ok(Response::Switch { on, changed }) => (on, changed, true),
        Ok(Response::Error { message }) => bail!("the daemon refused: {message}"),
        Ok(other) => bail!("unexpected answer from the daemon: {other:?}"),
        Err(ClientError::NotRunning { .. }) => {
            // The daemon is stopped, so the database is free: apply it there,
            // and the daemon starts with it.
            let store = open_store(paths)?;
            let (on, changed) = match action {
                RemoteAction::Status => (store.switch_on(), false),
                RemoteAction::On | RemoteAction::Off => {
                    let on = action == RemoteAction::On;
                    let changed = store.set_switch(on, now_ms())?;
                    (on, changed)
                }
            };
            (on, changed, false)
        }
        Err(e) => return Err(e.into()),
    };
    println!("{}", switch_line(on));
    if action != RemoteAction::Status {
        if !changed {
            println!("(it already was)");
        }
        if on {
            println!(
                "WARNING: technicians can now start remote maintenance sessions to this machine network.\n\
                 Sessions that require your approval still wait for `ferry-gateway approve <SESSION>`.\n\
                 `ferry-gateway remote off` ends every session at once."
            );
        } else if daemon && changed {
            println!("every remote maintenance session has been ended");
        }
    }
    if !daemon && action == RemoteAction::Status {
        println!("(the ferry-gateway daemon is not running; this is the stored setting it starts with)");
    } else if !daemon {
        println!(
            "(the ferry-gateway daemon is not running; the setting is stored in {} and applies when it starts)",
            paths.data_dir.display()
        );
    }
    Ok(())
}

/// What the customer decides on one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decide {
    Approve,
    Deny,
    End,
}

/// `approve`, `deny` and `end`: only the daemon knows which sessions wait
/// or run.
pub fn decide(paths: &Paths, session: u64, decide: Decide) -> Result<()> {
    let request = match decide {
        Decide::Approve => Request::Approve { session },
        Decide::Deny => Request::Deny { session },
        Decide::End => Request::End { session },
    };
    match client::call(&paths.socket, &request) {
        Ok(Response::Done { message }) => {
            println!("{message}");
            Ok(())
        }
        Ok(Response::Error { message }) => bail!("{message}"),
        Ok(other) => bail!("unexpected answer from the daemon: {other:?}"),
        Err(ClientError::NotRunning { path }) => bail!(
            "the ferry-gateway daemon is not running (no control socket at {}): only the running daemon \
             knows which sessions wait for approval or run; start it with `systemctl start ferry-gateway`",
            path.display()
        ),
        Err(e) => Err(e.into()),
    }
}

pub fn sessions(paths: &Paths, json: bool) -> Result<()> {
    let sessions = match client::call(&paths.socket, &Request::Sessions) {
        Ok(Response::Sessions { sessions }) => sessions,
        Ok(Response::Error { message }) => bail!("{message}"),
        Ok(other) => bail!("unexpected answer from the daemon: {other:?}"),
        Err(ClientError::NotRunning { path }) => bail!(
            "the ferry-gateway daemon is not running (no control socket at {}), so there are no sessions",
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
    } else {
        print!("{}", session_table(&sessions, now_ms()));
    }
    Ok(())
}

pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// The readable `sessions` output.
pub fn session_table(sessions: &[SessionReport], now_ms: u64) -> String {
    use std::fmt::Write as _;
    if sessions.is_empty() {
        return "no sessions\n".into();
    }
    let mut out = String::new();
    let rows: Vec<[String; 6]> = sessions
        .iter()
        .map(|s| {
            // The daemon's count by the cloud's clock; this machine's wall
            // clock only for a daemon that did not give one.
            let left = s.left_ms.unwrap_or_else(|| s.expires_ms.saturating_sub(now_ms));
            let expires = if left > 0 {
                format!("in {}", human_duration(Duration::from_millis(left)))
            } else {
                "past".into()
            };
            [
                s.id.to_string(),
                s.name.clone(),
                s.state.clone(),
                expires,
                if s.approval_required { "required".into() } else { "no".into() },
                format!("{} peer(s), {} target(s)", s.peers.len(), s.targets.len()),
            ]
        })
        .collect();
    let header = ["SESSION", "NAME", "STATE", "EXPIRES", "APPROVAL", "CONTENTS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        text
    };
    let _ = writeln!(out, "{}", line(&header.map(String::from)));
    for (row, session) in rows.iter().zip(sessions) {
        let _ = writeln!(out, "{}", line(row));
        for peer in &session.peers {
            let handshake = peer
                .last_handshake_s_ago
                .map_or("never".to_string(), |s| format!("{} ago", human_duration(Duration::from_secs(s))));
            let mut why = Vec::new();
            why.extend(peer.path_why.clone());
            why.extend(peer.rtt_us.map(|us| format!("rtt {:.1} ms", us as f64 / 1000.0)));
            let _ = writeln!(
                out,
                "    peer {} ({}) at {} via {}{}{}, handshake {}, rx {}, tx {}",
                peer.user,
                peer.public_key,
                peer.tunnel_address,
                peer.transport,
                peer.endpoint.as_deref().map(|e| format!(" from {e}")).unwrap_or_default(),
                if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) },
                handshake,
                human_bytes(peer.rx_bytes),
                human_bytes(peer.tx_bytes),
            );
        }
        for target in &session.targets {
            let _ = writeln!(
                out,
                "    target {}: {} -> {} {} ports {}, to target {}, from target {}",
                target.name,
                target.proxy_address,
                target.address,
                target.protocol,
                target.ports,
                human_bytes(target.to_target_bytes),
                human_bytes(target.from_target_bytes),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::{PeerReport, TargetReport};

    #[test]
    fn the_session_table_is_readable() {
        assert_eq!(session_table(&[], 0), "no sessions\n");
        let session = SessionReport {
            id: 42,
            name: "press line 3".into(),
            started_by: Some("tech".into()),
            max_duration_s: Some(3600),
            state: "waiting_for_approval".into(),
            expires_ms: 3_600_000 + 5_000,
            left_ms: None,
            approval_required: true,
            peers: vec![PeerReport {
                user: "tech".into(),
                public_key: "AAAA".into(),
                tunnel_address: "100.64.0.2".into(),
                endpoint: Some("192.0.2.1:40000".into()),
                transport: "direct".into(),
                path_why: Some("verified".into()),
                rtt_us: Some(3_300),
                last_handshake_s_ago: Some(12),
                rx_bytes: 2048,
                tx_bytes: 10,
            }],
            targets: vec![TargetReport {
                name: "plc".into(),
                proxy_address: "100.64.1.1".into(),
                address: "192.168.0.10".into(),
                protocol: "tcp".into(),
                ports: "502".into(),
                to_target_bytes: 0,
                from_target_bytes: 0,
            }],
        };
        let table = session_table(&[session], 5_000);
        assert!(table.starts_with("SESSION  NAME"), "{table}");
        assert!(table.contains("42       press line 3  waiting_for_approval  in 1h00m"), "{table}");
        assert!(
            table.contains("via direct from 192.0.2.1:40000 (verified, rtt 3.3 ms), handshake 12s ago, rx 2.0 KiB, tx 10 B"),
            "{table}"
        );
        assert!(table.contains("target plc: 100.64.1.1 -> 192.168.0.10 tcp ports 502"), "{table}");
    }
}
