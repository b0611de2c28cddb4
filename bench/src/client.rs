//! The technician's side of a session on a cone/cone pair: how soon traffic
//! flows after connecting, how soon it moves to the direct path, and what
//! the direct path gives against the relay; then the same for a stock
//! wireguard-go technician with the cloud's wg-quick export.
//!
//! One lab (`ferry_tests::path_lab`: `ferry_tests::gateway_lab::GatewayLab`
//! with the technician behind a cone NAT of its own and the gateway behind
//! the customer's cone NAT), the real cloud, a relay (`--xdp native`, as the
//! gateway benchmark runs it) and the gateway daemon, all release builds.
//! Target-a has an iperf3 server (target `iperf`, tcp 5201) and answers
//! ICMP echo (target `ping`).
//!
//! 1. Ferry: from the start of `ferry connect --wait 0` (the technician
//!    logged in before; connect asks the cloud for the session and the STUN
//!    servers, the service gathers candidates, the configuration request
//!    carries them, the service brings the tunnel up), `first_ping_ms` is
//!    when the first echo request through the tunnel was answered (`ping
//!    -i 0.01 -c 1` as the technician's user, started as soon as connect
//!    returned; the relay carries traffic at once, the direct path once
//!    verified, so the first answer comes over whichever was first; stderr
//!    says which), and `direct_path_ms` when the tunnel's path in the
//!    service's status became direct (polled every 5 ms).
//! 2. [`ROUNDS`] rounds, each an iperf3 TCP upload of [`SECONDS`] s
//!    (technician -> target-a) over the direct path, then the direct path
//!    cut on the internet router (nftables drops UDP between the two public
//!    addresses), the fallback to the relay awaited at both ends, the same
//!    upload over the relay, and the cut healed (the path goes direct again).
//!    Alternating spreads other load on the shared machine over both paths;
//!    each path's median round counts (a round that happened to have the
//!    machine to itself moves a median less than a best). The mean of
//!    [`RTT_PINGS`] pings over each path in the first round. Each round
//!    prints on stderr the cores that the technician's engine, the gateway,
//!    the relay and the whole machine used.
//! 3. wireguard-go: a second session, its wg-quick file (fetched as the
//!    technician would, then `wg setconf` and the interface up), the time
//!    from the request to the first answered ping, and [`ROUNDS`] of the
//!    same upload and the pings through the relay (its only path).
//!
//! Rows (ferry / baseline):
//! - `first_ping_ms`: Ferry's time / the goal, 1000 ms;
//! - `direct_path_ms`: Ferry's time / the goal, 3000 ms;
//! - `direct_vs_relay_tcp` (Mbit/s) and `direct_vs_relay_rtt` (ms): Ferry
//!   over the direct path / over the relay (the goal: direct at least the
//!   relay's throughput);
//! - `wireguard_go_first_ping_ms`, `wireguard_go_tcp`, `wireguard_go_rtt`:
//!   Ferry (its first ping; the direct path's throughput and RTT) /
//!   wireguard-go through the relay.
//!
//! The technician is the `ferry` client, release build: its service in the
//! technician's namespace, the CLI as a local user
//! (`ferry_tests::path_lab::ClientTechnician`). The CPU figures' technician
//! is the service, which runs the tunnel's engine.
//!
//! A benchmark never asserts: it fails only if the lab cannot be set up or
//! traffic does not flow.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use ferry_lab::Nat;
use ferry_tests::{
    gateway_lab::{GatewayLab, Options, SITE_WAN_IP, Site, TECH_IP, Technician, poll},
    path_lab::{self, ClientTechnician, Path, PathSite, TechnicianEnd, Transfer},
};

use crate::{
    cpu::{busy_ticks, clock_tick, task_ticks},
    report::{Better, Row},
};

/// iperf3 rounds per path; the median counts.
pub const ROUNDS: usize = 5;
/// Seconds of each iperf3 transfer.
pub const SECONDS: u32 = 3;
/// Pings for the round-trip time, 50 ms apart.
pub const RTT_PINGS: u32 = 20;
/// The goals.
pub const FIRST_PING_GOAL_MS: f64 = 1000.0;
pub const DIRECT_GOAL_MS: f64 = 3000.0;

const BENCH: &str = "client";
/// A first handshake, a direct path, a fallback: bounded waits.
const SETTLE: Duration = Duration::from_secs(30);

/// What the benchmark measured for one technician.
#[derive(Debug, Default)]
struct Figures {
    first_ping: Option<Duration>,
    direct: Option<Duration>,
    /// Over the direct path (Ferry) or the only path (wireguard-go).
    path: Transfer,
    rtt_ms: Option<f64>,
    /// Ferry over the relay.
    relay: Transfer,
    relay_rtt_ms: Option<f64>,
}

pub fn run() -> Result<Vec<Row>> {
    crate::lab_run::catching_panics("client bench", measure_all)
}

