//! `cargo xtask bench <name>`: builds ferry-bench in release mode and runs it.

use anyhow::{Result, bail};

use crate::{
    cargo::{cargo, run as run_cmd, target_dir},
    setup,
};

/// The benchmarks ferry-bench knows, with what each measures.
pub const BENCHES: &[(&str, &str)] = &[
    ("guard", "uplink guard ns/packet with BPF_PROG_RUN, against an empty XDP program"),
    (
        "gateway",
        "gateway whitelist/NAT ns/packet with BPF_PROG_RUN (LAN reply hit and TUN established flow, 10 and 10,000 \
         whitelist entries), each against an empty program of its own type (XDP, TC); iperf3 through the gateway \
         against wireguard-go + nftables",
    ),
    (
        "relay",
        "relay XDP forwarder ns/forwarded packet with BPF_PROG_RUN (1 and 1,000,000 bindings, FIB with the next-hop \
         cache hitting and without it, MAC swap), \
         against an empty XDP program; ferry-relay forwarding 1420- and 64-byte traffic between namespaces \
         (packets/s, Gbit/s, CPU s/Gbit) with --xdp native against --xdp off",
    ),
    (
        "tunnel",
        "Ferry <-> Ferry TCP and 64-byte UDP against wireguard-go and boringtun-cli, the engine's crypto alone on 1 \
         and 2 threads, and handshakes/s against the X25519 bound (interleaved rounds)",
    ),
    (
        "cloud",
        "ferry-cloud session create/start/end and audited writes/s with 64 HTTP clients against raw sled \
         insert+flush/s, and the memory of 10,000 idle gateway connections; then, every cloud process capped \
         at half a core: PostgreSQL with one replica against sled, two replicas against one",
    ),
    (
        "client",
        "the technician on a cone/cone pair: connect to the first answered ping and to the direct path, TCP \
         throughput and RTT over the direct path against the relay, and against a stock wireguard-go with the \
         wg-quick export",
    ),
];

/// The release packages a benchmark runs besides ferry-bench, or None for
/// every binary of the workspace. Building only what is needed keeps a
/// cloud-only run from compiling the gateway, relay and tunnel binaries.
fn packages(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "cloud" => Some(&["ferry-cloud"]),
        // BPF_PROG_RUN needs only ferry-bench; the traffic rows run a whole
        // gateway lab (and would otherwise measure stale binaries).
        "gateway" => Some(&["ferry-gateway", "ferry-cloud", "ferry-relay"]),
        // BPF_PROG_RUN needs only ferry-bench; the traffic rows run the relay.
        "relay" => Some(&["ferry-relay"]),
        // The whole lab: cloud, relay, gateway daemon and the technician's client.
        "client" => Some(&["ferry-cloud", "ferry-relay", "ferry-gateway", "ferry-client"]),
        _ => None,
    }
}

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
    let mut build = cargo();
    build.args(["build", "--release"]);
    match names.iter().map(|name| packages(name)).collect::<Option<Vec<_>>>() {
        Some(lists) => {
            build.args(["-p", "ferry-bench"]);
            for package in lists.concat() {
                build.args(["-p", package]);
            }
        }
        None => {
            build.arg("--bins");
        }
    }
    run_cmd(&mut build)?;
    let mut native_ferry_wg = None;
    let mut boringtun = None;
    if names.contains(&"tunnel") {
        boringtun = Some(setup::boringtun()?);
        // A second ferry-wg compiled for this CPU: the RustCrypto AEAD inlines
        // its SIMD code only when the target features are known at compile time.
        let native_dir = target_dir().join("native");
        run_cmd(
            cargo()
                .args(["build", "--release", "-p", "ferry-tunnel", "--bin", "ferry-wg", "--target-dir"])
                .arg(&native_dir)
                .env("RUSTFLAGS", "-C target-cpu=native"),
        )?;
        native_ferry_wg = Some(native_dir.join("release").join("ferry-wg"));
    }
    let out_dir = target_dir().join("bench");
    let mut cmd = std::process::Command::new(target_dir().join("release").join("ferry-bench"));
    cmd.arg("--out-dir").arg(&out_dir);
    if let Some(path) = &native_ferry_wg {
        cmd.arg("--native-ferry-wg").arg(path);
    }
    if let Some(path) = &boringtun {
        cmd.arg("--boringtun").arg(path);
    }
    cmd.args(&names);
    run_cmd(&mut cmd)
}
