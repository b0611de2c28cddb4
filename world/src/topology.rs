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
    /// Further customer sites, each with a gateway of its own behind its
    /// own NAT router (or public) and its own machine network
    /// ([`crate::SITES`]`[1..]`); at most two. Sites are reached by index
    /// ([`World::site`], [`World::start_gateway_at`] ...), 0 being the one
    /// of the picture and of the `gw*` fields. [`Options::tcp443_only`]
    /// concerns site 0 alone.
    pub extra_sites: Vec<Site>,
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
            extra_sites: Vec::new(),
        }
    }
}

/// A customer site after the first ([`Options::extra_sites`]): its router,
/// gateway host and machine network, built as site 0's, and its gateway's
/// files and process.
pub struct SiteNode {
    pub site: Site,
    pub addrs: SiteAddrs,
    pub router: Option<Router>,
    /// The internet router's end of a public site's link.
    pub inet_if: Option<String>,
    pub gw_ns: Netns,
    pub gw_uplink_if: String,
    pub gw_lan_if: String,
    pub gw_tun_if: String,
    pub lan_ns: Netns,
    pub target_a: Netns,
    pub target_b: Netns,
    pub probe_ns: Netns,
    pub gateway_config: PathBuf,
    pub gateway_data: PathBuf,
    pub gateway_socket: PathBuf,
    pub gateway_clock_file: PathBuf,
    pub gateway: Option<Process>,
}

/// One site of the world by index, site 0's fields and an extra site's
/// alike (see [`World::site`]).
pub struct SiteView<'a> {
    pub index: usize,
    pub site: Site,
    /// The internet router's namespace.
    pub inet: &'a Netns,
    pub addrs: SiteAddrs,
    pub router: Option<&'a Router>,
    /// The internet router's end of a public site's link.
    pub inet_if: Option<&'a str>,
    pub gw_ns: &'a Netns,
    pub gw_uplink_if: &'a str,
    pub gw_lan_if: &'a str,
    pub gw_tun_if: &'a str,
    pub lan_ns: &'a Netns,
    pub target_a: &'a Netns,
    pub target_b: &'a Netns,
    pub probe_ns: &'a Netns,
    pub gateway_config: &'a std::path::Path,
    pub gateway_data: &'a std::path::Path,
    pub gateway_socket: &'a std::path::Path,
    pub gateway_clock_file: &'a std::path::Path,
}

