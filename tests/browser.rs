//! Running a browser scenario: a node script under `tests/browser/` that
//! drives Debian's headless Chromium with Playwright (see
//! `tests/browser/lib/harness.mjs`). The test starts the servers, passes
//! their addresses and logins in environment variables, answers the
//! script's requests (`@ferry-ask` lines) with what only it can do, and
//! fails with the script's message when the script fails.
//!
//! Screenshots go to `target/screenshots/<group>/`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// Where the scripts and their node_modules live.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// `target/screenshots/<group>`, made if missing.
pub fn screenshots_dir(group: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"));
    let dir = target.join("screenshots").join(group);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// Fails with what to do when the browser or Playwright is missing: both
/// come from `cargo xtask setup` (Debian's chromium, `npm ci` here).
fn check_installed() {
    let chromium = std::env::var("FERRY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: the browser tests need Debian's chromium; run `cargo xtask setup` \
         (or `apt-get install chromium`)"
    );
    let playwright = scripts_dir().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "{} is missing: run `cargo xtask setup` (or `npm ci` in tests/browser)",
        playwright.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is missing: the browser tests need Node.js 20 or newer ({node:?})"
    );
}

/// One scenario script and what it is given.
pub struct Scenario {
    script: String,
    env: Vec<(String, String)>,
    timeout: Duration,
}

/// What a finished scenario printed.
pub struct Transcript {
    pub log: String,
}

enum Line {
    Out(String),
    Err(String),
    Closed,
}

impl Scenario {
    /// `script` is relative to `tests/browser/` (`console/admin.mjs`).
    pub fn new(script: &str) -> Scenario {
        Scenario { script: script.to_string(), env: Vec::new(), timeout: Duration::from_secs(240) }
    }

    pub fn env(mut self, name: &str, value: impl Into<String>) -> Scenario {
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// Where its screenshots go (`target/screenshots/<group>`).
    pub fn screenshots(self, group: &str) -> Scenario {
        let dir = screenshots_dir(group);
        self.env("FERRY_SCREENSHOTS", dir.to_string_lossy().into_owned())
    }

    pub fn timeout(mut self, timeout: Duration) -> Scenario {
        self.timeout = timeout;
        self
    }

    /// Runs the script to its end. Each request the script makes goes to
    /// `answer` (its kind and the whole request); an `Err` goes back to the
    /// script as the reason it could not be done. Panics with the script's
    /// log if it fails or outlives the timeout.
    pub fn run(self, mut answer: impl FnMut(&str, &Value) -> Result<Value, String>) -> Transcript {
        check_installed();
        let mut command = Command::new("node");
        command
            .arg(&self.script)
            .current_dir(scripts_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("starting node {}: {e}", self.script));
        let mut stdin = child.stdin.take().unwrap();
        let (lines, incoming) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        spawn_reader(out, lines.clone(), Line::Out);
        spawn_reader(err, lines, Line::Err);
        let deadline = Instant::now() + self.timeout;
        let mut log = String::new();
        let mut open = 2;
        while open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match incoming.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("scenario {} ran longer than {:?}; its log:\n{log}", self.script, self.timeout);
                }
            };
            match line {
                Line::Closed => open -= 1,
                Line::Err(text) => {
                    log.push_str(&text);
                    log.push('\n');
                }
                Line::Out(text) => match text.strip_prefix("@ferry-ask ") {
                    Some(request) => {
                        let request: Value = serde_json::from_str(request).unwrap_or_else(|e| {
                            panic!("{}: a malformed request {request:?}: {e}", self.script)
                        });
                        let kind = request["kind"].as_str().unwrap_or_default().to_string();
                        log.push_str(&format!("(asked: {kind})\n"));
                        let reply = match answer(&kind, &request) {
                            Ok(mut value) => {
                                if !value.is_object() {
                                    value = json!({ "value": value });
                                }
                                value["id"] = request["id"].clone();
                                value
                            }
                            Err(error) => json!({ "id": request["id"], "error": error }),
                        };
                        // The script may have died meanwhile; its exit tells.
                        let _ = writeln!(stdin, "{reply}");
                        let _ = stdin.flush();
                    }
                    None => {
                        log.push_str(&text);
                        log.push('\n');
                    }
                },
            }
        }
        let status = child.wait().unwrap();
        // Shown with --nocapture, and on failure by the harness.
        println!("--- {} ---\n{log}", self.script);
        assert!(status.success(), "scenario {} failed ({status}):\n{log}", self.script);
        Transcript { log }
    }
}

fn spawn_reader(pipe: impl Read + Send + 'static, lines: mpsc::Sender<Line>, wrap: fn(String) -> Line) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if lines.send(wrap(line)).is_err() {
                return;
            }
        }
        let _ = lines.send(Line::Closed);
    });
}
