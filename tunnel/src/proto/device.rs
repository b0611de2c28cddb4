//! The engine: our identity, the peers, and the rules that move packets,
//! handshakes and timers between them (WireGuard paper §6).
//!
//! It never reads a clock or touches a socket. The shell feeds it datagrams
//! from the network, packets from the TUN device and the time, and carries out
//! what it returns: a datagram to send, a packet to deliver.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    ops::Range,
    time::{Duration, Instant},
};

use ferry_paths::ProbeSecrets;
use rand_core::CryptoRngCore;

use super::{
    allowed_ips::{AllowedIps, IpNet},
    constants::*,
    cookie::CookieChecker,
    handshake::{self, HandshakeError, Identity},
    indices::{IndexChange, IndexTable},
    messages::{self, Initiation, Message, Response, TRANSPORT_HEADER_LEN},
    peer::{MAX_STAGED, Peer, PeerStats, Slot},
    ratelimit::RateLimiter,
    session::{OpenJob, SealJob, Session, SessionError},
    timestamp::Tai64N,
};
use crate::{PresharedKey, PrivateKey, PublicKey};

/// The time, as the shell reads it: a monotonic instant for timers and the
/// wall clock for handshake timestamps.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub wall: Tai64N,
}

impl Now {
    /// The system's clocks; only the IO shell calls this.
    pub fn system() -> Now {
        Now { instant: Instant::now(), wall: Tai64N::now() }
    }
}

/// A handle on a peer of a [`Device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u32);

/// A peer as configured (by a wg-quick file, the gateway, the client).
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<Duration>,
}

