//! The relay's TOML configuration (`/etc/ferry/relay.toml` by default).
//! Every key has a flag of the same name that overrides it.
//!
//! ```toml
//! interfaces = ["eth0"]           # where the XDP forwarder attaches
//! xdp = "native"                  # native | generic | off
//! public_ipv4 = "203.0.113.1"     # forwarded datagrams leave from here
//! # public_ipv6 = "2001:db8::1"
//! ports = "40000-49999"           # one UDP port per allocation
//! stun = "0.0.0.0:3478"
//! # stun_public = "203.0.113.1:3478"  # only if peers reach STUN elsewhere
//! websocket = "0.0.0.0:443"
//! websocket_url = "wss://relay.example.net/"
//! tls_cert = "/etc/ferry/relay.crt"
//! tls_key = "/etc/ferry/relay.key"
//! metrics = "127.0.0.1:9478"
//! state_file = "/var/lib/ferry-relay/state.json"  # restarts keep sessions
//!
//! [cloud]                         # or: allocations = "/etc/ferry/allocations.toml"
//! url = "wss://cloud.example.net/api/v1/control/relay"
//! pin = "AB:CD:..."               # SHA-256 of the cloud's certificate
//! relay_id = 1
//! token_file = "/etc/ferry/relay.token"
//! ```

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer};

/// How datagrams between bound peers are forwarded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// XDP in the driver: line rate.
    #[default]
    Native,
    /// XDP on the generic (skb) hook: works on any interface, slower.
    Generic,
    /// No XDP: userspace forwards everything with recvmmsg/sendmmsg.
    Off,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Off => "off",
        })
    }
}

/// An inclusive UDP port range, written `40000-49999`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange { first: 40000, last: 49999 }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("`{s}` is not a range like 40000-49999"))?;
        let parse = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("`{p}` in `{s}`: {e}"));
        let (first, last) = (parse(a)?, parse(b)?);
        if first == 0 || first > last {
            return Err(format!("`{s}`: the range must be non-empty and start above 0"));
        }
        Ok(PortRange { first, last })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Where a listener binds, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl Listen {
    /// The address, with `default` when nothing was configured.
    pub fn resolve(value: Option<Listen>, default: SocketAddr) -> Option<SocketAddr> {
        match value.unwrap_or(Listen::At(default)) {
            Listen::Off => None,
            Listen::At(addr) => Some(addr),
        }
    }
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Listen::Off),
            addr => addr.parse().map(Listen::At).map_err(|_| format!("`{s}` is not ADDR:PORT or \"off\"")),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The cloud control channel.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// `wss://host[:port]/api/v1/control/relay` (or `ws://` on loopback);
    /// a list for a cloud of several replicas, tried in turn.
    pub url: CloudUrls,
    /// SHA-256 fingerprint of the cloud's certificate (required for wss).
    pub pin: Option<String>,
    pub relay_id: u64,
    /// A file holding the relay token the cloud issued (`fyl.` ...).
    pub token_file: PathBuf,
}

/// One cloud address, or several (replicas of one cloud).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum CloudUrls {
    One(String),
    Many(Vec<String>),
}

impl CloudUrls {
    pub fn list(&self) -> Vec<String> {
        match self {
            CloudUrls::One(url) => vec![url.clone()],
            CloudUrls::Many(urls) => urls.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces the XDP forwarder attaches to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    pub xdp: Option<XdpMode>,
    /// Without FIB lookups the forwarder swaps MAC addresses and sends back
    /// out of the ingress interface: right when one router reaches all peers.
    pub fib: Option<bool>,
    /// How long the forwarder reuses a next hop the FIB found, in
    /// milliseconds (0: ask the FIB for every datagram). Route and neighbour
    /// changes reach the cache at once over netlink; this bounds how long
    /// one could go unnoticed otherwise. Default 1000.
    pub next_hop_lifetime_ms: Option<u32>,
    pub public_ipv4: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub ports: Option<PortRange>,
    /// Bindings each of the XDP maps (IPv4 senders, IPv6 senders) holds (two
    /// per allocation).
    pub max_bindings: Option<u32>,
    pub stun: Option<Listen>,
    /// Where peers reach the STUN listener, told to the cloud, which passes
    /// it on to gateways and clients. Only needed when that is not the public
    /// address (`public_ipv4`, else `public_ipv6`) with the listener's port,
    /// for example behind a port-forwarding firewall.
    pub stun_public: Option<SocketAddr>,
    pub websocket: Option<Listen>,
    /// The URL peers use for the WebSocket relay, told to the cloud.
    pub websocket_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub metrics: Option<Listen>,
    /// Bindings with no traffic for this many seconds are dropped.
    pub idle_timeout_secs: Option<u64>,
    /// Static allocations (standalone use and tests), instead of a cloud.
    pub allocations: Option<PathBuf>,
    /// The live allocations and bindings, restored at start (see
    /// `state_file.rs`); without it a restart breaks every session.
    pub state_file: Option<PathBuf>,
    pub cloud: Option<CloudConfig>,
}

impl Config {
    /// The STUN server's public address: `stun_public` if set, else the
    /// relay's public address `public_ip` with the port the listener is
    /// bound to (`listening`). None when the listener is off.
    pub fn stun_public_address(
        &self,
        public_ip: IpAddr,
        listening: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let listening = listening?;
        Some(self.stun_public.unwrap_or(SocketAddr::new(public_ip, listening.port())))
    }
}

pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let default = ferry_daemon::paths::default_config_file("relay");
    Ok(ferry_daemon::config::load::<Config>(explicit, &default)
        .context("loading the relay configuration")?
        .config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        let config: Config = ferry_daemon::config::parse(&doc).unwrap();
        assert_eq!(config.ports, Some(PortRange { first: 40000, last: 49999 }));
        assert_eq!(config.cloud.unwrap().relay_id, 1);
        assert_eq!(config.xdp, Some(XdpMode::Native));
        assert_eq!(config.stun, Some(Listen::At("0.0.0.0:3478".parse().unwrap())));
    }

    #[test]
    fn the_stun_address_told_to_the_cloud() {
        let public: IpAddr = "203.0.113.1".parse().unwrap();
        let any = Some("0.0.0.0:3478".parse().unwrap());
        let config = Config::default();
        assert_eq!(config.stun_public_address(public, any), Some("203.0.113.1:3478".parse().unwrap()));
        let inside = Some("10.0.0.5:3479".parse().unwrap());
        assert_eq!(config.stun_public_address(public, inside), Some("203.0.113.1:3479".parse().unwrap()));
        let forwarded = Config { stun_public: Some("198.51.100.9:13478".parse().unwrap()), ..config };
        assert_eq!(
            forwarded.stun_public_address(public, inside),
            Some("198.51.100.9:13478".parse().unwrap())
        );
        assert_eq!(forwarded.stun_public_address(public, None), None, "no listener, nothing to tell");
    }

    #[test]
    fn port_ranges_are_checked() {
        assert!("1-0".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("10".parse::<PortRange>().is_err());
        assert_eq!("5-5".parse::<PortRange>().unwrap().len(), 1);
        assert_eq!("off".parse::<Listen>(), Ok(Listen::Off));
        assert!("nowhere".parse::<Listen>().is_err());
    }
}
