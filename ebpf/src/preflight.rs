//! Checks that this host can run Ferry's eBPF programs: every program in the
//! embedded object is loaded through the kernel's verifier and unloaded again.

use std::{fmt, fs, path::Path};

use aya::programs::Program;

use crate::{Error, load_object};

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The preflight report; [`Report::ok`] is false if any check failed.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn push(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check { name: name.into(), ok, detail: detail.into() });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            writeln!(f, "{mark} {:<28} {}", check.name, check.detail)?;
        }
        Ok(())
    }
}

/// Runs every check. Needs CAP_BPF and CAP_NET_ADMIN (or root) to load.
pub fn run() -> Report {
    let mut report = Report::default();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    report.push("kernel", !release.is_empty(), release.trim());
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    report.push(
        "kernel BTF",
        true,
        if btf { "present" } else { "absent (not required by Ferry's programs)" },
    );
    match load_all() {
        Ok(programs) => {
            for (name, result) in programs {
                match result {
                    Ok(kind) => report.push(format!("program {name}"), true, format!("{kind}, verified")),
                    Err(err) => report.push(format!("program {name}"), false, err),
                }
            }
        }
        Err(err) => report.push("eBPF object", false, err.to_string()),
    }
    report
}

/// Each program's name and either its kind or why the verifier refused it.
type LoadResults = Vec<(String, Result<&'static str, String>)>;

fn load_all() -> Result<LoadResults, Error> {
    let mut ebpf = load_object()?;
    let mut results = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        let result = match program {
            Program::Xdp(xdp) => xdp.load().map(|()| "xdp").map_err(|e| format!("{e:#}")),
            Program::SchedClassifier(tc) => tc.load().map(|()| "tc").map_err(|e| format!("{e:#}")),
            other => Err(format!("unexpected program type {:?}", other.prog_type())),
        };
        results.push((name.to_string(), result));
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(results)
}
