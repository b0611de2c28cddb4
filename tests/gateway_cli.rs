//! `ferry-gateway`'s customer and installer commands, as processes: the
//! switch survives a restart, `install` is idempotent, `enroll` against a
//! real cloud (once per token, pinned TLS), `diagnose`, and the local
//! panel's password.

use std::{path::Path, process::Output};

use ferry_tests::{
    bin,
    cloud::{admin_token, call, spawn, start},
};
use serde_json::json;

const PASSWORD: &str = "gateway cli test password";

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `ferry-gateway` with its own data directory and socket, no config file.
fn gateway(dir: &Path, args: &[&str]) -> Output {
    bin("ferry-gateway")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(dir.join("run/control.sock"))
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap()
}

#[test]
fn the_switch_is_off_after_install_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gateway.toml"), "").unwrap();

    let status = gateway(dir.path(), &["remote", "status"]);
    let (out, err) = text(&status);
    assert!(status.status.success(), "{out}{err}");
    assert!(out.contains("remote maintenance: OFF"), "{out}");
    assert!(out.contains("daemon is not running"), "{out}");

    let on = gateway(dir.path(), &["remote", "on"]);
    let (out, err) = text(&on);
    assert!(on.status.success(), "{out}{err}");
    assert!(out.contains("remote maintenance: ON"), "{out}");
    assert!(out.contains("technicians can now start"), "{out}");

    // A new process, as after a reboot.
    let status = gateway(dir.path(), &["remote", "status"]);
    assert!(text(&status).0.contains("remote maintenance: ON"), "{:?}", text(&status));

    let off = gateway(dir.path(), &["remote", "off"]);
    assert!(text(&off).0.contains("remote maintenance: OFF"), "{:?}", text(&off));
    let status = gateway(dir.path(), &["remote", "status"]);
    assert!(text(&status).0.contains("remote maintenance: OFF"), "{:?}", text(&status));

    // Approvals need the daemon: a clear error, not a hang.
    let approve = gateway(dir.path(), &["approve", "7"]);
    assert!(!approve.status.success());
    assert!(text(&approve).1.contains("daemon is not running"), "{:?}", text(&approve));
    let sessions = gateway(dir.path(), &["sessions"]);
    assert!(!sessions.status.success());
    assert!(text(&sessions).1.contains("not running"), "{:?}", text(&sessions));
}

#[test]
fn help_explains_the_switch() {
    let output = bin("ferry-gateway").arg("--help").output().unwrap();
    let (out, _) = text(&output);
    assert!(out.contains("remote maintenance is OFF after installation"), "{out}");
    for command in ["remote", "approve", "deny", "end", "sessions", "diagnose", "enroll", "install", "panel"]
    {
        assert!(out.contains(command), "{command} missing: {out}");
    }
}

