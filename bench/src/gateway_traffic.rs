//! The gateway carrying real traffic: iperf3 TCP between the technician and a
//! device in the machine network, THROUGH the gateway, with Ferry's gateway
//! (`ferry-gateway run`: Ferry's WireGuard engine on a TUN, the eBPF
//! whitelist and NAT, TC on the TUN and XDP on the LAN) against a baseline
//! gateway of stock parts doing the same job (wireguard-go plus nftables
//! whitelist, DNAT and SNAT: `ferry_tests::stand_in_gateway`), measured in
//! the same run, in the same lab.
//!
//! The lab is `ferry_tests::gateway_lab::GatewayLab` (see its module doc for
//! the picture): the real cloud and a real relay on the simulated internet,
//! the gateway behind the customer's NAT router, the machine network behind
//! the gateway, and the technician's tunnel from the cloud's wg-quick file,
//! brought up with Debian's wireguard-go. The cloud knows two gateways with
//! the same targets (`plc-web` and `iperf`: target-a, tcp 5201):
//!
//! 1. Ferry: `ferry-gateway enroll` + `run` in the gateway namespace, switch
//!    on, a session with `plc-web` and `iperf` started by the technician, the
//!    technician's tunnel up (through the relay's UDP allocation), traffic
//!    checked with an HTTP GET of plc-web, then the rounds below; then the
//!    daemon is stopped (SIGTERM) and its tunnel torn down.
//! 2. Baseline: the stand-in gateway enrols the second gateway from the same
//!    gateway namespace (real enrolment and control channel), a second
//!    session, a fresh technician tunnel (again wireguard-go), and the
//!    stand-in's data path: wireguard-go on the gateway's port 51820 toward
//!    the relay, and nftables: DNAT proxy -> target only for the peer's
//!    tunnel address and the whitelisted protocol and ports, masquerade to
//!    the gateway's LAN address (as the daemon's SNAT), forward policy drop
//!    (only those flows and their replies), nothing from the tunnel into the
//!    gateway itself.
//!
//! Each side runs [`ROUNDS`] rounds of two iperf3 TCP transfers of
//! [`SECONDS`] s (one stream, default settings): `up` (technician ->
//! target-a, the iperf3 client in the technician's namespace to the proxy
//! address) and `down` (`-R`: target-a -> technician, the LAN-side path
//! of the gateway). A row takes each side's best round (the machine is
//! shared: the least disturbed round). Every round is printed on stderr.
//!
//! Rows: `tcp_{up,down}_gbit`: Gbit/s received by iperf3. CPU, over each
//! transfer, from /proc (clock ticks):
//! - `gw_cpu_s_per_gbit_*`: utime+stime of the gateway's process
//!   (ferry-gateway, all threads; or the stand-in's wireguard-go) per Gbit
//!   received. Kernel work done in softirq context (Ferry's TC/XDP programs;
//!   the baseline's routing, conntrack and nftables NAT; veth and TUN
//!   delivery) is not in any process's time: see the next figure.
//! - `sys_cpu_s_per_gbit_*`: all CPUs' busy time (/proc/stat
//!   user+nice+system+irq+softirq) per Gbit. It includes both iperf3 ends,
//!   the relay and the technician's wireguard-go (the same programs on both
//!   sides), and anything else the machine does meanwhile: only meaningful
//!   on a quiet machine.
//! - `tech_wg_go_cores_*`: the technician's wireguard-go CPU (cores used
//!   during the transfer), for both sides. Stderr shows the same for the
//!   gateway process and the relay.
//!
//! Caveats, read before quoting a ratio:
//! - Both sides share the relay (`--xdp native`, [`RELAY_XDP`]: its
//!   forwarding runs in XDP, in softirq, so the relay process shows about
//!   0 cores on stderr and its cost is only in the `system` figure; with
//!   `--xdp off` it took 0.3-0.4 cores) and the technician's wireguard-go on a
//!   2-core machine with everything unpinned. wireguard-go on the technician
//!   side is often the bottleneck (about 0.5 Gbit/s between two wireguard-go
//!   peers here): when `tech_wg_go_cores` is near 1 on both sides, the
//!   throughput ratio is bounded by the technician, not the gateway, and the
//!   gateway CPU per Gbit is the better comparison.
//! - Watch the `system` cores on stderr: at 2.0 the whole machine is busy
//!   (first runs, 2026-11-23: 1.95-2.0 on both sides, no process at one
//!   full core), so neither gateway is the sole limit: the two iperf3 ends,
//!   both WireGuard implementations, the relay and any other work on the
//!   machine share two cores, and the throughput ratio says more about CPU
//!   cost per Gbit than about a gateway's ceiling.
//! - The sides run one after the other (Ferry first), not interleaved:
//!   other load on the machine may differ between the two phases.
//! - The profile of `ferry-gateway` is whatever `ferry_lab::workspace_bin`
//!   finds beside the bench (release under `cargo xtask bench`). A dev
//!   build of the daemon is not worth measuring: its unoptimised engine
//!   saturates a core at about 0.035 Gbit/s.
//!
//! A bench never asserts speed: it fails only if traffic does not flow
//! through a gateway at all (or the lab cannot be set up).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use ferry_lab::Netns;
use ferry_tests::{
    gateway_lab::{
        GatewayLab, GatewayRecord, HTTP_PORT, Options, TARGET_A_IP, TechTunnel, User, eventually, http_get,
    },
    stand_in_gateway::StandInGateway,
    wg::iperf3_server,
};
use serde_json::{Value, json};

