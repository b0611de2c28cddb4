//! `cargo xtask test`: every suite, with a summary of what ran.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    cargo::{cargo, describe, run as run_cmd},
    setup,
};

/// One test binary's result.
#[derive(Debug)]
struct Suite {
    package: String,
    name: String,
    passed: u32,
    failed: u32,
    ignored: u32,
    /// The binary died without a result line (crash, abort, signal).
    crashed: bool,
    /// Each failed test's name and the end of what it printed, repeated at
    /// the end of the summary: CI often shows only the last part of the log.
    failures: Vec<Failure>,
    /// Inside libtest's "failures:" section of output blocks.
    in_failures: bool,
    /// The suite's last FAILURE_TAIL lines, for a binary that crashed.
    tail: std::collections::VecDeque<String>,
}

#[derive(Debug, Default)]
struct Failure {
    test: String,
    /// The last FAILURE_TAIL lines.
    lines: Vec<String>,
    open: bool,
}

/// How many of a failed test's last lines the summary repeats.
const FAILURE_TAIL: usize = 30;

pub fn run(cargo_test_args: &[String]) -> Result<()> {
    if !setup::is_root() {
        bail!(
            "cargo xtask test needs root: the tests create network namespaces and load XDP programs.\n\
             Run it as root, for example `sudo -E env PATH=$PATH cargo xtask test`."
        );
    }
    let started = Instant::now();
    setup::toolchain()?;
    setup::debian_packages()?;
    setup::browser_tests()?;
    for object in ferry_lab::sweep_stale() {
        eprintln!("sweep: removed stale {object}");
    }

    let mut checks: Vec<(&'static str, bool)> = Vec::new();
    section("rustfmt --check");
    checks.push(("rustfmt", run_cmd(cargo().args(["fmt", "--all", "--check"])).is_ok()));

    // A dependency nothing uses costs build time and widens what must be
    // trusted. cargo-machete reads the sources, so a crate used in a way it
    // cannot see goes in that package's `[package.metadata.cargo-machete]`.
    section("unused dependencies (cargo-machete)");
    setup::cargo_machete()?;
    checks.push(("unused dependencies", run_cmd(setup::machete().arg("--skip-target-dir")).is_ok()));

    section("build (binaries, eBPF object)");
    run_cmd(cargo_once().args(["build", "--bins", "--tests"])).context("building the workspace")?;

    section("clippy");
    checks.push((
        "clippy",
        run_cmd(cargo_once().args(["clippy", "--all-targets", "--", "-D", "warnings"])).is_ok(),
    ));

    // One `cargo test` over the workspace: per-package runs resolve
    // dependency features per package and build most dependencies again.
    section("tests");
    let owners = Owners::of_workspace()?;
    let mut suites = test_workspace(&owners, &[], cargo_test_args, &[], "")?;

    // The cloud's API and channel tests again, over PostgreSQL: the same
    // binaries (already built), each test on a database of its binary's
    // own server. The storage-independent suites (the backend conformance
    // suite runs both storages itself) are not repeated.
    section("cloud tests over PostgreSQL");
    let targets: Vec<String> =
        CLOUD_SUITES_OVER_POSTGRES.iter().flat_map(|t| ["--test".to_string(), t.to_string()]).collect();
    suites.extend(test_workspace(
        &owners,
        &targets,
        cargo_test_args,
        &[("FERRY_TEST_STORAGE", "postgres")],
        "postgres: ",
    )?);

    // Coverage-guided fuzzing, time-boxed, only on a full run.
    if cargo_test_args.is_empty() {
        setup::cargo_fuzz()?;
        for (dir, target, label) in FUZZ_TARGETS {
            section(&format!("{label} ({FUZZ_SECONDS} s)"));
            checks.push((label, fuzz(dir, target).is_ok()));
        }
    }

    let ok = summarize(&checks, &suites, started);
    if !ok {
        bail!("some tests or checks failed (see the summary above)");
    }
    Ok(())
}

/// The cloud's test binaries whose tests also run over PostgreSQL.
const CLOUD_SUITES_OVER_POSTGRES: [&str; 6] =
    ["audit_api", "auth_api", "configs_api", "console_api", "gateway_events", "sessions_api"];

/// The cargo-fuzz targets, each run for FUZZ_SECONDS: (the crate whose
/// `fuzz/` project holds it, the target, the label in the summary).
const FUZZ_TARGETS: [(&str, &str, &str); 6] = [
    ("tunnel", "parse", "fuzz tunnel parse"),
    ("tunnel", "responder", "fuzz tunnel responder"),
    ("tunnel", "tun_offload", "fuzz tunnel tun_offload"),
    ("relay", "stun", "fuzz relay stun"),
    ("relay", "ws_frames", "fuzz relay ws_frames"),
    ("relay", "handshake", "fuzz relay handshake"),
];
const FUZZ_SECONDS: u32 = 20;

/// Runs one target in `<dir>/fuzz`. Hand-made seeds in
/// `<dir>/fuzz/seeds/<target>`, if any, are read beside the corpus that
/// cargo-fuzz grows in `<dir>/fuzz/corpus/<target>`.
fn fuzz(dir: &str, target: &str) -> Result<()> {
    let toolchain = ferry_ebpf_build::ebpf_toolchain();
    let crate_dir = crate::cargo::workspace_root().join(dir);
    let mut cmd = std::process::Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "fuzz", "run", target]);
    let seeds = crate_dir.join("fuzz").join("seeds").join(target);
    if seeds.is_dir() {
        let corpus = crate_dir.join("fuzz").join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        cmd.arg(corpus).arg(seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={FUZZ_SECONDS}"))
        .arg("-print_final_stats=1")
        .current_dir(crate_dir);
    run_cmd(&mut cmd)
}

/// Cargo without incremental caches: CI builds once in a fresh clone, where
/// they would nearly double the target folder (and its disk is shared) for
/// nothing. Developers' own `cargo build` and `cargo test` keep them.
fn cargo_once() -> std::process::Command {
    let mut cmd = cargo();
    cmd.env("CARGO_INCREMENTAL", "0");
    cmd
}

fn section(title: &str) {
    eprintln!("\n==> {title}");
}

/// Which package each test executable and doc-test crate belongs to, so the
/// summary can name it.
#[derive(Debug, Default)]
struct Owners {
    /// Test executable file name (`relay_udp-0123abcd`) -> package.
    executables: HashMap<String, String>,
    /// Library crate name (`ferry_relay`) -> package.
    libraries: HashMap<String, String>,
}

impl Owners {
    /// Builds the test executables of the workspace's default members
    /// (gateway-ebpf is built by ferry-ebpf's build script, not tested on the
    /// host) and records their packages.
    fn of_workspace() -> Result<Owners> {
        let output = cargo()
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .output()
            .context("running cargo metadata")?;
        let metadata: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
        let mut owners = Owners::default();
        let mut by_manifest = HashMap::new();
        for package in metadata["packages"].as_array().context("cargo metadata has no packages")? {
            let (Some(name), Some(manifest)) = (package["name"].as_str(), package["manifest_path"].as_str())
            else {
                continue;
            };
            by_manifest.insert(manifest.to_string(), name.to_string());
            for target in package["targets"].as_array().into_iter().flatten() {
                let is_lib = target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "lib"));
                if is_lib && let Some(lib) = target["name"].as_str() {
                    owners.libraries.insert(lib.replace('-', "_"), name.to_string());
                }
            }
        }

        let output = cargo_once()
            .args(["test", "--no-run", "--message-format=json-render-diagnostics"])
            .stderr(Stdio::inherit())
            .output()
            .context("building the tests")?;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            let (Some(executable), Some(manifest)) =
                (message["executable"].as_str(), message["manifest_path"].as_str())
            else {
                continue;
            };
            if let (Some(file), Some(package)) =
                (std::path::Path::new(executable).file_name(), by_manifest.get(manifest))
            {
                owners.executables.insert(file.to_string_lossy().into_owned(), package.clone());
            }
        }
        if !output.status.success() {
            bail!("building the tests failed (the compiler's messages are above)");
        }
        Ok(owners)
    }

    /// The package of a "Running" line's executable.
    fn of_running(&self, running: &str) -> String {
        let path = running.rsplit_once(" (").map_or(running, |(_, p)| p.trim_end_matches(')'));
        let file = std::path::Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned());
        file.and_then(|f| self.executables.get(&f).cloned()).unwrap_or_else(|| "?".to_string())
    }

    /// The package of a "Doc-tests <crate>" line.
    fn of_doc_tests(&self, krate: &str) -> String {
        self.libraries.get(krate.trim()).cloned().unwrap_or_else(|| krate.trim().to_string())
    }
}

