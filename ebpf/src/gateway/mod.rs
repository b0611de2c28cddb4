//! The gateway's whitelist and proxy-address NAT, from userspace: load,
//! attach (TC ingress on the TUN device, XDP on the LAN interface), apply
//! forwarding tables, read traffic, outcomes and flows.
//!
//! The daemon decides who may reach what ([`ForwardingTable`]); the programs
//! enforce it per packet. [`GatewayForwarder`] never pins anything: when it is
//! dropped, or the process dies, the programs and their maps go away, and with
//! them every path from the tunnel to the machine network.
//!
//! What the host must provide (the daemon's job; the veth test does the same):
//! - IPv4 forwarding on the LAN interface: translated replies are passed to
//!   the stack, which routes them to the TUN (the TUN needs no forwarding:
//!   the TC program sends with bpf_redirect_neigh, past input routing);
//! - a route for the tunnel network via the TUN (its address, /12);
//! - reverse-path filtering on the LAN interface off or loose: replies arrive
//!   there from proxy addresses, which are routed via the TUN;
//! - the WireGuard engine's cryptokey routing: the programs trust a packet's
//!   source address as the technician's, so the engine must drop packets
//!   whose source is not the sending peer's tunnel address.

mod flows;
mod table;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{
        SchedClassifier, TcAttachType, Xdp,
        tc::{self, SchedClassifierLinkId, TcError},
    },
    sys::SyscallError,
};
pub use ferry_ebpf_common::gateway::FlowTimeouts;
use ferry_ebpf_common::gateway::{
    self as shared, DEFAULT_MAX_FLOWS, DEFAULT_MAX_PEERS, DEFAULT_MAX_TARGETS, FLAG_NO_REDIRECT,
    GatewayConfig, PeerEntry, RuleGeneration, TargetRule, TargetTraffic,
};

pub use self::{
    flows::{Flow, monotonic_ns},
    table::{ForwardingTable, Protocol, TableError, TargetSpec, spec_of},
};
pub use crate::counters::GatewayCounters;
use crate::{
    AttachMode, Error,
    attach::{self, Attachment},
    if_index, load_object_with, xdp, xdp_mut,
};
use table::{TunnelNet, target_key, target_rule, validate};

const WHAT: &str = "gateway LAN filter";
/// bpf_map_update_elem flags (uapi/linux/bpf.h).
const BPF_ANY: u64 = 0;

/// Each whitelist entry's per-target counter slot.
pub type Slots = BTreeMap<(u64, Ipv4Addr), u32>;

/// Where the gateway programs go.
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    /// The TUN device the WireGuard engine writes technicians' packets into.
    pub tunnel_if: String,
    /// The interface on the machine network.
    pub lan_if: String,
    /// The network all sessions' subnets lie in (100.96.0.0/12).
    pub tunnel_net: (Ipv4Addr, u8),
    /// How XDP attaches to `lan_if`.
    pub xdp_mode: AttachMode,
    /// How long idle flows are kept.
    pub timeouts: FlowTimeouts,
}

/// Map sizes, chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub peers: u32,
    /// Whitelist entries, and per-target counter slots.
    pub targets: u32,
    /// Forward conntrack entries (LRU: the least recently used go first
    /// when full). The reply halves have their fixed NAT slots
    /// ([`shared::NAT_SLOTS`]: one per protocol, remote bucket and NAT port).
    pub flows: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity { peers: DEFAULT_MAX_PEERS, targets: DEFAULT_MAX_TARGETS, flows: DEFAULT_MAX_FLOWS }
    }
}

/// What [`GatewayForwarder::apply`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub peers_added: usize,
    pub peers_changed: usize,
    pub peers_removed: usize,
    pub targets_added: usize,
    pub targets_changed: usize,
    pub targets_removed: usize,
    /// Sessions that no longer appear in the table.
    pub sessions_ended: usize,
    /// Conntrack entries (either direction) deleted with those sessions.
    pub flows_removed: usize,
}

