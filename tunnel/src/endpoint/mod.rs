//! The IO shell: a TUN device and a UDP socket driven by tokio around the
//! sans-IO [`Device`].
//!
//! Three tasks share the device behind a mutex that is held only for the
//! synchronous protocol steps of a batch: TUN to UDP (encrypt), UDP to TUN
//! (decrypt) and the timers. The AEAD of a batch runs outside the lock,
//! spread over the cores by [`CryptoPool`]: the encrypting side takes the
//! counters under the lock and seals after it; the decrypting side checks
//! under the lock, opens after it, and takes the lock again to record the
//! counters and finish the packets in the order they arrived. Sockets and the TUN device are never touched
//! under the lock. An [`IndexSink`], if one watches, is told of index changes
//! under it (see there why).
//!
//! Datagrams on the socket that are not WireGuard go to a side channel
//! ([`Endpoint::set_side_channel`]); transports other than the socket (the
//! WebSocket relay) attach with [`Endpoint::attach_transport`] and are
//! reached through virtual peer addresses.
//!
//! Syscalls are batched where Linux allows: the TUN device runs with
//! virtio-net headers and TSO/USO offload, so one read returns a TCP
//! super-segment that tun-rs splits into packets and one write carries
//! coalesced segments (GRO); the UDP socket sends runs of equal-sized
//! datagrams with one GSO `sendmsg` and receives with GRO and `recvmmsg`
//! (quinn-udp). Both degrade to one packet per syscall where the kernel lacks
//! them.

mod batch;
#[cfg(test)]
mod offload_tests;
mod side;
mod transport;

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    ops::{Deref, DerefMut},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ferry_paths::ProbeSecrets;
use parking_lot::{Mutex, MutexGuard};
use quinn_udp::{RecvMeta, Transmit as UdpTransmit, UdpSocketState};
use rand_core::OsRng;
use tokio::{io::Interest, net::UdpSocket, sync::mpsc, task::JoinHandle};
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, VIRTIO_NET_HDR_LEN};

use self::{
    batch::{Segment, gso_batches},
    side::SideChannel,
    transport::{RxScratch, Transports},
};
pub use self::{
    side::SideDatagram,
    transport::{DatagramSink, VirtualPort, is_virtual},
};
use crate::{
    PrivateKey, PublicKey,
    config::InterfaceAddress,
    parallel::CryptoPool,
    proto::{
        Begin, Device, DeviceConfig, IndexChange, IpNet, Now, PeerConfig, PendingOpen, Prepared, Transmit,
        device::Incoming, messages::is_wireguard, session::SessionError,
    },
};

/// The default tunnel MTU, as wg-quick uses on a 1500-byte path.
pub const DEFAULT_MTU: u16 = 1420;
/// The longest the timer task sleeps: every protocol deadline is set at least
/// REKEY_TIMEOUT ahead, so a quarter second loses no precision that matters.
const TIMER_TICK: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// The TUN device's name (at most 15 bytes).
    pub name: String,
    pub private_key: PrivateKey,
    /// UDP port; 0 picks a free one.
    pub listen_port: u16,
    pub addresses: Vec<InterfaceAddress>,
    pub mtu: u16,
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("creating TUN device {name}: {source}")]
    Tun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("binding UDP port {port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("the endpoint's indices are already watched")]
    AlreadyWatched,
    #[error("peer {0}: its public key gives an all-zero shared secret")]
    BadPeerKey(PublicKey),
}

/// A peer's state, for status output (`wg show`-like).
#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub last_handshake: Option<Instant>,
    /// From our last initiation to its response (we were the initiator).
    pub handshake_rtt: Option<Duration>,
    /// The last datagram from the peer that authenticated.
    pub last_rx: Option<Instant>,
    pub handshakes: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<Duration>,
    pub has_preshared_key: bool,
}

/// Learns every change to the endpoint's local receiver indices, for a packet
/// filter in front of the socket (the gateway's uplink guard) that drops
/// messages naming no live index.
///
/// Changes are delivered while the device is locked, before the datagrams of
/// the same step are sent: a peer can use a new index only after our
/// initiation or response reaches it, so the filter always knows the index
/// first. Index changes happen only on handshakes and expiry, so the cost
/// (a map update, a syscall) stays off the per-packet path.
pub trait IndexSink: Send + Sync + 'static {
    fn apply(&self, change: IndexChange);
}

