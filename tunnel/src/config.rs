//! `wg-quick` configuration files (`[Interface]` and `[Peer]` sections), so
//! people can bring the configs they have.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use crate::{
    KeyError, PresharedKey, PrivateKey, PublicKey,
    proto::{IpNet, PeerConfig, allowed_ips::IpNetError},
};

/// An address of our own interface with its prefix length, host bits kept
/// (`10.7.0.2/24` is the address 10.7.0.2 in a /24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl FromStr for InterfaceAddress {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, IpNetError> {
        // IpNet validates the syntax and the prefix length; we keep the host.
        let net: IpNet = s.parse()?;
        let addr = s
            .trim()
            .split('/')
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|_| IpNetError::Address(s.to_string()))?;
        Ok(InterfaceAddress { addr, prefix: net.prefix() })
    }
}

impl std::fmt::Display for InterfaceAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A parsed configuration file.
#[derive(Clone, Debug)]
pub struct WgQuickConfig {
    pub interface: InterfaceConfig,
    pub peers: Vec<PeerConfig>,
}

#[derive(Clone, Debug)]
pub struct InterfaceConfig {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    pub addresses: Vec<InterfaceAddress>,
    pub mtu: Option<u16>,
    /// Settings wg-quick applies outside WireGuard (DNS, Table, hooks). We keep
    /// them so the caller can say what it does not do, instead of guessing.
    pub ignored: Vec<(usize, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the [Interface] section is missing")]
    NoInterface,
}

fn line_error(line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError::Line { line, message: message.into() }
}

enum Section {
    None,
    Interface,
    Peer,
}

impl FromStr for WgQuickConfig {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<WgQuickConfig, ConfigError> {
        let mut interface: Option<InterfaceConfig> = None;
        let mut peers: Vec<(usize, PeerDraft)> = Vec::new();
        let mut section = Section::None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                section = match line.to_ascii_lowercase().as_str() {
                    "[interface]" if interface.is_some() => {
                        return Err(line_error(line_no, "a second [Interface] section"));
                    }
                    "[interface]" => {
                        interface = Some(InterfaceConfig {
                            private_key: None,
                            listen_port: None,
                            addresses: Vec::new(),
                            mtu: None,
                            ignored: Vec::new(),
                        });
                        Section::Interface
                    }
                    "[peer]" => {
                        peers.push((line_no, PeerDraft::default()));
                        Section::Peer
                    }
                    other => return Err(line_error(line_no, format!("unknown section {other}"))),
                };
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(line_error(line_no, format!("expected `Key = Value`, got `{line}`")));
            };
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
            match section {
                Section::None => return Err(line_error(line_no, "a setting before any section")),
                Section::Interface => {
                    let Some(iface) = interface.as_mut() else {
                        return Err(line_error(line_no, "a setting outside its section"));
                    };
                    parse_interface_key(iface, &key, value).map_err(|m| line_error(line_no, m))?;
                    if matches!(
                        key.as_str(),
                        "dns"
                            | "table"
                            | "preup"
                            | "postup"
                            | "predown"
                            | "postdown"
                            | "saveconfig"
                            | "fwmark"
                    ) {
                        iface.ignored.push((line_no, key.clone()));
                    }
                }
                Section::Peer => {
                    let Some((_, draft)) = peers.last_mut() else {
                        return Err(line_error(line_no, "a setting outside its section"));
                    };
                    parse_peer_key(draft, &key, value).map_err(|m| line_error(line_no, m))?;
                }
            }
        }
        let interface = interface.ok_or(ConfigError::NoInterface)?;
        let peers = peers
            .into_iter()
            .map(|(line, draft)| {
                let public_key =
                    draft.public_key.ok_or_else(|| line_error(line, "[Peer] without PublicKey"))?;
                Ok(PeerConfig {
                    public_key,
                    preshared_key: draft.preshared_key,
                    endpoint: draft.endpoint,
                    allowed_ips: draft.allowed_ips,
                    persistent_keepalive: draft.persistent_keepalive,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(WgQuickConfig { interface, peers })
    }
}

#[derive(Default)]
struct PeerDraft {
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<IpNet>,
    persistent_keepalive: Option<Duration>,
}

fn key_err(e: KeyError) -> String {
    e.to_string()
}

fn nets(value: &str) -> Result<Vec<IpNet>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<IpNet>().map_err(|e: IpNetError| e.to_string()))
        .collect()
}

fn parse_interface_key(iface: &mut InterfaceConfig, key: &str, value: &str) -> Result<(), String> {
    match key {
        "privatekey" => iface.private_key = Some(PrivateKey::from_base64(value).map_err(key_err)?),
        "listenport" => {
            iface.listen_port =
                Some(value.parse().map_err(|_| format!("ListenPort `{value}` is not a port number"))?)
        }
        "address" => {
            for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                iface.addresses.push(part.parse().map_err(|e: IpNetError| e.to_string())?);
            }
        }
        "mtu" => {
            let mtu: u16 = value.parse().map_err(|_| format!("MTU `{value}` is not a number"))?;
            if mtu < 576 {
                return Err(format!("MTU {mtu} is below 576"));
            }
            iface.mtu = Some(mtu);
        }
        "dns" | "table" | "preup" | "postup" | "predown" | "postdown" | "saveconfig" | "fwmark" => {}
        other => return Err(format!("unknown [Interface] key `{other}`")),
    }
    Ok(())
}

