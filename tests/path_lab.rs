//! The gateway lab set up for path tests and the client benchmark: the
//! cloud, a relay and the real gateway daemon with a whitelisted iperf3
//! service and ICMP echo on target-a, switched on; a technician user; and
//! what a test asks of a technician, whichever kind it is (the `ferry`
//! client, Ferry's engine in the test, a stock wireguard-go from the
//! wg-quick export): the path it is on, the proxy addresses, commands in its
//! namespace as its user, ping and iperf3 through the tunnel.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use ferry_traversal::PathKind;
use serde_json::{Value, json};

use crate::{
    client_lab::{FerryUser, Service, TECH, ask, text},
    gateway_lab::{GatewayLab, GatewayRecord, Options, TARGET_A_IP, TechTunnel, User},
    technician::EngineTechnician,
    wg::iperf3_server,
};

/// target-a's iperf3 port, whitelisted as target `iperf`.
pub const IPERF_PORT: u16 = 5201;
/// The whitelisted targets: `iperf` (target-a, tcp 5201) and `ping`
/// (target-a, ICMP echo).
pub const TARGETS: [&str; 2] = ["iperf", "ping"];

/// Which way a technician's datagrams go, as either end reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    UdpRelay,
    WebSocketRelay,
    /// No path (yet), or an end that does not say.
    None,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::UdpRelay => "udp-relay",
            Path::WebSocketRelay => "websocket-relay",
            Path::None => "none",
        }
    }

    /// The traversal's and the gateway's labels (`direct`, `udp-relay`,
    /// ...), and the client's (`relay_udp`, `relay_websocket`).
    pub fn parse(label: &str) -> Path {
        match label {
            "direct" => Path::Direct,
            "udp-relay" | "relay_udp" => Path::UdpRelay,
            "websocket-relay" | "relay_websocket" => Path::WebSocketRelay,
            _ => Path::None,
        }
    }
}

impl From<PathKind> for Path {
    fn from(kind: PathKind) -> Path {
        Path::parse(kind.label())
    }
}

/// A path and where it leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathView {
    pub path: Path,
    /// Where datagrams go (the technician's view) or come from (the gateway's).
    pub endpoint: Option<SocketAddr>,
}

impl std::fmt::Display for PathView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.endpoint {
            Some(endpoint) => write!(f, "{} {endpoint}", self.path.label()),
            None => f.write_str(self.path.label()),
        }
    }
}

/// What a test needs of a technician, so that the kinds are interchangeable.
pub trait TechnicianEnd: Send {
    /// What kind of technician this is, for tables.
    fn kind(&self) -> &'static str;
    /// The path toward the gateway as the technician sees it.
    fn path(&self) -> PathView;
    /// A target's proxy address.
    fn proxy(&self, target: &str) -> String;
    /// `program` in the technician's namespace, as the technician's user.
    fn command(&self, program: &str) -> Command;
    /// The process that runs the technician's WireGuard (for CPU figures).
    fn engine_pid(&self) -> u32;
    /// What a failure message should show besides the path.
    fn diagnostics(&self) -> String {
        String::new()
    }
}

impl TechnicianEnd for EngineTechnician {
    fn kind(&self) -> &'static str {
        "ferry engine"
    }

    fn path(&self) -> PathView {
        let path = EngineTechnician::path(self);
        PathView {
            path: path.as_ref().map_or(Path::None, |p| p.path.into()),
            endpoint: path.and_then(|p| p.endpoint),
        }
    }

    fn proxy(&self, target: &str) -> String {
        EngineTechnician::proxy(self, target)
    }

    fn command(&self, program: &str) -> Command {
        self.ns.command(program)
    }

    /// The engine runs in this process.
    fn engine_pid(&self) -> u32 {
        std::process::id()
    }

    fn diagnostics(&self) -> String {
        let candidates = self.traversal.local_candidates().borrow().clone();
        format!(
            "technician: path {:?}\n  candidates {candidates:?}\n  gateway's {}\n  {:?}",
            EngineTechnician::path(self),
            self.config["endpoints"],
            self.stats()
        )
    }
}

