//! The protocol's constants, with the values of the WireGuard paper (§6).

use std::time::Duration;

/// After this many messages with one key pair the initiator starts a new
/// handshake.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sent or accepted with a counter at or beyond this.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// The initiator of a key pair starts a new handshake when sending with a key
/// pair this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A key pair this old is never used again.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// How long handshake retries go on before the peer gives up.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// The wait for a handshake response before retrying (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Up to this much random jitter is added to every REKEY_TIMEOUT.
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// A receiver that has sent nothing this long after receiving data sends an
/// empty keepalive.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cookie received in a cookie reply stays usable, and how often a
/// responder changes the secret its cookies are made from.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);
/// The least time between two handshake initiations accepted from one peer.
pub const HANDSHAKE_FLOOD_INTERVAL: Duration = Duration::from_millis(50);

/// Handshake retries before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
pub const MAX_HANDSHAKE_ATTEMPTS: u32 = (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;