impl SiteView<'_> {
    /// Where the site's link to the internet can be cut or impaired: the
    /// NAT router's WAN interface (and its default route, which a link set
    /// down takes with it), or the internet router's end of a public
    /// site's link.
    pub fn wan_link(&self) -> (&Netns, &str, Option<&'static str>) {
        match (self.router, self.inet_if) {
            (Some(router), _) => (&router.ns, &router.wan_if, Some(self.addrs.inet_ip())),
            (None, Some(inet_if)) => (self.inet, inet_if, None),
            (None, None) => unreachable!("a site has a router or a link on the internet"),
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
    /// The internet router's end of site 0's link on a [`Site::Public`].
    pub(crate) gw_inet_if: Option<String>,
    /// The sites after the first ([`Options::extra_sites`]): index 1 on.
    pub extra_sites: Vec<SiteNode>,
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
        let nat = site_nat(options.site, options.tcp443_only);
        let gw_ns = lab.netns("gw").unwrap();
        let Uplink { router, gw_uplink_if, inet_if: gw_inet_if } =
            site_uplink(&lab, &inet, "", nat, &SITES[0], &gw_ns, &mut xdp);

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

        if let Some(router) = &router {
            pass_on_router_ports(router, &mut xdp);
        }
        let MachineNetwork { lan_ns, gw_lan_if, target_a, target_b, probe_ns } =
            machine_network(&lab, "", &gw_ns, &SITES[0], &mut xdp);
        let mut servers = if options.lab_services {
            let mut servers = machine_services(&target_a, &target_b, &SITES[0]);
            servers.push(Server::http(&home_ns, HOME_DEVICE_IP, HTTP_PORT, HOME_PAGE));
            servers
        } else {
            Vec::new()
        };

        // The further sites, built as the first (but for a technician on
        // their LAN): each its own router, gateway and machine network.
        assert!(options.extra_sites.len() < SITES.len(), "the world has room for {} sites", SITES.len());
        let dir = lab.dir().to_path_buf();
        let mut extra_sites = Vec::new();
        for (k, site) in options.extra_sites.iter().enumerate() {
            let index = k + 1;
            let addrs = SITES[index];
            let suffix = format!("-{}", index + 1);
            let gw_ns = lab.netns(&format!("gw{suffix}")).unwrap();
            let uplink = site_uplink(&lab, &inet, &suffix, site_nat(*site, false), &addrs, &gw_ns, &mut xdp);
            if let Some(router) = &uplink.router {
                pass_on_router_ports(router, &mut xdp);
            }
            let machines = machine_network(&lab, &suffix, &gw_ns, &addrs, &mut xdp);
            if options.lab_services {
                servers.extend(machine_services(&machines.target_a, &machines.target_b, &addrs));
            }
            extra_sites.push(SiteNode {
                site: *site,
                addrs,
                router: uplink.router,
                inet_if: uplink.inet_if,
                gw_ns,
                gw_uplink_if: uplink.gw_uplink_if,
                gw_lan_if: machines.gw_lan_if,
                gw_tun_if: lab.ifname("tun"),
                lan_ns: machines.lan_ns,
                target_a: machines.target_a,
                target_b: machines.target_b,
                probe_ns: machines.probe_ns,
                gateway_config: dir.join(format!("gateway{suffix}.toml")),
                gateway_data: dir.join(format!("gw-data{suffix}")),
                gateway_socket: dir.join(format!("gw{suffix}.sock")),
                gateway_clock_file: dir.join(format!("gw-faketime{suffix}")),
                gateway: None,
            });
        }

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
            gw_inet_if,
            extra_sites,
            servers,
            _xdp: xdp,
            lab,
        };
        for index in 0..world.gateway_count() {
            world.write_gateway_config_at(index);
        }
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
        for node in &self.extra_sites {
            all.extend([
                ("another site's gateway", &node.gw_ns),
                ("another site's machine network switch", &node.lan_ns),
                ("another site's target-a", &node.target_a),
                ("another site's target-b", &node.target_b),
                ("another site's probe", &node.probe_ns),
            ]);
            if let Some(router) = &node.router {
                all.push(("another site's router", &router.ns));
            }
        }
        all
    }

    /// How many sites, so gateways, the world has: 1 and the
    /// [`Options::extra_sites`].
    pub fn gateway_count(&self) -> usize {
        1 + self.extra_sites.len()
    }

    /// Site `index` (0: the first, whose parts are also the `gw*`,
    /// `lan_ns`, `target_*` and `router` fields).
    pub fn site(&self, index: usize) -> SiteView<'_> {
        if index == 0 {
            return SiteView {
                index,
                site: self.options.site,
                inet: &self.inet,
                addrs: SITES[0],
                router: self.router.as_ref(),
                inet_if: self.gw_inet_if.as_deref(),
                gw_ns: &self.gw_ns,
                gw_uplink_if: &self.gw_uplink_if,
                gw_lan_if: &self.gw_lan_if,
                gw_tun_if: &self.gw_tun_if,
                lan_ns: &self.lan_ns,
                target_a: &self.target_a,
                target_b: &self.target_b,
                probe_ns: &self.probe_ns,
                gateway_config: &self.gateway_config,
                gateway_data: &self.gateway_data,
                gateway_socket: &self.gateway_socket,
                gateway_clock_file: &self.gateway_clock_file,
            };
        }
        let node = self.extra_sites.get(index - 1).unwrap_or_else(|| panic!("the world has no site {index}"));
        SiteView {
            index,
            site: node.site,
            inet: &self.inet,
            addrs: node.addrs,
            router: node.router.as_ref(),
            inet_if: node.inet_if.as_deref(),
            gw_ns: &node.gw_ns,
            gw_uplink_if: &node.gw_uplink_if,
            gw_lan_if: &node.gw_lan_if,
            gw_tun_if: &node.gw_tun_if,
            lan_ns: &node.lan_ns,
            target_a: &node.target_a,
            target_b: &node.target_b,
            probe_ns: &node.probe_ns,
            gateway_config: &node.gateway_config,
            gateway_data: &node.gateway_data,
            gateway_socket: &node.gateway_socket,
            gateway_clock_file: &node.gateway_clock_file,
        }
    }

    /// Site `index`'s gateway process, while it runs.
    pub fn gateway_process_at(&self, index: usize) -> Option<&Process> {
        if index == 0 { self.gateway.as_ref() } else { self.site_node(index).gateway.as_ref() }
    }

    /// The same, to poll, signal or take it.
    pub fn gateway_process_mut_at(&mut self, index: usize) -> &mut Option<Process> {
        if index == 0 {
            &mut self.gateway
        } else {
            &mut self
                .extra_sites
                .get_mut(index - 1)
                .unwrap_or_else(|| panic!("the world has no site {index}"))
                .gateway
        }
    }

    fn site_node(&self, index: usize) -> &SiteNode {
        self.extra_sites.get(index.wrapping_sub(1)).unwrap_or_else(|| panic!("the world has no site {index}"))
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
        for (index, node) in self.extra_sites.iter().enumerate() {
            if let Some(process) = &node.gateway {
                let name = crate::gateway_name(index + 1);
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
        let gateways = self.extra_sites.iter_mut().map(|node| &mut node.gateway);
        for process in [&mut self.gateway, &mut self.relay, &mut self.cloud]
            .into_iter()
            .chain(gateways)
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

/// Turns TX checksum offload off on `ifname`, so that every frame carries a
/// full checksum as on a wire.
fn tx_off(ns: &Netns, ifname: &str) {
    ns.exec("ethtool", &["-K", ifname, "tx", "off"]).unwrap();
}

/// The NAT a site's router runs; none for a public site.
fn site_nat(site: Site, tcp443_only: bool) -> Option<Nat> {
    match (site, tcp443_only) {
        (Site::Public, false) => None,
        (Site::BehindNat(Nat::Cone | Nat::TcpOnly443), true) => Some(Nat::TcpOnly443),
        (Site::BehindNat(nat), false) => Some(nat),
        (site, true) => panic!("a TCP-443-only site is a cone NAT router with a firewall, not {site:?}"),
    }
}

/// A site's way to the internet.
struct Uplink {
    router: Option<Router>,
    gw_uplink_if: String,
    /// The internet router's end of a public site's link.
    inet_if: Option<String>,
}

/// The gateway `gw_ns` of the site at `addrs` behind a NAT router
/// (`cust{suffix}`) with `nat`, or with its uplink on the internet.
fn site_uplink(
    lab: &Lab,
    inet: &Netns,
    suffix: &str,
    nat: Option<Nat>,
    addrs: &SiteAddrs,
    gw_ns: &Netns,
    xdp: &mut Vec<PassProgram>,
) -> Uplink {
    let wan_cidr = format!("{}/{}", addrs.wan_ip, addrs.wan_len);
    let uplink = match nat {
        Some(nat) => {
            let router = lab
                .nat_router(
                    &format!("cust{suffix}"),
                    nat,
                    inet,
                    addrs.inet_cidr,
                    &wan_cidr,
                    addrs.router_lan_cidr,
                )
                .unwrap();
            tx_off(&router.ns, &router.wan_if);
            let len = addrs.router_lan_cidr.rsplit('/').next().unwrap_or("24");
            let gw_uplink_if = router.attach(gw_ns, &format!("{}/{len}", addrs.gw_uplink_ip)).unwrap();
            Uplink { router: Some(router), gw_uplink_if, inet_if: None }
        }
        None => {
            let veth = lab.wire(inet, &[addrs.inet_cidr], gw_ns, &[&wan_cidr]).unwrap();
            gw_ns.ip(&["route", "add", "default", "via", addrs.inet_ip()]).unwrap();
            tx_off(inet, &veth.a);
            // Frames the gateway sends with XDP_TX arrive at the router's end.
            let port = veth.a.clone();
            xdp.push(inet.run_in(move || PassProgram::attach(&port)).unwrap().unwrap());
            Uplink { router: None, gw_uplink_if: veth.b, inet_if: Some(veth.a) }
        }
    };
    tx_off(gw_ns, &uplink.gw_uplink_if);
    uplink
}

/// Frames a gateway sends with XDP_TX arrive at the site LAN's ports.
fn pass_on_router_ports(router: &Router, xdp: &mut Vec<PassProgram>) {
    for port in port_of_bridge(&router.ns, &router.lan_if) {
        tx_off(&router.ns, &port);
        xdp.push(router.ns.run_in(move || PassProgram::attach(&port)).unwrap().unwrap());
    }
}

/// A site's machine network.
struct MachineNetwork {
    lan_ns: Netns,
    gw_lan_if: String,
    target_a: Netns,
    target_b: Netns,
    probe_ns: Netns,
}

/// The machine network behind `gw_ns`: a switch namespace (`lan{suffix}`)
/// with a bridge, the gateway's LAN port, target-a, target-b and the probe.
fn machine_network(
    lab: &Lab,
    suffix: &str,
    gw_ns: &Netns,
    addrs: &SiteAddrs,
    xdp: &mut Vec<PassProgram>,
) -> MachineNetwork {
    let lan_ns = lab.netns(&format!("lan{suffix}")).unwrap();
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
    let gw_lan_if = plug(gw_ns, &format!("{}/24", addrs.gw_lan_ip), xdp);
    let target_a = lab.netns(&format!("target-a{suffix}")).unwrap();
    let target_b = lab.netns(&format!("target-b{suffix}")).unwrap();
    let probe_ns = lab.netns(&format!("probe{suffix}")).unwrap();
    for (ns, ip) in
        [(&target_a, addrs.target_a_ip), (&target_b, addrs.target_b_ip), (&probe_ns, addrs.probe_ip)]
    {
        plug(ns, &format!("{ip}/24"), xdp);
        ns.ip(&["route", "add", "default", "via", addrs.gw_lan_ip]).unwrap();
    }
    MachineNetwork { lan_ns, gw_lan_if, target_a, target_b, probe_ns }
}

/// The tests' services on a site's machines (see [`Options::lab_services`]).
fn machine_services(target_a: &Netns, target_b: &Netns, addrs: &SiteAddrs) -> Vec<Server> {
    vec![
        Server::http(target_a, addrs.target_a_ip, HTTP_PORT, PLC_PAGE),
        Server::http(target_a, addrs.target_a_ip, OTHER_HTTP_PORT, ADMIN_PAGE),
        Server::echo(target_b, addrs.target_b_ip, ECHO_PORT),
        Server::echo(target_b, addrs.target_b_ip, OTHER_ECHO_PORT),
    ]
}
