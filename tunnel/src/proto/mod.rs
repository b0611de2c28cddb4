//! The WireGuard protocol as a sans-IO state machine.
//!
//! Everything here is pure: time is an argument (`Instant` for timers, a wall
//! clock [`crate::proto::Tai64N`] source for handshake timestamps), randomness
//! comes from the RNG the caller gives the [`Device`] (indices, ephemerals,
//! jitter, cookie secrets), and results are returned, never sent.

pub mod allowed_ips;
pub mod constants;
pub mod cookie;
pub mod crypto;
pub mod device;
pub mod handshake;
pub mod indices;
pub mod messages;
pub mod peer;
pub mod ratelimit;
pub mod replay;
pub mod session;
pub mod timestamp;

pub use allowed_ips::{AllowedIps, IpNet};
pub use device::{
    Begin, Device, DeviceConfig, DeviceRng, Incoming, Now, PeerConfig, PeerId, PendingOpen, Prepared, Sent,
    Transmit,
};
pub use indices::IndexChange;
pub use messages::{Message, MessageError};
pub use timestamp::Tai64N;
