//! This machine's host candidates: the addresses of its interfaces that a
//! gateway could reach it at, with the port of the tunnel's UDP socket.
//! (Server-reflexive candidates, what a relay's STUN server sees, join them
//! when the STUN client of `ferry-connect` is wired in.)

use std::net::{IpAddr, SocketAddr};

use nix::{ifaddrs::getifaddrs, net::if_::InterfaceFlags};

/// The most host candidates reported (the cloud takes 16 in all).
const MAX_HOST: usize = 8;

pub fn host(port: u16, own_tun_prefix: &str) -> Vec<SocketAddr> {
    let Ok(interfaces) = getifaddrs() else { return Vec::new() };
    let mut out: Vec<SocketAddr> = Vec::new();
    for interface in interfaces {
        let up = interface.flags.contains(InterfaceFlags::IFF_UP);
        let loopback = interface.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        if !up || loopback || interface.interface_name.starts_with(own_tun_prefix) {
            continue;
        }
        let Some(address) = interface.address else { continue };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let candidate = SocketAddr::new(ip, port);
        if reachable_kind(ip) && !out.contains(&candidate) && out.len() < MAX_HOST {
            out.push(candidate);
        }
    }
    out
}

/// Addresses another host could send to (link-local ones need a scope that
/// a candidate cannot carry).
fn reachable_kind(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_carry_the_port_and_no_local_only_address() {
        for candidate in host(51820, "ferryc") {
            assert_eq!(candidate.port(), 51820);
            assert!(reachable_kind(candidate.ip()), "{candidate}");
        }
        assert!(!reachable_kind("127.0.0.1".parse().unwrap()));
        assert!(!reachable_kind("169.254.1.1".parse().unwrap()));
        assert!(!reachable_kind("fe80::1".parse().unwrap()));
        assert!(reachable_kind("192.0.2.2".parse().unwrap()));
        assert!(reachable_kind("2001:db8::2".parse().unwrap()));
    }
}
