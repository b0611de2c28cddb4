//! The four WireGuard messages on the wire, parsed without copying.
//!
//! Every field is at a fixed offset; parsing only checks the type word and the
//! length, and the accessors read the fields. Nothing here trusts a field: that
//! is the handshake's and the session's job.

use std::fmt;

pub const INITIATION: u8 = 1;
pub const RESPONSE: u8 = 2;
pub const COOKIE_REPLY: u8 = 3;
pub const TRANSPORT: u8 = 4;

pub const INITIATION_LEN: usize = 148;
pub const RESPONSE_LEN: usize = 92;
pub const COOKIE_REPLY_LEN: usize = 64;
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// A transport message carries at least the 16-byte tag of an empty packet.
pub const TRANSPORT_MIN_LEN: usize = TRANSPORT_HEADER_LEN + 16;

/// Why bytes are not a WireGuard message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("{0} bytes is too short for a WireGuard message")]
    TooShort(usize),
    #[error("unknown message type word {0:#010x}")]
    UnknownType(u32),
    #[error("a {kind} message of {len} bytes has the wrong length")]
    BadLength { kind: &'static str, len: usize },
}

/// A parsed message, borrowing the datagram.
#[derive(Clone, Copy)]
pub enum Message<'a> {
    Initiation(Initiation<'a>),
    Response(Response<'a>),
    CookieReply(CookieReply<'a>),
    Transport(Transport<'a>),
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Initiation(m) => write!(f, "Initiation(sender {:#x})", m.sender()),
            Message::Response(m) => {
                write!(f, "Response(sender {:#x}, receiver {:#x})", m.sender(), m.receiver())
            }
            Message::CookieReply(m) => write!(f, "CookieReply(receiver {:#x})", m.receiver()),
            Message::Transport(m) => {
                write!(f, "Transport(receiver {:#x}, counter {})", m.receiver(), m.counter())
            }
        }
    }
}

/// Whether a datagram starts with a WireGuard type word (1 to 4 as a
/// little-endian u32, so the three bytes after the type are zero), whatever
/// its length. Other datagrams on the WireGuard socket belong to someone else
/// (path probes, STUN answers); this is how the shell tells them apart
/// before the device parses anything.
pub fn is_wireguard(bytes: &[u8]) -> bool {
    bytes.first_chunk::<4>().is_some_and(|head| matches!(u32::from_le_bytes(*head), 1..=4))
}

/// Parses a datagram. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, MessageError> {
    let Some(head) = bytes.first_chunk::<4>() else {
        return Err(MessageError::TooShort(bytes.len()));
    };
    let word = u32::from_le_bytes(*head);
    let len = bytes.len();
    match word {
        1 => bytes
            .first_chunk::<INITIATION_LEN>()
            .filter(|_| len == INITIATION_LEN)
            .map(|b| Message::Initiation(Initiation(b)))
            .ok_or(MessageError::BadLength { kind: "handshake initiation", len }),
        2 => bytes
            .first_chunk::<RESPONSE_LEN>()
            .filter(|_| len == RESPONSE_LEN)
            .map(|b| Message::Response(Response(b)))
            .ok_or(MessageError::BadLength { kind: "handshake response", len }),
        3 => bytes
            .first_chunk::<COOKIE_REPLY_LEN>()
            .filter(|_| len == COOKIE_REPLY_LEN)
            .map(|b| Message::CookieReply(CookieReply(b)))
            .ok_or(MessageError::BadLength { kind: "cookie reply", len }),
        // Senders pad to 16 but never beyond their MTU, so a full-size packet
        // need not be aligned (1420 + 32 = 1452 with the default MTU); the
        // AEAD tag is what authenticates the length.
        4 if len >= TRANSPORT_MIN_LEN => Ok(Message::Transport(Transport(bytes))),
        4 => Err(MessageError::BadLength { kind: "transport", len }),
        other => Err(MessageError::UnknownType(other)),
    }
}

#[allow(clippy::expect_used, reason = "a slice of four bytes always converts to [u8; 4]")]
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("fixed offset"))
}

#[allow(clippy::expect_used, reason = "a slice of N bytes always converts to [u8; N]")]
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> &[u8; N] {
    bytes[at..at + N].try_into().expect("fixed offset")
}

/// Handshake initiation (type 1).
#[derive(Clone, Copy)]
pub struct Initiation<'a>(pub &'a [u8; INITIATION_LEN]);

impl<'a> Initiation<'a> {
    pub const MAC1_OFFSET: usize = 116;
    pub const MAC2_OFFSET: usize = 132;

    pub fn sender(&self) -> u32 {
        u32_at(self.0, 4)
    }
    pub fn ephemeral(&self) -> &'a [u8; 32] {
        array_at(self.0, 8)
    }
    pub fn encrypted_static(&self) -> &'a [u8; 48] {
        array_at(self.0, 40)
    }
    pub fn encrypted_timestamp(&self) -> &'a [u8; 28] {
        array_at(self.0, 88)
    }
    pub fn mac1(&self) -> &'a [u8; 16] {
        array_at(self.0, Self::MAC1_OFFSET)
    }
    pub fn mac2(&self) -> &'a [u8; 16] {
        array_at(self.0, Self::MAC2_OFFSET)
    }
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// Handshake response (type 2).
#[derive(Clone, Copy)]
pub struct Response<'a>(pub &'a [u8; RESPONSE_LEN]);

