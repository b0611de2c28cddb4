//! `ferry-cloud serve` over real HTTP on loopback, with a real sled folder.

use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpStream},
    process::Stdio,
    time::{Duration, Instant},
};

use ferry_tests::{
    bin,
    cloud::{admin_token, call, spawn, start, wait_for_sled_to_let_go},
};

/// A minimal HTTP/1.1 GET; returns status, content type and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(stream, path).unwrap()
}

/// The same over TLS, trusting only the certificate with `fingerprint`.
fn https_get(addr: SocketAddr, fingerprint: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let config = ferry_cloud::tls::pinned_client_config(fingerprint).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    exchange(rustls::StreamOwned::new(connection, stream), path)
}

fn exchange(mut stream: impl Read + Write, path: &str) -> std::io::Result<(u16, String, String)> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A close without TLS close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e),
    }
    let response = String::from_utf8_lossy(&response);
    let malformed = || std::io::Error::other(format!("not an HTTP response: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(malformed)?;
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    Ok((status, content_type, body.to_string()))
}

#[test]
fn serves_health_version_metrics_and_problem_json() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(dir.path());
    let (status, _, body) = get(cloud.addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    let (status, _, body) = get(cloud.addr, "/api/v1/version");
    assert_eq!(status, 200);
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(version["name"], "ferry-cloud");
    assert_eq!(version["schema_version"], 1);

    let (status, content_type, body) = get(cloud.addr, "/api/v1/nothing-here");
    assert_eq!(status, 404);
    assert_eq!(content_type, "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["detail"], "no route for GET /api/v1/nothing-here");

    let (status, _, metrics) = get(cloud.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"ferry_cloud_http_requests_total{method="GET",route="/healthz",status="200"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ferry_cloud_http_requests_total{method="GET",route="unmatched",status="404"} 1"#),
        "{metrics}"
    );
    // Refusals at accept, by their reason, and the body budget, from the start.
    for sample in [
        r#"ferry_cloud_connections_refused_total{reason="global"} 0"#,
        r#"ferry_cloud_connections_refused_total{reason="per_source"} 0"#,
        r#"ferry_cloud_request_bodies_refused_total{reason="global"} 0"#,
        r#"ferry_cloud_request_bodies_refused_total{reason="per_source"} 0"#,
        "ferry_cloud_request_body_bytes_held 0",
    ] {
        assert!(metrics.lines().any(|line| line == sample), "{sample} in {metrics}");
    }
}

#[test]
fn sigterm_shuts_down_cleanly_and_what_was_written_is_read_back_after_a_restart() {
    const PASSWORD: &str = "sigterm test admin password";
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(dir.path());
    // Two writes: the admin's changed password, and a user.
    let admin = admin_token(cloud.addr, &cloud.one_time_password().unwrap(), PASSWORD);
    let tech = serde_json::json!({"name": "tech-before-sigterm", "role": "remote_connect_user",
        "password": "technician passphrase"});
    let (status, created) = call(cloud.addr, "POST", "/api/v1/users", Some(&admin), tech);
    assert_eq!(status, 201, "{created}");
    cloud.terminate();

    let cloud = start(dir.path());
    assert_eq!(cloud.one_time_password(), None, "the restarted cloud must not start over");
    let login = serde_json::json!({"name": "admin", "password": PASSWORD});
    let (status, session) = call(cloud.addr, "POST", "/api/v1/auth/login", None, login);
    assert_eq!(status, 200, "the changed password is gone: {session}");
    let token = session["access_token"].as_str().unwrap();
    let (status, users) = call(cloud.addr, "GET", "/api/v1/users", Some(token), serde_json::Value::Null);
    assert_eq!(status, 200, "{users}");
    let stored = users.as_array().unwrap().iter().find(|u| u["name"] == "tech-before-sigterm");
    assert_eq!(stored.map(|u| &u["id"]), Some(&created["user"]["id"]), "{users}");
}

#[test]
fn a_data_folder_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree("meta").unwrap().insert("schema_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    wait_for_sled_to_let_go(dir.path());
    let output = bin("ferry-cloud")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("schema version 99") && err.contains("newer"), "{err}");
}

#[test]
fn plain_http_beyond_loopback_needs_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        bin("ferry-cloud")
            .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let output = serve(&["--no-tls"]).wait_with_output().unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("refusing to serve plain HTTP") && err.contains("--allow-plain-http"), "{err}");

    for (extra, scheme) in [(&["--no-tls", "--allow-plain-http"][..], "http://"), (&[][..], "https://")] {
        let mut child = serve(extra);
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        while !line.starts_with("ferry-cloud listening") {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        assert!(
            line.starts_with(&format!("ferry-cloud listening on {scheme}0.0.0.0:")),
            "{extra:?}: {line:?} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn by_default_https_with_a_self_signed_certificate_made_once_and_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = spawn(dir.path(), &[]);
    let fingerprint = cloud.fingerprint.clone().expect("no fingerprint printed");
    let cert = dir.path().join("tls/cert.pem");
    assert_eq!(ferry_cloud::tls::fingerprint_file(&cert).unwrap(), fingerprint);

    let (status, _, body) = https_get(cloud.addr, &fingerprint, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    let other = ferry_cloud::tls::fingerprint_sha256(b"some other certificate");
    let err = https_get(cloud.addr, &other, "/healthz").unwrap_err();
    assert!(err.to_string().contains("not the pinned"), "{err}");

    // Plain HTTP to the HTTPS port gets no answer.
    let stream = TcpStream::connect(cloud.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(!matches!(exchange(stream, "/healthz"), Ok((200, _, _))));

    // Failed handshakes show in the metrics; the server may count the last
    // one just after the client gave up.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, metrics) = https_get(cloud.addr, &fingerprint, "/metrics").unwrap();
        let failures = metrics
            .lines()
            .find_map(|l| l.strip_prefix("ferry_cloud_tls_handshake_failures_total "))
            .unwrap_or_else(|| panic!("{metrics}"));
        if failures == "2" {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(20));
    }

    cloud.terminate();
    let cloud = spawn(dir.path(), &[]);
    assert_eq!(cloud.fingerprint.as_deref(), Some(fingerprint.as_str()), "a new certificate on restart");
    assert_eq!(https_get(cloud.addr, &fingerprint, "/healthz").unwrap().0, 200);
}

#[test]
fn configured_certificate_files_are_served_from_flags_or_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["cloud.test".to_string()]).unwrap();
    let cert = dir.path().join("cloud-cert.pem");
    let key = dir.path().join("cloud-key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let expected = ferry_cloud::tls::fingerprint_sha256(certified.cert.der());

    let data = dir.path().join("data");
    let cloud = spawn(&data, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert_eq!(cloud.fingerprint.as_deref(), Some(expected.as_str()));
    assert_eq!(https_get(cloud.addr, &expected, "/healthz").unwrap().0, 200);
    assert!(!data.join("tls").exists(), "a self-signed certificate was made anyway");
    drop(cloud);

    let config = dir.path().join("cloud.toml");
    std::fs::write(&config, format!("tls_cert = {:?}\ntls_key = {:?}\n", cert, key)).unwrap();
    let cloud = spawn(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(cloud.fingerprint.as_deref(), Some(expected.as_str()));
    assert_eq!(https_get(cloud.addr, &expected, "/healthz").unwrap().0, 200);
}

#[test]
fn a_certificate_without_its_key_or_a_missing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        let output = bin("ferry-cloud")
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{extra:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let err = serve(&["--tls-cert", "cert.pem"]);
    assert!(err.contains("--tls-key") && err.contains("is not"), "{err}");
    let err = serve(&["--tls-key", "key.pem"]);
    assert!(err.contains("--tls-cert") && err.contains("is not"), "{err}");

    let missing = dir.path().join("missing-cert.pem");
    let err = serve(&["--tls-cert", missing.to_str().unwrap(), "--tls-key", "key.pem"]);
    assert!(err.contains(&format!("{} does not exist", missing.display())), "{err}");

    let err = serve(&["--no-tls", "--tls-cert", "cert.pem"]);
    assert!(err.contains("--no-tls") && err.contains("--tls-cert"), "{err}");
}

#[test]
fn audit_verify_reports_an_intact_chain_and_the_first_broken_entry() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = ferry_cloud::store::Store::open(dir.path()).unwrap();
        for i in 0..5 {
            let event = ferry_cloud::audit::Event {
                actor: "admin".into(),
                action: "user.create".into(),
                allowed: true,
                source: None,
                session: None,
                gateway: None,
                detail: Some(format!("user{i}")),
            };
            ferry_cloud::audit::append(&store, 1_700_000_000_000 + i, event).unwrap();
        }
    }
    wait_for_sled_to_let_go(dir.path());
    let verify =
        || bin("ferry-cloud").args(["audit", "verify", "--data-dir"]).arg(dir.path()).output().unwrap();
    let ok = verify();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact: 5 entries"));

    // Flip one byte of entry 3 on disk.
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let mut value = tree.get(3u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let at = value.windows(5).position(|w| w == b"user2").unwrap();
        value[at] = b'U';
        tree.insert(3u64.to_be_bytes(), value).unwrap();
        db.flush().unwrap();
    }
    wait_for_sled_to_let_go(dir.path());
    let bad = verify();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("broken at entry 3"), "{err}");
}

#[test]
fn first_start_prints_a_one_time_admin_password_once_and_admin_create_makes_more() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(dir.path());
    let line = cloud.before.iter().find(|l| l.contains("one-time password")).expect("first start announces");
    let secret = line.rsplit(' ').next().unwrap().trim().to_string();
    let (status, body) = call(
        cloud.addr,
        "POST",
        "/api/v1/auth/login",
        None,
        serde_json::json!({"name": "admin", "password": secret}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["must_change_password"], true);
    let token = body["access_token"].as_str().unwrap().to_string();
    let (status, _) = call(cloud.addr, "GET", "/api/v1/users", Some(&token), serde_json::Value::Null);
    assert_eq!(status, 403, "a one-time password allows only changing it");
    drop(cloud);

    let again = start(dir.path());
    assert!(again.before.iter().all(|l| !l.contains("one-time password")), "only on the first start");
    drop(again);

    wait_for_sled_to_let_go(dir.path());
    let output = bin("ferry-cloud")
        .args(["admin", "create", "--name", "second", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let secret = stdout.lines().next().unwrap().rsplit(' ').next().unwrap().to_string();
    let cloud = start(dir.path());
    let login = serde_json::json!({"name": "second", "password": secret});
    assert_eq!(call(cloud.addr, "POST", "/api/v1/auth/login", None, login).0, 200);
    // The name is taken now.
    drop(cloud);
    wait_for_sled_to_let_go(dir.path());
    let output = bin("ferry-cloud")
        .args(["admin", "create", "--name", "second", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("exists"));
}