/// Runs `cargo test` over the workspace, streaming its output, and parses the
/// result line of every test binary.
fn test_workspace(
    owners: &Owners,
    targets: &[String],
    extra: &[String],
    env: &[(&str, &str)],
    label: &str,
) -> Result<Vec<Suite>> {
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut cmd = cargo_once();
    cmd.args(["test", "--no-fail-fast"]).args(targets);
    for (name, value) in env {
        cmd.env(name, value);
    }
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    cmd.stdout(writer.try_clone()?).stderr(writer).stdin(Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("running {}", describe(&cmd)))?;
    drop(cmd); // closes our copies of the pipe's write end

    let mut suites = Vec::new();
    let mut current: Option<Suite> = None;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading cargo test output")?;
        writeln!(out, "{line}")?;
        if let Some(suite) = current.as_mut() {
            suite.read_failure_line(&line);
        }
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("Running ") {
            finish(&mut current, &mut suites);
            current = Some(Suite::new(&owners.of_running(rest), format!("{label}{}", suite_name(rest))));
        } else if let Some(krate) = trimmed.strip_prefix("Doc-tests ") {
            finish(&mut current, &mut suites);
            current = Some(Suite::new(&owners.of_doc_tests(krate), "doc-tests".to_string()));
        } else if let Some(result) = trimmed.strip_prefix("test result: ")
            && let Some(mut suite) = current.take()
        {
            suite.parse_result(result);
            suites.push(suite);
        }
    }
    finish(&mut current, &mut suites);
    let status = child.wait()?;
    if !status.success() && suites.iter().all(|s| s.failed == 0 && !s.crashed) {
        // cargo failed before any test ran (a compile error).
        suites.push(Suite { crashed: true, ..Suite::new("workspace", "build".to_string()) });
    }
    Ok(suites)
}

