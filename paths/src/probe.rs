//! The path probe on the wire: a WireGuard-sized datagram of type 16,
//! authenticated with XChaCha20-Poly1305 under the pair's probe key.
//!
//! ```text
//! 0..4    type word [16, 0, 0, 0] (WireGuard's own types are 1..=4)
//! 4..12   receiver tag: tag(to = receiver), how the receiver finds the pair
//! 12..36  nonce (random)
//! 36..68  sealed body:
//!           0      kind: 1 = ping, 2 = pong
//!           1..13  transaction id (random per ping; the pong echoes it)
//!           13     observed family: 0 (ping), 4 or 6 (pong: where the ping came from)
//!           14..30 observed IP (IPv4 in the first 4 bytes, the rest zero)
//!           30..32 observed port, big endian
//! 68..84  Poly1305 tag over bytes 0..36 (associated data) and the body
//! ```
//! Decoding is strict: a body that is not in exactly this form is refused,
//! even when it authenticates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce, aead::AeadInOut};

use crate::secrets::{ProbeSecrets, TAG_LEN};

/// The first byte of a probe; the next three are zero, as in WireGuard's type word.
pub const PROBE_TYPE: u8 = 16;
/// The little-endian type word that starts every probe.
pub const PROBE_TYPE_WORD: [u8; 4] = [PROBE_TYPE, 0, 0, 0];
/// Every probe, ping or pong, has exactly this length (so a pong is no bigger than its ping).
pub const PROBE_LEN: usize = 84;
/// Length of a transaction id.
pub const TXID_LEN: usize = 12;
/// Length of the XChaCha20 nonce.
pub const NONCE_LEN: usize = 24;

const TAG_AT: usize = 4;
const NONCE_AT: usize = TAG_AT + TAG_LEN;
const BODY_AT: usize = NONCE_AT + NONCE_LEN;
const BODY_LEN: usize = 32;

const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;
const FAMILY_NONE: u8 = 0;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// A transaction id: chosen at random by the pinger, echoed by the pong.
pub type TxId = [u8; TXID_LEN];

/// What a probe says, once opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeBody {
    /// "Answer me at the address this came from."
    Ping { txid: TxId },
    /// The answer to the ping `txid`, which arrived from `observed`.
    ///
    /// IPv6 flow labels and scope ids are not carried (they are zero after decoding).
    Pong { txid: TxId, observed: SocketAddr },
}

/// An opened probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub tag: [u8; TAG_LEN],
    pub nonce: [u8; NONCE_LEN],
    pub body: ProbeBody,
}

/// Why a received datagram was not acted on. Each reason has its counter in
/// [`ProbeStats`](crate::ProbeStats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ProbeDrop {
    #[error("not a probe: the type word is not 16")]
    NotProbe,
    #[error("probe of the wrong length")]
    BadLength,
    #[error("probe with a tag of no known pair")]
    UnknownTag,
    #[error("probe failed authentication")]
    BadAuth,
    #[error("authenticated probe with a malformed body")]
    BadBody,
    #[error("probe seen before (replayed)")]
    Replayed,
    #[error("pong that answers no outstanding ping")]
    Unsolicited,
    #[error("pong from another address than the one pinged")]
    WrongSource,
    #[error("probe from an address no answer can go to")]
    BadSource,
}

impl ProbeDrop {
    /// Every reason, for exporting counters.
    pub const ALL: [ProbeDrop; 9] = [
        ProbeDrop::NotProbe,
        ProbeDrop::BadLength,
        ProbeDrop::UnknownTag,
        ProbeDrop::BadAuth,
        ProbeDrop::BadBody,
        ProbeDrop::Replayed,
        ProbeDrop::Unsolicited,
        ProbeDrop::WrongSource,
        ProbeDrop::BadSource,
    ];

    /// A stable snake_case name (metric label).
    pub fn name(self) -> &'static str {
        match self {
            ProbeDrop::NotProbe => "not_probe",
            ProbeDrop::BadLength => "bad_length",
            ProbeDrop::UnknownTag => "unknown_tag",
            ProbeDrop::BadAuth => "bad_auth",
            ProbeDrop::BadBody => "bad_body",
            ProbeDrop::Replayed => "replayed",
            ProbeDrop::Unsolicited => "unsolicited",
            ProbeDrop::WrongSource => "wrong_source",
            ProbeDrop::BadSource => "bad_source",
        }
    }
}

