//! Certificate pinning: trust exactly one server certificate, named by the
//! SHA-256 of its DER form. The cloud's certificate is usually self-signed,
//! so the pin is the whole trust decision, as with SSH host keys: names,
//! issuer and validity dates are not checked. The handshake signatures are,
//! so only the holder of the pinned certificate's key gets through.

use std::fmt;
#[cfg(feature = "pin")]
use std::sync::{Arc, Mutex};

#[cfg(feature = "pin")]
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
#[cfg(feature = "pin")]
use sha2::{Digest as _, Sha256};

/// `AB:CD:...`, as `openssl x509 -fingerprint -sha256` prints it.
pub fn format_fingerprint(sha256: &[u8; 32]) -> String {
    sha256.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Reads a SHA-256 fingerprint written with or without colons, in either
/// case (`AB:CD:...` or `abcd...`); `None` unless it is exactly 32 bytes.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(digits, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(feature = "pin")]
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// Why a pinned handshake failed; it reaches the client inside
/// `rustls::Error::InvalidCertificate`.
pub struct PinMismatch {
    pub expected: String,
    pub found: String,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server certificate sha256 {} is not the pinned {}", self.found, self.expected)
    }
}

// rustls shows the inner error with `{:?}`: make that the readable sentence.
impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinMismatch {}

#[cfg(feature = "pin")]
pub struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// The last certificate offered, so a caller can name both fingerprints
    /// even where rustls flattens the error.
    seen: Mutex<Option<[u8; 32]>>,
}

#[cfg(feature = "pin")]
impl fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedVerifier").field("pin", &format_fingerprint(&self.pin)).finish_non_exhaustive()
    }
}

#[cfg(feature = "pin")]
impl PinnedVerifier {
    pub fn new(pin: [u8; 32]) -> PinnedVerifier {
        PinnedVerifier {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            seen: Mutex::new(None),
        }
    }

    pub fn pin(&self) -> [u8; 32] {
        self.pin
    }

    /// The fingerprint of the last certificate a server offered.
    pub fn seen(&self) -> Option<[u8; 32]> {
        *self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }
}

#[cfg(feature = "pin")]
impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(found);
        // Not secret: both fingerprints are public, so no constant-time compare.
        if found == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch =
            PinMismatch { expected: format_fingerprint(&self.pin), found: format_fingerprint(&found) };
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
            mismatch,
        )))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(feature = "pin")]
/// A client configuration that trusts only `verifier`'s certificate.
pub fn client_config(verifier: Arc<PinnedVerifier>, alpn: &[&[u8]]) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(verifier.provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(all(test, feature = "pin"))]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let pin = fingerprint(b"certificate");
        let text = format_fingerprint(&pin);
        assert_eq!(parse_fingerprint(&text), Some(pin));
        assert_eq!(parse_fingerprint(&text.replace(':', "").to_lowercase()), Some(pin));
        assert_eq!(parse_fingerprint(&format!(" {text}\n")), Some(pin));
        assert_eq!(parse_fingerprint("AB:CD"), None);
        assert_eq!(parse_fingerprint(&format!("{text}:00")), None);
        assert_eq!(parse_fingerprint(&text.replace(|c: char| c.is_ascii_digit(), "G")), None);
    }
}