#[test]
fn install_writes_the_unit_binary_and_config_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let run = || {
        let output =
            bin("ferry-gateway").args(["install", "--no-systemctl", "--root"]).arg(&root).output().unwrap();
        let (out, err) = text(&output);
        assert!(output.status.success(), "{out}{err}");
        out
    };
    let first = run();
    assert!(first.contains("systemctl enable --now ferry-gateway"), "{first}");
    assert!(first.contains("ferry-gateway remote on"), "{first}");
    // No terminal to ask on: the panel's password is left for later, and said so.
    assert!(first.contains("set its password first: ferry-gateway panel password"), "{first}");

    let unit = std::fs::read_to_string(root.join("etc/systemd/system/ferry-gateway.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "ExecStart=/usr/local/bin/ferry-gateway run",
        "StateDirectory=ferry-gateway",
        "RuntimeDirectory=ferry-gateway",
        "NoNewPrivileges=yes",
        "DeviceAllow=/dev/net/tun rw",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF CAP_PERFMON",
    ] {
        assert!(unit.contains(line), "{line} missing from the unit");
    }
    let installed = std::fs::read(root.join("usr/local/bin/ferry-gateway")).unwrap();
    assert_eq!(installed, std::fs::read(ferry_tests::bin_path("ferry-gateway")).unwrap());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(root.join("usr/local/bin/ferry-gateway")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let config = root.join("etc/ferry/gateway.toml");
    assert!(std::fs::read_to_string(&config).unwrap().contains("[uplink]"));

    // The customer's edits survive a second install; nothing else changes.
    std::fs::write(&config, "[tunnel]\ninterface = \"wg7\"\n").unwrap();
    let second = run();
    assert!(second.contains("unchanged") && second.contains("kept (exists)"), "{second}");
    assert!(!second.contains("wrote"), "{second}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "[tunnel]\ninterface = \"wg7\"\n");
}

/// `ferry-gateway panel password` with the password on stdin.
fn set_panel_password(dir: &Path, input: &str, as_nobody: bool) -> Output {
    use std::{io::Write as _, os::unix::process::CommandExt as _, process::Stdio};
    let mut command = bin("ferry-gateway");
    command
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .args(["panel", "password", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if as_nobody {
        command.uid(65534).gid(65534);
    }
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_panel_password_is_set_by_root_hashed_and_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gateway.toml"), "[lan]\naddress = \"192.168.0.2\"\n").unwrap();
    let status = text(&gateway(dir.path(), &["panel", "status"])).0;
    assert!(status.contains("https://192.168.0.2:8443"), "{status}");
    assert!(status.contains("password: NOT SET"), "{status}");

    let short = set_panel_password(dir.path(), "short\n", false);
    assert!(!short.status.success(), "a short password is refused");
    assert!(text(&short).1.contains("12 to 1024 characters"), "{}", text(&short).1);

    let set = set_panel_password(dir.path(), "a plant operator's passphrase\n", false);
    assert!(set.status.success(), "{:?}", text(&set));
    let file = dir.path().join("data/panel/password");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains("passphrase"), "{stored}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let status = text(&gateway(dir.path(), &["panel", "status"])).0;
    assert!(status.contains("password: set") && status.contains("logins: open"), "{status}");

    if nix::unistd::geteuid().is_root() {
        // Someone else on the gateway may not replace it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let other = set_panel_password(dir.path(), "another long passphrase\n", true);
        assert!(!other.status.success());
        assert!(text(&other).1.contains("only root"), "{}", text(&other).1);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), stored, "unchanged");
    }
}