/// What the endpoint did with datagrams that were not the device's business.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Non-WireGuard datagrams handed to the side channel.
    pub side_delivered: u64,
    /// Non-WireGuard datagrams dropped: no side channel, or it was full.
    pub side_dropped: u64,
    /// Datagrams for a virtual address whose transport was detached.
    pub virtual_unroutable: u64,
    /// Datagrams on the UDP socket claiming to come from a virtual address.
    pub virtual_spoofed: u64,
    /// TUN reads dropped as malformed: a virtio-net header or super-segment
    /// that could not be split into packets.
    pub tun_malformed: u64,
    /// TUN reads dropped whole because their super-segment had more
    /// segments than the read had free slots. The device's GSO segment cap
    /// keeps this at zero; it counts only where setting the cap failed.
    pub tun_no_room: u64,
}

struct Shared {
    device: Mutex<Device>,
    index_sink: OnceLock<Box<dyn IndexSink>>,
    side: SideChannel,
    transports: Transports,
    tun: AsyncDevice,
    udp: UdpSocket,
    udp_state: UdpSocketState,
    mtu: u16,
    /// Whether the TUN device runs with virtio-net headers and offloads.
    offload: bool,
    tun_malformed: AtomicU64,
    tun_no_room: AtomicU64,
}

/// A running WireGuard endpoint. Dropping it stops the tasks and removes the
/// TUN device.
pub struct Endpoint {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    name: String,
    local_port: u16,
}

