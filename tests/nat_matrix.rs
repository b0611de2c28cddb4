//! Direct paths through every kind of NAT: the technician and the gateway
//! each on a public address, behind a cone NAT (masquerade) or behind a
//! symmetric NAT (random ports), plus both behind the same NAT. For each
//! case the path that must win (direct where a cone or a public address
//! makes it possible, the UDP relay where it does not), ping and a short
//! iperf3 transfer to a whitelisted target through its proxy address, and
//! the path again afterwards. Each case is its own gateway lab (see
//! `gateway_lab.rs`: the real cloud, a real relay, the real gateway daemon)
//! with its own namespaces, so the cases run in parallel.
//!
//! What must win, from the NAT behaviours (see `ferry_lab::Nat` and the
//! ferry-paths simulation):
//! - a public end, or a cone NAT on both ends: direct (the cone NAT keeps
//!   one mapping per socket, so the STUN-learned address is the one the
//!   peer must probe, and simultaneous probing opens both filters);
//! - a symmetric NAT facing a public end: direct over a peer-reflexive
//!   address (the symmetric side's probe reaches the public end from a
//!   mapping nobody could predict; the public end answers it there);
//! - a symmetric NAT facing a cone NAT or another symmetric NAT: the UDP
//!   relay (the symmetric side's mapping toward the peer is not the one STUN
//!   saw, and the peer's NAT filters the probes from it);
//! - both behind the same NAT: direct over the host candidates.
//!
//! The technician is the `ferry` client (`ferry_tests::client_lab`: its
//! service in the technician's namespace, `ferry login` and `ferry connect`
//! as a local user, traffic as that user); one more row is a stock
//! wireguard-go with the cloud's wg-quick export, which has no candidates
//! and must work through the relay. The probe-security test below uses
//! Ferry's engine and traversal in the test instead
//! (`ferry_tests::technician`, the same code the client's service runs),
//! because it reads the technician's probe drop counters, which the client
//! does not show.
//!
//! The table of what each case took goes to the test's stderr, also when
//! the test passes. Waits are bounded waits for behaviour, never speed
//! measurements.
//!
//! Run as root after `cargo build -p ferry-client -p ferry-gateway -p
//! ferry-cloud -p ferry-relay --bins`:
//! `cargo test -p ferry-tests --test nat_matrix`.

use std::{
    collections::VecDeque,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ferry_lab::{Nat, Netns};
use ferry_tests::{
    gateway_lab::*,
    path_lab::{self, ClientTechnician, Path, PathSite, PathView, Ping, TechnicianEnd},
    pcap::Capture,
    technician::EngineTechnician,
};

/// A first handshake through the relay, the gateway's candidates at the
/// cloud, a direct path verified.
const SETTLE: Duration = Duration::from_secs(30);
/// How long a case that must stay on the relay is watched from connect:
/// the fast probing (3 s) and two slow rounds after it.
const HOLD: Duration = Duration::from_secs(8);
/// Labs set up and run at the same time: setting one up is mostly waiting
/// for processes, but the eBPF verifier and the cloud's password hashing
/// want CPU, and the machine may have two cores.
const PARALLEL: usize = 6;
/// Seconds of each iperf3 transfer.
const IPERF_SECONDS: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The `ferry` client.
    Ferry,
    /// wireguard-go from the cloud's wg-quick file.
    WgQuick,
}

/// One end's network, as the matrix names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    Public,
    Cone,
    Symmetric,
    /// The technician on the site's LAN, behind the gateway's NAT.
    SameNat,
}

