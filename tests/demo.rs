//! The README's first command, `cargo xtask demo`, cannot rot: its walk runs
//! here with `--once` from the debug build (the same code as the release
//! binary the command runs), every step is checked, and everything it made
//! is gone afterwards. Without `--once` it stays up with the cloud on the
//! host's loopback until Ctrl-C, which removes everything, in the middle of
//! the walk too.
//!
//! Run as root after `cargo build --bins`: `cargo test -p ferry-tests --test demo`.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use ferry_tests::{bin_path, control_gateway::pinned_request};
use ferry_world::api::Api;
use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;

/// Namespaces and lab folders that carry `pid`.
fn leftovers(pid: u32) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("fy-{pid}-")))
        .collect();
    left.extend(
        std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&format!("ferry-lab-{pid}-"))),
    );
    left
}

#[test]
fn the_demo_walks_the_whole_life_cycle_once_and_cleans_up() {
    let mut demo = Command::new(bin_path("ferry-demo"));
    ferry_lab::without_host_config(&mut demo);
    let child = demo.arg("--once").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ferry-demo --once failed ({}):\n{stdout}\n{stderr}", output.status);

    // Every step reported, what a person would check among them, and no
    // colour codes into a pipe.
    for expected in [
        " 1. The world",
        "ok the PLC answers Modbus/TCP on the machine network",
        "refused: the customer's switch is off",
        "ok waiting for the customer's approval",
        "ok proxy addresses: hmi at 100.96.",
        "ok state running, speed ",
        "ok setpoint now 1200 rpm",
        "ok HMI: state running",
        "no answer: the gateway drops what the session does not whitelist",
        "is still the technician's home NAS",
        "ended by the customer",
        "GET /api/v1/audit/verify: intact",
        "all steps passed: 16 steps",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in the demo's output:\n{stdout}\n{stderr}");
    }
    assert!(!stdout.contains('\x1b'), "colour codes in piped output");
    assert_eq!(leftovers(pid), Vec::<String>::new(), "the demo left these behind");
}

/// A running `ferry-demo` without `--once`, its stdout line by line.
struct Running {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start() -> Running {
        let mut demo = Command::new(bin_path("ferry-demo"));
        ferry_lab::without_host_config(&mut demo);
        let mut child = demo.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running { child, lines }
    }

    /// The lines up to and including the first that `until` accepts.
    fn read_until(&self, until: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(90)) {
            let done = until(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!("the demo stopped printing; it said:\n{}", seen.join("\n"));
    }

    /// Ctrl-C: the demo says it removes everything and exits with 130,
    /// and nothing of it is left.
    fn interrupt(self) {
        let pid = self.child.id();
        assert!(!leftovers(pid).is_empty(), "nothing to clean up: the test proves nothing");
        nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
        let output = self.child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "{stderr}");
        assert!(stderr.contains("ferry-demo: stopping; removing everything it made"), "{stderr}");
        assert_eq!(leftovers(pid), Vec::<String>::new(), "Ctrl-C left these behind");
    }
}

#[test]
fn ctrl_c_in_the_middle_removes_everything() {
    let demo = Running::start();
    // Once the relay is up, the world has namespaces, XDP programs, the
    // cloud's database and processes in it.
    demo.read_until(|line| line.starts_with(" 4."));
    demo.interrupt();
}

#[test]
fn it_stays_up_with_the_cloud_on_loopback_until_ctrl_c() {
    let demo = Running::start();
    let said = demo.read_until(|line| line.trim_start().starts_with("logs and data:"));
    let text = said.join("\n");
    assert!(text.contains("all steps passed"), "{text}");
    // A live session again for looking around.
    assert!(text.contains("The customer switches on again"), "{text}");
    let console = said
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("console")?.trim().strip_prefix("https://"))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no console address in:\n{text}"));
    let folder = said
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("logs and data:"))
        .map(|f| Path::new(f.trim()).to_path_buf())
        .unwrap();
    // The host's loopback reaches the cloud, over its own HTTPS.
    let cert = std::fs::read(folder.join("cloud-data/tls/cert.pem")).unwrap();
    let api = Api::https(console.parse().unwrap(), &cert).unwrap();
    let (status, health) = api.call("GET", "/healthz", None, Value::Null).unwrap();
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")), "{health}");
    // And the gateway's local panel, forwarded from the machine network, with
    // the certificate the demo printed: its login page.
    let panel = said
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("panel")?.trim().strip_prefix("https://"))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no panel address in:\n{text}"));
    let pin = said
        .iter()
        .find_map(|l| l.split("certificate sha256 ").nth(1).filter(|_| l.contains("password")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no panel certificate in:\n{text}"));
    let (status, _, page) = pinned_request(panel.parse().unwrap(), pin, "GET", "/login", &[], None);
    assert!(status == 200 && page.contains("password"), "{status}: {page}");
    demo.interrupt();
}
