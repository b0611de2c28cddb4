//! What the gateway lets through right now: the cloud's desired state, cut
//! down to what the customer allows (the switch, approvals) and to what has
//! not expired by the cloud's clock as the gateway keeps it (see
//! `cloud_clock`: never the gateway's wall clock, which may be stepped).
//!
//! Pure: fed the inputs and the time, it returns a [`Plan`]. The async shell
//! applies plans to the WireGuard engine, the eBPF maps and the relay
//! transports. The cloud can only ever narrow what a plan allows, never widen
//! it: a session the customer has not approved, or that has expired here,
//! stays shut whatever the cloud says, also while the cloud is unreachable.

use std::collections::BTreeMap;

use ferry_control::{
    SessionId,
    gateway::{DesiredState, Peer, SessionState},
};

pub use crate::state::Decision;

/// Why a session forwards or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Active,
    WaitingForApproval,
    Denied,
    /// The customer ended it here.
    Ended,
    /// Its end time has passed, by the cloud's clock as the gateway keeps
    /// it.
    Expired,
    /// The customer's switch is off.
    SwitchedOff,
    /// The gateway does not know the cloud's time (restarted after a reboot,
    /// the cloud not reached since), so it cannot tell whether the session
    /// has ended: it forwards nothing until the cloud is heard again.
    ClockUnknown,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::WaitingForApproval => "waiting_for_approval",
            Status::Denied => "denied",
            Status::Ended => "ended",
            Status::Expired => "expired",
            Status::SwitchedOff => "switched_off",
            Status::ClockUnknown => "clock_unknown",
        }
    }
}

/// Everything [`plan`] looks at.
pub struct Inputs<'a> {
    pub desired: Option<&'a DesiredState>,
    pub switch_on: bool,
    pub decisions: &'a BTreeMap<SessionId, Decision>,
    /// The cloud's time now, in ms since the Unix epoch (end times are the
    /// cloud's); `None` when the gateway does not know it.
    pub now_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSession {
    pub state: SessionState,
    pub status: Status,
    /// The peers that may talk now: none unless the session is active, and
    /// never one whose own configuration has expired.
    pub live_peers: Vec<Peer>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub sessions: Vec<PlannedSession>,
    /// The earliest time (the cloud's) at which this plan stops being right
    /// by the clock alone (a session or a peer expires): the shell plans
    /// again then.
    pub next_deadline_ms: Option<u64>,
}

impl Plan {
    pub fn active(&self) -> impl Iterator<Item = &PlannedSession> {
        self.sessions.iter().filter(|s| s.status == Status::Active)
    }

    pub fn session(&self, id: SessionId) -> Option<&PlannedSession> {
        self.sessions.iter().find(|s| s.state.session_id == id)
    }

    /// Every peer that may talk now, with its session.
    pub fn live_peers(&self) -> impl Iterator<Item = (&PlannedSession, &Peer)> {
        self.active().flat_map(|s| s.live_peers.iter().map(move |p| (s, p)))
    }
}

pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let Some(desired) = inputs.desired else { return Plan::default() };
    let Some(now) = inputs.now_ms else {
        return Plan {
            sessions: desired.sessions.iter().map(unknown_time).collect(),
            next_deadline_ms: None,
        };
    };
    let mut next_deadline_ms: Option<u64> = None;
    let mut deadline = |at: u64| {
        if at > now {
            next_deadline_ms = Some(next_deadline_ms.map_or(at, |d| d.min(at)));
        }
    };
    let sessions = desired
        .sessions
        .iter()
        .map(|session| {
            let decision = inputs.decisions.get(&session.session_id).copied();
            let status = if session.expires_ms <= now {
                Status::Expired
            } else if decision == Some(Decision::Denied) {
                Status::Denied
            } else if decision == Some(Decision::Ended) {
                Status::Ended
            } else if !inputs.switch_on {
                Status::SwitchedOff
            } else if session.approval_required && decision != Some(Decision::Approved) {
                // The cloud's `approved` flag is not enough: the approval
                // that counts is the one given at this gateway.
                Status::WaitingForApproval
            } else {
                Status::Active
            };
            let live_peers: Vec<Peer> = if status == Status::Active {
                deadline(session.expires_ms);
                session
                    .peers
                    .iter()
                    .filter(|p| p.expires_ms > now)
                    .inspect(|p| deadline(p.expires_ms))
                    .cloned()
                    .collect()
            } else {
                if status == Status::WaitingForApproval || status == Status::SwitchedOff {
                    deadline(session.expires_ms);
                }
                Vec::new()
            };
            PlannedSession { state: session.clone(), status, live_peers }
        })
        .collect();
    Plan { sessions, next_deadline_ms }
}

/// A session while the cloud's time is unknown: shut, whatever else holds.
fn unknown_time(session: &SessionState) -> PlannedSession {
    PlannedSession { state: session.clone(), status: Status::ClockUnknown, live_peers: Vec::new() }
}

#[cfg(test)]
mod tests {
    use ferry_control::{
        ConfigId, WgKey,
        gateway::{PortRange, Protocol, Target},
    };
    use proptest::prelude::*;

    use super::*;

    fn peer(n: u8, expires_ms: u64) -> Peer {
        Peer {
            config_id: ConfigId(u64::from(n)),
            user: format!("tech{n}"),
            public_key: WgKey([n; 32]),
            tunnel_address: format!("100.96.0.{}", n + 1).parse().unwrap(),
            expires_ms,
            relay: None,
            candidates: vec![],
        }
    }

