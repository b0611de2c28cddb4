//! A gateway's control connection.

use axum::extract::ws::WebSocket;
use ferry_control::{
    Challenge, ErrorCode, Welcome,
    gateway::{self, Event, EventAck, FromGateway, GatewayEvent, GatewayHello, ToGateway},
};
use tracing::Instrument;

use super::{Conn, Greeting, Incoming, desired, error};
use crate::{
    app::{Actor, AppState},
    audit, gateways,
    hub::GatewayLive,
    metrics::ChannelLabels,
    sessions::SessionError,
};

pub async fn run(state: AppState, socket: WebSocket, source: String) {
    let greeting = Greeting {
        hello: ToGateway::ServerHello,
        error: ToGateway::Error,
        expect: |m| match m {
            FromGateway::GatewayHello(hello) => Some(hello),
            _ => None,
        },
        name: "gateway_hello",
    };
    let Some((conn, challenge, hello)) = greeting.run(&state, Conn { socket, channel: "gateway" }).await
    else {
        return;
    };
    let id = hello.gateway_id.0;
    if let Err(why) = authenticate(&state, &hello, &challenge) {
        state.audit(audit::Event {
            actor: format!("gateway:{id}"),
            action: "gateway.connect".into(),
            allowed: false,
            source: Some(source),
            session: None,
            gateway: Some(id.to_string()),
            detail: Some(why.clone()),
        });
        let e = error(ErrorCode::Unauthorized, why.clone());
        return conn.refuse(&state, ToGateway::Error(e), ErrorCode::Unauthorized, &why).await;
    }
    let span = tracing::info_span!("gateway", id);
    serve(state, conn, hello, source).instrument(span).await;
}

fn authenticate(state: &AppState, hello: &GatewayHello, challenge: &Challenge) -> Result<(), String> {
    let gateway = gateways::get(&state.store, hello.gateway_id.0)
        .map_err(|e| format!("the cloud cannot read the gateway: {e}"))?
        .ok_or_else(|| format!("no gateway {}", hello.gateway_id.0))?;
    let enrolled = gateway.identity_key.ok_or("the gateway has not enrolled")?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(&enrolled, &mut key)
        .map_err(|_| "the enrolled identity key is unreadable".to_string())?;
    gateway::verify_gateway_hello(hello, challenge, &key).map_err(|e| e.to_string())
}

