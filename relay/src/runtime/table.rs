//! The XDP binding map, as the allocations see it.
//!
//! Allocations write their forwarding pairs here; in `--xdp off` mode there
//! is no table and userspace forwards everything itself.

use ferry_ebpf::{
    common::relay::{ACTION_FORWARD, ACTION_USERSPACE, Binding, BindingKey, Traffic},
    relay::{binding, key},
};

use crate::core::PeerAddr;

/// A binding map in the kernel (or a test double of one).
pub trait BindingTable: Send + Sync + 'static {
    /// Fails when the map is full or the kernel refuses.
    fn insert(&self, key: &BindingKey, binding: &Binding) -> Result<(), String>;
    fn remove(&self, key: &BindingKey);
    /// Traffic the kernel forwarded for `slot` since the slot was reset.
    fn traffic(&self, slot: u32) -> Traffic;
    fn reset_slot(&self, slot: u32);
    /// Entries in the map now.
    fn entries(&self) -> u32;
}

/// The map entries that make `routes` forward: UDP to UDP of one family in
/// the kernel; toward a WebSocket peer or across families, up to userspace.
/// Datagrams from a WebSocket peer never reach XDP.
pub fn entries(routes: &[(PeerAddr, PeerAddr)], port: u16, slot: u32) -> Vec<(BindingKey, Binding)> {
    routes
        .iter()
        .filter_map(|&(from, to)| {
            let PeerAddr::Udp(from) = from else { return None };
            let binding = match to {
                PeerAddr::Udp(to) if to.is_ipv4() == from.is_ipv4() => binding(to, ACTION_FORWARD, slot),
                _ => Binding { action: ACTION_USERSPACE, slot, ..Binding::default() },
            };
            Some((key(from, port), binding))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn udp_pairs_forward_in_the_kernel_and_the_rest_goes_up() {
        let a: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let b: SocketAddr = "198.51.100.2:51820".parse().unwrap();
        let c: SocketAddr = "[2001:db8::2]:51820".parse().unwrap();
        let pairs =
            entries(&[(PeerAddr::Udp(a), PeerAddr::Udp(b)), (PeerAddr::Udp(b), PeerAddr::Udp(a))], 40001, 9);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].0.addr[..4], [192, 0, 2, 7]);
        assert_eq!(pairs[0].0.relay_port, 40001u16.to_be_bytes());
        assert_eq!(pairs[0].1.addr[..4], [198, 51, 100, 2]);
        assert_eq!(pairs[0].1.port, 51820u16.to_be_bytes());
        assert_eq!(pairs[0].1.action, ACTION_FORWARD);
        assert_eq!(pairs[0].1.slot, 9);
        let mixed =
            entries(&[(PeerAddr::Udp(a), PeerAddr::Udp(c)), (PeerAddr::Ws(1), PeerAddr::Udp(a))], 40001, 9);
        assert_eq!(mixed.len(), 1);
        assert_eq!(mixed[0].1.action, ACTION_USERSPACE);
        let ws = entries(&[(PeerAddr::Udp(a), PeerAddr::Ws(1))], 40001, 9);
        assert_eq!(ws[0].1.action, ACTION_USERSPACE);
    }
}
