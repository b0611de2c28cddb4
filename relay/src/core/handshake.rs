//! The relay's handshake validator: which message a datagram is, and for
//! handshake messages, which peer of the allocation it is addressed to.
//!
//! A WireGuard initiation or response carries mac1, a MAC keyed with the
//! recipient's public key. The relay knows both public keys of an allocation,
//! so it can tell whom a handshake message is for, and so who sent it, without
//! holding any secret. That is a filter, not a proof: public keys are not
//! secret, so anyone who knows them can forge mac1. The allocation commits a
//! binding only when a handshake completes (see `allocation.rs`).

use ferry_tunnel::{
    PublicKey,
    proto::{
        cookie::mac1_key,
        crypto,
        messages::{self, Initiation, Message, Response},
    },
};
use subtle::ConstantTimeEq;

/// One of the two peers of an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Gateway,
    Client,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Gateway, Side::Client];

    pub const fn other(self) -> Side {
        match self {
            Side::Gateway => Side::Client,
            Side::Client => Side::Gateway,
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn name(self) -> &'static str {
        match self {
            Side::Gateway => "gateway",
            Side::Client => "client",
        }
    }
}

/// What a datagram is, as far as the relay needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classified {
    /// A handshake initiation with a valid mac1 for `to`.
    Initiation { to: Side, sender: u32 },
    /// A handshake response with a valid mac1 for `to` (the initiator).
    Response { to: Side, sender: u32, receiver: u32 },
    /// A cookie reply (it has no mac1; only its receiver index routes it).
    CookieReply { receiver: u32 },
    /// A transport message.
    Transport,
}

/// Why a datagram is refused before any binding is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a WireGuard message: {0}")]
    Malformed(messages::MessageError),
    #[error("mac1 is valid for neither peer of the allocation")]
    BadMac1,
}

impl Invalid {
    pub const fn reason(self) -> &'static str {
        match self {
            Invalid::Malformed(_) => "malformed",
            Invalid::BadMac1 => "bad_mac1",
        }
    }
}

/// The mac1 keys of an allocation's two peers.
#[derive(Clone)]
pub struct Validator {
    /// Indexed by [`Side::index`]: the key of messages sent *to* that side.
    mac1_keys: [[u8; 32]; 2],
}

impl Validator {
    pub fn new(gateway: &PublicKey, client: &PublicKey) -> Validator {
        Validator { mac1_keys: [mac1_key(gateway), mac1_key(client)] }
    }

    /// Classifies `datagram`. Never panics, whatever the bytes.
    pub fn classify(&self, datagram: &[u8]) -> Result<Classified, Invalid> {
        match messages::parse(datagram).map_err(Invalid::Malformed)? {
            Message::Initiation(m) => {
                let to = self.addressed_to(m.bytes(), Initiation::MAC1_OFFSET)?;
                Ok(Classified::Initiation { to, sender: m.sender() })
            }
            Message::Response(m) => {
                let to = self.addressed_to(m.bytes(), Response::MAC1_OFFSET)?;
                Ok(Classified::Response { to, sender: m.sender(), receiver: m.receiver() })
            }
            Message::CookieReply(m) => Ok(Classified::CookieReply { receiver: m.receiver() }),
            Message::Transport(_) => Ok(Classified::Transport),
        }
    }

    fn addressed_to(&self, message: &[u8], mac1_offset: usize) -> Result<Side, Invalid> {
        let covered = &message[..mac1_offset];
        let mac1 = &message[mac1_offset..mac1_offset + 16];
        // Both keys are always tried, so the time taken does not say which
        // side a forged message was aimed at.
        let mut found = None;
        for side in Side::BOTH {
            let expected = crypto::mac(&self.mac1_keys[side.index()], &[covered]);
            if bool::from(expected.ct_eq(mac1)) {
                found = Some(side);
            }
        }
        found.ok_or(Invalid::BadMac1)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ferry_tunnel::{PrivateKey, proto::messages::INITIATION_LEN};
    use proptest::prelude::*;

    use super::*;

    /// An initiation-shaped message with a correct mac1 for `to`.
    pub(crate) fn handshake(kind: u8, sender: u32, receiver: u32, to: &PublicKey) -> Vec<u8> {
        let (len, mac1_offset) = match kind {
            1 => (INITIATION_LEN, Initiation::MAC1_OFFSET),
            _ => (messages::RESPONSE_LEN, Response::MAC1_OFFSET),
        };
        let mut m = vec![0u8; len];
        m[0] = kind;
        m[4..8].copy_from_slice(&sender.to_le_bytes());
        if kind == 2 {
            m[8..12].copy_from_slice(&receiver.to_le_bytes());
        }
        let mac = crypto::mac(&mac1_key(to), &[&m[..mac1_offset]]);
        m[mac1_offset..mac1_offset + 16].copy_from_slice(&mac);
        m
    }

    pub(crate) fn keys() -> (PublicKey, PublicKey) {
        (PrivateKey::generate().public_key(), PrivateKey::generate().public_key())
    }

    #[test]
    fn mac1_tells_the_recipient() {
        let (gw, client) = keys();
        let v = Validator::new(&gw, &client);
        assert_eq!(
            v.classify(&handshake(1, 7, 0, &gw)),
            Ok(Classified::Initiation { to: Side::Gateway, sender: 7 })
        );
        assert_eq!(
            v.classify(&handshake(2, 8, 7, &client)),
            Ok(Classified::Response { to: Side::Client, sender: 8, receiver: 7 })
        );
        let stranger = PrivateKey::generate().public_key();
        assert_eq!(v.classify(&handshake(1, 7, 0, &stranger)), Err(Invalid::BadMac1));
        let mut flipped = handshake(1, 7, 0, &gw);
        flipped[20] ^= 1;
        assert_eq!(v.classify(&flipped), Err(Invalid::BadMac1));
    }

    #[test]
    fn shapes_that_are_not_messages_are_malformed() {
        let (gw, client) = keys();
        let v = Validator::new(&gw, &client);
        for bad in [&[][..], &[1, 0, 0], &[1, 0, 0, 0, 5], &[9, 0, 0, 0], &[4, 0, 0, 0, 1, 2]] {
            assert!(matches!(v.classify(bad), Err(Invalid::Malformed(_))), "{bad:?}");
        }
        let mut transport = vec![0u8; 32];
        transport[0] = 4;
        assert_eq!(v.classify(&transport), Ok(Classified::Transport));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), kind in 0u8..6) {
            let (gw, client) = keys();
            let v = Validator::new(&gw, &client);
            let mut bytes = bytes;
            if let Some(first) = bytes.first_mut() {
                *first = kind;
            }
            let _ = v.classify(&bytes);
        }
    }
}
