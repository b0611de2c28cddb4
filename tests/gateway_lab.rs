//! The end-to-end lab of the gateway daemon: a small internet with the real
//! cloud and a real relay, a customer site whose NAT router hides the gateway,
//! the machine network behind the gateway with two devices, and a technician
//! whose own home LAN uses the same addresses as the machine network.
//!
//! ```text
//!                               inet (router namespace, forwards)
//!     +-----------------+-------------------+-------------------+------------------+
//!     | 203.0.113.14/29 | 203.0.113.6/29    | 192.0.2.1/25      | 192.0.2.129/25   | 198.51.100.1/24
//!     |                 |                   |                   |                  |
//!  cloud              relay             technician            office            cust (NAT router)
//!  203.0.113.10       203.0.113.1       192.0.2.2             192.0.2.130       WAN 198.51.100.2
//!  ferry-cloud serve  ferry-relay run   wireguard-go from     the admin's       MASQUERADE;
//!  :7600 plain http   UDP 40000-40099   the cloud's wg-quick  API calls         tcp443_only: only
//!  (tcp 443 is        STUN :3478        file (split tunnel)                     TCP to port 443
//!   redirected to     WS :443 plain ws       |                                  leaves the site
//!   7600, for the     (wss, self-signed      | own home LAN 192.168.50.0/24        | LAN bridge
//!   tcp443_only       with relay_tls)        |                                     | 10.20.0.1/24
//!   site)                                 home (192.168.50.10: "home device",      |
//!                                          the overlap case) tech at .77        gw: uplink 10.20.0.2/24
//!                                                                               ferry-gateway run
//!                                                                               (tun, WireGuard, XDP)
//!                                                                                   | LAN 192.168.50.1/24
//!                                                                              lan (switch: a bridge)
//!                                                   +---------------------+-------------+
//!                                               target-a             target-b          probe
//!                                               192.168.50.10        192.168.50.11     192.168.50.20
//!                                               HTTP :8080 plc-web   echo :7000        a helper
//!                                               HTTP :8081 (not      echo :7001 (not   device on
//!                                               whitelisted)         whitelisted)      the LAN
//! ```
//!
//! Everything uses documentation ranges on the internet side and RFC 1918
//! inside the sites; nothing leaves the lab's namespaces. The veth ends of
//! every host, device, switch port and the customer router have TX checksum
//! offload off, so every frame carries a full checksum as on a wire (the gateway's XDP program updates checksums incrementally), and the
//! ends facing the gateway run an XDP pass program, so that XDP_TX and
//! XDP_REDIRECT out of the gateway's interfaces are delivered.
//!
//! The admin drives the cloud's HTTP API from the office namespace, the
//! technician from the technician namespace (Netns::run_in: the test's own
//! sockets are made inside those namespaces).
//!
//! Using it (see `gateway_lab_infra.rs` and `gateway_e2e.rs`):
//! ```text
//! let mut lab = GatewayLab::new(Options::default());
//! lab.start_cloud_and_login();             // one-time password -> ADMIN_PASSWORD
//! lab.start_relay();                       // registered, online at the cloud
//! let gw = lab.create_gateway("press");    // targets plc-web and echo, enrolment token
//! lab.enroll(&gw.enrolment_token);         // ferry-gateway --config F enroll ...
//! lab.start_gateway();                     // ferry-gateway --config F run, "ferry-gateway ready"
//! lab.remote("on");
//! let mut tech = lab.create_technician("tech1");
//! let id = lab.create_session(gw.id, &["plc-web", "echo"], &[tech.id], 600, false);
//! lab.start_session(&mut tech, id);
//! let tunnel = lab.technician_tunnel(&mut tech, id);   // wg-quick -> wireguard-go
//! http_get(&lab.tech_ns, tunnel.proxy("plc-web"), HTTP_PORT, timeout);
//! ```
//! Run as root after `cargo build --bins`:
//! `cargo test -p ferry-tests --test gateway_lab_infra` (passes without the
//! daemon, with a stand-in gateway for the session path) and
//! `cargo test -p ferry-tests --test gateway_e2e` (the daemon).

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Output,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ferry_ebpf::pass::PassProgram;
use ferry_lab::{Lab, Nat, Netns, Process, Router};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::{
    bin_path,
    cloud::try_call,
    wg::{Keys, PeerSpec, WgQuick, WireguardGo},
};

pub const CLOUD_IP: &str = "203.0.113.10";
pub const CLOUD_PORT: u16 = 7600;
pub const RELAY_IP: &str = "203.0.113.1";
pub const RELAY_PORTS: &str = "40000-40099";
pub const RELAY_WS: &str = "203.0.113.1:443";
pub const TECH_IP: &str = "192.0.2.2";
pub const OFFICE_IP: &str = "192.0.2.130";
pub const SITE_WAN_IP: &str = "198.51.100.2";
pub const GW_UPLINK_IP: &str = "10.20.0.2";
pub const GW_LAN_IP: &str = "192.168.50.1";
pub const TARGET_A_IP: &str = "192.168.50.10";
pub const TARGET_B_IP: &str = "192.168.50.11";
pub const PROBE_IP: &str = "192.168.50.20";
/// The technician's own LAN: the same /24 as the machine network.
pub const TECH_LAN_IP: &str = "192.168.50.77";
/// A device on the technician's own LAN with a machine's address.
pub const HOME_DEVICE_IP: &str = "192.168.50.10";
pub const HTTP_PORT: u16 = 8080;
/// Another HTTP service on target-a that no session whitelists.
pub const OTHER_HTTP_PORT: u16 = 8081;
pub const ECHO_PORT: u16 = 7000;
/// Another echo service on target-b that no session whitelists.
pub const OTHER_ECHO_PORT: u16 = 7001;
pub const PLC_PAGE: &str = "plc-web on target-a: machine 4711 ready\n";
pub const ADMIN_PAGE: &str = "plc admin page on target-a: must stay unreachable\n";
pub const HOME_PAGE: &str = "home device of the technician\n";
pub const GATEWAY_WG_PORT: u16 = 51820;
/// `/metrics` on the gateway namespace's own loopback.
pub const GATEWAY_METRICS_PORT: u16 = 9479;
pub const ADMIN_PASSWORD: &str = "gateway lab admin password";
pub const TECH_PASSWORD: &str = "gateway lab technician password";

