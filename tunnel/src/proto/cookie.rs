//! mac1, mac2 and cookie replies: WireGuard's DoS defence (paper §5.4.4).
//!
//! mac1 proves the sender knows our public key, so we only spend a
//! Diffie-Hellman on handshakes addressed to us. Under load a responder also
//! asks for mac2, keyed with a cookie bound to the sender's address, which it
//! hands out in a cookie reply; a spoofed source never sees that cookie.

use std::{net::SocketAddr, time::Instant};

use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::{
    constants::COOKIE_REFRESH_TIME,
    crypto::{self, LABEL_COOKIE, LABEL_MAC1},
    messages::{COOKIE_REPLY, COOKIE_REPLY_LEN, CookieReply, write_type},
};
use crate::PublicKey;

/// The key for mac1 of messages sent to `public`.
pub fn mac1_key(public: &PublicKey) -> [u8; 32] {
    crypto::hash(&[LABEL_MAC1, public.as_bytes()])
}

/// The key that encrypts cookies in replies sent by `public`.
pub fn cookie_key(public: &PublicKey) -> [u8; 32] {
    crypto::hash(&[LABEL_COOKIE, public.as_bytes()])
}

fn address_bytes(addr: SocketAddr) -> Vec<u8> {
    let mut bytes = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    bytes.extend_from_slice(&addr.port().to_be_bytes());
    bytes
}

/// The responder's side: checks mac1/mac2 of messages sent to us and makes
/// cookie replies.
pub struct CookieChecker {
    mac1_key: [u8; 32],
    cookie_key: [u8; 32],
    secret: [u8; 32],
    secret_born: Option<Instant>,
}

impl CookieChecker {
    pub fn new(our_public: &PublicKey) -> CookieChecker {
        CookieChecker {
            mac1_key: mac1_key(our_public),
            cookie_key: cookie_key(our_public),
            secret: [0; 32],
            secret_born: None,
        }
    }

    /// Whether `message`'s mac1 (at `mac1_offset`) is right for us. Constant
    /// time.
    pub fn mac1_valid(&self, message: &[u8], mac1_offset: usize) -> bool {
        let expected = crypto::mac(&self.mac1_key, &[&message[..mac1_offset]]);
        expected.ct_eq(&message[mac1_offset..mac1_offset + 16]).into()
    }

    /// Whether `message`'s mac2 (at `mac2_offset`) carries the cookie we would
    /// give `source` now.
    pub fn mac2_valid(
        &mut self,
        now: Instant,
        source: SocketAddr,
        message: &[u8],
        mac2_offset: usize,
        rng: &mut dyn CryptoRngCore,
    ) -> bool {
        let cookie = self.cookie(now, source, rng);
        let expected = crypto::mac(&cookie, &[&message[..mac2_offset]]);
        expected.ct_eq(&message[mac2_offset..mac2_offset + 16]).into()
    }

    /// A cookie reply to a message from `source` whose sender index is
    /// `receiver` and whose mac1 is `mac1`.
    pub fn reply(
        &mut self,
        now: Instant,
        source: SocketAddr,
        receiver: u32,
        mac1: &[u8; 16],
        rng: &mut dyn CryptoRngCore,
    ) -> [u8; COOKIE_REPLY_LEN] {
        let cookie = self.cookie(now, source, rng);
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let mut out = [0u8; COOKIE_REPLY_LEN];
        write_type(&mut out, COOKIE_REPLY);
        out[4..8].copy_from_slice(&receiver.to_le_bytes());
        out[8..32].copy_from_slice(&nonce);
        out[32..].copy_from_slice(&crypto::xseal_cookie(&self.cookie_key, &nonce, mac1, &cookie));
        out
    }

    /// The cookie for `source`: a MAC of its address under a secret that
    /// changes every two minutes.
    fn cookie(&mut self, now: Instant, source: SocketAddr, rng: &mut dyn CryptoRngCore) -> [u8; 16] {
        if self.secret_born.is_none_or(|born| now.saturating_duration_since(born) >= COOKIE_REFRESH_TIME) {
            rng.fill_bytes(&mut self.secret);
            self.secret_born = Some(now);
        }
        crypto::mac(&self.secret, &[&address_bytes(source)])
    }
}

