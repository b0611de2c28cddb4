//! The world's namespaces, links and NAT routers, and the machines' services.

use std::{path::PathBuf, sync::Mutex};

use ferry_ebpf::pass::PassProgram;
use ferry_lab::{Lab, Nat, Netns, Process, Router};

use crate::{
    addresses::*,
    api::Api,
    relays::{RelayNode, relay_name},
    services::Server,
    strip_len,
};

/// Where the technician sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Technician {
    /// On a public address of their own (192.0.2.2), with their home LAN
    /// on a second interface.
    Public,
    /// At home behind a NAT router with this behaviour, on the same LAN as
    /// their home device.
    BehindNat(Nat),
    /// On the customer site's LAN beside the gateway ([`TECH_SITE_IP`]),
    /// behind the same NAT router, with their home LAN on a second
    /// interface as with [`Technician::Public`]. Not with a public site.
    OnSiteLan,
}

/// Where the gateway sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// Behind the customer's NAT router (`cust`) with this behaviour;
    /// [`Options::tcp443_only`] makes a cone router a TCP-443-only firewall.
    BehindNat(Nat),
    /// No router: the gateway's uplink on the internet at [`SITE_WAN_IP`].
    Public,
}

/// How a world is built.
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
    /// first start (naming its address); gateways and relays pin it, API
    /// calls trust only it. Otherwise plain HTTP.
    pub cloud_tls: bool,
    pub technician: Technician,
    pub site: Site,
    /// Start the tests' services on the machines and the home device (see
    /// the crate docs); off, the machines run nothing until the caller
    /// starts something there.
    pub lab_services: bool,
    /// The cloud's storage (`ferry-cloud serve --storage`): a PostgreSQL
    /// URL, which lets further replicas join
    /// ([`World::start_cloud_replica`]). None: sled in the world's folder.
    pub cloud_storage: Option<String>,
    /// The gateway runs under libfaketime with a timestamp file in the
    /// world's folder, so that [`World::step_gateway_clock`] can step its
    /// wall clock (CLOCK_REALTIME) alone, as an NTP step or `date -s`
    /// would, while its monotonic clocks and every other process's clock
    /// stay as they are. Needs Debian's `libfaketime` (`cargo xtask setup`).
    pub gateway_faketime: bool,
    /// A second relay in a namespace of its own on the internet
    /// ([`crate::RELAYS`]`[1]`), registered and started by
    /// [`World::start_relay_at`]`(1)`; the cloud picks one of the two for
    /// each allocation.
    pub second_relay: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tcp443_only: false,
            relay_xdp: "off",
            relay_tls: false,
            cloud_tls: false,
            technician: Technician::Public,
            site: Site::BehindNat(Nat::Cone),
            lab_services: true,
            cloud_storage: None,
            gateway_faketime: false,
            second_relay: false,
        }
    }
}

pub struct World {
    pub lab: Lab,
    pub options: Options,
    pub inet: Netns,
    pub cloud_ns: Netns,
    pub relay_ns: Netns,
    /// The technician's machine.
    pub tech_ns: Netns,
    /// The device on the technician's own LAN.
    pub home_ns: Netns,
    pub office_ns: Netns,
    /// The customer site's NAT router; none on a [`Site::Public`].
    pub router: Option<Router>,
    /// The technician's home router, behind a NAT only.
    pub home_router: Option<Router>,
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
    /// The technician's interface toward the internet (or their home router).
    pub tech_if: String,
    /// The technician's own LAN interface (192.168.50.77/24).
    pub tech_lan_if: String,
    pub gateway_config: PathBuf,
    pub gateway_data: PathBuf,
    pub gateway_socket: PathBuf,
    /// libfaketime's timestamp file for the gateway, with
    /// [`Options::gateway_faketime`]: its wall clock's offset.
    pub gateway_clock_file: PathBuf,
    pub cloud_data: PathBuf,
    pub cloud: Option<Process>,
    /// Further `ferry-cloud serve` replicas on the same storage, with the
    /// port each listens on at [`CLOUD_IP`].
    pub cloud_replicas: Vec<(u16, Option<Process>)>,
    pub relay: Option<Process>,
    pub gateway: Option<Process>,
    /// The admin's current access token, once logged in.
    pub admin_token: Mutex<Option<String>>,
    pub relay_id: Option<u64>,
    /// `ferry-relay`'s arguments, for a restart with the same identity.
    pub(crate) relay_args: Vec<String>,
    /// With `relay_tls`: the fingerprint of the relay's certificate.
    pub relay_pin: Option<String>,
    /// With `cloud_tls`: the fingerprint of the cloud's certificate, once it
    /// started.
    pub cloud_pin: Option<String>,
    /// How API calls reach the cloud (set when it starts).
    pub(crate) api: Option<Api>,
    /// The port of the replica that API calls go to.
    pub(crate) api_port: u16,
    /// The relays after the first ([`Options::second_relay`]): index 1 on.
    pub extra_relays: Vec<RelayNode>,
    pub(crate) servers: Vec<Server>,
    pub(crate) _xdp: Vec<PassProgram>,
}