/// How a lab is built.
#[derive(Clone, Debug)]
pub struct Options {
    /// The customer's NAT router lets only TCP to port 443 out (no UDP at all).
    pub tcp443_only: bool,
    /// `--xdp` of the relay: "off" (userspace forwarding) or "native".
    pub relay_xdp: &'static str,
    /// The relay serves its WebSocket listener over TLS with a self-signed
    /// certificate (`wss://`), whose pin reaches the gateway via the cloud.
    pub relay_tls: bool,
    /// The cloud serves HTTPS with the self-signed certificate it makes on
    /// first start (naming its address); the gateway and the relay pin it,
    /// API calls trust only it. Otherwise plain HTTP.
    pub cloud_tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { tcp443_only: false, relay_xdp: "off", relay_tls: false, cloud_tls: false }
    }
}

/// A gateway the admin created, with its one-time enrolment token.
#[derive(Clone, Debug)]
pub struct GatewayRecord {
    pub id: u64,
    pub enrolment_token: String,
}

/// A user who logged in.
#[derive(Clone, Debug)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub password: String,
    pub token: String,
}

/// The technician's tunnel, brought up from the cloud's wg-quick file.
pub struct TechTunnel {
    pub go: WireguardGo,
    pub keys: Keys,
    pub wg_quick: String,
    /// The technician's tunnel address (no prefix length).
    pub address: String,
    /// Target name -> proxy address, from the file's `# target` lines.
    pub proxies: BTreeMap<String, String>,
}

impl TechTunnel {
    pub fn proxy(&self, target: &str) -> &str {
        self.proxies
            .get(target)
            .unwrap_or_else(|| panic!("no proxy address for {target} in\n{}", self.wg_quick))
    }
}

pub struct GatewayLab {
    pub lab: Lab,
    pub options: Options,
    pub inet: Netns,
    pub cloud_ns: Netns,
    pub relay_ns: Netns,
    pub tech_ns: Netns,
    pub home_ns: Netns,
    pub office_ns: Netns,
    pub router: Router,
    pub gw_ns: Netns,
    pub lan_ns: Netns,
    pub target_a: Netns,
    pub target_b: Netns,
    pub probe_ns: Netns,
    /// The gateway's interface toward the customer network.
    pub gw_uplink_if: String,
    /// The gateway's interface into the machine network.
    pub gw_lan_if: String,
    /// The TUN name the gateway is told to use.
    pub gw_tun_if: String,
    pub relay_if: String,
    pub tech_if: String,
    /// The technician's own LAN interface (192.168.50.77/24).
    pub tech_lan_if: String,
    pub gateway_config: PathBuf,
    pub gateway_data: PathBuf,
    pub gateway_socket: PathBuf,
    pub cloud_data: PathBuf,
    pub cloud: Option<Process>,
    pub relay: Option<Process>,
    pub gateway: Option<Process>,
    /// The admin's current access token, once logged in.
    pub admin_token: Mutex<Option<String>>,
    pub relay_id: Option<u64>,
    /// With `relay_tls`: the fingerprint of the relay's certificate.
    pub relay_pin: Option<String>,
    /// With `cloud_tls`: the fingerprint of the cloud's certificate, once it
    /// started.
    pub cloud_pin: Option<String>,
    servers: Vec<Server>,
    _xdp: Vec<PassProgram>,
}