fn measure_all() -> Result<Vec<Row>> {
    let options = Options {
        site: Site::BehindNat(Nat::Cone),
        technician: Technician::BehindNat(Nat::Cone),
        relay_xdp: "native",
        ..Options::default()
    };
    let mut site = PathSite::new(options);

    let session = site.start_session();
    let ferry = measure_ferry(&mut site, session)?;
    let session = site.start_session();
    let stock = measure_wireguard_go(&mut site, session)?;
    Ok(table(&ferry, &stock))
}

/// Ferry's technician: `ferry connect`, the first ping and the direct path
/// timed, then traffic over the direct path and over the relay.
fn measure_ferry(site: &mut PathSite, session: u64) -> Result<Figures> {
    let mut figures = Figures::default();
    let mut tech = ClientTechnician::login(&site.lab, &site.user);
    let start = Instant::now();
    tech.connect(session, 0).map_err(|e| anyhow!("ferry connect: {e}"))?;
    let connected = start.elapsed();
    let (first_ping, direct) = time_first_ping_and_direct(&tech, start)?;
    (figures.first_ping, figures.direct) = (Some(first_ping), direct);
    eprintln!(
        "client: ferry connect returned after {:.0} ms, first ping answered after {:.0} ms, direct after {}",
        ms(connected),
        ms(first_ping),
        direct.map_or("(never)".to_string(), |d| format!("{:.0} ms", ms(d)))
    );
    if direct.is_none() {
        bail!("the technician never went direct on a cone/cone pair: {}", tech.path());
    }
    // Direct and relay rounds alternate (the direct path cut on the
    // internet router and healed between them), so that other load on the
    // machine falls on both alike.
    let (mut direct_rounds, mut relay_rounds) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        wait_for_path(site, &tech, session, Path::Direct)?;
        if round == 1 {
            figures.rtt_ms = rtt(&tech, "ferry direct");
        }
        direct_rounds.push(transfer(site, &tech, "ferry direct", round)?);
        cut_direct(&site.lab)?;
        wait_for_path(site, &tech, session, Path::UdpRelay)?;
        if round == 1 {
            figures.relay_rtt_ms = rtt(&tech, "ferry relay");
        }
        relay_rounds.push(transfer(site, &tech, "ferry relay", round)?);
        heal_direct(&site.lab)?;
    }
    (figures.path, figures.relay) = (median(&direct_rounds), median(&relay_rounds));
    Ok(figures)
}

/// Waits until both ends are on `path`.
fn wait_for_path(site: &PathSite, tech: &dyn TechnicianEnd, session: u64, path: Path) -> Result<()> {
    if poll(SETTLE, || tech.path().path == path && site.gateway_path(session).path == path) {
        return Ok(());
    }
    bail!("not {} within {SETTLE:?}: {} / {}", path.label(), tech.path(), site.gateway_path(session))
}

/// A stock wireguard-go from the wg-quick export.
fn measure_wireguard_go(site: &mut PathSite, session: u64) -> Result<Figures> {
    let mut figures = Figures::default();
    let start = Instant::now();
    let tech = site.wg_quick_technician(session);
    let (first_ping, _) = time_first_ping_and_direct(&tech, start)?;
    figures.first_ping = Some(first_ping);
    eprintln!("client: wireguard-go's first ping answered after {:.0} ms", ms(first_ping));
    figures.rtt_ms = rtt(&tech, "wireguard-go relay");
    let rounds: Vec<Transfer> = (1..=ROUNDS)
        .map(|round| transfer(site, &tech, "wireguard-go relay", round))
        .collect::<Result<_>>()?;
    figures.path = median(&rounds);
    Ok(figures)
}

