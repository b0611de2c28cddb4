//! Tunnel addressing. Each live session holds one /24 of a private pool
//! (100.96.0.0/12, inside the shared address space of RFC 6598, which
//! customer and technician LANs rarely use). In it: the gateway at .1, the
//! technicians' clients from .2, and one proxy address per target from
//! .100, so a technician whose own LAN overlaps the machine network still
//! reaches each target at an address of its own.

use std::net::{IpAddr, Ipv4Addr};

pub const POOL: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 0);
pub const POOL_PREFIX: u8 = 12;
/// How many /24 subnets the pool holds: the most live sessions at once.
pub const SUBNETS: u32 = 1 << (24 - POOL_PREFIX);
pub const FIRST_CLIENT: u8 = 2;
pub const LAST_CLIENT: u8 = 99;
pub const FIRST_PROXY: u8 = 100;
/// At most this many targets per session.
pub const MAX_TARGETS: usize = 64;

fn host(index: u32, host: u8) -> IpAddr {
    debug_assert!(index < SUBNETS);
    IpAddr::V4(Ipv4Addr::from(u32::from(POOL) + (index << 8) + u32::from(host)))
}

/// The subnet's network address (prefix 24).
pub fn subnet(index: u32) -> IpAddr {
    host(index, 0)
}

pub fn gateway(index: u32) -> IpAddr {
    host(index, 1)
}

pub fn client(index: u32, slot: u8) -> IpAddr {
    host(index, slot)
}

pub fn proxy(index: u32, target_position: usize) -> IpAddr {
    host(index, FIRST_PROXY + target_position as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(SUBNETS, 4096);
        assert_eq!(subnet(0).to_string(), "100.96.0.0");
        assert_eq!(gateway(1).to_string(), "100.96.1.1");
        assert_eq!(client(4095, LAST_CLIENT).to_string(), "100.111.255.99");
        assert_eq!(proxy(3, MAX_TARGETS - 1).to_string(), "100.96.3.163");
        assert!(usize::from(FIRST_PROXY) + MAX_TARGETS < 255);
    }
}
