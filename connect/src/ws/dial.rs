//! One WebSocket connection: `ws://`, or `wss://` trusting exactly the
//! pinned certificate (there are no CA roots), with an optional bearer
//! token on the upgrade request. The control channel and the relay client
//! both dial through here.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpStream;
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream,
    tungstenite::{
        self,
        client::IntoClientRequest as _,
        http::{HeaderValue, header::AUTHORIZATION},
        protocol::WebSocketConfig,
    },
};

use crate::pin::{self, PinnedVerifier};

/// A connection as [`dial`] returns it.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// TCP, TLS and the WebSocket upgrade together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why [`dial`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the URL must start with ws:// or wss://")]
    Scheme,
    #[error("wss:// needs the server certificate's SHA-256 pin (there are no CA roots)")]
    PinRequired,
    #[error("a certificate pin was given for a plain ws:// URL, which has no certificate")]
    PinWithoutTls,
    /// Both fingerprints in lowercase hex.
    #[error("the server's certificate has SHA-256 {got}, but the pin is {expected}")]
    PinMismatch { expected: String, got: String },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the bearer token cannot be sent in an HTTP header (it must be printable ASCII)")]
    BadToken,
    #[error("WebSocket: {0}")]
    WebSocket(#[from] Box<tungstenite::Error>),
    #[error("timed out connecting")]
    Timeout,
}

impl From<tungstenite::Error> for ConnectError {
    fn from(e: tungstenite::Error) -> Self {
        ConnectError::WebSocket(Box::new(e))
    }
}

impl ConnectError {
    /// The HTTP status with which the server refused the upgrade, if it did
    /// (401 for an unknown token, for example).
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ConnectError::WebSocket(e) => match e.as_ref() {
                tungstenite::Error::Http(response) => Some(response.status().as_u16()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Opens `url` (`ws://` or `wss://`) within [`CONNECT_TIMEOUT`]. For
/// `wss://`, `pin_sha256` is the SHA-256 of the server's DER certificate and
/// the only thing trusted: the name and validity period are not checked,
/// because the pin already names exactly one certificate and Ferry's servers
/// use self-signed ones. `bearer` goes out as `Authorization: Bearer`;
/// `config` sets the frame limits.
pub async fn dial(
    url: &str,
    pin_sha256: Option<[u8; 32]>,
    bearer: Option<&str>,
    config: WebSocketConfig,
) -> Result<WsStream, ConnectError> {
    let (connector, seen) = if url.starts_with("wss://") {
        let pin = pin_sha256.ok_or(ConnectError::PinRequired)?;
        let verifier = Arc::new(PinnedVerifier::new(pin));
        let config = pin::client_config(verifier.clone(), &[])?;
        (Connector::Rustls(Arc::new(config)), Some(verifier))
    } else if url.starts_with("ws://") {
        if pin_sha256.is_some() {
            return Err(ConnectError::PinWithoutTls);
        }
        (Connector::Plain, None)
    } else {
        return Err(ConnectError::Scheme);
    };
    let mut request = url.into_client_request()?;
    if let Some(token) = bearer {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ConnectError::BadToken)?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, Some(connector));
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => {
            // rustls reports a pin mismatch as a generic certificate failure
            // deep inside an IO error; the verifier remembers what it saw so
            // the operator gets both fingerprints instead.
            if let Some(verifier) = seen
                && let Some(got) = verifier.seen().filter(|got| *got != verifier.pin())
            {
                return Err(ConnectError::PinMismatch {
                    expected: hex::encode(verifier.pin()),
                    got: hex::encode(got),
                });
            }
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::websocket_config;

    #[tokio::test]
    async fn refuses_unpinned_wss_pinned_ws_other_schemes_and_bad_tokens() {
        let dial = |url: &'static str, pin, token| dial(url, pin, token, websocket_config());
        assert!(matches!(dial("wss://127.0.0.1:1/x", None, None).await, Err(ConnectError::PinRequired)));
        assert!(matches!(
            dial("ws://127.0.0.1:1/x", Some([0; 32]), None).await,
            Err(ConnectError::PinWithoutTls)
        ));
        assert!(matches!(dial("https://127.0.0.1:1/x", None, None).await, Err(ConnectError::Scheme)));
        assert!(matches!(
            dial("ws://127.0.0.1:1/x", None, Some("bad\ntoken")).await,
            Err(ConnectError::BadToken)
        ));
    }
}