impl PeerConfig {
    pub fn new(public_key: PublicKey) -> PeerConfig {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub private_key: PrivateKey,
    /// Handshake messages per second above which the device counts as under
    /// load: it then asks for cookies (mac2) and rate-limits per source.
    pub handshake_load_threshold: u32,
    /// The tunnel MTU: packets are padded to 16 bytes but not beyond it.
    pub mtu: u16,
}

impl DeviceConfig {
    pub fn new(private_key: PrivateKey) -> DeviceConfig {
        DeviceConfig { private_key, handshake_load_threshold: 1000, mtu: 1420 }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// What [`Device::handle_datagram`] made of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A decrypted packet for the TUN device, at `range` in the datagram
    /// buffer (padding removed).
    Packet { peer: PeerId, range: Range<usize> },
    /// A handshake, cookie or keepalive; anything to send is in the transmits.
    Handled,
    /// Nothing useful; counted under the reason.
    Dropped(Drop),
}

/// What [`Device::send_packet`] did with a packet from the TUN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Encrypted into the output buffer: `len` bytes to send to `to`.
    Datagram { to: SocketAddr, len: usize },
    /// Held until a handshake completes (which may have been started).
    Queued,
}

/// What [`Device::prepare_packet`] did with a packet from the TUN device.
pub enum Prepared {
    /// Written into the output buffer, to send to `to` once `job` has
    /// encrypted it.
    Seal { to: SocketAddr, job: SealJob },
    /// Held until a handshake completes (which may have been started).
    Queued,
}

/// What [`Device::begin_datagram`] made of a datagram.
pub enum Begin {
    /// Transport data to decrypt, then to finish with [`Device::finish_open`].
    Open(PendingOpen),
    /// Anything else, handled.
    Done(Incoming),
}

/// A transport message that passed the checks before its AEAD.
pub struct PendingOpen {
    peer: PeerId,
    receiver: u32,
    from: SocketAddr,
    job: OpenJob,
}

impl PendingOpen {
    /// Authenticates and decrypts the datagram in place (no device needed).
    pub fn open(&self, datagram: &mut [u8]) -> Result<Range<usize>, SessionError> {
        self.job.open(datagram)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    #[error("no peer's allowed IPs contain the destination {0}")]
    NoRoute(IpAddr),
    #[error("the peer has no endpoint yet")]
    NoEndpoint,
    #[error("the output buffer is too small for the encrypted packet")]
    BufferTooSmall,
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Drop {
    /// Not a WireGuard message (type word or length).
    Malformed,
    UnknownIndex,
    BadMac1,
    /// Under load without a valid mac2: a cookie reply was sent instead.
    CookieRequired,
    RateLimited,
    Handshake(HandshakeError),
    /// An initiation whose timestamp is not newer than the last accepted one.
    ReplayedInitiation,
    /// Initiations from one peer faster than HANDSHAKE_FLOOD_INTERVAL.
    InitiationFlood,
    UnexpectedResponse,
    BadCookieReply,
    Session(SessionError),
    /// A decrypted packet that is not IPv4/IPv6 or whose length is wrong.
    BadInnerPacket,
    /// A decrypted packet whose source is not among the sender's allowed IPs.
    SourceNotAllowed,
    /// The device's own maps disagreed (an index, key or route named a peer
    /// that is gone): a bug, dropped and counted rather than a panic under the
    /// endpoint's lock that would stop every tunnel. See
    /// [`DeviceStats::internal_inconsistencies`].
    InternalInconsistency,
}

impl Drop {
    /// Every [`Drop::label`], so that metrics can show each at zero before
    /// the first drop.
    pub const LABELS: [&'static str; 14] = [
        "malformed",
        "unknown_index",
        "bad_mac1",
        "cookie_required",
        "rate_limited",
        "handshake",
        "replayed_initiation",
        "initiation_flood",
        "unexpected_response",
        "bad_cookie_reply",
        "session",
        "bad_inner_packet",
        "source_not_allowed",
        "internal_inconsistency",
    ];

    /// A short name for metrics labels. Handshake and session errors are
    /// one label each: their kinds are in the logs, and a label per kind
    /// would multiply series for what is rare.
    pub fn label(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::UnknownIndex => "unknown_index",
            Drop::BadMac1 => "bad_mac1",
            Drop::CookieRequired => "cookie_required",
            Drop::RateLimited => "rate_limited",
            Drop::Handshake(_) => "handshake",
            Drop::ReplayedInitiation => "replayed_initiation",
            Drop::InitiationFlood => "initiation_flood",
            Drop::UnexpectedResponse => "unexpected_response",
            Drop::BadCookieReply => "bad_cookie_reply",
            Drop::Session(_) => "session",
            Drop::BadInnerPacket => "bad_inner_packet",
            Drop::SourceNotAllowed => "source_not_allowed",
            Drop::InternalInconsistency => "internal_inconsistency",
        }
    }
}

/// Counters of what the device did, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub drops: HashMap<Drop, u64>,
    pub handshakes_received: u64,
    pub cookie_replies_sent: u64,
    /// Steps (a datagram, a packet, a timer run) abandoned because the maps
    /// disagreed; always zero unless the device has a bug.
    pub internal_inconsistencies: u64,
}

/// Where a [`Device`] draws its randomness: local indices, handshake
/// ephemerals, timer jitter and cookie secrets. The shell passes the OS RNG;
/// tests pass a seeded one, so a run is the same every time.
pub type DeviceRng = Box<dyn CryptoRngCore + Send>;

pub struct Device {
    private_key: PrivateKey,
    rng: DeviceRng,
    identity: Identity,
    checker: CookieChecker,
    peers: HashMap<PeerId, Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    pub(crate) indices: IndexTable,
    allowed_ips: AllowedIps<PeerId>,
    limiter: RateLimiter,
    load_threshold: u32,
    mtu: usize,
    /// Handshake messages in the current one-second window.
    load_window: (Option<Instant>, u32),
    under_load_until: Option<Instant>,
    next_peer: u32,
    pub stats: DeviceStats,
}

impl Device {
    pub fn new(config: DeviceConfig, rng: DeviceRng) -> Device {
        let identity = Identity::new(&config.private_key);
        Device {
            private_key: config.private_key,
            rng,
            checker: CookieChecker::new(&identity.public),
            identity,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            indices: IndexTable::default(),
            allowed_ips: AllowedIps::default(),
            limiter: RateLimiter::default(),
            load_threshold: config.handshake_load_threshold,
            mtu: usize::from(config.mtu),
            load_window: (None, 0),
            under_load_until: None,
            next_peer: 0,
            stats: DeviceStats::default(),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.identity.public
    }

    /// Our private key, for the UAPI `get` that `wg showconf` uses (root only).
    pub fn private_key_bytes(&self) -> &[u8; 32] {
        self.private_key.as_bytes()
    }

    /// Adds a peer, or updates the one with that public key (endpoint,
    /// allowed IPs, keepalive, PSK) while its sessions keep running.
    pub fn add_peer(&mut self, config: PeerConfig) -> Result<PeerId, HandshakeError> {
        let psk = config.preshared_key.as_ref().map_or([0; 32], |k| k.0);
        let known = self.by_key.get(&config.public_key).copied();
        let id = match known.map(|id| (id, self.peers.get_mut(&id))) {
            Some((id, Some(peer))) => {
                peer.psk = psk;
                Self::configure(peer, &config);
                id
            }
            lost_or_new => {
                let static_static = self.identity.static_static(&config.public_key)?;
                if let Some((lost, _)) = lost_or_new {
                    // The key named a peer that is gone: start it afresh.
                    note_inconsistency(&mut self.stats, lost, "add_peer");
                    self.indices.remove_owner(lost);
                    self.allowed_ips.remove_value(lost);
                }
                let id = PeerId(self.next_peer);
                self.next_peer += 1;
                let mut peer = Peer::new(config.public_key, psk, static_static);
                Self::configure(&mut peer, &config);
                self.peers.insert(id, peer);
                self.by_key.insert(config.public_key, id);
                id
            }
        };
        self.allowed_ips.remove_value(id);
        for net in config.allowed_ips {
            self.allowed_ips.insert(net, id);
        }
        Ok(id)
    }

    /// The endpoint and keepalive part of [`Device::add_peer`].
    fn configure(peer: &mut Peer, config: &PeerConfig) {
        if config.endpoint.is_some() {
            peer.endpoint = config.endpoint;
        }
        let keepalive = config.persistent_keepalive.filter(|d| !d.is_zero());
        if keepalive != peer.persistent_keepalive {
            // A new interval starts with a keepalive at the next timer run
            // (which handshakes first if needed), as wireguard-go does.
            peer.timers.persistent_keepalive = None;
            peer.timers.keepalive_now = keepalive.is_some();
        }
        peer.persistent_keepalive = keepalive;
    }

    /// Removes a peer: its sessions, handshake, indices and allowed IPs go at
    /// once. Returns whether it existed.
    pub fn remove_peer(&mut self, key: &PublicKey) -> bool {
        let Some(id) = self.by_key.remove(key) else { return false };
        self.peers.remove(&id);
        self.indices.remove_owner(id);
        self.allowed_ips.remove_value(id);
        true
    }

    /// Points the peer's datagrams at `to` (a path chosen by the shell); the
    /// peer may still roam away from it, as WireGuard does. Returns false for
    /// an unknown peer.
    pub fn set_endpoint(&mut self, key: &PublicKey, to: SocketAddr) -> bool {
        let Some(peer) = self.by_key.get(key).and_then(|id| self.peers.get_mut(id)) else { return false };
        peer.endpoint = Some(to);
        true
    }

    /// The secrets for authenticated path probes with the peer, derived from
    /// our static-static DH with it, which only the two ends can compute.
    /// The private key stays here.
    pub fn probe_secrets(&self, key: &PublicKey) -> Option<ProbeSecrets> {
        let peer = self.by_key.get(key).and_then(|id| self.peers.get(id))?;
        Some(ProbeSecrets::derive(&peer.static_static, self.identity.public.as_bytes(), key.as_bytes()))
    }

    /// Whether `key` can be a peer (its DH with our key is not all-zero).
    pub fn check_peer_key(&self, key: &PublicKey) -> Result<(), HandshakeError> {
        self.identity.static_static(key).map(drop)
    }

    pub fn peer_id(&self, key: &PublicKey) -> Option<PeerId> {
        self.by_key.get(key).copied()
    }

    pub fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(&id)
    }

