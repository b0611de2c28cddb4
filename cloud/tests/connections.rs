//! What a generated client meets on the wire, found by schemathesis
//! (tests/schemathesis.rs): a refusal before the body is read must not
//! close the connection under a keep-alive client, an oversized body gets its
//! 413 rather than a reset, and a path parameter that does not parse is a
//! problem like every other refusal.

#![allow(clippy::unwrap_used, reason = "test code: a step that fails should fail the test")]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::Api;
use ferry_cloud::rights::Role;

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
