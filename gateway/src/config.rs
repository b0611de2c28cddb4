//! The gateway's TOML configuration (`/etc/ferry/gateway.toml` by default).
//!
//! ```toml
//! data_dir = "/var/lib/ferry-gateway"              # default (root)
//! control_socket = "/run/ferry-gateway/control.sock" # default (root)
//!
//! [uplink]
//! interface = "enp1s0"     # toward the customer network and the internet
//! wireguard_port = 51820   # the one UDP port the gateway exposes
//! xdp_mode = "auto"        # auto, native or generic
//! follow_indices = true    # the guard drops messages to dead WireGuard indices
//!
//! [lan]
//! interface = "enp2s0"     # toward the machine network
//! address = "192.168.0.2"  # the gateway's own address there (default: the interface's)
//!
//! [tunnel]
//! interface = "ferry0"     # the WireGuard TUN device
//! transport = "auto"       # auto, udp or websocket
//!
//! [forwarding]
//! tcp_idle_timeout_secs = 7200  # idle TCP connections are forgotten after this
//! udp_idle_timeout_secs = 120   # the same for UDP and ping
//!
//! [metrics]
//! listen = "127.0.0.1:9479" # or "off"
//!
//! [panel]
//! listen = "192.168.0.2:8443" # default: the LAN address, port 8443; or loopback, or "off"
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr},
    num::{NonZeroU16, NonZeroU64},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ferry_ebpf::{AttachMode, gateway::FlowTimeouts};
use serde::Deserialize;

pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the state (switch, decisions, event queue, keys) lives.
    pub data_dir: Option<PathBuf>,
    /// The local control socket.
    pub control_socket: Option<PathBuf>,
    #[serde(default)]
    pub uplink: Uplink,
    #[serde(default)]
    pub lan: Lan,
    #[serde(default)]
    pub tunnel: Tunnel,
    #[serde(default)]
    pub forwarding: Forwarding,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub panel: Panel,
}

impl Config {
    /// `data_dir`, or the default (`/var/lib/ferry-gateway` for root).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| ferry_daemon::paths::default_data_dir("gateway"))
    }

    /// `control_socket`, or the default (`/run/ferry-gateway/control.sock` for root).
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket.clone().unwrap_or_else(crate::local::default_socket_path)
    }
}

/// The machine network.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    pub interface: Option<String>,
    /// The gateway's own address in the machine network, which forwarded
    /// traffic comes from; default: the interface's first IPv4 address.
    pub address: Option<Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    #[serde(default = "default_tunnel_interface")]
    pub interface: String,
    /// The gateway's address in the tunnel network, with a prefix covering
    /// every session subnet (default 100.96.0.1/12, the cloud's pool).
    pub address: Option<String>,
    #[serde(default)]
    pub transport: Transport,
}

impl Default for Tunnel {
    fn default() -> Tunnel {
        Tunnel { interface: default_tunnel_interface(), address: None, transport: Transport::default() }
    }
}

fn default_tunnel_interface() -> String {
    "ferry0".into()
}

/// The forwarding into the machine network: how long a technician's
/// connection may stay idle before the gateway forgets its translation (and
/// its NAT port), as Linux's conntrack has `nf_conntrack_tcp_timeout_*` and
/// `nf_conntrack_udp_timeout`. A connection's next packet after that starts
/// it anew, from another NAT port, which a TCP target does not know.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forwarding {
    /// Default: 7200 (2 hours).
    pub tcp_idle_timeout_secs: Option<NonZeroU64>,
    /// UDP and ICMP echo; default: 120.
    pub udp_idle_timeout_secs: Option<NonZeroU64>,
}

impl Forwarding {
    /// The timeouts the forwarding programs get.
    pub fn timeouts(&self) -> Result<FlowTimeouts> {
        let ns = |key: &str, secs: Option<NonZeroU64>, default: u64| match secs {
            None => Ok(default),
            Some(secs) => secs
                .get()
                .checked_mul(1_000_000_000)
                .with_context(|| format!("forwarding.{key} = {secs} is too large")),
        };
        let default = FlowTimeouts::DEFAULT;
        Ok(FlowTimeouts {
            tcp_ns: ns("tcp_idle_timeout_secs", self.tcp_idle_timeout_secs, default.tcp_ns)?,
            other_ns: ns("udp_idle_timeout_secs", self.udp_idle_timeout_secs, default.other_ns)?,
            ..default
        })
    }
}

/// How WireGuard traffic leaves the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// UDP (direct or through a relay), falling back to the WebSocket relay
    /// when UDP does not get through.
    #[default]
    Auto,
    Udp,
    Websocket,
}

pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9479);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(default = "default_metrics_listen", deserialize_with = "de_listen")]
    pub listen: Option<SocketAddr>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics { listen: default_metrics_listen() }
    }
}

fn default_metrics_listen() -> Option<SocketAddr> {
    Some(DEFAULT_METRICS_LISTEN)
}

/// An address, or "off" (`None`).
fn de_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim() == "off" {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e} (or \"off\")")))
}

/// The customer's local web panel (see `crate::panel`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Panel {
    #[serde(default, deserialize_with = "de_panel_listen")]
    pub listen: PanelListen,
}

/// The port the panel listens on unless told otherwise.
pub const DEFAULT_PANEL_PORT: u16 = 8443;

/// Where the panel listens: on the LAN interface's address or on loopback,
/// never on the uplink (the daemon refuses anything else at start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PanelListen {
    /// The gateway's LAN address (`lan.address`, else the LAN interface's),
    /// port [`DEFAULT_PANEL_PORT`].
    #[default]
    Lan,
    At(SocketAddr),
    Off,
}

