//! `cargo xtask bench <name>`: builds ferry-bench in release mode and runs it.

use anyhow::{Result, bail};

use crate::{
    cargo::{cargo, run as run_cmd, workspace_root},
    setup,
};

/// The benchmarks ferry-bench knows, with what each measures.
pub const BENCHES: &[(&str, &str)] = &[
    ("guard", "uplink guard ns/packet with BPF_PROG_RUN, against an empty XDP program"),
    ("tunnel", "Ferry <-> Ferry TCP and 64-byte UDP against wireguard-go, and handshakes/s (criterion)"),
];

pub fn run(names: &[String]) -> Result<()> {
    if names.is_empty() {
        println!("benchmarks (cargo xtask bench <name>... | all):");
        for (name, what) in BENCHES {
            println!("  {name:<10} {what}");
        }
        return Ok(());
    }
    let names: Vec<&str> = if names.iter().any(|n| n == "all") {
        BENCHES.iter().map(|(n, _)| *n).collect()
    } else {
        names.iter().map(String::as_str).collect()
    };
    for name in &names {
        if !BENCHES.iter().any(|(n, _)| n == name) {
            bail!("unknown benchmark `{name}`; run `cargo xtask bench` for the list");
        }
    }
    if !setup::is_root() {
        bail!("benchmarks load eBPF programs and create namespaces: run them as root");
    }
    setup::toolchain()?;
    setup::debian_packages()?;
    run_cmd(cargo().args(["build", "--release", "--bins"]))?;
    let mut native_ferry_wg = None;
    if names.contains(&"tunnel") {
        run_cmd(cargo().args(["bench", "-p", "ferry-tunnel", "--bench", "handshake"]))?;
        // A second ferry-wg compiled for this CPU: the RustCrypto AEAD inlines
        // its SIMD code only when the target features are known at compile time.
        let native_dir = workspace_root().join("target").join("native");
        run_cmd(
            cargo()
                .args(["build", "--release", "-p", "ferry-tunnel", "--bin", "ferry-wg", "--target-dir"])
                .arg(&native_dir)
                .env("RUSTFLAGS", "-C target-cpu=native"),
        )?;
        native_ferry_wg = Some(native_dir.join("release").join("ferry-wg"));
    }
    let out_dir = workspace_root().join("target").join("bench");
    let mut cmd = std::process::Command::new(workspace_root().join("target/release/ferry-bench"));
    cmd.arg("--out-dir").arg(&out_dir);
    cmd.arg("--criterion-dir").arg(workspace_root().join("target").join("criterion"));
    if let Some(path) = &native_ferry_wg {
        cmd.arg("--native-ferry-wg").arg(path);
    }
    cmd.args(&names);
    run_cmd(&mut cmd)
}
