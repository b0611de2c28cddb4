//! The host settings the forwarding path relies on, checked and set at
//! start.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, bail};
use ferry_tunnel::proto::IpNet;

/// Sets what the forwarding path needs on the LAN interface:
/// - `forwarding=1`: replies from the machines, translated by the LAN XDP
///   program, are routed into the TUN device. Forwarding is decided per
///   ingress interface, so the uplink stays a non-router; the XDP program also
///   drops anything from the LAN the kernel would route elsewhere.
/// - `rp_filter=2` (loose): a translated reply's source is a proxy address,
///   which routes via the TUN, not the LAN; strict reverse-path filtering
///   would drop it.
pub fn prepare_lan(lan: &str) -> Result<()> {
    set(&format!("net/ipv4/conf/{lan}/forwarding"), "1")?;
    set(&format!("net/ipv4/conf/{lan}/rp_filter"), "2")?;
    Ok(())
}

/// Undoes [`prepare_lan`]'s forwarding: without the daemon's LAN program,
/// which drops what the kernel would route elsewhere, a machine that sends
/// to the gateway's LAN address as its router would be forwarded out of
/// the uplink. The daemon calls this when it stops; `ferry-gateway
/// close-lan` (the systemd unit's `ExecStopPost`) after a crash or a kill.
pub fn close_lan(lan: &str) -> Result<()> {
    set(&format!("net/ipv4/conf/{lan}/forwarding"), "0")
}

fn set(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    let current = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    if current.trim() != value {
        std::fs::write(&path, value)
            .with_context(|| format!("setting {} = {value}", key.replace('/', ".")))?;
        tracing::info!(setting = key.replace('/', "."), value, "sysctl set");
    }
    Ok(())
}

/// The LAN interface's first IPv4 address: the source address machines see.
pub fn lan_address(lan: &str) -> Result<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().context("listing interface addresses")?;
    for ifaddr in addrs {
        if ifaddr.interface_name != lan {
            continue;
        }
        if let Some(v4) = ifaddr.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return Ok(v4.ip());
        }
    }
    bail!("the LAN interface {lan} has no IPv4 address; set lan.address or give it one")
}

/// The prefixes of the LAN interface's addresses: the machine network,
/// which the gateway never probes and never offers as a candidate.
pub fn lan_prefixes(lan: &str) -> Result<Vec<IpNet>> {
    let addrs = nix::ifaddrs::getifaddrs().context("listing interface addresses")?;
    let mut prefixes = Vec::new();
    for ifaddr in addrs.filter(|a| a.interface_name == lan) {
        let (Some(address), Some(mask)) = (ifaddr.address.as_ref(), ifaddr.netmask.as_ref()) else {
            continue;
        };
        let net = if let (Some(a), Some(m)) = (address.as_sockaddr_in(), mask.as_sockaddr_in()) {
            IpNet::new(IpAddr::V4(a.ip()), u32::from(m.ip()).count_ones() as u8)
        } else if let (Some(a), Some(m)) = (address.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            IpNet::new(IpAddr::V6(a.ip()), u128::from(m.ip()).count_ones() as u8)
        } else {
            continue;
        };
        prefixes.extend(net.ok());
    }
    Ok(prefixes)
}
