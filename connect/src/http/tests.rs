use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

#[test]
fn cloud_urls() {
    let url = CloudUrl::parse("https://cloud.example").unwrap();
    assert_eq!((url.https, url.host.as_str(), url.port), (true, "cloud.example", 443));
    assert_eq!(
        (url.authority(), url.url()),
        ("cloud.example:443".into(), "https://cloud.example:443".into())
    );
    let url = CloudUrl::parse("http://127.0.0.1:8080/").unwrap();
    assert_eq!((url.https, url.host.as_str(), url.port), (false, "127.0.0.1", 8080));
    assert_eq!(CloudUrl::parse(" http://203.0.113.10:7600 ").unwrap().url(), "http://203.0.113.10:7600");
    let url = CloudUrl::parse("https://[2001:db8::1]:8443").unwrap();
    assert_eq!((url.host.as_str(), url.authority()), ("2001:db8::1", "[2001:db8::1]:8443".to_string()));
    assert_eq!(url.websocket("/api/v1/control/gateway"), "wss://[2001:db8::1]:8443/api/v1/control/gateway");
    assert_eq!(CloudUrl::parse("http://[::1]").unwrap().port, 80);
    assert_eq!(
        CloudUrl::parse("http://203.0.113.10:7600").unwrap().websocket("/ws"),
        "ws://203.0.113.10:7600/ws"
    );
    for bad in [
        "cloud.example",
        "ftp://x",
        "https://",
        "http://x:port",
        "http://x:",
        "http://x/api",
        "http://u@x",
        "http://x/?a",
        "http://x#f",
        "http://2001:db8::1",
        "http://[::1",
        "http://[::1]x",
    ] {
        assert!(CloudUrl::parse(bad).is_err(), "{bad}");
    }
    let https = CloudUrl::parse("https://x").unwrap();
    assert!(matches!(Client::new(https, None, Duration::from_secs(1)), Err(HttpError::PinNeeded(_))));
}

/// What a server reads of a request: up to the end of its head (or of the
/// stream).
async fn read_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
        }
    }
    seen
}

/// A server on the other end of an in-memory pipe that reads the request's
/// head (and a JSON body's first byte), writes `answer` and closes; what the
/// client made of it, and the request the server saw.
async fn against(answer: &'static [u8], request: Request<'static>) -> (Result<Response, HttpError>, String) {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let seen = read_head(&mut server).await;
        let _ = server.write_all(answer).await;
        String::from_utf8_lossy(&seen).into_owned()
    });
    let url = CloudUrl::parse("http://cloud.example:7600").unwrap();
    let result = exchange(&url, client, request, Duration::from_secs(5)).await;
    (result, server.await.unwrap())
}

#[tokio::test]
async fn a_request_carries_its_token_and_answers_come_back_whole() {
    let request = Request::new(Method::POST, "/api/v1/sessions/7/start")
        .bearer(Some("tok"))
        .json(Some(b"{\"a\":1}".to_vec()))
        .user_agent("ferry-gateway/1");
    let (response, seen) =
        against(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\n{}", request).await;
    let response = response.unwrap();
    assert_eq!((response.status, &response.body[..]), (200, &b"{}"[..]));
    assert_eq!(response.header("date"), Some("x"));
    let seen = seen.to_ascii_lowercase();
    assert!(seen.starts_with("post /api/v1/sessions/7/start http/1.1\r\n"), "{seen}");
    for line in [
        "host: cloud.example:7600",
        "authorization: bearer tok",
        "content-type: application/json",
        "content-length: 7",
        "user-agent: ferry-gateway/1",
        "connection: close",
    ] {
        assert!(seen.contains(line), "{line} in {seen}");
    }
    let shown = format!("{:?}", Request::get("/x").bearer(Some("secret")));
    assert!(!shown.contains("secret"), "{shown}");

    let (response, _) = against(
        b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        Request::get("/api/v1/sessions"),
    )
    .await;
    let response = response.unwrap();
    assert_eq!((response.status, &response.body[..]), (401, &b"abcde"[..]));
}

/// What a hand-written parser once panicked on, and more.
#[tokio::test]
async fn hostile_answers_are_errors() {
    let huge_body: &'static [u8] = {
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1).into_bytes();
        answer.resize(answer.len() + MAX_BODY + 1, b'x');
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
        let (result, _) = against(answer, Request::get("/healthz")).await;
        let shown = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
        match result {
            Err(HttpError::Exchange { authority, detail }) => {
                assert_eq!(authority, "cloud.example:7600");
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
    let result = exchange(&url, client, Request::get("/healthz"), Duration::from_secs(10)).await;
    assert!(matches!(result, Err(HttpError::Timeout { step: "the HTTP exchange", .. })), "{result:?}");
}

/// A server on loopback that answers each of `answers` connections with
/// the next answer.
async fn serve(answers: Vec<&'static [u8]>) -> CloudUrl {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = CloudUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        for answer in answers {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await;
            let _ = stream.write_all(answer).await;
        }
    });
    url
}