impl Endpoint {
    /// Creates the TUN device with its addresses and MTU, binds the UDP port
    /// and starts forwarding. Needs CAP_NET_ADMIN.
    pub async fn start(config: EndpointConfig) -> Result<Endpoint, EndpointError> {
        let mut device = Device::new(
            DeviceConfig { mtu: config.mtu, ..DeviceConfig::new(config.private_key.clone()) },
            Box::new(OsRng),
        );
        for peer in &config.peers {
            device.add_peer(peer.clone()).map_err(|_| EndpointError::BadPeerKey(peer.public_key))?;
        }
        let (tun, offload) =
            build_tun(&config).map_err(|source| EndpointError::Tun { name: config.name.clone(), source })?;
        if offload {
            cap_gso_segments(&config.name).await;
        }
        let udp = bind_udp(config.listen_port)
            .map_err(|source| EndpointError::Bind { port: config.listen_port, source })?;
        let local_port = udp.local_addr().map(|a| a.port()).unwrap_or(config.listen_port);
        let udp_state = UdpSocketState::new((&udp).into())
            .map_err(|source| EndpointError::Bind { port: config.listen_port, source })?;
        // Bursts of a GSO batch need room in the kernel's queues.
        let _ = udp_state.set_send_buffer_size((&udp).into(), 4 << 20);
        let _ = udp_state.set_recv_buffer_size((&udp).into(), 4 << 20);
        tracing::debug!(
            gso_segments = udp_state.max_gso_segments(),
            gro_segments = udp_state.gro_segments(),
            "UDP offloads"
        );
        let shared = Arc::new(Shared {
            device: Mutex::new(device),
            index_sink: OnceLock::new(),
            side: SideChannel::default(),
            transports: Transports::default(),
            tun,
            udp,
            udp_state,
            mtu: config.mtu,
            offload,
            tun_malformed: AtomicU64::new(0),
            tun_no_room: AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(tun_to_udp(Arc::clone(&shared))),
            tokio::spawn(udp_to_tun(Arc::clone(&shared))),
            tokio::spawn(timers(Arc::clone(&shared))),
        ];
        tracing::info!(name = config.name, port = local_port, peers = config.peers.len(), "endpoint up");
        Ok(Endpoint { shared, tasks, name: config.name, local_port })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    pub fn public_key(&self) -> PublicKey {
        self.device().public_key()
    }

    /// Adds a peer, or updates one, while traffic flows.
    pub fn add_peer(&self, peer: PeerConfig) -> Result<(), EndpointError> {
        let key = peer.public_key;
        self.device().add_peer(peer).map(drop).map_err(|_| EndpointError::BadPeerKey(key))
    }

    /// Removes a peer and its keys at once.
    pub fn remove_peer(&self, key: &PublicKey) -> bool {
        self.device().remove_peer(key)
    }

    /// Starts a handshake with the peer now. Returns false for an unknown peer.
    pub fn rekey(&self, key: &PublicKey) -> bool {
        let mut transmits = Vec::new();
        let known = {
            let mut device = self.device();
            match device.peer_id(key) {
                Some(id) => {
                    device.rekey(id, Now::system(), &mut transmits);
                    true
                }
                None => false,
            }
        };
        for t in transmits {
            match route(&self.shared, t.to) {
                Route::Udp(to) => {
                    if let Err(err) = self.shared.udp.try_send_to(&t.payload, to) {
                        tracing::debug!(error = %err, "sending a handshake failed");
                    }
                }
                Route::Sink(sink) => sink.send(&t.payload),
                Route::Nowhere => {}
            }
        }
        known
    }

    /// Points the peer's datagrams at `to`: a UDP address or a transport's
    /// virtual one (the path a path selector chose). WireGuard's roaming
    /// still follows the peer's authenticated packets. Returns false for an
    /// unknown peer.
    pub fn set_peer_endpoint(&self, key: &PublicKey, to: SocketAddr) -> bool {
        self.device().set_endpoint(key, to)
    }

    /// The secrets for authenticated path probes with the peer (derived in
    /// the device from our DH with it; the private key stays there).
    pub fn probe_secrets(&self, key: &PublicKey) -> Option<ProbeSecrets> {
        self.device().probe_secrets(key)
    }

    /// Hands every datagram received on the WireGuard socket that is not
    /// WireGuard (path probes, STUN answers) to `tx`, replacing any earlier
    /// channel. The receive path never waits: when the channel is full the
    /// datagram is dropped and counted ([`EndpointStats::side_dropped`]).
    pub fn set_side_channel(&self, tx: mpsc::Sender<SideDatagram>) {
        self.shared.side.set(tx);
    }

    /// Sends a datagram that is not WireGuard (a probe, a STUN query) from
    /// the WireGuard socket, so it opens or refreshes the NAT mapping that
    /// WireGuard uses. To a virtual address it goes to that transport.
    pub async fn send_raw(&self, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
        match route(&self.shared, to) {
            Route::Udp(to) => self.shared.udp.send_to(payload, to).await.map(drop),
            Route::Sink(sink) => {
                sink.send(payload);
                Ok(())
            }
            Route::Nowhere => {
                Err(io::Error::new(io::ErrorKind::NotConnected, format!("no transport is attached at {to}")))
            }
        }
    }

    /// Attaches a datagram transport other than the UDP socket: datagrams
    /// the device sends to the returned port's virtual address go to `sink`,
    /// and what the transport receives goes in through
    /// [`VirtualPort::deliver`]. Set a peer's endpoint to the address (at
    /// configuration or with [`Endpoint::set_peer_endpoint`]) to use it.
    pub fn attach_transport(&self, sink: Arc<dyn DatagramSink>) -> VirtualPort {
        VirtualPort::attach(&self.shared, sink)
    }

    pub fn stats(&self) -> EndpointStats {
        let (side, transports) = (&self.shared.side, &self.shared.transports);
        EndpointStats {
            side_delivered: side.delivered(),
            side_dropped: side.dropped(),
            virtual_unroutable: transports.unroutable(),
            virtual_spoofed: transports.spoofed(),
            tun_malformed: self.shared.tun_malformed.load(Ordering::Relaxed),
            tun_no_room: self.shared.tun_no_room.load(Ordering::Relaxed),
        }
    }

    pub fn status(&self) -> Vec<PeerStatus> {
        let device = self.device();
        let mut out: Vec<PeerStatus> = device
            .peers()
            .map(|(id, peer)| PeerStatus {
                public_key: peer.public_key,
                endpoint: peer.endpoint,
                allowed_ips: device.allowed_ips_of(id),
                last_handshake: peer.stats.last_handshake,
                handshake_rtt: peer.stats.handshake_rtt,
                last_rx: peer.stats.last_rx,
                handshakes: peer.stats.handshakes_completed,
                rx_bytes: peer.stats.rx_bytes,
                tx_bytes: peer.stats.tx_bytes,
                persistent_keepalive: peer.persistent_keepalive,
                has_preshared_key: peer.psk != [0; 32],
            })
            .collect();
        out.sort_by_key(|p| p.public_key);
        out
    }

    /// Runs `f` with the device locked (for the UAPI server).
    pub fn with_device<T>(&self, f: impl FnOnce(&mut Device) -> T) -> T {
        f(&mut self.device())
    }

    /// Hands every local receiver index to `sink`: the ones live now at once,
    /// then each change as it happens. One sink per endpoint.
    pub fn watch_indices(&self, sink: impl IndexSink) -> Result<(), EndpointError> {
        let mut device = self.device();
        let mut fresh = false;
        let sink = self.shared.index_sink.get_or_init(|| {
            fresh = true;
            Box::new(sink)
        });
        if !fresh {
            return Err(EndpointError::AlreadyWatched);
        }
        for index in device.watch_indices() {
            sink.apply(IndexChange::Added(index));
        }
        Ok(())
    }

    fn device(&self) -> Locked<'_> {
        lock(&self.shared)
    }
}

/// The locked device. Unlocking hands the step's index changes to the sink,
/// so they reach it before anything the step produced is sent.
struct Locked<'a> {
    device: MutexGuard<'a, Device>,
    sink: Option<&'a dyn IndexSink>,
}