impl Net {
    fn label(self) -> &'static str {
        match self {
            Net::Public => "public",
            Net::Cone => "cone",
            Net::Symmetric => "symmetric",
            Net::SameNat => "same NAT",
        }
    }

    fn technician(self) -> Technician {
        match self {
            Net::Public => Technician::Public,
            Net::Cone => Technician::BehindNat(Nat::Cone),
            Net::Symmetric => Technician::BehindNat(Nat::Symmetric),
            Net::SameNat => Technician::OnSiteLan,
        }
    }

    fn site(self) -> Site {
        match self {
            Net::Public => Site::Public,
            Net::Cone => Site::BehindNat(Nat::Cone),
            Net::Symmetric => Site::BehindNat(Nat::Symmetric),
            Net::SameNat => panic!("the site's network is the one the technician shares"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    technician: Net,
    site: Net,
    kind: Kind,
    /// The path that must win, at both ends.
    expect: Path,
}

impl Case {
    fn name(&self) -> String {
        let mut name = match self.technician {
            Net::SameNat => "same NAT (site LAN)".to_string(),
            technician => format!("{} / {}", technician.label(), self.site.label()),
        };
        if self.kind == Kind::WgQuick {
            name += ", wireguard-go";
        }
        name
    }

    fn options(&self) -> Options {
        Options { technician: self.technician.technician(), site: self.site.site(), ..Options::default() }
    }
}

fn cases() -> Vec<Case> {
    use Net::*;
    let ferry = |technician, site, expect| Case { technician, site, kind: Kind::Ferry, expect };
    vec![
        ferry(Public, Public, Path::Direct),
        ferry(Public, Cone, Path::Direct),
        ferry(Cone, Public, Path::Direct),
        ferry(Cone, Cone, Path::Direct),
        ferry(Public, Symmetric, Path::Direct),
        ferry(Symmetric, Public, Path::Direct),
        ferry(Cone, Symmetric, Path::UdpRelay),
        ferry(Symmetric, Cone, Path::UdpRelay),
        ferry(Symmetric, Symmetric, Path::UdpRelay),
        ferry(SameNat, Cone, Path::Direct),
        Case { technician: Cone, site: Cone, kind: Kind::WgQuick, expect: Path::UdpRelay },
    ]
}

/// What a case saw, filled in as it goes (a failed case keeps what it got).
#[derive(Clone, Debug)]
struct Outcome {
    case: Case,
    technician: Option<PathView>,
    gateway: Option<PathView>,
    /// From connect to the expected path at both ends.
    settled_after: Option<Duration>,
    ping: Option<Ping>,
    iperf_mbit_s: Option<f64>,
    error: Option<String>,
}

impl Outcome {
    fn new(case: Case) -> Outcome {
        Outcome {
            case,
            technician: None,
            gateway: None,
            settled_after: None,
            ping: None,
            iperf_mbit_s: None,
            error: None,
        }
    }
}

#[test]
fn every_nat_pair_takes_the_path_it_must_and_carries_traffic() {
    let started = Instant::now();
    // FERRY_NAT_CASES=cone,symmetric runs only the cases whose names contain one of those.
    let only: Vec<String> = std::env::var("FERRY_NAT_CASES")
        .map(|v| v.split(',').map(str::trim).map(str::to_string).collect())
        .unwrap_or_default();
    let chosen: VecDeque<Case> = cases()
        .into_iter()
        .filter(|c| only.is_empty() || only.iter().any(|o| c.name().contains(o)))
        .collect();
    let queue = Arc::new(Mutex::new(chosen));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (queue, outcomes) = (queue.clone(), outcomes.clone());
            std::thread::spawn(move || {
                loop {
                    let Some(case) = queue.lock().unwrap().pop_front() else { return };
                    let mut outcome = Outcome::new(case);
                    let run = std::panic::catch_unwind(AssertUnwindSafe(|| run_case(&mut outcome)));
                    if let Err(panic) = run {
                        outcome.error = Some(panic_message(&panic));
                    }
                    outcomes.lock().unwrap().push(outcome);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let mut outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let order: Vec<String> = cases().iter().map(Case::name).collect();
    outcomes.sort_by_key(|o| order.iter().position(|n| *n == o.case.name()));
    let table = table(&outcomes, started.elapsed());
    // Straight to stderr: the test harness keeps print!'s output of a test
    // that passes, and the table is wanted either way.
    let _ = std::io::stderr().write_all(table.as_bytes());
    let failed: Vec<String> =
        outcomes.iter().filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.case.name()))).collect();
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), outcomes.len(), failed.join("\n"));
}