impl World {
    /// Builds the topology and, with [`Options::lab_services`], starts the
    /// machines' services; no Ferry process runs yet.
    pub fn new(options: Options) -> World {
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
        let (office_ns, _) = host("office", "192.0.2.129/25", "192.0.2.130/25");
        let mut relays = vec![(relay_ns, relay_veth)];
        if options.second_relay {
            relays.push(host("relay-2", "203.0.113.22/29", &format!("{RELAY2_IP}/29")));
        }
        if options.relay_xdp != "off" {
            for (relay_ns, relay_veth) in &relays {
                // XDP_TX toward the router only delivers with XDP there; the
                // relay's FIB lookups need forwarding on its interface.
                let router_if = relay_veth.a.clone();
                xdp.push(inet.run_in(move || PassProgram::attach(&router_if)).unwrap().unwrap());
                relay_ns.sysctl(&format!("net.ipv4.conf.{}.forwarding=1", relay_veth.b)).unwrap();
            }
        }
        let mut relays = relays.into_iter();
        let (relay_ns, relay_veth) = relays.next().expect("the first relay");
        let extra_relays: Vec<RelayNode> = relays.map(|(ns, veth)| RelayNode::new(ns, veth.b)).collect();
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

        // The customer's site: the gateway behind a NAT router, or on the
        // internet itself.
        let site_nat = match (options.site, options.tcp443_only) {
            (Site::Public, false) => None,
            (Site::BehindNat(Nat::Cone | Nat::TcpOnly443), true) => Some(Nat::TcpOnly443),
            (Site::BehindNat(nat), false) => Some(nat),
            (site, true) => panic!("a TCP-443-only site is a cone NAT router with a firewall, not {site:?}"),
        };
        let gw_ns = lab.netns("gw").unwrap();
        let (router, gw_uplink_if) = match site_nat {
            Some(nat) => {
                let router = lab
                    .nat_router(
                        "cust",
                        nat,
                        &inet,
                        "198.51.100.1/24",
                        &format!("{SITE_WAN_IP}/24"),
                        "10.20.0.1/24",
                    )
                    .unwrap();
                tx_off(&router.ns, &router.wan_if);
                let gw_uplink_if = router.attach(&gw_ns, &format!("{GW_UPLINK_IP}/24")).unwrap();
                (Some(router), gw_uplink_if)
            }
            None => {
                let veth =
                    lab.wire(&inet, &["198.51.100.1/24"], &gw_ns, &[&format!("{SITE_WAN_IP}/24")]).unwrap();
                gw_ns.ip(&["route", "add", "default", "via", "198.51.100.1"]).unwrap();
                tx_off(&inet, &veth.a);
                // Frames the gateway sends with XDP_TX arrive at the router's end.
                let port = veth.a.clone();
                xdp.push(inet.run_in(move || PassProgram::attach(&port)).unwrap().unwrap());
                (None, veth.b)
            }
        };
        tx_off(&gw_ns, &gw_uplink_if);

        // The technician, with their own LAN and a device at a machine's address.
        let (tech_ns, home_ns, home_router, tech_if, tech_lan_if) = match options.technician {
            kind @ (Technician::Public | Technician::OnSiteLan) => {
                let (tech_ns, tech_if) = match (kind, &router) {
                    (Technician::OnSiteLan, Some(router)) => {
                        let tech_ns = lab.netns("tech").unwrap();
                        let tech_if = router.attach(&tech_ns, &format!("{TECH_SITE_IP}/24")).unwrap();
                        tx_off(&tech_ns, &tech_if);
                        (tech_ns, tech_if)
                    }
                    (Technician::OnSiteLan, None) => panic!("a public site has no LAN for the technician"),
                    _ => {
                        let (tech_ns, tech_veth) = host("tech", "192.0.2.1/25", &format!("{TECH_IP}/25"));
                        (tech_ns, tech_veth.b)
                    }
                };
                let home_ns = lab.netns("home").unwrap();
                let home = lab
                    .wire(
                        &tech_ns,
                        &[&format!("{TECH_LAN_IP}/24")],
                        &home_ns,
                        &[&format!("{HOME_DEVICE_IP}/24")],
                    )
                    .unwrap();
                tx_off(&tech_ns, &home.a);
                tx_off(&home_ns, &home.b);
                (tech_ns, home_ns, None, tech_if, home.a)
            }
            Technician::BehindNat(nat) => {
                let router = lab
                    .nat_router(
                        "home-rt",
                        nat,
                        &inet,
                        "192.0.2.1/25",
                        &format!("{TECH_IP}/25"),
                        &format!("{HOME_ROUTER_LAN_IP}/24"),
                    )
                    .unwrap();
                tx_off(&router.ns, &router.wan_if);
                let tech_ns = lab.netns("tech").unwrap();
                let tech_if = router.attach(&tech_ns, &format!("{TECH_LAN_IP}/24")).unwrap();
                tx_off(&tech_ns, &tech_if);
                let home_ns = lab.netns("home").unwrap();
                let home_if = router.attach(&home_ns, &format!("{HOME_DEVICE_IP}/24")).unwrap();
                tx_off(&home_ns, &home_if);
                for port in port_of_bridge(&router.ns, &router.lan_if) {
                    tx_off(&router.ns, &port);
                }
                (tech_ns, home_ns, Some(router), tech_if.clone(), tech_if)
            }
        };

        // Frames the gateway sends with XDP_TX arrive at the site LAN's ports.
        if let Some(router) = &router {
            for port in port_of_bridge(&router.ns, &router.lan_if) {
                tx_off(&router.ns, &port);
                xdp.push(router.ns.run_in(move || PassProgram::attach(&port)).unwrap().unwrap());
            }
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

        let servers = if options.lab_services {
            vec![
                Server::http(&target_a, TARGET_A_IP, HTTP_PORT, PLC_PAGE),
                Server::http(&target_a, TARGET_A_IP, OTHER_HTTP_PORT, ADMIN_PAGE),
                Server::echo(&target_b, TARGET_B_IP, ECHO_PORT),
                Server::echo(&target_b, TARGET_B_IP, OTHER_ECHO_PORT),
                Server::http(&home_ns, HOME_DEVICE_IP, HTTP_PORT, HOME_PAGE),
            ]
        } else {
            Vec::new()
        };

        let dir = lab.dir().to_path_buf();
        let gw_tun_if = lab.ifname("tun");
        let world = World {
            options,
            inet,
            cloud_ns,
            relay_ns,
            tech_ns,
            home_ns,
            office_ns,
            router,
            home_router,
            gw_ns,
            lan_ns,
            target_a,
            target_b,
            probe_ns,
            gw_uplink_if,
            gw_lan_if,
            gw_tun_if,
            relay_if: relay_veth.b,
            tech_if,
            tech_lan_if,
            gateway_config: dir.join("gateway.toml"),
            gateway_data: dir.join("gw-data"),
            gateway_socket: dir.join("gw.sock"),
            gateway_clock_file: dir.join("gw-faketime"),
            cloud_data: dir.join("cloud-data"),
            cloud: None,
            cloud_replicas: Vec::new(),
            relay: None,
            gateway: None,
            admin_token: Mutex::new(None),
            relay_id: None,
            relay_args: Vec::new(),
            relay_pin: None,
            cloud_pin: None,
            api: None,
            api_port: CLOUD_PORT,
            extra_relays,
            servers,
            _xdp: xdp,
            lab,
        };
        world.write_gateway_config();
        world
    }

    /// Every namespace of the world with its role, for people looking
    /// around (`ip netns exec <name> ...`).
    pub fn namespaces(&self) -> Vec<(&'static str, &Netns)> {
        let mut all = vec![("internet", &self.inet), ("cloud", &self.cloud_ns), ("relay", &self.relay_ns)];
        for relay in &self.extra_relays {
            all.push(("second relay", &relay.ns));
        }
        all.extend([
            ("office", &self.office_ns),
            ("technician", &self.tech_ns),
            ("home device", &self.home_ns),
            ("gateway", &self.gw_ns),
            ("machine network switch", &self.lan_ns),
            ("target-a", &self.target_a),
            ("target-b", &self.target_b),
            ("probe", &self.probe_ns),
        ]);
        if let Some(router) = &self.router {
            all.push(("site router", &router.ns));
        }
        if let Some(home_router) = &self.home_router {
            all.push(("home router", &home_router.ns));
        }
        all
    }

    /// The customer's router; panics on a [`Site::Public`], which has none.
    pub fn site_router(&self) -> &Router {
        self.router.as_ref().expect("a public site has no router")
    }

    /// Connections accepted so far by the lab service on `ip:port` (see
    /// [`Options::lab_services`]); `None` if no lab service listens there.
    pub fn service_connections(&self, ip: &str, port: u16) -> Option<u64> {
        let addr = std::net::SocketAddr::new(ip.parse().ok()?, port);
        self.servers.iter().find(|s| s.addr == addr).map(Server::accepted)
    }

    /// Where the internet sees the technician.
    pub fn tech_public_ip(&self) -> &'static str {
        match self.options.technician {
            Technician::OnSiteLan => SITE_WAN_IP,
            _ => TECH_IP,
        }
    }
}

