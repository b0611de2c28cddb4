//! The WireGuard protocol as a sans-IO state machine.
//!
//! Everything here is pure: time is an argument (`Instant` for timers, a wall
//! clock [`crate::proto::Tai64N`] source for handshake timestamps), randomness
//! comes from the OS RNG only for key generation and indices, and results are
//! returned, never sent.

pub mod allowed_ips;
pub mod constants;
pub mod cookie;
pub mod crypto;
pub mod handshake;
pub mod messages;
pub mod ratelimit;
pub mod replay;
pub mod session;
pub mod timestamp;

pub use allowed_ips::AllowedIps;
pub use messages::{Message, MessageError};
pub use timestamp::Tai64N;