/// A test binary that printed no result line died on its own.
fn finish(current: &mut Option<Suite>, suites: &mut Vec<Suite>) {
    if let Some(mut suite) = current.take() {
        suite.crashed = true;
        suites.push(suite);
    }
}

/// "unittests src/lib.rs (target/debug/deps/x-123)" -> "unittests src/lib.rs".
fn suite_name(running: &str) -> String {
    running.split(" (").next().unwrap_or(running).to_string()
}

impl Suite {
    fn new(package: &str, name: String) -> Suite {
        Suite {
            package: package.to_string(),
            name,
            passed: 0,
            failed: 0,
            ignored: 0,
            crashed: false,
            failures: Vec::new(),
            in_failures: false,
            tail: std::collections::VecDeque::new(),
        }
    }

    /// Follows libtest's report of failures: after a bare "failures:" line,
    /// a "---- <test> stdout ----" line opens a test's output, which runs
    /// until the next such line or the second "failures:" line (the list of
    /// names). The "successes:" section of `--show-output` has the same
    /// headers and is not a failure. Every line also goes to the suite's
    /// tail, shown if the binary dies without a result line.
    fn read_failure_line(&mut self, line: &str) {
        self.tail.push_back(line.to_string());
        if self.tail.len() > FAILURE_TAIL {
            self.tail.pop_front();
        }
        let open = self.failures.last_mut().filter(|f| f.open);
        match line {
            "failures:" => {
                if let Some(failure) = open {
                    failure.open = false;
                    self.in_failures = false;
                } else {
                    self.in_failures = !self.in_failures;
                }
                return;
            }
            "successes:" | "failures (time limit exceeded):" => {
                if let Some(failure) = open {
                    failure.open = false;
                }
                self.in_failures = false;
                return;
            }
            _ => {}
        }
        if self.in_failures
            && let Some(test) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----"))
        {
            if let Some(failure) = open {
                failure.open = false;
            }
            self.failures.push(Failure { test: test.to_string(), lines: Vec::new(), open: true });
            return;
        }
        let Some(failure) = self.failures.last_mut().filter(|f| f.open) else { return };
        failure.lines.push(line.to_string());
        if failure.lines.len() > FAILURE_TAIL {
            failure.lines.remove(0);
        }
    }