    pub fn peer_stats(&self, id: PeerId) -> Option<PeerStats> {
        self.peers.get(&id).map(|p| p.stats)
    }

    pub fn allowed_ips_of(&self, id: PeerId) -> Vec<IpNet> {
        self.allowed_ips.prefixes_of(id)
    }

    /// Starts recording changes to the local receiver indices and returns the
    /// ones live now. See [`IndexTable`] for why a shell wants this.
    pub fn watch_indices(&mut self) -> Vec<u32> {
        self.indices.watch()
    }

    /// The index changes since the last call (nothing unless watched). Drain
    /// them before sending the datagrams of the same call.
    pub fn drain_index_changes(&mut self) -> impl Iterator<Item = IndexChange> + '_ {
        self.indices.drain_changes()
    }

    pub fn peers(&self) -> impl Iterator<Item = (PeerId, &Peer)> {
        self.peers.iter().map(|(id, p)| (*id, p))
    }

    /// Tells the device the shell is overloaded (its handshake queue is deep)
    /// until `until`: handshakes then need a cookie.
    pub fn set_under_load_until(&mut self, until: Instant) {
        self.under_load_until = Some(self.under_load_until.map_or(until, |u| u.max(until)));
    }

    fn under_load(&self, now: Instant) -> bool {
        self.under_load_until.is_some_and(|until| now < until)
    }

    /// Counts a handshake message toward the load estimate.
    fn note_handshake(&mut self, now: Instant) {
        self.stats.handshakes_received += 1;
        let (start, count) = &mut self.load_window;
        if start.is_none_or(|s| now.saturating_duration_since(s) >= Duration::from_secs(1)) {
            *start = Some(now);
            *count = 0;
        }
        *count += 1;
        if *count > self.load_threshold {
            // Stay under load for a second after the rate drops, as wireguard-go.
            self.under_load_until = Some(now + Duration::from_secs(1));
        }
    }

    fn drop(&mut self, reason: Drop) -> Incoming {
        *self.stats.drops.entry(reason).or_default() += 1;
        Incoming::Dropped(reason)
    }

    /// The peer `id` names, for a step that had to let go of it (to call
    /// another step on the whole device) or that found `id` in another map.
    /// See [`live_peer`].
    fn live(&mut self, id: PeerId, step: &'static str) -> Option<&mut Peer> {
        live_peer(&mut self.peers, &mut self.stats, id, step)
    }

    /// Encrypts a packet from the TUN device for the peer its destination
    /// routes to, into `out`. Handshakes, and packets that were waiting for
    /// one, go to `transmits`.
    pub fn send_packet(
        &mut self,
        now: Now,
        packet: &[u8],
        out: &mut [u8],
        transmits: &mut Vec<Transmit>,
    ) -> Result<Sent, SendError> {
        match self.prepare_packet(now, packet, out, transmits)? {
            Prepared::Seal { to, job } => {
                job.seal(out);
                Ok(Sent::Datagram { to, len: job.len })
            }
            Prepared::Queued => Ok(Sent::Queued),
        }
    }

    /// [`Device::send_packet`] without the encryption: routes the packet,
    /// takes its session's next counter and writes the message into `out`,
    /// leaving the AEAD to the returned job, which the caller runs (on any
    /// thread) before sending `out[..job.len]`. Everything that needs the
    /// device happens here.
    pub fn prepare_packet(
        &mut self,
        now: Now,
        packet: &[u8],
        out: &mut [u8],
        transmits: &mut Vec<Transmit>,
    ) -> Result<Prepared, SendError> {
        let Some(inner) = InnerPacket::parse(packet) else { return Err(SendError::NotIp) };
        let id = self.allowed_ips.lookup(inner.destination).ok_or(SendError::NoRoute(inner.destination))?;
        // A route to a peer that is gone is no route.
        let Some(peer) = live_peer(&mut self.peers, &mut self.stats, id, "send_packet") else {
            return Err(SendError::NoRoute(inner.destination));
        };
        let Some(to) = peer.endpoint else { return Err(SendError::NoEndpoint) };
        if Session::sealed_len(packet.len()) > out.len() {
            return Err(SendError::BufferTooSmall);
        }
        let sendable =
            peer.current.as_mut().filter(|s| s.usable(now.instant) && s.sent() < REJECT_AFTER_MESSAGES);
        let Some(session) = sendable else {
            peer.stage(packet);
            self.initiate_handshake(id, now, transmits, false);
            return Ok(Prepared::Queued);
        };
        let job = session
            .prepare_seal(now.instant, packet, self.mtu, out)
            .map_err(|_| SendError::BufferTooSmall)?;
        peer.stats.tx_bytes += job.len as u64;
        Self::on_data_sent(peer, now.instant, &mut *self.rng);
        self.keep_key_fresh_sending(id, now, transmits);
        Ok(Prepared::Seal { to, job })
    }

