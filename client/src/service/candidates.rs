//! This machine's candidates for direct paths, with the port of the tunnel's
//! UDP socket: its host addresses, and the server-reflexive ones, what the
//! relays' STUN servers see of queries sent from that very socket (so they
//! name the NAT mapping WireGuard uses).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use ferry_connect::stun::{TRANSACTION_LEN, binding_request, parse_binding_response};
use ferry_tunnel::endpoint::Endpoint;
use nix::{ifaddrs::getifaddrs, net::if_::InterfaceFlags};
use rand_core::{OsRng, RngCore as _};
use tokio::{sync::mpsc, time::Instant};

/// STUN servers asked; the relays' answer the same.
const MAX_STUN_SERVERS: usize = 4;
/// How long `connect` waits for the STUN answers in all; a query is sent
/// again halfway, for a lost datagram.
pub const STUN_WAIT: Duration = Duration::from_millis(600);

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

/// What `servers` see of the tunnel's socket, each address once.
pub async fn reflexive(endpoint: &Endpoint, servers: &[SocketAddr]) -> Vec<SocketAddr> {
    let (tx, mut answers) = mpsc::channel(16);
    endpoint.set_side_channel(tx);
    let mut asking: Vec<(SocketAddr, [u8; TRANSACTION_LEN])> = servers
        .iter()
        .take(MAX_STUN_SERVERS)
        .map(|server| {
            let mut transaction = [0u8; TRANSACTION_LEN];
            OsRng.fill_bytes(&mut transaction);
            (SocketAddr::new(server.ip().to_canonical(), server.port()), transaction)
        })
        .collect();
    let mut found = Vec::new();
    let deadline = Instant::now() + STUN_WAIT;
    for round_end in [Instant::now() + STUN_WAIT / 2, deadline] {
        for (server, transaction) in &asking {
            if let Err(e) = endpoint.send_raw(*server, &binding_request(transaction)).await {
                tracing::debug!(%server, error = %e, "a STUN query did not leave");
            }
        }
        while !asking.is_empty() {
            let Ok(Some(datagram)) = tokio::time::timeout_at(round_end, answers.recv()).await else { break };
            let from = SocketAddr::new(datagram.from.ip().to_canonical(), datagram.from.port());
            let Some(at) = asking.iter().position(|(server, _)| *server == from) else { continue };
            match parse_binding_response(&datagram.payload, &asking[at].1) {
                Ok(mapped) => {
                    asking.swap_remove(at);
                    if !found.contains(&mapped) {
                        found.push(mapped);
                    }
                }
                Err(e) => tracing::debug!(%from, error = %e, "not the STUN answer awaited"),
            }
        }
    }
    found
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
