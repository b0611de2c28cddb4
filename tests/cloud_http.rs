//! `ferry-cloud serve` over real HTTP on loopback, with a real sled folder.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ferry_tests::bin;

struct Cloud {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &Path) -> Cloud {
    let mut child = bin("ferry-cloud")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        assert_eq!(stdout.read(&mut byte).unwrap(), 1, "ferry-cloud exited: {:?}", child.wait());
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    Cloud { child, addr }
}

/// A minimal HTTP/1.1 GET; returns status, content type and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    (status, content_type, body.to_string())
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
}

#[test]
fn sigterm_shuts_down_cleanly_and_the_data_folder_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = start(dir.path());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cloud.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = cloud.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ferry-cloud ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    drop(cloud);
    let cloud = start(dir.path());
    assert_eq!(get(cloud.addr, "/healthz").0, 200);
}

#[test]
fn a_data_folder_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        db.open_tree("meta").unwrap().insert("schema_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
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
    let output = Command::new(ferry_tests::bin_path("ferry-cloud"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("refusing to serve plain HTTP") && err.contains("--allow-plain-http"), "{err}");
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
    let bad = verify();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("broken at entry 3"), "{err}");
}