    /// Handles a datagram from `from`; decrypts transport data in place.
    pub fn handle_datagram(
        &mut self,
        now: Now,
        from: SocketAddr,
        datagram: &mut [u8],
        transmits: &mut Vec<Transmit>,
    ) -> Incoming {
        let message = match messages::parse(datagram) {
            Ok(m) => m,
            Err(_) => return self.drop(Drop::Malformed),
        };
        match message {
            Message::Initiation(init) => {
                let bytes = *init.0;
                self.handle_initiation(now, from, &bytes, transmits)
            }
            Message::Response(resp) => {
                let bytes = *resp.0;
                self.handle_response(now, from, &bytes, transmits)
            }
            Message::CookieReply(reply) => {
                let Some(&id) = self.indices.get(&reply.receiver()) else {
                    return self.drop(Drop::UnknownIndex);
                };
                let Some(peer) = self.live(id, "cookie reply") else {
                    return self.drop(Drop::InternalInconsistency);
                };
                match peer.cookies.consume(now.instant, &reply) {
                    Ok(()) => Incoming::Handled,
                    Err(_) => self.drop(Drop::BadCookieReply),
                }
            }
            Message::Transport(t) => {
                let receiver = t.receiver();
                match self.check_transport(now, from, receiver, datagram) {
                    Ok(pending) => {
                        let opened = pending.job.open(datagram);
                        self.finish_open(now, pending, opened, datagram, transmits)
                    }
                    Err(reason) => self.drop(reason),
                }
            }
        }
    }

    /// [`Device::handle_datagram`] in two steps around the AEAD, so that the
    /// decryption of transport data can run without the device (on any
    /// thread, several datagrams at once): everything but transport data is
    /// handled here at once ([`Begin::Done`]); transport data passes the
    /// cheap checks and comes back as a [`PendingOpen`] to decrypt with
    /// [`PendingOpen::open`] and hand to [`Device::finish_open`] with the
    /// same datagram. Datagrams of one peer must be finished in the order
    /// they arrived for the TUN device to see them in that order; the replay
    /// window takes them in any order.
    pub fn begin_datagram(
        &mut self,
        now: Now,
        from: SocketAddr,
        datagram: &mut [u8],
        transmits: &mut Vec<Transmit>,
    ) -> Begin {
        let receiver = match messages::parse(datagram) {
            Ok(Message::Transport(t)) => t.receiver(),
            _ => return Begin::Done(self.handle_datagram(now, from, datagram, transmits)),
        };
        match self.check_transport(now, from, receiver, datagram) {
            Ok(pending) => Begin::Open(pending),
            Err(reason) => Begin::Done(self.drop(reason)),
        }
    }

    /// The second step of [`Device::begin_datagram`]: `opened` is what
    /// [`PendingOpen::open`] made of `datagram`. Records the counter, moves
    /// the peer's timers and keys, and checks the packet's source.
    pub fn finish_open(
        &mut self,
        now: Now,
        pending: PendingOpen,
        opened: Result<Range<usize>, SessionError>,
        datagram: &[u8],
        transmits: &mut Vec<Transmit>,
    ) -> Incoming {
        let range = match opened {
            Ok(range) => range,
            Err(e) => return self.drop(Drop::Session(e)),
        };
        let PendingOpen { peer: id, receiver, from, job } = pending;
        // The session may have gone (or its index moved to another) while the
        // datagram was decrypted: then it is dropped as if it came later.
        if self.indices.get(&receiver) != Some(&id) {
            return self.drop(Drop::UnknownIndex);
        }
        let Some(peer) = live_peer(&mut self.peers, &mut self.stats, id, "transport") else {
            return self.drop(Drop::InternalInconsistency);
        };
        let Some((session, slot)) = peer.session_mut(receiver) else { return self.drop(Drop::UnknownIndex) };
        if let Err(e) = session.accept(job.counter) {
            return self.drop(Drop::Session(e));
        }
        self.after_open(now, from, id, slot, range, datagram, transmits)
    }

    /// mac1, and under load mac2 and the per-source rate limit.
    fn admit_handshake(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        mac1_offset: usize,
        sender: u32,
        transmits: &mut Vec<Transmit>,
    ) -> Result<(), Drop> {
        if !self.checker.mac1_valid(bytes, mac1_offset) {
            return Err(Drop::BadMac1);
        }
        self.note_handshake(now);
        if self.under_load(now) {
            if !self.checker.mac2_valid(now, from, bytes, mac1_offset + 16, &mut *self.rng) {
                let Some(mac1) =
                    bytes.get(mac1_offset..mac1_offset + 16).and_then(|b| <[u8; 16]>::try_from(b).ok())
                else {
                    return Err(Drop::Malformed);
                };
                let reply = self.checker.reply(now, from, sender, &mac1, &mut *self.rng);
                transmits.push(Transmit { to: from, payload: reply.to_vec() });
                self.stats.cookie_replies_sent += 1;
                return Err(Drop::CookieRequired);
            }
            if !self.limiter.allow(now, from.ip()) {
                return Err(Drop::RateLimited);
            }
        }
        Ok(())
    }