/// The technician's client `ferry` as a technician runs it: its service
/// as root in the technician's namespace, the technician the local user
/// [`TECH`] driving it with the CLI, logged in to the lab's cloud. Its
/// tunnel routes only that user's packets, so commands run as that user.
pub struct ClientTechnician {
    pub user: FerryUser,
    pub service: Service,
    /// The tunnel as `ferry connect --json` printed it; null before.
    pub tunnel: Value,
}

impl ClientTechnician {
    /// The service started and `ferry login` done as `account`.
    pub fn login(lab: &GatewayLab, account: &User) -> ClientTechnician {
        // `ping` as a local user: an ICMP datagram socket, no privilege.
        lab.tech_ns.sysctl("net.ipv4.ping_group_range=0 2147483647").unwrap();
        let service = Service::start(&lab.tech_ns);
        let user = FerryUser::new(&lab.tech_ns, TECH, &service);
        user.login(&lab.technician_cloud_url(), &account.name, &account.password);
        ClientTechnician { user, service, tunnel: Value::Null }
    }

    /// `ferry connect SESSION --json`, waiting up to `wait_s` seconds for the
    /// first handshake (0: returns once the tunnel is up).
    pub fn connect(&mut self, session: u64, wait_s: u64) -> Result<(), String> {
        self.tunnel =
            self.user.connect(session, wait_s).map_err(|out| format!("{}\n{}", text(&out), self.log()))?;
        Ok(())
    }

    /// The tunnel as the service shows it now (its socket's `status`, which
    /// `ferry status` prints); null when it is not listed.
    pub fn now(&self) -> Value {
        let answer = ask(&self.user.ns, self.user.user, &self.user.socket, json!({"v": 1, "op": "status"}));
        let tunnels = answer["tunnels"].as_array().cloned().unwrap_or_default();
        tunnels.into_iter().find(|t| t["config_id"] == self.tunnel["config_id"]).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        self.service.log()
    }
}

impl TechnicianEnd for ClientTechnician {
    fn kind(&self) -> &'static str {
        "ferry client"
    }

    /// Where WireGuard sends now (`path`, `peer_endpoint`); a WebSocket
    /// relay's endpoint is a URL, no address.
    fn path(&self) -> PathView {
        let tunnel = self.now();
        PathView {
            path: tunnel["path"].as_str().map_or(Path::None, Path::parse),
            endpoint: tunnel["peer_endpoint"].as_str().and_then(|e| e.parse().ok()),
        }
    }

    fn proxy(&self, target: &str) -> String {
        let targets = self.tunnel["targets"].as_array().cloned().unwrap_or_default();
        let found = targets.iter().find(|t| t["name"] == target);
        let found = found.unwrap_or_else(|| panic!("no target {target} in {}", self.tunnel));
        found["proxy_address"].as_str().unwrap().to_string()
    }

    /// Through `setpriv`: `ip netns exec` itself needs root.
    fn command(&self, program: &str) -> Command {
        let user = self.user.user;
        let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
        let mut cmd = self.user.ns.command("setpriv");
        cmd.arg(format!("--reuid={}", user.uid)).arg(format!("--regid={}", user.uid));
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            cmd.arg(format!("--groups={}", groups.join(",")));
        }
        cmd.arg(program);
        cmd
    }

    /// The service runs the tunnels' engines.
    fn engine_pid(&self) -> u32 {
        self.service.process.pid()
    }

    fn diagnostics(&self) -> String {
        format!("technician: {:#}\n{}", self.now(), self.log())
    }
}

/// A stock wireguard-go brought up from the cloud's wg-quick file.
pub struct WgQuickTechnician {
    pub tunnel: TechTunnel,
    /// The relay's address (the file's endpoint), to name the path.
    pub relay_ip: String,
}

