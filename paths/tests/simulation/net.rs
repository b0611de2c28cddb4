//! An in-memory network with virtual time: hosts with one UDP socket each,
//! NATs in front of them, latency, loss, and an attacker who can listen,
//! steal and inject. Each host runs a `Paths` and acts as its shell would.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_paths::{Event, Paths, PeerKey, PeerSetup, ProbeSecrets, Selected, is_probe};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

pub const WG_PORT: u16 = 51820;
/// The relays' STUN server and the relay itself (the relay path always
/// works; it carries no probes, so it needs no packets here).
pub const STUN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 200)), 3478);
pub const RELAY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 201)), 3478);
pub const ATTACKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66)), 4444);

pub const GW: usize = 0;
pub const CLIENT: usize = 1;

pub const GATEWAY_KEY: PeerKey = PeerKey([0xa1; 32]);
pub const CLIENT_KEY: PeerKey = PeerKey([0xc1; 32]);

/// NAT behaviours (RFC 4787 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping, address-and-port-dependent filtering
    /// (Linux MASQUERADE): one public port per socket, open only to the
    /// addresses that socket has sent to.
    Cone,
    /// Address-and-port-dependent mapping: a new random public port per
    /// destination, with the same filtering.
    Symmetric,
}

pub struct Nat {
    pub kind: NatKind,
    pub public_ip: Ipv4Addr,
    pub hairpin: bool,
    mappings: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    ports: BTreeMap<u16, Mapping>,
}

struct Mapping {
    internal: SocketAddr,
    allowed: BTreeSet<SocketAddr>,
}

impl Nat {
    pub fn new(kind: NatKind, public_ip: Ipv4Addr) -> Nat {
        Nat { kind, public_ip, hairpin: false, mappings: BTreeMap::new(), ports: BTreeMap::new() }
    }

    /// Translates an outgoing datagram's source, opening the filter for its destination.
    fn outbound(&mut self, internal: SocketAddr, dst: SocketAddr, rng: &mut ChaCha20Rng) -> SocketAddr {
        let key = (internal, if self.kind == NatKind::Symmetric { Some(dst) } else { None });
        let port = match self.mappings.get(&key) {
            Some(port) => *port,
            None => {
                let port = loop {
                    let candidate = 1024 + (rng.next_u32() % 64000) as u16;
                    if !self.ports.contains_key(&candidate) {
                        break candidate;
                    }
                };
                self.mappings.insert(key, port);
                self.ports.insert(port, Mapping { internal, allowed: BTreeSet::new() });
                port
            }
        };
        if let Some(mapping) = self.ports.get_mut(&port) {
            mapping.allowed.insert(dst);
        }
        SocketAddr::new(IpAddr::V4(self.public_ip), port)
    }

    /// Where an incoming datagram from `src` to public port `port` goes, if the filter lets it in.
    fn inbound(&self, src: SocketAddr, port: u16) -> Option<SocketAddr> {
        let mapping = self.ports.get(&port)?;
        mapping.allowed.contains(&src).then_some(mapping.internal)
    }

    /// The NAT gets a new public address and loses every mapping (a new
    /// network, or a reboot of the box).
    pub fn renumber(&mut self, public_ip: Ipv4Addr) {
        self.public_ip = public_ip;
        self.mappings.clear();
        self.ports.clear();
    }
}

