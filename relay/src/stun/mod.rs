//! The STUN Binding server (RFC 8489): peers ask the relay which public
//! address and port their datagrams come from, for hole punching.
//!
//! [`answer`] is the whole protocol, sans IO: a datagram and its source in,
//! the response (if any) out. [`serve`] is the thin UDP loop around it.
//!
//! What is answered:
//! - a Binding request gets a Binding success response with the same
//!   transaction id, XOR-MAPPED-ADDRESS (IPv4 or IPv6; an IPv4-mapped IPv6
//!   source from a dual-stack socket is reported as the IPv4 address it is),
//!   SOFTWARE, and FINGERPRINT when the request carried one;
//! - a Binding request with comprehension-required attributes gets a 420
//!   error response listing them in UNKNOWN-ATTRIBUTES. This server has no
//!   credentials and no alternate address, so it understands none of them
//!   (USERNAME, MESSAGE-INTEGRITY, PRIORITY, CHANGE-REQUEST, ...); the
//!   comprehension-optional ones (SOFTWARE, FINGERPRINT, ...) are ignored.
//!
//! What is not: indications, responses and other methods (no answer, counted
//! as `not_binding`), and anything malformed (no answer, counted as
//! `malformed`): no magic cookie (so RFC 3489 clients are not served), a
//! length field that disagrees with the datagram or is not a multiple of
//! four, an attribute running past the end, a FINGERPRINT that does not match
//! or is not last.
//!
//! # Why `stun-types`
//!
//! The codec is the `stun-types` crate (part of `stun-proto`, by the
//! librice author) rather than hand-written parsing, after comparing:
//! - `stun-types` is actively maintained (2.0.4, October 2026), written
//!   against RFC 8489 (with 5389 and 3489), `no_std` capable, parses
//!   zero-copy into a `Message` whose `from_bytes` returns a typed
//!   [`StunParseError`] for truncation, bad cookies, bad attribute lengths and
//!   FINGERPRINT mismatches, and has the RFC 5769 vectors in its own tests.
//!   It builds with rustc 1.95 (its MSRV is 1.77).
//! - `stun_codec` (sile) sits on the `bytecodec`/`trackable` framework,
//!   whose incremental decoder state machine is more than a one-datagram
//!   server needs, and it is RFC 5389-era; last release May 2025.
//! - `stun-rs` has not had a release since March 2025 and is 0.1.x.
//!
//! Two things are added on top of the crate, shared with the STUN client in
//! `ferry_connect::stun`: the framing checks above (it parses attributes to
//! the end of the buffer rather than to the length field), and silencing
//! its `tracing` warnings while it parses: it logs every malformed message
//! at WARN, which on a public port would let anyone fill the relay's log.
//! Our own counters and debug logs report malformed input instead. Here
//! only: attributes after FINGERPRINT, which the crate tolerates, are
//! refused.

pub mod server;

use std::{net::SocketAddr, sync::OnceLock};

use ferry_connect::stun::{FramingError, check_framing, parse_message};

use stun_types::{
    attribute::{
        Attribute as _, AttributeStaticType, AttributeType, ErrorCode, Fingerprint, Software,
        UnknownAttributes, XorMappedAddress,
    },
    message::{
        BINDING, Message, MessageClass, MessageHeader, MessageType, MessageWrite, MessageWriteExt,
        MessageWriteVec, TransactionId,
    },
};

pub use server::serve;
pub use stun_types::message::StunParseError;

/// The IANA port for STUN over UDP.
pub const DEFAULT_PORT: u16 = 3478;

/// The SOFTWARE attribute of every response. Short on purpose: a response
/// should not be much larger than the request that caused it.
pub const SOFTWARE: &str = concat!("ferry-relay ", env!("CARGO_PKG_VERSION"));

/// At most this many attribute types are listed in UNKNOWN-ATTRIBUTES, so
/// the error response stays small whatever the request holds.
pub const MAX_UNKNOWN_LISTED: usize = 16;

/// Why a datagram got no answer because it is not a well-formed STUN message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("{len} bytes is shorter than a STUN header (20 bytes)")]
    TooShort { len: usize },
    #[error("not a STUN message: the first two bits are not zero")]
    NotStun,
    #[error("no STUN magic cookie (an RFC 3489 client, or not STUN)")]
    NoMagicCookie,
    #[error("the length field says {declared} bytes of attributes, the datagram has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("the length field {0} is not a multiple of 4")]
    Unaligned(usize),
    #[error("an attribute follows FINGERPRINT")]
    AfterFingerprint,
    #[error("malformed message: {0}")]
    Parse(#[from] StunParseError),
    /// Writing the response failed; not expected for any input.
    #[error("could not write the response: {0}")]
    Write(String),
}

/// What [`respond`] made of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A Binding success response.
    Answered(Vec<u8>),
    /// A 420 error response naming the attributes this server does not
    /// understand.
    ErrorResponse(Vec<u8>),
    /// A well-formed message that is not a Binding request: no answer.
    NotBinding,
    /// Not a well-formed STUN message: no answer.
    Malformed(StunError),
}