/// The loaded gateway programs and their maps. Dropping it detaches both.
pub struct GatewayForwarder {
    ebpf: Ebpf,
    tc_link: Option<(SchedClassifierLinkId, String)>,
    xdp_link: Option<Attachment>,
    net: TunnelNet,
    /// What the programs' configuration map holds.
    config: GatewayConfig,
    capacity: Capacity,
    /// What the maps hold: every change to them goes through here first.
    applied: ForwardingTable,
    slots: Slots,
    free_slots: Vec<u32>,
    next_slot: u32,
    /// Each applied entry's generations ([`RuleGeneration`]), as its slot in
    /// [`shared::GENERATIONS_MAP`] holds them.
    generations: BTreeMap<(u64, Ipv4Addr), RuleGeneration>,
    /// The last generation handed out: they are unique over the programs'
    /// life, so a reused slot never matches its previous entry's flows.
    last_generation: u64,
}

impl GatewayForwarder {
    /// Loads both programs, configures them and attaches them: TC ingress on
    /// `tunnel_if` (adding a clsact qdisc if it has none), XDP on `lan_if`.
    /// Until [`apply`](Self::apply) gives them a table, the TUN program drops
    /// everything and the LAN program only keeps the machine network out of
    /// the tunnel.
    pub fn attach(config: &ForwarderConfig) -> Result<Self, Error> {
        Self::attach_with(config, Capacity::default())
    }

    /// [`attach`](Self::attach) with map sizes of the caller's choosing.
    pub fn attach_with(config: &ForwarderConfig, capacity: Capacity) -> Result<Self, Error> {
        if !cfg!(target_arch = "x86_64") {
            return Err(Error::UnsupportedArch(std::env::consts::ARCH));
        }
        let lan_ifindex = if_index(&config.lan_if)?;
        if_index(&config.tunnel_if)?;
        let mut forwarder = Self::load(config.tunnel_net, lan_ifindex, 0, 0, capacity)?;
        forwarder.set_timeouts(config.timeouts)?;

        let tunnel_if = config.tunnel_if.clone();
        // Kernels with TCX (6.6+) need no qdisc; older ones attach through the
        // clsact qdisc, which may already be there.
        match tc::qdisc_add_clsact(&tunnel_if) {
            Ok(()) | Err(TcError::AlreadyAttached) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(source) => return Err(Error::Tc { iface: tunnel_if, source }),
        }
        let link = forwarder
            .tunnel_program_mut()?
            .attach(&tunnel_if, TcAttachType::Ingress)
            .map_err(|source| Error::TcAttach { iface: tunnel_if.clone(), source })?;
        tracing::info!(iface = tunnel_if, "gateway tunnel filter attached (TC ingress)");
        forwarder.tc_link = Some((link, tunnel_if));

        let program = xdp_mut(&mut forwarder.ebpf, shared::LAN_PROGRAM)?;
        forwarder.xdp_link = Some(attach::attach(program, &config.lan_if, config.xdp_mode, WHAT)?);
        Ok(forwarder)
    }

    /// Loads both programs without attaching them, for BPF_PROG_RUN: the TUN
    /// program expects an Ethernet header in front of IPv4 (which
    /// BPF_PROG_RUN requires for TC programs) and returns TC_ACT_OK instead
    /// of redirecting, unless `redirect` is set (then it redirects to
    /// `lan_ifindex`, which BPF_PROG_RUN reports as TC_ACT_REDIRECT). Flows
    /// get the default timeouts; [`set_timeouts`](Self::set_timeouts)
    /// changes them.
    pub fn load_for_test(
        tunnel_net: (Ipv4Addr, u8),
        lan_ifindex: u32,
        redirect: bool,
        capacity: Capacity,
    ) -> Result<Self, Error> {
        let flags = if redirect { 0 } else { FLAG_NO_REDIRECT };
        Self::load(tunnel_net, lan_ifindex, 14, flags, capacity)
    }