pub struct Host {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub nat: Option<usize>,
    pub paths: Paths,
    pub peer: PeerKey,
    pub secrets: ProbeSecrets,
    /// The selection as the shell carried it out (the last event).
    pub selected: Selected,
    /// Every event: (time since start, selection, why).
    pub log: Vec<(Duration, Selected, &'static str)>,
    pub data_received: u64,
    /// Events about other peers than `peer`.
    pub other_events: Vec<(PeerKey, Selected)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    /// Sent within the LAN behind this NAT (not over the internet).
    pub lan: Option<usize>,
}

type Thief = Box<dyn FnMut(&Packet) -> bool>;

pub struct Net {
    pub start: Instant,
    pub now: Instant,
    rng: ChaCha20Rng,
    pub nats: Vec<Nat>,
    pub hosts: Vec<Host>,
    flight: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: BTreeMap<u64, Packet>,
    seq: u64,
    /// Drops every datagram between the hosts (the direct paths are cut).
    pub cut: bool,
    /// Drops probes only (a middlebox that passes WireGuard and nothing else).
    pub drop_probes: bool,
    pub loss_percent: u32,
    pub internet_delay: Duration,
    pub lan_delay: Duration,
    /// Every datagram as it left its sender's network (after NAT).
    pub tap: Vec<Packet>,
    /// Datagrams the thief took off the wire instead of delivering them.
    pub stolen: Vec<Packet>,
    thief: Option<Thief>,
    /// What arrived at the attacker's address.
    pub attacker_inbox: Vec<Packet>,
    /// Each host sends a WireGuard-like datagram on its direct path this often.
    pub data_interval: Option<Duration>,
    next_data: Instant,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        let start = Instant::now();
        Net {
            start,
            now: start,
            rng: ChaCha20Rng::seed_from_u64(seed),
            nats: Vec::new(),
            hosts: Vec::new(),
            flight: BinaryHeap::new(),
            packets: BTreeMap::new(),
            seq: 0,
            cut: false,
            drop_probes: false,
            loss_percent: 0,
            internet_delay: Duration::from_millis(15),
            lan_delay: Duration::from_millis(1),
            tap: Vec::new(),
            stolen: Vec::new(),
            thief: None,
            attacker_inbox: Vec::new(),
            data_interval: Some(Duration::from_millis(100)),
            next_data: start,
        }
    }