/// The device's lock does not poison: the device is total on network input,
/// but a panic in a UAPI request or an index sink under the lock must not stop
/// the engine tasks that share it. The device stays usable after one (at
/// worst a peer's step is half done, which its timers and handshakes repair).
fn lock(shared: &Shared) -> Locked<'_> {
    Locked { device: shared.device.lock(), sink: shared.index_sink.get().map(|sink| &**sink) }
}

impl Deref for Locked<'_> {
    type Target = Device;

    fn deref(&self) -> &Device {
        &self.device
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Device {
        &mut self.device
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(sink) = self.sink {
            for change in self.device.drain_index_changes() {
                sink.apply(change);
            }
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        tracing::info!(name = self.name, "endpoint down");
    }
}

/// Set to `0` to run the TUN device without virtio-net headers and offloads
/// (one packet per read and write), as where the kernel refuses them.
pub const OFFLOAD_ENV: &str = "FERRY_TUN_OFFLOAD";

/// The TUN device with TSO/GRO offloads where the kernel allows them, and
/// without where it refuses them (or [`OFFLOAD_ENV`] says so): the shell
/// works either way, one packet per syscall without. Returns whether the
/// offloads are on.
fn build_tun(config: &EndpointConfig) -> io::Result<(AsyncDevice, bool)> {
    if std::env::var_os(OFFLOAD_ENV).is_some_and(|v| v == "0") {
        return build_tun_with(config, false).map(|tun| (tun, false));
    }
    match build_tun_with(config, true) {
        Ok(tun) => Ok((tun, true)),
        // A name in use (EBUSY) or a missing capability (EPERM) fails the
        // same without offloads: retrying would only hide the cause.
        Err(err) if !offload_refused(&err) => Err(err),
        Err(with) => {
            tracing::warn!(name = config.name, error = %with, "creating the TUN device with offloads failed; trying without (one packet per read and write)");
            build_tun_with(config, false).map(|tun| (tun, false)).map_err(|without| {
                io::Error::new(without.kind(), format!("with offloads: {with}; without: {without}"))
            })
        }
    }
}

/// Whether creating the device with offloads may have failed on the offloads
/// themselves: a kernel without IFF_VNET_HDR or a TUN_F_* flag refuses the
/// ioctl with one of these. tun-rs's errors do not say which step failed, so
/// an EINVAL from elsewhere also retries, and then fails with both errors.
fn offload_refused(err: &io::Error) -> bool {
    const REFUSALS: [i32; 4] =
        [22 /* EINVAL */, 25 /* ENOTTY */, 38 /* ENOSYS */, 95 /* EOPNOTSUPP */];
    err.raw_os_error().is_some_and(|code| REFUSALS.contains(&code))
}

/// Caps the segments of one super-segment the kernel hands the device at
/// [`SPLIT_SLOTS`] (`ip link set dev NAME gso_max_segs 64`), so every TUN
/// read fits the slots it is given. Without the cap a 64 KiB super-segment
/// at a small MSS (536 is common on PLCs: about 120 segments) was refused by
/// tun-rs and lost whole. TCP sockets take the cap from the route's device
/// when they connect; the kernel segments anything larger in software. On
/// failure the endpoint still runs, and such reads count as
/// [`EndpointStats::tun_no_room`].
async fn cap_gso_segments(name: &str) {
    if let Err(err) = set_gso_max_segs(name, TUN_GSO_MAX_SEGS).await {
        tracing::warn!(name, error = %err, "capping the TUN device's GSO segments failed; super-segments of more than {SPLIT_SLOTS} segments will be dropped");
    }
}

async fn set_gso_max_segs(name: &str, segments: u32) -> io::Result<()> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let connection = tokio::spawn(connection);
    let message = rtnetlink::LinkUnspec::new_with_name(name)
        .append_extra_attribute(rtnetlink::packet_route::link::LinkAttribute::GsoMaxSegs(segments))
        .build();
    let result = handle.link().set(message).execute().await.map_err(io::Error::other);
    connection.abort();
    result
}