/// Pings every 10 ms until one is answered while polling the path every
/// 5 ms; both times from `start`. Gives up on the direct path after
/// [`SETTLE`].
fn time_first_ping_and_direct(
    tech: &dyn TechnicianEnd,
    start: Instant,
) -> Result<(Duration, Option<Duration>)> {
    let proxy = tech.proxy("ping");
    let deadline = SETTLE.as_secs().to_string();
    let mut ping = tech
        .command("ping")
        .args(["-n", "-q", "-c", "1", "-i", "0.01", "-w", &deadline, &proxy])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let (mut first_ping, mut direct) = (None, None);
    let give_up = start + SETTLE;
    while Instant::now() < give_up && (first_ping.is_none() || direct.is_none()) {
        if first_ping.is_none()
            && let Some(status) = ping.try_wait()?
        {
            if !status.success() {
                bail!("no ping through the tunnel answered within {SETTLE:?}: {}", tech.path());
            }
            first_ping = Some(start.elapsed());
            eprintln!("client: the first ping was answered on {}", tech.path());
        }
        if direct.is_none() && tech.path().path == Path::Direct {
            direct = Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let Some(first_ping) = first_ping else {
        let _ = ping.kill();
        bail!("no ping through the tunnel answered within {SETTLE:?}: {}", tech.path());
    };
    Ok((first_ping, direct))
}

/// The mean RTT of [`RTT_PINGS`] pings, 50 ms apart.
fn rtt(tech: &dyn TechnicianEnd, what: &str) -> Option<f64> {
    let ping = path_lab::ping(tech, &tech.proxy("ping"), RTT_PINGS, Duration::from_millis(50));
    eprintln!("client: {what:<20} ping {}/{} answered, mean {:?} ms", ping.received, ping.sent, ping.avg_ms);
    ping.avg_ms
}

/// One iperf3 upload, with the CPU the technician's engine, the gateway,
/// the relay and the whole machine used meanwhile (on stderr).
fn transfer(site: &PathSite, tech: &dyn TechnicianEnd, what: &str, round: usize) -> Result<Transfer> {
    let gateway = site.lab.gateway.as_ref().map(|g| g.pid()).ok_or_else(|| anyhow!("no gateway"))?;
    let relay = site.lab.relay.as_ref().map(|r| r.pid()).ok_or_else(|| anyhow!("no relay"))?;
    let pids = [tech.engine_pid(), gateway, relay];
    let ticks = || -> Result<Vec<u64>> {
        let mut all: Vec<u64> = pids.iter().map(|pid| task_ticks(*pid)).collect::<Result<_>>()?;
        all.push(busy_ticks()?);
        Ok(all)
    };
    let (before, started) = (ticks()?, Instant::now());
    let transfer = path_lab::iperf3(site, tech, SECONDS, false).map_err(|e| anyhow!("{what}: {e}"))?;
    let (after, wall) = (ticks()?, started.elapsed().as_secs_f64());
    let cores: Vec<f64> =
        before.iter().zip(&after).map(|(b, a)| a.saturating_sub(*b) as f64 / clock_tick() / wall).collect();
    eprintln!(
        "client: {what:<20} round {round}/{ROUNDS} {:8.1} Mbit/s (TCP RTT under load {})  path {}  \
         cores: technician {:.2} gateway {:.2} relay {:.2} system {:.2}",
        transfer.mbit_s,
        transfer.mean_rtt_ms.map_or("-".into(), |v| format!("{v:.2} ms")),
        tech.path(),
        cores[0],
        cores[1],
        cores[2],
        cores[3],
    );
    Ok(transfer)
}

/// The round with the median throughput.
fn median(transfers: &[Transfer]) -> Transfer {
    let mut sorted = transfers.to_vec();
    sorted.sort_by(|a, b| a.mbit_s.total_cmp(&b.mbit_s));
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// nftables on the internet router: no UDP between the two public addresses.
fn cut_direct(lab: &GatewayLab) -> Result<()> {
    let rules = format!(
        "add table ip cut; add chain ip cut drop_direct {{ type filter hook forward priority -10; }}; \
         add rule ip cut drop_direct ip saddr {TECH_IP} ip daddr {SITE_WAN_IP} meta l4proto udp drop; \
         add rule ip cut drop_direct ip saddr {SITE_WAN_IP} ip daddr {TECH_IP} meta l4proto udp drop"
    );
    lab.inet.exec("nft", &[&rules])?;
    Ok(())
}

fn heal_direct(lab: &GatewayLab) -> Result<()> {
    lab.inet.exec("nft", &["delete", "table", "ip", "cut"])?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn table(ferry: &Figures, stock: &Figures) -> Vec<Row> {
    let ms_of = |d: Option<Duration>| d.map_or(f64::NAN, ms);
    let or_nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
    vec![
        Row::new(
            BENCH,
            "first_ping_ms",
            "ms",
            ms_of(ferry.first_ping),
            FIRST_PING_GOAL_MS,
            "goal: within 1 s of connect",
            Better::Lower,
        ),
        Row::new(
            BENCH,
            "direct_path_ms",
            "ms",
            ms_of(ferry.direct),
            DIRECT_GOAL_MS,
            "goal: direct within 3 s of connect",
            Better::Lower,
        ),
        Row::new(
            BENCH,
            "direct_vs_relay_tcp",
            "Mbit/s",
            ferry.path.mbit_s,
            ferry.relay.mbit_s,
            "ferry over the UDP relay (goal: direct at least this)",
            Better::Higher,
        ),
        Row::new(
            BENCH,
            "direct_vs_relay_rtt",
            "ms",
            or_nan(ferry.rtt_ms),
            or_nan(ferry.relay_rtt_ms),
            "ferry over the UDP relay",
            Better::Lower,
        ),
        Row::new(
            BENCH,
            "wireguard_go_first_ping_ms",
            "ms",
            ms_of(ferry.first_ping),
            ms_of(stock.first_ping),
            "wireguard-go",
            Better::Lower,
        ),
        Row::new(
            BENCH,
            "wireguard_go_tcp",
            "Mbit/s",
            ferry.path.mbit_s,
            stock.path.mbit_s,
            "wireguard-go",
            Better::Higher,
        ),
        Row::new(
            BENCH,
            "wireguard_go_rtt",
            "ms",
            or_nan(ferry.rtt_ms),
            or_nan(stock.rtt_ms),
            "wireguard-go",
            Better::Lower,
        ),
    ]
}
