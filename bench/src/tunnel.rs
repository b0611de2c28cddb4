//! The WireGuard engine: Ferry <-> Ferry against wireguard-go <-> wireguard-go
//! and boringtun <-> boringtun in two namespaces joined by a veth, measured in
//! interleaved rounds of the same run; the engine's crypto alone on 1 and 2
//! threads; and the handshake rate of the core against the X25519 bound
//! ([`crate::tunnel_handshake`]).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use ferry_lab::{Lab, Netns, Process};
use ferry_tests::wg::{FerryWg, Keys, PeerSpec, WireguardGo, iperf3_server, ping, wait_for};

use crate::report::{Better, Row};

const ROUNDS: usize = 3;
const TCP_SECONDS: u32 = 8;
const UDP_SECONDS: u32 = 5;

#[derive(Default)]
struct Measured {
    tcp_bps: Vec<f64>,
    udp_pps: Vec<f64>,
    /// CPU seconds of both ends' processes per Gbit carried, TCP runs.
    cpu_s_per_gbit: Vec<f64>,
}

/// The tools the tunnel benchmark runs besides the workspace's binaries.
pub struct Peers<'a> {
    /// A ferry-wg built with `-C target-cpu=native`, measured as a second
    /// Ferry row (the portable build is the headline).
    pub native_ferry_wg: Option<&'a Path>,
    /// Cloudflare's `boringtun-cli` (installed by `cargo xtask bench`).
    pub boringtun: Option<&'a Path>,
}

pub fn run(peers: &Peers<'_>) -> Result<Vec<Row>> {
    let mut ferry = Measured::default();
    let mut native = Measured::default();
    let mut go = Measured::default();
    let mut boring = Measured::default();
    let portable = ferry_tests::bin_path("ferry-wg");
    for round in 0..ROUNDS {
        eprintln!("tunnel bench: round {} of {ROUNDS}", round + 1);
        measure(&Impl::WireguardGo, &mut go)?;
        measure(&Impl::Ferry(portable.clone()), &mut ferry)?;
        if let Some(binary) = peers.boringtun {
            measure(&Impl::Boringtun(binary.to_path_buf()), &mut boring)?;
        }
        if let Some(binary) = peers.native_ferry_wg {
            measure(&Impl::Ferry(binary.to_path_buf()), &mut native)?;
        }
    }
    for (name, m) in
        [("wireguard-go", &go), ("ferry", &ferry), ("boringtun", &boring), ("ferry native", &native)]
    {
        if !m.tcp_bps.is_empty() {
            eprintln!(
                "tunnel bench: {name}: TCP Gbit/s per round {:.2?}, CPU s/Gbit {:.2?}",
                m.tcp_bps.iter().map(|b| b / 1e9).collect::<Vec<_>>(),
                m.cpu_s_per_gbit
            );
        }
    }
    let go_name = "wireguard-go <-> wireguard-go";
    let mut rows = vec![
        Row::new(
            "tunnel",
            "tcp_throughput",
            "Gbit/s",
            mean(&ferry.tcp_bps) / 1e9,
            mean(&go.tcp_bps) / 1e9,
            go_name,
            Better::Higher,
        ),
        Row::new(
            "tunnel",
            "tcp_cpu_s_per_gbit",
            "CPU s/Gbit",
            mean(&ferry.cpu_s_per_gbit),
            mean(&go.cpu_s_per_gbit),
            go_name,
            Better::Lower,
        ),
        Row::new(
            "tunnel",
            "udp_64_byte_rate",
            "packets/s",
            mean(&ferry.udp_pps),
            mean(&go.udp_pps),
            go_name,
            Better::Higher,
        ),
    ];
    if peers.boringtun.is_some() {
        let name = "boringtun-cli <-> boringtun-cli";
        rows.push(Row::new(
            "tunnel",
            "tcp_throughput_vs_boringtun",
            "Gbit/s",
            mean(&ferry.tcp_bps) / 1e9,
            mean(&boring.tcp_bps) / 1e9,
            name,
            Better::Higher,
        ));
        rows.push(Row::new(
            "tunnel",
            "tcp_cpu_s_per_gbit_vs_boringtun",
            "CPU s/Gbit",
            mean(&ferry.cpu_s_per_gbit),
            mean(&boring.cpu_s_per_gbit),
            name,
            Better::Lower,
        ));
        rows.push(Row::new(
            "tunnel",
            "udp_64_byte_rate_vs_boringtun",
            "packets/s",
            mean(&ferry.udp_pps),
            mean(&boring.udp_pps),
            name,
            Better::Higher,
        ));
    }
    if peers.native_ferry_wg.is_some() {
        let name = "wireguard-go <-> wireguard-go (Ferry built with -C target-cpu=native)";
        rows.push(Row::new(
            "tunnel",
            "tcp_throughput_native_build",
            "Gbit/s",
            mean(&native.tcp_bps) / 1e9,
            mean(&go.tcp_bps) / 1e9,
            name,
            Better::Higher,
        ));
        rows.push(Row::new(
            "tunnel",
            "udp_64_byte_rate_native_build",
            "packets/s",
            mean(&native.udp_pps),
            mean(&go.udp_pps),
            name,
            Better::Higher,
        ));
    }
    rows.extend(crate::tunnel_crypto::rows()?);
    rows.extend(crate::tunnel_handshake::rows()?);
    Ok(rows)
}

