//! One peer's state: its keys, sessions, pending handshake, staged packets
//! and timers.

use std::{collections::VecDeque, net::SocketAddr, time::Duration, time::Instant};

use zeroize::Zeroize;

use super::{cookie::CookieJar, handshake::InitiatorState, session::Session, timestamp::Tai64N};
use crate::PublicKey;

/// Packets queued while a handshake is under way (as wireguard-go).
pub const MAX_STAGED: usize = 128;

pub struct Peer {
    pub public_key: PublicKey,
    pub(crate) psk: [u8; 32],
    pub(crate) static_static: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<Duration>,
    pub(crate) cookies: CookieJar,
    /// Our initiation awaiting a response.
    pub(crate) handshake: Option<InitiatorState>,
    /// The newest initiation timestamp accepted from this peer.
    pub(crate) latest_timestamp: Option<Tai64N>,
    pub(crate) last_initiation_consumed: Option<Instant>,
    /// When the initiation awaiting a response (`handshake`) was sent: the
    /// start of the handshake round trip.
    pub(crate) initiation_sent: Option<Instant>,
    /// The timestamp of our last initiation to this peer: the next one must
    /// be later, or the peer takes it for a replay.
    pub(crate) last_stamp: Option<Tai64N>,
    /// Sessions: `next` is ours as responder until the initiator's first data
    /// packet confirms it.
    pub(crate) current: Option<Session>,
    pub(crate) previous: Option<Session>,
    pub(crate) next: Option<Session>,
    pub(crate) staged: VecDeque<Vec<u8>>,
    pub(crate) timers: Timers,
    pub stats: PeerStats,
}

/// What a peer has done, for `ferry` status output and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub last_handshake: Option<Instant>,
    pub handshakes_completed: u64,
    /// From our last initiation to its response: the round trip of the path
    /// the handshake took (retransmissions restart it; a crossed handshake
    /// completed as responder does not measure one).
    pub handshake_rtt: Option<Duration>,
    /// The last datagram from the peer that authenticated (a handshake
    /// message or a transport packet), for path liveness.
    pub last_rx: Option<Instant>,
}

/// The protocol's timers as deadlines; `None` is a stopped timer.
#[derive(Default, Debug, Clone)]
pub(crate) struct Timers {
    pub retransmit_handshake: Option<Instant>,
    pub send_keepalive: Option<Instant>,
    pub new_handshake: Option<Instant>,
    pub zero_key_material: Option<Instant>,
    pub persistent_keepalive: Option<Instant>,
    pub handshake_attempts: u32,
    pub need_another_keepalive: bool,
    pub last_initiation_sent: Option<Instant>,
    /// A keepalive is due at the next timer run (persistent keepalive was
    /// just configured); the shell's timer tick picks it up.
    pub keepalive_now: bool,
}

impl Timers {
    pub fn earliest(&self) -> Option<Instant> {
        [
            self.retransmit_handshake,
            self.send_keepalive,
            self.new_handshake,
            self.zero_key_material,
            self.persistent_keepalive,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl Peer {
    pub(crate) fn new(public_key: PublicKey, psk: [u8; 32], static_static: [u8; 32]) -> Peer {
        Peer {
            public_key,
            psk,
            static_static,
            endpoint: None,
            persistent_keepalive: None,
            cookies: CookieJar::new(&public_key),
            handshake: None,
            latest_timestamp: None,
            last_initiation_consumed: None,
            initiation_sent: None,
            last_stamp: None,
            current: None,
            previous: None,
            next: None,
            staged: VecDeque::new(),
            timers: Timers::default(),
            stats: PeerStats::default(),
        }
    }

    /// The local indices this peer holds (sessions and a pending handshake).
    pub(crate) fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|s| s.local_index)
            .chain(self.handshake.as_ref().map(|h| h.local_index))
    }

    /// The session `local_index` names, if any.
    pub(crate) fn session_mut(&mut self, local_index: u32) -> Option<(&mut Session, Slot)> {
        if let Some(s) = self.current.as_mut().filter(|s| s.local_index == local_index) {
            return Some((s, Slot::Current));
        }
        if let Some(s) = self.next.as_mut().filter(|s| s.local_index == local_index) {
            return Some((s, Slot::Next));
        }
        if let Some(s) = self.previous.as_mut().filter(|s| s.local_index == local_index) {
            return Some((s, Slot::Previous));
        }
        None
    }

    pub(crate) fn stage(&mut self, packet: &[u8]) {
        if self.staged.len() == MAX_STAGED {
            self.staged.pop_front();
        }
        self.staged.push_back(packet.to_vec());
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.psk.zeroize();
        self.static_static.zeroize();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Current,
    Previous,
    Next,
}