fn strip_len(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

impl GatewayLab {
    /// Builds the topology and starts the devices' services; no Ferry process
    /// runs yet.
    pub fn new(options: Options) -> GatewayLab {
        let lab = Lab::new().unwrap();
        let inet = lab.netns("inet").unwrap();
        inet.enable_forwarding().unwrap();
        let mut xdp = Vec::new();
        let tx_off = |ns: &Netns, ifname: &str| {
            ns.exec("ethtool", &["-K", ifname, "tx", "off"]).unwrap();
        };
        // A host on the internet with a point-to-point subnet to the router.
        let host = |label: &str, router_cidr: &str, host_cidr: &str| {
            let ns = lab.netns(label).unwrap();
            let veth = lab.wire(&inet, &[router_cidr], &ns, &[host_cidr]).unwrap();
            ns.ip(&["route", "add", "default", "via", strip_len(router_cidr)]).unwrap();
            tx_off(&inet, &veth.a);
            tx_off(&ns, &veth.b);
            (ns, veth)
        };
        let (cloud_ns, _) = host("cloud", "203.0.113.14/29", "203.0.113.10/29");
        let (relay_ns, relay_veth) = host("relay", "203.0.113.6/29", "203.0.113.1/29");
        let (tech_ns, tech_veth) = host("tech", "192.0.2.1/25", "192.0.2.2/25");
        let (office_ns, _) = host("office", "192.0.2.129/25", "192.0.2.130/25");
        if options.relay_xdp != "off" {
            // XDP_TX toward the router only delivers with XDP there; the
            // relay's FIB lookups need forwarding on its interface.
            let router_if = relay_veth.a.clone();
            xdp.push(inet.run_in(move || PassProgram::attach(&router_if)).unwrap().unwrap());
            relay_ns.sysctl(&format!("net.ipv4.conf.{}.forwarding=1", relay_veth.b)).unwrap();
        }
        // The cloud also answers on TCP 443, for sites that let nothing else out.
        cloud_ns
            .exec(
                "nft",
                &[&format!(
                    "add table ip cloud443; add chain ip cloud443 pre {{ type nat hook prerouting priority dstnat; }}; \
                     add rule ip cloud443 pre ip daddr {CLOUD_IP} tcp dport 443 redirect to :{CLOUD_PORT}"
                )],
            )
            .unwrap();

        // The technician's own LAN, with a device at a machine's address.
        let home_ns = lab.netns("home").unwrap();
        let home =
            lab.wire(&tech_ns, &[&format!("{TECH_LAN_IP}/24")], &home_ns, &["192.168.50.10/24"]).unwrap();
        tx_off(&tech_ns, &home.a);
        tx_off(&home_ns, &home.b);

        // The customer's site: NAT router, gateway behind it.
        let nat = if options.tcp443_only { Nat::TcpOnly443 } else { Nat::Cone };
        let router =
            lab.nat_router("cust", nat, &inet, "198.51.100.1/24", "198.51.100.2/24", "10.20.0.1/24").unwrap();
        tx_off(&router.ns, &router.wan_if);
        let gw_ns = lab.netns("gw").unwrap();
        let gw_uplink_if = router.attach(&gw_ns, &format!("{GW_UPLINK_IP}/24")).unwrap();
        tx_off(&gw_ns, &gw_uplink_if);
        let router_port = port_of_bridge(&router.ns, &router.lan_if);
        for port in &router_port {
            tx_off(&router.ns, port);
            let port = port.clone();
            xdp.push(router.ns.run_in(move || PassProgram::attach(&port)).unwrap().unwrap());
        }

        // The machine network: a switch namespace with a bridge.
        let lan_ns = lab.netns("lan").unwrap();
        lan_ns.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
        lan_ns.ip(&["link", "set", "br0", "up"]).unwrap();
        let plug = |ns: &Netns, cidr: &str, xdp: &mut Vec<PassProgram>| -> String {
            let veth = lan_ns.veth_to(ns).unwrap();
            lan_ns.ip(&["link", "set", &veth.a, "master", "br0"]).unwrap();
            ns.add_addr(&veth.b, cidr).unwrap();
            tx_off(&lan_ns, &veth.a);
            tx_off(ns, &veth.b);
            // Frames the gateway sends with XDP_TX/XDP_REDIRECT arrive at
            // the switch port; veth delivers them only to an XDP program.
            let port = veth.a.clone();
            xdp.push(lan_ns.run_in(move || PassProgram::attach(&port)).unwrap().unwrap());
            veth.b
        };
        let gw_lan_if = plug(&gw_ns, &format!("{GW_LAN_IP}/24"), &mut xdp);
        let target_a = lab.netns("target-a").unwrap();
        let target_b = lab.netns("target-b").unwrap();
        let probe_ns = lab.netns("probe").unwrap();
        for (ns, ip) in [(&target_a, TARGET_A_IP), (&target_b, TARGET_B_IP), (&probe_ns, PROBE_IP)] {
            plug(ns, &format!("{ip}/24"), &mut xdp);
            ns.ip(&["route", "add", "default", "via", GW_LAN_IP]).unwrap();
        }

        let servers = vec![
            Server::http(&target_a, TARGET_A_IP, HTTP_PORT, PLC_PAGE),
            Server::http(&target_a, TARGET_A_IP, OTHER_HTTP_PORT, ADMIN_PAGE),
            Server::echo(&target_b, TARGET_B_IP, ECHO_PORT),
            Server::echo(&target_b, TARGET_B_IP, OTHER_ECHO_PORT),
            Server::http(&home_ns, HOME_DEVICE_IP, HTTP_PORT, HOME_PAGE),
        ];

        let dir = lab.dir().to_path_buf();
        let gw_tun_if = lab.ifname("tun");
        let me = GatewayLab {
            options,
            inet,
            cloud_ns,
            relay_ns,
            tech_ns,
            home_ns,
            office_ns,
            router,
            gw_ns,
            lan_ns,
            target_a,
            target_b,
            probe_ns,
            gw_uplink_if,
            gw_lan_if,
            gw_tun_if,
            relay_if: relay_veth.b,
            tech_if: tech_veth.b,
            tech_lan_if: home.a,
            gateway_config: dir.join("gateway.toml"),
            gateway_data: dir.join("gw-data"),
            gateway_socket: dir.join("gw.sock"),
            cloud_data: dir.join("cloud-data"),
            cloud: None,
            relay: None,
            gateway: None,
            admin_token: Mutex::new(None),
            relay_id: None,
            relay_pin: None,
            cloud_pin: None,
            servers,
            _xdp: xdp,
            lab,
        };
        me.write_gateway_config();
        me
    }

    /// The cloud's URL as the gateway is told it: port 443 when the site
    /// lets only TCP 443 out.
    pub fn cloud_url(&self) -> String {
        let scheme = if self.options.cloud_tls { "https" } else { "http" };
        if self.options.tcp443_only {
            format!("{scheme}://{CLOUD_IP}:443")
        } else {
            format!("{scheme}://{CLOUD_IP}:{CLOUD_PORT}")
        }
    }

    pub fn cloud_addr(&self) -> SocketAddr {
        SocketAddr::new(CLOUD_IP.parse().unwrap(), CLOUD_PORT)
    }

    // ---------------------------------------------------------------- cloud

    /// Starts `ferry-cloud serve` in the cloud namespace on 203.0.113.10:7600
    /// (plain HTTP) over the lab's data folder, and waits until it listens.
    /// Returns the one-time admin password on the first start.
    pub fn start_cloud(&mut self) -> Option<String> {
        assert!(self.cloud.is_none(), "the cloud runs already");
        let listen = self.cloud_addr().to_string();
        let data = self.cloud_data.to_str().unwrap().to_string();
        let mut cmd = self.cloud_ns.command(bin_path("ferry-cloud"));
        if self.options.cloud_tls {
            // The self-signed certificate names the cloud's address too.
            let config = self.lab.dir().join("cloud.toml");
            std::fs::write(&config, format!("tls_names = [\"{CLOUD_IP}\"]\n")).unwrap();
            cmd.arg("--config").arg(config);
            cmd.args(["serve", "--listen", &listen, "--data-dir", &data]);
        } else {
            cmd.args(["serve", "--listen", &listen, "--data-dir", &data, "--no-tls", "--allow-plain-http"]);
        }
        let mut cloud = self.cloud_ns.spawn(cmd).unwrap();
        cloud.wait_for_output("ferry-cloud listening", Duration::from_secs(30)).unwrap();
        let stdout = cloud.stdout();
        let password = stdout
            .lines()
            .find(|l| l.contains("one-time password"))
            .and_then(|l| l.rsplit(' ').next())
            .map(|p| p.trim().to_string());
        if self.options.cloud_tls {
            let listening =
                stdout.lines().find(|l| l.starts_with("ferry-cloud listening")).unwrap_or_default();
            let fingerprint = listening
                .split("certificate sha256 ")
                .nth(1)
                .map(|rest| rest.trim_end().trim_end_matches(')').to_string())
                .unwrap_or_else(|| panic!("no certificate fingerprint in {listening:?}"));
            self.cloud_pin = Some(fingerprint);
        }
        self.cloud = Some(cloud);
        password
    }

    /// SIGKILL, as a crash or power cut ends it.
    pub fn kill_cloud(&mut self) {
        let mut cloud = self.cloud.take().expect("the cloud is not running");
        cloud.signal(Signal::SIGKILL).unwrap();
        cloud.wait_timeout(Duration::from_secs(10)).unwrap();
    }

    /// One API call from `ns` (the caller's address is that namespace's).
    pub fn api_from(
        &self,
        ns: &Netns,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let (addr, method2, path2, token) =
            (self.cloud_addr(), method.to_string(), path.to_string(), token.map(str::to_string));
        if let Some(pin) = self.cloud_pin.clone() {
            let body = Some(body);
            return ns
                .run_in(move || {
                    crate::control_gateway::pinned_call(addr, &pin, &method2, &path2, token.as_deref(), body)
                })
                .unwrap();
        }
        ns.run_in(move || try_call(addr, &method2, &path2, token.as_deref(), body))
            .unwrap()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// An admin call from the office; logs in again once if the token was
    /// refused (for example after a cloud restart).
    pub fn admin(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let token = self.admin_token.lock().unwrap().clone().expect("admin_login first");
        let (status, answer) = self.api_from(&self.office_ns, method, path, Some(&token), body.clone());
        if status != 401 {
            return (status, answer);
        }
        let token = self.login(&self.office_ns, "admin", ADMIN_PASSWORD).1;
        *self.admin_token.lock().unwrap() = Some(token.clone());
        self.api_from(&self.office_ns, method, path, Some(&token), body)
    }

    /// Logs in; returns the user id and the access token.
    pub fn login(&self, ns: &Netns, name: &str, password: &str) -> (u64, String) {
        let (status, body) = self.api_from(
            ns,
            "POST",
            "/api/v1/auth/login",
            None,
            json!({"name": name, "password": password}),
        );
        assert_eq!(status, 200, "login of {name}: {body}");
        (body["user"]["id"].as_u64().unwrap_or_default(), body["access_token"].as_str().unwrap().to_string())
    }

    /// The first admin login: the one-time password the cloud printed,
    /// changed to [`ADMIN_PASSWORD`], then a login with that.
    pub fn admin_login(&self, one_time: &str) -> String {
        let first = self.login(&self.office_ns, "admin", one_time).1;
        let change = json!({"current_password": one_time, "new_password": ADMIN_PASSWORD});
        let (status, body) =
            self.api_from(&self.office_ns, "POST", "/api/v1/me/password", Some(&first), change);
        assert_eq!(status, 204, "{body}");
        let token = self.login(&self.office_ns, "admin", ADMIN_PASSWORD).1;
        *self.admin_token.lock().unwrap() = Some(token.clone());
        token
    }

    /// Starts the cloud for the first time and logs the admin in.
    pub fn start_cloud_and_login(&mut self) -> String {
        let one_time = self.start_cloud().expect("the first start prints a one-time password");
        self.admin_login(&one_time)
    }

    /// Registers a relay at the cloud, starts `ferry-relay run` with its
    /// token and waits until the cloud shows it online. Returns its id.
    pub fn start_relay(&mut self) -> u64 {
        let (status, created) = self.admin("POST", "/api/v1/relays", json!({"name": "relay-lab"}));
        assert_eq!(status, 201, "{created}");
        let id = created["relay"]["id"].as_u64().unwrap();
        let token_file = self.lab.dir().join("relay.token");
        std::fs::write(&token_file, created["token"].as_str().unwrap()).unwrap();
        let cloud_scheme = if self.cloud_pin.is_some() { "wss" } else { "ws" };
        let cloud_url = format!("{cloud_scheme}://{CLOUD_IP}:{CLOUD_PORT}/api/v1/control/relay");
        let scheme = if self.options.relay_tls { "wss" } else { "ws" };
        let websocket_url = format!("{scheme}://{RELAY_WS}/");
        let id_text = id.to_string();
        let (cert_file, key_file) = (self.lab.dir().join("relay.crt"), self.lab.dir().join("relay.key"));
        let mut args = vec![
            "run",
            "--xdp",
            self.options.relay_xdp,
            "--public-ipv4",
            RELAY_IP,
            "--ports",
            RELAY_PORTS,
            "--stun",
            "203.0.113.1:3478",
            "--websocket",
            RELAY_WS,
            "--websocket-url",
            &websocket_url,
            "--metrics",
            "off",
            "--cloud-url",
            &cloud_url,
            "--cloud-relay-id",
            &id_text,
            "--cloud-token-file",
            token_file.to_str().unwrap(),
            "--log",
            "debug",
        ];
        if self.options.relay_xdp != "off" {
            args.extend(["--interface", &self.relay_if]);
        }
        let cloud_pin = self.cloud_pin.clone().unwrap_or_default();
        if self.cloud_pin.is_some() {
            args.extend(["--cloud-pin", &cloud_pin]);
        }
        if self.options.relay_tls {
            let certified = rcgen::generate_simple_self_signed(vec![RELAY_IP.to_string()]).unwrap();
            std::fs::write(&cert_file, certified.cert.pem()).unwrap();
            std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
            self.relay_pin = Some(ferry_control::pin::format_fingerprint(&ferry_control::pin::fingerprint(
                certified.cert.der(),
            )));
            args.extend(["--tls-cert", cert_file.to_str().unwrap(), "--tls-key", key_file.to_str().unwrap()]);
        }
        let mut relay = self.relay_ns.spawn_program(bin_path("ferry-relay"), &args).unwrap();
        relay.wait_for_output("ferry-relay ready", Duration::from_secs(20)).unwrap();
        self.relay = Some(relay);
        self.relay_id = Some(id);
        wait_until(Duration::from_secs(20), "the relay to be online at the cloud", || {
            self.relay_health(id)["online"] == true
        });
        id
    }

    /// The relay's health as the cloud shows it.
    pub fn relay_health(&self, id: u64) -> Value {
        let (status, relays) = self.admin("GET", "/api/v1/relays", Value::Null);
        assert_eq!(status, 200, "{relays}");
        relays
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["health"].clone())
            .unwrap_or_default()
    }

    /// Creates the site's gateway with the targets `plc-web` (target-a, tcp
    /// 8080) and `echo` (target-b, tcp 7000).
    pub fn create_gateway(&self, name: &str) -> GatewayRecord {
        let body = json!({
            "name": name,
            "site": "customer plant 1",
            "targets": [
                {"name": "plc-web", "address": TARGET_A_IP, "protocol": "tcp",
                 "ports": [{"first": HTTP_PORT, "last": HTTP_PORT}]},
                {"name": "echo", "address": TARGET_B_IP, "protocol": "tcp",
                 "ports": [{"first": ECHO_PORT, "last": ECHO_PORT}]},
            ],
        });
        let (status, created) = self.admin("POST", "/api/v1/gateways", body);
        assert_eq!(status, 201, "{created}");
        GatewayRecord {
            id: created["gateway"]["id"].as_u64().unwrap(),
            enrolment_token: created["enrolment"]["token"].as_str().unwrap().to_string(),
        }
    }

    /// The gateway as the cloud shows it (with `last_seen.online` and
    /// `last_seen.switch_on`).
    pub fn gateway_view(&self, id: u64) -> Value {
        let (status, gateway) = self.admin("GET", &format!("/api/v1/gateways/{id}"), Value::Null);
        assert_eq!(status, 200, "{gateway}");
        gateway
    }

    /// Creates a remoteConnect User with a password and logs them in from
    /// the technician's namespace.
    pub fn create_technician(&self, name: &str) -> User {
        let body = json!({"name": name, "role": "remote_connect_user", "password": TECH_PASSWORD});
        let (status, created) = self.admin("POST", "/api/v1/users", body);
        assert_eq!(status, 201, "{created}");
        let id = created["user"]["id"].as_u64().unwrap();
        let (_, token) = self.login(&self.tech_ns, name, TECH_PASSWORD);
        User { id, name: name.to_string(), password: TECH_PASSWORD.to_string(), token }
    }

    /// A technician call from the technician's namespace, logging in again
    /// once if the token was refused.
    pub fn tech_call(&self, user: &mut User, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (status, answer) = self.api_from(&self.tech_ns, method, path, Some(&user.token), body.clone());
        if status != 401 {
            return (status, answer);
        }
        user.token = self.login(&self.tech_ns, &user.name, &user.password).1;
        self.api_from(&self.tech_ns, method, path, Some(&user.token), body)
    }

    /// The admin prepares a session released to `users`.
    pub fn create_session(
        &self,
        gateway_id: u64,
        targets: &[&str],
        users: &[u64],
        max_duration_s: u64,
        approval_required: bool,
    ) -> u64 {
        let body = json!({
            "name": format!("maintenance {}", now_ms() % 100_000),
            "gateway_id": gateway_id,
            "targets": targets,
            "released_to": users,
            "max_duration_s": max_duration_s,
            "approval_required": approval_required,
        });
        let (status, session) = self.admin("POST", "/api/v1/sessions", body);
        assert_eq!(status, 201, "{session}");
        session["id"].as_u64().unwrap()
    }

    /// The technician starts a session; the answer as it came (200 with the
    /// session, or a problem document).
    pub fn start_session(&self, user: &mut User, session_id: u64) -> (u16, Value) {
        self.tech_call(user, "POST", &format!("/api/v1/sessions/{session_id}/start"), Value::Null)
    }

    /// The session as the cloud shows it.
    pub fn session(&self, id: u64) -> Value {
        let (status, session) = self.admin("GET", &format!("/api/v1/sessions/{id}"), Value::Null);
        assert_eq!(status, 200, "{session}");
        session
    }

    /// The session's state (`prepared`, `waiting_for_approval`, `active`,
    /// `ended`, `expired`) and end reason (`{"by": "customer"}` ...).
    pub fn session_state(&self, id: u64) -> (String, Value) {
        let s = self.session(id);
        (s["state"].as_str().unwrap_or_default().to_string(), s["end_reason"].clone())
    }

    /// Waits until the session is in `state`; returns it.
    pub fn wait_session_state(&self, id: u64, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let reached = poll(timeout, || {
            last = self.session(id);
            last["state"] == state
        });
        assert!(reached, "session {id} did not become {state} within {timeout:?}: {last}");
        last
    }

    /// The whole audit log (every page), oldest first, filtered by the query
    /// string `filter` (for example `action=gateway.switch`; "" for all).
    pub fn audit(&self, filter: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut after: Option<u64> = None;
        loop {
            let mut path =
                format!("/api/v1/audit?limit=1000{}{filter}", if filter.is_empty() { "" } else { "&" });
            if let Some(after) = after {
                path += &format!("&after={after}");
            }
            let (status, page) = self.admin("GET", &path, Value::Null);
            assert_eq!(status, 200, "{page}");
            entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
            match page["next"].as_u64() {
                Some(next) if Some(next) != after => after = Some(next),
                _ => break,
            }
        }
        entries
    }

    /// The technician asks for a configuration for a fresh key pair, gets the
    /// wg-quick file, and brings the tunnel up with wireguard-go.
    pub fn technician_tunnel(&self, user: &mut User, session_id: u64) -> TechTunnel {
        let keys = Keys::generate(&self.tech_ns);
        let (status, body) = self.request_wg_quick(user, session_id, &keys.public);
        assert_eq!(status, 200, "wg-quick for session {session_id}: {body}");
        let wg_quick = body.as_str().unwrap().to_string();
        self.tunnel_from_wg_quick(keys, wg_quick)
    }

    /// Brings up a tunnel from a wg-quick file issued for `keys`.
    pub fn tunnel_from_wg_quick(&self, keys: Keys, wg_quick: String) -> TechTunnel {
        let parsed = WgQuick::parse(&wg_quick);
        let address =
            strip_len(parsed.addresses.first().expect("no Address in the wg-quick file")).to_string();
        let proxies = parse_targets(&wg_quick);
        let go = WireguardGo::from_wg_quick(&self.lab, &self.tech_ns, &wg_quick, &keys.private);
        TechTunnel { go, keys, wg_quick, address, proxies }
    }

    /// A stock wireguard-go in the office standing in for a gateway, for the
    /// technician's side without one: tunnel address 100.96.0.1/24, the
    /// technician as its one peer at 100.96.0.2, and the proxy address
    /// 100.96.0.100 on its interface.
    pub fn office_wireguard(&self, keys: &Keys, technician_public: &str) -> WireguardGo {
        let go = WireguardGo::start(
            &self.lab,
            &self.office_ns,
            keys,
            GATEWAY_WG_PORT,
            "100.96.0.1/24",
            &PeerSpec { public: technician_public, allowed_ips: "100.96.0.2/32", endpoint: None, psk: None },
        );
        self.office_ns.add_addr(&go.ifname, "100.96.0.100/32").unwrap();
        go
    }

    /// `POST /api/v1/sessions/{id}/config/wg-quick`; the body is the file as
    /// a JSON string on success, else the problem document.
    pub fn request_wg_quick(&self, user: &mut User, session_id: u64, public_key: &str) -> (u16, Value) {
        let path = format!("/api/v1/sessions/{session_id}/config/wg-quick");
        let body = json!({"public_key": public_key});
        let (addr, token, pin) = (self.cloud_addr(), user.token.clone(), self.cloud_pin.clone());
        let fetch = move |token: String| {
            let path = path.clone();
            let body = body.clone();
            let pin = pin.clone();
            move || match pin {
                Some(pin) => {
                    let bearer = format!("Bearer {token}");
                    let headers = [("Authorization", bearer.as_str())];
                    let (status, _, text) = crate::control_gateway::pinned_request(
                        addr,
                        &pin,
                        "POST",
                        &path,
                        &headers,
                        Some(&body),
                    );
                    (status, text)
                }
                None => crate::cloud::raw_call(addr, "POST", &path, Some(&token), &body)
                    .unwrap_or_else(|e| panic!("POST {path}: {e}")),
            }
        };
        let (mut status, mut text) = self.tech_ns.run_in(fetch(token)).unwrap();
        if status == 401 {
            user.token = self.login(&self.tech_ns, &user.name, &user.password).1;
            (status, text) = self.tech_ns.run_in(fetch(user.token.clone())).unwrap();
        }
        match status {
            200 => (200, Value::String(text)),
            _ => (status, serde_json::from_str(&text).unwrap_or(Value::String(text))),
        }
    }

    // -------------------------------------------------------------- gateway

    /// Writes the gateway's configuration file.
    pub fn write_gateway_config(&self) {
        let text = format!(
            "data_dir = {:?}\ncontrol_socket = {:?}\n\n[uplink]\ninterface = {:?}\nwireguard_port = {GATEWAY_WG_PORT}\n\n\
             [lan]\ninterface = {:?}\n\n[tunnel]\ninterface = {:?}\ntransport = \"auto\"\n\n[metrics]\nlisten = \"127.0.0.1:{GATEWAY_METRICS_PORT}\"\n",
            self.gateway_data.to_str().unwrap(),
            self.gateway_socket.to_str().unwrap(),
            self.gw_uplink_if,
            self.gw_lan_if,
            self.gw_tun_if,
        );
        std::fs::write(&self.gateway_config, text).unwrap();
    }

    /// Runs `ferry-gateway --config <file> <args>` in the gateway namespace
    /// to completion.
    pub fn gateway_cmd(&self, args: &[&str]) -> Output {
        let mut cmd = self.gw_ns.command(bin_path("ferry-gateway"));
        cmd.arg("--config").arg(&self.gateway_config).args(args);
        cmd.output().unwrap()
    }

    /// The same; a failure panics with its output. Returns stdout.
    pub fn gateway_ok(&self, args: &[&str]) -> String {
        let out = self.gateway_cmd(args);
        assert!(
            out.status.success(),
            "ferry-gateway {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ferry-gateway enroll --cloud <url> --token <token>` (and `--pin`
    /// with the cloud's fingerprint over HTTPS).
    pub fn enroll(&self, token: &str) -> String {
        let url = self.cloud_url();
        let mut args = vec!["enroll", "--cloud", &url, "--token", token];
        if let Some(pin) = &self.cloud_pin {
            args.extend(["--pin", pin]);
        }
        self.gateway_ok(&args)
    }

    /// Starts `ferry-gateway run` and waits for "ferry-gateway ready".
    pub fn start_gateway(&mut self) {
        assert!(self.gateway.is_none(), "the gateway runs already");
        let mut cmd = self.gw_ns.command(bin_path("ferry-gateway"));
        cmd.arg("--config").arg(&self.gateway_config).args(["--log", "debug", "run"]);
        let mut gateway = self.gw_ns.spawn(cmd).unwrap();
        gateway.wait_for_output("ferry-gateway ready", Duration::from_secs(30)).unwrap();
        self.gateway = Some(gateway);
    }

    /// The gateway's Prometheus text from `/metrics`.
    pub fn gateway_metrics(&self) -> String {
        http_get_path(&self.gw_ns, "127.0.0.1", GATEWAY_METRICS_PORT, "/metrics", Duration::from_secs(5))
            .expect("the gateway's /metrics")
    }

    /// One sample of the gateway's metrics, by its name with labels exactly
    /// as exposed (`ferry_gateway_guard_indices`,
    /// `ferry_gateway_guard_packets_total{outcome="allow_transport"}`); 0 if
    /// absent.
    pub fn gateway_metric(&self, sample: &str) -> f64 {
        metric_value(&self.gateway_metrics(), sample)
    }

    /// SIGTERM and a clean exit within 10 s.
    pub fn stop_gateway(&mut self) {
        let mut gateway = self.gateway.take().expect("the gateway is not running");
        gateway.signal(Signal::SIGTERM).unwrap();
        let status = gateway.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "ferry-gateway after SIGTERM: {status}\n{}", gateway.stderr());
    }

    /// SIGKILL, as a crash or power cut ends it.
    pub fn kill_gateway(&mut self) {
        let mut gateway = self.gateway.take().expect("the gateway is not running");
        gateway.signal(Signal::SIGKILL).unwrap();
        gateway.wait_timeout(Duration::from_secs(10)).unwrap();
    }

    /// What the running gateway logged so far.
    pub fn gateway_log(&self) -> String {
        self.gateway.as_ref().map(|g| format!("{}{}", g.stdout(), g.stderr())).unwrap_or_default()
    }

    /// `remote on|off|status`; returns stdout.
    pub fn remote(&self, what: &str) -> String {
        self.gateway_ok(&["remote", what])
    }

    /// The switch position `remote status` reports: the one word `on` or
    /// `off` (case-insensitive) in its output.
    pub fn switch_status(&self) -> bool {
        let out = self.remote("status");
        switch_word(&out).unwrap_or_else(|| panic!("`remote status` names neither on nor off: {out:?}"))
    }

    /// `sessions --json`.
    pub fn gateway_sessions(&self) -> Value {
        let out = self.gateway_ok(&["sessions", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("`sessions --json` is not JSON ({e}): {out:?}"))
    }

    /// Waits until the cloud shows the gateway online with the switch as given.
    pub fn wait_gateway_at_cloud(&self, gateway_id: u64, switch_on: bool) {
        let mut last = Value::Null;
        let reached = poll(Duration::from_secs(30), || {
            last = self.gateway_view(gateway_id);
            last["last_seen"]["online"] == true && last["last_seen"]["switch_on"] == switch_on
        });
        assert!(
            reached,
            "the cloud does not show the gateway online with switch {switch_on}: {last}\n{}",
            self.gateway_log()
        );
    }
}

impl Drop for GatewayLab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for (name, process) in [
            ("ferry-gateway", &mut self.gateway),
            ("ferry-relay", &mut self.relay),
            ("ferry-cloud", &mut self.cloud),
        ] {
            if let Some(process) = process {
                if panicking {
                    let tail = |s: String| {
                        s.lines()
                            .rev()
                            .take(60)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join("\n")
                    };
                    eprintln!(
                        "--- {name} stdout ---\n{}\n--- {name} stderr (tail) ---\n{}",
                        tail(process.stdout()),
                        tail(process.stderr())
                    );
                }
                process.kill();
            }
        }
        for server in &self.servers {
            server.stop();
        }
    }
}

/// The veth ports of a bridge.
fn port_of_bridge(ns: &Netns, bridge: &str) -> Vec<String> {
    ns.ip(&["-o", "link", "show", "master", bridge])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect()
}

/// The value of `sample` in Prometheus text, 0 if absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `on`/`off` as the only such word in `text`.
pub fn switch_word(text: &str) -> Option<bool> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .filter(|w| w == "on" || w == "off")
        .collect();
    match (words.iter().any(|w| w == "on"), words.iter().any(|w| w == "off")) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// Target name -> proxy address from the wg-quick file's `# target NAME:
/// ADDR PROTO PORTS` comments.
pub fn parse_targets(wg_quick: &str) -> BTreeMap<String, String> {
    wg_quick
        .lines()
        .filter_map(|l| l.strip_prefix("# target "))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once(": ")?;
            Some((name.to_string(), rest.split_whitespace().next()?.to_string()))
        })
        .collect()
}

