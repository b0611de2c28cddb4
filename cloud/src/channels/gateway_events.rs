//! A gateway's events, each stored exactly once and in order.
//!
//! The gateway keeps an event until the cloud acknowledges it, and an
//! acknowledgement covers every event up to its sequence number
//! (`control/README.md`). So everything an event changes (documents and
//! audit entries) and the gateway's new `last_event_seq` go into one atomic
//! commit: an event is stored together with its number or not at all. The
//! channel hands events over one after the other and stops at the first one
//! that cannot be stored, so no acknowledgement reaches past it; when the
//! gateway sends it again, it is either applied (it was not stored) or
//! recognised by its number (it was), never applied twice.

use ferry_control::{
    SessionId,
    gateway::{Event, GatewayEvent, PanelLoginOutcome, PathKind},
};

use super::gateway::gateway_event;
use crate::{
    app::{Actor, AppState, describe},
    audit::{self, AuditError},
    gateways::{self, Gateway},
    sessions::{self, EndReason, IssuedConfig, PeerPath, PeerReport, Planned, Session, SessionError},
    store::{BackendError, Batch, Store},
};

/// What became of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now.
    Stored,
    /// Stored before: a resend after a lost acknowledgement.
    AlreadyStored,
    /// The gateway is gone from the store; there is nothing to store it with.
    NoGateway,
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Store(#[from] BackendError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("gateway {0} is changed too often; gave up")]
    Contended(u64),
}

/// Everything one event changes, for one commit.
#[derive(Default)]
struct Plan {
    batch: Batch,
    audit: Vec<audit::Event>,
    /// Sessions changed (before, after), told to their gateway and relays
    /// once the commit is through.
    sessions: Vec<(Session, Session)>,
    /// Sessions whose reports changed (bytes, peers) but no desired state:
    /// only subscribers hear of them.
    reported: Vec<u64>,
}

impl Plan {
    fn session<R>(&mut self, planned: Planned<R>, entry: audit::Event) {
        self.audit.push(entry);
        if planned.changed() {
            self.batch = std::mem::take(&mut self.batch).append(planned.batch);
            self.sessions.push((planned.before, planned.after));
        }
    }
}

