//! The gateway's two long-lived secrets, each in its own 0600 file in the
//! data directory:
//! - `identity.key`: the Ed25519 seed (hex) that proves to the cloud which
//!   gateway this is; its public half was registered at enrolment.
//! - `wireguard.key`: the WireGuard private key (base64, as `wg genkey`
//!   writes), whose public half technicians' clients are configured with.
//!
//! Neither is ever logged or printed; only public halves are.

use std::{
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use ed25519_dalek::SigningKey;
use zeroize::Zeroize as _;

pub const IDENTITY_FILE: &str = "identity.key";
pub const WIREGUARD_FILE: &str = "wireguard.key";

pub fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join(IDENTITY_FILE)
}

pub fn wireguard_path(data_dir: &Path) -> PathBuf {
    data_dir.join(WIREGUARD_FILE)
}

/// Loads the gateway's Ed25519 identity from `<data_dir>/identity.key`, or
/// creates it (mode 0600, data directory 0700) if the file does not exist.
pub fn identity(data_dir: &Path) -> io::Result<SigningKey> {
    let path = identity_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(mut text) => {
            warn_if_shared(&path);
            let mut seed = [0u8; 32];
            let parsed = hex::decode_to_slice(text.trim(), &mut seed);
            text.zeroize();
            parsed.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not a 64-digit hex Ed25519 seed", path.display()),
                )
            })?;
            let key = SigningKey::from_bytes(&seed);
            seed.zeroize();
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            super::create_private_dir(data_dir)?;
            let key = SigningKey::generate(&mut rand_core::OsRng);
            let mut text = format!("{}\n", hex::encode(key.to_bytes()));
            let written = write_new_secret(&path, text.as_bytes());
            text.zeroize();
            written?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Loads or creates the WireGuard private key in `<data_dir>/wireguard.key`.
pub fn wireguard(data_dir: &Path) -> io::Result<ferry_tunnel::PrivateKey> {
    super::create_private_dir(data_dir)?;
    ferry_tunnel::keys::load_or_generate(&wireguard_path(data_dir))
}

fn write_new_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn warn_if_shared(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "private key file is readable by others");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = identity(&data).unwrap();
        let mode = std::fs::metadata(identity_path(&data)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = identity(&data).unwrap();
        assert_eq!(first.verifying_key(), second.verifying_key());

        std::fs::write(identity_path(&data), "not hex").unwrap();
        let err = identity(&data).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(!err.to_string().contains("not hex"), "never echo key material: {err}");
    }

    #[test]
    fn wireguard_key_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!wireguard_path(dir.path()).exists());
        let first = wireguard(dir.path()).unwrap();
        let second = wireguard(dir.path()).unwrap();
        assert_eq!(first.public_key().to_base64(), second.public_key().to_base64());
    }
}
