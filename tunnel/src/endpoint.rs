//! The IO shell: a TUN device and a UDP socket driven by tokio around the
//! sans-IO [`Device`].
//!
//! Three tasks share the device behind a mutex that is held only for the
//! synchronous protocol step: TUN to UDP (encrypt), UDP to TUN (decrypt) and
//! the timers. Sockets and the TUN device are never touched under the lock.

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{net::UdpSocket, task::JoinHandle};
use tun_rs::{AsyncDevice, DeviceBuilder};

use crate::{
    PrivateKey, PublicKey,
    config::InterfaceAddress,
    proto::{
        Device, DeviceConfig, IpNet, Now, PeerConfig, Transmit,
        device::{Incoming, Sent},
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
    pub handshakes: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<Duration>,
    pub has_preshared_key: bool,
}

struct Shared {
    device: Mutex<Device>,
    tun: AsyncDevice,
    udp: UdpSocket,
    mtu: u16,
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
        let mut device =
            Device::new(DeviceConfig { mtu: config.mtu, ..DeviceConfig::new(config.private_key.clone()) });
        for peer in &config.peers {
            device.add_peer(peer.clone()).map_err(|_| EndpointError::BadPeerKey(peer.public_key))?;
        }
        let tun =
            build_tun(&config).map_err(|source| EndpointError::Tun { name: config.name.clone(), source })?;
        let udp = bind_udp(config.listen_port)
            .map_err(|source| EndpointError::Bind { port: config.listen_port, source })?;
        let local_port = udp.local_addr().map(|a| a.port()).unwrap_or(config.listen_port);
        let shared = Arc::new(Shared { device: Mutex::new(device), tun, udp, mtu: config.mtu });
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
            if let Err(err) = self.shared.udp.try_send_to(&t.payload, to_socket(t.to)) {
                tracing::debug!(error = %err, "sending a handshake failed");
            }
        }
        known
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

    fn device(&self) -> std::sync::MutexGuard<'_, Device> {
        self.shared.device.lock().expect("the device lock is never poisoned: no panics under it")
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

fn build_tun(config: &EndpointConfig) -> io::Result<AsyncDevice> {
    let mut builder = DeviceBuilder::new().name(&config.name).mtu(config.mtu);
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

async fn send_all(shared: &Shared, transmits: &mut Vec<Transmit>) {
    for t in transmits.drain(..) {
        let target = if shared.udp.local_addr().is_ok_and(|a| a.is_ipv6()) { to_socket(t.to) } else { t.to };
        if let Err(err) = shared.udp.send_to(&t.payload, target).await {
            tracing::debug!(to = %t.to, error = %err, "send failed");
        }
    }
}

async fn tun_to_udp(shared: Arc<Shared>) {
    let mut packet = vec![0u8; usize::from(shared.mtu) + 64];
    let mut out = vec![0u8; usize::from(shared.mtu) + 128];
    let mut transmits = Vec::new();
    let v6_socket = shared.udp.local_addr().is_ok_and(|a| a.is_ipv6());
    loop {
        let n = match shared.tun.recv(&mut packet).await {
            Ok(n) => n,
            Err(err) => {
                tracing::error!(error = %err, "reading the TUN device failed; stopping");
                return;
            }
        };
        let result = {
            let mut device = shared.device.lock().expect("not poisoned");
            device.send_packet(Now::system(), &packet[..n], &mut out, &mut transmits)
        };
        match result {
            Ok(Sent::Datagram { to, len }) => {
                let target = if v6_socket { to_socket(to) } else { to };
                if let Err(err) = shared.udp.send_to(&out[..len], target).await {
                    tracing::debug!(%to, error = %err, "send failed");
                }
            }
            Ok(Sent::Queued) => {}
            Err(err) => tracing::trace!(error = %err, "packet from TUN not sent"),
        }
        send_all(&shared, &mut transmits).await;
    }
}

async fn udp_to_tun(shared: Arc<Shared>) {
    let mut datagram = vec![0u8; 65536];
    let mut transmits = Vec::new();
    loop {
        let (n, from) = match shared.udp.recv_from(&mut datagram).await {
            Ok(r) => r,
            Err(err) => {
                // ICMP errors surface here on Linux; they are no reason to stop.
                tracing::trace!(error = %err, "UDP receive error");
                continue;
            }
        };
        let incoming = {
            let mut device = shared.device.lock().expect("not poisoned");
            device.handle_datagram(Now::system(), canonical(from), &mut datagram[..n], &mut transmits)
        };
        if let Incoming::Packet { range, .. } = incoming
            && let Err(err) = shared.tun.send(&datagram[range]).await
        {
            tracing::debug!(error = %err, "writing to the TUN device failed");
        }
        send_all(&shared, &mut transmits).await;
    }
}

async fn timers(shared: Arc<Shared>) {
    let mut transmits = Vec::new();
    loop {
        let deadline = {
            let mut device = shared.device.lock().expect("not poisoned");
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
