//! HTTP/1.1 to a Ferry cloud: hyper over plain TCP for a lab's `http://`
//! cloud, or over TLS that trusts exactly the pinned certificate
//! ([`crate::pin`]; a cloud's certificate is usually self-signed). One
//! connection per request: the callers (the gateway's `enroll` and
//! `diagnose`, the technician's `ferry` and its service) make a handful of
//! calls each, or hold one long event stream.
//!
//! [`Client`] does a whole request: [`Client::send`] reads the answer whole
//! (at most [`MAX_BODY`]), [`Client::open`] returns once the head is there
//! and hands out the body as it comes ([`Opened::next_chunk`], for
//! server-sent events). The steps ([`resolve`], [`connect`], [`tls`],
//! [`exchange`]) are public because `ferry-gateway diagnose` reports and
//! times each one.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
pub use hyper::{HeaderMap, Method};
use hyper::{body::Incoming, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::pin::{self, PinnedVerifier};

/// The largest answer read whole: a cloud's JSON and wg-quick files are small.
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// The `User-Agent` unless the request names another.
pub const USER_AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not a cloud URL: expected http(s)://HOST[:PORT]")]
    Url(String),
    #[error("{0} is https: give the SHA-256 fingerprint of its certificate (its pin)")]
    PinNeeded(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot connect to {authority}: {source}")]
    Connect { authority: String, source: io::Error },
    #[error(
        "the certificate of {authority} does not match the pin: expected {expected}, the server presented \
         {found} (it is not your cloud, or its certificate changed)"
    )]
    PinMismatch { authority: String, expected: String, found: String },
    #[error("TLS with {authority}: {detail}")]
    Tls { authority: String, detail: String },
    #[error("{step} with {authority} took longer than {} s", .after.as_secs_f32())]
    Timeout { step: &'static str, authority: String, after: Duration },
    /// hyper refused the answer (bad status line, impossible lengths, a
    /// truncated or oversized body) or the connection broke; `detail` is
    /// hyper's whole error chain, since its top-level message alone is vague.
    #[error("HTTP exchange with {authority} failed: {detail}")]
    Exchange { authority: String, detail: String },
}

impl HttpError {
    /// The cloud could not be reached at all (as opposed to a refusal or a
    /// broken answer).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            HttpError::Resolve { .. }
                | HttpError::NoAddress { .. }
                | HttpError::Connect { .. }
                | HttpError::Timeout { .. }
        )
    }
}

/// `http(s)://HOST[:PORT]`, nothing after it but a `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudUrl {
    pub https: bool,
    /// Without brackets, as DNS and TLS want it.
    pub host: String,
    pub port: u16,
}

impl CloudUrl {
    pub fn parse(text: &str) -> Result<CloudUrl, HttpError> {
        let bad = || HttpError::Url(text.to_string());
        let trimmed = text.trim();
        let (https, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = trimmed.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
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
        // A bare IPv6 address, or a colon in a name, reads as no host at all.
        let unbracketed = !authority.starts_with('[');
        if host.is_empty() || host.contains(['[', ']']) || (unbracketed && host.contains(':')) {
            return Err(bad());
        }
        Ok(CloudUrl { https, host, port })
    }

    /// `host:port` with brackets around an IPv6 host: the Host header too.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The canonical text: `scheme://host:port`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.authority())
    }

    /// The WebSocket URL of `path` on this server (`wss` for https).
    pub fn websocket(&self, path: &str) -> String {
        format!("{}://{}{path}", if self.https { "wss" } else { "ws" }, self.authority())
    }
}

/// One request. `Debug` leaves the bearer token and the body out.
#[derive(Clone)]
pub struct Request<'a> {
    pub method: Method,
    pub path: &'a str,
    /// Sent as `Authorization: Bearer ...`.
    pub bearer: Option<&'a str>,
    /// A JSON body.
    pub json: Option<Vec<u8>>,
    pub user_agent: &'a str,
}

