//! The WebSocket relay, for sites that only let TCP 443 out.
//!
//! A peer connects to the relay's WebSocket listener with its allocation's
//! token (`Authorization: Bearer <token>`). Each binary frame carries one
//! WireGuard datagram. The listener does not pair anything itself: it hands
//! each connection to the allocation that owns the token, whose state machine
//! treats the connection as one more peer address. So a WebSocket peer and a
//! UDP peer are bridged by the same rules as two UDP peers.

use tokio::sync::mpsc;

/// Identifies one WebSocket connection for the lifetime of the process.
pub type ConnId = u64;

/// What the listener tells an allocation about its WebSocket peers.
#[derive(Debug)]
pub enum WsEvent {
    /// A connection authenticated with the allocation's token. Datagrams for
    /// it go into `outbound`; when that is full the datagram is dropped (and
    /// counted), so a slow peer cannot make the relay buffer without bound.
    Open { conn: ConnId, outbound: mpsc::Sender<Vec<u8>> },
    /// One binary frame, a WireGuard datagram.
    Frame { conn: ConnId, datagram: Vec<u8> },
    /// The connection ended (closed, idle, error).
    Closed { conn: ConnId },
}

/// Finds the allocation a token belongs to.
pub trait Directory: Send + Sync + 'static {
    /// The allocation's event channel, if `token` is a live allocation's.
    fn lookup(&self, token: &str) -> Option<mpsc::Sender<WsEvent>>;
}

/// The `ws-bridge` subcommand's arguments; the client side itself is
/// `ferry_connect::ws` (whose framing limits the listener shares).
pub mod bridge;
/// The listener: [`serve`] on a TCP socket (TLS with [`tls_acceptor`]).
pub mod server;

pub use server::{
    BadFrame, Connections, DEFAULT_PORT, End, MAX_DATAGRAM, WsLimits, certificate_pin, serve, tls_acceptor,
};

#[cfg(test)]
mod tests;