    fn handle_initiation(
        &mut self,
        now: Now,
        from: SocketAddr,
        bytes: &[u8; messages::INITIATION_LEN],
        transmits: &mut Vec<Transmit>,
    ) -> Incoming {
        let init = Initiation(bytes);
        if let Err(reason) =
            self.admit_handshake(now.instant, from, bytes, Initiation::MAC1_OFFSET, init.sender(), transmits)
        {
            return self.drop(reason);
        }
        let consumed = {
            let by_key = &self.by_key;
            let peers = &self.peers;
            handshake::consume_initiation(&self.identity, &init, |key| {
                by_key.get(key).and_then(|id| peers.get(id)).map(|p| p.static_static)
            })
        };
        let consumed = match consumed {
            Ok(c) => c,
            Err(e) => return self.drop(Drop::Handshake(e)),
        };
        // consume_initiation found the key through by_key and peers, so both
        // still name the peer; a miss is a bug, dropped.
        let Some(&id) = self.by_key.get(&consumed.peer) else {
            return self.drop(Drop::InternalInconsistency);
        };
        let Some(peer) = live_peer(&mut self.peers, &mut self.stats, id, "initiation") else {
            return self.drop(Drop::InternalInconsistency);
        };
        if peer.latest_timestamp.is_some_and(|t| consumed.timestamp <= t) {
            return self.drop(Drop::ReplayedInitiation);
        }
        if peer
            .last_initiation_consumed
            .is_some_and(|t| now.instant.saturating_duration_since(t) < HANDSHAKE_FLOOD_INTERVAL)
        {
            return self.drop(Drop::InitiationFlood);
        }
        peer.latest_timestamp = Some(consumed.timestamp);
        peer.last_initiation_consumed = Some(now.instant);

        let local_index = new_index(&self.indices, &mut *self.rng);
        let (mut response, keys) = match handshake::respond(&consumed, &peer.psk, local_index, &mut *self.rng)
        {
            Ok(r) => r,
            Err(e) => return self.drop(Drop::Handshake(e)),
        };
        peer.cookies.stamp(now.instant, &mut response, Response::MAC1_OFFSET);
        transmits.push(Transmit { to: from, payload: response.to_vec() });
        // A response counts as a handshake sent: we do not start our own while
        // the initiator's confirmation is on its way.
        peer.timers.last_initiation_sent = Some(now.instant);
        peer.endpoint = Some(from);
        peer.stats.last_rx = Some(now.instant);
        if let Some(old) = peer.next.replace(Session::new(&keys, now.instant)) {
            self.indices.remove(&old.local_index);
        }
        self.indices.insert(local_index, id);
        Self::on_session_derived(peer, now.instant);
        Self::on_authenticated_received(peer, now.instant);
        Self::on_authenticated_sent(peer, now.instant);
        Incoming::Handled
    }

    fn handle_response(
        &mut self,
        now: Now,
        from: SocketAddr,
        bytes: &[u8; messages::RESPONSE_LEN],
        transmits: &mut Vec<Transmit>,
    ) -> Incoming {
        let resp = Response(bytes);
        if let Err(reason) =
            self.admit_handshake(now.instant, from, bytes, Response::MAC1_OFFSET, resp.sender(), transmits)
        {
            return self.drop(reason);
        }
        let Some(&id) = self.indices.get(&resp.receiver()) else { return self.drop(Drop::UnknownIndex) };
        let Some(peer) = live_peer(&mut self.peers, &mut self.stats, id, "response") else {
            return self.drop(Drop::InternalInconsistency);
        };
        let Some(state) = peer.handshake.as_ref().filter(|h| h.local_index == resp.receiver()) else {
            return self.drop(Drop::UnexpectedResponse);
        };
        let keys = match handshake::consume_response(&self.identity, state, &peer.psk, &resp) {
            Ok(k) => k,
            Err(e) => return self.drop(Drop::Handshake(e)),
        };
        peer.handshake = None;
        peer.endpoint = Some(from);
        peer.stats.last_rx = Some(now.instant);
        if let Some(sent) = peer.initiation_sent.take() {
            peer.stats.handshake_rtt = Some(now.instant.saturating_duration_since(sent));
        }
        // The initiator may use the new keys at once; the old ones linger as
        // `previous` for packets already in flight.
        // With a crossed handshake our unconfirmed responder session (`next`)
        // becomes `previous` and the old `current` goes, as in wireguard-go.
        let retired: Vec<Session> = match peer.next.take() {
            Some(next) => [peer.previous.replace(next), peer.current.take()].into_iter().flatten().collect(),
            None => {
                let current = peer.current.take();
                std::mem::replace(&mut peer.previous, current).into_iter().collect()
            }
        };
        for old in retired {
            self.indices.remove(&old.local_index);
        }
        peer.current = Some(Session::new(&keys, now.instant));
        Self::on_session_derived(peer, now.instant);
        Self::on_handshake_complete(peer, now.instant);
        Self::on_authenticated_received(peer, now.instant);
        self.flush_staged(id, now, transmits, true);
        Incoming::Handled
    }