impl TechnicianEnd for WgQuickTechnician {
    fn kind(&self) -> &'static str {
        "wireguard-go (wg-quick export)"
    }

    /// wireguard-go knows only its peer's endpoint: the relay's address is
    /// the UDP relay, anything else would be a direct path.
    fn path(&self) -> PathView {
        let shown = self.tunnel.go.show("endpoints");
        let endpoint: Option<SocketAddr> = shown.split_whitespace().nth(1).and_then(|e| e.parse().ok());
        let path = match endpoint {
            Some(e) if e.ip().to_string() == self.relay_ip => Path::UdpRelay,
            Some(_) => Path::Direct,
            None => Path::None,
        };
        PathView { path, endpoint }
    }

    fn proxy(&self, target: &str) -> String {
        self.tunnel.proxy(target).to_string()
    }

    fn command(&self, program: &str) -> Command {
        self.tunnel.go.ns.command(program)
    }

    fn engine_pid(&self) -> u32 {
        self.tunnel.go.pid()
    }
}

/// A lab with the gateway daemon up, switched on, at the cloud, and a
/// technician user released to its sessions.
pub struct PathSite {
    pub lab: GatewayLab,
    pub gateway: GatewayRecord,
    pub user: User,
}

impl PathSite {
    pub fn new(options: Options) -> PathSite {
        let mut lab = GatewayLab::new(options);
        lab.start_cloud_and_login();
        lab.start_relay();
        let body = json!({
            "name": "press line 3",
            "site": "customer plant 1",
            "targets": [
                {"name": "iperf", "address": TARGET_A_IP, "protocol": "tcp",
                 "ports": [{"first": IPERF_PORT, "last": IPERF_PORT}]},
                {"name": "ping", "address": TARGET_A_IP, "protocol": "icmp", "ports": []},
            ],
        });
        let (status, created) = lab.admin("POST", "/api/v1/gateways", body);
        assert_eq!(status, 201, "{created}");
        let gateway = GatewayRecord {
            id: created["gateway"]["id"].as_u64().unwrap(),
            enrolment_token: created["enrolment"]["token"].as_str().unwrap().to_string(),
        };
        lab.enroll(&gateway.enrolment_token);
        lab.start_gateway();
        lab.remote("on");
        lab.wait_gateway_at_cloud(gateway.id, true);
        let user = lab.create_technician("tech1");
        PathSite { lab, gateway, user }
    }

    /// A session with both targets, started by the technician; its id.
    pub fn start_session(&mut self) -> u64 {
        let id = self.lab.create_session(self.gateway.id, &TARGETS, &[self.user.id], 600, false);
        let (status, session) = self.lab.start_session(&mut self.user, id);
        assert_eq!((status, session["state"].as_str()), (200, Some("active")), "{session}");
        id
    }

    /// The session's first peer as `ferry-gateway sessions --json` shows it.
    pub fn gateway_peer(&self, session: u64) -> Value {
        let sessions = self.lab.gateway_sessions();
        sessions
            .as_array()
            .and_then(|all| all.iter().find(|s| s["id"] == session))
            .map_or(Value::Null, |s| s["peers"][0].clone())
    }

    /// The gateway's side of a failure message: the session's peer and the
    /// path metrics.
    pub fn diagnostics(&self, session: u64) -> String {
        let metrics: Vec<String> = self
            .lab
            .gateway_metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| ["probe", "stun", "paths", "candidates", "side"].iter().any(|k| l.contains(k)))
            .map(str::to_string)
            .collect();
        format!("gateway: peer {}\n  {}", self.gateway_peer(session), metrics.join("\n  "))
    }

    /// The path toward the session's technician as the gateway sees it.
    pub fn gateway_path(&self, session: u64) -> PathView {
        let peer = self.gateway_peer(session);
        PathView {
            path: peer["transport"].as_str().map_or(Path::None, Path::parse),
            endpoint: peer["endpoint"].as_str().and_then(|e| e.parse().ok()),
        }
    }

    /// The technician's tunnel from the cloud's wg-quick file, up in
    /// wireguard-go.
    pub fn wg_quick_technician(&mut self, session: u64) -> WgQuickTechnician {
        let tunnel = self.lab.technician_tunnel(&mut self.user, session);
        WgQuickTechnician { tunnel, relay_ip: crate::gateway_lab::RELAY_IP.to_string() }
    }
}