impl<'a> Request<'a> {
    pub fn new(method: Method, path: &'a str) -> Request<'a> {
        Request { method, path, bearer: None, json: None, user_agent: USER_AGENT }
    }

    pub fn get(path: &'a str) -> Request<'a> {
        Request::new(Method::GET, path)
    }

    pub fn bearer(self, token: Option<&'a str>) -> Request<'a> {
        Request { bearer: token, ..self }
    }

    pub fn json(self, body: Option<Vec<u8>>) -> Request<'a> {
        Request { json: body, ..self }
    }

    pub fn user_agent(self, agent: &'a str) -> Request<'a> {
        Request { user_agent: agent, ..self }
    }

    fn build(self, url: &CloudUrl) -> Result<hyper::Request<Full<Bytes>>, HttpError> {
        let mut builder = hyper::Request::builder()
            .method(self.method)
            .uri(self.path)
            .header(header::HOST, url.authority())
            .header(header::USER_AGENT, self.user_agent)
            .header(header::ACCEPT, "application/json, application/problem+json, text/plain")
            .header(header::CONNECTION, "close");
        if let Some(token) = self.bearer {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if self.json.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        builder.body(Full::new(Bytes::from(self.json.unwrap_or_default()))).map_err(|e| HttpError::Exchange {
            authority: url.authority(),
            detail: format!("cannot build the request for {}: {e}", self.path),
        })
    }
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// An answer read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// An answer whose head has arrived; its body comes as it is read.
pub struct Opened {
    pub status: u16,
    pub headers: HeaderMap,
    body: Incoming,
    authority: String,
}

impl Opened {
    /// The next piece of the body; `None` at its end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, HttpError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    // Trailers carry nothing a Ferry client reads.
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(exchange_error(&self.authority, &e))),
            }
        }
    }

    /// The rest of the body, at most `max` bytes of it (more is an error).
    pub async fn rest(self, max: usize) -> Result<Bytes, HttpError> {
        let authority = self.authority;
        Ok(Limited::new(self.body, max)
            .collect()
            .await
            .map_err(|e| exchange_error(&authority, &*e))?
            .to_bytes())
    }

    async fn whole(self) -> Result<Response, HttpError> {
        let (status, headers) = (self.status, self.headers.clone());
        let body = self.rest(MAX_BODY).await?;
        Ok(Response { status, headers, body })
    }
}

/// DNS: every address the host resolves to.
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

/// How long a [`Client`] waits for one address to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// TCP to the first address that answers, each given `timeout`.
pub async fn connect(
    url: &CloudUrl,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<TcpStream, HttpError> {
    let mut last = io::Error::other("no address");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Requests are small and answers awaited: no Nagle delay.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connection timed out"),
        }
    }
    Err(HttpError::Connect { authority: url.authority(), source: last })
}

/// The TLS handshake within `timeout`, trusting only the certificate whose
/// SHA-256 is `pin`.
pub async fn tls(
    url: &CloudUrl,
    stream: TcpStream,
    pin: [u8; 32],
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HttpError> {
    let pinned = Pinned::new(url, pin)?;
    within(timeout, "the TLS handshake", url, pinned.handshake(url, stream)).await
}

/// One request on `io` (`Connection: close`); returns when the answer's
/// head is there. The caller bounds the time.
pub async fn open(
    url: &CloudUrl,
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    request: Request<'_>,
) -> Result<Opened, HttpError> {
    let authority = url.authority();
    let request = request.build(url)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| exchange_error(&authority, &e))?;
    // The connection task moves the bytes; its errors reach the request and
    // the body, so its own result adds nothing.
    tokio::spawn(async move { drop(connection.await) });
    let answer = sender.send_request(request).await.map_err(|e| exchange_error(&authority, &e))?;
    let (head, body) = answer.into_parts();
    Ok(Opened { status: head.status.as_u16(), headers: head.headers, body, authority })
}

/// One request on `io`, its answer read whole within `timeout`.
pub async fn exchange(
    url: &CloudUrl,
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    request: Request<'_>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    within(timeout, "the HTTP exchange", url, async { open(url, io, request).await?.whole().await }).await
}