    /// The checks of a transport message before its AEAD.
    fn check_transport(
        &mut self,
        now: Now,
        from: SocketAddr,
        receiver: u32,
        datagram: &[u8],
    ) -> Result<PendingOpen, Drop> {
        let Some(&id) = self.indices.get(&receiver) else { return Err(Drop::UnknownIndex) };
        let Some(peer) = live_peer(&mut self.peers, &mut self.stats, id, "transport") else {
            return Err(Drop::InternalInconsistency);
        };
        // The index is live but none of the peer's sessions holds it: a
        // handshake's index (a peer sending data before its response) or a bug.
        let Some((session, _)) = peer.session_mut(receiver) else { return Err(Drop::UnknownIndex) };
        let job = session.check_open(now.instant, datagram).map_err(Drop::Session)?;
        Ok(PendingOpen { peer: id, receiver, from, job })
    }

    /// What follows an authentic transport message: roaming, key
    /// confirmation, timers, and the inner packet's checks.
    #[allow(clippy::too_many_arguments, reason = "the step's state, passed on from finish_open")]
    fn after_open(
        &mut self,
        now: Now,
        from: SocketAddr,
        id: PeerId,
        slot: Slot,
        range: Range<usize>,
        datagram: &[u8],
        transmits: &mut Vec<Transmit>,
    ) -> Incoming {
        let Some(peer) = live_peer(&mut self.peers, &mut self.stats, id, "transport") else {
            return self.drop(Drop::InternalInconsistency);
        };
        peer.stats.rx_bytes += datagram.len() as u64;
        peer.stats.last_rx = Some(now.instant);
        peer.endpoint = Some(from);
        if slot == Slot::Next {
            // The initiator's first packet with the new keys confirms them.
            let next = peer.next.take();
            let old_previous = std::mem::replace(&mut peer.previous, peer.current.take());
            peer.current = next;
            if let Some(old) = old_previous {
                self.indices.remove(&old.local_index);
            }
            Self::on_handshake_complete(peer, now.instant);
            self.flush_staged(id, now, transmits, false);
        }
        let Some(peer) = self.live(id, "transport") else { return self.drop(Drop::InternalInconsistency) };
        Self::on_authenticated_received(peer, now.instant);
        self.keep_key_fresh_receiving(id, now, transmits);
        if range.is_empty() {
            return Incoming::Handled;
        }
        let Some(peer) = self.live(id, "transport") else { return self.drop(Drop::InternalInconsistency) };
        Self::on_data_received(peer, now.instant);
        let Some(plain) = datagram.get(range.clone()) else { return self.drop(Drop::BadInnerPacket) };
        let Some(inner) = InnerPacket::parse(plain) else { return self.drop(Drop::BadInnerPacket) };
        if self.allowed_ips.lookup(inner.source) != Some(id) {
            return self.drop(Drop::SourceNotAllowed);
        }
        Incoming::Packet { peer: id, range: range.start..range.start + inner.total_len }
    }

