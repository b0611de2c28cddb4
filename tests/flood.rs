//! Hostile connections against the cloud's HTTPS listener and the relay's
//! WebSocket listener: while hundreds of connections are held half-open or
//! trickling (slow-loris), and after a flood of connections opened and
//! dropped, another client still gets its answers, and the server's
//! resident memory stays bounded. Against the cloud, the attackers come
//! from other loopback addresses than the client that is still answered,
//! each within the default cap of connections per address (256); and
//! request bodies that never end hold no more than the body budget.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Stdio},
    time::Duration,
};

use ferry_tests::{bin, cloud::spawn};
use ferry_world::api::Api;
use serde_json::Value;

/// Connections held of each kind.
const HELD: usize = 100;
/// Connections opened and dropped at once in the flood.
const FLOOD: usize = 2000;
/// What the held connections and the flood may add to the server's resident
/// memory: generous (a few KiB per connection would be 2 MiB), yet far
/// below what an unbounded buffer per connection would take.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A TCP connection to `addr` from the loopback address `from` (all of
/// 127.0.0.0/8 is this host's; the cloud counts each as another client).
fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from.into(), 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

fn tls(addr: SocketAddr, fingerprint: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    tls_over(TcpStream::connect(addr).unwrap(), fingerprint)
}

fn tls_from(
    from: Ipv4Addr,
    addr: SocketAddr,
    fingerprint: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    tls_over(connect_from(from, addr), fingerprint)
}

fn tls_over(
    mut tcp: TcpStream,
    fingerprint: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = ferry_cloud::tls::pinned_client_config(fingerprint).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut connection = rustls::ClientConnection::new(config, name).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut tcp).unwrap();
    }
    rustls::StreamOwned::new(connection, tcp)
}

/// The answers another client needs: health, version, and a login (which
/// hashes a password, the most expensive request there is).
fn still_answers(api: &Api, password: &str) {
    let (status, health) = api.call("GET", "/healthz", None, Value::Null).unwrap();
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")), "{health}");
    let (status, version) = api.call("GET", "/api/v1/version", None, Value::Null).unwrap();
    assert_eq!(status, 200, "{version}");
    let login = serde_json::json!({"name": "admin", "password": password});
    let (status, session) = api.call("POST", "/api/v1/auth/login", None, login).unwrap();
    assert_eq!(status, 200, "{session}");
}

#[test]
fn the_cloud_answers_others_under_slow_loris_and_a_connection_flood() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = spawn(dir.path(), &[]);
    let fingerprint = cloud.fingerprint.clone().unwrap();
    let cert = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
    let api = Api::https(cloud.addr, &cert).unwrap();
    let password = cloud.one_time_password().unwrap();
    still_answers(&api, &password);
    let pid = cloud.child.id();
    let before = rss_kib(pid);

    // Each kind of attack from an address of its own, another than the
    // client's (127.0.0.1).
    let attacker = |n: u8| Ipv4Addr::new(127, 0, 0, 2 + n);
    let mut held: Vec<Box<dyn Send>> = Vec::new();
    // TCP connections that never say anything.
    for _ in 0..HELD {
        held.push(Box::new(connect_from(attacker(0), cloud.addr)));
    }
    // A TLS record header that announces a ClientHello which never comes.
    for _ in 0..HELD {
        let mut tcp = connect_from(attacker(1), cloud.addr);
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        held.push(Box::new(tcp));
    }
    // Through TLS, a request head that never ends.
    for _ in 0..HELD {
        let mut stream = tls_from(attacker(2), cloud.addr, &fingerprint);
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").unwrap();
        stream.flush().unwrap();
        held.push(Box::new(stream));
    }
    // Through TLS, a request whose body never ends.
    for _ in 0..HELD {
        let mut stream = tls_from(attacker(3), cloud.addr, &fingerprint);
        stream
            .write_all(
                b"POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                  Content-Length: 60000\r\n\r\n{\"name\": \"",
            )
            .unwrap();
        stream.flush().unwrap();
        held.push(Box::new(stream));
    }
    still_answers(&api, &password);
    let holding = rss_kib(pid);

    // A flood: connections opened and dropped, some with half a handshake
    // (beyond 256 open at once, the cloud closes them at once).
    for i in 0..FLOOD {
        let mut tcp = connect_from(attacker(4), cloud.addr);
        if i % 2 == 0 {
            let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        }
    }
    still_answers(&api, &password);
    let flooded = rss_kib(pid);
    drop(held);
    still_answers(&api, &password);
    println!(
        "{} connections held, {FLOOD} flooded: resident memory {before} KiB before, {holding} KiB holding, \
         {flooded} KiB after the flood",
        4 * HELD
    );
    for rss in [holding, flooded] {
        assert!(rss < before + RSS_BOUND_KIB, "resident memory grew from {before} to {rss} KiB");
    }
    let stderr = cloud.stderr_text();
    assert!(!stderr.contains("panicked"), "{stderr}");
    silent_connections_are_cut_off(cloud.addr);
}