impl Drop for CookieChecker {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// The initiator's side, per peer: writes mac1/mac2 on messages to that peer
/// and keeps the cookie it last received from it.
pub struct CookieJar {
    peer_mac1_key: [u8; 32],
    peer_cookie_key: [u8; 32],
    cookie: Option<([u8; 16], Instant)>,
    /// The mac1 of the last message we sent, which a cookie reply is bound to.
    last_mac1: Option<[u8; 16]>,
}

impl CookieJar {
    pub fn new(peer_public: &PublicKey) -> CookieJar {
        CookieJar {
            peer_mac1_key: mac1_key(peer_public),
            peer_cookie_key: cookie_key(peer_public),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Fills mac1 and mac2 of an outgoing handshake message.
    pub fn stamp(&mut self, now: Instant, message: &mut [u8], mac1_offset: usize) {
        let mac2_offset = mac1_offset + 16;
        let mac1 = crypto::mac(&self.peer_mac1_key, &[&message[..mac1_offset]]);
        message[mac1_offset..mac2_offset].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let mac2 = match self.cookie {
            Some((cookie, received)) if now.saturating_duration_since(received) < COOKIE_REFRESH_TIME => {
                crypto::mac(&cookie, &[&message[..mac2_offset]])
            }
            _ => [0; 16],
        };
        message[mac2_offset..mac2_offset + 16].copy_from_slice(&mac2);
    }

    /// Takes the cookie from a reply to our last message. Fails if the reply
    /// is not for that message or was not made by the peer.
    pub fn consume(&mut self, now: Instant, reply: &CookieReply<'_>) -> Result<(), crypto::AeadError> {
        let last_mac1 = self.last_mac1.ok_or(crypto::AeadError)?;
        let cookie =
            crypto::xopen_cookie(&self.peer_cookie_key, reply.nonce(), &last_mac1, reply.encrypted_cookie())?;
        self.cookie = Some((cookie, now));
        Ok(())
    }

    pub fn has_fresh_cookie(&self, now: Instant) -> bool {
        self.cookie.is_some_and(|(_, t)| now.saturating_duration_since(t) < COOKIE_REFRESH_TIME)
    }
}

impl Drop for CookieJar {
    fn drop(&mut self) {
        if let Some((cookie, _)) = self.cookie.as_mut() {
            cookie.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand_core::OsRng;

    use super::*;
    use crate::{
        PrivateKey,
        proto::messages::{Initiation, parse},
    };

    fn initiation_like(jar: &mut CookieJar, now: Instant) -> [u8; 148] {
        let mut message = [0x5au8; 148];
        write_type(&mut message, 1);
        jar.stamp(now, &mut message, Initiation::MAC1_OFFSET);
        message
    }

    #[test]
    fn mac1_binds_the_receivers_key() {
        let responder = PrivateKey::generate().public_key();
        let now = Instant::now();
        let checker = CookieChecker::new(&responder);
        let mut jar = CookieJar::new(&responder);
        let message = initiation_like(&mut jar, now);
        assert!(checker.mac1_valid(&message, Initiation::MAC1_OFFSET));
        let mut tampered = message;
        tampered[20] ^= 1;
        assert!(!checker.mac1_valid(&tampered, Initiation::MAC1_OFFSET));
        let other = CookieChecker::new(&PrivateKey::generate().public_key());
        assert!(!other.mac1_valid(&message, Initiation::MAC1_OFFSET));
    }

    #[test]
    fn cookie_round_trip_gives_a_valid_mac2_for_that_address_only() {
        let responder = PrivateKey::generate().public_key();
        let now = Instant::now();
        let source: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let mut checker = CookieChecker::new(&responder);
        let mut jar = CookieJar::new(&responder);

        let first = initiation_like(&mut jar, now);
        assert!(
            !checker.mac2_valid(now, source, &first, Initiation::MAC2_OFFSET, &mut OsRng),
            "no cookie yet"
        );
        let Ok(super::super::messages::Message::Initiation(init)) = parse(&first) else { panic!() };
        let reply_bytes = checker.reply(now, source, init.sender(), init.mac1(), &mut OsRng);
        let Ok(super::super::messages::Message::CookieReply(reply)) = parse(&reply_bytes) else { panic!() };
        jar.consume(now, &reply).unwrap();

        let second = initiation_like(&mut jar, now + Duration::from_secs(1));
        assert!(checker.mac2_valid(now, source, &second, Initiation::MAC2_OFFSET, &mut OsRng));
        let elsewhere: SocketAddr = "192.0.2.8:40000".parse().unwrap();
        assert!(!checker.mac2_valid(now, elsewhere, &second, Initiation::MAC2_OFFSET, &mut OsRng));
        // After the secret rotates the old cookie no longer counts.
        assert!(!checker.mac2_valid(
            now + COOKIE_REFRESH_TIME,
            source,
            &second,
            Initiation::MAC2_OFFSET,
            &mut OsRng
        ));
        // And the jar stops using a stale cookie.
        assert!(!jar.has_fresh_cookie(now + COOKIE_REFRESH_TIME));
    }

    #[test]
    fn a_reply_for_another_message_or_from_another_key_is_refused() {
        let responder = PrivateKey::generate().public_key();
        let now = Instant::now();
        let source: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let mut checker = CookieChecker::new(&responder);
        let mut jar = CookieJar::new(&responder);
        let _ = initiation_like(&mut jar, now);
        let reply_bytes = checker.reply(now, source, 1, &[9; 16], &mut OsRng);
        let Ok(super::super::messages::Message::CookieReply(reply)) = parse(&reply_bytes) else { panic!() };
        assert!(jar.consume(now, &reply).is_err(), "bound to a mac1 we never sent");

        let mut impostor = CookieChecker::new(&PrivateKey::generate().public_key());
        let message = initiation_like(&mut jar, now);
        let reply_bytes = impostor.reply(now, source, 1, message[116..132].try_into().unwrap(), &mut OsRng);
        let Ok(super::super::messages::Message::CookieReply(reply)) = parse(&reply_bytes) else { panic!() };
        assert!(jar.consume(now, &reply).is_err(), "sealed by a key other than the peer's");
    }
}