fn run_case(out: &mut Outcome) {
    let case = out.case;
    let mut site = PathSite::new(case.options());
    let session = site.start_session();
    let mut client = (case.kind == Kind::Ferry).then(|| ClientTechnician::login(&site.lab, &site.user));
    let connected = Instant::now();
    let tech: Box<dyn TechnicianEnd> = match client.take() {
        Some(mut tech) => {
            tech.connect(session, SETTLE.as_secs()).unwrap_or_else(|e| panic!("ferry connect: {e}"));
            Box::new(tech)
        }
        None => Box::new(site.wg_quick_technician(session)),
    };
    let ping_ip = tech.proxy("ping");
    // Traffic flows at all: through the relay, or already direct.
    assert!(
        path_lab::first_answer(&*tech, &ping_ip, SETTLE).is_some(),
        "no ping answered through the tunnel within {SETTLE:?}: technician {} / gateway {}",
        tech.path(),
        site.gateway_path(session)
    );

    if case.expect == Path::UdpRelay {
        // Never direct while both ends probe, fast and then slow.
        while connected.elapsed() < HOLD {
            let seen = tech.path();
            assert_ne!(seen.path, Path::Direct, "the technician went direct: {seen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Both ends on the path, each sending where it must. Right after a
    // switch, WireGuard's roaming may follow a last datagram the other end
    // sent through the relay for a moment; the traversal re-points it.
    let details = || format!("{}\n{}", tech.diagnostics(), site.diagnostics(session));
    let views = settle(&site, &*tech, session, case, SETTLE)
        .unwrap_or_else(|(views, why)| panic!("{why} within {SETTLE:?}: {}\n{}", show(views), details()));
    out.settled_after = Some(connected.elapsed());
    (out.technician, out.gateway) = (Some(views.0), Some(views.1));

    let ping = path_lab::ping(&*tech, &ping_ip, 5, Duration::from_millis(200));
    out.ping = Some(ping);
    assert!(ping.all_answered(), "ping {ping_ip}: {ping:?}");
    let transfer = path_lab::iperf3(&site, &*tech, IPERF_SECONDS, false).unwrap_or_else(|e| panic!("{e}"));
    out.iperf_mbit_s = Some(transfer.mbit_s);

    // The path held through the traffic.
    let after = settle(&site, &*tech, session, case, Duration::from_secs(10))
        .unwrap_or_else(|(views, why)| panic!("after the traffic, {why}: {}\n{}", show(views), details()));
    (out.technician, out.gateway) = (Some(after.0), Some(after.1));
}

fn show(views: (PathView, PathView)) -> String {
    format!("technician {} / gateway {}", views.0, views.1)
}

/// Polls both ends until they are on the case's path with the endpoints it
/// must have; the views, or the last ones and what was wrong.
fn settle(
    site: &PathSite,
    tech: &dyn TechnicianEnd,
    session: u64,
    case: Case,
    timeout: Duration,
) -> Result<(PathView, PathView), ((PathView, PathView), String)> {
    let mut last = (tech.path(), site.gateway_path(session));
    let mut why = String::new();
    let settled = poll(timeout, || {
        last = (tech.path(), site.gateway_path(session));
        match check_endpoints(case, last, &site.lab) {
            Ok(()) => true,
            Err(wrong) => {
                why = wrong;
                false
            }
        }
    });
    if settled { Ok(last) } else { Err((last, why)) }
}

/// Whether both ends are on the case's path, each toward the right address.
fn check_endpoints(case: Case, views: (PathView, PathView), lab: &GatewayLab) -> Result<(), String> {
    let ip = |view: &PathView| view.endpoint.map(|e| e.ip().to_string()).unwrap_or_default();
    let port = |view: &PathView| view.endpoint.map_or(0, |e| e.port());
    let (at_tech, at_gateway) = views;
    let expect = |what: bool, wrong: &str| if what { Ok(()) } else { Err(wrong.to_string()) };
    expect(
        at_tech.path == case.expect && at_gateway.path == case.expect,
        &format!("not {}", case.expect.label()),
    )?;
    if case.expect != Path::Direct {
        return expect(ip(&at_tech) == RELAY_IP && ip(&at_gateway) == RELAY_IP, "not through the relay");
    }
    if case.technician == Net::SameNat {
        // Over the site's LAN, host to host.
        let gateway_host = SocketAddr::new(lab_ip(GW_UPLINK_IP), GATEWAY_WG_PORT);
        return expect(
            at_tech.endpoint == Some(gateway_host) && ip(&at_gateway) == TECH_SITE_IP,
            "not over the host candidates",
        );
    }
    // The other end's public address; the gateway's own port unless a
    // symmetric NAT picked one.
    expect(ip(&at_tech) == SITE_WAN_IP, "the technician does not send to the site's public address")?;
    expect(
        case.site == Net::Symmetric || port(&at_tech) == GATEWAY_WG_PORT,
        "the technician does not send to the gateway's port",
    )?;
    expect(
        ip(&at_gateway) == lab.tech_public_ip(),
        "the gateway does not send to the technician's public address",
    )
}

fn lab_ip(ip: &str) -> IpAddr {
    ip.parse().unwrap()
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

fn table(outcomes: &[Outcome], took: Duration) -> String {
    let mut text = format!(
        "\nNAT matrix (technician / gateway), {} cases in {:.0} s\n{:<32} {:<10} {:<34} {:<34} {:>7} {:>6} {:>8} {:>9}\n",
        outcomes.len(),
        took.as_secs_f64(),
        "case",
        "must take",
        "technician's path",
        "gateway's path",
        "settled",
        "ping",
        "rtt ms",
        "iperf3 Mb"
    );
    for o in outcomes {
        let view = |v: &Option<PathView>| v.map_or("-".to_string(), |v| v.to_string());
        let ping = o.ping.map_or("-".to_string(), |p| format!("{}/{}", p.received, p.sent));
        let rtt = o.ping.and_then(|p| p.avg_ms).map_or("-".to_string(), |ms| format!("{ms:.2}"));
        text += &format!(
            "{:<32} {:<10} {:<34} {:<34} {:>7} {:>6} {:>8} {:>9}{}\n",
            o.case.name(),
            o.case.expect.label(),
            view(&o.technician),
            view(&o.gateway),
            o.settled_after.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64())),
            ping,
            rtt,
            o.iperf_mbit_s.map_or("-".to_string(), |m| format!("{m:.1}")),
            if o.error.is_some() { "  FAILED" } else { "" },
        );
    }
    text += "(settled: from connect until both ends reported the path; informational, not asserted)\n";
    text
}

// ----------------------------------------------------------- probe security

/// A host on the internet that neither end knows: 203.0.113.250.
struct Stranger {
    ns: Netns,
}

impl Stranger {
    fn join(lab: &GatewayLab) -> Stranger {
        let ns = lab.lab.netns("stranger").unwrap();
        lab.lab.wire(&lab.inet, &["203.0.113.249/29"], &ns, &["203.0.113.250/29"]).unwrap();
        ns.ip(&["route", "add", "default", "via", "203.0.113.249"]).unwrap();
        // The internet does not check source addresses (loose or no
        // reverse-path filtering, as most of it): a spoofed datagram gets
        // through to the NAT routers, which pass it as part of the peers'
        // own flows.
        for setting in ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
            lab.inet.sysctl(setting).unwrap();
        }
        Stranger { ns }
    }

    /// UDP datagrams from the stranger's own address.
    fn send(&self, to: SocketAddr, payloads: &[Vec<u8>]) {
        let payloads = payloads.to_vec();
        self.ns
            .run_in(move || {
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                for payload in payloads {
                    socket.send_to(&payload, to).unwrap();
                }
            })
            .unwrap();
    }

    /// UDP datagrams with a source address that is not the stranger's.
    fn send_spoofed(&self, from: SocketAddr, to: SocketAddr, payloads: &[Vec<u8>]) {
        let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else { panic!("IPv4 only") };
        let packets: Vec<Vec<u8>> = payloads
            .iter()
            .map(|payload| {
                let builder = etherparse::PacketBuilder::ipv4(from.ip().octets(), to.ip().octets(), 64)
                    .udp(from.port(), to.port());
                let mut packet = Vec::with_capacity(builder.size(payload.len()));
                builder.write(&mut packet, payload).unwrap();
                packet
            })
            .collect();
        self.send_ip(&packets);
    }

    /// Whole IPv4 packets, as they are, through a raw socket.
    fn send_ip(&self, packets: &[Vec<u8>]) {
        use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn};
        let packets = packets.to_vec();
        self.ns
            .run_in(move || {
                let socket = nix::sys::socket::socket(
                    AddressFamily::Inet,
                    SockType::Raw,
                    SockFlag::empty(),
                    SockProtocol::Raw,
                )
                .unwrap();
                for packet in packets {
                    let to = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                    let to = SockaddrIn::from(std::net::SocketAddrV4::new(to, 0));
                    nix::sys::socket::sendto(
                        std::os::fd::AsRawFd::as_raw_fd(&socket),
                        &packet,
                        &to,
                        MsgFlags::empty(),
                    )
                    .unwrap();
                }
            })
            .unwrap();
    }
}

