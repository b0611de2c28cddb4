//! Self-signed certificates made on a daemon's first start (the cloud's API,
//! the gateway's local panel), and the SHA-256 fingerprints that clients pin
//! them by.

use std::{
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use super::{LoadError, load_certs};

pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// Names a self-signed certificate always carries, so that local clients
/// and health checks work whatever else is configured.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    #[error(
        "{} exists but its key {} does not; remove the certificate to have a new pair made",
        cert.display(),
        key.display()
    )]
    KeyLost { cert: PathBuf, key: PathBuf },
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("making a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Makes `<dir>/cert.pem` and `<dir>/key.pem` with a new self-signed
/// certificate (common name `common_name`) if there is none yet, and
/// returns their paths. Later calls reuse the pair, so a client's pin stays
/// valid across restarts; the `extra_names` (DNS names or IP addresses,
/// beside [`DEFAULT_NAMES`]) only matter when the pair is made. `dir` is
/// made with mode 0700 and the key file with 0600.
pub fn ensure_self_signed(
    dir: &Path,
    common_name: &str,
    extra_names: &[String],
) -> Result<(PathBuf, PathBuf), SelfSignedError> {
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    // The key is written before the certificate, so a key alone is what an
    // interrupted first start leaves: make the pair anew. A certificate alone
    // is someone's doing, and its fingerprint may be pinned somewhere.
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok((cert, key)),
        (true, false) => return Err(SelfSignedError::KeyLost { cert, key }),
        (false, _) => {}
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SelfSignedError::Write { path: dir.to_path_buf(), source })?;

    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|n| n.to_string()).collect();
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(names.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let key_pair = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&key_pair)?;

    write_atomically(&key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(&cert, certificate.pem().as_bytes(), 0o644)?;
    sync_dir(dir)?;
    tracing::info!(
        cert = %cert.display(),
        names = ?names,
        fingerprint = %fingerprint_sha256(certificate.der()),
        "made a self-signed certificate"
    );
    Ok((cert, key))
}

/// Writes through a temporary file and a rename, so that a crash never
/// leaves a truncated file, and the file has `mode` from its first byte on.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), SelfSignedError> {
    let err = |source| SelfSignedError::Write { path: path.to_path_buf(), source };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy()) else {
        return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "not a file path")));
    };
    let temp = path.with_file_name(format!(".{name}.tmp"));
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp).map_err(err)?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(err)?;
    drop(file);
    std::fs::rename(&temp, path).map_err(err)
}

fn sync_dir(dir: &Path) -> Result<(), SelfSignedError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SelfSignedError::Write { path: dir.to_path_buf(), source })
}

/// The SHA-256 fingerprint of a DER certificate as `openssl x509
/// -fingerprint -sha256` shows it: uppercase hex pairs joined by colons.
pub fn fingerprint_sha256(cert_der: &[u8]) -> String {
    ferry_connect::pin::format_fingerprint(&ferry_connect::pin::fingerprint(cert_der))
}

/// The fingerprint of the leaf (first) certificate in a PEM file.
pub fn fingerprint_file(path: &Path) -> Result<String, LoadError> {
    let certs = load_certs(path)?;
    let leaf = certs.first().ok_or_else(|| LoadError::NoCertificate { path: path.to_path_buf() })?;
    Ok(fingerprint_sha256(leaf))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::tls::server_config;

    #[test]
    fn made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let (cert, key) = ensure_self_signed(&tls, "test", &["example.test".into()]).unwrap();
        assert_eq!((cert.clone(), key.clone()), (tls.join("cert.pem"), tls.join("key.pem")));
        let first = fingerprint_file(&cert).unwrap();
        let key_pem = std::fs::read(&key).unwrap();
        assert_eq!(ensure_self_signed(&tls, "test", &[]).unwrap(), (cert.clone(), key.clone()));
        assert_eq!(fingerprint_file(&cert).unwrap(), first);
        assert_eq!(std::fs::read(&key).unwrap(), key_pem);
        server_config(&cert, &key, &[]).unwrap();
        let names: Vec<_> = std::fs::read_dir(&tls).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary files: {names:?}");
    }

    #[test]
    fn key_file_is_0600_and_folder_0700() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let (cert, key) = ensure_self_signed(&tls, "test", &[]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&tls), 0o700);
        assert_eq!(mode(&cert) & 0o077 & !0o044, 0, "certificate writable by others");
    }

    #[test]
    fn an_interrupted_first_start_is_recovered_but_a_lost_key_is_not_papered_over() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_self_signed(dir.path(), "test", &[]).unwrap();
        std::fs::remove_file(&cert).unwrap();
        ensure_self_signed(dir.path(), "test", &[]).unwrap();
        assert!(cert.exists());
        std::fs::remove_file(&key).unwrap();
        let err = ensure_self_signed(dir.path(), "test", &[]).unwrap_err();
        assert!(matches!(err, SelfSignedError::KeyLost { .. }), "{err}");
        assert!(err.to_string().contains("key.pem"), "{err}");
    }

    #[test]
    fn names_include_loopback_extras_and_the_common_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) =
            ensure_self_signed(dir.path(), "ferry-test-panel", &["panel.example".into(), "192.0.2.7".into()])
                .unwrap();
        let der = load_certs(&cert).unwrap().remove(0);
        // DNS names appear as IA5 strings, IP addresses as raw octets.
        let contains = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"localhost"));
        assert!(contains(b"panel.example"));
        assert!(contains(b"ferry-test-panel"));
        assert!(contains(&[127, 0, 0, 1]));
        assert!(contains(&[192, 0, 2, 7]));
        assert!(contains(&std::net::Ipv6Addr::LOCALHOST.octets()));
    }

    #[test]
    fn invalid_extra_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_self_signed(dir.path(), "test", &["not a name\u{7f}é".into()]).unwrap_err();
        assert!(matches!(err, SelfSignedError::Generate(_)), "{err}");
    }

    #[test]
    fn fingerprints_look_like_openssls() {
        // sha256("") is well known.
        assert_eq!(
            fingerprint_sha256(b""),
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
        );
    }
}
