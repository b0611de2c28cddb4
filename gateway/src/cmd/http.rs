//! The HTTP client of `enroll` and `diagnose`: hyper's HTTP/1.1 over plain
//! TCP or over TLS pinned to one certificate (`ferry_control::pin`). The
//! steps (DNS, TCP, TLS, HTTP) are separate functions because `diagnose`
//! reports and times each one; `request` chains them for `enroll`.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use ferry_control::pin::{self, PinnedVerifier};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{HeaderMap, Method, Request, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// The largest response body read (the cloud's answers here are small JSON).
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid cloud URL {0:?}: expected http(s)://host[:port]")]
    Url(String),
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error(
        "the cloud's certificate does not match the pin: expected {expected}, the server presented {found}"
    )]
    PinMismatch { expected: String, found: String },
    #[error("TLS with {target}: {source}")]
    Tls { target: String, source: io::Error },
    #[error("{step} with {target} took longer than {} s", .after.as_secs_f32())]
    Timeout { step: &'static str, target: String, after: Duration },
    /// hyper refused the answer (bad status line, impossible lengths, a
    /// truncated body) or the connection broke; `detail` is hyper's whole
    /// error chain, since its top-level message alone is vague.
    #[error("HTTP exchange with {target} failed: {detail}")]
    Exchange { target: String, detail: String },
}

/// `http(s)://host:port`, as `enroll --cloud` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl CloudUrl {
    pub fn parse(text: &str) -> Result<CloudUrl, HttpError> {
        let bad = || HttpError::Url(text.to_string());
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad());
        }
        let default_port = if https { 443 } else { 80 };
        // [v6]:port, [v6], host:port, host
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), port.parse().map_err(|_| bad())?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(CloudUrl { https, host, port })
    }

    /// The canonical text: `scheme://host:port`.
    pub fn to_text(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.target())
    }

    /// The WebSocket URL of `path` on this cloud (`wss` for https).
    pub fn websocket(&self, path: &str) -> String {
        let scheme = if self.https { "wss" } else { "ws" };
        format!("{scheme}://{}{path}", self.target())
    }

    /// `host:port`, with brackets around an IPv6 host: the Host header too.
    fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// Runs `future` to completion on a runtime of its own: the commands are
/// blocking, and one request does not need more than one thread.
pub fn block_on<T>(future: impl Future<Output = Result<T, HttpError>>) -> Result<T, HttpError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HttpError::Runtime)?
        .block_on(future)
}

/// DNS: every address `host` resolves to.
pub async fn resolve(url: &CloudUrl) -> Result<Vec<SocketAddr>, HttpError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|source| HttpError::Resolve { host: url.host.clone(), source })?
        .collect();
    if addrs.is_empty() {
        return Err(HttpError::NoAddress { host: url.host.clone() });
    }
    Ok(addrs)
}

/// TCP to the first address that answers, each given `timeout`.
pub async fn connect(
    url: &CloudUrl,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<TcpStream, HttpError> {
    let mut last = io::Error::other("no address");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connection timed out"),
        }
    }
    Err(HttpError::Connect { target: url.target(), source: last })
}

/// The TLS handshake, trusting only the certificate whose SHA-256 is `pin`.
pub async fn tls(
    url: &CloudUrl,
    stream: TcpStream,
    pin: [u8; 32],
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HttpError> {
    let target = url.target();
    let tls_err = |source: io::Error| HttpError::Tls { target: target.clone(), source };
    let verifier = Arc::new(PinnedVerifier::new(pin));
    let config =
        pin::client_config(verifier.clone(), &[b"http/1.1"]).map_err(|e| tls_err(io::Error::other(e)))?;
    let name = ServerName::try_from(url.host.clone()).map_err(|e| tls_err(io::Error::other(e)))?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, stream);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => match verifier.seen().filter(|found| *found != pin) {
            Some(found) => Err(HttpError::PinMismatch {
                expected: pin::format_fingerprint(&pin),
                found: pin::format_fingerprint(&found),
            }),
            None => Err(tls_err(e)),
        },
        Err(_) => Err(HttpError::Timeout { step: "the TLS handshake", target, after: timeout }),
    }
}

/// One request on `stream` (`Connection: close`), its answer read whole
/// within `timeout`.
pub async fn exchange(
    url: &CloudUrl,
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    method: Method,
    path: &str,
    json_body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let target = url.target();
    let failed = |e: &(dyn std::error::Error + 'static)| HttpError::Exchange {
        target: target.clone(),
        detail: error_chain(e),
    };
    let work = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| failed(&e))?;
        // The connection task moves the bytes; its errors reach the request
        // and the body below, so its own result adds nothing.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &target)
            .header(header::USER_AGENT, concat!("ferry-gateway/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "application/json")
            .header(header::CONNECTION, "close");
        if json_body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request =
            request.body(Full::new(Bytes::from(json_body.unwrap_or_default()))).map_err(|e| failed(&e))?;
        let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY).collect().await.map_err(|e| failed(&*e))?.to_bytes();
        Ok(HttpResponse { status: head.status.as_u16(), headers: head.headers, body })
    };
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| {
        Err(HttpError::Timeout { step: "the HTTP exchange", target: target.clone(), after: timeout })
    })
}

