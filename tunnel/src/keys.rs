//! WireGuard keys and their base64 text form (as `wg` prints them).

use std::fmt;

use base64::{Engine, engine::general_purpose::STANDARD};
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a WireGuard key is 44 characters of base64 (32 bytes); got {0} characters")]
    Length(usize),
    #[error("a WireGuard key must be base64: {0}")]
    Base64(String),
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    if text.len() != 44 {
        return Err(KeyError::Length(text.len()));
    }
    let mut out = [0u8; 32];
    let bytes = STANDARD.decode(text).map_err(|e| KeyError::Base64(e.to_string()))?;
    if bytes.len() != 32 {
        return Err(KeyError::Length(text.len()));
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// A Curve25519 private key. Zeroized on drop; its Debug form hides it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh random key from the OS.
    pub fn generate() -> PrivateKey {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        PrivateKey::from_bytes(bytes)
    }

    /// Clamps like `wg genkey` so the text form is what other tools expect.
    pub fn from_bytes(mut bytes: [u8; 32]) -> PrivateKey {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    pub fn from_base64(text: &str) -> Result<PrivateKey, KeyError> {
        Ok(PrivateKey::from_bytes(decode32(text)?))
    }

    /// The text form, for writing the key to its 0600 file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.secret()).to_bytes())
    }

    pub(crate) fn secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<secret>, public {})", self.public_key())
    }
}

/// A Curve25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn from_base64(text: &str) -> Result<PublicKey, KeyError> {
        decode32(text).map(PublicKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first characters are enough to tell peers apart in logs.
        write!(f, "PublicKey({}…)", &self.to_base64()[..8])
    }
}

/// An optional symmetric key mixed into the handshake (post-quantum hedge).
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct PresharedKey(pub(crate) [u8; 32]);

impl PresharedKey {
    pub fn generate() -> PresharedKey {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        PresharedKey(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> PresharedKey {
        PresharedKey(bytes)
    }

    pub fn from_base64(text: &str) -> Result<PresharedKey, KeyError> {
        decode32(text).map(PresharedKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_base64_and_match_wg() {
        // From `wg genkey | tee priv | wg pubkey` with wireguard-tools.
        let private = PrivateKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(private.public_key().to_base64(), "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=");
        assert_eq!(private.to_base64(), "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=");
    }

    #[test]
    fn bad_text_is_refused_with_the_reason() {
        assert_eq!(PublicKey::from_base64("abc"), Err(KeyError::Length(3)));
        assert!(matches!(
            PublicKey::from_base64("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!="),
            Err(KeyError::Base64(_))
        ));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let private = PrivateKey::generate();
        let shown = format!("{private:?} {:?}", PresharedKey::generate());
        assert!(!shown.contains(&private.to_base64()));
        assert!(shown.contains("<secret>"));
    }
}

/// Reads a private key file (base64, as `wg genkey` writes), or creates one
/// with a fresh key and mode 0600 if it does not exist.
pub fn load_or_generate(path: &std::path::Path) -> std::io::Result<PrivateKey> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};

    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path)?.permissions());
            if mode & 0o077 != 0 {
                tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "private key file is readable by others");
            }
            PrivateKey::from_base64(&text).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            file.write_all(format!("{}\n", key.to_base64()).as_bytes())?;
            file.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod file_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_missing_key_file_is_created_0600_and_read_back() {
        let dir = std::env::temp_dir().join(format!("ferry-key-{}", std::process::id()));
        let path = dir.join("sub").join("private.key");
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_generate(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let second = load_or_generate(&path).unwrap();
        assert_eq!(first.to_base64(), second.to_base64());
        std::fs::write(&path, "garbage").unwrap();
        assert!(load_or_generate(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