#[test]
fn enroll_once_per_token_then_diagnose_reaches_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gateway.toml"), "").unwrap();
    let cloud = start(&dir.path().join("cloud"));
    let admin = admin_token(cloud.addr, &cloud.one_time_password().unwrap(), PASSWORD);
    let (status, created) = call(
        cloud.addr,
        "POST",
        "/api/v1/gateways",
        Some(&admin),
        json!({"name": "press-7", "site": "hall 2"}),
    );
    assert_eq!(status, 201, "{created}");
    let token = created["enrolment"]["token"].as_str().unwrap().to_string();
    let id = created["gateway"]["id"].as_u64().unwrap();
    let url = format!("http://{}", cloud.addr);

    // Not enrolled: diagnose says so and fails.
    let diagnose = gateway(dir.path(), &["diagnose"]);
    assert!(!diagnose.status.success());
    assert!(text(&diagnose).0.contains("not enrolled"), "{:?}", text(&diagnose));

    let enroll = gateway(dir.path(), &["enroll", "--cloud", &url, "--token", &token]);
    let (out, err) = text(&enroll);
    assert!(enroll.status.success(), "{out}{err}");
    assert!(out.contains(&format!("gateway {id}")) && out.contains("press-7"), "{out}");
    assert!(out.contains("WireGuard public key:"), "{out}");
    assert!(err.contains("plain http"), "a lab warning expected: {err}");
    assert!(!out.contains(&token) && !err.contains(&token), "the token is a secret");
    use std::os::unix::fs::PermissionsExt as _;
    for key in ["identity.key", "wireguard.key"] {
        let mode = std::fs::metadata(dir.path().join("data").join(key)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // The cloud knows the identity key now.
    let identity = std::fs::read_to_string(dir.path().join("data/identity.key")).unwrap();
    assert!(!out.contains(identity.trim()), "the identity seed must never be printed");

    // Already enrolled: refused without --force.
    let again = gateway(dir.path(), &["enroll", "--cloud", &url, "--token", &token]);
    assert!(!again.status.success());
    assert!(text(&again).1.contains("already enrolled"), "{:?}", text(&again));

    // --force with the used token: the cloud refuses it, clearly.
    let forced = gateway(dir.path(), &["enroll", "--force", "--cloud", &url, "--token", &token]);
    assert!(!forced.status.success());
    let (_, err) = text(&forced);
    assert!(err.contains("refused the enrolment token") && err.contains("already used"), "{err}");

    // A second gateway presenting the same token is refused too.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("gateway.toml"), "").unwrap();
    let stolen = gateway(other.path(), &["enroll", "--cloud", &url, "--token", &token]);
    assert!(!stolen.status.success());
    assert!(text(&stolen).1.contains("refused the enrolment token"), "{:?}", text(&stolen));

    let diagnose = gateway(dir.path(), &["diagnose"]);
    let (out, err) = text(&diagnose);
    assert!(diagnose.status.success(), "{out}{err}");
    assert!(out.contains("OK    enrolment") && out.contains(&format!("gateway {id}")), "{out}");
    assert!(out.contains("OK    DNS 127.0.0.1"), "{out}");
    assert!(out.contains("OK    cloud /healthz"), "{out}");
    assert!(out.contains("clock skew"), "{out}");
    assert!(out.contains("cloud reachable: yes"), "{out}");

    let json = gateway(dir.path(), &["diagnose", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["cloud_reachable"], true);

    // The cloud gone: diagnose fails and says where.
    drop(cloud);
    let diagnose = gateway(dir.path(), &["diagnose"]);
    assert!(!diagnose.status.success());
    let (out, _) = text(&diagnose);
    assert!(out.contains("FAIL  TCP") && out.contains("cloud reachable: NO"), "{out}");
}

#[test]
fn enroll_over_https_checks_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gateway.toml"), "").unwrap();
    let cloud = spawn(&dir.path().join("cloud"), &[]);
    let fingerprint = cloud.fingerprint.clone().expect("an https cloud prints its fingerprint");
    let url = format!("https://{}", cloud.addr);

    let unpinned = gateway(dir.path(), &["enroll", "--cloud", &url, "--token", "x"]);
    assert!(!unpinned.status.success());
    assert!(text(&unpinned).1.contains("--pin is required"), "{:?}", text(&unpinned));

    let wrong = "00".repeat(32);
    let mismatch = gateway(dir.path(), &["enroll", "--cloud", &url, "--token", "x", "--pin", &wrong]);
    assert!(!mismatch.status.success());
    let (_, err) = text(&mismatch);
    assert!(err.contains("does not match the pin") && err.contains(&fingerprint), "{err}");

    // The right pin: TLS works, and the cloud refuses the made-up token.
    let refused =
        gateway(dir.path(), &["enroll", "--cloud", &url, "--token", "made-up", "--pin", &fingerprint]);
    assert!(!refused.status.success());
    assert!(text(&refused).1.contains("refused the enrolment token"), "{:?}", text(&refused));
}

/// A "cloud" on a local port that answers every connection with `response`
/// after reading the request, then closes.
fn hostile_cloud(response: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // The request's head and its small JSON body.
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        // The client may already have given up; that is fine.
        let _ = stream.write_all(response);
    });
    (url, thread)
}

#[test]
fn enroll_fails_cleanly_against_a_hostile_cloud() {
    let answers: [(&str, &[u8]); 4] = [
        (
            "a chunk of 2^64-1 bytes",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc",
        ),
        ("a Content-Length of 2^64-1", b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n{}"),
        (
            "a chunk size past 64 bits",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nabc",
        ),
        ("no HTTP at all", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    ];
    for (what, answer) in answers {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gateway.toml"), "").unwrap();
        let (url, server) = hostile_cloud(answer);
        let enroll = gateway(dir.path(), &["enroll", "--cloud", &url, "--token", "t"]);
        server.join().unwrap();
        let (out, err) = text(&enroll);
        // 1 is anyhow's error exit; a panic exits with 101.
        assert_eq!(enroll.status.code(), Some(1), "{what}: {out}{err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(
            err.contains(&format!("HTTP exchange with {} failed", &url["http://".len()..])),
            "{what}: {err}"
        );
    }
}