impl<'a> Response<'a> {
    pub const MAC1_OFFSET: usize = 60;
    pub const MAC2_OFFSET: usize = 76;

    pub fn sender(&self) -> u32 {
        u32_at(self.0, 4)
    }
    pub fn receiver(&self) -> u32 {
        u32_at(self.0, 8)
    }
    pub fn ephemeral(&self) -> &'a [u8; 32] {
        array_at(self.0, 12)
    }
    pub fn encrypted_nothing(&self) -> &'a [u8; 16] {
        array_at(self.0, 44)
    }
    pub fn mac1(&self) -> &'a [u8; 16] {
        array_at(self.0, Self::MAC1_OFFSET)
    }
    pub fn mac2(&self) -> &'a [u8; 16] {
        array_at(self.0, Self::MAC2_OFFSET)
    }
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// Cookie reply (type 3).
#[derive(Clone, Copy)]
pub struct CookieReply<'a>(pub &'a [u8; COOKIE_REPLY_LEN]);

impl<'a> CookieReply<'a> {
    pub fn receiver(&self) -> u32 {
        u32_at(self.0, 4)
    }
    pub fn nonce(&self) -> &'a [u8; 24] {
        array_at(self.0, 8)
    }
    pub fn encrypted_cookie(&self) -> &'a [u8; 32] {
        array_at(self.0, 32)
    }
}

/// Transport data (type 4).
#[derive(Clone, Copy)]
pub struct Transport<'a>(pub &'a [u8]);

impl<'a> Transport<'a> {
    pub fn receiver(&self) -> u32 {
        u32_at(self.0, 4)
    }
    pub fn counter(&self) -> u64 {
        u64::from_le_bytes(*array_at(self.0, 8))
    }
    /// The encrypted packet and its tag.
    pub fn encrypted(&self) -> &'a [u8] {
        &self.0[TRANSPORT_HEADER_LEN..]
    }
}

/// Writes a message's type word.
pub(crate) fn write_type(out: &mut [u8], message_type: u8) {
    out[..4].copy_from_slice(&u32::from(message_type).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn message(message_type: u8, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len.max(4)];
        write_type(&mut bytes, message_type);
        bytes.truncate(len);
        bytes
    }

    #[test]
    fn exact_lengths_parse() {
        assert!(matches!(parse(&message(1, 148)), Ok(Message::Initiation(_))));
        assert!(matches!(parse(&message(2, 92)), Ok(Message::Response(_))));
        assert!(matches!(parse(&message(3, 64)), Ok(Message::CookieReply(_))));
        assert!(matches!(parse(&message(4, 32)), Ok(Message::Transport(_))));
        assert!(matches!(parse(&message(4, 1456)), Ok(Message::Transport(_))));
    }

    #[test]
    fn wrong_lengths_and_types_are_named() {
        assert_eq!(parse(&[1, 0]).unwrap_err(), MessageError::TooShort(2));
        assert_eq!(
            parse(&message(1, 149)).unwrap_err(),
            MessageError::BadLength { kind: "handshake initiation", len: 149 }
        );
        assert_eq!(
            parse(&message(4, 31)).unwrap_err(),
            MessageError::BadLength { kind: "transport", len: 31 }
        );
        // A full packet padded only to a 1420-byte MTU.
        assert!(matches!(parse(&message(4, 1452)), Ok(Message::Transport(_))));
        assert_eq!(
            parse(&message(4, 16)).unwrap_err(),
            MessageError::BadLength { kind: "transport", len: 16 }
        );
        assert_eq!(parse(&message(5, 64)).unwrap_err(), MessageError::UnknownType(5));
        let mut reserved = message(1, 148);
        reserved[3] = 1;
        assert_eq!(parse(&reserved).unwrap_err(), MessageError::UnknownType(0x0100_0001));
    }

    #[test]
    fn only_the_four_type_words_are_wireguard() {
        for kind in 1..=4u8 {
            assert!(is_wireguard(&[kind, 0, 0, 0]));
            assert!(is_wireguard(&message(kind, 148)));
        }
        // A path probe (type 16), STUN (first byte 0 or 1 with a non-zero
        // second byte), reserved bytes set, too short, nothing.
        assert!(!is_wireguard(&[16, 0, 0, 0, 9]));
        assert!(!is_wireguard(&[0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42]));
        assert!(!is_wireguard(&[1, 1, 0, 0]));
        assert!(!is_wireguard(&[4, 0, 0, 1]));
        assert!(!is_wireguard(&[0, 0, 0, 0]));
        assert!(!is_wireguard(&[1, 0, 0]));
        assert!(!is_wireguard(&[]));
    }

    #[test]
    fn fields_are_read_little_endian_at_their_offsets() {
        let mut bytes = message(4, 48);
        bytes[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        bytes[8..16].copy_from_slice(&42u64.to_le_bytes());
        let Ok(Message::Transport(t)) = parse(&bytes) else { panic!() };
        assert_eq!((t.receiver(), t.counter(), t.encrypted().len()), (0xdead_beef, 42, 32));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            // Whatever parses is WireGuard to the demultiplexer too.
            if parse(&bytes).is_ok() {
                prop_assert!(is_wireguard(&bytes));
            }
        }
    }
}