/// Stores `event` of gateway `gateway_id`, with `last_event_seq` moved to
/// its number in the same commit, unless that number is stored already.
/// An error means that nothing of it was stored.
pub fn apply(state: &AppState, gateway_id: u64, actor: &Actor, event: &Event) -> Result<Outcome, EventError> {
    let store = &state.store;
    let mut reported_live = false;
    // A conflict (an admin changed a session or the gateway meanwhile)
    // means the plan was made from an outdated read: read and plan again.
    for _ in 0..64 {
        let Some(read) = gateways::snapshot(store, gateway_id)? else { return Ok(Outcome::NoGateway) };
        if event.seq <= read.gateway.last_event_seq {
            return Ok(Outcome::AlreadyStored);
        }
        if !reported_live {
            // Before the sessions are read: once the hub says the switch is
            // off, no new session can start behind this event's back.
            report_live(state, gateway_id, &event.event);
            reported_live = true;
        }
        let now = state.now_ms();
        let mut gateway = read.gateway.clone();
        let mut plan = Plan::default();
        plan_effect(store, &mut gateway, actor, &event.event, now, &mut plan)?;
        gateway.last_event_seq = event.seq;
        let batch = std::mem::take(&mut plan.batch).append(read.replace_with(&gateway));
        match audit::commit_entries(store, now, &plan.audit, batch) {
            Ok(_) => {
                for (before, after) in &plan.sessions {
                    state.session_changed(before, after);
                }
                for id in &plan.reported {
                    state.hub.notify(crate::hub::Change::Session(*id));
                }
                return Ok(Outcome::Stored);
            }
            Err(AuditError::Store(BackendError::Conflict { .. })) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(EventError::Contended(gateway_id))
}

/// What the gateway reports about itself, for the live view.
fn report_live(state: &AppState, gateway_id: u64, event: &GatewayEvent) {
    match event {
        GatewayEvent::SwitchChanged { on } => state.hub.update_gateway(gateway_id, |l| l.switch_on = *on),
        GatewayEvent::Status { software_version, switch_on } => state.hub.update_gateway(gateway_id, |l| {
            l.switch_on = *switch_on;
            l.software_version = software_version.clone();
        }),
        _ => {}
    }
}

fn plan_effect(
    store: &Store,
    gateway: &mut Gateway,
    actor: &Actor,
    event: &GatewayEvent,
    now: u64,
    plan: &mut Plan,
) -> Result<(), EventError> {
    let gateway_id = gateway.id;
    match event {
        GatewayEvent::SwitchChanged { on } => {
            gateway.last_seen.switch_on = *on;
            // Recorded even when the stored position already was `on`: it
            // is the customer's act.
            let position = if *on { "on" } else { "off" };
            plan.audit.push(gateway_event(actor, "gateway.switch", true, Some(position.into())));
            if !on {
                end_live_sessions(store, gateway_id, actor, now, plan)?;
            }
        }
        GatewayEvent::Status { software_version, switch_on } => {
            // The stored position, not the live view: the live view may
            // already hold this very event from an attempt that failed.
            let was_on = gateway.last_seen.switch_on;
            gateway.last_seen.switch_on = *switch_on;
            gateway.last_seen.software_version = Some(software_version.clone());
            gateway.last_seen.seen_ms = Some(now);
            if was_on && !switch_on {
                plan.audit.push(gateway_event(actor, "gateway.switch", true, Some("off".into())));
                end_live_sessions(store, gateway_id, actor, now, plan)?;
            }
        }
        GatewayEvent::Candidates { endpoints } => {
            if gateway.endpoints != *endpoints {
                gateway.endpoints = endpoints.clone();
                let list: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
                plan.audit.push(gateway_event(actor, "gateway.candidates", true, Some(list.join(" "))));
            }
        }
        GatewayEvent::Approved { session_id } => {
            let approve = |s: &mut Session| Ok(s.approve(now)?);
            decide(store, gateway_id, actor, *session_id, "session.approve", approve, None, plan)?
        }
        GatewayEvent::Denied { session_id } => {
            decide(store, gateway_id, actor, *session_id, "session.deny", |s| Ok(s.deny(now)?), None, plan)?
        }
        GatewayEvent::Ended { session_id } => {
            // The customer ended this one session at the gateway; the
            // gateway stopped forwarding it already.
            let reason = EndReason::Customer { session_only: true };
            let detail = Some(describe(&reason));
            let end = |s: &mut Session| Ok(s.end(reason, now)?);
            decide(store, gateway_id, actor, *session_id, "session.end", end, detail, plan)?
        }
        GatewayEvent::PeerConnected { session_id, public_key, endpoint, path } => {
            if let Some(session) = session_of(store, gateway_id, *session_id)? {
                let mut detail =
                    format!("peer {public_key} from {}", endpoint.map_or("?".into(), |e| e.to_string()));
                if let Some(path) = path {
                    detail += &format!(" via {}", path_words(*path));
                }
                plan.audit.push(actor.session_event("session.peer_connected", true, &session, Some(detail)));
                let key = public_key.to_string();
                report_peer(store, &session, &key, plan, |config| PeerReport {
                    connected: true,
                    endpoint: *endpoint,
                    // What the gateway says; a gateway too old to say it
                    // leaves the endpoint to tell what it can.
                    path: path.map(PeerPath::from).or_else(|| endpoint.map(|e| config.path_of(e))),
                    since_ms: now,
                })?;
            }
        }
        GatewayEvent::PeerPath { session_id, public_key, path, endpoint } => {
            if let Some(session) = session_of(store, gateway_id, *session_id)? {
                let detail = format!(
                    "peer {public_key} now via {} from {}",
                    path_words(*path),
                    endpoint.map_or("?".into(), |e| e.to_string())
                );
                plan.audit.push(actor.session_event("session.peer_path", true, &session, Some(detail)));
                let key = public_key.to_string();
                report_peer(store, &session, &key, plan, |_| PeerReport {
                    connected: true,
                    endpoint: *endpoint,
                    path: Some(PeerPath::from(*path)),
                    since_ms: now,
                })?;
            }
        }
        GatewayEvent::PanelLogin { outcome, from } => {
            let allowed = *outcome == PanelLoginOutcome::Success;
            let detail = format!("local panel login from {from}: {}", outcome.label());
            plan.audit.push(gateway_event(actor, "gateway.panel_login", allowed, Some(detail)));
        }
        GatewayEvent::PanelLogout { from } => {
            let detail = format!("local panel logout from {from}");
            plan.audit.push(gateway_event(actor, "gateway.panel_logout", true, Some(detail)));
        }
        GatewayEvent::PeerDisconnected { session_id, public_key } => {
            if let Some(session) = session_of(store, gateway_id, *session_id)? {
                let detail = format!("peer {public_key}");
                plan.audit.push(actor.session_event(
                    "session.peer_disconnected",
                    true,
                    &session,
                    Some(detail),
                ));
                let key = public_key.to_string();
                report_peer(store, &session, &key, plan, |_| PeerReport {
                    connected: false,
                    endpoint: None,
                    path: None,
                    since_ms: now,
                })?;
            }
        }
        GatewayEvent::Bytes { session_id, target, rx, tx } => {
            if let Some(session) = session_of(store, gateway_id, *session_id)? {
                // No push: counters are not part of any desired state.
                let counted = sessions::prepare(store, session.id, |s| {
                    s.bytes_rx = s.bytes_rx.saturating_add(*rx);
                    s.bytes_tx = s.bytes_tx.saturating_add(*tx);
                    Ok(())
                })?;
                if let Some(counted) = counted.filter(Planned::changed) {
                    let detail =
                        format!("target {}: rx {rx} tx {tx} bytes", target.as_deref().unwrap_or("all"));
                    let entry = actor.session_event("session.bytes", true, &counted.after, Some(detail));
                    plan.audit.push(entry);
                    plan.batch = std::mem::take(&mut plan.batch).append(counted.batch);
                    plan.reported.push(session.id);
                }
            }
        }
    }
    Ok(())
}

/// Records the gateway's report of the peer with `public_key` on its
/// configuration, if one of the session's configurations has that key. No
/// push: a report is not part of any desired state.
fn report_peer(
    store: &Store,
    session: &Session,
    public_key: &str,
    plan: &mut Plan,
    report: impl Fn(&IssuedConfig) -> PeerReport,
) -> Result<(), EventError> {
    let changed = sessions::prepare(store, session.id, |s| {
        if let Some(config) = s.configs.iter_mut().find(|c| c.public_key == public_key) {
            config.peer = Some(report(config));
        }
        Ok(())
    })?;
    // A session touched twice by one event would conflict with itself; an
    // event names one peer, so it is not.
    if let Some(changed) = changed.filter(Planned::changed) {
        plan.batch = std::mem::take(&mut plan.batch).append(changed.batch);
        plan.reported.push(session.id);
    }
    Ok(())
}

fn session_of(store: &Store, gateway_id: u64, id: SessionId) -> Result<Option<Session>, BackendError> {
    Ok(sessions::get(store, id.0)?.filter(|s| s.gateway_id == gateway_id))
}

/// The path in words, for the audit log.
fn path_words(path: PathKind) -> &'static str {
    match path {
        PathKind::Direct => "direct",
        PathKind::UdpRelay => "relay (UDP)",
        PathKind::WebsocketRelay => "relay (WebSocket)",
    }
}

/// The customer's approval, denial or end of one session: applied and
/// audited (with `detail`), or audited as refused with the reason (an
/// unknown session, one not waiting or not running).
#[allow(clippy::too_many_arguments)]
fn decide(
    store: &Store,
    gateway_id: u64,
    actor: &Actor,
    session_id: SessionId,
    action: &str,
    transition: impl FnOnce(&mut Session) -> Result<(), SessionError>,
    detail: Option<String>,
    plan: &mut Plan,
) -> Result<(), EventError> {
    let unknown = || gateway_event(actor, action, false, Some(format!("unknown session {}", session_id.0)));
    let Some(session) = session_of(store, gateway_id, session_id)? else {
        plan.audit.push(unknown());
        return Ok(());
    };
    match sessions::prepare(store, session.id, transition) {
        Ok(Some(planned)) => {
            let entry = actor.session_event(action, true, &planned.after, detail);
            plan.session(planned, entry);
        }
        Ok(None) => plan.audit.push(unknown()),
        Err(SessionError::Refused(refusal)) => {
            plan.audit.push(actor.session_event(action, false, &session, Some(refusal.to_string())))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The customer switched off: every live session of the gateway ends, in
/// the same commit as the switch.
fn end_live_sessions(
    store: &Store,
    gateway_id: u64,
    actor: &Actor,
    now: u64,
    plan: &mut Plan,
) -> Result<(), EventError> {
    let reason = EndReason::Customer { session_only: false };
    for session in sessions::live_for_gateway(store, gateway_id)? {
        match sessions::prepare(store, session.id, |s| Ok(s.end(reason.clone(), now)?)) {
            Ok(Some(planned)) => {
                let entry = actor.session_event("session.end", true, &planned.after, Some(describe(&reason)));
                plan.session(planned, entry);
            }
            // Gone or ended meanwhile: nothing left to end.
            Ok(None) | Err(SessionError::Refused(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