/// A connection that never starts its handshake is cut off by the server
/// (after its handshake timeout, 10 s for both): it cannot be held forever.
/// The wait is a generous bound, not a measurement.
fn silent_connections_are_cut_off(addr: SocketAddr) {
    let mut probe = TcpStream::connect(addr).unwrap();
    probe.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 1];
    let read = probe.read(&mut buf);
    let closed = matches!(&read, Ok(0))
        || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(closed, "a silent connection was not cut off: {read:?}");
}

/// One request over TLS without a body, its whole answer as text.
fn tls_get(addr: SocketAddr, fingerprint: &str, path: &str) -> String {
    let mut stream = tls(addr, fingerprint);
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    // The server may close without close_notify after its answer.
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The value of the metric sample `name` (with its labels) in `text`.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in {text}"))
}

/// The cloud's body budget in all (`ferry_cloud::http::extract::BODY_BUDGET`).
const BODY_BUDGET: u64 = 16 * 1024 * 1024;

#[test]
fn the_cloud_holds_no_more_request_bodies_than_its_budget() {
    // Slow bodies from 25 addresses, 16 each (1 MiB per address holds 16
    // of them), 24 MB offered in all: more than the 16 MiB budget.
    const SOURCES: u8 = 25;
    const EACH: usize = 16;
    const ANNOUNCED: usize = 64_000;
    const SENT: u64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let cloud = spawn(dir.path(), &[]);
    let fingerprint = cloud.fingerprint.clone().unwrap();
    let cert = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
    let api = Api::https(cloud.addr, &cert).unwrap();
    let password = cloud.one_time_password().unwrap();
    still_answers(&api, &password);
    let pid = cloud.child.id();
    let before = rss_kib(pid);

    let mut held = Vec::new();
    for source in 1..=SOURCES {
        for _ in 0..EACH {
            let mut stream = tls_from(Ipv4Addr::new(127, 0, 1, source), cloud.addr, &fingerprint);
            write!(
                stream,
                "POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 Content-Length: {ANNOUNCED}\r\n\r\n"
            )
            .unwrap();
            stream.write_all(&[b' '; SENT as usize]).unwrap();
            stream.flush().unwrap();
            held.push(stream);
        }
    }
    let bodies = u64::from(SOURCES) * EACH as u64;
    // Until every body is held whole or was refused; the wait is a
    // liveness bound, not a measurement.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (bytes, metrics) = loop {
        let metrics = tls_get(cloud.addr, &fingerprint, "/metrics");
        let bytes = sample(&metrics, "ferry_cloud_request_body_bytes_held");
        let refused = sample(&metrics, r#"ferry_cloud_request_bodies_refused_total{reason="global"}"#)
            + sample(&metrics, r#"ferry_cloud_request_bodies_refused_total{reason="per_source"}"#);
        if bytes.is_multiple_of(SENT) && bytes / SENT + refused == bodies {
            break (bytes, metrics);
        }
        assert!(std::time::Instant::now() < deadline, "{bytes} bytes held, {refused} bodies refused");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(bytes <= BODY_BUDGET, "{bytes} bytes of bodies held");
    // As many as the budget takes; each address was within its share.
    assert_eq!(bytes / SENT, BODY_BUDGET / SENT);
    assert_eq!(sample(&metrics, r#"ferry_cloud_request_bodies_refused_total{reason="per_source"}"#), 0);
    // What is left of the budget (37 216 bytes) takes another's login.
    still_answers(&api, &password);
    let holding = rss_kib(pid);
    drop(held);
    still_answers(&api, &password);
    println!(
        "{bodies} slow bodies of {SENT} bytes: {bytes} bytes held, resident memory {before} KiB before, \
         {holding} KiB holding"
    );
    // The bodies' bytes are bounded exactly (above); what resident memory
    // adds is the budget plus what each TLS connection costs the server
    // anyway (buffers, state, the allocator's slack: measured at about
    // 100 KiB), generously.
    let bound = BODY_BUDGET / 1024 + bodies * 192;
    assert!(holding < before + bound, "resident memory grew from {before} to {holding} KiB");
}

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An upgrade with a token no allocation has: the relay reads the request
/// and answers 401, which is all a client without an allocation can get.
fn relay_answers(addr: SocketAddr, fingerprint: &str) {
    let mut stream = tls(addr, fingerprint);
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Authorization: Bearer no-such-allocation\r\n\r\n",
        )
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&head));
}

#[test]
fn the_relay_answers_others_under_slow_loris_and_a_connection_flood() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["relay.test".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let fingerprint =
        ferry_control::pin::format_fingerprint(&ferry_control::pin::fingerprint(certified.cert.der()));
    // Userspace forwarding, no STUN, no metrics, no allocations: only the
    // WebSocket listener, on a port the system picks.
    let mut child = bin("ferry-relay")
        .args([
            "run",
            "--xdp",
            "off",
            "--public-ipv4",
            "127.0.0.1",
            "--ports",
            "41000-41009",
            "--stun",
            "off",
        ])
        .args(["--websocket", "127.0.0.1:0", "--metrics", "off", "--log", "info", "--log-format", "json"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let relay = Relay(child);
    let addr: SocketAddr = loop {
        let line = lines.next().expect("ferry-relay ended before its WebSocket listener").unwrap();
        let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if event["fields"]["message"] == "WebSocket relay listening" {
            break event["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    // Keep reading its log, so that a full pipe never blocks it.
    std::thread::spawn(move || lines.for_each(drop));
    let pid = relay.0.id();
    relay_answers(addr, &fingerprint);
    let before = rss_kib(pid);

    let mut held: Vec<Box<dyn Send>> = Vec::new();
    for _ in 0..HELD {
        held.push(Box::new(TcpStream::connect(addr).unwrap()));
    }
    for _ in 0..HELD {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        held.push(Box::new(tcp));
    }
    // Through TLS, an upgrade request that never ends.
    for _ in 0..HELD {
        let mut stream = tls(addr, &fingerprint);
        stream.write_all(b"GET / HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\nX-Slow: ").unwrap();
        stream.flush().unwrap();
        held.push(Box::new(stream));
    }
    relay_answers(addr, &fingerprint);
    let holding = rss_kib(pid);
    for i in 0..FLOOD {
        let mut tcp = TcpStream::connect(addr).unwrap();
        if i % 2 == 0 {
            let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        }
    }
    relay_answers(addr, &fingerprint);
    let flooded = rss_kib(pid);
    drop(held);
    relay_answers(addr, &fingerprint);
    println!(
        "relay: {} connections held, {FLOOD} flooded: resident memory {before} KiB before, {holding} KiB \
         holding, {flooded} KiB after the flood",
        3 * HELD
    );
    for rss in [holding, flooded] {
        assert!(rss < before + RSS_BOUND_KIB, "resident memory grew from {before} to {rss} KiB");
    }
    silent_connections_are_cut_off(addr);
}
