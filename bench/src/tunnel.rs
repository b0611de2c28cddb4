//! The WireGuard engine: Ferry <-> Ferry against wireguard-go <-> wireguard-go
//! in two namespaces joined by a veth, measured in the same run, plus the
//! handshake rate of the core from its criterion benchmark.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferry_lab::{Lab, Netns};
use ferry_tests::wg::{FerryWg, Keys, PeerSpec, WireguardGo, iperf3_server, ping};

use crate::report::{Better, Row};

const ROUNDS: usize = 2;
const TCP_SECONDS: u32 = 8;
const UDP_SECONDS: u32 = 5;

struct Measured {
    tcp_bps: Vec<f64>,
    udp_pps: Vec<f64>,
}

/// `native_ferry_wg`: a ferry-wg built with `-C target-cpu=native`, measured
/// as a second Ferry row (the portable build is the headline).
pub fn run(criterion_dir: &Path, native_ferry_wg: Option<&Path>) -> Result<Vec<Row>> {
    let mut ferry = Measured { tcp_bps: vec![], udp_pps: vec![] };
    let mut native = Measured { tcp_bps: vec![], udp_pps: vec![] };
    let mut go = Measured { tcp_bps: vec![], udp_pps: vec![] };
    let portable = ferry_tests::bin_path("ferry-wg");
    for round in 0..ROUNDS {
        eprintln!("tunnel bench: round {} of {ROUNDS}", round + 1);
        measure(Impl::WireguardGo, &mut go)?;
        measure(Impl::Ferry(portable.clone()), &mut ferry)?;
        if let Some(binary) = native_ferry_wg {
            measure(Impl::Ferry(binary.to_path_buf()), &mut native)?;
        }
    }
    let mut rows = vec![
        Row::new(
            "tunnel",
            "tcp_throughput",
            "Gbit/s",
            mean(&ferry.tcp_bps) / 1e9,
            mean(&go.tcp_bps) / 1e9,
            "wireguard-go <-> wireguard-go",
            Better::Higher,
        ),
        Row::new(
            "tunnel",
            "udp_64_byte_rate",
            "packets/s",
            mean(&ferry.udp_pps),
            mean(&go.udp_pps),
            "wireguard-go <-> wireguard-go",
            Better::Higher,
        ),
    ];
    if native_ferry_wg.is_some() {
        rows.push(Row::new(
            "tunnel",
            "tcp_throughput_native_build",
            "Gbit/s",
            mean(&native.tcp_bps) / 1e9,
            mean(&go.tcp_bps) / 1e9,
            "wireguard-go <-> wireguard-go (Ferry built with -C target-cpu=native)",
            Better::Higher,
        ));
        rows.push(Row::new(
            "tunnel",
            "udp_64_byte_rate_native_build",
            "packets/s",
            mean(&native.udp_pps),
            mean(&go.udp_pps),
            "wireguard-go <-> wireguard-go (Ferry built with -C target-cpu=native)",
            Better::Higher,
        ));
    }
    let handshake_ns = criterion_mean_ns(criterion_dir, "handshake")?;
    let x25519_ns = criterion_mean_ns(criterion_dir, "x25519")?;
    // A full handshake costs both sides five variable-base X25519 operations
    // (plus two key generations): the bound the crypto alone allows.
    rows.push(Row::new(
        "tunnel",
        "handshakes_per_second_one_core",
        "handshakes/s",
        1e9 / handshake_ns,
        1e9 / (5.0 * x25519_ns),
        "X25519 bound: 1 / (5 DH operations)",
        Better::Higher,
    ));
    Ok(rows)
}

#[derive(Clone)]
enum Impl {
    /// ferry-wg from this path.
    Ferry(PathBuf),
    WireguardGo,
}

/// Either implementation's interface in one namespace; dropping it stops it.
enum Running {
    Ferry(#[expect(dead_code, reason = "held for its Drop")] FerryWg),
    Go(#[expect(dead_code, reason = "held for its Drop")] WireguardGo),
}

fn start(which: &Impl, lab: &Lab, ns: &Netns, keys: &Keys, address: &str, peer: &PeerSpec<'_>) -> Running {
    match which {
        Impl::Ferry(binary) => {
            Running::Ferry(FerryWg::start_binary(binary, lab, ns, keys, 51820, address, peer))
        }
        Impl::WireguardGo => Running::Go(WireguardGo::start(lab, ns, keys, 51820, address, peer)),
    }
}

fn measure(which: Impl, into: &mut Measured) -> Result<()> {
    let lab = Lab::new()?;
    let a = lab.netns("bench-a")?;
    let b = lab.netns("bench-b")?;
    lab.wire(&a, &["192.0.2.1/24"], &b, &["192.0.2.2/24"])?;
    let (ka, kb) = (Keys::generate(&a), Keys::generate(&b));
    let _a_if = start(
        &which,
        &lab,
        &a,
        &ka,
        "10.88.0.1/24",
        &PeerSpec {
            public: &kb.public,
            allowed_ips: "10.88.0.2/32",
            endpoint: Some("192.0.2.2:51820".into()),
            psk: None,
        },
    );
    let _b_if = start(
        &which,
        &lab,
        &b,
        &kb,
        "10.88.0.2/24",
        &PeerSpec {
            public: &ka.public,
            allowed_ips: "10.88.0.1/32",
            endpoint: Some("192.0.2.1:51820".into()),
            psk: None,
        },
    );
    anyhow::ensure!(ping(&a, "10.88.0.2", 10), "the tunnel did not come up");

    let _server = iperf3_server(&b, "10.88.0.2");
    let tcp = iperf3_json(&a, &["-c", "10.88.0.2", "-t", &TCP_SECONDS.to_string(), "-J"])?;
    into.tcp_bps.push(tcp["end"]["sum_received"]["bits_per_second"].as_f64().context("no TCP result")?);

    let _server = iperf3_server(&b, "10.88.0.2");
    let udp = iperf3_json(
        &a,
        &["-c", "10.88.0.2", "-u", "-l", "64", "-b", "0", "-t", &UDP_SECONDS.to_string(), "-J"],
    )?;
    let sum = &udp["end"]["sum"];
    let packets = sum["packets"].as_f64().context("no UDP packets")?;
    let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
    let seconds = sum["seconds"].as_f64().unwrap_or(f64::from(UDP_SECONDS));
    into.udp_pps.push((packets - lost).max(0.0) / seconds);
    Ok(())
}

fn iperf3_json(ns: &Netns, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = vec!["120", "iperf3"];
    all.extend_from_slice(args);
    let out = ns.exec("timeout", &all)?;
    serde_json::from_str(&out).context("parsing iperf3 JSON")
}

fn criterion_mean_ns(dir: &Path, name: &str) -> Result<f64> {
    let path = dir.join(name).join("new").join("estimates.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading {} (cargo xtask bench tunnel runs the criterion bench first)", path.display())
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    json["mean"]["point_estimate"].as_f64().context("no mean in criterion estimates")
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}
