//! Issued configurations from the client's side: direct-path candidates
//! both ways, the STUN servers, and the configuration's own endpoints under
//! its watch token (status, server-sent events, new candidates,
//! revocation), over real HTTP with a test gateway and a test relay on real
//! WebSockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod common;

use std::{
    net::SocketAddr,
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::Duration,
};

use common::{
    Api, Reply,
    peers::{RELAY_STUN, TestGateway, TestRelay},
};
use ferry_api::{ClientConfig, ConfigState, ConfigStatus, EndReason, SessionView, State};
use ferry_cloud::rights::Role;
use ferry_control::gateway::GatewayEvent;
use serde_json::{Value, json};

/// How long a test waits for something the cloud does at once; only a
/// hung cloud takes this long.
const PATIENCE: Duration = Duration::from_secs(10);

struct World {
    api: Api,
    admin: String,
    tech: String,
    tech_id: u64,
    /// A technician the sessions are not released to.
    other: String,
    gateway_id: u64,
    key: ed25519_dalek::SigningKey,
}

fn world() -> World {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let tech_id = api.user("tech", Role::RemoteConnectUser);
    api.user("other", Role::RemoteConnectUser);
    let (admin, _) = api.login("root");
    let (tech, _) = api.login("tech");
    let (other, _) = api.login("other");
    let (gateway_id, key) = TestGateway::create_and_enrol(&api, &admin, "press-4", 7);
    World { api, admin, tech, tech_id, other, gateway_id, key }
}

/// An issued configuration as the client got it.
struct Issued {
    id: u64,
    watch: String,
    config: ClientConfig,
}

impl World {
    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.api.runtime().block_on(f)
    }

    fn gateway(&self, switch_on: bool) -> TestGateway {
        self.run(TestGateway::connect(self.api.addr, self.gateway_id, &self.key, switch_on)).unwrap()
    }

    fn relay(&self) -> TestRelay {
        let relay = self.api.post("/api/v1/relays", &self.admin, json!({"name": "relay-1"}));
        assert_eq!(relay.status, 201, "{relay:?}");
        let id = relay.body["relay"]["id"].as_u64().unwrap();
        self.run(TestRelay::start(self.api.addr, id, relay.body["token"].as_str().unwrap())).unwrap()
    }

    /// A session released to the technician, started by them.
    fn started_session(&self) -> u64 {
        let made = self.api.post(
            "/api/v1/sessions",
            &self.admin,
            json!({"name": "fix the plc", "gateway_id": self.gateway_id, "targets": ["plc"],
                   "released_to": [self.tech_id], "max_duration_s": 3600}),
        );
        assert_eq!(made.status, 201, "{made:?}");
        let id = made.body["id"].as_u64().unwrap();
        let started = self.api.post(&format!("/api/v1/sessions/{id}/start"), &self.tech, json!({}));
        assert_eq!(started.status, 200, "{started:?}");
        id
    }

    fn request_config(&self, session: u64, key: u8, candidates: Value) -> Reply {
        self.api.post(
            &format!("/api/v1/sessions/{session}/config"),
            &self.tech,
            json!({"public_key": key_b64(key), "candidates": candidates}),
        )
    }

    fn issue(&self, session: u64, key: u8, candidates: Value) -> Issued {
        let reply = self.request_config(session, key, candidates);
        assert_eq!(reply.status, 200, "{reply:?}");
        let config: ClientConfig = serde_json::from_value(reply.body).unwrap();
        Issued { id: config.config_id, watch: config.watch_token.clone(), config }
    }

    fn status(&self, config: u64, token: &str) -> Reply {
        self.api.get(&format!("/api/v1/configs/{config}"), token)
    }

    fn live_status(&self, issued: &Issued) -> ConfigStatus {
        let reply = self.status(issued.id, &issued.watch);
        assert_eq!(reply.status, 200, "{reply:?}");
        serde_json::from_value(reply.body).unwrap()
    }

    fn actions(&self) -> Vec<String> {
        self.api
            .audit()
            .into_iter()
            .map(|e| format!("{} {} {}", e.event.actor, e.event.action, e.event.allowed))
            .collect()
    }
}

