//! Datagram transports other than the UDP socket (the WebSocket relay).
//!
//! The device knows peers only by socket address, so each transport gets a
//! virtual one in the discard prefix 100::/64 (RFC 6666): no real host has
//! such an address and nothing routes it, so it cannot collide with a real
//! endpoint. The shell sends what the device addresses to it through the
//! transport's sink, and the transport feeds what it receives back in as if
//! it came from that address, with no loopback socket in between.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use parking_lot::RwLock;
use tun_rs::GROTable;

use super::Shared;

/// Where a transport's outgoing datagrams go.
pub trait DatagramSink: Send + Sync + 'static {
    /// Sends one WireGuard datagram. Called on the engine's send path, so it
    /// must not block: a sink that cannot keep up drops (WireGuard recovers
    /// from loss as on any network).
    fn send(&self, datagram: &[u8]);
}

/// The first 64 bits of every virtual address: 100::/64.
const VIRTUAL_PREFIX: [u16; 4] = [0x0100, 0, 0, 0];
/// The port of every virtual address (discard, like the prefix); only the
/// address tells transports apart.
const VIRTUAL_PORT: u16 = 9;

/// Whether `addr` is a virtual transport address rather than a UDP one.
pub fn is_virtual(addr: SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V6(ip) => ip.segments()[..4] == VIRTUAL_PREFIX,
        IpAddr::V4(_) => false,
    }
}

/// Virtual addresses are numbered across the process, so that two endpoints'
/// transports never share one in logs.
static NEXT_VIRTUAL: AtomicU64 = AtomicU64::new(1);

fn next_virtual_addr() -> SocketAddr {
    let n = NEXT_VIRTUAL.fetch_add(1, Ordering::Relaxed);
    let [p0, p1, p2, p3] = VIRTUAL_PREFIX;
    let ip = Ipv6Addr::new(p0, p1, p2, p3, (n >> 48) as u16, (n >> 32) as u16, (n >> 16) as u16, n as u16);
    SocketAddr::new(IpAddr::V6(ip), VIRTUAL_PORT)
}

/// The attached transports of one endpoint, by virtual address.
#[derive(Default)]
pub(super) struct Transports {
    sinks: RwLock<HashMap<SocketAddr, Arc<dyn DatagramSink>>>,
    /// Datagrams addressed to a virtual address with no transport (detached).
    unroutable: AtomicU64,
    /// Datagrams that arrived on the UDP socket from a virtual address: only
    /// a transport may speak for one, so these are spoofed.
    spoofed: AtomicU64,
}

impl Transports {
    fn attach(&self, sink: Arc<dyn DatagramSink>) -> SocketAddr {
        let addr = next_virtual_addr();
        self.sinks.write().insert(addr, sink);
        addr
    }

    fn detach(&self, addr: SocketAddr) {
        self.sinks.write().remove(&addr);
    }

    /// The sink for a virtual address, or None (counted) once detached.
    pub(super) fn sink(&self, to: SocketAddr) -> Option<Arc<dyn DatagramSink>> {
        let sink = self.sinks.read().get(&to).cloned();
        if sink.is_none() {
            self.unroutable.fetch_add(1, Ordering::Relaxed);
        }
        sink
    }

    pub(super) fn note_spoofed(&self) {
        self.spoofed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn unroutable(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }

    pub(super) fn spoofed(&self) -> u64 {
        self.spoofed.load(Ordering::Relaxed)
    }
}

/// A transport attached to an [`super::Endpoint`]: set a peer's endpoint to
/// [`VirtualPort::addr`] and its datagrams go to the sink; hand what the
/// transport receives to [`VirtualPort::deliver`]. Dropping it detaches the
/// transport: datagrams to its address are dropped from then on.
pub struct VirtualPort {
    addr: SocketAddr,
    shared: Weak<Shared>,
    /// Reused by every delivery; the lock also keeps a transport's
    /// datagrams in the order it delivers them.
    rx: tokio::sync::Mutex<RxScratch>,
}

/// Buffers for writing decrypted packets to the TUN device.
pub(super) struct RxScratch {
    pub(super) gro: GROTable,
    pub(super) to_tun: Vec<Vec<u8>>,
}

impl VirtualPort {
    pub(super) fn attach(shared: &Arc<Shared>, sink: Arc<dyn DatagramSink>) -> VirtualPort {
        let addr = shared.transports.attach(sink);
        VirtualPort {
            addr,
            shared: Arc::downgrade(shared),
            rx: tokio::sync::Mutex::new(RxScratch { gro: GROTable::new(), to_tun: Vec::new() }),
        }
    }

    /// The virtual address to give the peers that use this transport.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Feeds a datagram the transport received into the endpoint, as if it
    /// had arrived from [`VirtualPort::addr`]: decrypted to the TUN device,
    /// with any answer sent back (through this transport, if the peer's
    /// endpoint is this address). Does nothing once the endpoint is gone.
    pub async fn deliver(&self, datagram: Vec<u8>) {
        let Some(shared) = self.shared.upgrade() else { return };
        let mut scratch = self.rx.lock().await;
        super::receive_virtual(&shared, self.addr, datagram, &mut scratch).await;
    }
}

impl Drop for VirtualPort {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.transports.detach(self.addr);
        }
    }
}

impl std::fmt::Debug for VirtualPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualPort").field("addr", &self.addr).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl DatagramSink for Nothing {
        fn send(&self, _: &[u8]) {}
    }

    #[test]
    fn virtual_addresses_are_unique_and_only_in_the_discard_prefix() {
        let transports = Transports::default();
        let a = transports.attach(Arc::new(Nothing));
        let b = transports.attach(Arc::new(Nothing));
        assert_ne!(a, b);
        for addr in [a, b] {
            assert!(is_virtual(addr), "{addr}");
            assert!(transports.sink(addr).is_some());
        }
        for real in ["192.0.2.1:9", "[2001:db8::1]:9", "[::ffff:192.0.2.1]:9", "[100:0:0:1::1]:9", "[::1]:9"]
        {
            assert!(!is_virtual(real.parse().unwrap()), "{real}");
        }
        transports.detach(a);
        assert!(transports.sink(a).is_none());
        assert!(transports.sink(b).is_some());
        assert_eq!(transports.unroutable(), 1);
    }
}