/// The AEAD refused to seal (it cannot for 32 bytes; typed so that no path panics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("could not seal the probe")]
pub struct SealError;

/// Whether a datagram that arrived on the WireGuard socket is a probe
/// (the shell hands those to [`Paths::handle_probe`](crate::Paths::handle_probe)).
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.starts_with(&PROBE_TYPE_WORD)
}

/// The receiver tag of a datagram shaped like a probe (type word and length),
/// without authenticating it.
pub fn probe_tag(datagram: &[u8]) -> Result<[u8; TAG_LEN], ProbeDrop> {
    let bytes = framed(datagram)?;
    Ok(array_at(bytes, TAG_AT))
}

/// Seals `body` for the peer: tagged with `secrets.tag_out`.
pub fn seal(
    secrets: &ProbeSecrets,
    nonce: &[u8; NONCE_LEN],
    body: &ProbeBody,
) -> Result<[u8; PROBE_LEN], SealError> {
    let mut out = [0u8; PROBE_LEN];
    let (aad, rest) = out.split_at_mut(BODY_AT);
    let (type_word, header) = aad.split_at_mut(TAG_AT);
    type_word.copy_from_slice(&PROBE_TYPE_WORD);
    let (tag, nonce_out) = header.split_at_mut(TAG_LEN);
    tag.copy_from_slice(&secrets.tag_out);
    nonce_out.copy_from_slice(nonce);
    let (sealed, mac_out) = rest.split_at_mut(BODY_LEN);
    sealed.copy_from_slice(&encode_body(body));
    let mac = XChaCha20Poly1305::new((&secrets.key).into())
        .encrypt_inout_detached(&XNonce::from(*nonce), aad, sealed.into())
        .map_err(|_| SealError)?;
    mac_out.copy_from_slice(&mac);
    Ok(out)
}

/// Opens a probe addressed to this end of the pair (tag `secrets.tag_in`).
pub fn open(secrets: &ProbeSecrets, datagram: &[u8]) -> Result<Probe, ProbeDrop> {
    let bytes = framed(datagram)?;
    let tag: [u8; TAG_LEN] = array_at(bytes, TAG_AT);
    if tag != secrets.tag_in {
        return Err(ProbeDrop::UnknownTag);
    }
    let nonce: [u8; NONCE_LEN] = array_at(bytes, NONCE_AT);
    let mut buffer = *bytes;
    let (aad, rest) = buffer.split_at_mut(BODY_AT);
    let (sealed, mac) = rest.split_at_mut(BODY_LEN);
    let mac = Tag::try_from(&*mac).map_err(|_| ProbeDrop::BadAuth)?;
    XChaCha20Poly1305::new((&secrets.key).into())
        .decrypt_inout_detached(&XNonce::from(nonce), aad, sealed.into(), &mac)
        .map_err(|_| ProbeDrop::BadAuth)?;
    let body = decode_body(&array_at(&buffer, BODY_AT)).ok_or(ProbeDrop::BadBody)?;
    Ok(Probe { tag, nonce, body })
}

fn framed(datagram: &[u8]) -> Result<&[u8; PROBE_LEN], ProbeDrop> {
    if !is_probe(datagram) {
        return Err(ProbeDrop::NotProbe);
    }
    <&[u8; PROBE_LEN]>::try_from(datagram).map_err(|_| ProbeDrop::BadLength)
}

/// `N` bytes of `bytes` from `at`, zero-filled past the end (callers pass
/// offsets inside the fixed-size message, so nothing is ever filled).
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (slot, byte) in out.iter_mut().zip(bytes.iter().skip(at)) {
        *slot = *byte;
    }
    out
}

fn encode_body(body: &ProbeBody) -> [u8; BODY_LEN] {
    let mut out = [0u8; BODY_LEN];
    let (kind, txid, observed) = match body {
        ProbeBody::Ping { txid } => (KIND_PING, txid, None),
        ProbeBody::Pong { txid, observed } => (KIND_PONG, txid, Some(observed)),
    };
    out[0] = kind;
    out[1..13].copy_from_slice(txid);
    match observed {
        None => out[13] = FAMILY_NONE,
        Some(SocketAddr::V4(addr)) => {
            out[13] = FAMILY_V4;
            out[14..18].copy_from_slice(&addr.ip().octets());
            out[30..32].copy_from_slice(&addr.port().to_be_bytes());
        }
        Some(SocketAddr::V6(addr)) => {
            out[13] = FAMILY_V6;
            out[14..30].copy_from_slice(&addr.ip().octets());
            out[30..32].copy_from_slice(&addr.port().to_be_bytes());
        }
    }
    out
}

