//! The Noise_IKpsk2 handshake (WireGuard paper §5.4), as pure functions over
//! the message bytes. The peer bookkeeping around it lives in `device`.

use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey as DhPublic, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{
    crypto::{self, AeadError, hash, kdf},
    messages::{INITIATION, INITIATION_LEN, Initiation, RESPONSE, RESPONSE_LEN, Response, write_type},
    timestamp::Tai64N,
};
use crate::{PrivateKey, PublicKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake message did not authenticate")]
    Decrypt,
    #[error("handshake from a public key that is not a peer")]
    UnknownPeer,
    #[error("Diffie-Hellman gave the all-zero result (a low-order point)")]
    ZeroSharedSecret,
}

impl From<AeadError> for HandshakeError {
    fn from(_: AeadError) -> Self {
        HandshakeError::Decrypt
    }
}

/// Our static identity, with the DH secret ready.
pub struct Identity {
    pub(crate) secret: StaticSecret,
    pub public: PublicKey,
}

impl Identity {
    pub fn new(private: &PrivateKey) -> Identity {
        Identity { secret: private.secret(), public: private.public_key() }
    }

    /// DH(our static, their static), which every handshake with that peer
    /// uses; computed once per peer.
    pub fn static_static(&self, peer: &PublicKey) -> Result<[u8; 32], HandshakeError> {
        dh(&self.secret, peer.as_bytes())
    }
}

fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<[u8; 32], HandshakeError> {
    let shared = secret.diffie_hellman(&DhPublic::from(*public));
    if !shared.was_contributory() {
        return Err(HandshakeError::ZeroSharedSecret);
    }
    Ok(shared.to_bytes())
}

/// What the initiator keeps between its initiation and the response.
#[derive(ZeroizeOnDrop)]
pub struct InitiatorState {
    #[zeroize(skip)]
    pub local_index: u32,
    ephemeral: StaticSecret,
    chaining_key: [u8; 32],
    hash: [u8; 32],
}

/// Transport keys from a completed handshake.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    #[zeroize(skip)]
    pub local_index: u32,
    #[zeroize(skip)]
    pub remote_index: u32,
    #[zeroize(skip)]
    pub we_initiated: bool,
    pub send: [u8; 32],
    pub receive: [u8; 32],
}

/// Builds an initiation to `peer` (mac1/mac2 left zero for the cookie jar).
pub fn initiate(
    identity: &Identity,
    peer: &PublicKey,
    static_static: &[u8; 32],
    local_index: u32,
    timestamp: Tai64N,
    rng: &mut dyn CryptoRngCore,
) -> Result<(InitiatorState, [u8; INITIATION_LEN]), HandshakeError> {
    let (mut chaining_key, hash0) = crypto::initial_chain();
    let mut h = hash(&[&hash0, peer.as_bytes()]);
    let ephemeral = StaticSecret::random_from_rng(rng);
    let ephemeral_public = DhPublic::from(&ephemeral).to_bytes();

    let mut msg = [0u8; INITIATION_LEN];
    write_type(&mut msg, INITIATION);
    msg[4..8].copy_from_slice(&local_index.to_le_bytes());
    msg[8..40].copy_from_slice(&ephemeral_public);

    [chaining_key] = kdf::<1>(&chaining_key, &ephemeral_public);
    h = hash(&[&h, &ephemeral_public]);
    let [ck, mut key] = kdf::<2>(&chaining_key, &dh(&ephemeral, peer.as_bytes())?);
    chaining_key = ck;
    let encrypted_static: [u8; 48] = crypto::seal(&key, 0, &h, identity.public.as_bytes());
    msg[40..88].copy_from_slice(&encrypted_static);
    h = hash(&[&h, &encrypted_static]);
    let [ck, key2] = kdf::<2>(&chaining_key, static_static);
    key.zeroize();
    key = key2;
    chaining_key = ck;
    let encrypted_timestamp: [u8; 28] = crypto::seal(&key, 0, &h, &timestamp.0);
    key.zeroize();
    msg[88..116].copy_from_slice(&encrypted_timestamp);
    h = hash(&[&h, &encrypted_timestamp]);

    Ok((InitiatorState { local_index, ephemeral, chaining_key, hash: h }, msg))
}

/// What the responder learned from a valid initiation.
#[derive(ZeroizeOnDrop)]
pub struct ConsumedInitiation {
    #[zeroize(skip)]
    pub peer: PublicKey,
    #[zeroize(skip)]
    pub timestamp: Tai64N,
    #[zeroize(skip)]
    pub remote_index: u32,
    remote_ephemeral: [u8; 32],
    chaining_key: [u8; 32],
    hash: [u8; 32],
}