fn build_tun_with(config: &EndpointConfig, offload: bool) -> io::Result<AsyncDevice> {
    let mut builder = DeviceBuilder::new().name(&config.name).mtu(config.mtu).offload(offload);
    let mut v4_set = false;
    for address in &config.addresses {
        match address.addr {
            // The builder takes one IPv4 address; wg-quick files rarely have more.
            IpAddr::V4(_) if v4_set => tracing::warn!(%address, "only the first IPv4 address is configured"),
            IpAddr::V4(v4) => {
                builder = builder.ipv4(v4, address.prefix, None);
                v4_set = true;
            }
            IpAddr::V6(v6) => builder = builder.ipv6(v6, address.prefix),
        }
    }
    builder.build_async()
}

fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    // Dual-stack where the host has IPv6, else IPv4 only.
    let v6 = std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    let socket = match v6 {
        Ok(s) => s,
        Err(_) => std::net::UdpSocket::bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port))?,
    };
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Addresses as the device sees them: IPv4-mapped IPv6 back to IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Addresses as the dual-stack socket wants them.
fn to_socket(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

/// Where a datagram for a peer address goes.
enum Route {
    /// The UDP socket, to this address (as the socket wants it).
    Udp(SocketAddr),
    /// An attached transport.
    Sink(Arc<dyn DatagramSink>),
    /// A virtual address whose transport is gone: dropped (counted).
    Nowhere,
}

fn route(shared: &Shared, to: SocketAddr) -> Route {
    if !is_virtual(to) {
        return Route::Udp(target_for(shared, to));
    }
    shared.transports.sink(to).map_or(Route::Nowhere, Route::Sink)
}

async fn send_all(shared: &Shared, transmits: &mut Vec<Transmit>) {
    for t in transmits.drain(..) {
        match route(shared, t.to) {
            Route::Udp(to) => send_udp(shared, to, &t.payload, None).await,
            Route::Sink(sink) => sink.send(&t.payload),
            Route::Nowhere => {}
        }
    }
}

/// The address to hand the socket: v4-mapped on a dual-stack socket.
fn target_for(shared: &Shared, to: SocketAddr) -> SocketAddr {
    if shared.udp.local_addr().is_ok_and(|a| a.is_ipv6()) { to_socket(to) } else { to }
}

/// One `sendmsg`, with GSO when `segment_size` is given.
async fn send_udp(shared: &Shared, to: SocketAddr, contents: &[u8], segment_size: Option<usize>) {
    let transmit = UdpTransmit { destination: to, ecn: None, contents, segment_size, src_ip: None };
    let result = shared
        .udp
        .async_io(Interest::WRITABLE, || shared.udp_state.try_send((&shared.udp).into(), &transmit))
        .await;
    if let Err(err) = result {
        tracing::debug!(%to, error = %err, "send failed");
    }
}

/// Room before each packet read from the TUN device: the virtio-net header on
/// the way back (see `udp_to_tun`) and alignment.
const TUN_OFFSET: usize = 16;

/// Packets gathered from the TUN device before one encryption pass.
const TX_BATCH: usize = 256;
/// The most packets one TUN read may split into: the device's GSO segment
/// cap (see [`cap_gso_segments`]), and the free slots a read is attempted
/// with at least.
const SPLIT_SLOTS: usize = 64;
/// The `gso_max_segs` of a TUN device with offloads: [`SPLIT_SLOTS`].
pub const TUN_GSO_MAX_SEGS: u32 = SPLIT_SLOTS as u32;

/// What a failed TUN read was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadError {
    /// tun-rs refused what it read: it could not be split into packets.
    Malformed,
    /// tun-rs refused a super-segment with more segments than free slots.
    NoRoom,
    /// The read itself failed (or there was nothing to read).
    Os,
}

