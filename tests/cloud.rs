//! Running the real `ferry-cloud serve` on a loopback port over a data
//! folder, and talking to it.

use std::{
    io::Read,
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use ferry_world::api::{raw_call, try_call};

use crate::bin;

pub struct Cloud {
    pub child: Child,
    pub addr: SocketAddr,
    /// The certificate's SHA-256 fingerprint when serving HTTPS.
    pub fingerprint: Option<String>,
    /// Lines printed before the listening line (the first start's
    /// one-time password).
    pub before: Vec<String>,
    /// Everything it wrote to stderr so far. Read all along, so that a
    /// chatty server never blocks on a full pipe.
    pub stderr: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cloud {
    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "ferry-cloud ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }

    /// SIGKILL, as a crash or power cut would end it, and reaps it.
    pub fn kill_9(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        self.child.wait().unwrap();
    }

    /// The one-time password the first start printed.
    pub fn one_time_password(&self) -> Option<String> {
        let line = self.before.iter().find(|l| l.contains("one-time password"))?;
        Some(line.rsplit(' ').next()?.trim().to_string())
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

/// Plain HTTP on loopback, as most tests want.
pub fn start(data_dir: &Path) -> Cloud {
    spawn(data_dir, &["--no-tls"])
}

/// `ferry-cloud serve` on a free loopback port with extra arguments; waits
/// for its listening line on stdout.
pub fn spawn(data_dir: &Path, extra: &[&str]) -> Cloud {
    let mut child = bin("ferry-cloud")
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    let drain = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buffer) {
            sink.lock().unwrap().extend_from_slice(&buffer[..n]);
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut before = Vec::new();
    let line = loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            if stdout.read(&mut byte).unwrap() != 1 {
                let status = child.wait().unwrap();
                drain.join().unwrap();
                panic!("ferry-cloud exited ({status}): {}", String::from_utf8_lossy(&stderr.lock().unwrap()));
            }
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        if line.starts_with("ferry-cloud listening") {
            break line;
        }
        before.push(line);
    };
    let addr = line
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    let fingerprint =
        line.split("certificate sha256 ").nth(1).map(|rest| rest.trim_end().trim_end_matches(')'));
    match &fingerprint {
        Some(_) => assert!(line.starts_with("ferry-cloud listening on https://"), "{line:?}"),
        None => assert!(line.starts_with("ferry-cloud listening on http://"), "{line:?}"),
    }
    Cloud { child, addr, fingerprint: fingerprint.map(str::to_string), before, stderr }
}

/// sled unlocks its folder only when its background flusher drops the last
/// handle, a moment after the test's `Db` is gone; until then ferry-cloud
/// would fail to open the folder.
pub fn wait_for_sled_to_let_go(data_dir: &Path) {
    use nix::fcntl::{Flock, FlockArg};
    let mut file = std::fs::File::open(data_dir.join("db/db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_unlocked_on_drop) => return,
            Err((unlocked, errno)) => {
                assert!(Instant::now() < deadline, "sled still holds its lock: {errno}");
                file = unlocked;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One JSON request; a status as an answer, not an error.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    try_call(addr, method, path, token, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Logs in as `admin` with the first start's one-time password, replaces it
/// with `password` (the cloud insists) and returns a fresh access token.
pub fn admin_token(addr: SocketAddr, one_time: &str, password: &str) -> String {
    let login = |password: &str| {
        let (status, body) = call(
            addr,
            "POST",
            "/api/v1/auth/login",
            None,
            serde_json::json!({"name": "admin", "password": password}),
        );
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    };
    let first = login(one_time);
    let change = serde_json::json!({"current_password": one_time, "new_password": password});
    assert_eq!(call(addr, "POST", "/api/v1/me/password", Some(&first), change).0, 204);
    login(password)
}
