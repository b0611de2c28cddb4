//! Checks a decoded message must pass before anyone acts on it.
//!
//! Decoding guarantees shape (types, keys, subnets); these checks bound what a
//! well-formed but hostile or buggy peer could make the other side store,
//! log or show: lengths, counts, port ranges, URLs, duplicates.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;

/// Longest name (session, target, user), in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest software version string, in characters.
pub const MAX_VERSION_CHARS: usize = 64;
/// Longest bearer token, in characters.
pub const MAX_TOKEN_CHARS: usize = 256;
/// Longest WebSocket URL, in characters.
pub const MAX_URL_CHARS: usize = 2048;
/// Longest certificate fingerprint: 32 hex byte pairs joined by colons.
pub const MAX_FINGERPRINT_CHARS: usize = 95;
/// Longest free-text reason or error message, in characters.
pub const MAX_TEXT_CHARS: usize = 1024;
/// Most sessions, allocations or peers (counted over the whole message) in one
/// message, and most targets per session or port ranges per target.
pub const MAX_ITEMS: usize = 4096;

/// A message that decoded but breaks one of the protocol's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {problem}")]
pub struct InvalidMessage {
    /// Where in the message, e.g. `sessions[2].targets[0].ports[1]`.
    pub field: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("must not be empty")]
    Empty,
    #[error("{len} characters, at most {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("contains control characters")]
    ControlCharacters,
    #[error("{count} entries, at most {max} allowed")]
    TooMany { count: usize, max: usize },
    #[error("port range {first}-{last} must satisfy 1 <= first <= last")]
    PortRange { first: u16, last: u16 },
    #[error("ports are only meaningful for tcp and udp")]
    PortsNotApplicable,
    #[error("must start with ws:// or wss://")]
    NotWebSocketUrl,
    #[error("not a SHA-256 fingerprint (32 hex byte pairs like AB:CD:...)")]
    NotFingerprint,
    #[error("port 0 is not an endpoint")]
    PortZero,
    #[error("not a unicast address (unspecified, multicast or broadcast)")]
    NotUnicast,
    #[error("duplicate entry {0}")]
    Duplicate(String),
}

/// Implemented by every message and every part of one.
pub trait Validate {
    fn validate(&self) -> Result<(), InvalidMessage>;
}

/// Builds field paths lazily: they are only formatted when a check fails.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'static str),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    pub(crate) fn field<'b>(&'b self, name: &'static str) -> Path<'b> {
        Path::Field(self, name)
    }

    pub(crate) fn index<'b>(&'b self, i: usize) -> Path<'b> {
        Path::Index(self, i)
    }

    pub(crate) fn fail(&self, problem: Problem) -> InvalidMessage {
        InvalidMessage { field: self.to_string(), problem }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Non-empty, at most `max` characters, and no control characters: these
/// strings end up in logs and on screens, where a newline or an escape
/// sequence could forge lines.
pub(crate) fn text(path: Path<'_>, value: &str, max: usize) -> Result<(), InvalidMessage> {
    if value.is_empty() {
        return Err(path.fail(Problem::Empty));
    }
    bounded_text(path, value, max)
}

/// Like [`text`] but may be empty.
pub(crate) fn bounded_text(path: Path<'_>, value: &str, max: usize) -> Result<(), InvalidMessage> {
    // Counting bytes first keeps a megabyte string from being walked twice.
    if value.len() > max * 4 || value.chars().count() > max {
        return Err(path.fail(Problem::TooLong { len: value.chars().count(), max }));
    }
    if value.chars().any(char::is_control) {
        return Err(path.fail(Problem::ControlCharacters));
    }
    Ok(())
}

/// Tokens are opaque to this crate, but never empty and never huge.
pub(crate) fn token(path: Path<'_>, value: &str) -> Result<(), InvalidMessage> {
    text(path, value, MAX_TOKEN_CHARS)
}

pub(crate) fn websocket_url(path: Path<'_>, value: &str) -> Result<(), InvalidMessage> {
    text(path, value, MAX_URL_CHARS)?;
    let lower = value.get(..6).unwrap_or(value).to_ascii_lowercase();
    let rest = if lower.starts_with("wss://") {
        &value[6..]
    } else if lower.starts_with("ws://") {
        &value[5..]
    } else {
        return Err(path.fail(Problem::NotWebSocketUrl));
    };
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(path.fail(Problem::NotWebSocketUrl));
    }
    Ok(())
}

