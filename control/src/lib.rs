//! Ferry's control channel: the versioned protocol between the cloud and the
//! gateways and relays, spoken over WebSocket text frames, one JSON message
//! per frame. See `README.md` next to this crate for the sequences.
//!
//! Gateways and relays connect out to the cloud. The cloud pushes the whole
//! desired state, with a revision, on every connect and every change; peers
//! send events. A receiver calls [`decode_valid`] on every frame.

// Moved to ferry-connect, which the gateway, the relay and the client share;
// re-exported so that `ferry_control::{backoff, pin}` keep working.
pub use ferry_connect::backoff;
#[cfg(feature = "client")]
pub mod client;
pub mod cloud_clock;
pub mod codec;
mod common;
pub mod gateway;
pub mod ids;
#[cfg(feature = "client")]
pub mod send_state;
// The fingerprint text functions are always there: message validation needs
// them; the TLS verifier itself needs the `pin` feature.
pub use ferry_connect::pin;
pub mod relay;
pub mod validate;

/// The version every frame carries as `v`. A change that an older peer could
/// misread bumps it; peers refuse frames of any other version.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest frame either side accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

pub use backoff::{Backoff, backoff_delay};
pub use codec::{DecodeError, Message, decode, decode_valid, encode};
pub use common::{Applied, ErrorCode, ErrorMessage, ServerHello, Welcome};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use ids::{
    AllocationId, Challenge, ConfigId, GatewayId, IdentityKey, ParseError, RelayId, SessionId,
    SignatureBytes, Subnet, Token, WgKey,
};
pub use validate::{InvalidMessage, Problem, Validate};