    /// Runs the timers that are due and returns what they send.
    pub fn update_timers(&mut self, now: Now, transmits: &mut Vec<Transmit>) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.update_peer_timers(id, now, transmits);
        }
    }

    /// The earliest instant at which [`Device::update_timers`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.timers.earliest()).min()
    }

    fn update_peer_timers(&mut self, id: PeerId, now: Now, transmits: &mut Vec<Transmit>) {
        let due = |deadline: Option<Instant>| deadline.is_some_and(|d| d <= now.instant);
        let Some(peer) = self.peers.get_mut(&id) else { return };

        if due(peer.timers.zero_key_material) {
            peer.timers.zero_key_material = None;
            let indices: Vec<u32> = peer.indices().collect();
            peer.current = None;
            peer.previous = None;
            peer.next = None;
            peer.handshake = None;
            for index in indices {
                self.indices.remove(&index);
            }
        }
        if due(peer.timers.retransmit_handshake) {
            peer.timers.retransmit_handshake = None;
            if peer.timers.handshake_attempts > MAX_HANDSHAKE_ATTEMPTS {
                // Give up; a new packet to this peer starts over.
                peer.staged.clear();
                peer.timers.send_keepalive = None;
                if let Some(h) = peer.handshake.take() {
                    self.indices.remove(&h.local_index);
                }
                if peer.timers.zero_key_material.is_none() {
                    peer.timers.zero_key_material = Some(now.instant + REJECT_AFTER_TIME * 3);
                }
            } else {
                peer.timers.handshake_attempts += 1;
                self.initiate_handshake(id, now, transmits, true);
            }
        }
        let Some(peer) = self.live(id, "timers") else { return };
        if due(peer.timers.send_keepalive) {
            peer.timers.send_keepalive = None;
            self.send_keepalive(id, now, transmits);
            let Some(peer) = self.live(id, "timers") else { return };
            if peer.timers.need_another_keepalive {
                peer.timers.need_another_keepalive = false;
                peer.timers.send_keepalive = Some(now.instant + KEEPALIVE_TIMEOUT);
            }
        }
        let Some(peer) = self.live(id, "timers") else { return };
        if due(peer.timers.new_handshake) {
            peer.timers.new_handshake = None;
            self.initiate_handshake(id, now, transmits, false);
        }
        let Some(peer) = self.live(id, "timers") else { return };
        if due(peer.timers.persistent_keepalive) || peer.timers.keepalive_now {
            peer.timers.persistent_keepalive = None;
            peer.timers.keepalive_now = false;
            self.send_keepalive(id, now, transmits);
        }
    }

    /// Sends an empty transport message, or starts a handshake if there are
    /// no usable keys.
    fn send_keepalive(&mut self, id: PeerId, now: Now, transmits: &mut Vec<Transmit>) {
        let Some(peer) = self.live(id, "keepalive") else { return };
        let Some(to) = peer.endpoint else { return };
        match peer.current.as_mut().filter(|s| s.usable(now.instant)) {
            Some(session) => {
                let mut out = vec![0u8; Session::sealed_len(0)];
                if let Ok(len) = session.seal(now.instant, &[], 0, &mut out) {
                    out.truncate(len);
                    peer.stats.tx_bytes += len as u64;
                    transmits.push(Transmit { to, payload: out });
                    Self::on_authenticated_sent(peer, now.instant);
                }
            }
            None => self.initiate_handshake(id, now, transmits, false),
        }
    }

    /// Starts (or retries) a handshake with the peer. A fresh start is skipped
    /// while the previous initiation is younger than REKEY_TIMEOUT.
    fn initiate_handshake(&mut self, id: PeerId, now: Now, transmits: &mut Vec<Transmit>, retry: bool) {
        let Some(peer) = live_peer(&mut self.peers, &mut self.stats, id, "initiate handshake") else {
            return;
        };
        let Some(to) = peer.endpoint else { return };
        if !retry {
            if peer
                .timers
                .last_initiation_sent
                .is_some_and(|t| now.instant.saturating_duration_since(t) < REKEY_TIMEOUT)
            {
                return;
            }
            peer.timers.handshake_attempts = 0;
        }
        let old = peer.handshake.take().map(|h| h.local_index);
        if let Some(old) = old {
            self.indices.remove(&old);
        }
        let local_index = new_index(&self.indices, &mut *self.rng);
        let stamp = Self::initiation_stamp(peer, now.wall);
        let Ok((state, mut message)) = handshake::initiate(
            &self.identity,
            &peer.public_key,
            &peer.static_static,
            local_index,
            stamp,
            &mut *self.rng,
        ) else {
            return;
        };
        peer.cookies.stamp(now.instant, &mut message, Initiation::MAC1_OFFSET);
        transmits.push(Transmit { to, payload: message.to_vec() });
        peer.handshake = Some(state);
        peer.initiation_sent = Some(now.instant);
        peer.timers.last_initiation_sent = Some(now.instant);
        peer.timers.retransmit_handshake = Some(now.instant + REKEY_TIMEOUT + jitter(&mut *self.rng));
        Self::on_authenticated_sent(peer, now.instant);
        self.indices.insert(local_index, id);
    }

    /// Sends the packets staged for a peer with its current keys; with none
    /// staged and `confirm` set, a keepalive confirms the keys to the
    /// responder.
    fn flush_staged(&mut self, id: PeerId, now: Now, transmits: &mut Vec<Transmit>, confirm: bool) {
        let mtu = self.mtu;
        let Some(peer) = live_peer(&mut self.peers, &mut self.stats, id, "flush staged") else { return };
        let Some(to) = peer.endpoint else { return };
        let Some(session) = peer.current.as_mut() else { return };
        if peer.staged.is_empty() && !confirm {
            return;
        }
        let staged: Vec<Vec<u8>> =
            if peer.staged.is_empty() { vec![Vec::new()] } else { peer.staged.drain(..).collect() };
        let mut sent_data = false;
        for packet in staged {
            let mut out = vec![0u8; Session::sealed_len(packet.len())];
            let Ok(len) = session.seal(now.instant, &packet, mtu, &mut out) else { break };
            out.truncate(len);
            peer.stats.tx_bytes += len as u64;
            sent_data |= !packet.is_empty();
            transmits.push(Transmit { to, payload: out });
        }
        Self::on_authenticated_sent(peer, now.instant);
        if sent_data {
            Self::on_data_sent(peer, now.instant, &mut *self.rng);
        }
    }

    /// Keys worn by REKEY_AFTER_MESSAGES are renewed by whichever side sends;
    /// keys older than REKEY_AFTER_TIME by their initiator only, so the two
    /// sides do not both start a handshake.
    fn keep_key_fresh_sending(&mut self, id: PeerId, now: Now, transmits: &mut Vec<Transmit>) {
        let Some(peer) = self.live(id, "rekey check") else { return };
        let stale = peer.current.as_ref().is_some_and(|s| {
            s.sent() > REKEY_AFTER_MESSAGES || (s.we_initiated && s.age(now.instant) >= REKEY_AFTER_TIME)
        });
        if stale {
            self.initiate_handshake(id, now, transmits, false);
        }
    }

    /// ...and when receiving with keys close to rejection.
    fn keep_key_fresh_receiving(&mut self, id: PeerId, now: Now, transmits: &mut Vec<Transmit>) {
        let Some(peer) = self.live(id, "rekey check") else { return };
        let limit = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT;
        let stale = peer.current.as_ref().is_some_and(|s| s.we_initiated && s.age(now.instant) >= limit);
        if stale {
            self.initiate_handshake(id, now, transmits, false);
        }
    }

    // The timer events of the paper (and wireguard-go's timers.go).

    fn on_data_sent(peer: &mut Peer, now: Instant, rng: &mut dyn CryptoRngCore) {
        if peer.timers.new_handshake.is_none() {
            peer.timers.new_handshake = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter(rng));
        }
        Self::on_authenticated_sent(peer, now);
    }

    fn on_data_received(peer: &mut Peer, now: Instant) {
        if peer.timers.send_keepalive.is_none() {
            peer.timers.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
        } else {
            peer.timers.need_another_keepalive = true;
        }
    }

    fn on_authenticated_sent(peer: &mut Peer, now: Instant) {
        peer.timers.send_keepalive = None;
        Self::on_traversal(peer, now);
    }

    fn on_authenticated_received(peer: &mut Peer, now: Instant) {
        peer.timers.new_handshake = None;
        Self::on_traversal(peer, now);
    }

    fn on_traversal(peer: &mut Peer, now: Instant) {
        if let Some(interval) = peer.persistent_keepalive {
            peer.timers.persistent_keepalive = Some(now + interval);
        }
    }

    /// The timestamp of an initiation to `peer`: the wall clock's, but
    /// always after the last one to this peer. A responder refuses an
    /// initiation whose timestamp is not later than the latest it accepted
    /// from us, so a wall clock stepped back (or set right after a step
    /// forward) would otherwise leave this end unable to start a handshake
    /// with a peer until the clock passed that time again, up to hours; and
    /// only a handshake that this end starts can move its binding at a
    /// relay after its NAT mapped it anew. Per peer, not the device's
    /// latest: a peer added after a step forward was set right gets the
    /// true time, not one a later process could not follow. Within one
    /// process only: a restart starts from the wall clock again.
    fn initiation_stamp(peer: &mut Peer, wall: Tai64N) -> Tai64N {
        let stamp = match peer.last_stamp {
            Some(last) if wall <= last => last.after(),
            _ => wall,
        };
        peer.last_stamp = Some(stamp);
        stamp
    }

    fn on_handshake_complete(peer: &mut Peer, now: Instant) {
        peer.timers.retransmit_handshake = None;
        peer.timers.handshake_attempts = 0;
        peer.stats.last_handshake = Some(now);
        peer.stats.handshakes_completed += 1;
    }

    fn on_session_derived(peer: &mut Peer, now: Instant) {
        peer.timers.zero_key_material = Some(now + REJECT_AFTER_TIME * 3);
    }

    /// Starts a handshake with the peer now, even within REKEY_TIMEOUT of the
    /// last one (an operator's explicit rekey).
    pub fn rekey(&mut self, id: PeerId, now: Now, transmits: &mut Vec<Transmit>) {
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.timers.last_initiation_sent = None;
            self.initiate_handshake(id, now, transmits, false);
        }
    }

    /// How many packets wait for a handshake with the peer.
    pub fn staged_len(&self, id: PeerId) -> usize {
        self.peers.get(&id).map_or(0, |p| p.staged.len())
    }
}