    pub fn at(&self, since_start: Duration) -> Instant {
        self.start + since_start
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn add_nat(&mut self, nat: Nat) -> usize {
        self.nats.push(nat);
        self.nats.len() - 1
    }

    /// A host whose `Paths` draws from its own seeded RNG.
    pub fn add_host(
        &mut self,
        name: &'static str,
        addr: SocketAddr,
        nat: Option<usize>,
        peer: PeerKey,
        secrets: ProbeSecrets,
    ) -> usize {
        let paths = Paths::new(ChaCha20Rng::seed_from_u64(self.rng.next_u64()));
        self.hosts.push(Host {
            name,
            addr,
            nat,
            paths,
            peer,
            secrets,
            selected: Selected::None,
            log: Vec::new(),
            data_received: 0,
            other_events: Vec::new(),
        });
        self.hosts.len() - 1
    }

    /// The host's candidates, as its shell would gather them: its socket's
    /// address and what the STUN server sees (which opens a mapping to STUN only).
    pub fn gather(&mut self, host: usize) -> Vec<SocketAddr> {
        let addr = self.hosts[host].addr;
        let mut candidates = vec![addr];
        if let Some(nat) = self.hosts[host].nat {
            let reflexive = self.nats[nat].outbound(addr, STUN, &mut self.rng);
            candidates.push(reflexive);
        }
        candidates
    }

    pub fn add_peer(&mut self, host: usize, remote_candidates: Vec<SocketAddr>) {
        let now = self.now;
        let h = &mut self.hosts[host];
        let setup = PeerSetup { secrets: h.secrets.clone(), relay: Some(RELAY), remote_candidates };
        h.paths.add_peer(h.peer, setup, now).expect("a fresh tag");
        self.flush(host);
    }

    pub fn set_remote_candidates(&mut self, host: usize, candidates: Vec<SocketAddr>) {
        let now = self.now;
        let h = &mut self.hosts[host];
        h.paths.set_remote_candidates(&h.peer.clone(), candidates, now);
        self.flush(host);
    }

    /// Takes the next datagram for which `which` says yes off the wire.
    pub fn steal_next(&mut self, which: impl FnMut(&Packet) -> bool + 'static) {
        self.thief = Some(Box::new(which));
    }

    /// The attacker sends `payload` to `dst` claiming to be `src`.
    pub fn inject(&mut self, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>) {
        let at = self.now + self.internet_delay;
        self.schedule(at, Packet { src, dst, payload, lan: None });
    }

    /// Runs the shell's step 4: transmits onto the wire, events into the log.
    pub fn flush(&mut self, host: usize) {
        while let Some(transmit) = self.hosts[host].paths.poll_transmit() {
            self.send(host, transmit.to, transmit.payload);
        }
        let elapsed = self.elapsed();
        let h = &mut self.hosts[host];
        while let Some(Event::Selected { peer, selected, why }) = h.paths.poll_event() {
            if peer == h.peer {
                h.selected = selected;
                h.log.push((elapsed, selected, why));
            } else {
                h.other_events.push((peer, selected));
            }
        }
    }

    fn schedule(&mut self, at: Instant, packet: Packet) {
        self.seq += 1;
        self.packets.insert(self.seq, packet);
        self.flight.push(Reverse((at, self.seq)));
    }

    fn jitter(&mut self) -> Duration {
        Duration::from_micros(u64::from(self.rng.next_u32() % 3000))
    }

    /// A datagram from `host`'s socket to `dst`, routed as its network would.
    pub fn send(&mut self, host: usize, dst: SocketAddr, payload: Vec<u8>) {
        let local = self.hosts[host].addr;
        let (src, delay, lan) = match self.hosts[host].nat {
            None => (local, self.internet_delay, None),
            Some(nat) => {
                let on_lan = self.hosts.iter().any(|h| h.nat == Some(nat) && h.addr.ip() == dst.ip());
                if on_lan {
                    (local, self.lan_delay, Some(nat))
                } else if is_private(dst.ip()) {
                    return; // No route to another site's private network.
                } else {
                    let src = self.nats[nat].outbound(local, dst, &mut self.rng);
                    let hairpin = IpAddr::V4(self.nats[nat].public_ip) == dst.ip();
                    if hairpin && !self.nats[nat].hairpin {
                        return;
                    }
                    (src, if hairpin { self.lan_delay } else { self.internet_delay }, None)
                }
            }
        };
        let packet = Packet { src, dst, payload, lan };
        self.tap.push(packet.clone());
        if let Some(thief) = self.thief.as_mut()
            && thief(&packet)
        {
            self.thief = None;
            self.stolen.push(packet);
            return;
        }
        if self.loss_percent > 0 && self.rng.next_u32() % 100 < self.loss_percent {
            return;
        }
        let at = self.now + delay + self.jitter();
        self.schedule(at, packet);
    }

    fn arrive(&mut self, packet: Packet) {
        let from_attacker = packet.src == ATTACKER || packet.dst == ATTACKER;
        if self.cut && !from_attacker {
            return;
        }
        if self.drop_probes && is_probe(&packet.payload) {
            return;
        }
        if packet.dst == ATTACKER {
            self.attacker_inbox.push(packet);
            return;
        }
        let host = match packet.lan {
            Some(nat) => self.hosts.iter().position(|h| h.nat == Some(nat) && h.addr == packet.dst),
            None => {
                let public_host = self.hosts.iter().position(|h| h.nat.is_none() && h.addr == packet.dst);
                let behind_nat =
                    self.nats.iter().position(|n| IpAddr::V4(n.public_ip) == packet.dst.ip()).and_then(
                        |nat| {
                            let internal = self.nats[nat].inbound(packet.src, packet.dst.port())?;
                            self.hosts.iter().position(|h| h.nat == Some(nat) && h.addr == internal)
                        },
                    );
                public_host.or(behind_nat)
            }
        };
        if let Some(host) = host {
            self.receive(host, packet.src, &packet.payload);
        }
    }

    /// The shell's step 3.
    fn receive(&mut self, host: usize, from: SocketAddr, payload: &[u8]) {
        let now = self.now;
        let h = &mut self.hosts[host];
        if is_probe(payload) {
            let _ = h.paths.handle_probe(from, payload, now);
        } else {
            h.data_received += 1;
            h.paths.note_rx(&h.peer.clone(), from, now);
        }
        self.flush(host);
    }

    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        self.run_until(end);
    }

    pub fn run_until(&mut self, end: Instant) {
        let mut spins_at_same_instant = 0u32;
        loop {
            for host in 0..self.hosts.len() {
                self.flush(host);
            }
            let next_packet = self.flight.peek().map(|Reverse((at, _))| *at);
            let next_timer = self.hosts.iter().filter_map(|h| h.paths.poll_timeout()).min();
            let next_data = self.data_interval.map(|_| self.next_data);
            let Some(next) = [next_packet, next_timer, next_data].into_iter().flatten().min() else {
                self.now = end;
                return;
            };
            if next > end {
                self.now = end;
                return;
            }
            let next = next.max(self.now);
            if next == self.now {
                spins_at_same_instant += 1;
                assert!(spins_at_same_instant < 10_000, "poll_timeout keeps asking for the same instant");
            } else {
                spins_at_same_instant = 0;
            }
            self.now = next;
            while let Some(Reverse((at, seq))) = self.flight.peek().copied() {
                if at > self.now {
                    break;
                }
                self.flight.pop();
                if let Some(packet) = self.packets.remove(&seq) {
                    self.arrive(packet);
                }
            }
            for host in 0..self.hosts.len() {
                if self.hosts[host].paths.poll_timeout().is_some_and(|at| at <= self.now) {
                    let now = self.now;
                    self.hosts[host].paths.handle_timeout(now);
                    self.flush(host);
                }
            }
            if let Some(interval) = self.data_interval
                && self.next_data <= self.now
            {
                self.next_data = self.now + interval;
                for host in 0..self.hosts.len() {
                    if let Selected::Direct(to) = self.hosts[host].selected {
                        self.send(host, to, b"wireguard data".to_vec());
                    }
                }
            }
        }
    }