#[derive(Clone)]
enum Impl {
    /// ferry-wg from this path.
    Ferry(PathBuf),
    WireguardGo,
    /// boringtun-cli from this path.
    Boringtun(PathBuf),
}

/// One implementation's interface in one namespace; dropping it stops it.
enum Running {
    Ferry(FerryWg),
    Go(WireguardGo),
    Boringtun(Boringtun),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Ferry(wg) => wg.process.pid(),
            Running::Go(go) => go.pid(),
            Running::Boringtun(bt) => bt.process.pid(),
        }
    }
}

fn start(which: &Impl, lab: &Lab, ns: &Netns, keys: &Keys, address: &str, peer: &PeerSpec<'_>) -> Running {
    match which {
        Impl::Ferry(binary) => {
            Running::Ferry(FerryWg::start_binary(binary, lab, ns, keys, 51820, address, peer))
        }
        Impl::WireguardGo => Running::Go(WireguardGo::start(lab, ns, keys, 51820, address, peer)),
        Impl::Boringtun(binary) => Running::Boringtun(Boringtun::start(binary, lab, ns, keys, address, peer)),
    }
}

/// A running `boringtun-cli`, configured like wireguard-go through its UAPI
/// socket with `wg set`.
struct Boringtun {
    process: Process,
}

impl Boringtun {
    fn start(
        binary: &Path,
        lab: &Lab,
        ns: &Netns,
        keys: &Keys,
        address: &str,
        peer: &PeerSpec<'_>,
    ) -> Boringtun {
        let ifname = lab.ifname("bt");
        let mut cmd = ns.command(binary);
        // In the foreground, logging to its stdout; as root it would
        // otherwise switch to the user that ran sudo, and there is none.
        cmd.args(["--foreground", "--disable-drop-privileges", "--verbosity", "error", &ifname]);
        let process = ns.spawn(cmd).expect("starting boringtun-cli");
        let socket = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
        wait_for(|| socket.exists(), "the boringtun control socket");
        let key_file = lab.dir().join(format!("{ifname}.key"));
        fs::write(&key_file, &keys.private).expect("writing the key file");
        let mut args = vec!["set", &ifname, "private-key", key_file.to_str().expect("a UTF-8 lab path")];
        args.extend(["listen-port", "51820", "peer", peer.public, "allowed-ips", peer.allowed_ips]);
        if let Some(endpoint) = &peer.endpoint {
            args.extend(["endpoint", endpoint]);
        }
        ns.exec("wg", &args).expect("configuring boringtun with wg set");
        ns.ip(&["addr", "add", address, "dev", &ifname]).expect("adding the tunnel address");
        ns.ip(&["link", "set", &ifname, "up"]).expect("bringing the tunnel up");
        Boringtun { process }
    }
}

fn measure(which: &Impl, into: &mut Measured) -> Result<()> {
    let lab = Lab::new()?;
    let a = lab.netns("bench-a")?;
    let b = lab.netns("bench-b")?;
    lab.wire(&a, &["192.0.2.1/24"], &b, &["192.0.2.2/24"])?;
    let (ka, kb) = (Keys::generate(&a), Keys::generate(&b));
    let a_if = start(
        which,
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
    let b_if = start(
        which,
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

    let pids = [a_if.pid(), b_if.pid()];
    let _server = iperf3_server(&b, "10.88.0.2");
    let cpu_before: f64 = pids.iter().map(|&pid| cpu_seconds(pid)).sum();
    let tcp = iperf3_json(&a, &["-c", "10.88.0.2", "-t", &TCP_SECONDS.to_string(), "-J"])?;
    let cpu = pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>() - cpu_before;
    let end = &tcp["end"]["sum_received"];
    let bps = end["bits_per_second"].as_f64().context("no TCP result")?;
    let bytes = end["bytes"].as_f64().context("no TCP byte count")?;
    into.tcp_bps.push(bps);
    into.cpu_s_per_gbit.push(cpu / (bytes * 8.0 / 1e9));

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
    // Let the peers' last packets drain before the next implementation.
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// User and system CPU seconds of a process (all its threads) so far.
fn cpu_seconds(pid: u32) -> f64 {
    crate::cpu::task_ticks(pid).map_or(f64::NAN, |ticks| ticks as f64 / crate::cpu::clock_tick())
}

fn iperf3_json(ns: &Netns, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = vec!["120", "iperf3"];
    all.extend_from_slice(args);
    let out = ns.exec("timeout", &all)?;
    serde_json::from_str(&out).context("parsing iperf3 JSON")
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}