use crate::{
    cpu::{busy_ticks, clock_tick, task_ticks},
    report::{Better, Row},
};

/// Rounds per side; each row takes the best.
pub const ROUNDS: usize = 3;
/// Seconds of each iperf3 transfer.
pub const SECONDS: u32 = 8;
/// The iperf3 server's port on target-a, whitelisted as target `iperf`.
pub const IPERF_PORT: u16 = 5201;
/// The relay's `--xdp` mode (the same relay carries both sides): native
/// keeps its forwarding cost low and out of both gateways' way.
pub const RELAY_XDP: &str = "native";

const BENCH: &str = "gateway";
const BASELINE: &str = "wireguard-go + nftables whitelist/DNAT/SNAT gateway";
/// A first handshake through the relay.
const SETTLE: Duration = Duration::from_secs(30);

/// What one transfer measured.
#[derive(Clone, Debug, Default)]
struct Transfer {
    gbps: f64,
    gbit: f64,
    wall_s: f64,
    gateway_cpu_s: f64,
    tech_cpu_s: f64,
    relay_cpu_s: f64,
    system_cpu_s: f64,
}

impl Transfer {
    fn per_gbit(&self, cpu_s: f64) -> f64 {
        cpu_s / self.gbit.max(1e-9)
    }
}

#[derive(Default)]
struct Side {
    upload: Vec<Transfer>,
    download: Vec<Transfer>,
}

/// Runs the lab and both gateways; returns the rows.
pub fn rows() -> Result<Vec<Row>> {
    crate::lab_run::catching_panics("gateway traffic bench", run)
}

fn run() -> Result<Vec<Row>> {
    let mut lab = GatewayLab::new(Options { relay_xdp: RELAY_XDP, ..Options::default() });
    lab.start_cloud_and_login();
    lab.start_relay();
    let ferry_gw = create_gateway(&lab, "ferry bench")?;
    let baseline_gw = create_gateway(&lab, "baseline bench")?;
    let mut tech = lab.create_technician("bench-tech");

    // Ferry's gateway.
    lab.enroll(&ferry_gw.enrolment_token);
    lab.start_gateway();
    lab.remote("on");
    lab.wait_gateway_at_cloud(ferry_gw.id, true);
    let tunnel = session_tunnel(&lab, &mut tech, ferry_gw.id)?;
    wait_for_traffic(&lab, &tunnel, "Ferry's gateway")?;
    let gateway_pid = lab.gateway.as_ref().context("the gateway is not running")?.pid();
    let ferry = measure(&lab, &tunnel, gateway_pid, "ferry")?;
    lab.stop_gateway();
    drop(tunnel);
    leftover_xdp(&lab)?;

    // The baseline, in the same gateway namespace.
    let mut stand_in = StandInGateway::enrol_and_connect(&lab, &baseline_gw.enrolment_token, true);
    lab.wait_gateway_at_cloud(baseline_gw.id, true);
    let tunnel = session_tunnel(&lab, &mut tech, baseline_gw.id)?;
    let state = stand_in.wait_for_peer(&tunnel.keys.public, Duration::from_secs(15));
    let data_path = stand_in.data_path(&lab, &state);
    wait_for_traffic(&lab, &tunnel, "the baseline gateway")?;
    let baseline = measure(&lab, &tunnel, data_path.pid(), "baseline")?;
    drop(tunnel);
    drop(data_path);
    drop(stand_in);

    Ok(table(&ferry, &baseline))
}