fn de_panel_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PanelListen, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "off" => Ok(PanelListen::Off),
        other => other.parse().map(PanelListen::At).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?}: {e} (expected the LAN address or a loopback address with a port, or \"off\")"
            ))
        }),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub interface: Option<String>,
    pub wireguard_port: Option<NonZeroU16>,
    #[serde(default, deserialize_with = "de_attach_mode")]
    pub xdp_mode: Option<AttachMode>,
    /// Whether `run` has the uplink guard drop responses, cookie replies and
    /// transport messages whose receiver index the engine does not hold
    /// (default: true).
    pub follow_indices: Option<bool>,
}

fn de_attach_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<AttachMode>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
}

pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let default = ferry_daemon::paths::default_config_file("gateway");
    let loaded = ferry_daemon::config::load::<Config>(explicit, &default)
        .context("loading the gateway configuration")?;
    if let Some(source) = &loaded.source {
        tracing::debug!(file = %source.display(), "configuration loaded");
    }
    Ok(loaded.config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_section_parse() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config.tunnel.interface, "ferry0");
        assert_eq!(config.tunnel.transport, Transport::Auto);
        assert_eq!(config.metrics.listen, Some(DEFAULT_METRICS_LISTEN));
        assert!(config.data_dir.is_none() && config.control_socket.is_none());
        assert_eq!(config.panel.listen, PanelListen::Lan);
        assert_eq!(config.forwarding.timeouts().unwrap(), FlowTimeouts::DEFAULT);

        let config: Config = toml::from_str(
            r#"
            data_dir = "/srv/gw"
            control_socket = "/srv/gw.sock"
            [uplink]
            interface = "wan0"
            [lan]
            interface = "lan0"
            address = "192.168.0.2"
            [tunnel]
            interface = "wg9"
            transport = "websocket"
            [forwarding]
            tcp_idle_timeout_secs = 432000
            udp_idle_timeout_secs = 30
            [metrics]
            listen = "off"
            [panel]
            listen = "192.168.0.2:9443"
            "#,
        )
        .unwrap();
        assert_eq!(config.panel.listen, PanelListen::At("192.168.0.2:9443".parse().unwrap()));
        let off: Config = toml::from_str("[panel]\nlisten = \"off\"").unwrap();
        assert_eq!(off.panel.listen, PanelListen::Off);
        assert!(toml::from_str::<Config>("[panel]\nlisten = \"192.168.0.2\"").is_err(), "a port is needed");
        assert_eq!(config.data_dir(), PathBuf::from("/srv/gw"));
        assert_eq!(config.control_socket(), PathBuf::from("/srv/gw.sock"));
        assert_eq!(config.lan.address, Some(Ipv4Addr::new(192, 168, 0, 2)));
        assert_eq!(config.tunnel.transport, Transport::Websocket);
        assert_eq!(config.metrics.listen, None);
        assert_eq!(
            config.forwarding.timeouts().unwrap(),
            FlowTimeouts { tcp_ns: 432_000_000_000_000, other_ns: 30_000_000_000, ..FlowTimeouts::DEFAULT }
        );

        assert!(toml::from_str::<Config>("[tunnel]\ntransport = \"tcp\"").is_err());
        assert!(toml::from_str::<Config>("[metrics]\nlisten = \"nowhere\"").is_err());
        assert!(toml::from_str::<Config>("surprise = 1").is_err());
    }

    #[test]
    fn flow_timeouts_must_be_positive_and_fit_in_nanoseconds() {
        let only_udp: Config = toml::from_str("[forwarding]\nudp_idle_timeout_secs = 1").unwrap();
        let timeouts = only_udp.forwarding.timeouts().unwrap();
        assert_eq!(timeouts, FlowTimeouts { other_ns: 1_000_000_000, ..FlowTimeouts::DEFAULT });
        assert!(toml::from_str::<Config>("[forwarding]\ntcp_idle_timeout_secs = 0").is_err());
        assert!(toml::from_str::<Config>("[forwarding]\nudp_idle_timeout_secs = -5").is_err());
        assert!(toml::from_str::<Config>("[forwarding]\nicmp_idle_timeout_secs = 5").is_err());
        let huge: Config = toml::from_str("[forwarding]\ntcp_idle_timeout_secs = 18446744074").unwrap();
        let err = huge.forwarding.timeouts().unwrap_err().to_string();
        assert!(err.contains("forwarding.tcp_idle_timeout_secs"), "{err}");
    }

    #[test]
    fn the_installed_template_parses() {
        let config: Config = toml::from_str(crate::cmd::install::CONFIG_TEMPLATE).unwrap();
        assert_eq!(config.tunnel.interface, "ferry0");
        // Its commented settings (`# key = value`) show the defaults.
        let uncommented: Vec<&str> = crate::cmd::install::CONFIG_TEMPLATE
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(setting)
                    if setting
                        .split_once(" = ")
                        .is_some_and(|(key, _)| key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')) =>
                {
                    setting
                }
                _ => line,
            })
            .collect();
        let uncommented = uncommented.join("\n");
        let shown: Config = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(shown.forwarding.timeouts().unwrap(), FlowTimeouts::DEFAULT);
        assert_eq!(shown.metrics.listen, Some(DEFAULT_METRICS_LISTEN));
        assert_eq!(shown.panel.listen, PanelListen::At("192.168.0.2:8443".parse().unwrap()));
    }
}
