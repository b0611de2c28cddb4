//! The systemd units shipped in the repository, checked by systemd itself:
//! `systemd-analyze verify` (syntax, known directives, the executable) and the
//! offline `systemd-analyze security` score of the hardening. No systemd runs
//! as PID 1 here, so starting the units is not tested.

use std::{path::Path, process::Command};

use ferry_tests::bin_path;

/// systemd's exposure scale is 0 (locked down) to 10 (unprotected); `security`
/// takes the threshold in tenths. 4.0 and below is what it calls "OK".
const MAX_EXPOSURE_TENTHS: u32 = 40;

/// The unit with its ExecStart (and ExecStopPost, which runs the same
/// binary) pointed at the binary this build made, so that `verify` can
/// check the executable exists.
fn with_built_binary(unit: &str, binary: &str, dir: &Path) -> std::path::PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(repo.join(unit)).unwrap();
    let mut rewritten = String::new();
    let mut exec_starts = 0;
    for line in text.lines() {
        let exec = ["ExecStart=", "ExecStopPost="]
            .into_iter()
            .find_map(|key| line.strip_prefix(key).map(|command| (key, command)));
        match exec {
            Some((key, command)) => {
                exec_starts += usize::from(key == "ExecStart=");
                let (program, args) = command.split_once(' ').unwrap_or((command, ""));
                assert!(program.ends_with(&format!("/{binary}")), "{unit}: {key} runs {program}");
                rewritten.push_str(&format!("{key}{} {args}\n", bin_path(binary).display()));
            }
            None => {
                rewritten.push_str(line);
                rewritten.push('\n');
            }
        }
    }
    assert_eq!(exec_starts, 1, "{unit} has one ExecStart");
    let path = dir.join(Path::new(unit).file_name().unwrap());
    std::fs::write(&path, rewritten).unwrap();
    path
}

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; cargo xtask test installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn check_unit(unit: &str, binary: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = with_built_binary(unit, binary, dir.path());
    // verify prints unknown or misspelt directives as warnings and still
    // succeeds, so silence is the pass.
    let (ok, text) = analyze(&["verify", "--man=no"], &path);
    assert!(ok && text.trim().is_empty(), "systemd-analyze verify {unit}:\n{text}");
    let threshold = format!("--threshold={MAX_EXPOSURE_TENTHS}");
    let (ok, text) = analyze(&["security", "--offline=true", &threshold, "--no-pager"], &path);
    assert!(ok, "{unit} is more exposed than {MAX_EXPOSURE_TENTHS} tenths:\n{text}");
    assert!(text.contains("Overall exposure level"), "{text}");
}

#[test]
fn the_gateway_unit_verifies_and_is_hardened() {
    check_unit("gateway/ferry-gateway.service", "ferry-gateway");
}

#[test]
fn the_relay_unit_verifies_and_is_hardened() {
    check_unit("relay/ferry-relay.service", "ferry-relay");
}

#[test]
fn the_client_unit_verifies_and_is_hardened() {
    check_unit("client/ferry-client.service", "ferry");
}

#[test]
fn a_misspelt_directive_fails_the_check() {
    // The check above must be able to fail: a unit with a typo is not silent.
    let dir = tempfile::tempdir().unwrap();
    let path = with_built_binary("gateway/ferry-gateway.service", "ferry-gateway", dir.path());
    let text = std::fs::read_to_string(&path).unwrap().replace("NoNewPrivileges=", "NoNewPrivilege=");
    std::fs::write(&path, text).unwrap();
    let (_, out) = analyze(&["verify", "--man=no"], &path);
    assert!(out.contains("NoNewPrivilege"), "{out}");
}