/// tun-rs's refusal for too few slots, whose type is private to it: only its
/// message tells it apart (the offload tests pin it).
const NO_ROOM_MESSAGE: &str = "too many GSO segments";

/// tun-rs's refusals carry no OS error code (and are not the would-block of
/// an empty queue); the read failing carries one.
fn read_error(err: &io::Error) -> ReadError {
    if err.raw_os_error().is_some()
        || matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
    {
        ReadError::Os
    } else if err.get_ref().is_some_and(|inner| inner.to_string() == NO_ROOM_MESSAGE) {
        ReadError::NoRoom
    } else {
        ReadError::Malformed
    }
}

/// Counts a refused TUN read; false if the read itself failed.
fn count_refused(shared: &Shared, err: &io::Error) -> bool {
    let counter = match read_error(err) {
        ReadError::Malformed => &shared.tun_malformed,
        ReadError::NoRoom => &shared.tun_no_room,
        ReadError::Os => return false,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(error = %err, "TUN read refused and dropped");
    true
}

async fn tun_to_udp(shared: Arc<Shared>) {
    let mtu = usize::from(shared.mtu);
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    let mut packets = vec![vec![0u8; TUN_OFFSET + mtu + 256]; TX_BATCH];
    let mut sizes = vec![0usize; TX_BATCH];
    let datagram_max = crate::proto::session::Session::sealed_len(mtu) + 16;
    let mut out = vec![0u8; TX_BATCH * datagram_max];
    let mut segments: Vec<Segment> = Vec::with_capacity(TX_BATCH);
    let mut transmits = Vec::new();
    let max_gso = shared.udp_state.max_gso_segments();
    loop {
        let mut count =
            match shared.tun.recv_multiple(&mut original, &mut packets, &mut sizes, TUN_OFFSET).await {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // tun-rs refuses what it cannot split (a bad virtio-net header,
                // a super-segment that does not parse or does not fit) with an
                // error that no syscall returned: one read is lost, not the
                // device.
                Err(err) if count_refused(&shared, &err) => continue,
                Err(err) => {
                    tracing::error!(error = %err, "reading the TUN device failed; stopping");
                    return;
                }
            };
        // Drain what else is queued (small packets arrive one per read) so the
        // batch shares one lock, and GSO can send equal sizes together.
        while TX_BATCH - count >= SPLIT_SLOTS {
            match shared.tun.try_recv_multiple(
                &mut original,
                &mut packets[count..],
                &mut sizes[count..],
                TUN_OFFSET,
            ) {
                Ok(n) => count += n,
                Err(err) if count_refused(&shared, &err) => {}
                Err(_) => break,
            }
        }
        segments.clear();
        let mut jobs = Vec::with_capacity(count);
        {
            let mut device = lock(&shared);
            let now = Now::system();
            let mut at = 0;
            for (packet, &size) in packets.iter().zip(&sizes).take(count) {
                match device.prepare_packet(
                    now,
                    &packet[TUN_OFFSET..TUN_OFFSET + size],
                    &mut out[at..],
                    &mut transmits,
                ) {
                    Ok(Prepared::Seal { to, job }) => {
                        segments.push(Segment { to, start: at, len: job.len });
                        at += job.len;
                        jobs.push(job);
                    }
                    Ok(Prepared::Queued) => {}
                    Err(err) => tracing::trace!(error = %err, "packet from TUN not sent"),
                }
            }
        }
        // The messages lie back to back in `out`, in the order of their
        // counters; each job encrypts its own.
        let mut work = Vec::with_capacity(jobs.len());
        let mut rest = &mut out[..];
        for job in jobs {
            let (message, after) = rest.split_at_mut(job.len);
            work.push((job, message));
            rest = after;
        }
        CryptoPool::shared().run(&mut work, |(job, message)| job.seal(message));
        drop(work);
        for batch in gso_batches(&segments, max_gso) {
            let run = &segments[batch.first..batch.first + batch.count];
            let (Some(first), Some(last)) = (run.first(), run.last()) else { continue };
            match route(&shared, first.to) {
                Route::Udp(to) => {
                    let contents = &out[first.start..last.start + last.len];
                    let gso = (batch.count > 1).then_some(batch.segment_size);
                    send_udp(&shared, to, contents, gso).await;
                }
                // A batch shares one destination; a transport takes its
                // datagrams one by one.
                Route::Sink(sink) => {
                    for segment in run {
                        sink.send(&out[segment.start..segment.start + segment.len]);
                    }
                }
                Route::Nowhere => {}
            }
        }
        send_all(&shared, &mut transmits).await;
    }
}

/// How many receive buffers one `recvmmsg` fills; with GRO each holds up to
/// 64 KiB of coalesced datagrams.
const RX_BUFFERS: usize = 8;
/// The capacity of a decrypted TCP packet's buffer. tun-rs coalesces a
/// flow's segments into the first one's buffer only if that buffer can hold
/// the whole super-packet (it never reallocates), and any packet may become
/// the head of a flow: with buffers sized for one packet, no segment was ever
/// coalesced and every packet cost the receiving TCP stack one write.
///
/// The cost is memory: one `recvmmsg` fills [`RX_BUFFERS`] buffers of up to
/// 64 GRO'd datagrams each, so one batch may hold up to 512 TCP packets,
/// 512 buffers of this capacity (about 33 MiB, resident as far as each was
/// written). The pool keeps what the largest batch took and never shrinks.
/// Without offloads there is no GRO, and TCP gets [`SMALL_CAPACITY`].
const GRO_CAPACITY: usize = 2 * TUN_OFFSET + 65_535;
/// The capacity of every other decrypted packet's buffer: about one MTU, so
/// tun-rs coalesces small UDP datagrams a dozen or so at a time. A 64 KiB
/// UDP super-packet of small datagrams is split again by the kernel for a
/// socket without UDP_GRO, hundreds of them at once, more than its receive
/// buffer holds: 64-byte UDP through the tunnel lost most of its packets.
const SMALL_CAPACITY: usize = 2 * TUN_OFFSET + 1500;

/// Whether a decrypted packet is TCP (IPv4, or IPv6 without extension
/// headers, which is all tun-rs coalesces).
fn is_tcp(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(9) == Some(&6),
        Some(6) => packet.get(6) == Some(&6),
        _ => false,
    }
}

