//! A gateway's control connection.

use axum::extract::ws::WebSocket;
use ferry_control::{
    Challenge, ErrorCode, Welcome,
    gateway::{self, EventAck, FromGateway, GatewayHello, ToGateway},
};
use tracing::Instrument;

use super::{Conn, Greeting, Incoming, Unproven, desired, error, gateway_events};
use crate::{
    app::{Actor, AppState},
    audit, gateways,
    hub::{Change, GatewayLive},
    metrics::ChannelLabels,
};

pub async fn run(state: AppState, socket: WebSocket, source: String, unproven: Unproven) {
    let greeting = Greeting {
        hello: ToGateway::ServerHello,
        error: ToGateway::Error,
        expect: |m| match m {
            FromGateway::GatewayHello(hello) => Some(hello),
            _ => None,
        },
        name: "gateway_hello",
    };
    let Some((conn, challenge, hello)) = greeting.run(&state, Conn::new(socket, "gateway")).await else {
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
    drop(unproven);
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
    let mut registration = match state.hub.connect_gateway(id, live) {
        Ok(registration) => registration,
        Err(e) => {
            let e = error(ErrorCode::Internal, e.to_string());
            return conn.refuse(&state, ToGateway::Error(e), ErrorCode::Internal, "store").await;
        }
    };
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
    let mut failed = None;
    if conn.send(&ToGateway::Welcome(Welcome { peer_id: registration.conn })).await {
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
                        let e = error(ErrorCode::Replaced, "another connection of this gateway took over");
                        conn.send(&ToGateway::Error(e)).await;
                        break;
                    }
                    let revision = *registration.dirty.borrow_and_update();
                    let (store, stun) = (state.store.clone(), state.hub.stun_servers());
                    let snapshot = tokio::task::spawn_blocking(move || desired::for_gateway(&store, id, revision, stun)).await;
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
                                let handled = tokio::task::spawn_blocking(move || gateway_events::apply(&state2, id, &actor2, &event)).await;
                                let failure = match handled {
                                    Ok(Ok(outcome)) => {
                                        tracing::debug!(seq, ?outcome, "gateway event");
                                        if outcome == gateway_events::Outcome::Stored {
                                            // Its candidates, its switch, its sessions: watchers look again.
                                            state.hub.notify(Change::Gateway(id));
                                        }
                                        if !conn.send(&ToGateway::EventAck(EventAck { seq })).await {
                                            break;
                                        }
                                        continue;
                                    }
                                    Ok(Err(e)) => e.to_string(),
                                    Err(e) => format!("handling it panicked: {e}"),
                                };
                                // Nothing after this event may be stored before it, or an
                                // acknowledgement would cover it: stop here. Closing makes
                                // the gateway reconnect and send it again, with everything
                                // after it.
                                tracing::error!(error = %failure, seq, "storing a gateway event failed; closing the channel");
                                failed = Some(error(ErrorCode::Internal, format!("event {seq} was not stored; send it again")));
                                break;
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
                    conn.count_silent(&state);
                    break;
                }
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
    if let Some(e) = failed {
        conn.fail(ToGateway::Error(e)).await;
    }
}

pub(super) fn gateway_event(
    actor: &Actor,
    action: &str,
    allowed: bool,
    detail: Option<String>,
) -> audit::Event {
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