    fn load(
        tunnel_net: (Ipv4Addr, u8),
        lan_ifindex: u32,
        l2_len: u32,
        flags: u32,
        capacity: Capacity,
    ) -> Result<Self, Error> {
        if !(1..=32).contains(&tunnel_net.1) {
            return Err(TableError::BadTunnelNet { net: tunnel_net.0, prefix: tunnel_net.1 }.into());
        }
        let capacity = Capacity {
            peers: capacity.peers.max(1),
            targets: capacity.targets.max(1),
            flows: capacity.flows.max(1),
        };
        let mut ebpf = load_object_with(
            &[
                (shared::PEERS_MAP, capacity.peers),
                (shared::TARGETS_MAP, capacity.targets),
                (shared::TRAFFIC_MAP, capacity.targets),
                (shared::GENERATIONS_MAP, capacity.targets),
                (shared::CT_FORWARD_MAP, capacity.flows),
                (shared::NAT_SLOTS_MAP, shared::NAT_SLOTS),
                (shared::NAT_CLAIMS_MAP, shared::NAT_CLAIMS),
                (shared::FWD_HINTS_MAP, shared::FWD_HINTS),
            ],
            &[(shared::L2_LEN_GLOBAL, l2_len)],
        )?;
        let name = shared::TUNNEL_PROGRAM;
        tc_program_mut(&mut ebpf)?.load().map_err(|source| Error::Program { name, source })?;
        crate::load_xdp(&mut ebpf, shared::LAN_PROGRAM)?;

        let (net, prefix) = tunnel_net;
        let net = TunnelNet { net, prefix };
        let config = GatewayConfig {
            lan_ifindex,
            tunnel_net: net.net.octets(),
            tunnel_mask: net.mask().to_be_bytes(),
            tunnel_prefix: net.prefix,
            _pad: [0; 3],
            flags,
            _pad2: [0; 4],
            timeouts: FlowTimeouts::DEFAULT,
        };
        write_config(&mut ebpf, config)?;

        Ok(GatewayForwarder {
            ebpf,
            tc_link: None,
            xdp_link: None,
            net,
            config,
            capacity,
            applied: ForwardingTable::default(),
            slots: BTreeMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            generations: BTreeMap::new(),
            last_generation: 0,
        })
    }