/// A gateway with the lab's `plc-web` (to check that traffic flows) and
/// `iperf` (target-a, tcp [`IPERF_PORT`]) targets.
fn create_gateway(lab: &GatewayLab, name: &str) -> Result<GatewayRecord> {
    let body = json!({
        "name": name,
        "site": "bench plant",
        "targets": [
            {"name": "plc-web", "address": TARGET_A_IP, "protocol": "tcp",
             "ports": [{"first": HTTP_PORT, "last": HTTP_PORT}]},
            {"name": "iperf", "address": TARGET_A_IP, "protocol": "tcp",
             "ports": [{"first": IPERF_PORT, "last": IPERF_PORT}]},
        ],
    });
    let (status, created) = lab.admin("POST", "/api/v1/gateways", body);
    ensure!(status == 201, "creating gateway {name}: {status} {created}");
    Ok(GatewayRecord {
        id: created["gateway"]["id"].as_u64().context("no gateway id")?,
        enrolment_token: created["enrolment"]["token"].as_str().context("no enrolment token")?.to_string(),
    })
}

/// Prepares and starts a session on `gateway_id` released to `tech`, and
/// brings up the technician's tunnel from the cloud's wg-quick file.
fn session_tunnel(lab: &GatewayLab, tech: &mut User, gateway_id: u64) -> Result<TechTunnel> {
    let id = lab.create_session(gateway_id, &["plc-web", "iperf"], &[tech.id], 3600, false);
    let (status, session) = lab.start_session(tech, id);
    ensure!(status == 200 && session["state"] == "active", "starting session {id}: {status} {session}");
    let tunnel = lab.technician_tunnel(tech, id);
    let endpoint = tunnel.wg_quick.lines().find_map(|l| l.strip_prefix("Endpoint = ")).unwrap_or_default();
    eprintln!("gateway traffic: session {id}, technician endpoint {endpoint} (the relay)");
    Ok(tunnel)
}

fn wait_for_traffic(lab: &GatewayLab, tunnel: &TechTunnel, what: &str) -> Result<()> {
    let web = tunnel.proxy("plc-web").to_string();
    let reached = eventually(SETTLE, || http_get(&lab.tech_ns, &web, HTTP_PORT, Duration::from_secs(5)));
    reached.map(drop).map_err(|e| {
        anyhow!(
            "no traffic through {what}: plc-web at {web}:{HTTP_PORT} unreachable from the technician \
             within {SETTLE:?}: {e}\n{}\n{}",
            tunnel.wg_quick,
            tunnel.go.show("dump")
        )
    })
}

/// A stopped daemon must not leave XDP programs on the gateway's
/// interfaces (they would sit in the baseline's path).
fn leftover_xdp(lab: &GatewayLab) -> Result<()> {
    for iface in [&lab.gw_lan_if, &lab.gw_uplink_if] {
        let link = lab.gw_ns.ip(&["link", "show", "dev", iface])?;
        if link.contains("xdp") {
            bail!("ferry-gateway left an XDP program on {iface} after SIGTERM:\n{link}");
        }
    }
    Ok(())
}

fn measure(lab: &GatewayLab, tunnel: &TechTunnel, gateway_pid: u32, side: &str) -> Result<Side> {
    let relay_pid = lab.relay.as_ref().context("the relay is not running")?.pid();
    let tech_pid = tunnel.go.pid();
    let target = tunnel.proxy("iperf").to_string();
    let mut result = Side::default();
    for round in 1..=ROUNDS {
        for reverse in [false, true] {
            let pids = Pids { gateway: gateway_pid, tech: tech_pid, relay: relay_pid };
            let t = transfer(&lab.target_a, &lab.tech_ns, &target, reverse, pids)
                .with_context(|| format!("no traffic through the {side} gateway (iperf3 to {target})"))?;
            let direction = if reverse { "download" } else { "upload" };
            eprintln!(
                "gateway traffic: {side:<8} round {round}/{ROUNDS} {direction:<8} {:6.3} Gbit/s  \
                 cores: gateway {:.2} tech wireguard-go {:.2} relay {:.2} system {:.2}  \
                 gateway {:.3} CPU s/Gbit",
                t.gbps,
                t.gateway_cpu_s / t.wall_s,
                t.tech_cpu_s / t.wall_s,
                t.relay_cpu_s / t.wall_s,
                t.system_cpu_s / t.wall_s,
                t.per_gbit(t.gateway_cpu_s),
            );
            if reverse { result.download.push(t) } else { result.upload.push(t) }
        }
    }
    Ok(result)
}

