//! The per-pair probe secrets, derived from the peers' WireGuard static keys.

use std::fmt;

use blake2::{
    Blake2sMac256,
    digest::{FixedOutput, KeyInit, Mac},
};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a receiver tag on the wire.
pub const TAG_LEN: usize = 8;

const LABEL_KEY: &[u8] = b"ferry probe key v1";
const LABEL_TAG: &[u8] = b"ferry probe tag v1";

/// A remote peer, named by its WireGuard static public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey(pub [u8; 32]);

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys are not secret; eight hex digits tell peers apart in logs.
        write!(f, "PeerKey(")?;
        for byte in self.0.iter().take(4) {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The secrets one end uses to probe one peer.
///
/// Only the two ends of a pair can compute them: they derive from the
/// static-static Diffie-Hellman of the peers' WireGuard keys.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ProbeSecrets {
    /// XChaCha20-Poly1305 key of the pair, the same at both ends.
    pub key: [u8; 32],
    /// The tag that probes addressed to this end carry (`tag(to = local)`).
    pub tag_in: [u8; TAG_LEN],
    /// The tag this end puts on probes it sends (`tag(to = remote)`).
    pub tag_out: [u8; TAG_LEN],
}

impl fmt::Debug for ProbeSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tags travel in the clear; the key never appears in logs.
        f.debug_struct("ProbeSecrets")
            .field("key", &"<secret>")
            .field("tag_in", &Hex(&self.tag_in))
            .field("tag_out", &Hex(&self.tag_out))
            .finish()
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl ProbeSecrets {
    /// Derives the probe secrets of the pair (`local_pub`, `remote_pub`) from
    /// their static-static Diffie-Hellman result.
    ///
    /// ```text
    /// key       = BLAKE2s-256(key = static_static, "ferry probe key v1" || lower_pub || higher_pub)
    /// tag(to=X) = BLAKE2s-256(key = key, "ferry probe tag v1" || X_pub)[0..8]
    /// tag_in    = tag(to = local_pub), tag_out = tag(to = remote_pub)
    /// ```
    /// BLAKE2s in its keyed mode is a PRF, so the key is bound to both public
    /// keys (in byte order, so both ends compute the same key) and each tag to
    /// the end it addresses: a probe sent back to its sender carries the
    /// sender's `tag_out`, which is not the sender's `tag_in`.
    ///
    /// The caller must not derive secrets from an all-zero `static_static`
    /// (a low-order remote key): anyone could compute them. WireGuard refuses
    /// such keys already.
    pub fn derive(static_static: &[u8; 32], local_pub: &[u8; 32], remote_pub: &[u8; 32]) -> ProbeSecrets {
        let (lower, higher) =
            if local_pub <= remote_pub { (local_pub, remote_pub) } else { (remote_pub, local_pub) };
        let key = keyed_blake2s(static_static, &[LABEL_KEY, lower, higher]);
        ProbeSecrets { tag_in: tag_to(&key, local_pub), tag_out: tag_to(&key, remote_pub), key }
    }
}

fn tag_to(key: &[u8; 32], to: &[u8; 32]) -> [u8; TAG_LEN] {
    let mut full = keyed_blake2s(key, &[LABEL_TAG, to]);
    let mut tag = [0u8; TAG_LEN];
    for (out, byte) in tag.iter_mut().zip(full.iter()) {
        *out = *byte;
    }
    full.zeroize();
    tag
}

fn keyed_blake2s(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Blake2sMac256 as KeyInit>::new(key.into());
    for part in parts {
        Mac::update(&mut mac, part);
    }
    mac.finalize_fixed().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_share_the_key_and_cross_tags() {
        let ss = [7u8; 32];
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let at_a = ProbeSecrets::derive(&ss, &a, &b);
        let at_b = ProbeSecrets::derive(&ss, &b, &a);
        assert_eq!(at_a.key, at_b.key);
        assert_eq!(at_a.tag_out, at_b.tag_in);
        assert_eq!(at_a.tag_in, at_b.tag_out);
        assert_ne!(at_a.tag_in, at_a.tag_out);
    }

    #[test]
    fn every_input_changes_the_secrets() {
        let base = ProbeSecrets::derive(&[7; 32], &[1; 32], &[2; 32]);
        let other_dh = ProbeSecrets::derive(&[8; 32], &[1; 32], &[2; 32]);
        let other_local = ProbeSecrets::derive(&[7; 32], &[3; 32], &[2; 32]);
        let other_remote = ProbeSecrets::derive(&[7; 32], &[1; 32], &[3; 32]);
        for other in [other_dh, other_local, other_remote] {
            assert_ne!(base.key, other.key);
            assert_ne!(base.tag_in, other.tag_in);
            assert_ne!(base.tag_out, other.tag_out);
        }
    }

    /// Known answer computed outside Rust (Python's `hashlib.blake2s(data, key=...)`),
    /// so that a second implementation of the formula can be checked against it.
    #[test]
    fn known_answer() {
        let secrets = ProbeSecrets::derive(&[7; 32], &[1; 32], &[2; 32]);
        assert_eq!(hex(&secrets.key), "6b247233d1453802561cadf7a0afebbff9789f45a9f6e7e9696d46cfe3650a17");
        assert_eq!(hex(&secrets.tag_in), "288ec992eb336b53");
        assert_eq!(hex(&secrets.tag_out), "67e607453be4ce54");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn debug_output_hides_the_key() {
        let secrets = ProbeSecrets::derive(&[7; 32], &[1; 32], &[2; 32]);
        let text = format!("{secrets:?}");
        assert!(text.contains("<secret>"));
        assert!(!text.contains(&hex(&secrets.key)));
    }
}