/// A certificate's SHA-256 fingerprint as `crate::pin::format_fingerprint`
/// writes it (or any form `parse_fingerprint` reads).
pub(crate) fn fingerprint(path: Path<'_>, value: &str) -> Result<(), InvalidMessage> {
    text(path, value, MAX_FINGERPRINT_CHARS)?;
    if crate::pin::parse_fingerprint(value).is_none() {
        return Err(path.fail(Problem::NotFingerprint));
    }
    Ok(())
}

pub(crate) fn count(path: Path<'_>, count: usize, max: usize) -> Result<(), InvalidMessage> {
    if count > max {
        return Err(path.fail(Problem::TooMany { count, max }));
    }
    Ok(())
}

pub(crate) fn endpoint(path: Path<'_>, addr: &std::net::SocketAddr) -> Result<(), InvalidMessage> {
    if addr.port() == 0 {
        return Err(path.fail(Problem::PortZero));
    }
    Ok(())
}

/// An address one host can send to: a port, and not the unspecified, a
/// multicast or the broadcast address. (Loopback is allowed: a relay and its
/// peers on one machine is a legitimate test setup.)
pub(crate) fn unicast_endpoint(path: Path<'_>, addr: &std::net::SocketAddr) -> Result<(), InvalidMessage> {
    endpoint(path, addr)?;
    let ip = addr.ip().to_canonical();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(path.fail(Problem::NotUnicast));
    }
    Ok(())
}

/// Fails on the first key seen twice.
pub(crate) fn unique<K: Hash + Eq + fmt::Display>(
    path: Path<'_>,
    keys: impl IntoIterator<Item = K>,
) -> Result<(), InvalidMessage> {
    let mut seen = HashSet::new();
    for key in keys {
        if let Some(key) = seen.replace(key) {
            return Err(path.fail(Problem::Duplicate(key.to_string())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_accessors() {
        let root = Path::Root;
        let sessions = root.field("sessions");
        let s2 = sessions.index(2);
        let targets = s2.field("targets");
        let t0 = targets.index(0);
        assert_eq!(t0.field("name").to_string(), "sessions[2].targets[0].name");
    }

    #[test]
    fn text_limits() {
        let p = Path::Root.field("name");
        assert!(text(p, "plc-1", MAX_NAME_CHARS).is_ok());
        assert_eq!(text(p, "", 5).unwrap_err().problem, Problem::Empty);
        assert!(matches!(text(p, "abcdef", 5).unwrap_err().problem, Problem::TooLong { len: 6, max: 5 }));
        // Characters, not bytes: five umlauts are ten bytes.
        assert!(text(p, "ääääää", 6).is_ok());
        assert_eq!(text(p, "a\nb", 5).unwrap_err().problem, Problem::ControlCharacters);
        assert_eq!(text(p, "a\u{1b}[2J", 9).unwrap_err().problem, Problem::ControlCharacters);
        assert!(bounded_text(p, "", 5).is_ok());
    }

    #[test]
    fn websocket_urls() {
        let p = Path::Root.field("websocket_url");
        for good in ["ws://relay.example:8080/ws", "wss://192.0.2.1/x", "WSS://relay.example"] {
            assert!(websocket_url(p, good).is_ok(), "{good}");
        }
        for bad in ["http://relay.example", "wss://", "ws:/x", "wss://a b", "", "ws"] {
            assert!(websocket_url(p, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints() {
        let p = Path::Root.field("websocket_pin");
        let good = crate::pin::format_fingerprint(&[0xab; 32]);
        assert!(fingerprint(p, &good).is_ok());
        assert!(fingerprint(p, &good.replace(':', "").to_lowercase()).is_ok());
        for bad in ["", "AB:CD", "zz", &format!("{good}:00"), &format!("{good}\n")] {
            assert!(fingerprint(p, bad).is_err(), "{bad:?}");
        }
        assert_eq!(fingerprint(p, "AB:CD").unwrap_err().problem, Problem::NotFingerprint);
    }

    #[test]
    fn duplicates() {
        let p = Path::Root.field("ids");
        assert!(unique(p, [1, 2, 3]).is_ok());
        assert_eq!(unique(p, [1, 2, 1]).unwrap_err().problem, Problem::Duplicate("1".into()));
    }
}
