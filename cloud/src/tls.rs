//! TLS for the cloud's API: certificates from files or self-signed on first
//! start, and SHA-256 fingerprints for pinning (the pinning verifier itself
//! is `ferry_control::pin`, shared with the gateways' and relays' clients).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use ferry_daemon::tls::ALPN_HTTP11;
use rustls::{ClientConfig, ServerConfig};

/// Folder of the self-signed pair inside the data folder.
pub const TLS_DIR: &str = "tls";
pub use ferry_daemon::tls::self_signed::{CERT_FILE, DEFAULT_NAMES, KEY_FILE};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading the certificate or key files (shared with the relay).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Making the self-signed pair (shared with the gateway's panel).
    #[error(transparent)]
    SelfSigned(#[from] SelfSignedError),
    #[error("{0:?} is not a SHA-256 fingerprint (expected 32 hex byte pairs like AB:CD:…)")]
    BadFingerprint(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The PEM loading and the self-signed pairs are `ferry_daemon::tls`,
/// shared with the relay's WebSocket listener and the gateway's panel.
pub use ferry_daemon::tls::{LoadError, SelfSignedError, fingerprint_sha256, load_certs, load_key, provider};

/// A server configuration serving the chain in `cert` with the key in `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(ferry_daemon::tls::server_config(cert, key, &[ALPN_HTTP11])?)
}

/// Makes `<data_dir>/tls/cert.pem` and `key.pem` with a new self-signed
/// certificate if there is none yet, and returns their paths. Later calls
/// reuse the pair, so a client's pin stays valid across restarts; the
/// `extra_names` (DNS names or IP addresses, beside [`DEFAULT_NAMES`]) only
/// matter when the pair is made.
pub fn ensure_self_signed(data_dir: &Path, extra_names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    Ok(ferry_daemon::tls::ensure_self_signed(&data_dir.join(TLS_DIR), "ferry-cloud", extra_names)?)
}

/// The fingerprint of the leaf (first) certificate in a PEM file.
pub fn fingerprint_file(path: &Path) -> Result<String, TlsError> {
    Ok(ferry_daemon::tls::fingerprint_file(path)?)
}

pub use ferry_control::pin::{PinMismatch, PinnedVerifier, format_fingerprint};

/// Reads a SHA-256 fingerprint with or without colons, in either case.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    ferry_control::pin::parse_fingerprint(text).ok_or_else(|| TlsError::BadFingerprint(text.to_string()))
}

/// A client configuration that trusts only the certificate with this
/// SHA-256 fingerprint and speaks HTTP/1.1.
pub fn pinned_client_config(fingerprint: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(PinnedVerifier::new(parse_fingerprint(fingerprint)?));
    Ok(Arc::new(ferry_control::pin::client_config(verifier, &[ALPN_HTTP11])?))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn write(path: &Path, contents: &str) {
        std::fs::write(path, contents).unwrap();
    }

    #[test]
    fn self_signed_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_self_signed(dir.path(), &["cloud.example".into()]).unwrap();
        assert_eq!(cert, dir.path().join("tls/cert.pem"));
        assert_eq!(key, dir.path().join("tls/key.pem"));
        let first = fingerprint_file(&cert).unwrap();
        let key_pem = std::fs::read(&key).unwrap();

        let again = ensure_self_signed(dir.path(), &[]).unwrap();
        assert_eq!(again, (cert.clone(), key.clone()));
        assert_eq!(fingerprint_file(&cert).unwrap(), first);
        assert_eq!(std::fs::read(&key).unwrap(), key_pem);
        // The pair loads and matches.
        server_config(&cert, &key).unwrap();
        // No temporary files are left behind.
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("tls")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn key_file_is_0600_and_folder_0700() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_self_signed(dir.path(), &[]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&dir.path().join("tls")), 0o700);
        assert_eq!(mode(&cert) & 0o077 & !0o044, 0, "certificate writable by others");
    }

    #[test]
    fn an_interrupted_first_start_is_recovered_but_a_lost_key_is_not_papered_over() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_self_signed(dir.path(), &[]).unwrap();
        std::fs::remove_file(&cert).unwrap();
        ensure_self_signed(dir.path(), &[]).unwrap();
        assert!(cert.exists());

        std::fs::remove_file(&key).unwrap();
        let err = ensure_self_signed(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, TlsError::SelfSigned(SelfSignedError::KeyLost { .. })), "{err}");
        assert!(err.to_string().contains("key.pem"), "{err}");
    }

    #[test]
    fn self_signed_names_include_loopback_and_extras() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) =
            ensure_self_signed(dir.path(), &["cloud.example".into(), "192.0.2.7".into()]).unwrap();
        let der = load_certs(&cert).unwrap().remove(0);
        // DNS names appear as IA5 strings, IP addresses as raw octets.
        let contains = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"localhost"));
        assert!(contains(b"cloud.example"));
        assert!(contains(&[127, 0, 0, 1]));
        assert!(contains(&[192, 0, 2, 7]));
        assert!(contains(&std::net::Ipv6Addr::LOCALHOST.octets()));
    }

    #[test]
    fn invalid_extra_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_self_signed(dir.path(), &["not a name\u{7f}é".into()]).unwrap_err();
        assert!(matches!(err, TlsError::SelfSigned(SelfSignedError::Generate(_))), "{err}");
    }

    #[test]
    fn fingerprint_format_matches_openssl_and_is_stable() {
        // sha256("") is well known.
        assert_eq!(
            fingerprint_sha256(b""),
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
        );
        let fp = fingerprint_sha256(b"certificate");
        assert_eq!(fp, fingerprint_sha256(b"certificate"));
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.chars().all(|c| c == ':' || c.is_ascii_digit() || c.is_ascii_uppercase()));

        let bytes = parse_fingerprint(&fp).unwrap();
        assert_eq!(format_fingerprint(&bytes), fp);
        assert_eq!(parse_fingerprint(&fp.replace(':', "").to_lowercase()).unwrap(), bytes);
        assert!(matches!(parse_fingerprint("AB:CD"), Err(TlsError::BadFingerprint(_))));
        assert!(matches!(parse_fingerprint(&fp.replace('E', "G")), Err(TlsError::BadFingerprint(_))));
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_self_signed(dir.path(), &[]).unwrap();
        let missing = dir.path().join("nope.pem");
        let empty = dir.path().join("empty.pem");
        write(&empty, "just text\n");
        let broken = dir.path().join("broken.pem");
        write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n");

        let err = server_config(&missing, &key).unwrap_err();
        assert!(matches!(err, TlsError::Load(LoadError::Missing { .. })), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");

        let err = server_config(&empty, &key).unwrap_err();
        assert!(matches!(err, TlsError::Load(LoadError::NoCertificate { .. })), "{err}");
        assert!(err.to_string().contains("empty.pem"), "{err}");

        let err = server_config(&broken, &key).unwrap_err();
        assert!(matches!(err, TlsError::Load(LoadError::Pem { .. })), "{err}");
        assert!(err.to_string().contains("broken.pem"), "{err}");

        // A certificate where the key should be: no key in it.
        let err = server_config(&cert, &cert).unwrap_err();
        assert!(matches!(err, TlsError::Load(LoadError::NoKey { .. })), "{err}");
        assert!(err.to_string().contains("cert.pem"), "{err}");

        let err = server_config(&cert, &missing).unwrap_err();
        assert!(matches!(err, TlsError::Load(LoadError::Missing { .. })), "{err}");

        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = ensure_self_signed(other.path(), &[]).unwrap();
        let err = server_config(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::Load(LoadError::KeyMismatch { .. })), "{err}");
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn pinned_verifier_accepts_only_the_pinned_certificate() {
        use rustls::{
            client::danger::ServerCertVerifier,
            pki_types::{ServerName, UnixTime},
        };
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = ensure_self_signed(dir.path(), &[]).unwrap();
        let der = load_certs(&cert).unwrap().remove(0);
        let name = ServerName::try_from("localhost").unwrap();
        let pinned = PinnedVerifier::new(parse_fingerprint(&fingerprint_sha256(&der)).unwrap());
        assert!(pinned.verify_server_cert(&der, &[], &name, &[], UnixTime::now()).is_ok());

        let other = PinnedVerifier::new([0; 32]);
        let err = other.verify_server_cert(&der, &[], &name, &[], UnixTime::now()).unwrap_err();
        assert!(err.to_string().contains(&fingerprint_sha256(&der)), "{err}");
    }
}
