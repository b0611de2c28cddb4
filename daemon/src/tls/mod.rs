//! TLS server configuration from PEM files, the same for every daemon that
//! terminates TLS (the cloud's API, the relay's WebSocket listener, the
//! gateway's local panel): rustls with ring, no system roots, and errors
//! that name the file and the problem; and the self-signed pairs that the
//! cloud and the gateway's panel make on their first start
//! ([`self_signed`]). Pinning them on the client side is
//! `ferry_connect::pin`.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The ALPN protocol of HTTP/1.1, which WebSocket upgrades need.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{} holds no certificate (expected a PEM block \"BEGIN CERTIFICATE\")", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{} holds no private key (expected a PEM block \"BEGIN PRIVATE KEY\", \"BEGIN EC PRIVATE KEY\" \
         or \"BEGIN RSA PRIVATE KEY\")",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("the private key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("certificate {} with key {} is not usable: {source}", cert.display(), key.display())]
    Unusable { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider for everything here. Explicit rather than the process
/// default so that nothing depends on which provider some other crate
/// installed first.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => LoadError::Missing { path: path.to_path_buf() },
        _ => LoadError::Read { path: path.to_path_buf(), source },
    })
}

/// The certificate chain in a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(LoadError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, LoadError> {
    let pem = read(path)?;
    // The parser's errors never quote the file's content, so no key material
    // reaches an error message or a log.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => LoadError::NoKey { path: path.to_path_buf() },
        other => LoadError::Pem { path: path.to_path_buf(), reason: other.to_string() },
    })
}

/// A server configuration serving the chain in `cert` with the key in `key`,
/// offering the `alpn` protocols.
pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, LoadError> {
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|source| match source {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                LoadError::KeyMismatch { cert: cert.to_path_buf(), key: key.to_path_buf() }
            }
            source => LoadError::Unusable { cert: cert.to_path_buf(), key: key.to_path_buf(), source },
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

pub mod self_signed;

pub use self_signed::{SelfSignedError, ensure_self_signed, fingerprint_file, fingerprint_sha256};
