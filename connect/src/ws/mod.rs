//! The WebSocket relay, client side, for sites that only let TCP 443 out.
//!
//! The relay's WebSocket listener takes one WireGuard datagram per binary
//! frame, authenticated by the allocation's token in
//! `Authorization: Bearer`. The framing limits here are shared by both ends:
//! the relay's server imports them, so they cannot drift apart.
//!
//! - [`dial`]: one connection, `ws://` or `wss://` with a pinned certificate;
//! - [`WsRelay`]: a datagram transport over one kept-up, reconnecting
//!   connection;
//! - [`bridge`]: the `ws-bridge` program, a local UDP socket for a stock
//!   WireGuard carried over a [`WsRelay`].

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub mod bridge;
mod dial;
mod relay;

pub use dial::{CONNECT_TIMEOUT, ConnectError, WsStream, dial};
pub use relay::{
    DEFAULT_DEAD_AFTER, DEFAULT_KEEPALIVE, DEFAULT_QUEUE, Dropped, Incoming, LinkError, OptionsError,
    WsRelay, WsRelayOptions, WsState, WsStats,
};

/// The largest WireGuard datagram (the UDP payload limit), and so the largest
/// frame and message either end accepts.
pub const MAX_DATAGRAM: usize = 65_535;

/// tungstenite's read buffer, allocated per connection.
pub const READ_BUFFER: usize = 16 * 1024;
/// Outbound frames are batched up to this many bytes before a write.
pub const WRITE_BUFFER: usize = 16 * 1024;
/// The most a connection's WebSocket layer buffers for writing: one
/// largest frame with its header, plus the batching buffer.
pub const MAX_WRITE_BUFFER: usize = WRITE_BUFFER + MAX_DATAGRAM + 64;

/// The WebSocket settings of every relay connection, on both ends: a larger
/// frame is refused by the WebSocket layer before it is buffered whole.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_DATAGRAM))
        .max_frame_size(Some(MAX_DATAGRAM))
}
