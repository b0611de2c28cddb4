//! Direct paths between two Ferry endpoints (a gateway and a technician's
//! client), sans IO.
//!
//! Both ends send authenticated *probes* from their WireGuard socket to each
//! other's candidate addresses; a path that answered our own ping from the
//! address we pinged carries the traffic, the relay carries it otherwise.
//! [`Paths`] reads no clock, owns no socket and draws randomness only from
//! the RNG it is given: it is fed datagrams, time and candidates and hands out
//! transmits, events and a timeout, like `quinn-proto`. The gateway's engine
//! and the client's service are its shells.
//!
//! # Call protocol
//!
//! The shell owns the WireGuard UDP socket, a monotonic clock and a timer.
//!
//! 1. `Paths::new(OsRng)` once (tests pass a seeded RNG).
//! 2. For each peer that may have a direct path (on the gateway: a live
//!    session the customer allows): [`Paths::add_peer`] with the peer's
//!    [`ProbeSecrets`] (from the tunnel), its relay address and its
//!    candidates (it refuses, with [`AddPeerError::TagInUse`], a second peer
//!    whose probes would carry the same tag: the same key pair twice). Adding
//!    a known peer again starts it over. When the cloud sends new candidates:
//!    [`Paths::set_remote_candidates`]; when the relay changes (UDP relay
//!    re-allocated, WebSocket transport attached): [`Paths::set_relay`]. When
//!    the session ends: [`Paths::remove_peer`], which stops its probes at once.
//!    After adding or removing peers, re-sync the uplink guard's tag set from
//!    [`Paths::tags_in`].
//! 3. Every datagram that arrives on the WireGuard socket and starts with the
//!    probe type word ([`is_probe`]) goes to [`Paths::handle_probe`], never to
//!    WireGuard. Its `Err` only says why it was dropped (already counted in
//!    [`Paths::stats`]); log it at debug level at most, it is network input.
//!    Every datagram that WireGuard authenticates as peer P's, from address A:
//!    [`Paths::note_rx`]`(P, A, now)` (cheap; it keeps a live direct path alive
//!    and lets a roamed peer's new address be verified).
//! 4. After each of the calls above, and after [`Paths::handle_timeout`]:
//!    - drain [`Paths::poll_transmit`]: send each `payload` to `to` *from the
//!      WireGuard socket* (the NAT mapping a probe opens must be WireGuard's);
//!      a failed send is dropped, like a lost datagram;
//!    - drain [`Paths::poll_event`]: for [`Event::Selected`], point the
//!      WireGuard peer's endpoint at the path: `Direct(addr)` → `addr`;
//!      `Relay` → the relay address (and rekey through the relay, so that it
//!      binds the pair again); `None` → leave the endpoint as it is;
//!    - arm the timer for [`Paths::poll_timeout`] (none: disarm).
//! 5. When the timer fires: [`Paths::handle_timeout`]`(now)`, then step 4.
//! 6. When this end's own addresses change (new network, new NAT mapping):
//!    gather new candidates for the cloud and call [`Paths::network_changed`].
//!
//! `now` must not go backwards between calls. [`Paths::status`] and
//! [`Paths::stats`] feed `ferry status` and the metrics.
//!
//! # Policy
//!
//! - **Start on the relay**: `add_peer` selects [`Selected::Relay`] at once
//!   when there is a relay ([`Selected::None`] otherwise, without an event).
//! - **Schedule**: a candidate is pinged as soon as it is known, then every
//!   [`FAST_INTERVAL`] (200 ms) during [`FAST_PHASE`] (3 s), so both ends'
//!   pings cross while each NAT has the other's address open (simultaneous
//!   open through port-restricted cone NATs). After that, while the peer has
//!   no direct path, every [`SLOW_INTERVAL`] (2 s) until the candidate is
//!   [`SLOW_PHASE`] (30 s) old, then every [`RETRY_INTERVAL`] (5 s). Live
//!   direct paths (the selected one and live alternatives) get a heartbeat
//!   ping every [`HEARTBEAT_INTERVAL`] (2 s); unverified alternatives of a
//!   peer on a direct path are pinged every 5 s after their fast phase, so a
//!   better path found later (a host path on a shared LAN) still wins. A valid
//!   ping on a pair that is not live triggers a ping back at once (at most
//!   every 200 ms).
//! - **Verification**: only a pong that echoes the transaction id of one of
//!   our outstanding pings (single use, valid [`PING_TIMEOUT`] = 5 s, at most
//!   [`MAX_OUTSTANDING_PER_CANDIDATE`] per candidate) and comes from the
//!   address that ping went to makes a path live. A ping never moves a path.
//! - **RTT**: each pong gives a sample (ping sent → pong received); the
//!   estimate is smoothed as in RFC 6298 (`srtt = 7/8 srtt + 1/8 sample`).
//! - **Selection**: among live direct paths, a clearly lower smoothed RTT wins
//!   (by more than 1 ms and 10 %); on a tie a private (host) address wins over
//!   a public one. The path in use is kept unless another is better by that
//!   rule (hysteresis), except that a live path that went quiet for
//!   [`STALE_AFTER`] (3 s, a missed heartbeat) or that the peer took off its
//!   candidate list gives way at once to a live path that did not: that is
//!   how a roamed peer's new address takes over before the old one is
//!   declared dead. No live direct path: the relay; no relay: none.
//! - **Dead paths**: a live path with neither a pong nor an authenticated
//!   WireGuard datagram from its address for [`DIRECT_DEAD_AFTER`] (5 s) is
//!   dead. If it was selected, the peer moves to another live direct path or
//!   falls back to the relay ([`why::DEAD`]), and every candidate is pinged
//!   again at once and then at the slow pace; the first pong moves it back.
//!   WireGuard traffic keeps a live path alive but never revives a dead one.
//! - **Peer-reflexive candidates**: a valid ping or authenticated WireGuard
//!   traffic from an address that is not a candidate (nor the relay) adds it
//!   as peer-reflexive, pinged at once: that is how an end behind a symmetric
//!   NAT, or one that roamed, is found. At most [`MAX_PEER_REFLEXIVE`] (8) per
//!   peer (the least recently seen goes first, never the selected path);
//!   forgotten [`PEER_REFLEXIVE_TTL`] (30 s) after their last sign of life. A
//!   live remote candidate taken off the list stays as peer-reflexive.
//! - **Replay**: a probe whose nonce was accepted in the last
//!   [`REPLAY_WINDOW`] (2 min) is dropped (`replayed`). Nonces are recorded
//!   only for probes that were acted on, so a copy racing ahead from another
//!   address cannot spoil the genuine one.
//! - **Bounds**: per peer at most [`MAX_REMOTE_CANDIDATES`] (16) remote and 8
//!   peer-reflexive candidates, 8 outstanding pings each,
//!   [`MAX_REMEMBERED_NONCES`] (1024) nonces, [`MAX_QUEUED_TRANSMITS_PER_PEER`]
//!   (64) queued transmits and one queued event. Everything refused or
//!   dropped is counted in [`ProbeStats`].
//!
//! # Security
//!
//! Probe secrets come from the static-static Diffie-Hellman of the two
//! WireGuard keys ([`ProbeSecrets::derive`]), so no third party can make a
//! probe that authenticates. A forged probe fails the tag lookup
//! (`unknown_tag`) or the AEAD (`bad_auth`); a probe sent back to its sender
//! carries the wrong tag (`unknown_tag`); a replayed ping is `replayed`; a
//! replayed pong is `replayed` or matches nothing (`unsolicited`) or comes
//! from the wrong address (`wrong_source`). Nothing but a fresh pong to our
//! own ping from the address we pinged can change a path. A ping earns one
//! pong of the same size, so probes amplify nothing.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod candidate;
mod machine;
mod peer;
pub mod probe;
mod replay;
mod secrets;
mod status;
mod timing;

pub use machine::{AddPeerError, Paths, PeerSetup};
pub use probe::{PROBE_LEN, PROBE_TYPE, ProbeDrop, is_probe};
pub use secrets::{PeerKey, ProbeSecrets, TAG_LEN};
pub use status::{
    CandidateOrigin, CandidateState, CandidateStatus, Event, MemoryUse, PathStatus, ProbeStats, Selected,
    Transmit, why,
};
pub use timing::{
    DIRECT_DEAD_AFTER, FAST_INTERVAL, FAST_PHASE, HEARTBEAT_INTERVAL, MAX_OUTSTANDING_PER_CANDIDATE,
    MAX_PEER_REFLEXIVE, MAX_QUEUED_TRANSMITS_PER_PEER, MAX_REMEMBERED_NONCES, MAX_REMOTE_CANDIDATES,
    PEER_REFLEXIVE_TTL, PING_TIMEOUT, REPLAY_WINDOW, RETRY_INTERVAL, RTT_TIE_MARGIN, SLOW_INTERVAL,
    SLOW_PHASE, STALE_AFTER,
};