fn key_b64(byte: u8) -> String {
    ferry_control::WgKey([byte; 32]).to_string()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// The next event of a stream, as a status.
fn next_status(events: &Receiver<Option<Value>>) -> ConfigStatus {
    match events.recv_timeout(PATIENCE) {
        Ok(Some(event)) => serde_json::from_value(event).unwrap(),
        Ok(None) => panic!("the stream ended"),
        Err(e) => panic!("no event: {e}"),
    }
}

fn stream_ends(events: &Receiver<Option<Value>>) {
    match events.recv_timeout(PATIENCE) {
        Ok(None) | Err(RecvTimeoutError::Disconnected) => {}
        Ok(Some(event)) => panic!("another event after a final one: {event}"),
        Err(RecvTimeoutError::Timeout) => panic!("the stream did not end"),
    }
}

#[test]
fn candidates_go_from_the_client_to_the_gateway_and_back() {
    let w = world();
    let api = &w.api;
    let mut gw = w.gateway(true);
    assert!(gw.state.stun_servers.is_empty(), "no relay yet");
    assert_eq!(api.get("/api/v1/stun", &w.tech).body, json!({"servers": []}));
    // A relay with a STUN server connects: every gateway hears of it, and
    // so does any logged-in user.
    let _relay = w.relay();
    let state = w.run(gw.until(|s| !s.stun_servers.is_empty()));
    assert_eq!(state.stun_servers, addrs(&[RELAY_STUN]));
    assert_eq!(api.get("/api/v1/stun", &w.tech).body, json!({"servers": [RELAY_STUN]}));
    assert_eq!(api.call("GET", "/api/v1/stun", None, None).status, 401);

    // The gateway reports its candidates; the client sends its own.
    let gateway_candidates = ["198.51.100.20:51820", "192.168.1.2:51820"];
    w.run(gw.event(GatewayEvent::Candidates { endpoints: addrs(&gateway_candidates) }));
    let id = w.started_session();
    let issued = w.issue(id, 1, json!(["192.0.2.50:40100", "[2001:db8::50]:40100", "192.0.2.50:40100"]));
    assert_eq!(issued.config.endpoints, gateway_candidates, "the gateway's candidates");
    assert_eq!(issued.config.stun_servers, [RELAY_STUN]);
    assert_eq!(issued.watch.len(), 64);
    assert!(issued.watch.bytes().all(|b| b.is_ascii_hexdigit()), "{}", issued.watch);
    let state = w.run(gw.until(|s| s.sessions.first().is_some_and(|s| !s.peers.is_empty())));
    let peer = &state.sessions[0].peers[0];
    assert_eq!(peer.public_key.to_string(), key_b64(1));
    assert_eq!(peer.candidates, addrs(&["192.0.2.50:40100", "[2001:db8::50]:40100"]), "repeats dropped");
    assert_eq!(state.stun_servers, addrs(&[RELAY_STUN]));
    let session = api.get(&format!("/api/v1/sessions/{id}"), &w.admin);
    assert_eq!(session.body["configs"][0]["candidates"], json!(["192.0.2.50:40100", "[2001:db8::50]:40100"]));

    // The configuration's status has the gateway's candidates...
    let status = w.live_status(&issued);
    assert_eq!((status.state, status.session_state), (ConfigState::Live, State::Active));
    assert_eq!((status.config_id, status.session_id), (issued.id, id));
    assert_eq!(status.gateway_endpoints, gateway_candidates);
    assert!(status.gateway_connected);
    assert_eq!(status.expires_ms, issued.config.expires_ms);
    // ...and their change when the gateway moves.
    w.run(gw.event(GatewayEvent::Candidates { endpoints: addrs(&["198.51.100.21:40000"]) }));
    assert_eq!(w.live_status(&issued).gateway_endpoints, ["198.51.100.21:40000"]);

    // The client moves: its new candidates reach the gateway at once.
    let moved = api.call(
        "PUT",
        &format!("/api/v1/configs/{}/candidates", issued.id),
        Some(&issued.watch),
        Some(json!({"candidates": ["203.0.113.80:40200"]})),
    );
    assert_eq!(moved.status, 200, "{moved:?}");
    assert_eq!(moved.body["state"], "live");
    let state = w.run(gw.until(|s| s.sessions[0].peers[0].candidates == addrs(&["203.0.113.80:40200"])));
    assert_eq!(state.sessions[0].peers.len(), 1);
    assert!(w.actions().contains(&"tech config.candidates true".to_string()), "{:#?}", w.actions());
}

#[test]
fn watch_tokens_open_only_their_own_configuration() {
    let w = world();
    let api = &w.api;
    let _gw = w.gateway(true);
    let a = w.issue(w.started_session(), 1, json!([]));
    let b = w.issue(w.started_session(), 2, json!([]));
    assert_eq!(w.live_status(&a).state, ConfigState::Live);
    let a_path = format!("/api/v1/configs/{}", a.id);
    let refused = |reply: Reply, what: &str| {
        assert_eq!((reply.status, reply.problem()), (401, "unauthenticated"), "{what}: {reply:?}");
    };

    // Another configuration's token, the user's own tokens, none, junk.
    refused(w.status(a.id, &b.watch), "another configuration's token");
    refused(w.status(a.id, &w.tech), "the user's access token");
    let api_token = api.post(
        "/api/v1/tokens",
        &w.admin,
        json!({"name": "ci", "scopes": ["sessions:read", "sessions:write"]}),
    );
    let api_token = api_token.body["secret"].as_str().unwrap().to_string();
    refused(w.status(a.id, &api_token), "an API token");
    refused(api.call("GET", &a_path, None, None), "no token");
    refused(w.status(a.id, "x"), "junk");
    refused(w.status(a.id, &"0".repeat(64)), "a guess");
    // An unknown configuration looks like a wrong token.
    let unknown = w.status(a.id + 1000, &a.watch);
    refused(unknown, "an unknown configuration");
    // Every operation checks it.
    refused(api.events(&format!("{a_path}/events"), &b.watch).unwrap_err(), "events");
    let put =
        api.call("PUT", &format!("{a_path}/candidates"), Some(&b.watch), Some(json!({"candidates": []})));
    refused(put, "new candidates");
    refused(api.call("DELETE", &a_path, Some(&b.watch), None), "revocation");
    refused(api.call("DELETE", &a_path, Some(&w.tech), None), "revocation by the user's token");
    assert_eq!(w.live_status(&a).state, ConfigState::Live, "nothing of that touched it");
    // A watch token is no user's token either.
    refused(api.get("/api/v1/me", &a.watch), "a user endpoint");
    refused(api.get("/api/v1/sessions", &a.watch), "the sessions");
    refused(api.get("/api/v1/stun", &a.watch), "the STUN servers");
    let session = w.live_status(&a).session_id;
    let issue =
        api.post(&format!("/api/v1/sessions/{session}/config"), &a.watch, json!({"public_key": key_b64(5)}));
    refused(issue, "configuration issuance");

    // Revoked by its client: spent.
    assert_eq!(api.call("DELETE", &format!("/api/v1/configs/{}", b.id), Some(&b.watch), None).status, 204);
    refused(w.status(b.id, &b.watch), "a revoked configuration's token");
    refused(api.call("DELETE", &format!("/api/v1/configs/{}", b.id), Some(&b.watch), None), "revoking twice");

    // Expired with its configuration.
    api.clock.advance(a.config.expires_ms - common::START_MS);
    let expired = w.status(a.id, &a.watch);
    assert!(expired.body["detail"].as_str().unwrap().contains("expired"), "{expired:?}");
    refused(expired, "an expired configuration's token");

    // Every refusal with a token is in the audit log, none with a secret.
    let refusals: Vec<_> =
        api.audit().into_iter().filter(|e| e.event.action == "config.token" && !e.event.allowed).collect();
    assert!(refusals.len() >= 12, "{refusals:#?}");
    for entry in &refusals {
        let detail = entry.event.detail.clone().unwrap_or_default();
        assert!(!detail.contains(&a.watch) && !detail.contains(&b.watch), "{detail}");
    }
}

#[test]
fn events_report_changes_and_the_customers_switch_off() {
    let w = world();
    let api = &w.api;
    let mut gw = w.gateway(true);
    w.run(gw.event(GatewayEvent::Candidates { endpoints: addrs(&["198.51.100.20:51820"]) }));
    let id = w.started_session();
    let issued = w.issue(id, 1, json!(["192.0.2.50:40100"]));
    let events = api.events(&format!("/api/v1/configs/{}/events", issued.id), &issued.watch).unwrap();

    // At once: the current status.
    let first = next_status(&events);
    assert_eq!(
        (first.state, first.gateway_endpoints.clone()),
        (ConfigState::Live, vec!["198.51.100.20:51820".into()])
    );
    // The gateway's candidates change.
    w.run(gw.event(GatewayEvent::Candidates { endpoints: addrs(&["198.51.100.30:51820"]) }));
    let moved = next_status(&events);
    assert_eq!(
        (moved.state, moved.gateway_endpoints),
        (ConfigState::Live, vec!["198.51.100.30:51820".into()])
    );
    // The customer switches off: the session ends, the stream says so and ends.
    w.run(gw.event(GatewayEvent::SwitchChanged { on: false }));
    let ended = next_status(&events);
    assert_eq!(
        (ended.state, ended.end_reason.clone(), ended.session_state),
        (ConfigState::Ended, Some(EndReason::Customer { session_only: false }), State::Ended)
    );
    assert!(ended.gateway_endpoints.is_empty(), "no candidates for an ended configuration");
    stream_ends(&events);

    // A client asking after the end still learns why; changing it is refused.
    assert_eq!(w.live_status(&issued), ended);
    let late = api.call(
        "PUT",
        &format!("/api/v1/configs/{}/candidates", issued.id),
        Some(&issued.watch),
        Some(json!({"candidates": ["192.0.2.51:40100"]})),
    );
    assert_eq!((late.status, late.problem()), (409, "config-not-live"), "{late:?}");
    assert!(late.body["detail"].as_str().unwrap().contains("ended by the customer"), "{late:?}");
    let late = api.call("DELETE", &format!("/api/v1/configs/{}", issued.id), Some(&issued.watch), None);
    assert_eq!(late.status, 409, "{late:?}");
    // A stream opened after the end sends the final status and ends.
    let after = api.events(&format!("/api/v1/configs/{}/events", issued.id), &issued.watch).unwrap();
    assert_eq!(next_status(&after).end_reason, Some(EndReason::Customer { session_only: false }));
    stream_ends(&after);
}

#[test]
fn events_report_a_replacement_and_the_expiry() {
    let w = world();
    let api = &w.api;
    let _gw = w.gateway(true);
    let id = w.started_session();
    let first = w.issue(id, 1, json!([]));
    let events = api.events(&format!("/api/v1/configs/{}/events", first.id), &first.watch).unwrap();
    assert_eq!(next_status(&events).state, ConfigState::Live);

    // The same technician asks again: the first configuration is revoked.
    let second = w.issue(id, 2, json!([]));
    let revoked = next_status(&events);
    assert_eq!((revoked.state, revoked.session_state), (ConfigState::Revoked, State::Active));
    assert!(revoked.detail.as_deref().unwrap().contains("replaced"), "{revoked:?}");
    stream_ends(&events);
    assert_eq!(w.live_status(&first).state, ConfigState::Revoked, "still readable: its client must learn it");

    // The session runs out: the stream says expired, by the duration.
    let events = api.events(&format!("/api/v1/configs/{}/events", second.id), &second.watch).unwrap();
    assert_eq!(next_status(&events).state, ConfigState::Live);
    api.clock.advance(3_600_000);
    assert_eq!(api.state.tick().unwrap(), 1);
    let expired = next_status(&events);
    assert_eq!(
        (expired.state, expired.end_reason, expired.session_state),
        (ConfigState::Expired, Some(EndReason::Duration), State::Expired)
    );
    stream_ends(&events);
    assert_eq!(w.status(second.id, &second.watch).status, 401, "an expired configuration's token");
}

#[test]
fn an_admin_ending_the_session_ends_the_stream_and_so_does_a_shutdown() {
    let w = world();
    let api = &w.api;
    let _gw = w.gateway(true);
    let id = w.started_session();
    let issued = w.issue(id, 1, json!([]));
    let events = api.events(&format!("/api/v1/configs/{}/events", issued.id), &issued.watch).unwrap();
    assert_eq!(next_status(&events).state, ConfigState::Live);
    assert_eq!(api.post(&format!("/api/v1/sessions/{id}/end"), &w.admin, json!({})).status, 200);
    let ended = next_status(&events);
    assert_eq!(ended.end_reason, Some(EndReason::User { name: "root".into() }));
    stream_ends(&events);

    // A shutting-down server ends every stream, so that its graceful
    // shutdown does not wait for them.
    let id = w.started_session();
    let issued = w.issue(id, 1, json!([]));
    let events = api.events(&format!("/api/v1/configs/{}/events", issued.id), &issued.watch).unwrap();
    assert_eq!(next_status(&events).state, ConfigState::Live);
    api.state.hub.close_streams();
    stream_ends(&events);
}

#[test]
fn disconnect_revokes_and_the_gateway_and_relay_drop_the_peer() {
    let w = world();
    let api = &w.api;
    let relay = w.relay();
    let mut gw = w.gateway(true);
    let id = w.started_session();
    let issued = w.issue(id, 1, json!(["192.0.2.50:40100"]));
    assert!(issued.config.relay.is_some(), "a relay allocation");
    w.run(gw.until(|s| s.sessions.first().is_some_and(|s| s.peers.iter().any(|p| p.relay.is_some()))));
    let events = api.events(&format!("/api/v1/configs/{}/events", issued.id), &issued.watch).unwrap();
    assert_eq!(next_status(&events).state, ConfigState::Live);

    let path = format!("/api/v1/configs/{}", issued.id);
    let revoked = api.call("DELETE", &path, Some(&issued.watch), None);
    assert_eq!(revoked.status, 204, "{revoked:?}");
    let state = w.run(gw.until(|s| s.sessions.first().is_some_and(|s| s.peers.is_empty())));
    assert_eq!(state.sessions.len(), 1, "the session goes on");
    w.run(async {
        for _ in 0..500 {
            if relay.latest().is_some_and(|a| a.allocations.is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the relay kept the allocation");
    });
    let last = next_status(&events);
    assert_eq!(last.state, ConfigState::Revoked);
    assert!(last.detail.as_deref().unwrap().contains("by its client"), "{last:?}");
    stream_ends(&events);

    assert_eq!(w.status(issued.id, &issued.watch).status, 401, "the token is spent");
    let session: SessionView =
        serde_json::from_value(api.get(&format!("/api/v1/sessions/{id}"), &w.tech).body).unwrap();
    assert_eq!(session.state, State::Active);
    assert!(w.actions().contains(&"tech config.revoke true".to_string()), "{:#?}", w.actions());
    // A new configuration works as before.
    let again = w.issue(id, 2, json!([]));
    assert_eq!(w.live_status(&again).state, ConfigState::Live);
}

#[test]
fn bad_candidates_are_problems_that_name_the_field() {
    let w = world();
    let api = &w.api;
    let _gw = w.gateway(true);
    let id = w.started_session();
    let problem = |reply: &Reply| {
        assert_eq!(reply.content_type, "application/problem+json", "{reply:?}");
        reply.body["detail"].as_str().unwrap().to_string()
    };
    for (candidates, names) in [
        (json!(["192.0.2.1:5", "0.0.0.0:5"]), "`candidates[1]`"),
        (json!(["224.0.0.1:5"]), "`candidates[0]`"),
        (json!(["255.255.255.255:5"]), "`candidates[0]`"),
        (json!(["127.0.0.1:5"]), "`candidates[0]`"),
        (json!(["192.0.2.1:0"]), "`candidates[0]`"),
        (json!(["192.0.2.1"]), "`candidates[0]`"),
        (json!((1..=17).map(|i| format!("192.0.2.{i}:1")).collect::<Vec<_>>()), "`candidates`"),
    ] {
        let reply = w.request_config(id, 1, candidates.clone());
        assert_eq!(reply.status, 400, "{candidates}: {reply:?}");
        assert!(problem(&reply).contains(names), "{candidates}: {reply:?}");
    }
    let wrong_type = w.request_config(id, 1, json!([5]));
    assert_eq!(wrong_type.status, 422, "{wrong_type:?}");
    assert!(problem(&wrong_type).contains("candidates"), "{wrong_type:?}");
    // Nothing was issued by any of them.
    let session = api.get(&format!("/api/v1/sessions/{id}"), &w.admin);
    assert_eq!(session.body["configs"], json!([]));

    let issued = w.issue(id, 1, json!([]));
    let put = |body: Value| {
        api.call("PUT", &format!("/api/v1/configs/{}/candidates", issued.id), Some(&issued.watch), Some(body))
    };
    let bad = put(json!({"candidates": ["192.0.2.1:5", "[::]:5"]}));
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(problem(&bad).contains("`candidates[1]`"), "{bad:?}");
    let unknown = put(json!({"candidates": [], "extra": 1}));
    assert_eq!(unknown.status, 422, "{unknown:?}");
    assert_eq!(put(json!({"candidates": []})).status, 200, "no candidates is fine");
}

#[test]
fn only_released_users_get_configurations_and_only_their_client_watches_them() {
    let w = world();
    let api = &w.api;
    let _gw = w.gateway(true);
    let id = w.started_session();
    // Not released to `other`: refused and audited.
    let refused =
        api.post(&format!("/api/v1/sessions/{id}/config"), &w.other, json!({"public_key": key_b64(3)}));
    assert_eq!((refused.status, refused.problem()), (403, "forbidden"), "{refused:?}");
    assert!(w.actions().contains(&"other session.config false".to_string()));
    // The technician's configuration is theirs alone: another user's token,
    // even an Administrator's, opens nothing under it.
    let issued = w.issue(id, 1, json!([]));
    for token in [&w.other, &w.admin] {
        assert_eq!(w.status(issued.id, token).status, 401);
        assert_eq!(
            api.call("DELETE", &format!("/api/v1/configs/{}", issued.id), Some(token), None).status,
            401
        );
    }
    assert_eq!(w.live_status(&issued).state, ConfigState::Live);
    // After the session's end, a configuration is refused.
    assert_eq!(api.post(&format!("/api/v1/sessions/{id}/end"), &w.tech, json!({})).status, 200);
    let late = w.request_config(id, 2, json!([]));
    assert_eq!((late.status, late.problem()), (409, "session-not-active"));
    // The sessions list reads as the client's view of a session.
    let listed: Vec<SessionView> = serde_json::from_value(api.get("/api/v1/sessions", &w.tech).body).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].state, listed[0].end_reason.clone()),
        (State::Ended, Some(EndReason::User { name: "tech".into() }))
    );
    assert_eq!(listed[0].targets, ["plc"]);
}