    /// Makes the maps hold `table`: validates it all first (an invalid table
    /// changes nothing), then removes what is gone (so a full map has room),
    /// then adds and changes. Ending a session also deletes its flows.
    ///
    /// If a map syscall fails halfway, the maps hold a mix of the old and the
    /// new table, which [`applied`](Self::applied) reports exactly; applying
    /// again continues from there.
    pub fn apply(&mut self, table: &ForwardingTable) -> Result<ApplyReport, Error> {
        validate(table, self.net)?;
        for (what, count, capacity) in [
            ("peers", table.peers.len(), self.capacity.peers),
            ("targets", table.targets.len(), self.capacity.targets),
        ] {
            if count > capacity as usize {
                return Err(TableError::TooLarge { what, count, capacity }.into());
            }
        }
        let mut report = ApplyReport::default();
        let ended: BTreeSet<u64> = self.applied.sessions().difference(&table.sessions()).copied().collect();

        // Sessions a peer leaves (removed, or moved to another session): their
        // entries get new generations below, which cuts the flows of the peers
        // that left, whose established packets the programs check by
        // generation alone. The session's other peers' flows lose their
        // replies too until their next packet toward the target, which the
        // full path re-admits with the same NAT port: generations are per
        // entry, not per peer (a cost only when a peer leaves a session that
        // keeps others).
        let left: BTreeSet<u64> = self
            .applied
            .peers
            .iter()
            .filter(|&(peer, session)| table.peers.get(peer) != Some(session))
            .map(|(_, &session)| session)
            .collect();
        // A peer that leaves its session (removed, or moved to another) is
        // taken out of the peer map before its old session's generations
        // change: a packet of it in between must not take the full path
        // with the old session and stamp its flow with the new generation.
        // A moved peer goes back in below, with its new session.
        let leaving: Vec<(Ipv4Addr, bool)> = self
            .applied
            .peers
            .iter()
            .filter(|&(peer, session)| table.peers.get(peer) != Some(session))
            .map(|(&peer, _)| (peer, table.peers.contains_key(&peer)))
            .collect();
        let mut moved = BTreeSet::new();
        for (peer, moves) in leaving {
            remove_key::<_, PeerEntry>(&mut self.ebpf, shared::PEERS_MAP, &peer.octets())?;
            self.applied.peers.remove(&peer);
            if moves {
                moved.insert(peer);
            } else {
                report.peers_removed += 1;
            }
        }
        let gone_targets: Vec<(u64, Ipv4Addr)> =
            self.applied.targets.keys().filter(|k| !table.targets.contains_key(k)).copied().collect();
        for key in gone_targets {
            remove_key::<_, TargetRule>(&mut self.ebpf, shared::TARGETS_MAP, &target_key(key.0, key.1))?;
            if let Some(&slot) = self.slots.get(&key) {
                // Generation 0: no entry, no flow of it is translated any more.
                // The bookkeeping forgets the entry only once that is written,
                // so a failed write is tried again on the next apply.
                set_generation(&mut self.ebpf, slot, RuleGeneration::default())?;
                self.slots.remove(&key);
                self.free_slots.push(slot);
            }
            self.generations.remove(&key);
            self.applied.targets.remove(&key);
            report.targets_removed += 1;
        }
        report.sessions_ended = ended.len();
        if !ended.is_empty() {
            report.flows_removed = flows::remove_sessions(&mut self.ebpf, &ended)?;
        }

        for (&key, spec) in &table.targets {
            let old = self.applied.targets.get(&key);
            let existing = old.is_some();
            let same = old == Some(spec);
            let peer_left = left.contains(&key.0);
            if same && !peer_left {
                continue;
            }
            // Replies keep flowing through a change that only widens what the
            // entry allows: nothing a flow was admitted for is taken away.
            // A narrowing (a port or protocol taken off) cuts the replies of
            // every flow of the entry too, until the TUN program re-admits a
            // flow that is still allowed on its next packet: a target must
            // not keep answering over a port its session no longer has.
            let same_path = !peer_left && old.is_some_and(|o| spec.admits_all_of(o));
            let path = match self.generations.get(&key) {
                Some(generation) if same_path => generation.path,
                _ => self.next_generation(),
            };
            let generation = RuleGeneration { rule: self.next_generation(), path };
            let slot = match self.slots.get(&key) {
                Some(&slot) => slot,
                None => {
                    let slot = self.take_slot()?;
                    // A reused slot must not carry its previous target's traffic.
                    self.reset_slot(slot)?;
                    self.slots.insert(key, slot);
                    slot
                }
            };
            let rule = target_rule(spec, slot, generation);
            insert(
                &mut self.ebpf,
                shared::TARGETS_MAP,
                &target_key(key.0, key.1),
                &rule,
                self.capacity.targets,
            )?;
            set_generation(&mut self.ebpf, slot, generation)?;
            self.generations.insert(key, generation);
            if same {
                // Only its session's peers changed.
            } else if existing {
                report.targets_changed += 1;
            } else {
                report.targets_added += 1;
            }
            self.applied.targets.insert(key, spec.clone());
        }
        for (&peer, &session) in &table.peers {
            let existing = self.applied.peers.get(&peer).copied();
            if existing == Some(session) {
                continue;
            }
            insert(
                &mut self.ebpf,
                shared::PEERS_MAP,
                &peer.octets(),
                &PeerEntry { session },
                self.capacity.peers,
            )?;
            if existing.is_some() || moved.contains(&peer) {
                report.peers_changed += 1;
            } else {
                report.peers_added += 1;
            }
            self.applied.peers.insert(peer, session);
        }
        Ok(report)
    }