/// The peer `id` names. Every map of the device (indices, keys, routes) names
/// only live peers, and a step that let go of a peer to call another finds it
/// again, so this always finds it. Were a bug ever to break that, the step is
/// abandoned, counted and logged: a panic here, under the endpoint's lock,
/// would stop every tunnel of the daemon.
fn live_peer<'a>(
    peers: &'a mut HashMap<PeerId, Peer>,
    stats: &mut DeviceStats,
    id: PeerId,
    step: &'static str,
) -> Option<&'a mut Peer> {
    let peer = peers.get_mut(&id);
    if peer.is_none() {
        note_inconsistency(stats, id, step);
    }
    peer
}

fn note_inconsistency(stats: &mut DeviceStats, id: PeerId, step: &'static str) {
    stats.internal_inconsistencies += 1;
    tracing::warn!(peer = id.0, step, "the device's maps name a peer that is gone; step abandoned");
}

/// Random jitter added to handshake timeouts so peers do not retry in step.
fn jitter(rng: &mut dyn CryptoRngCore) -> Duration {
    let max = REKEY_TIMEOUT_JITTER_MAX.as_millis() as u32;
    Duration::from_millis(u64::from(rng.next_u32() % (max + 1)))
}

/// A random local index that is not in use.
fn new_index(used: &IndexTable, rng: &mut dyn CryptoRngCore) -> u32 {
    loop {
        let index = rng.next_u32();
        if !used.contains(index) {
            return index;
        }
    }
}

/// The addresses and length of an IP packet, from its header.
struct InnerPacket {
    source: IpAddr,
    destination: IpAddr,
    total_len: usize,
}

impl InnerPacket {
    fn parse(packet: &[u8]) -> Option<InnerPacket> {
        match packet.first()? >> 4 {
            4 if packet.len() >= 20 => {
                let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
                let source: [u8; 4] = packet[12..16].try_into().ok()?;
                let destination: [u8; 4] = packet[16..20].try_into().ok()?;
                (20..=packet.len()).contains(&total_len).then_some(InnerPacket {
                    source: IpAddr::from(source),
                    destination: IpAddr::from(destination),
                    total_len,
                })
            }
            6 if packet.len() >= 40 => {
                let total_len = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
                let source: [u8; 16] = packet[8..24].try_into().ok()?;
                let destination: [u8; 16] = packet[24..40].try_into().ok()?;
                (total_len <= packet.len()).then_some(InnerPacket {
                    source: IpAddr::from(source),
                    destination: IpAddr::from(destination),
                    total_len,
                })
            }
            _ => None,
        }
    }
}

const _: () = assert!(MAX_STAGED > 0 && TRANSPORT_HEADER_LEN == 16);

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