/// Random bytes shaped like a probe: type word 16, 84 bytes.
fn forged_probes(count: usize) -> Vec<Vec<u8>> {
    let mut bytes = vec![0u8; count * 84];
    getrandom(&mut bytes);
    bytes
        .chunks(84)
        .map(|chunk| {
            let mut probe = chunk.to_vec();
            probe[..4].copy_from_slice(&[16, 0, 0, 0]);
            probe
        })
        .collect()
}

fn getrandom(buffer: &mut [u8]) {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom").unwrap().read_exact(buffer).unwrap();
}

/// The IPv4 packet of an Ethernet frame, with its UDP destination and
/// payload.
fn udp_of(frame: &[u8]) -> Option<(Vec<u8>, SocketAddr, Vec<u8>)> {
    let packet = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = &packet.net else { return None };
    let Some(etherparse::TransportSlice::Udp(udp)) = &packet.transport else { return None };
    let to = SocketAddr::new(IpAddr::V4(ip.header().destination_addr()), udp.destination_port());
    Some((frame[14..].to_vec(), to, udp.payload().to_vec()))
}

/// A technician behind a cone NAT on a direct path to a gateway on a public
/// address. A stranger on the internet sends forged probes (random bytes
/// with the probe's type and length) to both ends' public addresses, from
/// its own address (the gateway gets them; the technician's NAT drops
/// them) and with the other end's address as the source (those pass the
/// technician's NAT as part of the peers' own flow); then replays the
/// technician's real probes, recorded at its NAT router, the same two ways.
/// Nobody's path moves; the gateway's uplink guard drops the forged probes
/// (unknown tag), its traversal the replayed ones (nonce seen before), and
/// the technician's traversal both.
#[test]
fn forged_and_replayed_probes_move_no_path() {
    let case = Case { technician: Net::Cone, site: Net::Public, kind: Kind::Ferry, expect: Path::Direct };
    let mut site = PathSite::new(case.options());
    let session = site.start_session();
    let tech = EngineTechnician::connect(&site.lab, &mut site.user, session);
    let (at_tech, at_gateway) = settle(&site, &tech, session, case, SETTLE)
        .unwrap_or_else(|(views, why)| panic!("{why}: {}\n{}", show(views), site.diagnostics(session)));
    let (gateway_public, tech_public) = (at_tech.endpoint.unwrap(), at_gateway.endpoint.unwrap());
    let since = tech.path().unwrap().since;

    // The technician's probes (pings, pongs, both ways) as they cross its
    // NAT router's WAN side: heartbeats go every 2 s on a direct path.
    let tnat = site.lab.home_router.as_ref().unwrap();
    let capture = Capture::start(&site.lab.lab, &tnat.ns, &tnat.wan_if, "udp and udp[8:4] = 0x10000000");
    let mut recorded = Vec::new();
    wait_until(Duration::from_secs(15), "probes both ways at the technician's NAT", || {
        std::thread::sleep(Duration::from_millis(500));
        recorded = std::fs::read(capture.file())
            .ok()
            .filter(|bytes| bytes.len() >= 24)
            .map(|bytes| ferry_tests::pcap::read_pcap(&bytes))
            .unwrap_or_default()
            .iter()
            .filter_map(|frame| udp_of(frame))
            .collect();
        let to = |end: SocketAddr| recorded.iter().filter(|(_, to, _)| *to == end).count();
        to(gateway_public) >= 2 && to(tech_public) >= 2
    });
    drop(capture.stop());
    let to_gateway: Vec<_> = recorded.iter().filter(|(_, to, _)| *to == gateway_public).cloned().collect();
    let to_tech: Vec<_> = recorded.iter().filter(|(_, to, _)| *to == tech_public).cloned().collect();

    let metric = |name: &str| site.lab.gateway_metric(name);
    const UNKNOWN_TAG: &str = "ferry_gateway_guard_packets_total{outcome=\"drop_unknown_probe_tag\"}";
    const REPLAYED: &str = "ferry_gateway_probe_drops_total{reason=\"replayed\"}";
    let (unknown_before, replayed_before) = (metric(UNKNOWN_TAG), metric(REPLAYED));
    let tech_before = tech.stats().probes;

    let stranger = Stranger::join(&site.lab);
    let forged = forged_probes(20);
    stranger.send(gateway_public, &forged);
    stranger.send(tech_public, &forged);
    stranger.send_spoofed(tech_public, gateway_public, &forged);
    stranger.send_spoofed(gateway_public, tech_public, &forged);
    let payloads =
        |packets: &[(Vec<u8>, SocketAddr, Vec<u8>)]| packets.iter().map(|p| p.2.clone()).collect::<Vec<_>>();
    stranger.send(gateway_public, &payloads(&to_gateway));
    stranger.send(tech_public, &payloads(&to_tech));
    let packets: Vec<Vec<u8>> = recorded.iter().map(|p| p.0.clone()).collect();
    stranger.send_ip(&packets);

    // The gateway's metrics refresh every 2 s.
    let forged_n = forged.len() as f64;
    // The gateway got each twice: from the stranger, and spoofed.
    wait_until(Duration::from_secs(10), "the gateway's guard to drop the forged probes", || {
        metric(UNKNOWN_TAG) >= unknown_before + 2.0 * forged_n
    });
    wait_until(Duration::from_secs(10), "the gateway's traversal to drop the replayed probes", || {
        metric(REPLAYED) >= replayed_before + 2.0 * to_gateway.len() as f64
    });
    // The technician only the spoofed ones: its NAT drops the others.
    let tech_after = tech.stats().probes;
    let dropped = |stats: &ferry_paths::ProbeStats, reason| stats.dropped(reason);
    use ferry_paths::ProbeDrop::{Replayed, UnknownTag};
    assert!(
        dropped(&tech_after, UnknownTag) >= dropped(&tech_before, UnknownTag) + forged.len() as u64,
        "{tech_before:?} -> {tech_after:?}"
    );
    assert!(
        dropped(&tech_after, Replayed) >= dropped(&tech_before, Replayed) + to_tech.len() as u64,
        "{tech_before:?} -> {tech_after:?}"
    );

    // Nobody moved: the same direct path at both ends, taken at the same
    // moment, and traffic on it.
    std::thread::sleep(Duration::from_secs(2));
    let now = (path_lab::TechnicianEnd::path(&tech), site.gateway_path(session));
    assert_eq!(now, (at_tech, at_gateway), "a path moved");
    assert_eq!(tech.path().unwrap().since, since, "the technician's path was re-selected");
    let ping = path_lab::ping(&tech, &tech.proxy("ping"), 3, Duration::from_millis(200));
    assert!(ping.all_answered(), "{ping:?}");
    eprintln!(
        "probe security: {} forged probes each way and {} + {} replayed; gateway guard drop_unknown_probe_tag +{}, \
         replayed +{}; technician {:?} -> {:?}",
        forged.len(),
        to_gateway.len(),
        to_tech.len(),
        metric(UNKNOWN_TAG) - unknown_before,
        metric(REPLAYED) - replayed_before,
        tech_before,
        tech_after
    );
}
