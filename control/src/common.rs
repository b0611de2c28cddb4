//! Messages both channels share.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::Challenge;
use crate::validate::{self, InvalidMessage, MAX_TEXT_CHARS, Path, Validate};

/// The cloud's first frame on every connection.
///
/// The frame's `v` is the cloud's protocol version: a peer that speaks another
/// one learns it here, before it has sent anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerHello {
    /// Fresh for this connection; gateways sign it (relays ignore it).
    pub challenge: Challenge,
    /// Lets a peer without a trustworthy clock notice that it is off. A
    /// gateway measures session end times by it (pinned to its monotonic
    /// clock when this frame is read), never by its own wall clock.
    pub server_time_ms: u64,
}

/// The hello was accepted; desired state follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// The cloud's number for this connection, for matching logs on both ends.
    pub peer_id: u64,
}

/// The cloud refuses or ends the connection; it closes right after sending it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMessage {
    pub code: ErrorCode,
    /// For humans; may be empty.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The peer's protocol version is not spoken here.
    Version,
    /// Unknown identity, bad signature or bad token.
    Unauthorized,
    /// A frame did not decode or validate.
    Malformed,
    /// Another connection of the same gateway or relay took over; this one
    /// should not reconnect in a tight loop against its twin.
    Replaced,
    Internal,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::Version => "version",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Malformed => "malformed",
            ErrorCode::Replaced => "replaced",
            ErrorCode::Internal => "internal",
        })
    }
}

/// The peer has applied the snapshot with this revision (and so every older one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub revision: u64,
}

impl Validate for ServerHello {
    fn validate(&self) -> Result<(), InvalidMessage> {
        Ok(())
    }
}

impl Validate for Welcome {
    fn validate(&self) -> Result<(), InvalidMessage> {
        Ok(())
    }
}

impl Validate for ErrorMessage {
    fn validate(&self) -> Result<(), InvalidMessage> {
        validate::bounded_text(Path::Root.field("message"), &self.message, MAX_TEXT_CHARS)
    }
}

impl Validate for Applied {
    fn validate(&self) -> Result<(), InvalidMessage> {
        Ok(())
    }
}
