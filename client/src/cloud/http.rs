//! HTTP/1.1 to the cloud on hyper: plain TCP for a lab's `http://` cloud, or
//! TLS that trusts exactly the pinned certificate (`ferry_connect::pin`; the
//! cloud's certificate is usually self-signed). One connection per request:
//! the commands make a handful of calls each.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use ferry_connect::pin::{self, PinnedVerifier};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Uri, body::Incoming, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

/// The largest answer read: the cloud's JSON and wg-quick files are small.
const MAX_ANSWER: usize = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not a cloud URL: expected http(s)://HOST[:PORT]")]
    Url(String),
    #[error("{0} is https: give the SHA-256 fingerprint of its certificate with --pin")]
    PinNeeded(String),
    #[error("cannot connect to {authority}: {source}")]
    Connect { authority: String, source: std::io::Error },
    #[error(
        "{authority} presented a certificate with fingerprint {found}, not the pinned {expected}: \
         it is not your cloud, or its certificate changed (ask your administrator for the new fingerprint)"
    )]
    PinMismatch { authority: String, expected: String, found: String },
    #[error("TLS with {authority}: {detail}")]
    Tls { authority: String, detail: String },
    #[error("{authority} did not answer within {} s", .after.as_secs())]
    Timeout { authority: String, after: Duration },
    #[error("HTTP with {authority} failed: {detail}")]
    Exchange { authority: String, detail: String },
}

/// Where the cloud is, from the URL the user gave `ferry login`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    https: bool,
    /// Without brackets, as DNS and TLS want it.
    host: String,
    port: u16,
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, HttpError> {
        let bad = || HttpError::Url(text.to_string());
        let uri: Uri = text.trim().parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?;
        let path_is_root = matches!(uri.path(), "" | "/") && uri.query().is_none();
        if authority.as_str().contains('@') || !path_is_root {
            return Err(bad());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(bad());
        }
        // What follows the host: nothing, or `:PORT` (the http crate takes a
        // port it cannot read for no port at all).
        let port = match authority.as_str().get(authority.host().len()..) {
            Some("") => {
                if https {
                    443
                } else {
                    80
                }
            }
            Some(rest) => rest.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(bad)?,
            None => return Err(bad()),
        };
        Ok(Address { https, host, port })
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    /// `host:port` with brackets around an IPv6 host: the Host header.
    pub fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }

    /// The canonical URL, as stored with the credentials.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.authority())
    }
}

/// An answer read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// Talks to one cloud.
#[derive(Clone)]
pub struct Transport {
    address: Address,
    tls: Option<(TlsConnector, Arc<PinnedVerifier>)>,
    timeout: Duration,
}

impl Transport {
    /// A transport to `address`; an https cloud needs its certificate's pin.
    pub fn new(address: Address, pin: Option<[u8; 32]>, timeout: Duration) -> Result<Transport, HttpError> {
        let tls = match (address.https, pin) {
            (false, _) => None,
            (true, None) => return Err(HttpError::PinNeeded(address.url())),
            (true, Some(pin)) => {
                let verifier = Arc::new(PinnedVerifier::new(pin));
                let config = pin::client_config(verifier.clone(), &[b"http/1.1"])
                    .map_err(|e| HttpError::Tls { authority: address.authority(), detail: e.to_string() })?;
                Some((TlsConnector::from(Arc::new(config)), verifier))
            }
        };
        Ok(Transport { address, tls, timeout })
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// One request, its answer read whole; `bearer` goes in `Authorization`,
    /// `json` is the body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json: Option<Vec<u8>>,
    ) -> Result<Answer, HttpError> {
        let whole = async {
            let opened = self.head(method, path, bearer, json).await?;
            let status = opened.status;
            let body = Limited::new(opened.body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| exchange_error(&opened.authority, &*e))?;
            Ok(Answer { status, body: body.to_bytes() })
        };
        self.within_timeout(whole).await
    }

    /// One request whose answer's head arrives within the timeout; its body
    /// is then read as it comes, for as long as it lasts (server-sent events).
    pub async fn open(&self, method: Method, path: &str, bearer: Option<&str>) -> Result<Opened, HttpError> {
        self.within_timeout(self.head(method, path, bearer, None)).await
    }