async fn serve(state: AppState, mut conn: Conn, hello: GatewayHello, source: String) {
    let id = hello.gateway_id.0;
    let actor = Actor::gateway(id, Some(source.clone()));
    let now = state.now_ms();
    let wg_key = hello.wg_public_key.to_string();
    let recorded = gateways::modify(&state.store, id, |g| {
        g.wg_public_key = Some(wg_key.clone());
        g.last_seen.online = true;
        g.last_seen.switch_on = hello.switch_on;
        g.last_seen.software_version = Some(hello.software_version.clone());
        g.last_seen.seen_ms = Some(now);
    });
    if let Err(e) = recorded {
        let e = error(ErrorCode::Internal, e.to_string());
        return conn.refuse(&state, ToGateway::Error(e), ErrorCode::Internal, "store").await;
    }
    let live = GatewayLive {
        switch_on: hello.switch_on,
        software_version: hello.software_version.clone(),
        wg_public_key: wg_key,
    };
    let mut registration = state.hub.connect_gateway(id, live);
    let gauge =
        state.metrics.control_connections.get_or_create(&ChannelLabels { channel: "gateway" }).clone();
    gauge.inc();
    state.audit(gateway_event(
        &actor,
        "gateway.connect",
        true,
        Some(format!(
            "version {}, switch {}",
            hello.software_version,
            if hello.switch_on { "on" } else { "off" }
        )),
    ));
    // A switch turned off while the gateway was away still ends everything.
    if !hello.switch_on
        && let Err(e) = state.switch_off(id, &actor)
    {
        tracing::error!(error = %e, "ending sessions after a switch-off failed");
    }
    if conn.send(&ToGateway::Welcome(Welcome { peer_id: registration.conn })).await {
        registration.dirty.mark_changed();
        loop {
            tokio::select! {
                changed = registration.dirty.changed() => {
                    if changed.is_err() {
                        let e = error(ErrorCode::Replaced, "another connection of this gateway took over");
                        conn.send(&ToGateway::Error(e)).await;
                        break;
                    }
                    let revision = *registration.dirty.borrow_and_update();
                    let store = state.store.clone();
                    let snapshot = tokio::task::spawn_blocking(move || desired::for_gateway(&store, id, revision)).await;
                    match snapshot {
                        Ok(Ok(snapshot)) => {
                            if !conn.send(&ToGateway::DesiredState(snapshot)).await {
                                break;
                            }
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "building the desired state failed"),
                        Err(e) => tracing::error!(error = %e, "building the desired state panicked"),
                    }
                }
                incoming = conn.recv::<FromGateway>() => match incoming {
                    Incoming::Closed => break,
                    Incoming::Malformed(why) => conn.count_malformed(&state, &why),
                    Incoming::Message(message) => {
                        state.metrics.control_messages.get_or_create(&ChannelLabels { channel: "gateway" }).inc();
                        match message {
                            FromGateway::GatewayHello(_) => conn.count_malformed(&state, "a second hello"),
                            FromGateway::Applied(applied) => tracing::debug!(revision = applied.revision, "applied"),
                            FromGateway::Event(event) => {
                                let seq = event.seq;
                                let (state2, actor2) = (state.clone(), actor.clone());
                                let handled = tokio::task::spawn_blocking(move || handle_event(&state2, id, &actor2, event)).await;
                                match handled {
                                    Ok(Ok(())) => {
                                        if !conn.send(&ToGateway::EventAck(EventAck { seq })).await {
                                            break;
                                        }
                                    }
                                    // Not acknowledged: the gateway keeps it and sends it again.
                                    Ok(Err(e)) => tracing::error!(error = %e, seq, "storing a gateway event failed"),
                                    Err(e) => tracing::error!(error = %e, seq, "handling a gateway event panicked"),
                                }
                            }
                        }
                    }
                },
            }
        }
    }
    gauge.dec();
    if state.hub.disconnect_gateway(id, registration.conn) {
        let now = state.now_ms();
        let _ = gateways::modify(&state.store, id, |g| {
            g.last_seen.online = false;
            g.last_seen.seen_ms = Some(now);
        });
        state.audit(gateway_event(&actor, "gateway.disconnect", true, None));
    }
}

fn gateway_event(actor: &Actor, action: &str, allowed: bool, detail: Option<String>) -> audit::Event {
    audit::Event {
        actor: actor.name.clone(),
        action: action.to_string(),
        allowed,
        source: actor.source.clone(),
        session: None,
        gateway: actor.name.strip_prefix("gateway:").map(str::to_string),
        detail,
    }
}