#[tokio::test]
async fn the_client_reads_whole_answers_and_streams() {
    let url = serve(vec![
        b"HTTP/1.1 409 Conflict\r\nContent-Length: 4\r\n\r\nnope",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n4\r\none\n\r\n4\r\ntwo\n\r\n0\r\n\r\n",
    ])
    .await;
    let client = Client::new(url, None, Duration::from_secs(5)).unwrap();
    let answer = client.send(Request::new(Method::POST, "/x").json(Some(b"{}".to_vec()))).await.unwrap();
    assert_eq!((answer.status, &answer.body[..]), (409, &b"nope"[..]));
    let mut opened = client.open(Request::get("/events")).await.unwrap();
    assert_eq!(opened.status, 200);
    let mut streamed = Vec::new();
    while let Some(chunk) = opened.next_chunk().await {
        streamed.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(streamed, b"one\ntwo\n");
}

#[tokio::test]
async fn a_silent_cloud_times_out() {
    // Accepts (the kernel does, from the backlog) and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = CloudUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let result = Client::new(url, None, Duration::from_millis(300)).unwrap().send(Request::get("/")).await;
    assert!(matches!(&result, Err(e @ HttpError::Timeout { step: "the request", .. }) if e.is_unreachable()));
    drop(listener);
}

/// A TLS server on loopback with a fresh self-signed certificate; its URL
/// and pin.
async fn tls_server() -> (CloudUrl, [u8; 32]) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["cloud.example".to_owned()]).unwrap().self_signed(&key).unwrap();
    let pin = crate::pin::fingerprint(cert.der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = CloudUrl::parse(&format!("https://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else { return };
                read_head(&mut stream).await;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npinned").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, pin)
}

#[tokio::test]
async fn tls_trusts_the_pinned_certificate_only() {
    let (url, pin) = tls_server().await;
    let client = Client::new(url.clone(), Some(pin), Duration::from_secs(5)).unwrap();
    let answer = client.send(Request::get("/healthz")).await.unwrap();
    assert_eq!((answer.status, &answer.body[..]), (200, &b"pinned"[..]));

    let wrong = Client::new(url.clone(), Some([7; 32]), Duration::from_secs(5)).unwrap();
    match wrong.send(Request::get("/healthz")).await {
        Err(e @ HttpError::PinMismatch { .. }) => {
            let text = e.to_string();
            assert!(text.contains("does not match the pin"), "{text}");
            assert!(text.contains(&crate::pin::format_fingerprint(&pin)), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // The steps one by one, as `diagnose` takes them.
    let addrs = resolve(&url).await.unwrap();
    let tcp = connect(&url, &addrs, Duration::from_secs(5)).await.unwrap();
    let stream = tls(&url, tcp, pin, Duration::from_secs(5)).await.unwrap();
    let answer = exchange(&url, stream, Request::get("/healthz"), Duration::from_secs(5)).await.unwrap();
    assert_eq!(&answer.body[..], b"pinned");
}