/// The problem type slug of an error answer (`gateway-offline` for
/// `urn:ferry:problem:gateway-offline`).
pub fn problem_type(body: &Value) -> &str {
    body["type"].as_str().and_then(|t| t.strip_prefix("urn:ferry:problem:")).unwrap_or("")
}

// ------------------------------------------------------------------ waiting

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn poll(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`poll`], panicking with `what` on timeout.
pub fn wait_until(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    assert!(poll(timeout, condition), "timed out after {timeout:?} waiting for {what}");
}

// ----------------------------------------------------------------- services

/// A TCP service on a thread of the test whose listening socket lives in a
/// lab namespace; stopped on [`Server::stop`] or when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    pub addr: SocketAddr,
}

impl Server {
    /// Serves `body` to every HTTP request (HTTP/1.0 style, then closes).
    pub fn http(ns: &Netns, ip: &str, port: u16, body: &'static str) -> Server {
        Server::start(ns, ip, port, move |mut stream| {
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.shutdown(Shutdown::Write);
        })
    }

    /// Echoes every byte back until the peer closes.
    pub fn echo(ns: &Netns, ip: &str, port: u16) -> Server {
        Server::start(ns, ip, port, |mut stream| {
            let mut buffer = [0u8; 4096];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buffer[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }

    /// Counts connections and closes them at once (a port that must never
    /// see a connection).
    pub fn counter(ns: &Netns, ip: &str, port: u16) -> Server {
        Server::start(ns, ip, port, drop)
    }

    pub fn start(
        ns: &Netns,
        ip: &str,
        port: u16,
        handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
    ) -> Server {
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        let listener = ns
            .run_in(move || TcpListener::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                        let handle = handle.clone();
                        std::thread::spawn(move || handle(stream));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { stop, accepted, addr }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------ traffic

/// Connects from `ns` to `ip:port`, sends `payload`, half-closes when
/// `close_write`, and collects the answer until the peer closes, `expect`
/// bytes arrived, or `timeout` passes. Any failure is an `Err` with what
/// happened.
pub fn tcp_exchange(
    ns: &Netns,
    ip: &str,
    port: u16,
    payload: &[u8],
    expect: Option<usize>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let addr = SocketAddr::new(ip.parse::<IpAddr>().map_err(|e| e.to_string())?, port);
    let payload = payload.to_vec();
    ns.run_in(move || {
        let deadline = Instant::now() + timeout;
        let mut stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.write_all(&payload).map_err(|e| format!("send to {addr}: {e}"))?;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            if expect.is_some_and(|n| answer.len() >= n) {
                return Ok(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no complete answer from {addr} within {timeout:?} (got {} bytes)",
                    answer.len()
                ));
            }
            stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            match stream.read(&mut buffer) {
                Ok(0) if expect.is_none() && !answer.is_empty() => return Ok(answer),
                Ok(0) => return Err(format!("{addr} closed after {} bytes", answer.len())),
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(e) => return Err(format!("reading from {addr}: {e} (got {} bytes)", answer.len())),
            }
        }
    })
    .map_err(|e| e.to_string())?
}

fn curl_available() -> bool {
    static CURL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CURL.get_or_init(|| {
        std::process::Command::new("sh")
            .args(["-c", "command -v curl"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// An HTTP GET from `ns` to `http://ip:port/` within `timeout`: curl when
/// installed, else a plain HTTP/1.0 request. Returns the body.
pub fn http_get(ns: &Netns, ip: &str, port: u16, timeout: Duration) -> Result<String, String> {
    http_get_path(ns, ip, port, "/", timeout)
}

/// [`http_get`] for another path.
pub fn http_get_path(
    ns: &Netns,
    ip: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    if curl_available() {
        let max = format!("{:.1}", timeout.as_secs_f64());
        let url = format!("http://{ip}:{port}{path}");
        let out = ns
            .output("curl", &["-sS", "--noproxy", "*", "--max-time", &max, "--connect-timeout", &max, &url])
            .map_err(|e| e.to_string())?;
        return if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("curl {url}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        };
    }
    let request = format!("GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n");
    let answer = tcp_exchange(ns, ip, port, request.as_bytes(), None, timeout)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!("not an HTTP 200 answer: {text:?}")),
    }
}

/// Sends a message to an echo service and checks that the same bytes come back.
pub fn echo_round_trip(ns: &Netns, ip: &str, port: u16, timeout: Duration) -> Result<(), String> {
    let message = format!("ferry echo {} {}\n", ip, now_ms());
    let answer = tcp_exchange(ns, ip, port, message.as_bytes(), Some(message.len()), timeout)?;
    if answer == message.as_bytes() {
        Ok(())
    } else {
        Err(format!("echo answered {:?} to {message:?}", String::from_utf8_lossy(&answer)))
    }
}

/// Retries `attempt` until it succeeds or `timeout` passes (a first
/// handshake or a reconnect can take a moment); returns the last result.
pub fn eventually<T>(timeout: Duration, mut attempt: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let result = attempt();
        if result.is_ok() || Instant::now() >= deadline {
            return result;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that nothing answers from `ip:port` (connection refused, reset,
/// timed out, or no bytes back) within `timeout`: a bounded wait for a
/// behaviour, not a speed measurement.
pub fn assert_no_answer(ns: &Netns, ip: &str, port: u16, timeout: Duration, what: &str) {
    let probe = b"GET / HTTP/1.0\r\n\r\nferry probe\n";
    if let Ok(answer) = tcp_exchange(ns, ip, port, probe, Some(1), timeout) {
        panic!("{what}: {ip}:{port} answered from {}: {:?}", ns.name(), String::from_utf8_lossy(&answer));
    }
}

/// Asserts that a TCP connection from `from` (a device in the machine
/// network) toward `ip:port` (for example the technician's tunnel address,
/// where `listener` listens) fails within `timeout`, that the listener saw
/// no connection, and that a ping gets no answer either.
pub fn assert_lan_cannot_reach(from: &Netns, ip: &str, port: u16, listener: &Server, timeout: Duration) {
    let before = listener.accepted();
    let result = tcp_exchange(from, ip, port, b"from the machine network\n", Some(1), timeout);
    assert!(result.is_err(), "{} reached {ip}:{port}: {result:?}", from.name());
    assert_eq!(
        listener.accepted(),
        before,
        "the listener on {ip}:{port} accepted a connection from {}",
        from.name()
    );
    let ping = from.output("ping", &["-c", "2", "-i", "0.3", "-W", "1", ip]).unwrap();
    assert!(!ping.status.success(), "{} pings {ip}: {}", from.name(), String::from_utf8_lossy(&ping.stdout));
}

/// Both whitelisted services answer through the tunnel, the rest does not,
/// and the technician's own LAN stays theirs.
pub fn assert_whitelist(lab: &GatewayLab, tunnel: &TechTunnel) {
    let tech = &lab.tech_ns;
    let (web, echo) = (tunnel.proxy("plc-web"), tunnel.proxy("echo"));
    assert_ne!(web, TARGET_A_IP, "a proxy address, not the machine's own");
    assert_eq!(http_get(tech, web, HTTP_PORT, Duration::from_secs(5)).unwrap(), PLC_PAGE);
    eventually(Duration::from_secs(5), || echo_round_trip(tech, echo, ECHO_PORT, Duration::from_secs(5)))
        .unwrap();
    // Same target, another port with a listener behind it.
    assert_no_answer(tech, web, OTHER_HTTP_PORT, Duration::from_secs(3), "plc-web's port 8081");
    // The other target's port that no session whitelists.
    assert_no_answer(tech, echo, OTHER_ECHO_PORT, Duration::from_secs(3), "echo's port 7001");
    // Overlap: 192.168.50.10 is still the technician's own home device.
    assert_eq!(http_get(tech, HOME_DEVICE_IP, HTTP_PORT, Duration::from_secs(5)).unwrap(), HOME_PAGE);
    let route = tech.ip(&["route", "get", HOME_DEVICE_IP]).unwrap();
    assert!(route.contains(&lab.tech_lan_if), "{route}");
}

/// A running echo loop over one TCP connection: a message every 50 ms, each
/// answer's arrival time recorded. For "traffic stops within N": look at
/// [`EchoLoop::answers_after`].
pub struct EchoLoop {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoLoop {
    /// Connects from `ns` and starts the loop; fails if the connection or a
    /// first round trip does not work within `timeout`.
    pub fn start(ns: &Netns, ip: &str, port: u16, timeout: Duration) -> Result<EchoLoop, String> {
        let addr = SocketAddr::new(ip.parse::<IpAddr>().map_err(|e| e.to_string())?, port);
        let stream = ns
            .run_in(move || TcpStream::connect_timeout(&addr, timeout))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (stop2, answers2) = (stop.clone(), answers.clone());
        let thread = std::thread::spawn(move || {
            let mut stream = stream;
            let mut buffer = [0u8; 1024];
            let mut next_send = Instant::now();
            let mut n: u64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                if Instant::now() >= next_send {
                    n += 1;
                    if stream.write_all(format!("{n:016}\n").as_bytes()).is_err() {
                        return;
                    }
                    next_send += Duration::from_millis(50);
                }
                match stream.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(_) => answers2.lock().unwrap().push(Instant::now()),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        let echo = EchoLoop { stop, answers, thread: Some(thread) };
        let started = Instant::now();
        if !poll(timeout, || echo.answers_after(started) > 0) {
            return Err(format!("no echo answer from {addr} within {timeout:?}"));
        }
        Ok(echo)
    }

    /// How many answers (reads with data) arrived after `t`.
    pub fn answers_after(&self, t: Instant) -> usize {
        self.answers.lock().unwrap().iter().filter(|a| **a > t).count()
    }

    pub fn last_answer(&self) -> Option<Instant> {
        self.answers.lock().unwrap().last().copied()
    }
}

impl Drop for EchoLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Milliseconds since the Unix epoch, the clock of `expires_ms`.
pub fn unix_ms() -> u64 {
    now_ms()
}
