//! A minimal blocking HTTP/1.1 client for `enroll` and `diagnose`, over plain
//! TCP or TLS pinned to one certificate (`ferry_control::pin`). ureq cannot
//! take a custom rustls verifier, and `diagnose` wants each step (DNS, TCP,
//! TLS, HTTP) timed and reported on its own anyway.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    sync::Arc,
    time::Duration,
};

use ferry_control::pin::{self, PinnedVerifier};
use rustls::pki_types::ServerName;

/// The largest response read (the cloud's answers here are small JSON).
const MAX_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid cloud URL {0:?}: expected http(s)://host[:port]")]
    Url(String),
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
    #[error("talking to {target}: {source}")]
    Io { target: String, source: io::Error },
    #[error("malformed HTTP response from {target}: {detail}")]
    Malformed { target: String, detail: String },
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

    fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// DNS: every address `host` resolves to.
pub fn resolve(url: &CloudUrl) -> Result<Vec<SocketAddr>, HttpError> {
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve { host: url.host.clone(), source })?
        .collect();
    if addrs.is_empty() {
        return Err(HttpError::NoAddress { host: url.host.clone() });
    }
    Ok(addrs)
}

/// TCP to the first address that answers.
pub fn connect(url: &CloudUrl, addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, HttpError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => {
                stream.set_read_timeout(Some(timeout)).ok();
                stream.set_write_timeout(Some(timeout)).ok();
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(HttpError::Connect {
        target: url.target(),
        source: last.unwrap_or_else(|| io::Error::other("no address")),
    })
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The TLS handshake, trusting only the certificate whose SHA-256 is `pin`.
pub fn tls(url: &CloudUrl, stream: TcpStream, pin: [u8; 32]) -> Result<TlsStream, HttpError> {
    let target = url.target();
    let tls_err = |source: io::Error| HttpError::Tls { target: target.clone(), source };
    let verifier = Arc::new(PinnedVerifier::new(pin));
    let config =
        pin::client_config(verifier.clone(), &[b"http/1.1"]).map_err(|e| tls_err(io::Error::other(e)))?;
    let name = ServerName::try_from(url.host.clone()).map_err(|e| tls_err(io::Error::other(e)))?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| tls_err(io::Error::other(e)))?;
    let mut tls = rustls::StreamOwned::new(connection, stream);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            if let Some(found) = verifier.seen().filter(|found| *found != pin) {
                return Err(HttpError::PinMismatch {
                    expected: pin::format_fingerprint(&pin),
                    found: pin::format_fingerprint(&found),
                });
            }
            return Err(tls_err(e));
        }
    }
    Ok(tls)
}

/// One request on a fresh connection (`Connection: close`).
pub fn exchange(
    url: &CloudUrl,
    stream: &mut impl ReadWrite,
    method: &str,
    path: &str,
    json_body: Option<&[u8]>,
) -> Result<HttpResponse, HttpError> {
    let target = url.target();
    let io_err = |source: io::Error| HttpError::Io { target: target.clone(), source };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferry-gateway/{}\r\nAccept: application/json\r\nConnection: close\r\n",
        target,
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    if let Some(body) = json_body {
        request.extend_from_slice(
            format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()).as_bytes(),
        );
    }
    request.extend_from_slice(b"\r\n");
    if let Some(body) = json_body {
        request.extend_from_slice(body);
    }
    stream.write_all(&request).map_err(io_err)?;
    stream.flush().map_err(io_err)?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(done) = complete(&buf) {
            buf.truncate(done);
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A server that closes without TLS close_notify: what was read counts.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !buf.is_empty() => break,
            Err(e) => return Err(io_err(e)),
        }
        if buf.len() > MAX_RESPONSE {
            return Err(HttpError::Malformed { target, detail: "response too large".into() });
        }
    }
    parse(&buf).map_err(|detail| HttpError::Malformed { target, detail })
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The whole request, connection included: resolve, connect, TLS if https.
pub fn request(
    url: &CloudUrl,
    pin: Option<[u8; 32]>,
    method: &str,
    path: &str,
    json_body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let addrs = resolve(url)?;
    let stream = connect(url, &addrs, timeout)?;
    if url.https {
        let pin = pin.ok_or_else(|| HttpError::Url(format!("{}: https needs a pin", url.to_text())))?;
        let mut tls = tls(url, stream, pin)?;
        exchange(url, &mut tls, method, path, json_body)
    } else {
        let mut stream = stream;
        exchange(url, &mut stream, method, path, json_body)
    }
}

fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The length of a complete response in `buf`, if it is complete.
fn complete(buf: &[u8]) -> Option<usize> {
    let end = header_end(buf)?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head.contains("\r\ntransfer-encoding: chunked") {
        return buf.ends_with(b"0\r\n\r\n").then_some(buf.len());
    }
    let length = head
        .split("\r\n")
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())?;
    (buf.len() >= end + length).then_some(end + length)
}

fn parse(buf: &[u8]) -> Result<HttpResponse, String> {
    let end = header_end(buf).ok_or("no end of headers")?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not HTTP/1.x: {status_line:?}"));
    }
    let status =
        parts.next().and_then(|s| s.parse().ok()).ok_or(format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn responses_parse_with_length_or_chunks() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\n{}";
        assert_eq!(complete(plain), Some(plain.len()));
        assert_eq!(complete(&plain[..plain.len() - 1]), None);
        let response = parse(plain).unwrap();
        assert_eq!((response.status, response.body.as_slice()), (200, &b"{}"[..]));
        assert_eq!(response.header("date"), Some("x"));

        let chunked = b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(complete(chunked), Some(chunked.len()));
        let response = parse(chunked).unwrap();
        assert_eq!((response.status, response.body.as_slice()), (401, &b"abcde"[..]));
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
