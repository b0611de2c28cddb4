//! Installing prerequisites, idempotently.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::cargo::workspace_root;

/// Debian packages the tests use, with the command each provides.
pub const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip, for namespaces, veth and routes"),
    ("python3-venv", "a virtualenv for schemathesis, which tests/schemathesis.rs installs from PyPI"),
    ("iptables", "iptables, for NAT baselines"),
    ("nftables", "nft, for the lab's NAT routers"),
    ("wireguard-go", "the independent WireGuard implementation we interoperate with"),
    ("wireguard-tools", "wg, to configure wireguard-go"),
    ("iperf3", "TCP and UDP throughput through tunnels"),
    ("tcpdump", "captures for checksum checks"),
    ("ethtool", "turning off checksum offload on veth"),
    ("conntrack", "conntrack -F, the soak's fault that makes a NAT router lose every mapping"),
    (
        "libfaketime",
        "LD_PRELOAD'ed into the gateway to step its wall clock alone (the clock-step test and the soak's fault)",
    ),
    (
        "bpftool",
        "bpftool, with which the soak reads the gateway's eBPF maps through the daemon's descriptors (its leak checks)",
    ),
    ("iputils-ping", "ping"),
    ("procps", "sysctl"),
    ("util-linux", "setpriv, to run binaries without privileges"),
    ("systemd", "systemd-analyze, to verify the units and score their hardening"),
    ("chromium", "headless Chromium, for the browser tests of the web console (driven by Playwright)"),
    (
        "postgresql",
        "PostgreSQL 15 (initdb, pg_ctl, psql): the cloud's tests over PostgreSQL start servers of their own",
    ),
    (
        "coturn",
        "turnutils_stunclient, an independent STUN client for the relay's STUN interop test (its TURN server stays off: Debian ships it disabled)",
    ),
];

/// nightly rust-src and bpf-linker (see ferry-ebpf-build), and the stable
/// components the checks use.
pub fn toolchain() -> Result<ferry_ebpf_build::Toolchain> {
    let started = Instant::now();
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        let present =
            crate::cargo::cargo().args([probe, "--version"]).output().is_ok_and(|o| o.status.success());
        if !present {
            eprintln!("setup: adding {component} to the stable toolchain");
            let status = Command::new("rustup").args(["component", "add", component]).status();
            if !status.is_ok_and(|s| s.success()) {
                bail!("could not add {component}: run `rustup component add {component}`, then retry");
            }
        }
    }
    let toolchain = ferry_ebpf_build::ensure_toolchain(&mut |step| eprintln!("setup: {step}"))?;
    eprintln!(
        "setup: eBPF toolchain ready (nightly LLVM {}, bpf-linker in {}) [{:.1}s]",
        toolchain.llvm_major,
        toolchain.bin_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(toolchain)
}

/// cargo-fuzz, for the fuzz targets (installed once, from crates.io).
pub fn cargo_fuzz() -> Result<()> {
    let present =
        crate::cargo::cargo().args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz (about a minute, once)");
    let status = crate::cargo::cargo().args(["install", "--locked", "cargo-fuzz"]).status()?;
    if !status.success() {
        bail!("installing cargo-fuzz failed; run `cargo install --locked cargo-fuzz`, then retry");
    }
    Ok(())
}

/// `cargo machete`. cargo-machete decides whether cargo started it from
/// `CARGO` being set without `CARGO_PKG_NAME`; under `cargo xtask` both are
/// inherited, and it would then read "machete" as a folder to scan.
pub fn machete() -> Command {
    let mut cmd = crate::cargo::cargo();
    cmd.arg("machete").env_remove("CARGO_PKG_NAME");
    cmd
}

/// The cargo-machete release the unused-dependency check runs: pinned, so
/// that a new release's heuristics cannot fail a run on unchanged code.
const CARGO_MACHETE_VERSION: &str = "0.9.2";

/// cargo-machete, for the unused-dependency check (installed once, from
/// crates.io, and again when the pinned version changes).
pub fn cargo_machete() -> Result<()> {
    let installed = machete().arg("--version").output();
    if installed.is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == CARGO_MACHETE_VERSION
    }) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-machete {CARGO_MACHETE_VERSION} (a few minutes, once)");
    let status = crate::cargo::cargo()
        .args(["install", "--locked", "--force", "cargo-machete", "--version", CARGO_MACHETE_VERSION])
        .status()?;
    if !status.success() {
        bail!(
            "installing cargo-machete failed; run `cargo install --locked cargo-machete --version \
             {CARGO_MACHETE_VERSION}`, then retry"
        );
    }
    Ok(())
}