    fn session(id: u64, expires_ms: u64, approval_required: bool, peers: Vec<Peer>) -> SessionState {
        SessionState {
            session_id: SessionId(id),
            name: format!("s{id}"),
            expires_ms,
            approval_required,
            approved: true,
            subnet: "100.96.0.0/24".parse().unwrap(),
            gateway_address: "100.96.0.1".parse().unwrap(),
            targets: vec![Target {
                name: "plc".into(),
                address: "192.168.50.10".parse().unwrap(),
                proxy_address: "100.96.0.100".parse().unwrap(),
                protocol: Protocol::Tcp,
                ports: vec![PortRange { first: 8080, last: 8080 }],
            }],
            peers,
            started_by: Some("tech".into()),
            max_duration_s: Some(3600),
        }
    }

    fn run(sessions: Vec<SessionState>, switch_on: bool, decisions: &[(u64, Decision)], now_ms: u64) -> Plan {
        let desired = DesiredState { revision: 1, sessions, stun_servers: vec![] };
        let decisions = decisions.iter().map(|&(id, d)| (SessionId(id), d)).collect();
        plan(&Inputs { desired: Some(&desired), switch_on, decisions: &decisions, now_ms: Some(now_ms) })
    }

    #[test]
    fn the_switch_off_shuts_everything() {
        let p = run(vec![session(1, 10_000, false, vec![peer(1, 10_000)])], false, &[], 0);
        assert_eq!(p.sessions[0].status, Status::SwitchedOff);
        assert_eq!(p.live_peers().count(), 0);
    }

    #[test]
    fn approval_must_come_from_the_gateway_not_the_cloud() {
        // The cloud says approved; the gateway has no record: still waiting.
        let s = vec![session(1, 10_000, true, vec![peer(1, 10_000)])];
        let p = run(s.clone(), true, &[], 0);
        assert_eq!(p.sessions[0].status, Status::WaitingForApproval);
        assert_eq!(p.live_peers().count(), 0);
        let p = run(s.clone(), true, &[(1, Decision::Approved)], 0);
        assert_eq!(p.sessions[0].status, Status::Active);
        assert_eq!(p.live_peers().count(), 1);
        let p = run(s.clone(), true, &[(1, Decision::Denied)], 0);
        assert_eq!(p.sessions[0].status, Status::Denied);
        // Ended by the customer: shut, whatever the cloud still says.
        let p = run(s, true, &[(1, Decision::Ended)], 0);
        assert_eq!(p.sessions[0].status, Status::Ended);
        assert_eq!(p.live_peers().count(), 0);
        assert_eq!(p.next_deadline_ms, None);
    }

    #[test]
    fn expiry_is_enforced_by_the_time_given() {
        let s = vec![session(1, 10_000, false, vec![peer(1, 5_000), peer(2, 20_000)])];
        let p = run(s.clone(), true, &[], 0);
        assert_eq!(p.live_peers().count(), 2);
        assert_eq!(p.next_deadline_ms, Some(5_000));
        let p = run(s.clone(), true, &[], 5_000);
        assert_eq!(p.live_peers().map(|(_, p)| p.user.as_str()).collect::<Vec<_>>(), ["tech2"]);
        assert_eq!(p.next_deadline_ms, Some(10_000));
        let p = run(s, true, &[], 10_000);
        assert_eq!(p.sessions[0].status, Status::Expired);
        assert_eq!(p.live_peers().count(), 0);
        assert_eq!(p.next_deadline_ms, None);
    }

    #[test]
    fn an_unknown_time_shuts_every_session() {
        let desired = DesiredState {
            revision: 1,
            sessions: vec![session(1, u64::MAX, false, vec![peer(1, u64::MAX)])],
            stun_servers: vec![],
        };
        let decisions = BTreeMap::new();
        let p =
            plan(&Inputs { desired: Some(&desired), switch_on: true, decisions: &decisions, now_ms: None });
        assert_eq!(p.sessions[0].status, Status::ClockUnknown);
        assert_eq!(p.live_peers().count(), 0);
        assert_eq!(p.next_deadline_ms, None);
    }

    #[test]
    fn no_desired_state_means_nothing() {
        let decisions = BTreeMap::new();
        let p = plan(&Inputs { desired: None, switch_on: true, decisions: &decisions, now_ms: Some(0) });
        assert_eq!(p, Plan::default());
    }

    proptest! {
        /// Whatever the cloud sends, a peer is live only if the switch is on,
        /// its session and itself have not expired, and an approval-required
        /// session was approved at the gateway.
        #[test]
        fn a_live_peer_is_always_allowed_by_the_customer(
            switch_on: bool,
            now in 0u64..100,
            sessions in proptest::collection::vec(
                (0u64..100, any::<bool>(),
                 proptest::option::of(prop_oneof![
                     Just(Decision::Approved), Just(Decision::Denied), Just(Decision::Ended)]),
                 proptest::collection::vec(0u64..100, 0..4)),
                0..6),
        ) {
            let mut states = Vec::new();
            let mut decisions = Vec::new();
            for (i, (expires, approval, decision, peers)) in sessions.iter().enumerate() {
                let peers = peers.iter().enumerate().map(|(j, &e)| peer((i * 4 + j) as u8, e)).collect();
                states.push(session(i as u64, *expires, *approval, peers));
                if let Some(decision) = decision {
                    decisions.push((i as u64, *decision));
                }
            }
            let p = run(states, switch_on, &decisions, now);
            for (s, peer) in p.live_peers() {
                prop_assert!(switch_on);
                prop_assert!(s.state.expires_ms > now && peer.expires_ms > now);
                let decision = decisions.iter().find(|(id, _)| *id == s.state.session_id.0).map(|d| d.1);
                prop_assert!(decision != Some(Decision::Denied) && decision != Some(Decision::Ended));
                prop_assert!(!s.state.approval_required || decision == Some(Decision::Approved));
            }
            if let Some(deadline) = p.next_deadline_ms {
                prop_assert!(deadline > now);
            }
        }
    }
}