fn decode_body(body: &[u8; BODY_LEN]) -> Option<ProbeBody> {
    let txid: TxId = array_at(body, 1);
    let family = body[13];
    let ip: [u8; 16] = array_at(body, 14);
    let port = u16::from_be_bytes(array_at(body, 30));
    match (body[0], family) {
        (KIND_PING, FAMILY_NONE) => {
            let rest_is_zero = body.iter().skip(14).all(|b| *b == 0);
            rest_is_zero.then_some(ProbeBody::Ping { txid })
        }
        (KIND_PONG, FAMILY_V4) => {
            let [a, b, c, d, tail @ ..] = ip;
            if tail.iter().any(|b| *b != 0) {
                return None;
            }
            let observed = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port));
            Some(ProbeBody::Pong { txid, observed })
        }
        (KIND_PONG, FAMILY_V6) => {
            let observed = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0));
            Some(ProbeBody::Pong { txid, observed })
        }
        _ => None,
    }
}

/// The observed address as a pong carries it (what [`open`] would return).
pub fn wire_address(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => addr,
        SocketAddr::V6(v6) => SocketAddr::new(IpAddr::V6(*v6.ip()), v6.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> (ProbeSecrets, ProbeSecrets) {
        let ss = [9u8; 32];
        (ProbeSecrets::derive(&ss, &[1; 32], &[2; 32]), ProbeSecrets::derive(&ss, &[2; 32], &[1; 32]))
    }

    #[test]
    fn layout_matches_the_design() {
        let (a, b) = secrets();
        let body = ProbeBody::Pong { txid: [5; 12], observed: "192.0.2.7:51820".parse().unwrap() };
        let wire = seal(&a, &[3; 24], &body).unwrap();
        assert_eq!(wire.len(), PROBE_LEN);
        assert_eq!(&wire[..4], &[16, 0, 0, 0]);
        assert_eq!(&wire[4..12], &b.tag_in);
        assert_eq!(&wire[12..36], &[3; 24]);
        assert_eq!(probe_tag(&wire), Ok(b.tag_in));
        assert_eq!(open(&b, &wire).unwrap().body, body);
    }

    #[test]
    fn authenticated_but_malformed_bodies_are_refused() {
        let (a, b) = secrets();
        let mut ping_with_address = encode_body(&ProbeBody::Ping { txid: [1; 12] });
        ping_with_address[31] = 1;
        let mut v4_with_junk =
            encode_body(&ProbeBody::Pong { txid: [1; 12], observed: "192.0.2.7:1".parse().unwrap() });
        v4_with_junk[20] = 1;
        let mut pong_without_address = encode_body(&ProbeBody::Ping { txid: [1; 12] });
        pong_without_address[0] = KIND_PONG;
        let mut unknown_kind = encode_body(&ProbeBody::Ping { txid: [1; 12] });
        unknown_kind[0] = 3;
        let mut unknown_family = v4_with_junk;
        unknown_family[20] = 0;
        unknown_family[13] = 5;
        for body in [ping_with_address, v4_with_junk, pong_without_address, unknown_kind, unknown_family] {
            let wire = seal_raw(&a, &[4; 24], &body);
            assert_eq!(open(&b, &wire), Err(ProbeDrop::BadBody));
        }
    }

    /// Seals arbitrary body bytes, as only a holder of the key could.
    fn seal_raw(secrets: &ProbeSecrets, nonce: &[u8; 24], body: &[u8; BODY_LEN]) -> [u8; PROBE_LEN] {
        let mut wire = seal(secrets, nonce, &ProbeBody::Ping { txid: [0; 12] }).unwrap();
        let (aad, rest) = wire.split_at_mut(BODY_AT);
        let (sealed, mac_out) = rest.split_at_mut(BODY_LEN);
        sealed.copy_from_slice(body);
        let mac = XChaCha20Poly1305::new((&secrets.key).into())
            .encrypt_inout_detached(&XNonce::from(*nonce), aad, sealed.into())
            .unwrap();
        mac_out.copy_from_slice(&mac);
        wire
    }
}