    /// The table the maps hold.
    pub fn applied(&self) -> &ForwardingTable {
        &self.applied
    }

    /// The whitelist as the kernel's maps hold it, with each entry's counter
    /// slot, read back entry by entry (tests compare it with
    /// [`applied`](Self::applied)).
    pub fn read_back(&self) -> Result<(ForwardingTable, Slots), Error> {
        let mut table = ForwardingTable::default();
        let mut slots = BTreeMap::new();
        let name = shared::PEERS_MAP;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let peers: HashMap<_, [u8; 4], PeerEntry> =
            HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        for entry in peers.iter() {
            let (peer, value) = entry.map_err(|source| Error::Map { name, source })?;
            table.peers.insert(peer.into(), value.session);
        }
        let name = shared::TARGETS_MAP;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let targets: HashMap<_, ferry_ebpf_common::gateway::TargetKey, TargetRule> =
            HashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        for entry in targets.iter() {
            let (key, rule) = entry.map_err(|source| Error::Map { name, source })?;
            let key = (key.session, Ipv4Addr::from(key.proxy));
            table.targets.insert(key, spec_of(&rule));
            slots.insert(key, rule.counter);
        }
        Ok((table, slots))
    }

    /// Sets how long idle flows are kept, at once for both programs and for
    /// [`expire_flows`](Self::expire_flows). Existing flows are judged by the
    /// new timeouts from their last packet on.
    pub fn set_timeouts(&mut self, timeouts: FlowTimeouts) -> Result<(), Error> {
        let config = GatewayConfig { timeouts, ..self.config };
        write_config(&mut self.ebpf, config)?;
        self.config = config;
        Ok(())
    }

    /// The flow timeouts in force.
    pub fn timeouts(&self) -> FlowTimeouts {
        self.config.timeouts
    }

    /// The per-target counter slot of an applied whitelist entry.
    pub fn slot(&self, session: u64, proxy: Ipv4Addr) -> Option<u32> {
        self.slots.get(&(session, proxy)).copied()
    }

    /// What the programs translated for one whitelist entry, summed over
    /// CPUs; None if the table has no such entry.
    pub fn traffic(&self, session: u64, proxy: Ipv4Addr) -> Result<Option<TargetTraffic>, Error> {
        let Some(slot) = self.slot(session, proxy) else {
            return Ok(None);
        };
        let name = shared::TRAFFIC_MAP;
        let map = self.ebpf.map(name).ok_or(Error::MissingMap(name))?;
        let traffic: PerCpuArray<_, TargetTraffic> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        let per_cpu = traffic.get(&slot, 0).map_err(|source| Error::Map { name, source })?;
        Ok(Some(per_cpu.iter().fold(TargetTraffic::default(), |t, cpu| TargetTraffic {
            to_target_packets: t.to_target_packets + cpu.to_target_packets,
            to_target_bytes: t.to_target_bytes + cpu.to_target_bytes,
            from_target_packets: t.from_target_packets + cpu.from_target_packets,
            from_target_bytes: t.from_target_bytes + cpu.from_target_bytes,
        })))
    }

    /// Both programs' packet counters by outcome, summed over CPUs.
    pub fn counters(&self) -> Result<GatewayCounters, Error> {
        GatewayCounters::read(&self.ebpf, shared::COUNTERS_MAP)
    }

    /// Every outcome's stable name with its count.
    pub fn outcomes(&self) -> Result<Vec<(&'static str, u64)>, Error> {
        Ok(self.counters()?.iter().map(|(o, n)| (o.name(), n)).collect())
    }

