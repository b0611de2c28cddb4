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
