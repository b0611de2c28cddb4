//! Ferry's relay as a library: the daemon (`ferry-relay`) is a thin shell over
//! these modules, and tests and fuzz targets drive them directly.
//!
//! - [`core`]: the sans-IO allocation state machine (handshake validation,
//!   bindings, roaming), fed datagrams and time.
//! - [`udp`]: the userspace datagram path, batched with recvmmsg/sendmmsg.
//! - [`xdp`]: mirrors bindings into the XDP forwarder's map.
//! - [`next_hops`]: keeps the forwarder's next-hop cache true (netlink).
//! - [`ws`]: the WebSocket relay. [`stun`]: the STUN Binding server.
//! - [`metrics`]: Prometheus families shared by all of them.
//! - [`state_file`]: the live allocations and bindings on disk, restored at
//!   start so that a restart does not break sessions.

pub mod allocations_file;
pub mod config;
pub mod control;
pub mod core;
pub mod http;
pub mod listeners;
pub mod metrics;
pub mod next_hops;
pub mod runtime;
pub mod state_file;
pub mod stun;
pub mod udp;
pub mod ws;
pub mod xdp;