/// Decrypts an initiation addressed to `identity`. `static_static` looks up
/// the DH(static, static) of the peer it claims to be, or None if that key is
/// not a peer.
pub fn consume_initiation(
    identity: &Identity,
    msg: &Initiation<'_>,
    static_static: impl FnOnce(&PublicKey) -> Option<[u8; 32]>,
) -> Result<ConsumedInitiation, HandshakeError> {
    let (mut chaining_key, hash0) = crypto::initial_chain();
    let mut h = hash(&[&hash0, identity.public.as_bytes()]);
    let ephemeral = msg.ephemeral();
    [chaining_key] = kdf::<1>(&chaining_key, ephemeral);
    h = hash(&[&h, ephemeral]);
    let [ck, mut key] = kdf::<2>(&chaining_key, &dh(&identity.secret, ephemeral)?);
    chaining_key = ck;
    let peer = PublicKey(crypto::open::<32, 48>(&key, 0, &h, msg.encrypted_static())?);
    key.zeroize();
    h = hash(&[&h, msg.encrypted_static()]);
    let mut ss = static_static(&peer).ok_or(HandshakeError::UnknownPeer)?;
    let [ck, mut key] = kdf::<2>(&chaining_key, &ss);
    ss.zeroize();
    chaining_key = ck;
    let timestamp = Tai64N(crypto::open::<12, 28>(&key, 0, &h, msg.encrypted_timestamp())?);
    key.zeroize();
    h = hash(&[&h, msg.encrypted_timestamp()]);
    Ok(ConsumedInitiation {
        peer,
        timestamp,
        remote_index: msg.sender(),
        remote_ephemeral: *ephemeral,
        chaining_key,
        hash: h,
    })
}

/// Builds the response to a consumed initiation and derives the session keys.
/// `psk` is the peer's preshared key or zeros.
pub fn respond(
    consumed: &ConsumedInitiation,
    psk: &[u8; 32],
    local_index: u32,
    rng: &mut dyn CryptoRngCore,
) -> Result<([u8; RESPONSE_LEN], SessionKeys), HandshakeError> {
    let ephemeral = StaticSecret::random_from_rng(rng);
    let ephemeral_public = DhPublic::from(&ephemeral).to_bytes();
    let mut msg = [0u8; RESPONSE_LEN];
    write_type(&mut msg, RESPONSE);
    msg[4..8].copy_from_slice(&local_index.to_le_bytes());
    msg[8..12].copy_from_slice(&consumed.remote_index.to_le_bytes());
    msg[12..44].copy_from_slice(&ephemeral_public);

    let [mut chaining_key] = kdf::<1>(&consumed.chaining_key, &ephemeral_public);
    let mut h = hash(&[&consumed.hash, &ephemeral_public]);
    [chaining_key] = kdf::<1>(&chaining_key, &dh(&ephemeral, &consumed.remote_ephemeral)?);
    [chaining_key] = kdf::<1>(&chaining_key, &dh(&ephemeral, consumed.peer.as_bytes())?);
    let [ck, mut tau, mut key] = kdf::<3>(&chaining_key, psk);
    chaining_key = ck;
    h = hash(&[&h, &tau]);
    tau.zeroize();
    let empty: [u8; 16] = crypto::seal::<0, 16>(&key, 0, &h, &[]);
    key.zeroize();
    msg[44..60].copy_from_slice(&empty);
    let [receive, send] = kdf::<2>(&chaining_key, &[]);
    chaining_key.zeroize();
    Ok((
        msg,
        SessionKeys { local_index, remote_index: consumed.remote_index, we_initiated: false, send, receive },
    ))
}