/// The whole request, connection included: resolve, connect, TLS if https.
pub async fn request(
    url: &CloudUrl,
    pin: Option<[u8; 32]>,
    method: Method,
    path: &str,
    json_body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let addrs = resolve(url).await?;
    let stream = connect(url, &addrs, timeout).await?;
    if url.https {
        let pin = pin.ok_or_else(|| HttpError::Url(format!("{}: https needs a pin", url.to_text())))?;
        let tls = tls(url, stream, pin, timeout).await?;
        exchange(url, tls, method, path, json_body, timeout).await
    } else {
        exchange(url, stream, method, path, json_body, timeout).await
    }
}

/// `outer: inner: innermost`, for errors whose `Display` leaves the cause out.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[test]
    fn urls_parse() {
        let url = CloudUrl::parse("https://cloud.example").unwrap();
        assert_eq!((url.https, url.host.as_str(), url.port), (true, "cloud.example", 443));
        assert_eq!(url.to_text(), "https://cloud.example:443");
        let url = CloudUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!((url.https, url.host.as_str(), url.port), (false, "127.0.0.1", 8080));
        let url = CloudUrl::parse("https://[::1]:8443").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 8443));
        assert_eq!(url.to_text(), "https://[::1]:8443");
        assert_eq!(url.websocket("/api/v1/control/gateway"), "wss://[::1]:8443/api/v1/control/gateway");
        let url = CloudUrl::parse("http://203.0.113.10:7600").unwrap();
        assert_eq!(url.websocket("/ws"), "ws://203.0.113.10:7600/ws");
        for bad in ["cloud.example", "ftp://x", "https://", "http://x:port", "http://x/api", "http://u@x"] {
            assert!(CloudUrl::parse(bad).is_err(), "{bad}");
        }
    }

    /// One request to a server on the other end of an in-memory pipe that
    /// reads the request's head, writes `answer` and closes; what the client
    /// made of it, and the request the server saw.
    async fn against(
        answer: &'static [u8],
        body: Option<Vec<u8>>,
    ) -> (Result<HttpResponse, HttpError>, String) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = server.write_all(answer).await;
            String::from_utf8_lossy(&request).into_owned()
        });
        let url = CloudUrl::parse("http://cloud.example:7600").unwrap();
        let method = if body.is_some() { Method::POST } else { Method::GET };
        let result = exchange(&url, client, method, "/api/v1/enrol", body, Duration::from_secs(5)).await;
        (result, server.await.unwrap())
    }

    #[tokio::test]
    async fn answers_with_a_length_or_chunks_are_read() {
        let (response, request) = against(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\n{}",
            Some(b"{\"a\":1}".to_vec()),
        )
        .await;
        let response = response.unwrap();
        assert_eq!((response.status, &response.body[..]), (200, &b"{}"[..]));
        assert_eq!(response.header("date"), Some("x"));
        let request = request.to_ascii_lowercase();
        assert!(request.starts_with("post /api/v1/enrol http/1.1\r\n"), "{request}");
        for line in ["host: cloud.example:7600", "content-type: application/json", "content-length: 7"] {
            assert!(request.contains(line), "{line} in {request}");
        }

        let (response, _) = against(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            None,
        )
        .await;
        let response = response.unwrap();
        assert_eq!((response.status, &response.body[..]), (401, &b"abcde"[..]));
    }

    /// What the hand-written parser this replaced panicked on, and more.
    #[tokio::test]
    async fn hostile_answers_are_errors() {
        let huge_body: &'static [u8] = {
            let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n".to_vec();
            answer.resize(answer.len() + 2_000_000, b'x');
            answer.leak()
        };
        for answer in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"",
            huge_body,
        ] {
            let (result, _) = against(answer, None).await;
            let shown = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
            match result {
                Err(HttpError::Exchange { target, detail }) => {
                    assert_eq!(target, "cloud.example:7600");
                    assert!(!detail.is_empty(), "{shown}");
                }
                other => panic!("{shown}: {other:?}"),
            }
        }
    }

    // Paused time: the timeout fires as soon as nothing else can happen.
    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out() {
        let (client, _server) = tokio::io::duplex(1024);
        let url = CloudUrl::parse("http://cloud.example").unwrap();
        let result = exchange(&url, client, Method::GET, "/healthz", None, Duration::from_secs(10)).await;
        assert!(matches!(result, Err(HttpError::Timeout { step: "the HTTP exchange", .. })), "{result:?}");
    }
}