/// The buffer a decrypted packet gets: room to coalesce for TCP when the
/// device takes super-packets, one MTU otherwise.
fn packet_capacity(offload: bool, packet: &[u8]) -> usize {
    if offload && is_tcp(packet) { GRO_CAPACITY } else { SMALL_CAPACITY }
}

async fn udp_to_tun(shared: Arc<Shared>) {
    let mut buffers = vec![vec![0u8; 65_536]; RX_BUFFERS];
    let mut metas = vec![RecvMeta::default(); RX_BUFFERS];
    // Decrypted packets for the TUN device, each at TUN_OFFSET so tun-rs can
    // put the virtio-net header in front; GRO may grow the first of a flow.
    let mut to_tun: Vec<Vec<u8>> = Vec::new();
    // Spare buffers for decrypted packets: TCP's and the others'.
    let mut tcp_pool: Vec<Vec<u8>> = Vec::new();
    let mut small_pool: Vec<Vec<u8>> = Vec::new();
    let mut gro = GROTable::new();
    let mut transmits = Vec::new();
    let mut side = Vec::new();
    loop {
        let received = {
            let mut slices: Vec<std::io::IoSliceMut<'_>> =
                buffers.iter_mut().map(|b| std::io::IoSliceMut::new(b.as_mut_slice())).collect();
            shared
                .udp
                .async_io(Interest::READABLE, || {
                    shared.udp_state.recv((&shared.udp).into(), &mut slices, &mut metas)
                })
                .await
        };
        let count = match received {
            Ok(n) => n,
            Err(err) => {
                // ICMP errors surface here on Linux; they are no reason to stop.
                tracing::trace!(error = %err, "UDP receive error");
                continue;
            }
        };
        let mut work: Vec<Received<'_>> = Vec::new();
        let now = Now::system();
        {
            let mut device = lock(&shared);
            for (buffer, meta) in buffers.iter_mut().zip(&metas).take(count) {
                let from = canonical(meta.addr);
                if is_virtual(from) {
                    // Only a transport speaks for a virtual address; from
                    // the network this is a spoof aimed at moving a peer.
                    shared.transports.note_spoofed();
                    continue;
                }
                let stride = meta.stride.max(1);
                for datagram in buffer[..meta.len].chunks_mut(stride) {
                    if !is_wireguard(datagram) {
                        side.push(SideDatagram { from, payload: datagram.to_vec() });
                        continue;
                    }
                    let step = match device.begin_datagram(now, from, datagram, &mut transmits) {
                        Begin::Open(pending) => Step::Open(pending, None),
                        Begin::Done(incoming) => Step::Done(incoming),
                    };
                    work.push(Received { datagram, step });
                }
            }
        }
        CryptoPool::shared().run(&mut work, |received| {
            if let Step::Open(pending, opened) = &mut received.step {
                *opened = Some(pending.open(received.datagram));
            }
        });
        {
            // Finished in arrival order: the TUN device sees each peer's
            // packets in the order they came.
            let mut device = lock(&shared);
            for Received { datagram, step } in work {
                let incoming = match step {
                    Step::Open(pending, opened) => {
                        let opened = opened.unwrap_or_else(|| pending.open(datagram));
                        device.finish_open(now, pending, opened, datagram, &mut transmits)
                    }
                    Step::Done(incoming) => incoming,
                };
                if let Incoming::Packet { range, .. } = incoming {
                    let packet_bytes = &datagram[range];
                    let capacity = packet_capacity(shared.offload, packet_bytes);
                    let pool = if capacity == GRO_CAPACITY { &mut tcp_pool } else { &mut small_pool };
                    let mut packet = pool.pop().unwrap_or_else(|| Vec::with_capacity(capacity));
                    packet.clear();
                    packet.resize(TUN_OFFSET, 0);
                    packet.extend_from_slice(packet_bytes);
                    to_tun.push(packet);
                }
            }
        }
        if !to_tun.is_empty() {
            if let Err(err) = shared.tun.send_multiple(&mut gro, &mut to_tun, TUN_OFFSET).await {
                tracing::debug!(error = %err, "writing to the TUN device failed");
            }
            for packet in to_tun.drain(..) {
                let pool = if packet.capacity() >= GRO_CAPACITY { &mut tcp_pool } else { &mut small_pool };
                pool.push(packet);
            }
        }
        shared.side.hand_over(&mut side);
        send_all(&shared, &mut transmits).await;
    }
}