/// Completes the handshake on the initiator's side.
pub fn consume_response(
    identity: &Identity,
    state: &InitiatorState,
    psk: &[u8; 32],
    msg: &Response<'_>,
) -> Result<SessionKeys, HandshakeError> {
    let ephemeral = msg.ephemeral();
    let [mut chaining_key] = kdf::<1>(&state.chaining_key, ephemeral);
    let mut h = hash(&[&state.hash, ephemeral]);
    [chaining_key] = kdf::<1>(&chaining_key, &dh(&state.ephemeral, ephemeral)?);
    [chaining_key] = kdf::<1>(&chaining_key, &dh(&identity.secret, ephemeral)?);
    let [ck, mut tau, mut key] = kdf::<3>(&chaining_key, psk);
    chaining_key = ck;
    h = hash(&[&h, &tau]);
    tau.zeroize();
    let opened = crypto::open::<0, 16>(&key, 0, &h, msg.encrypted_nothing());
    key.zeroize();
    opened?;
    let [send, receive] = kdf::<2>(&chaining_key, &[]);
    chaining_key.zeroize();
    Ok(SessionKeys {
        local_index: state.local_index,
        remote_index: msg.sender(),
        we_initiated: true,
        send,
        receive,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand_core::OsRng;

    use super::*;
    use crate::proto::messages::{Message, parse};

    struct Side {
        identity: Identity,
        peer: PublicKey,
        ss: [u8; 32],
    }

    fn pair() -> (Side, Side) {
        let a = PrivateKey::generate();
        let b = PrivateKey::generate();
        let ia = Identity::new(&a);
        let ib = Identity::new(&b);
        let ss_a = ia.static_static(&b.public_key()).unwrap();
        let ss_b = ib.static_static(&a.public_key()).unwrap();
        assert_eq!(ss_a, ss_b);
        (
            Side { identity: ia, peer: b.public_key(), ss: ss_a },
            Side { identity: ib, peer: a.public_key(), ss: ss_b },
        )
    }

    fn full_handshake(
        psk_i: [u8; 32],
        psk_r: [u8; 32],
    ) -> Result<(SessionKeys, SessionKeys), HandshakeError> {
        let (i, r) = pair();
        let stamp = Tai64N::from_unix(Duration::from_secs(1_800_000_000));
        let (state, init) = initiate(&i.identity, &i.peer, &i.ss, 7, stamp, &mut OsRng)?;
        let Ok(Message::Initiation(init)) = parse(&init) else { panic!("initiation does not parse") };
        let consumed = consume_initiation(&r.identity, &init, |pk| (*pk == r.peer).then_some(r.ss))?;
        assert_eq!((consumed.peer, consumed.timestamp, consumed.remote_index), (r.peer, stamp, 7));
        let (resp, keys_r) = respond(&consumed, &psk_r, 9, &mut OsRng)?;
        let Ok(Message::Response(resp)) = parse(&resp) else { panic!("response does not parse") };
        assert_eq!((resp.sender(), resp.receiver()), (9, 7));
        let keys_i = consume_response(&i.identity, &state, &psk_i, &resp)?;
        Ok((keys_i, keys_r))
    }

    #[test]
    fn both_sides_derive_matching_keys_with_and_without_psk() {
        for psk in [[0u8; 32], [0x42; 32]] {
            let (i, r) = full_handshake(psk, psk).unwrap();
            assert_eq!(i.send, r.receive);
            assert_eq!(i.receive, r.send);
            assert_ne!(i.send, i.receive);
            assert!(i.we_initiated && !r.we_initiated);
            assert_eq!((i.local_index, i.remote_index, r.local_index, r.remote_index), (7, 9, 9, 7));
        }
    }

    #[test]
    fn a_psk_mismatch_fails_at_the_response() {
        assert_eq!(full_handshake([1; 32], [2; 32]).err(), Some(HandshakeError::Decrypt));
    }

    #[test]
    fn an_initiation_for_someone_else_or_from_a_stranger_fails() {
        let (i, r) = pair();
        let (_, init) = initiate(&i.identity, &i.peer, &i.ss, 1, Tai64N::default(), &mut OsRng).unwrap();
        let Ok(Message::Initiation(parsed)) = parse(&init) else { panic!() };
        let stranger = Identity::new(&PrivateKey::generate());
        assert_eq!(
            consume_initiation(&stranger, &parsed, |_| Some([0; 32])).err(),
            Some(HandshakeError::Decrypt)
        );
        assert_eq!(
            consume_initiation(&r.identity, &parsed, |_| None).err(),
            Some(HandshakeError::UnknownPeer)
        );
        for byte in [10, 50, 100] {
            let mut tampered = init;
            tampered[byte] ^= 0x80;
            let Ok(Message::Initiation(parsed)) = parse(&tampered) else { panic!() };
            assert!(consume_initiation(&r.identity, &parsed, |_| Some(r.ss)).is_err(), "byte {byte}");
        }
    }

    #[test]
    fn a_low_order_ephemeral_is_refused() {
        let (i, r) = pair();
        let (_, mut init) = initiate(&i.identity, &i.peer, &i.ss, 1, Tai64N::default(), &mut OsRng).unwrap();
        init[8..40].copy_from_slice(&[0u8; 32]);
        let Ok(Message::Initiation(parsed)) = parse(&init) else { panic!() };
        assert_eq!(
            consume_initiation(&r.identity, &parsed, |_| Some(r.ss)).err(),
            Some(HandshakeError::ZeroSharedSecret)
        );
    }
}