    /// Parses "ok. 3 passed; 0 failed; 1 ignored; 0 measured; ...".
    fn parse_result(&mut self, result: &str) {
        for part in result.split(['.', ';']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next())
                && let Ok(n) = n.parse::<u32>()
            {
                match what {
                    "passed" => self.passed = n,
                    "failed" => self.failed = n,
                    "ignored" => self.ignored = n,
                    _ => {}
                }
            }
        }
    }
}

fn summarize(checks: &[(&str, bool)], suites: &[Suite], started: Instant) -> bool {
    println!("\n==> summary");
    for (name, ok) in checks {
        println!("{:<52} {}", format!("check {name}"), if *ok { "ok" } else { "FAILED" });
    }
    println!("{:<52} {:>6} {:>6} {:>7}", "suite", "passed", "failed", "ignored");
    let mut empty = 0;
    for suite in suites {
        if suite.passed + suite.failed + suite.ignored == 0 && !suite.crashed {
            empty += 1;
            continue;
        }
        let name = format!("{} {}", suite.package, suite.name);
        let note = if suite.crashed { "  CRASHED (no result line)" } else { "" };
        println!("{name:<52} {:>6} {:>6} {:>7}{note}", suite.passed, suite.failed, suite.ignored);
    }
    let passed: u32 = suites.iter().map(|s| s.passed).sum();
    let failed: u32 = suites.iter().map(|s| s.failed).sum();
    let ignored: u32 = suites.iter().map(|s| s.ignored).sum();
    let crashed = suites.iter().filter(|s| s.crashed).count();
    let checks_ok = checks.iter().all(|(_, ok)| *ok);
    println!(
        "{} suites ran ({empty} without tests), {crashed} crashed, checks {}, {:.0}s",
        suites.len() - empty,
        if checks_ok { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    // The closing line, in the plain form CI systems read. A crashed suite or a
    // failed check counts as a failure there too.
    let failed_checks = checks.iter().filter(|(_, ok)| !ok).count() as u32;
    let all_failed = failed + crashed as u32 + failed_checks;
    for suite in suites {
        if suite.crashed && suite.package != "workspace" {
            println!("\nCRASHED {} {}; its last lines:", suite.package, suite.name);
            for line in &suite.tail {
                println!("    {line}");
            }
        }
        for failure in &suite.failures {
            println!("\nFAILED {} {}: {}", suite.package, suite.name, failure.test);
            for line in failure.lines.iter().skip_while(|l| l.trim().is_empty()) {
                println!("    {line}");
            }
        }
    }
    println!("total: {passed} passed, {all_failed} failed, {ignored} skipped");
    failed == 0 && crashed == 0 && checks_ok && ignored == 0 && passed > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_parsed() {
        let mut suite = Suite::new("p", "s".into());
        suite
            .parse_result("ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s");
        assert_eq!((suite.passed, suite.failed, suite.ignored), (3, 0, 1));
        let mut suite = Suite::new("p", "s".into());
        suite.parse_result(
            "FAILED. 12 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.48s",
        );
        assert_eq!((suite.passed, suite.failed, suite.ignored), (12, 2, 0));
    }

    #[test]
    fn a_failed_test_s_output_is_kept_for_the_summary() {
        let mut suite = Suite::new("p", "s".into());
        let output = "running 2 tests\ntest a ... ok\ntest b ... FAILED\n\nfailures:\n\n\
                      ---- b stdout ----\n\nthread 'b' panicked at tests/b.rs:3:5:\nboom\n\n\
                      failures:\n    b\n\ntest result: FAILED. 1 passed; 1 failed";
        for line in output.lines() {
            suite.read_failure_line(line);
        }
        assert_eq!(suite.failures.len(), 1);
        assert_eq!(suite.failures[0].test, "b");
        assert_eq!(suite.failures[0].lines, ["", "thread 'b' panicked at tests/b.rs:3:5:", "boom", ""]);

        let mut shown = Suite::new("p", "s".into());
        let output = "successes:\n\n---- a stdout ----\nhello\n\nsuccesses:\n    a\n\n\
                      test result: ok. 1 passed; 0 failed";
        for line in output.lines() {
            shown.read_failure_line(line);
        }
        assert!(shown.failures.is_empty(), "--show-output's successes are not failures");
        assert_eq!(shown.tail.back().map(String::as_str), Some("test result: ok. 1 passed; 0 failed"));

        let mut long = Suite::new("p", "s".into());
        long.read_failure_line("failures:");
        long.read_failure_line("---- c stdout ----");
        for n in 0..100 {
            long.read_failure_line(&format!("line {n}"));
        }
        assert_eq!(long.failures[0].lines.len(), FAILURE_TAIL);
        assert_eq!(long.failures[0].lines.last().unwrap(), "line 99");
    }

    #[test]
    fn suites_are_named_by_their_package() {
        let owners = Owners {
            executables: [("relay_udp-0a1b".to_string(), "ferry-tests".to_string())].into(),
            libraries: [("ferry_relay".to_string(), "ferry-relay".to_string())].into(),
        };
        assert_eq!(owners.of_running("tests/relay_udp.rs (target/debug/deps/relay_udp-0a1b)"), "ferry-tests");
        assert_eq!(owners.of_running("unittests src/lib.rs (target/debug/deps/other-9)"), "?");
        assert_eq!(owners.of_doc_tests("ferry_relay"), "ferry-relay");
    }

    #[test]
    fn suite_names_drop_the_executable_path() {
        assert_eq!(suite_name("unittests src/lib.rs (target/debug/deps/x-123)"), "unittests src/lib.rs");
        assert_eq!(suite_name("tests/lab.rs (target/debug/deps/lab-9)"), "tests/lab.rs");
    }

    #[test]
    fn crashes_failures_and_empty_runs_fail_the_summary() {
        let ok = |passed| Suite { passed, ..Suite::new("p", "s".into()) };
        let started = Instant::now();
        assert!(summarize(&[("rustfmt", true)], &[ok(3)], started));
        assert!(!summarize(&[("rustfmt", false)], &[ok(3)], started));
        assert!(!summarize(&[], &[ok(0)], started), "no test ran");
        let crashed = Suite { crashed: true, ..ok(1) };
        assert!(!summarize(&[], &[ok(3), crashed], started));
        let failed = Suite { failed: 1, ..ok(1) };
        assert!(!summarize(&[], &[failed], started));
        let ignored = Suite { ignored: 1, ..ok(1) };
        assert!(!summarize(&[], &[ignored], started), "an ignored test proves nothing");
    }
}
