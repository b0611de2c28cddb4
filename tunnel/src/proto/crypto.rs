//! The primitives of the Noise construction WireGuard uses:
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`.

use blake2::{
    Blake2s256, Blake2sMac, Digest,
    digest::{FixedOutput, KeyInit, Mac, consts::U16},
};
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit as AeadKeyInit, Nonce, Tag, XChaCha20Poly1305, XNonce, aead::AeadInOut,
};
use hmac::SimpleHmac;
use zeroize::Zeroize;

pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
pub const LABEL_MAC1: &[u8] = b"mac1----";
pub const LABEL_COOKIE: &[u8] = b"cookie--";

/// The Poly1305 tag that every AEAD output carries.
pub const TAG_LEN: usize = 16;

/// The AEAD failed to authenticate: wrong key, or tampered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AeadError;

/// BLAKE2s-256 of the concatenated inputs.
pub fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Blake2s256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Keyed BLAKE2s with a 16-byte output (WireGuard's MAC).
#[allow(clippy::expect_used, reason = "every key here is 16 or 32 bytes, which BLAKE2s takes")]
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("keys of 1 to 32 bytes are valid");
    for part in parts {
        Mac::update(&mut mac, part);
    }
    mac.finalize_fixed().into()
}

/// HMAC-BLAKE2s-256.
#[allow(clippy::expect_used, reason = "HMAC takes keys of any length")]
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        Mac::update(&mut mac, part);
    }
    mac.finalize_fixed().into()
}

/// HKDF with HMAC-BLAKE2s, returning `N` 32-byte outputs (N = 1, 2 or 3).
pub fn kdf<const N: usize>(key: &[u8; 32], input: &[u8]) -> [[u8; 32]; N] {
    let mut prk = hmac(key, &[input]);
    let mut out = [[0u8; 32]; N];
    let mut previous: Option<[u8; 32]> = None;
    for (i, slot) in out.iter_mut().enumerate() {
        let counter = [i as u8 + 1];
        *slot = match &previous {
            None => hmac(&prk, &[&counter]),
            Some(prev) => hmac(&prk, &[prev, &counter]),
        };
        previous = Some(*slot);
    }
    prk.zeroize();
    if let Some(mut p) = previous {
        p.zeroize();
    }
    out
}

fn nonce(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    nonce.into()
}

/// ChaCha20-Poly1305: encrypts `buffer[..len - 16]` in place and writes the tag
/// into the last 16 bytes.
#[allow(
    clippy::expect_used,
    reason = "ChaCha20-Poly1305 fails only beyond 256 GiB; packets are below 64 KiB"
)]
pub fn seal_in_place(key: &[u8; 32], counter: u64, aad: &[u8], buffer: &mut [u8]) {
    let (plain, tag_out) = buffer.split_at_mut(buffer.len() - TAG_LEN);
    let tag = <ChaCha20Poly1305 as AeadKeyInit>::new(key.into())
        .encrypt_inout_detached(&nonce(counter), aad, plain.into())
        .expect("messages are far below the AEAD's length limit");
    tag_out.copy_from_slice(&tag);
}

/// ChaCha20-Poly1305: checks the tag in the last 16 bytes and decrypts the rest
/// in place. Returns the plaintext length.
pub fn open_in_place(
    key: &[u8; 32],
    counter: u64,
    aad: &[u8],
    buffer: &mut [u8],
) -> Result<usize, AeadError> {
    if buffer.len() < TAG_LEN {
        return Err(AeadError);
    }
    let (cipher, tag) = buffer.split_at_mut(buffer.len() - TAG_LEN);
    let tag = Tag::try_from(&*tag).map_err(|_| AeadError)?;
    <ChaCha20Poly1305 as AeadKeyInit>::new(key.into())
        .decrypt_inout_detached(&nonce(counter), aad, cipher.into(), &tag)
        .map_err(|_| AeadError)?;
    Ok(cipher.len())
}

/// Seals a short fixed-size plaintext into `N + 16` bytes.
pub fn seal<const N: usize, const M: usize>(
    key: &[u8; 32],
    counter: u64,
    aad: &[u8],
    plain: &[u8; N],
) -> [u8; M] {
    debug_assert_eq!(M, N + TAG_LEN);
    let mut out = [0u8; M];
    out[..N].copy_from_slice(plain);
    seal_in_place(key, counter, aad, &mut out);
    out
}

/// Opens `M` bytes into an `N`-byte plaintext.
pub fn open<const N: usize, const M: usize>(
    key: &[u8; 32],
    counter: u64,
    aad: &[u8],
    sealed: &[u8; M],
) -> Result<[u8; N], AeadError> {
    debug_assert_eq!(M, N + TAG_LEN);
    let mut buffer = *sealed;
    open_in_place(key, counter, aad, &mut buffer)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&buffer[..N]);
    buffer.zeroize();
    Ok(out)
}

/// XChaCha20-Poly1305 of the 16-byte cookie (cookie replies).
#[allow(clippy::expect_used, reason = "XChaCha20-Poly1305 fails only beyond 256 GiB; this is 16 bytes")]
pub fn xseal_cookie(key: &[u8; 32], nonce: &[u8; 24], aad: &[u8], cookie: &[u8; 16]) -> [u8; 32] {
    let mut buffer = [0u8; 32];
    buffer[..16].copy_from_slice(cookie);
    let (plain, tag_out) = buffer.split_at_mut(16);
    let tag = <XChaCha20Poly1305 as AeadKeyInit>::new(key.into())
        .encrypt_inout_detached(&XNonce::from(*nonce), aad, plain.into())
        .expect("16 bytes are within the AEAD's limit");
    tag_out.copy_from_slice(&tag);
    buffer
}

pub fn xopen_cookie(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    sealed: &[u8; 32],
) -> Result<[u8; 16], AeadError> {
    let mut buffer = *sealed;
    let (cipher, tag) = buffer.split_at_mut(16);
    let tag = Tag::try_from(&*tag).map_err(|_| AeadError)?;
    <XChaCha20Poly1305 as AeadKeyInit>::new(key.into())
        .decrypt_inout_detached(&XNonce::from(*nonce), aad, cipher.into(), &tag)
        .map_err(|_| AeadError)?;
    let mut cookie = [0u8; 16];
    cookie.copy_from_slice(cipher);
    Ok(cookie)
}

/// The initial chaining key and hash, the same for every handshake.
pub fn initial_chain() -> ([u8; 32], [u8; 32]) {
    let chaining_key = hash(&[CONSTRUCTION]);
    let hash_value = hash(&[&chaining_key, IDENTIFIER]);
    (chaining_key, hash_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake2s_matches_the_rfc_7693_vector() {
        // RFC 7693 Appendix B: BLAKE2s-256("abc").
        let expected = "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982";
        let got: String = hash(&[b"abc"]).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expected);
        assert_eq!(hash(&[b"a", b"bc"]), hash(&[b"abc"]));
    }

    #[test]
    fn aead_round_trips_and_rejects_tampering() {
        let key = [7u8; 32];
        let mut buffer = b"hello, wireguard\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec();
        seal_in_place(&key, 42, b"aad", &mut buffer);
        assert_ne!(&buffer[..16], b"hello, wireguard");
        let mut copy = buffer.clone();
        assert_eq!(open_in_place(&key, 42, b"aad", &mut copy), Ok(16));
        assert_eq!(&copy[..16], b"hello, wireguard");
        for (counter, aad, flip) in [(43, &b"aad"[..], None), (42, b"aae", None), (42, b"aad", Some(3))] {
            let mut copy = buffer.clone();
            if let Some(i) = flip {
                copy[i] ^= 1;
            }
            assert_eq!(open_in_place(&key, counter, aad, &mut copy), Err(AeadError));
        }
    }

    #[test]
    fn kdf_outputs_chain() {
        let key = [1u8; 32];
        let [a] = kdf::<1>(&key, b"input");
        let [b, c] = kdf::<2>(&key, b"input");
        let [d, e, f] = kdf::<3>(&key, b"input");
        assert_eq!(a, b);
        assert_eq!((b, c), (d, e));
        assert_ne!(e, f);
        let prk = hmac(&key, &[b"input"]);
        assert_eq!(a, hmac(&prk, &[&[1]]));
        assert_eq!(c, hmac(&prk, &[&a, &[2]]));
    }
}

#[cfg(test)]
mod tamper_tests {
    use super::*;

    #[test]
    fn every_flipped_byte_of_a_sealed_message_is_rejected() {
        let key = [9u8; 32];
        for len in [16usize, 32, 48, 64] {
            let mut sealed = vec![0x45u8; len + TAG_LEN];
            seal_in_place(&key, 3, &[], &mut sealed);
            for i in 0..sealed.len() {
                for mask in [1u8, 0x67, 0x80] {
                    let mut copy = sealed.clone();
                    copy[i] ^= mask;
                    assert_eq!(
                        open_in_place(&key, 3, &[], &mut copy),
                        Err(AeadError),
                        "len {len}, byte {i}, mask {mask:#x}"
                    );
                }
            }
        }
    }
}
