//! The README's first command, `cargo xtask demo`, cannot rot: its walk runs
//! here with `--once` from the debug build (the same code as the release
//! binary the command runs), every step is checked, and everything it made
//! is gone afterwards. Ctrl-C in the middle removes everything too.
//!
//! Run as root after `cargo build --bins`: `cargo test -p ferry-tests --test demo`.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use ferry_tests::bin_path;
use nix::{sys::signal::Signal, unistd::Pid};

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

#[test]
fn ctrl_c_in_the_middle_removes_everything() {
    let mut demo = Command::new(bin_path("ferry-demo"));
    ferry_lab::without_host_config(&mut demo);
    let mut child = demo.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (lines, seen) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // Once the relay is up, the world has namespaces, XDP programs, the
    // cloud's database and processes in it.
    let reached = std::iter::from_fn(|| seen.recv_timeout(Duration::from_secs(60)).ok())
        .any(|line| line.starts_with(" 4."));
    assert!(reached, "the demo did not get to step 4");
    assert!(!leftovers(pid).is_empty(), "nothing to clean up: the test proves nothing");

    nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("removing everything the demo made"), "{stderr}");
    assert_eq!(leftovers(pid), Vec::<String>::new(), "Ctrl-C left these behind");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
