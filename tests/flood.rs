//! Hostile connections against the cloud's HTTPS listener and the relay's
//! WebSocket listener: while hundreds of connections are held half-open or
//! trickling (slow-loris), and after a flood of connections opened and
//! dropped, another client still gets its answers, and the server's
//! resident memory stays bounded.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
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

fn tls(addr: SocketAddr, fingerprint: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = ferry_cloud::tls::pinned_client_config(fingerprint).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut connection = rustls::ClientConnection::new(config, name).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
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

    let mut held: Vec<Box<dyn Send>> = Vec::new();
    // TCP connections that never say anything.
    for _ in 0..HELD {
        held.push(Box::new(TcpStream::connect(cloud.addr).unwrap()));
    }
    // A TLS record header that announces a ClientHello which never comes.
    for _ in 0..HELD {
        let mut tcp = TcpStream::connect(cloud.addr).unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        held.push(Box::new(tcp));
    }
    // Through TLS, a request head that never ends.
    for _ in 0..HELD {
        let mut stream = tls(cloud.addr, &fingerprint);
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").unwrap();
        stream.flush().unwrap();
        held.push(Box::new(stream));
    }
    // Through TLS, a request whose body never ends.
    for _ in 0..HELD {
        let mut stream = tls(cloud.addr, &fingerprint);
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

    // A flood: connections opened and dropped, some with half a handshake.
    for i in 0..FLOOD {
        let mut tcp = TcpStream::connect(cloud.addr).unwrap();
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