    pub fn selected(&self, host: usize) -> Selected {
        self.hosts[host].selected
    }

    pub fn both_direct(&self) -> bool {
        self.hosts.iter().all(|h| matches!(h.selected, Selected::Direct(_)))
    }

    pub fn both_relay(&self) -> bool {
        self.hosts.iter().all(|h| h.selected == Selected::Relay)
    }

    /// Runs until `done` holds (checked after every step of at most `step`) or `limit` passes; returns when it held.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Net) -> bool,
    ) -> Option<Duration> {
        let step = Duration::from_millis(1);
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return Some(self.elapsed());
            }
            self.run_for(step);
        }
        done(self).then(|| self.elapsed())
    }
}

pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(_) => false,
    }
}

/// Where a host sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Public,
    Behind(NatKind),
}

pub struct Scenario {
    pub gateway: Placement,
    pub client: Placement,
    /// Both hosts behind one NAT (of the gateway's kind), on one LAN.
    pub shared_nat: bool,
    pub hairpin: bool,
    pub seed: u64,
}

impl Scenario {
    pub fn new(gateway: Placement, client: Placement) -> Scenario {
        Scenario { gateway, client, shared_nat: false, hairpin: false, seed: 13 }
    }
}

/// When the last end learned the other's candidates in [`start`].
pub const CANDIDATES_KNOWN: Duration = Duration::from_millis(450);

/// Builds the network and runs the session start as the shells and the cloud
/// would: the gateway adds the peer first (no candidates yet), the client
/// connects 300 ms later with the gateway's candidates, and the cloud passes
/// the client's candidates to the gateway 150 ms after that.
pub fn start(scenario: &Scenario) -> Net {
    let mut net = Net::new(scenario.seed);
    let mut static_static = [0u8; 32];
    ChaCha20Rng::seed_from_u64(scenario.seed ^ 0x5eed).fill_bytes(&mut static_static);
    let at_gateway = ProbeSecrets::derive(&static_static, &GATEWAY_KEY.0, &CLIENT_KEY.0);
    let at_client = ProbeSecrets::derive(&static_static, &CLIENT_KEY.0, &GATEWAY_KEY.0);

    let gateway_lan: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)), WG_PORT);
    let (gateway_addr, gateway_nat) = match scenario.gateway {
        Placement::Public => (SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), WG_PORT), None),
        Placement::Behind(kind) => {
            let mut nat = Nat::new(kind, Ipv4Addr::new(203, 0, 113, 1));
            nat.hairpin = scenario.hairpin;
            (gateway_lan, Some(net.add_nat(nat)))
        }
    };
    let (client_addr, client_nat) = if scenario.shared_nat {
        (SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)), WG_PORT), gateway_nat)
    } else {
        match scenario.client {
            Placement::Public => {
                (SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20)), WG_PORT), None)
            }
            // The same private address as the gateway's: two home networks
            // both on 192.168.1.0/24, so each end's ping to the other's host
            // candidate comes back to itself (and must be refused).
            Placement::Behind(kind) => {
                (gateway_lan, Some(net.add_nat(Nat::new(kind, Ipv4Addr::new(198, 51, 100, 1)))))
            }
        }
    };
    let gateway = net.add_host("gateway", gateway_addr, gateway_nat, CLIENT_KEY, at_gateway);
    let client = net.add_host("client", client_addr, client_nat, GATEWAY_KEY, at_client);
    assert_eq!((gateway, client), (GW, CLIENT));

    let gateway_candidates = net.gather(GW);
    net.add_peer(GW, Vec::new());
    net.run_for(Duration::from_millis(300));
    let client_candidates = net.gather(CLIENT);
    net.add_peer(CLIENT, gateway_candidates);
    net.run_for(CANDIDATES_KNOWN - Duration::from_millis(300));
    net.set_remote_candidates(GW, client_candidates);
    net
}
