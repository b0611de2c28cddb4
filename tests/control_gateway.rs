//! A gateway's control side on loopback, for tests of the cloud's faces
//! (the web console): it enrols with a real enrolment token over HTTPS
//! (pinning the cloud's certificate), holds a real control channel
//! (ferry-control's client over `wss://`), acknowledges desired states, and
//! sends the events a customer's actions make (switch, approval, denial)
//! and those its data path would report (peers, bytes). It has no data path
//! and no local panel: that is the real `ferry-gateway` in the network lab.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::mpsc,
    time::Duration,
};

use ferry_control::{
    Applied, GatewayId, SessionId, SigningKey, WgKey,
    client::{self, Channel},
    gateway::{DesiredState, Event, FromGateway, GatewayEvent, ToGateway},
};
use serde_json::{Value, json};

/// One HTTP/1.1 request over TLS to a server whose certificate has the
/// SHA-256 `fingerprint`; returns the status, the headers (lower-case
/// names) and the body.
pub fn pinned_request(
    addr: SocketAddr,
    fingerprint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Vec<(String, String)>, String) {
    let config = ferry_cloud::tls::pinned_client_config(fingerprint).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A close without close_notify after the whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => panic!("{method} {path}: {e}"),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    (status, headers, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// A JSON request with an optional bearer token, over pinned TLS.
pub fn pinned_call(
    addr: SocketAddr,
    fingerprint: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    let (status, _, text) = pinned_request(addr, fingerprint, method, path, &headers, body.as_ref());
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

enum Command {
    Event(GatewayEvent, mpsc::Sender<()>),
    Stop,
}

pub struct ControlGateway {
    pub id: u64,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    states: mpsc::Receiver<DesiredState>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub latest: Option<DesiredState>,
}

impl ControlGateway {
    /// Enrols with `token` (as `ferry-gateway enroll` would) and connects
    /// the control channel with the switch as given.
    pub fn enrol_and_connect(
        addr: SocketAddr,
        fingerprint: &str,
        token: &str,
        switch_on: bool,
    ) -> ControlGateway {
        let signing = SigningKey::from_bytes(&rand_bytes());
        let identity = hex(&signing.verifying_key().to_bytes());
        let (status, enrolled) = pinned_call(
            addr,
            fingerprint,
            "POST",
            "/api/v1/enrol",
            None,
            Some(json!({"token": token, "identity_key": identity})),
        );
        assert_eq!(status, 200, "enrolment refused: {enrolled}");
        let id = enrolled["gateway_id"].as_u64().unwrap();
        let url = format!("wss://{addr}{}", enrolled["control_path"].as_str().unwrap());
        let pin = ferry_control::pin::parse_fingerprint(fingerprint).unwrap();
        let (commands, mut command_rx) = tokio::sync::mpsc::unbounded_channel();
        let (state_tx, states) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let ws = client::connect(&url, Some(pin)).await.unwrap();
                let mut channel = Channel::new(ws);
                let wg = WgKey(rand_bytes());
                let (_, first) = client::gateway_handshake(
                    &mut channel,
                    &signing,
                    GatewayId(id),
                    "console-test-gateway 1.0",
                    switch_on,
                    wg,
                    None,
                )
                .await
                .unwrap();
                let _ = state_tx.send(first);
                let _ = ready_tx.send(());
                let mut seq = 0;
                let mut waiting: Vec<(u64, mpsc::Sender<()>)> = Vec::new();
                // As the real gateway: the cloud closes a channel silent
                // for a minute.
                let mut keepalive = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tokio::select! {
                        _ = keepalive.tick() => {
                            let _ = channel.ping().await;
                        }
                        message = channel.recv::<ToGateway>() => match message {
                            Ok(Some(ToGateway::DesiredState(state))) => {
                                let applied = FromGateway::Applied(Applied { revision: state.revision });
                                let _ = channel.send(&applied).await;
                                let _ = state_tx.send(state);
                            }
                            Ok(Some(ToGateway::EventAck(ack))) => {
                                let (acked, pending): (Vec<_>, Vec<_>) =
                                    waiting.drain(..).partition(|(s, _)| *s <= ack.seq);
                                waiting = pending;
                                for (_, done) in acked {
                                    let _ = done.send(());
                                }
                            }
                            Ok(Some(_)) => {}
                            Ok(None) | Err(_) => return,
                        },
                        command = command_rx.recv() => match command {
                            Some(Command::Event(event, done)) => {
                                seq += 1;
                                let frame = FromGateway::Event(Event { seq, time_ms: 0, event });
                                channel.send(&frame).await.unwrap();
                                waiting.push((seq, done));
                            }
                            // Dropping the channel closes the connection, as a gateway going away.
                            Some(Command::Stop) | None => return,
                        },
                    }
                }
            });
        });
        ready.recv_timeout(Duration::from_secs(10)).expect("the control channel comes up");
        ControlGateway { id, commands, states, thread: Some(thread), latest: None }
    }

    /// Sends an event and waits until the cloud acknowledges it (stored).
    pub fn event(&self, event: GatewayEvent) {
        let (done, acked) = mpsc::channel();
        self.commands.send(Command::Event(event, done)).unwrap();
        acked.recv_timeout(Duration::from_secs(10)).expect("the cloud acknowledges the event");
    }

    pub fn switch(&self, on: bool) {
        self.event(GatewayEvent::SwitchChanged { on });
    }

    pub fn approve(&self, session: u64) {
        self.event(GatewayEvent::Approved { session_id: SessionId(session) });
    }

    pub fn deny(&self, session: u64) {
        self.event(GatewayEvent::Denied { session_id: SessionId(session) });
    }

    /// The newest desired state received so far.
    pub fn desired(&mut self) -> Option<&DesiredState> {
        while let Ok(state) = self.states.try_recv() {
            self.latest = Some(state);
        }
        self.latest.as_ref()
    }
}

impl Drop for ControlGateway {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