/// What `ping` measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ping {
    pub sent: u32,
    pub received: u32,
    pub avg_ms: Option<f64>,
}

impl Ping {
    pub fn all_answered(&self) -> bool {
        self.sent > 0 && self.received == self.sent
    }
}

/// `count` echo requests, `interval` apart, to `ip` through the technician's tunnel.
pub fn ping(tech: &dyn TechnicianEnd, ip: &str, count: u32, interval: Duration) -> Ping {
    let out = tech
        .command("ping")
        .args(["-n", "-q", "-c", &count.to_string(), "-W", "2"])
        .args(["-i", &format!("{:.3}", interval.as_secs_f64()), ip])
        .output()
        .unwrap();
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

/// `ping -q`'s summary: "5 packets transmitted, 5 received, ..." and
/// "rtt min/avg/max/mdev = 0.1/0.2/0.3/0.0 ms".
pub fn parse_ping(text: &str) -> Ping {
    let mut ping = Ping::default();
    for line in text.lines() {
        if line.contains("packets transmitted") {
            let mut numbers = line.split(',').filter_map(|part| part.split_whitespace().next()?.parse().ok());
            ping.sent = numbers.next().unwrap_or(0);
            ping.received = numbers.next().unwrap_or(0);
        }
        if let Some(values) = line.split_once(" = ").map(|(_, v)| v).filter(|_| line.starts_with("rtt")) {
            ping.avg_ms = values.split('/').nth(1).and_then(|v| v.parse().ok());
        }
    }
    ping
}

/// Waits until one echo request through the tunnel is answered; the time
/// it took.
pub fn first_answer(tech: &dyn TechnicianEnd, ip: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut answered = false;
    let _ = crate::gateway_lab::poll(timeout, || {
        answered = ping(tech, ip, 1, Duration::from_millis(200)).all_answered();
        answered
    });
    answered.then(|| start.elapsed())
}

/// What an iperf3 transfer measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Transfer {
    /// Received, in Mbit/s.
    pub mbit_s: f64,
    /// The sender's mean TCP round-trip time (smoothed RTT under load).
    pub mean_rtt_ms: Option<f64>,
}

/// One iperf3 TCP transfer of `seconds` from the technician to target-a's
/// iperf3 server through the proxy address (`reverse`: target-a sends).
pub fn iperf3(
    site: &PathSite,
    tech: &dyn TechnicianEnd,
    seconds: u32,
    reverse: bool,
) -> Result<Transfer, String> {
    let _server = iperf3_server(&site.lab.target_a, TARGET_A_IP);
    let proxy = tech.proxy("iperf");
    let mut cmd = tech.command("timeout");
    cmd.args(["60", "iperf3", "-c", &proxy, "-p", &IPERF_PORT.to_string(), "-t", &seconds.to_string(), "-J"]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let received = &json["end"]["sum_received"];
    match (received["bits_per_second"].as_f64(), received["bytes"].as_f64()) {
        (Some(bps), Some(bytes)) if bytes > 0.0 => Ok(Transfer {
            mbit_s: bps / 1e6,
            mean_rtt_ms: json["end"]["streams"][0]["sender"]["mean_rtt"].as_f64().map(|us| us / 1000.0),
        }),
        _ => Err(format!(
            "iperf3 to {proxy}:{IPERF_PORT} failed ({}): {} {}",
            out.status,
            json["error"].as_str().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summaries_parse() {
        let text = "PING 100.96.0.10 (100.96.0.10) 56(84) bytes of data.\n\n--- 100.96.0.10 ping statistics ---\n\
                    5 packets transmitted, 4 received, 20% packet loss, time 803ms\n\
                    rtt min/avg/max/mdev = 0.412/0.733/1.201/0.290 ms\n";
        assert_eq!(parse_ping(text), Ping { sent: 5, received: 4, avg_ms: Some(0.733) });
        let none = "1 packets transmitted, 0 received, 100% packet loss, time 0ms\n";
        assert_eq!(parse_ping(none), Ping { sent: 1, received: 0, avg_ms: None });
        assert!(!Ping::default().all_answered());
    }
}