impl World {
    /// The last `lines` lines of the Ferry processes' output, for a report
    /// of what went wrong.
    pub fn log_tails(&self, lines: usize) -> String {
        let tail = |s: String| {
            let all: Vec<&str> = s.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        let mut out = String::new();
        for (name, process) in
            [("ferry-gateway", &self.gateway), ("ferry-relay", &self.relay), ("ferry-cloud", &self.cloud)]
        {
            if let Some(process) = process {
                out += &format!(
                    "--- {name} stdout ---\n{}\n--- {name} stderr (tail) ---\n{}\n",
                    tail(process.stdout()),
                    tail(process.stderr())
                );
            }
        }
        for (index, relay) in self.extra_relays.iter().enumerate() {
            if let Some(process) = &relay.process {
                let name = relay_name(index + 1);
                out += &format!(
                    "--- {name} stdout ---\n{}\n--- {name} stderr (tail) ---\n{}\n",
                    tail(process.stdout()),
                    tail(process.stderr())
                );
            }
        }
        for (port, process) in &self.cloud_replicas {
            if let Some(process) = process {
                out += &format!(
                    "--- ferry-cloud :{port} stdout ---\n{}\n--- ferry-cloud :{port} stderr (tail) ---\n{}\n",
                    tail(process.stdout()),
                    tail(process.stderr())
                );
            }
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(60));
        }
        let replicas = self.cloud_replicas.iter_mut().map(|(_, process)| process);
        let relays = self.extra_relays.iter_mut().map(|relay| &mut relay.process);
        for process in [&mut self.gateway, &mut self.relay, &mut self.cloud]
            .into_iter()
            .chain(relays)
            .chain(replicas)
            .flatten()
        {
            process.kill();
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