impl Outcome {
    /// The `outcome` label of `stun_requests`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Answered(_) => "answered",
            Outcome::ErrorResponse(_) => "error_response",
            Outcome::NotBinding => "not_binding",
            Outcome::Malformed(_) => "malformed",
        }
    }

    /// The datagram to send back, if any.
    pub fn response(&self) -> Option<&[u8]> {
        match self {
            Outcome::Answered(r) | Outcome::ErrorResponse(r) => Some(r),
            Outcome::NotBinding | Outcome::Malformed(_) => None,
        }
    }
}

/// The response to `request` received from `from`: `Ok(Some(response))` for
/// a Binding request (a success or a 420 error response), `Ok(None)` for a
/// well-formed message that gets no answer, and an error for anything that
/// is not a well-formed STUN message. Never panics.
pub fn answer(request: &[u8], from: SocketAddr) -> Result<Option<Vec<u8>>, StunError> {
    match respond(request, from) {
        Outcome::Answered(r) | Outcome::ErrorResponse(r) => Ok(Some(r)),
        Outcome::NotBinding => Ok(None),
        Outcome::Malformed(e) => Err(e),
    }
}

/// Like [`answer`], but says which kind of answer it is, for the metrics.
pub fn respond(request: &[u8], from: SocketAddr) -> Outcome {
    match respond_inner(request, from) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Malformed(e),
    }
}

fn respond_inner(request: &[u8], from: SocketAddr) -> Result<Outcome, StunError> {
    check_framing(request)?;
    let message = parse_message(request)?;

    // The attributes in order; the iterator stops after FINGERPRINT (and
    // after MESSAGE-INTEGRITY, past which RFC 8489 says to ignore all but
    // FINGERPRINT), so anything it did not reach after FINGERPRINT is junk.
    let mut end = MessageHeader::LENGTH;
    let mut last = None;
    let mut unknown: Vec<AttributeType> = Vec::new();
    let mut fingerprint = false;
    for (offset, attribute) in message.iter_attributes() {
        let kind = attribute.get_type();
        end = offset + padded(usize::from(attribute.length()));
        last = Some(kind);
        if kind == Fingerprint::TYPE {
            fingerprint = true;
        } else if kind.comprehension_required() && !unknown.contains(&kind) {
            unknown.push(kind);
        }
    }
    if end != request.len() && last == Some(Fingerprint::TYPE) {
        return Err(StunError::AfterFingerprint);
    }

    if message.class() != MessageClass::Request || message.method() != BINDING {
        return Ok(Outcome::NotBinding);
    }
    let transaction = message.transaction_id();
    let write_err = |e: stun_types::message::StunWriteError| StunError::Write(e.to_string());

    if !unknown.is_empty() {
        unknown.truncate(MAX_UNKNOWN_LISTED);
        let mut out = Message::builder(
            MessageType::from_class_method(MessageClass::Error, BINDING),
            transaction,
            MessageWriteVec::with_capacity(96),
        );
        let error = ErrorCode::builder(ErrorCode::UNKNOWN_ATTRIBUTE)
            .reason("Unknown Attribute")
            .build()
            .map_err(write_err)?;
        out.add_attribute(&error).map_err(write_err)?;
        out.add_attribute(&UnknownAttributes::new(&unknown)).map_err(write_err)?;
        out.add_attribute(software()).map_err(write_err)?;
        if fingerprint {
            out.add_fingerprint().map_err(write_err)?;
        }
        return Ok(Outcome::ErrorResponse(out.finish()));
    }

    Ok(Outcome::Answered(success(transaction, from, fingerprint)?))
}

/// A Binding success response for `transaction` reporting `from`.
fn success(transaction: TransactionId, from: SocketAddr, fingerprint: bool) -> Result<Vec<u8>, StunError> {
    let write_err = |e: stun_types::message::StunWriteError| StunError::Write(e.to_string());
    // A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d; they are IPv4.
    let mapped = SocketAddr::new(from.ip().to_canonical(), from.port());
    let mut out = Message::builder(
        MessageType::from_class_method(MessageClass::Success, BINDING),
        transaction,
        MessageWriteVec::with_capacity(80),
    );
    out.add_attribute(&XorMappedAddress::new(mapped, transaction)).map_err(write_err)?;
    out.add_attribute(software()).map_err(write_err)?;
    if fingerprint {
        out.add_fingerprint().map_err(write_err)?;
    }
    Ok(out.finish())
}

#[allow(
    clippy::expect_used,
    reason = "SOFTWARE is a short constant, far below the attribute's 763-byte limit"
)]
fn software() -> &'static Software {
    static SOFTWARE_ATTRIBUTE: OnceLock<Software> = OnceLock::new();
    SOFTWARE_ATTRIBUTE.get_or_init(|| Software::new(SOFTWARE).expect("SOFTWARE is short UTF-8"))
}

fn padded(len: usize) -> usize {
    4 + len.div_ceil(4) * 4
}

impl From<FramingError> for StunError {
    fn from(e: FramingError) -> Self {
        match e {
            FramingError::TooShort { len } => StunError::TooShort { len },
            FramingError::NotStun => StunError::NotStun,
            FramingError::NoMagicCookie => StunError::NoMagicCookie,
            FramingError::LengthMismatch { declared, actual } => {
                StunError::LengthMismatch { declared, actual }
            }
            FramingError::Unaligned(declared) => StunError::Unaligned(declared),
        }
    }
}

#[cfg(test)]
mod tests;