#[derive(Clone, Copy)]
struct Pids {
    gateway: u32,
    tech: u32,
    relay: u32,
}

struct Snapshot {
    at: Instant,
    gateway: u64,
    tech: u64,
    relay: u64,
    system: u64,
}

fn snapshot(pids: Pids) -> Result<Snapshot> {
    Ok(Snapshot {
        at: Instant::now(),
        gateway: task_ticks(pids.gateway)?,
        tech: task_ticks(pids.tech)?,
        relay: task_ticks(pids.relay)?,
        system: busy_ticks()?,
    })
}

/// One iperf3 TCP transfer through the gateway: the server on target-a, the
/// client in the technician's namespace toward the proxy address.
fn transfer(
    server_ns: &Netns,
    client_ns: &Netns,
    proxy: &str,
    reverse: bool,
    pids: Pids,
) -> Result<Transfer> {
    let _server = iperf3_server(server_ns, TARGET_A_IP);
    let seconds = SECONDS.to_string();
    let port = IPERF_PORT.to_string();
    let mut args = vec!["60", "iperf3", "-c", proxy, "-p", &port, "-t", &seconds, "-J"];
    if reverse {
        args.push("-R");
    }
    let before = snapshot(pids)?;
    let out = client_ns.output("timeout", &args)?;
    let after = snapshot(pids)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let received = &json["end"]["sum_received"];
    let (Some(bps), Some(bytes)) = (received["bits_per_second"].as_f64(), received["bytes"].as_f64()) else {
        bail!(
            "iperf3 failed ({}): {} {}",
            out.status,
            json["error"].as_str().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    ensure!(bytes > 0.0, "iperf3 moved no data");
    let tick = clock_tick();
    let cpu = |a: u64, b: u64| b.saturating_sub(a) as f64 / tick;
    Ok(Transfer {
        gbps: bps / 1e9,
        gbit: bytes * 8.0 / 1e9,
        wall_s: after.at.duration_since(before.at).as_secs_f64(),
        gateway_cpu_s: cpu(before.gateway, after.gateway),
        tech_cpu_s: cpu(before.tech, after.tech),
        relay_cpu_s: cpu(before.relay, after.relay),
        system_cpu_s: cpu(before.system, after.system),
    })
}

fn best(transfers: &[Transfer]) -> Transfer {
    transfers.iter().max_by(|a, b| a.gbps.total_cmp(&b.gbps)).cloned().unwrap_or_default()
}

fn table(ferry: &Side, baseline: &Side) -> Vec<Row> {
    let mut rows = Vec::new();
    for (direction, f, b) in [
        ("up", best(&ferry.upload), best(&baseline.upload)),
        ("down", best(&ferry.download), best(&baseline.download)),
    ] {
        rows.push(Row::new(
            BENCH,
            &format!("tcp_{direction}_gbit"),
            "Gbit/s",
            f.gbps,
            b.gbps,
            BASELINE,
            Better::Higher,
        ));
        rows.push(Row::new(
            BENCH,
            &format!("gw_cpu_s_per_gbit_{direction}"),
            "CPU s/Gbit",
            f.per_gbit(f.gateway_cpu_s),
            b.per_gbit(b.gateway_cpu_s),
            "wireguard-go process (nftables/softirq work not included)",
            Better::Lower,
        ));
        rows.push(Row::new(
            BENCH,
            &format!("sys_cpu_s_per_gbit_{direction}"),
            "CPU s/Gbit",
            f.per_gbit(f.system_cpu_s),
            b.per_gbit(b.system_cpu_s),
            "whole machine during the baseline's transfer",
            Better::Lower,
        ));
        rows.push(Row::new(
            BENCH,
            &format!("tech_wg_go_cores_{direction}"),
            "cores",
            f.tech_cpu_s / f.wall_s.max(1e-9),
            b.tech_cpu_s / b.wall_s.max(1e-9),
            "technician's wireguard-go during the baseline's (near 1: it is the limit)",
            Better::Lower,
        ));
    }
    rows
}
