//! Ferry's WireGuard engine.
//!
//! [`proto`] is the protocol as a pure state machine: it is fed datagrams,
//! plaintext packets and the current time, and returns datagrams to send and
//! packets to deliver. It reads no clock and owns no socket, so tests can drive
//! every timer and fuzzers can feed it anything. The IO shell that puts it on
//! a TUN device and a UDP socket builds on it.

pub mod config;
pub mod endpoint;
pub mod keys;
pub mod parallel;
pub mod proto;
pub mod uapi;

pub use keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
