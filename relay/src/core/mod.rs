//! The relay's protocol logic, sans IO: handshake validation and the binding
//! state machine of an allocation. Sockets, XDP maps and WebSocket
//! connections live in the runtime around it.

pub mod allocation;
pub mod handshake;

pub use allocation::{Allocation, Decision, DropReason, PeerAddr, Timeouts};
pub use handshake::{Classified, Invalid, Side, Validator};

/// Time as the state machine sees it (tokio's, so tests can pause it).
pub type Instant = std::time::Instant;

#[cfg(test)]
mod tests;