    /// The flows in the conntrack maps (live or not yet swept).
    pub fn flows(&self) -> Result<Vec<Flow>, Error> {
        flows::list(&self.ebpf)
    }

    /// Deletes flows idle past their timeout (the programs already ignore
    /// them; this frees their entries). Returns how many entries went.
    pub fn expire_flows(&mut self) -> Result<usize, Error> {
        flows::expire(&mut self.ebpf, &self.config.timeouts)
    }

    /// Writes a flow into both conntrack maps as the TUN program would.
    /// Tests and benchmarks use it to set up flows with chosen NAT ports or
    /// timestamps; the daemon never needs it.
    #[doc(hidden)]
    pub fn insert_flow(&mut self, flow: &Flow) -> Result<(), Error> {
        flows::insert(&mut self.ebpf, flow, self.capacity.flows)
    }

    /// The TC program on the TUN device, for BPF_PROG_RUN.
    pub fn tunnel_program(&self) -> Result<&SchedClassifier, Error> {
        let name = shared::TUNNEL_PROGRAM;
        self.ebpf
            .program(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })
    }

    /// The XDP program on the LAN interface, for BPF_PROG_RUN.
    pub fn lan_program(&self) -> Result<&Xdp, Error> {
        xdp(&self.ebpf, shared::LAN_PROGRAM)
    }

    /// Loads the benchmark variants of both programs
    /// ([`shared::BENCH_TUNNEL_PROGRAM`], [`shared::BENCH_LAN_PROGRAM`]),
    /// which share this forwarder's maps. Benchmarks only.
    #[doc(hidden)]
    pub fn load_bench_variants(&mut self) -> Result<(), Error> {
        crate::load_tc(&mut self.ebpf, shared::BENCH_TUNNEL_PROGRAM)?;
        crate::load_xdp(&mut self.ebpf, shared::BENCH_LAN_PROGRAM)?;
        Ok(())
    }

    /// The benchmark variant of the TUN program, once
    /// [`load_bench_variants`](Self::load_bench_variants) loaded it.
    #[doc(hidden)]
    pub fn bench_tunnel_program(&self) -> Result<&SchedClassifier, Error> {
        let name = shared::BENCH_TUNNEL_PROGRAM;
        self.ebpf
            .program(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program { name, source })
    }

    /// The benchmark variant of the LAN program.
    #[doc(hidden)]
    pub fn bench_lan_program(&self) -> Result<&Xdp, Error> {
        xdp(&self.ebpf, shared::BENCH_LAN_PROGRAM)
    }

    /// Where the programs are attached: (TUN device, LAN interface, XDP mode).
    pub fn attachments(&self) -> Option<(&str, &str, &'static str)> {
        match (&self.tc_link, &self.xdp_link) {
            (Some((_, tun)), Some(lan)) => Some((tun.as_str(), lan.iface.as_str(), lan.mode)),
            _ => None,
        }
    }

    /// Detaches both programs; the maps stay until the forwarder is dropped.
    /// Tries both and returns the first error.
    pub fn detach(&mut self) -> Result<(), Error> {
        let mut result = Ok(());
        if let Some(attachment) = self.xdp_link.take() {
            result = xdp_mut(&mut self.ebpf, shared::LAN_PROGRAM)
                .and_then(|program| attach::detach(program, attachment, shared::LAN_PROGRAM, WHAT));
        }
        if let Some((link, iface)) = self.tc_link.take() {
            let name = shared::TUNNEL_PROGRAM;
            let detached = self
                .tunnel_program_mut()
                .and_then(|program| program.detach(link).map_err(|source| Error::Program { name, source }));
            match detached {
                Ok(()) => tracing::info!(iface, "gateway tunnel filter detached"),
                Err(err) if result.is_ok() => result = Err(err),
                Err(_) => {}
            }
        }
        result
    }

    fn tunnel_program_mut(&mut self) -> Result<&mut SchedClassifier, Error> {
        tc_program_mut(&mut self.ebpf)
    }

    fn next_generation(&mut self) -> u64 {
        self.last_generation += 1;
        self.last_generation
    }

    fn take_slot(&mut self) -> Result<u32, Error> {
        if let Some(slot) = self.free_slots.pop() {
            return Ok(slot);
        }
        if self.next_slot >= self.capacity.targets {
            // apply() checked the table's size; this would be a bookkeeping bug.
            return Err(Error::MapFull { name: shared::TRAFFIC_MAP, capacity: self.capacity.targets });
        }
        self.next_slot += 1;
        Ok(self.next_slot - 1)
    }

    fn reset_slot(&mut self, slot: u32) -> Result<(), Error> {
        let name = shared::TRAFFIC_MAP;
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| Error::Io(source))?;
        let zeroes = PerCpuValues::try_from(vec![TargetTraffic::default(); cpus]).map_err(Error::Io)?;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut traffic: PerCpuArray<_, TargetTraffic> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map { name, source })?;
        traffic.set(slot, zeroes, 0).map_err(|source| Error::Map { name, source })
    }
}

