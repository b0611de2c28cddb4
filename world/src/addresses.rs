//! The world's addresses, ports and fixed texts.

pub const CLOUD_IP: &str = "203.0.113.10";
pub const CLOUD_PORT: u16 = 7600;
pub const RELAY_IP: &str = "203.0.113.1";
pub const RELAY_PORTS: &str = "40000-40099";
pub const RELAY_WS: &str = "203.0.113.1:443";
pub const RELAY_STUN: &str = "203.0.113.1:3478";
/// `/metrics` of the relay on the relay namespace's own loopback.
pub const RELAY_METRICS: &str = "127.0.0.1:9478";
/// The second relay ([`crate::Options::second_relay`]): the next /29 of
/// the same documentation range, a port range of its own (so that an
/// endpoint names its relay by its port too), `/metrics` on its own
/// namespace's loopback.
pub const RELAY2_IP: &str = "203.0.113.17";
pub const RELAY2_PORTS: &str = "40100-40199";
pub const RELAY2_WS: &str = "203.0.113.17:443";
pub const RELAY2_STUN: &str = "203.0.113.17:3478";
pub const RELAY2_METRICS: &str = "127.0.0.1:9478";

/// Where one relay of the world listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayAddrs {
    /// Its public address (`--public-ipv4`).
    pub ip: &'static str,
    /// Its UDP allocations' port range (`--ports`).
    pub ports: &'static str,
    pub websocket: &'static str,
    pub stun: &'static str,
    /// `/metrics` on its namespace's own loopback.
    pub metrics: &'static str,
}

/// The world's relays by index: 0 is the one every world has, 1 the
/// second of [`crate::Options::second_relay`].
pub const RELAYS: [RelayAddrs; 2] = [
    RelayAddrs {
        ip: RELAY_IP,
        ports: RELAY_PORTS,
        websocket: RELAY_WS,
        stun: RELAY_STUN,
        metrics: RELAY_METRICS,
    },
    RelayAddrs {
        ip: RELAY2_IP,
        ports: RELAY2_PORTS,
        websocket: RELAY2_WS,
        stun: RELAY2_STUN,
        metrics: RELAY2_METRICS,
    },
];
/// The technician's public address: their own with
/// [`crate::Technician::Public`], their home router's WAN address behind a NAT.
pub const TECH_IP: &str = "192.0.2.2";
pub const OFFICE_IP: &str = "192.0.2.130";
pub const SITE_WAN_IP: &str = "198.51.100.2";
pub const GW_UPLINK_IP: &str = "10.20.0.2";
/// The technician on the site's LAN beside the gateway
/// ([`crate::Technician::OnSiteLan`]).
pub const TECH_SITE_IP: &str = "10.20.0.3";
pub const GW_LAN_IP: &str = "192.168.50.1";
pub const TARGET_A_IP: &str = "192.168.50.10";
pub const TARGET_B_IP: &str = "192.168.50.11";
pub const PROBE_IP: &str = "192.168.50.20";

/// Where one customer site of the world sits: its link to the internet
/// router, its site LAN behind its NAT router, and its machine network.
/// Site 0 is the one every world has (the constants above); the others
/// ([`crate::Options::extra_sites`]) take the next /29s of the cloud's and
/// relays' documentation range on the internet, 10.20.k.0/24 inside, and
/// 192.168.(50+k).0/24 for their machines, so that no address of one site
/// is another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteAddrs {
    /// The internet router's end of the site's link, with its length.
    pub inet_cidr: &'static str,
    /// The site's public address: its NAT router's WAN address, or the
    /// gateway's uplink on a public site.
    pub wan_ip: &'static str,
    /// The length of the link's prefix.
    pub wan_len: u8,
    /// The NAT router's LAN address, with its length.
    pub router_lan_cidr: &'static str,
    /// The gateway's uplink behind the NAT router.
    pub gw_uplink_ip: &'static str,
    pub gw_lan_ip: &'static str,
    pub target_a_ip: &'static str,
    pub target_b_ip: &'static str,
    pub probe_ip: &'static str,
}

impl SiteAddrs {
    /// The internet router's address on the site's link.
    pub fn inet_ip(&self) -> &'static str {
        crate::strip_len(self.inet_cidr)
    }
}

/// The world's customer sites by index: 0 is the one every world has, 1
/// and 2 those of [`crate::Options::extra_sites`].
pub const SITES: [SiteAddrs; 3] = [
    SiteAddrs {
        inet_cidr: "198.51.100.1/24",
        wan_ip: SITE_WAN_IP,
        wan_len: 24,
        router_lan_cidr: "10.20.0.1/24",
        gw_uplink_ip: GW_UPLINK_IP,
        gw_lan_ip: GW_LAN_IP,
        target_a_ip: TARGET_A_IP,
        target_b_ip: TARGET_B_IP,
        probe_ip: PROBE_IP,
    },
    SiteAddrs {
        inet_cidr: "203.0.113.30/29",
        wan_ip: "203.0.113.25",
        wan_len: 29,
        router_lan_cidr: "10.20.1.1/24",
        gw_uplink_ip: "10.20.1.2",
        gw_lan_ip: "192.168.51.1",
        target_a_ip: "192.168.51.10",
        target_b_ip: "192.168.51.11",
        probe_ip: "192.168.51.20",
    },
    SiteAddrs {
        inet_cidr: "203.0.113.38/29",
        wan_ip: "203.0.113.33",
        wan_len: 29,
        router_lan_cidr: "10.20.2.1/24",
        gw_uplink_ip: "10.20.2.2",
        gw_lan_ip: "192.168.52.1",
        target_a_ip: "192.168.52.10",
        target_b_ip: "192.168.52.11",
        probe_ip: "192.168.52.20",
    },
];
/// The technician's own LAN: the same /24 as the machine network.
pub const TECH_LAN_IP: &str = "192.168.50.77";
/// The technician's home router on that LAN (behind a NAT only).
pub const HOME_ROUTER_LAN_IP: &str = "192.168.50.1";
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