    async fn within_timeout<T>(
        &self,
        work: impl Future<Output = Result<T, HttpError>>,
    ) -> Result<T, HttpError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout { authority: self.address.authority(), after: self.timeout }),
        }
    }

    async fn head(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json: Option<Vec<u8>>,
    ) -> Result<Opened, HttpError> {
        let authority = self.address.authority();
        let tcp = TcpStream::connect((self.address.host.as_str(), self.address.port))
            .await
            .map_err(|source| HttpError::Connect { authority: authority.clone(), source })?;
        let _ = tcp.set_nodelay(true);
        let request = self.request(method, path, bearer, json)?;
        match &self.tls {
            None => round_trip(authority, tcp, request).await,
            Some((connector, verifier)) => {
                let stream = self.handshake(connector, verifier, tcp).await?;
                round_trip(authority, stream, request).await
            }
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        json: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.address.authority())
            .header(header::USER_AGENT, concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "application/json, application/problem+json, text/plain");
        if let Some(token) = bearer {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if json.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder.body(Full::new(Bytes::from(json.unwrap_or_default()))).map_err(|e| HttpError::Exchange {
            authority: self.address.authority(),
            detail: format!("cannot build the request for {path}: {e}"),
        })
    }

    async fn handshake(
        &self,
        connector: &TlsConnector,
        verifier: &PinnedVerifier,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HttpError> {
        let authority = self.address.authority();
        // An IP address is a valid server name too; the pin decides anyway.
        let name = ServerName::try_from(self.address.host.clone())
            .map_err(|e| HttpError::Tls { authority: authority.clone(), detail: e.to_string() })?;
        connector.connect(name, tcp).await.map_err(|e| match verifier.seen() {
            Some(found) if found != verifier.pin() => HttpError::PinMismatch {
                authority,
                expected: pin::format_fingerprint(&verifier.pin()),
                found: pin::format_fingerprint(&found),
            },
            _ => HttpError::Tls { authority, detail: e.to_string() },
        })
    }
}

/// An answer whose head has arrived.
pub struct Opened {
    pub status: u16,
    body: Incoming,
    authority: String,
}

impl Opened {
    /// The next piece of the body; None at its end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, HttpError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    // Trailers carry nothing the client reads.
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(exchange_error(&self.authority, &e))),
            }
        }
    }
}

impl Opened {
    /// The rest of the body, at most `max` bytes of it (a refusal's problem
    /// document).
    pub async fn rest(self, max: usize) -> Result<Bytes, HttpError> {
        let authority = self.authority;
        Ok(Limited::new(self.body, max)
            .collect()
            .await
            .map_err(|e| exchange_error(&authority, &*e))?
            .to_bytes())
    }
}

/// hyper's whole error chain: its top-level message alone is vague.
fn exchange_error(authority: &str, error: &dyn std::error::Error) -> HttpError {
    let detail = std::iter::successors(Some(error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    HttpError::Exchange { authority: authority.to_string(), detail }
}

async fn round_trip(
    authority: String,
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    request: Request<Full<Bytes>>,
) -> Result<Opened, HttpError> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| exchange_error(&authority, &e))?;
    // Drives the socket; what goes wrong there reaches the request below.
    tokio::spawn(async move { drop(connection.await) });
    let answer = sender.send_request(request).await.map_err(|e| exchange_error(&authority, &e))?;
    Ok(Opened { status: answer.status().as_u16(), body: answer.into_body(), authority })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[test]
    fn cloud_urls() {
        let a = Address::parse("https://cloud.example").unwrap();
        assert_eq!(
            (a.is_https(), a.authority(), a.url()),
            (true, "cloud.example:443".into(), "https://cloud.example:443".into())
        );
        let a = Address::parse("http://203.0.113.10:7600/").unwrap();
        assert_eq!(a.url(), "http://203.0.113.10:7600");
        let a = Address::parse("https://[2001:db8::1]:8443").unwrap();
        assert_eq!((a.host.as_str(), a.authority()), ("2001:db8::1", "[2001:db8::1]:8443".to_string()));
        for bad in [
            "cloud.example",
            "ftp://x",
            "https://",
            "http://x:port",
            "http://x/api",
            "http://u@x",
            "http://x/?a",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        let https = Address::parse("https://x").unwrap();
        assert!(matches!(Transport::new(https, None, Duration::from_secs(1)), Err(HttpError::PinNeeded(_))));
    }

    /// A one-shot HTTP server on loopback that answers `answer` and hands
    /// back the request it read.
    async fn serve_once(answer: &'static [u8]) -> (Address, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = Address::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("\r\n\r\n{") && !seen.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&chunk[..n]);
            }
            stream.write_all(answer).await.unwrap();
            stream.shutdown().await.unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        (address, server)
    }

    #[tokio::test]
    async fn a_request_carries_the_token_and_the_answer_comes_back_whole() {
        let (address, server) =
            serve_once(b"HTTP/1.1 409 Conflict\r\nContent-Type: application/problem+json\r\nContent-Length: 4\r\n\r\nnope").await;
        let transport = Transport::new(address, None, Duration::from_secs(5)).unwrap();
        let answer = transport
            .send(Method::POST, "/api/v1/sessions/7/start", Some("tok"), Some(b"{}".to_vec()))
            .await
            .unwrap();
        assert_eq!((answer.status, &answer.body[..]), (409, &b"nope"[..]));
        let request = server.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("post /api/v1/sessions/7/start http/1.1\r\n"), "{request}");
        assert!(request.contains("authorization: bearer tok\r\n"), "{request}");
        assert!(request.contains("content-type: application/json\r\n"), "{request}");
    }

    #[tokio::test]
    async fn garbage_and_silence_are_errors() {
        let (address, _server) = serve_once(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        let transport = Transport::new(address, None, Duration::from_secs(5)).unwrap();
        let result = transport.send(Method::GET, "/healthz", None, None).await;
        assert!(matches!(result, Err(HttpError::Exchange { .. })), "{result:?}");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = Address::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let transport = Transport::new(address, None, Duration::from_millis(300)).unwrap();
        let result = transport.send(Method::GET, "/healthz", None, None).await;
        assert!(matches!(result, Err(HttpError::Timeout { .. })), "{result:?}");
        drop(listener);
    }
}
