//! What a generated client meets on the wire, found by schemathesis
//! (tests/schemathesis.rs): a refusal before the body is read must not
//! close the connection under a keep-alive client, an oversized body gets its
//! 413 rather than a reset, and a path parameter that does not parse is a
//! problem like every other refusal. And what hostile clients meet: the
//! bytes of request bodies held stay within the body budget, in all and
//! per address, while other clients are still answered; the refusals of a
//! body (408, 413, 503) are counted like every other answer.

#![allow(clippy::unwrap_used, reason = "test code: a step that fails should fail the test")]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use common::Api;
use ferry_cloud::{
    http::{self, AppState, BodyBudget},
    metrics::{ReasonLabels, RequestLabels},
    rights::Role,
    store::{SledBackend, Store},
};

/// How many answers `method route` got with `status`.
fn answered(state: &AppState, method: &str, route: &str, status: u16) -> u64 {
    let labels = RequestLabels { method: method.into(), route: route.into(), status };
    state.metrics.requests.get_or_create(&labels).get()
}

/// Reads one response (head and a Content-Length body) from `reader`.
fn response(reader: &mut BufReader<TcpStream>) -> (u16, String, String) {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed after {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let status = head[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length").map_or(0, |l| l.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, header("content-type").unwrap_or_default(), String::from_utf8(body).unwrap())
}

fn connect(api: &Api) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(api.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

#[test]
fn a_refusal_before_the_body_keeps_the_connection_open() {
    let api = Api::start();
    let (mut stream, mut reader) = connect(&api);
    let body = r#"{"name":"mallory","role":"administrator","password":"a long enough password"}"#;
    for _ in 0..3 {
        // No credential: refused before the handler reads the body.
        write!(
            stream,
            "POST /api/v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let (status, content_type, _) = response(&mut reader);
        assert_eq!((status, content_type.as_str()), (401, "application/problem+json"));
    }
    // The same connection still serves.
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(response(&mut reader).0, 200);
}

#[test]
fn an_oversized_body_is_answered_with_its_problem_not_a_reset() {
    let api = Api::start();
    let (mut stream, mut reader) = connect(&api);
    let body = format!(r#"{{"name":"{}"}}"#, "x".repeat(200 * 1024));
    write!(
        stream,
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The whole body goes out before the answer is read, as most clients do.
    stream.write_all(body.as_bytes()).unwrap();
    let (status, content_type, text) = response(&mut reader);
    assert_eq!((status, content_type.as_str()), (413, "application/problem+json"), "{text}");
    assert!(text.contains("65536 bytes"), "{text}");
    assert_eq!(answered(&api.state, "POST", "/api/v1/auth/login", 413), 1);
}

#[test]
fn a_path_parameter_that_does_not_parse_is_a_problem() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let (admin, _) = api.login("root");
    for path in ["/api/v1/users/abc", "/api/v1/users/-1", "/api/v1/sessions/18446744073709551616"] {
        let reply = api.get(path, &admin);
        assert_eq!((reply.status, reply.content_type.as_str()), (400, "application/problem+json"), "{path}");
        assert!(reply.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{reply:?}");
    }
}

/// A cloud served with its connections' addresses, as `ferry-cloud` serves
/// it, with request bodies read within `budget`.
struct Served {
    addr: SocketAddr,
    state: AppState,
    budget: BodyBudget,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(budget: impl FnOnce(&AppState) -> BodyBudget) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::with_backend(std::sync::Arc::new(SledBackend::open(&dir.path().join("db")).unwrap()))
                .unwrap();
        let state = AppState::new(store).unwrap();
        let budget = budget(&state);
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = http::router_with(state.clone(), budget.clone());
        runtime.spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        Served { addr, state, budget, runtime, _dir: dir }
    }

    /// A connection from the loopback address `from` (all of 127.0.0.0/8
    /// is this host's): another address, another source.
    fn connect_from(&self, from: &str) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let stream = self.runtime.block_on(socket.connect(self.addr)).unwrap().into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream
    }

    /// A login from `from` with a password that is wrong: answered, as
    /// anyone's, with 401.
    fn login_from(&self, from: &str) -> u16 {
        let mut stream = self.connect_from(from);
        let body = r#"{"name":"nobody","password":"not the password"}"#;
        write!(
            stream,
            "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        response(&mut BufReader::new(stream)).0
    }

    fn health_from(&self, from: &str) -> u16 {
        let mut stream = self.connect_from(from);
        write!(stream, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        response(&mut BufReader::new(stream)).0
    }

    fn refused(&self, reason: ReasonLabels) -> u64 {
        self.state.metrics.bodies_refused.get_or_create(&reason).get()
    }

    /// Waits until every slow body has either been refused or is held
    /// whole (`SENT` bytes each), and returns how many are held. The wait
    /// is a liveness bound, not a measurement.
    fn settle(&self, bodies: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let held = self.budget.held();
            let refused = self.refused(ReasonLabels::GLOBAL) + self.refused(ReasonLabels::PER_SOURCE);
            if held.is_multiple_of(SENT) && held / SENT + usize::try_from(refused).unwrap() == bodies {
                // The gauge follows the budget a moment behind while bytes
                // arrive; once nothing moves, they must agree.
                assert_eq!(self.state.metrics.body_bytes_held.get(), i64::try_from(held).unwrap());
                return held / SENT;
            }
            assert!(std::time::Instant::now() < deadline, "{held} bytes held, {refused} refused");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What each slow body announces, and what of it is sent: it is never
/// finished.
const ANNOUNCED: usize = 60_000;
const SENT: usize = 40_000;

/// A login whose body stops after [`SENT`] bytes, from `from`.
fn slow_body(served: &Served, from: &str) -> TcpStream {
    let mut stream = served.connect_from(from);
    write!(
        stream,
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {ANNOUNCED}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&[b' '; SENT]).unwrap();
    stream
}

#[test]
fn one_address_cannot_hold_more_body_bytes_than_its_share() {
    const PER_SOURCE: usize = 128 * 1024;
    let served = Served::start(|state| BodyBudget::new(1024 * 1024, PER_SOURCE, &state.metrics));
    let bodies = 8;
    let slow: Vec<TcpStream> = (0..bodies).map(|_| slow_body(&served, "127.0.0.1")).collect();
    let held = served.settle(bodies);
    // 3 × 40 000 bytes fit in 128 KiB, a fourth does not.
    assert_eq!(held, PER_SOURCE / SENT);
    assert!(served.budget.held() <= PER_SOURCE);
    assert_eq!(served.refused(ReasonLabels::PER_SOURCE), u64::try_from(bodies - held).unwrap());
    assert_eq!(served.refused(ReasonLabels::GLOBAL), 0);

    // Another address is answered as usual; the first one still is where
    // no body is held for it.
    assert_eq!(served.login_from("127.0.0.2"), 401);
    assert_eq!(served.health_from("127.0.0.1"), 200);
    // From the full address, what is left of its share (11 072 bytes) still
    // takes a small body, but no larger one: refused, with its problem and
    // when to retry.
    assert_eq!(served.login_from("127.0.0.1"), 401);
    let mut stream = served.connect_from("127.0.0.1");
    let body = format!(r#"{}{{"name":"nobody","password":"not the password"}}"#, " ".repeat(20_000));
    write!(
        stream,
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (status, content_type, text) = response(&mut reader);
    assert_eq!((status, content_type.as_str()), (503, "application/problem+json"), "{text}");
    assert!(text.contains("urn:ferry:problem:busy") && text.contains("your address"), "{text}");
    assert_eq!(served.refused(ReasonLabels::PER_SOURCE), u64::try_from(bodies - held + 1).unwrap());
    assert_eq!(answered(&served.state, "POST", "/api/v1/auth/login", 503), 1);
    // The body was read to its end: the connection still serves.
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(response(&mut reader).0, 200);

    // What the slow bodies held is given back when they go.
    drop(slow);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while served.budget.held() > 0 {
        assert!(std::time::Instant::now() < deadline, "{} bytes still held", served.budget.held());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(served.state.metrics.body_bytes_held.get(), 0);
    assert_eq!(served.login_from("127.0.0.1"), 401);
    // The large body fits again.
    let mut stream = served.connect_from("127.0.0.1");
    write!(
        stream,
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert_eq!(response(&mut BufReader::new(stream)).0, 401);
}

#[test]
fn many_addresses_together_hold_no_more_body_bytes_than_the_budget() {
    // Each address may hold three slow bodies; all together, five.
    const TOTAL: usize = 5 * SENT + SENT / 2;
    let served = Served::start(|state| BodyBudget::new(TOTAL, 128 * 1024, &state.metrics));
    let sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let slow: Vec<TcpStream> =
        sources.iter().flat_map(|from| [(); 3].map(|()| slow_body(&served, from))).collect();
    let held = served.settle(slow.len());
    assert!(served.budget.held() <= TOTAL);
    assert_eq!(held, 5);
    assert_eq!(served.refused(ReasonLabels::GLOBAL), u64::try_from(slow.len() - held).unwrap());
    assert_eq!(served.refused(ReasonLabels::PER_SOURCE), 0);
    // What is left of the budget is enough for the small bodies of others.
    assert_eq!(served.login_from("127.0.0.5"), 401);
    assert_eq!(served.health_from("127.0.0.1"), 200);
    drop(slow);
}

#[test]
fn a_body_too_slow_is_answered_408_and_counted() {
    let served = Served::start(|state| {
        BodyBudget::standard(&state.metrics).with_read_timeout(Duration::from_millis(200))
    });
    let mut stream = slow_body(&served, "127.0.0.1");
    let (status, content_type, text) = response(&mut BufReader::new(stream.try_clone().unwrap()));
    assert_eq!((status, content_type.as_str()), (408, "application/problem+json"), "{text}");
    assert_eq!(answered(&served.state, "POST", "/api/v1/auth/login", 408), 1);
    assert_eq!(served.budget.held(), 0);
    let _ = stream.flush();
}