/// A datagram of a receive batch between its steps.
struct Received<'a> {
    datagram: &'a mut [u8],
    step: Step,
}

enum Step {
    /// Transport data, with what its AEAD made of it once run.
    Open(PendingOpen, Option<Result<std::ops::Range<usize>, SessionError>>),
    /// Handled when it was read (handshakes, cookies, drops).
    Done(Incoming),
}

/// One datagram a transport received, from its virtual address `from`: the
/// receive path of the socket for a single datagram.
async fn receive_virtual(shared: &Shared, from: SocketAddr, mut datagram: Vec<u8>, scratch: &mut RxScratch) {
    if !is_wireguard(&datagram) {
        shared.side.hand_over(&mut vec![SideDatagram { from, payload: datagram }]);
        return;
    }
    let mut transmits = Vec::new();
    let incoming = lock(shared).handle_datagram(Now::system(), from, &mut datagram, &mut transmits);
    if let Incoming::Packet { range, .. } = incoming {
        let mut packet = scratch.to_tun.pop().unwrap_or_default();
        packet.clear();
        packet.resize(TUN_OFFSET, 0);
        packet.extend_from_slice(&datagram[range]);
        scratch.to_tun.push(packet);
        if let Err(err) = shared.tun.send_multiple(&mut scratch.gro, &mut scratch.to_tun, TUN_OFFSET).await {
            tracing::debug!(error = %err, "writing to the TUN device failed");
        }
    }
    send_all(shared, &mut transmits).await;
}

async fn timers(shared: Arc<Shared>) {
    let mut transmits = Vec::new();
    loop {
        let deadline = {
            let mut device = lock(&shared);
            device.update_timers(Now::system(), &mut transmits);
            device.next_deadline()
        };
        send_all(&shared, &mut transmits).await;
        let now = Instant::now();
        let wake = deadline
            .map_or(now + TIMER_TICK, |d| d.min(now + TIMER_TICK))
            .max(now + Duration::from_millis(1));
        tokio::time::sleep_until(wake.into()).await;
    }
}
