//! A relay's control connection.

use axum::extract::ws::WebSocket;
use ferry_control::{
    ErrorCode, Welcome,
    relay::{FromRelay, RelayHello, ToRelay},
};
use tracing::Instrument;

use super::{Conn, Greeting, Incoming, Unproven, desired, error};
use crate::{
    app::AppState,
    audit,
    hub::RelayLive,
    metrics::ChannelLabels,
    relays::{self, RelayHealth},
};

pub async fn run(state: AppState, socket: WebSocket, source: String, unproven: Unproven) {
    let greeting = Greeting {
        hello: ToRelay::ServerHello,
        error: ToRelay::Error,
        expect: |m| match m {
            FromRelay::RelayHello(hello) => Some(hello),
            _ => None,
        },
        name: "relay_hello",
    };
    // Relays prove themselves with their token; the challenge is unused.
    let Some((conn, _, hello)) = greeting.run(&state, Conn::new(socket, "relay")).await else {
        return;
    };
    let id = hello.relay_id.0;
    let event = |action: &str, allowed: bool, detail: Option<String>| audit::Event {
        actor: format!("relay:{id}"),
        action: action.to_string(),
        allowed,
        source: Some(source.clone()),
        session: None,
        gateway: None,
        detail,
    };
    match relays::authenticate(&state.store, id, hello.token.expose()) {
        Ok(Some(_)) => {}
        Ok(None) => {
            state.audit(event("relay.connect", false, Some("wrong relay token".into())));
            let e = error(ErrorCode::Unauthorized, "the relay token is not valid for this relay");
            return conn.refuse(&state, ToRelay::Error(e), ErrorCode::Unauthorized, "bad token").await;
        }
        Err(e) => {
            let e = error(ErrorCode::Internal, e.to_string());
            return conn.refuse(&state, ToRelay::Error(e), ErrorCode::Internal, "store").await;
        }
    }
    drop(unproven);
    let stun = hello.stun.map_or_else(|| "no STUN".to_string(), |s| format!("STUN {s}"));
    let detail = format!("udp {}, {}, {stun}", hello.udp, hello.websocket_url);
    state.audit(event("relay.connect", true, Some(detail)));
    serve(&state, conn, &hello).instrument(tracing::info_span!("relay", id)).await;
    state.audit(event("relay.disconnect", true, None));
}

fn health(
    hello: &RelayHello,
    online: bool,
    now: u64,
    report: Option<&ferry_control::relay::Health>,
) -> RelayHealth {
    RelayHealth {
        online,
        udp: Some(hello.udp),
        websocket_url: Some(hello.websocket_url.clone()),
        websocket_pin: hello.websocket_pin.clone(),
        software_version: Some(hello.software_version.clone()),
        seen_ms: Some(now),
        bindings: report.map_or(0, |h| h.bindings),
        capacity: report.map_or(hello.capacity, |h| h.capacity),
        forwarded_packets: report.map_or(0, |h| h.forwarded_packets),
        forwarded_bytes: report.map_or(0, |h| h.forwarded_bytes),
        drops: report.map_or(0, |h| h.drops),
    }
}

async fn serve(state: &AppState, mut conn: Conn, hello: &RelayHello) {
    let id = hello.relay_id.0;
    let live = RelayLive {
        udp: hello.udp,
        stun: hello.stun,
        websocket_url: hello.websocket_url.clone(),
        websocket_pin: hello.websocket_pin.clone(),
        capacity: hello.capacity,
        bindings: 0,
    };
    let _ = relays::set_health(&state.store, id, health(hello, true, state.now_ms(), None));
    let mut registration = match state.hub.connect_relay(id, live) {
        Ok(registration) => registration,
        Err(e) => {
            let e = error(ErrorCode::Internal, e.to_string());
            return conn.refuse(state, ToRelay::Error(e), ErrorCode::Internal, "store").await;
        }
    };
    let gauge = state.metrics.control_connections.get_or_create(&ChannelLabels { channel: "relay" }).clone();
    gauge.inc();
    if conn.send(&ToRelay::Welcome(Welcome { peer_id: registration.conn })).await {
        registration.dirty.mark_changed();
        loop {
            let silent_at = conn.silent_at();
            // In this order: after a handler that took long (a database
            // stall), frames that arrived meanwhile are read before the
            // silence is judged.
            tokio::select! {
                biased;
                changed = registration.dirty.changed() => {
                    if changed.is_err() {
                        let e = error(ErrorCode::Replaced, "another connection of this relay took over");
                        conn.send(&ToRelay::Error(e)).await;
                        break;
                    }
                    let revision = *registration.dirty.borrow_and_update();
                    let store = state.store.clone();
                    match tokio::task::spawn_blocking(move || desired::for_relay(&store, id, revision)).await {
                        Ok(Ok(snapshot)) => {
                            if !conn.send(&ToRelay::DesiredAllocations(snapshot)).await {
                                break;
                            }
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "building the allocations failed"),
                        Err(e) => tracing::error!(error = %e, "building the allocations panicked"),
                    }
                }
                incoming = conn.recv::<FromRelay>() => match incoming {
                    Incoming::Closed => break,
                    Incoming::Malformed(why) => conn.count_malformed(state, &why),
                    Incoming::Message(message) => {
                        state.metrics.control_messages.get_or_create(&ChannelLabels { channel: "relay" }).inc();
                        match message {
                            FromRelay::RelayHello(_) => conn.count_malformed(state, "a second hello"),
                            FromRelay::Applied(applied) => tracing::debug!(revision = applied.revision, "applied"),
                            FromRelay::AllocationReady(ready) => state
                                .hub
                                .answer_allocation(ready.id.0, Ok((ready.gateway_endpoint, ready.client_endpoint))),
                            FromRelay::AllocationRefused(refused) => {
                                tracing::warn!(allocation = refused.id.0, reason = %refused.reason, "allocation refused");
                                state.hub.answer_allocation(refused.id.0, Err(refused.reason));
                            }
                            FromRelay::Health(report) => {
                                state.hub.update_relay(id, |l| {
                                    l.bindings = report.bindings;
                                    l.capacity = report.capacity;
                                });
                                let _ = relays::set_health(&state.store, id, health(hello, true, state.now_ms(), Some(&report)));
                            }
                        }
                    }
                },
                () = tokio::time::sleep_until(silent_at) => {
                    // Pings are read (and answered) inside `recv`, which
                    // returns only with a message: look again.
                    if conn.silent_at() > tokio::time::Instant::now() {
                        continue;
                    }
                    conn.count_silent(state);
                    break;
                }
            }
        }
    }
    gauge.dec();
    if state.hub.disconnect_relay(id, registration.conn) {
        let _ = relays::set_health(&state.store, id, health(hello, false, state.now_ms(), None));
    }
}