fn parse_peer_key(draft: &mut PeerDraft, key: &str, value: &str) -> Result<(), String> {
    match key {
        "publickey" => draft.public_key = Some(PublicKey::from_base64(value).map_err(key_err)?),
        "presharedkey" => draft.preshared_key = Some(PresharedKey::from_base64(value).map_err(key_err)?),
        "allowedips" => draft.allowed_ips.extend(nets(value)?),
        "endpoint" => {
            // Host names need a resolver: that belongs to the IO shell.
            draft.endpoint = Some(value.parse().map_err(|_| {
                format!(
                    "Endpoint `{value}` must be an IP address and port (host names are not resolved here)"
                )
            })?)
        }
        "persistentkeepalive" => {
            let secs: u16 = if value.eq_ignore_ascii_case("off") {
                0
            } else {
                value
                    .parse()
                    .map_err(|_| format!("PersistentKeepalive `{value}` is not a number of seconds"))?
            };
            draft.persistent_keepalive = (secs > 0).then(|| Duration::from_secs(secs.into()));
        }
        other => return Err(format!("unknown [Peer] key `{other}`")),
    }
    Ok(())
}

impl WgQuickConfig {
    /// Writes the configuration back in wg-quick syntax.
    pub fn to_wg_quick(&self) -> String {
        let mut out = String::from("[Interface]\n");
        if let Some(key) = &self.interface.private_key {
            out += &format!("PrivateKey = {}\n", key.to_base64());
        }
        if let Some(port) = self.interface.listen_port {
            out += &format!("ListenPort = {port}\n");
        }
        if !self.interface.addresses.is_empty() {
            let list: Vec<String> = self.interface.addresses.iter().map(ToString::to_string).collect();
            out += &format!("Address = {}\n", list.join(", "));
        }
        if let Some(mtu) = self.interface.mtu {
            out += &format!("MTU = {mtu}\n");
        }
        for peer in &self.peers {
            out += &format!("\n[Peer]\nPublicKey = {}\n", peer.public_key);
            if let Some(psk) = &peer.preshared_key {
                out += &format!("PresharedKey = {}\n", psk.to_base64());
            }
            if !peer.allowed_ips.is_empty() {
                out += &format!("AllowedIPs = {}\n", join(&peer.allowed_ips));
            }
            if let Some(endpoint) = peer.endpoint {
                out += &format!("Endpoint = {endpoint}\n");
            }
            if let Some(keepalive) = peer.persistent_keepalive {
                out += &format!("PersistentKeepalive = {}\n", keepalive.as_secs());
            }
        }
        out
    }
}

fn join(nets: &[IpNet]) -> String {
    nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "
# A technician's config
[Interface]
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
ListenPort = 51820
Address = 10.7.0.2/32, fd07::2/128
MTU = 1420
DNS = 10.7.0.1

[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
PresharedKey = /UwcSPg38hW/D9Y3tcS1FOV0K1wuURMbS0sesJEP5ak=
AllowedIPs = 10.7.0.0/24,192.168.100.0/24
Endpoint = 203.0.113.5:51820
PersistentKeepalive = 25
";

    #[test]
    fn a_typical_file_parses_and_round_trips() {
        let config: WgQuickConfig = SAMPLE.parse().unwrap();
        assert_eq!(config.interface.listen_port, Some(51820));
        assert_eq!(config.interface.addresses[0].to_string(), "10.7.0.2/32");
        let host: InterfaceAddress = "10.7.0.2/24".parse().unwrap();
        assert_eq!(host.to_string(), "10.7.0.2/24", "host bits are kept");
        assert_eq!(config.interface.mtu, Some(1420));
        assert_eq!(config.interface.ignored, vec![(8, "dns".to_string())]);
        let peer = &config.peers[0];
        assert_eq!(peer.allowed_ips.len(), 2);
        assert_eq!(peer.endpoint, Some("203.0.113.5:51820".parse().unwrap()));
        assert_eq!(peer.persistent_keepalive, Some(Duration::from_secs(25)));
        let again: WgQuickConfig = config.to_wg_quick().parse().unwrap();
        assert_eq!(again.to_wg_quick(), config.to_wg_quick());
    }

    #[test]
    fn mistakes_name_their_line() {
        let cases = [
            ("[Interface]\nPrivateKey = nope\n", 2, "44 characters"),
            ("[Interface]\nListenPort = 70000\n", 2, "ListenPort"),
            ("[Interface]\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", 2, "without PublicKey"),
            ("[Interface]\nColor = blue\n", 2, "unknown [Interface] key `color`"),
            ("Address = 10.0.0.1/24\n", 1, "before any section"),
            (
                "[Interface]\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nEndpoint = vpn.example:51820\n",
                4,
                "host names",
            ),
            ("[Interface]\nMTU = 100\n", 2, "below 576"),
            ("[Interface]\n[Wat]\n", 2, "unknown section"),
        ];
        for (text, line, needle) in cases {
            let err = text.parse::<WgQuickConfig>().unwrap_err();
            let ConfigError::Line { line: got, message } = &err else { panic!("{err}") };
            assert_eq!(*got, line, "{text:?}: {err}");
            assert!(message.contains(needle), "{text:?}: {message}");
        }
        assert_eq!("".parse::<WgQuickConfig>().unwrap_err(), ConfigError::NoInterface);
    }
}