impl Drop for GatewayForwarder {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::warn!(error = %err, "detaching the gateway programs failed");
        }
    }
}

/// Writes an entry's generations into its slot: what the programs compare
/// established flows with.
fn set_generation(ebpf: &mut Ebpf, slot: u32, generation: RuleGeneration) -> Result<(), Error> {
    let name = shared::GENERATIONS_MAP;
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
    let mut array: Array<_, RuleGeneration> =
        Array::try_from(map).map_err(|source| Error::Map { name, source })?;
    array.set(slot, generation, 0).map_err(|source| Error::Map { name, source })
}

/// The generations in `slot` (zero for a slot no entry holds).
pub(crate) fn generation(ebpf: &Ebpf, slot: u32) -> Result<RuleGeneration, Error> {
    let name = shared::GENERATIONS_MAP;
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    let array: Array<_, RuleGeneration> =
        Array::try_from(map).map_err(|source| Error::Map { name, source })?;
    match array.get(&slot, 0) {
        Ok(generation) => Ok(generation),
        // Past the array: no entry can hold such a slot.
        Err(MapError::OutOfBounds { .. }) => Ok(RuleGeneration::default()),
        Err(source) => Err(Error::Map { name, source }),
    }
}

fn write_config(ebpf: &mut Ebpf, config: GatewayConfig) -> Result<(), Error> {
    let name = shared::CONFIG_MAP;
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
    let mut array: Array<_, GatewayConfig> =
        Array::try_from(map).map_err(|source| Error::Map { name, source })?;
    array.set(0, config, 0).map_err(|source| Error::Map { name, source })
}

fn tc_program_mut(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, Error> {
    let name = shared::TUNNEL_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn hash_map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>, Error> {
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
    HashMap::try_from(map).map_err(|source| Error::Map { name, source })
}

/// Adds or replaces `key`; a new key in a full map is [`Error::MapFull`].
fn insert<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    key: &K,
    value: &V,
    capacity: u32,
) -> Result<(), Error> {
    let mut map = hash_map::<K, V>(ebpf, name)?;
    match map.insert(key, value, BPF_ANY) {
        Ok(()) => Ok(()),
        Err(err) if errno(&err) == Some(libc::E2BIG) => Err(Error::MapFull { name, capacity }),
        Err(source) => Err(Error::Map { name, source }),
    }
}

/// Removes `key`; a key that is already gone is fine.
fn remove_key<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &'static str, key: &K) -> Result<(), Error> {
    let mut map = hash_map::<K, V>(ebpf, name)?;
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(err) if errno(&err) == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(Error::Map { name, source }),
    }
}

/// The errno behind a failed map syscall.
pub(crate) fn errno(err: &MapError) -> Option<i32> {
    match err {
        MapError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}
