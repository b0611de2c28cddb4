//! How Ferry endpoints reach out: the pieces the gateway, the relay, the
//! daemons' control channel and the technician's client share.
//!
//! - [`pin`]: trust exactly one server certificate, named by its SHA-256
//!   fingerprint (the fingerprint text always; the TLS verifier with the
//!   `pin` feature).
//! - [`backoff`]: reconnect delays, exponential with full jitter.
//! - `http` (feature `http`): HTTP/1.1 to a cloud over TLS with the pin,
//!   one connection per request, whole answers or streamed ones.
//! - `stun` (feature `stun`): a STUN Binding client, a sans-IO codec plus a
//!   small async query helper, for server-reflexive addresses.
//! - `ws` (feature `ws`): dialling a WebSocket with a pin and a bearer
//!   token, the WebSocket relay transport [`ws::WsRelay`] and the
//!   `ws-bridge` program logic on top of it.

pub mod backoff;
#[cfg(feature = "http")]
pub mod http;
pub mod pin;
#[cfg(feature = "stun")]
pub mod stun;
#[cfg(feature = "ws")]
pub mod ws;

pub use backoff::{Backoff, backoff_delay};