/// Applies one event durably; an event seen before (by its sequence
/// number) is acknowledged again without being applied twice.
fn handle_event(state: &AppState, gateway_id: u64, actor: &Actor, event: Event) -> Result<(), SessionError> {
    let Some(gateway) = gateways::get(&state.store, gateway_id)? else { return Ok(()) };
    if event.seq <= gateway.last_event_seq {
        return Ok(());
    }
    let now = state.now_ms();
    let session_of = |session_id: u64| -> Result<Option<crate::sessions::Session>, SessionError> {
        Ok(crate::sessions::get(&state.store, session_id)?.filter(|s| s.gateway_id == gateway_id))
    };
    match event.event {
        GatewayEvent::SwitchChanged { on } => {
            state.hub.update_gateway(gateway_id, |l| l.switch_on = on);
            // Recorded with the stored switch position; a repeated position
            // (nothing to store) is still the customer's act, recorded alone.
            let event =
                || gateway_event(actor, "gateway.switch", true, Some(if on { "on" } else { "off" }.into()));
            let recorded = std::cell::Cell::new(false);
            gateways::modify_audited(
                &state.store,
                gateway_id,
                now,
                |g| g.last_seen.switch_on = on,
                |_, _| {
                    recorded.set(true);
                    Some(event())
                },
            )?;
            if !recorded.get() {
                state.audit(event());
            }
            if !on {
                state.switch_off(gateway_id, actor)?;
            }
        }
        GatewayEvent::Status { software_version, switch_on } => {
            let was_on = state.hub.gateway(gateway_id).is_some_and(|l| l.switch_on);
            state.hub.update_gateway(gateway_id, |l| {
                l.switch_on = switch_on;
                l.software_version = software_version.clone();
            });
            gateways::modify(&state.store, gateway_id, |g| {
                g.last_seen.switch_on = switch_on;
                g.last_seen.software_version = Some(software_version.clone());
                g.last_seen.seen_ms = Some(now);
            })?;
            if was_on && !switch_on {
                state.audit(gateway_event(actor, "gateway.switch", true, Some("off".into())));
                state.switch_off(gateway_id, actor)?;
            }
        }
        GatewayEvent::Candidates { endpoints } => {
            let list: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
            gateways::modify_audited(
                &state.store,
                gateway_id,
                now,
                |g| g.endpoints = endpoints.clone(),
                |_, _| Some(gateway_event(actor, "gateway.candidates", true, Some(list.join(" ")))),
            )?;
        }
        GatewayEvent::Approved { session_id } => match session_of(session_id.0)? {
            Some(session) => match state.change_session(session.id, |s| Ok(s.approve(now)?)) {
                Ok(Some((session, ()))) => {
                    state.audit_session(actor, "session.approve", true, &session, None)
                }
                Ok(None) => {}
                Err(SessionError::Refused(r)) => {
                    state.audit_session(actor, "session.approve", false, &session, Some(r.to_string()))
                }
                Err(e) => return Err(e),
            },
            None => state.audit(gateway_event(
                actor,
                "session.approve",
                false,
                Some(format!("unknown session {}", session_id.0)),
            )),
        },
        GatewayEvent::Denied { session_id } => {
            if let Some(session) = session_of(session_id.0)? {
                match state.change_session(session.id, |s| Ok(s.deny(now)?)) {
                    Ok(Some((session, ()))) => {
                        state.audit_session(actor, "session.deny", true, &session, None)
                    }
                    Ok(None) | Err(SessionError::Refused(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        GatewayEvent::PeerConnected { session_id, public_key, endpoint } => {
            if let Some(session) = session_of(session_id.0)? {
                let detail =
                    format!("peer {public_key} from {}", endpoint.map_or("?".into(), |e| e.to_string()));
                state.audit_session(actor, "session.peer_connected", true, &session, Some(detail));
            }
        }
        GatewayEvent::PeerDisconnected { session_id, public_key } => {
            if let Some(session) = session_of(session_id.0)? {
                state.audit_session(
                    actor,
                    "session.peer_disconnected",
                    true,
                    &session,
                    Some(format!("peer {public_key}")),
                );
            }
        }
        GatewayEvent::Bytes { session_id, target, rx, tx } => {
            if let Some(session) = session_of(session_id.0)? {
                // No push: counters are not part of any desired state.
                let detail = format!("target {}: rx {rx} tx {tx} bytes", target.as_deref().unwrap_or("all"));
                crate::sessions::modify_audited(
                    &state.store,
                    session.id,
                    now,
                    |s| {
                        s.bytes_rx = s.bytes_rx.saturating_add(rx);
                        s.bytes_tx = s.bytes_tx.saturating_add(tx);
                        Ok(())
                    },
                    |s, _| Some(actor.session_event("session.bytes", true, s, Some(detail.clone()))),
                )?;
            }
        }
    }
    gateways::modify(&state.store, gateway_id, |g| g.last_event_seq = g.last_event_seq.max(event.seq))?;
    Ok(())
}