async fn within<T>(
    timeout: Duration,
    step: &'static str,
    url: &CloudUrl,
    work: impl Future<Output = Result<T, HttpError>>,
) -> Result<T, HttpError> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(HttpError::Timeout { step, authority: url.authority(), after: timeout }))
}

/// A TLS client configuration that trusts the pinned certificate only.
#[derive(Clone)]
struct Pinned {
    connector: TlsConnector,
    verifier: Arc<PinnedVerifier>,
}

impl Pinned {
    fn new(url: &CloudUrl, pin: [u8; 32]) -> Result<Pinned, HttpError> {
        let verifier = Arc::new(PinnedVerifier::new(pin));
        let config = pin::client_config(verifier.clone(), &[b"http/1.1"])
            .map_err(|e| HttpError::Tls { authority: url.authority(), detail: e.to_string() })?;
        Ok(Pinned { connector: TlsConnector::from(Arc::new(config)), verifier })
    }

    async fn handshake(&self, url: &CloudUrl, tcp: TcpStream) -> Result<TlsStream<TcpStream>, HttpError> {
        let authority = url.authority();
        // An IP address is a valid server name too; the pin decides anyway.
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| HttpError::Tls { authority: authority.clone(), detail: e.to_string() })?;
        self.connector.connect(name, tcp).await.map_err(|e| match self.verifier.seen() {
            Some(found) if found != self.verifier.pin() => HttpError::PinMismatch {
                authority,
                expected: pin::format_fingerprint(&self.verifier.pin()),
                found: pin::format_fingerprint(&found),
            },
            _ => HttpError::Tls { authority, detail: e.to_string() },
        })
    }
}

/// Talks to one cloud: every request on a connection of its own.
#[derive(Clone)]
pub struct Client {
    url: CloudUrl,
    tls: Option<Pinned>,
    timeout: Duration,
}

impl Client {
    /// A client of `url`, each request (or each answer's head, for
    /// [`Client::open`]) given `timeout`; an https cloud needs its pin.
    pub fn new(url: CloudUrl, pin: Option<[u8; 32]>, timeout: Duration) -> Result<Client, HttpError> {
        let tls = match (url.https, pin) {
            (false, _) => None,
            (true, None) => return Err(HttpError::PinNeeded(url.url())),
            (true, Some(pin)) => Some(Pinned::new(&url, pin)?),
        };
        Ok(Client { url, tls, timeout })
    }

    pub fn url(&self) -> &CloudUrl {
        &self.url
    }

    /// The request, its answer read whole (at most [`MAX_BODY`]).
    pub async fn send(&self, request: Request<'_>) -> Result<Response, HttpError> {
        within(self.timeout, "the request", &self.url, async { self.head(request).await?.whole().await })
            .await
    }

    /// The request; returns once the answer's head is there, its body then
    /// read as it comes, for as long as it lasts (server-sent events).
    pub async fn open(&self, request: Request<'_>) -> Result<Opened, HttpError> {
        within(self.timeout, "the request", &self.url, self.head(request)).await
    }

    async fn head(&self, request: Request<'_>) -> Result<Opened, HttpError> {
        let addrs = resolve(&self.url).await?;
        // Each address gets less than the whole request: a host that is down
        // (no answer at all) must end as a connection error, which callers
        // with several replicas know never left, not as the request's timeout.
        let tcp = connect(&self.url, &addrs, self.timeout.min(CONNECT_TIMEOUT)).await?;
        match &self.tls {
            None => open(&self.url, tcp, request).await,
            Some(pinned) => open(&self.url, pinned.handshake(&self.url, tcp).await?, request).await,
        }
    }
}

/// hyper's whole error chain: its top-level message alone is vague.
fn exchange_error(authority: &str, error: &(dyn std::error::Error + 'static)) -> HttpError {
    let detail = std::iter::successors(Some(error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    HttpError::Exchange { authority: authority.to_string(), detail }
}

#[cfg(test)]
mod tests;
