//! A STUN Binding client (RFC 8489): ask a server (the relays run one) which
//! public address and port our datagrams come from, the server-reflexive
//! candidate for direct paths.
//!
//! The codec is sans IO: [`binding_request`] builds a request with a
//! transaction id the caller supplies (so that the caller owns randomness,
//! and an endpoint that sends from its WireGuard socket can match answers
//! arriving there), [`parse_binding_response`] checks an answer against it.
//! [`query`] is the small async helper around them for a socket of its own.
//!
//! It uses the `stun-types` crate, as the relay's server does (see
//! `relay/src/stun/mod.rs` for why that one). Two things are added on top,
//! the same two the server adds: the framing checks the crate leaves to the
//! caller (it parses attributes to the end of the buffer rather than to the
//! length field), and silencing its `tracing` warnings while it parses: it
//! logs every malformed message at WARN, and whoever can send us datagrams
//! could fill our log.

mod query;

use std::{net::SocketAddr, sync::OnceLock};

use stun_types::{
    attribute::{ErrorCode, XorMappedAddress},
    message::{
        BINDING, MAGIC_COOKIE, Message, MessageClass, MessageHeader, MessageType, MessageWrite as _,
        MessageWriteVec, StunParseError, TransactionId,
    },
};

pub use query::{INITIAL_RTO, QueryError, query};

/// The IANA port for STUN over UDP.
pub const DEFAULT_PORT: u16 = 3478;

/// The length of a STUN header, and of a Binding request without attributes.
pub const HEADER_LEN: usize = MessageHeader::LENGTH;

/// The transaction id length.
pub const TRANSACTION_LEN: usize = 12;

/// Why a datagram is not the answer to our Binding request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Not a well-formed STUN message (see [`FramingError`] and the codec's
    /// own checks).
    #[error("not a well-formed STUN message: {0}")]
    Malformed(String),
    /// A STUN message of another transaction.
    #[error("a STUN message of another transaction")]
    OtherTransaction,
    /// Our transaction, but not a Binding response (a request or an
    /// indication, or another method).
    #[error("a STUN message that is not a Binding response")]
    NotBindingResponse,
    /// The server answered our request with an error response.
    #[error("the STUN server answered with error {code}: {reason}")]
    ErrorResponse { code: u16, reason: String },
    /// A success response without XOR-MAPPED-ADDRESS.
    #[error("the STUN answer has no XOR-MAPPED-ADDRESS")]
    NoMappedAddress,
}

/// The header checks the codec leaves to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("{len} bytes is shorter than a STUN header (20 bytes)")]
    TooShort { len: usize },
    #[error("the first two bits are not zero")]
    NotStun,
    #[error("no STUN magic cookie")]
    NoMagicCookie,
    #[error("the length field says {declared} bytes of attributes, the datagram has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("the length field {0} is not a multiple of 4")]
    Unaligned(usize),
}

/// A Binding request for `transaction`: a bare 20-byte header.
pub fn binding_request(transaction: &[u8; TRANSACTION_LEN]) -> Vec<u8> {
    Message::builder(
        MessageType::from_class_method(MessageClass::Request, BINDING),
        transaction_id(transaction),
        MessageWriteVec::with_capacity(HEADER_LEN),
    )
    .finish()
}

/// The server-reflexive address in `datagram`, if it is the Binding success
/// response to our request `transaction`. Never panics, whatever the bytes.
pub fn parse_binding_response(
    datagram: &[u8],
    transaction: &[u8; TRANSACTION_LEN],
) -> Result<SocketAddr, ResponseError> {
    check_framing(datagram).map_err(|e| ResponseError::Malformed(e.to_string()))?;
    let message = parse_message(datagram).map_err(malformed)?;
    let ours = transaction_id(transaction);
    if message.transaction_id() != ours {
        return Err(ResponseError::OtherTransaction);
    }
    if message.method() != BINDING {
        return Err(ResponseError::NotBindingResponse);
    }
    match message.class() {
        MessageClass::Success => quietly(|| message.attribute::<XorMappedAddress>())
            .map(|mapped| {
                let addr = mapped.addr(ours);
                SocketAddr::new(addr.ip().to_canonical(), addr.port())
            })
            .map_err(|_| ResponseError::NoMappedAddress),
        MessageClass::Error => {
            let (code, reason) = match quietly(|| message.attribute::<ErrorCode>()) {
                Ok(error) => (error.code(), error.reason().to_owned()),
                Err(_) => (0, "no ERROR-CODE attribute".to_owned()),
            };
            Err(ResponseError::ErrorResponse { code, reason })
        }
        MessageClass::Request | MessageClass::Indication => Err(ResponseError::NotBindingResponse),
    }
}

/// Whether `datagram` is framed like a STUN message (RFC 8489 section 6):
/// enough to tell STUN answers apart from other traffic on a shared socket.
pub fn is_stun(datagram: &[u8]) -> bool {
    check_framing(datagram).is_ok()
}

/// The length field must describe exactly the rest of the datagram, in
/// whole 4-byte words, behind a header with the magic cookie.
pub fn check_framing(datagram: &[u8]) -> Result<(), FramingError> {
    let Some(header) = datagram.first_chunk::<HEADER_LEN>() else {
        return Err(FramingError::TooShort { len: datagram.len() });
    };
    if header[0] & 0xc0 != 0 {
        return Err(FramingError::NotStun);
    }
    if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
        return Err(FramingError::NoMagicCookie);
    }
    let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let actual = datagram.len() - HEADER_LEN;
    if declared != actual {
        return Err(FramingError::LengthMismatch { declared, actual });
    }
    if declared % 4 != 0 {
        return Err(FramingError::Unaligned(declared));
    }
    Ok(())
}

/// `stun_types`' `Message::from_bytes` with its log events dropped (see the
/// module comment). It parses attributes to the end of `datagram`: check
/// the framing first.
pub fn parse_message(datagram: &[u8]) -> Result<Message<'_>, StunParseError> {
    quietly(|| Message::from_bytes(datagram))
}

fn transaction_id(bytes: &[u8; TRANSACTION_LEN]) -> TransactionId {
    let mut wide = [0u8; 16];
    wide[16 - TRANSACTION_LEN..].copy_from_slice(bytes);
    TransactionId::from(u128::from_be_bytes(wide))
}

fn malformed(e: StunParseError) -> ResponseError {
    ResponseError::Malformed(e.to_string())
}

/// Runs `f` with the codec's log events dropped (see the module comment).
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    static SILENT: OnceLock<tracing::Dispatch> = OnceLock::new();
    let silent = SILENT.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    tracing::dispatcher::with_default(silent, f)
}

#[cfg(test)]
mod tests;