/// The boringtun-cli the tunnel benchmark measures against: the release the
/// issue's figures were taken with.
pub const BORINGTUN_VERSION: &str = "0.7.1";

/// Cloudflare's `boringtun-cli`, for the tunnel benchmark: installed from
/// crates.io into `<target>/boringtun` (its build cache beside it), once and
/// again when the pinned version changes. Returns the binary.
pub fn boringtun() -> Result<PathBuf> {
    let root = crate::cargo::target_dir().join("boringtun");
    let binary = root.join("bin").join("boringtun-cli");
    let installed = Command::new(&binary).arg("--version").output();
    if installed.is_ok_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout).split_whitespace().last() == Some(BORINGTUN_VERSION)
    }) {
        return Ok(binary);
    }
    eprintln!(
        "setup: installing boringtun-cli {BORINGTUN_VERSION} into {} (a few minutes, once)",
        root.display()
    );
    let status = crate::cargo::cargo()
        .args(["install", "--locked", "--force", "boringtun-cli", "--version", BORINGTUN_VERSION, "--root"])
        .arg(&root)
        .arg("--target-dir")
        .arg(root.join("build"))
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("installing boringtun-cli {BORINGTUN_VERSION} failed");
    }
    Ok(binary)
}

/// Installs the Debian packages that are missing, with one apt-get call.
pub fn debian_packages() -> Result<()> {
    let missing: Vec<&str> =
        DEBIAN_PACKAGES.iter().map(|(name, _)| *name).filter(|name| !installed(name)).collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; install them as root (apt-get install {}) or run this command as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "missing packages {} and no apt-get on this machine; install their equivalents: {}",
            missing.join(", "),
            DEBIAN_PACKAGES
                .iter()
                .filter(|(name, _)| missing.contains(name))
                .map(|(name, why)| format!("{name} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    apt(&["update", "-q"])?;
    apt(&["install", "-y", "-q", "--no-install-recommends"]
        .iter()
        .copied()
        .chain(missing.iter().copied())
        .collect::<Vec<_>>())?;
    let still: Vec<&str> = missing.iter().copied().filter(|name| !installed(name)).collect();
    if !still.is_empty() {
        bail!("apt-get finished but these are still missing: {}", still.join(", "));
    }
    Ok(())
}

/// The browser tests' npm packages (tests/browser: playwright-core, at the
/// version package-lock.json pins), installed with `npm ci` into
/// tests/browser/node_modules when the lock file changed since the last
/// install. Playwright drives Debian's chromium; it downloads no browser.
pub fn browser_tests() -> Result<()> {
    let dir = workspace_root().join("tests").join("browser");
    let lock = dir.join("package-lock.json");
    // A copy of the lock file as last installed: equal means up to date.
    let stamp = dir.join("node_modules").join(".ferry-installed-lock.json");
    let wanted = std::fs::read(&lock).with_context(|| format!("reading {}", lock.display()))?;
    if std::fs::read(&stamp).is_ok_and(|installed| installed == wanted) {
        eprintln!("setup: browser test packages present");
        return Ok(());
    }
    let node = Command::new("node").arg("--version").output();
    let major = node.as_ref().ok().filter(|o| o.status.success()).and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    match major {
        Some(major) if major >= 20 => {}
        Some(major) => bail!("the browser tests need Node.js 20 or newer; this machine has {major}"),
        None => bail!("the browser tests need Node.js 20 or newer with npm (`node` was not found)"),
    }
    let started = Instant::now();
    eprintln!("setup: installing the browser test packages (npm ci in {})", dir.display());
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .env("npm_config_update_notifier", "false")
        .current_dir(&dir)
        .output()
        .context("running npm ci (is npm installed?)")?;
    if !output.status.success() {
        bail!(
            "npm ci in {} failed:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    eprintln!("setup: browser test packages installed [{:.1}s]", started.elapsed().as_secs_f64());
    Ok(())
}

/// Builds the eBPF object into target/bpf and returns its path.
pub fn build_ebpf() -> Result<PathBuf> {
    let toolchain = toolchain()?;
    let root = workspace_root();
    let started = Instant::now();
    let object = ferry_ebpf_build::build_object(&toolchain, &root, &root.join("target").join("bpf"))?;
    eprintln!("build-ebpf: {} [{:.1}s]", object.display(), started.elapsed().as_secs_f64());
    Ok(object)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).ends_with("install ok installed"))
}

fn apt(args: &[&str]) -> Result<()> {
    let output = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .with_context(|| format!("running apt-get {}", args.join(" ")))?;
    if !output.status.success() {
        bail!("apt-get {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
