//! Gateways, relays and the session life cycle over real HTTP, with a test
//! gateway and a test relay on real WebSockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod common;

use common::{
    Api,
    peers::{RELAY_PIN, TestGateway, TestRelay, new_key},
};
use ferry_cloud::rights::Role;
use ferry_control::{
    ErrorCode, SessionId,
    client::ClientError,
    gateway::{GatewayEvent, ToGateway},
};
use serde_json::{Value, json};

struct World {
    api: Api,
    admin: String,
    tech: String,
    tech_id: u64,
    gateway_id: u64,
    key: ed25519_dalek::SigningKey,
}

fn world() -> World {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let tech_id = api.user("tech", Role::RemoteConnectUser);
    let (admin, _) = api.login("root");
    let (tech, _) = api.login("tech");
    let (gateway_id, key) = TestGateway::create_and_enrol(&api, &admin, "press-4", 7);
    World { api, admin, tech, tech_id, gateway_id, key }
}

impl World {
    fn session(&self, approval_required: bool) -> u64 {
        let made = self.api.post(
            "/api/v1/sessions",
            &self.admin,
            json!({"name": "fix the plc", "gateway_id": self.gateway_id, "targets": ["plc", "hmi"],
                   "released_to": [self.tech_id], "max_duration_s": 3600, "approval_required": approval_required}),
        );
        assert_eq!(made.status, 201, "{made:?}");
        assert_eq!(made.body["state"], "prepared");
        made.body["id"].as_u64().unwrap()
    }

    fn gateway(&self, switch_on: bool) -> TestGateway {
        self.api
            .runtime()
            .block_on(TestGateway::connect(self.api.addr, self.gateway_id, &self.key, switch_on))
            .unwrap()
    }

    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.api.runtime().block_on(f)
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

#[test]
fn the_whole_life_cycle_with_a_gateway_and_a_relay() {
    let w = world();
    let api = &w.api;
    // A relay registers and connects.
    let relay = api.post("/api/v1/relays", &w.admin, json!({"name": "relay-1"}));
    assert_eq!(relay.status, 201, "{relay:?}");
    let relay_id = relay.body["relay"]["id"].as_u64().unwrap();
    let test_relay =
        w.run(TestRelay::start(api.addr, relay_id, relay.body["token"].as_str().unwrap())).unwrap();

    // The gateway connects with its switch off (the default after install).
    let mut gw = w.gateway(false);
    assert!(gw.state.sessions.is_empty());
    let listed = api.get(&format!("/api/v1/gateways/{}", w.gateway_id), &w.admin);
    assert_eq!(
        (listed.body["last_seen"]["online"].clone(), listed.body["last_seen"]["switch_on"].clone()),
        (json!(true), json!(false))
    );

    let id = w.session(false);
    let refused = api.post(&format!("/api/v1/sessions/{id}/start"), &w.tech, json!({}));
    assert_eq!((refused.status, refused.problem()), (409, "switch-off"), "{refused:?}");
    assert!(refused.body["detail"].as_str().unwrap().contains("switched off"));

    // The customer switches on; the gateway reports its public endpoint
    // (STUN); the technician starts.
    w.run(gw.event(GatewayEvent::SwitchChanged { on: true }));
    w.run(gw.event(GatewayEvent::Candidates { endpoints: vec!["198.51.100.20:51820".parse().unwrap()] }));
    let started = api.post(&format!("/api/v1/sessions/{id}/start"), &w.tech, json!({}));
    assert_eq!(started.status, 200, "{started:?}");
    assert_eq!(started.body["state"], "active");
    let state = w.run(gw.until(|s| s.sessions.len() == 1));
    let pushed = &state.sessions[0];
    assert_eq!(pushed.session_id, SessionId(id));
    assert!(pushed.approved && pushed.peers.is_empty());
    let targets: Vec<String> =
        pushed.targets.iter().map(|t| format!("{} {} {}", t.name, t.address, t.proxy_address)).collect();
    assert_eq!(targets, ["plc 192.168.0.10 100.96.0.100", "hmi 192.168.0.11 100.96.0.101"]);

    // The technician's client posts its public key and gets a configuration.
    let config =
        api.post(&format!("/api/v1/sessions/{id}/config"), &w.tech, json!({"public_key": key_b64(1)}));
    assert_eq!(config.status, 200, "{config:?}");
    let body = &config.body;
    assert_eq!(body["address"], "100.96.0.2/32");
    assert_eq!(body["peer_public_key"], gw.wg.to_string());
    assert_eq!(
        body["allowed_ips"],
        json!(["100.96.0.100/32", "100.96.0.101/32"]),
        "split tunnel: the targets only"
    );
    assert_eq!(body["relay"]["websocket_url"], "wss://relay.example.net/ws");
    assert_eq!(body["relay"]["websocket_pin"], RELAY_PIN, "the relay's pin, for ws-bridge --pin");
    assert_eq!(body["endpoints"], json!(["198.51.100.20:51820"]), "direct candidates");
    let client_udp = body["relay"]["udp"].as_str().unwrap().to_string();
    assert!(client_udp.starts_with("203.0.113.7:"), "{body}");
    // The gateway learns the peer and its relay binding; the relay its allocation.
    let state =
        w.run(gw.until(|s| s.sessions.first().is_some_and(|s| s.peers.iter().any(|p| p.relay.is_some()))));
    let peer = &state.sessions[0].peers[0];
    assert_eq!(
        (peer.public_key.to_string(), peer.tunnel_address.to_string()),
        (key_b64(1), "100.96.0.2".into())
    );
    assert_eq!(peer.relay.as_ref().unwrap().websocket_pin.as_deref(), Some(RELAY_PIN));
    let allocation = test_relay.latest().unwrap();
    assert_eq!(allocation.allocations.len(), 1);
    assert_eq!(allocation.allocations[0].client_key.to_string(), key_b64(1));
    assert_eq!(allocation.allocations[0].gateway_key, gw.wg);

    // A wg-quick file for a stock client; it replaces the previous configuration.
    let file = api.post(
        &format!("/api/v1/sessions/{id}/config/wg-quick"),
        &w.tech,
        json!({"public_key": key_b64(2)}),
    );
    assert_eq!(file.status, 200, "{file:?}");
    assert!(file.text.contains("PrivateKey = __FERRY_PRIVATE_KEY__"), "{}", file.text);
    assert!(file.text.contains("AllowedIPs = 100.96.0.100/32, 100.96.0.101/32"));
    assert!(file.text.contains(&format!("PublicKey = {}", gw.wg)));
    assert!(file.text.contains("Endpoint = 203.0.113.7:"));
    let state =
        w.run(gw.until(|s| s.sessions[0].peers.iter().all(|p| p.public_key.to_string() == key_b64(2))));
    assert_eq!(state.sessions[0].peers.len(), 1, "the previous configuration is revoked");

    // Bytes from the gateway are recorded; ending is pushed at once.
    w.run(gw.event(GatewayEvent::Bytes {
        session_id: SessionId(id),
        target: Some("plc".into()),
        rx: 1000,
        tx: 2000,
    }));
    let ended = api.post(&format!("/api/v1/sessions/{id}/end"), &w.tech, json!({}));
    assert_eq!(ended.status, 200, "{ended:?}");
    assert_eq!(
        (ended.body["state"].clone(), ended.body["end_reason"]["by"].clone()),
        (json!("ended"), json!("user"))
    );
    assert_eq!((ended.body["bytes_rx"].clone(), ended.body["bytes_tx"].clone()), (json!(1000), json!(2000)));
    w.run(gw.until(|s| s.sessions.is_empty()));
    w.run(async {
        for _ in 0..100 {
            if test_relay.latest().is_some_and(|a| a.allocations.is_empty()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the relay did not get the removal");
    });
    // Used after its end: no configuration.
    let late = api.post(&format!("/api/v1/sessions/{id}/config"), &w.tech, json!({"public_key": key_b64(3)}));
    assert_eq!((late.status, late.problem()), (409, "session-not-active"));

    let log = w.actions();
    for step in [
        "root gateway.create true",
        "gateway:1 gateway.enrol true",
        "root relay.create true",
        "root session.create true",
        "tech session.start false",
        "tech session.start true",
        "tech session.config true",
        "tech session.end true",
        "tech session.config false",
    ] {
        let step = step.replace("gateway:1", &format!("gateway:{}", w.gateway_id));
        assert!(log.contains(&step), "missing `{step}` in {log:#?}");
    }
    assert!(log.iter().any(|l| l.contains("gateway.switch true")));
    assert!(
        api.audit()
            .iter()
            .any(|e| e.event.action == "session.bytes"
                && e.event.detail.as_deref().unwrap().contains("rx 1000"))
    );
    let intact = ferry_cloud::audit::verify(&api.store).unwrap().expect("the chain verifies");
    assert_eq!(intact.entries, api.audit().len() as u64);
}

#[test]
fn approval_denial_switch_off_and_expiry() {
    let w = world();
    let api = &w.api;
    let mut gw = w.gateway(true);
    // Approval required: the gateway sees it waiting, without keys.
    let id = w.session(true);
    let started = api.post(&format!("/api/v1/sessions/{id}/start"), &w.admin, json!({}));
    assert_eq!(started.body["state"], "waiting_for_approval", "{started:?}");
    let state = w.run(gw.until(|s| s.sessions.len() == 1));
    assert!(!state.sessions[0].approved);
    let early =
        api.post(&format!("/api/v1/sessions/{id}/config"), &w.tech, json!({"public_key": key_b64(1)}));
    assert_eq!(early.status, 409, "no configuration before the approval");
    w.run(gw.event(GatewayEvent::Approved { session_id: SessionId(id) }));
    assert_eq!(api.get(&format!("/api/v1/sessions/{id}"), &w.tech).body["state"], "active");
    w.run(gw.until(|s| s.sessions.first().is_some_and(|s| s.approved)));

    // The customer switches off: every session ends, by the customer.
    w.run(gw.event(GatewayEvent::SwitchChanged { on: false }));
    let session = api.get(&format!("/api/v1/sessions/{id}"), &w.tech);
    assert_eq!(
        (session.body["state"].clone(), session.body["end_reason"]["by"].clone()),
        (json!("ended"), json!("customer"))
    );
    w.run(gw.until(|s| s.sessions.is_empty()));
    // Only the customer can switch on again.
    let again = api.post(&format!("/api/v1/sessions/{id}/start"), &w.admin, json!({}));
    assert_eq!(again.problem(), "switch-off");

    // Denial.
    w.run(gw.event(GatewayEvent::SwitchChanged { on: true }));
    api.post(&format!("/api/v1/sessions/{id}/start"), &w.admin, json!({}));
    w.run(gw.event(GatewayEvent::Denied { session_id: SessionId(id) }));
    let denied = api.get(&format!("/api/v1/sessions/{id}"), &w.admin);
    assert_eq!(denied.body["end_reason"]["by"], "denied");

    // Expiry, driven by the clock: the session ends and the gateway hears it.
    let quick = w.session(false);
    api.call(
        "PATCH",
        &format!("/api/v1/sessions/{quick}"),
        Some(&w.admin),
        Some(json!({"max_duration_s": 60})),
    );
    assert_eq!(api.post(&format!("/api/v1/sessions/{quick}/start"), &w.tech, json!({})).status, 200);
    w.run(gw.until(|s| s.sessions.len() == 1));
    api.clock.advance(59_000);
    assert_eq!(api.state.tick().unwrap(), 0);
    api.clock.advance(1_000);
    let (admin, _) = api.login("root");
    assert_eq!(api.state.tick().unwrap(), 1);
    let expired = api.get(&format!("/api/v1/sessions/{quick}"), &admin);
    assert_eq!(
        (expired.body["state"].clone(), expired.body["end_reason"]["by"].clone()),
        (json!("expired"), json!("duration"))
    );
    w.run(gw.until(|s| s.sessions.is_empty()));
    assert!(w.actions().contains(&"system session.expire true".to_string()));
}

#[test]
fn a_reconnecting_gateway_gets_the_full_state_and_a_replaced_connection_is_told() {
    let w = world();
    let api = &w.api;
    let mut first = w.gateway(true);
    let a = w.session(false);
    let b = w.session(false);
    assert_eq!(api.post(&format!("/api/v1/sessions/{a}/start"), &w.admin, json!({})).status, 200);
    w.run(first.until(|s| s.sessions.len() == 1));
    let old_revision = first.state.revision;

    // A second connection of the same gateway takes over; the first is told.
    let second = w.gateway(true);
    match w.run(first.next()) {
        Some(ToGateway::Error(e)) => assert_eq!(e.code, ErrorCode::Replaced),
        other => panic!("expected a replaced error, got {other:?}"),
    }
    assert_eq!(second.state.sessions.len(), 1, "the full state on connect");
    assert!(second.state.revision > old_revision);
    drop(second);
    // While the gateway is away (once the cloud has seen it go), a session
    // ends and another starts...
    let gateway = format!("/api/v1/gateways/{}", w.gateway_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while api.get(&gateway, &w.admin).body["last_seen"]["online"] != json!(false) {
        assert!(std::time::Instant::now() < deadline, "the cloud did not notice the gateway leave");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(api.post(&format!("/api/v1/sessions/{a}/end"), &w.admin, json!({})).status, 200);
    let offline = api.post(&format!("/api/v1/sessions/{b}/start"), &w.admin, json!({}));
    assert_eq!(offline.problem(), "gateway-offline", "{offline:?}");
    // ...and the reconnect brings exactly the current state.
    let third = w.gateway(true);
    assert!(third.state.sessions.is_empty(), "{:?}", third.state);
    assert_eq!(api.post(&format!("/api/v1/sessions/{b}/start"), &w.admin, json!({})).status, 200);
    drop(third);
    let fourth = w.gateway(true);
    assert_eq!(fourth.state.sessions.iter().map(|s| s.session_id.0).collect::<Vec<_>>(), [b]);
}

#[test]
fn events_resent_after_a_reconnect_are_applied_once() {
    let w = world();
    let api = &w.api;
    let mut gw = w.gateway(true);
    let id = w.session(false);
    api.post(&format!("/api/v1/sessions/{id}/start"), &w.admin, json!({}));
    let bytes = GatewayEvent::Bytes { session_id: SessionId(id), target: None, rx: 10, tx: 20 };
    w.run(gw.send_event(1, bytes.clone()));
    drop(gw);
    let mut gw = w.gateway(true);
    // The gateway did not see the ack and sends event 1 again.
    w.run(gw.send_event(1, bytes));
    let session = api.get(&format!("/api/v1/sessions/{id}"), &w.admin);
    assert_eq!((session.body["bytes_rx"].clone(), session.body["bytes_tx"].clone()), (json!(10), json!(20)));
}

#[test]
fn impostors_are_refused_and_audited() {
    let w = world();
    let api = &w.api;
    // Another key claims the gateway's id.
    let wrong = w.run(TestGateway::connect(api.addr, w.gateway_id, &new_key(99), true));
    match wrong {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Unauthorized);
            assert!(message.contains("identity key"), "{message}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an impostor got in"),
    }
    // A gateway that never enrolled.
    let created = api.post("/api/v1/gateways", &w.admin, json!({"name": "new", "site": "x"}));
    let fresh = created.body["gateway"]["id"].as_u64().unwrap();
    assert!(matches!(
        w.run(TestGateway::connect(api.addr, fresh, &new_key(5), true)),
        Err(ClientError::Refused { .. })
    ));
    // An enrolment token works once.
    let token = created.body["enrolment"]["token"].as_str().unwrap();
    let enrol = |key: &ed25519_dalek::SigningKey| {
        api.call(
            "POST",
            "/api/v1/enrol",
            None,
            Some(json!({"token": token, "identity_key": hex::encode(key.verifying_key().to_bytes())})),
        )
    };
    assert_eq!(enrol(&new_key(5)).status, 200);
    let again = enrol(&new_key(6));
    assert_eq!((again.status, again.problem()), (401, "enrolment-refused"));
    // An expired enrolment token.
    let stale = api.post(&format!("/api/v1/gateways/{fresh}/enrolment-token"), &w.admin, json!({}));
    api.clock.advance(24 * 3600 * 1000);
    let token = stale.body["token"].as_str().unwrap();
    let expired = api.call(
        "POST",
        "/api/v1/enrol",
        None,
        Some(json!({"token": token, "identity_key": hex::encode(new_key(8).verifying_key().to_bytes())})),
    );
    assert!(expired.body["detail"].as_str().unwrap().contains("expired"), "{expired:?}");
    // A relay with a wrong token.
    let (admin, _) = api.login("root");
    let relay = api.post("/api/v1/relays", &admin, json!({"name": "relay-1"}));
    let relay_id = relay.body["relay"]["id"].as_u64().unwrap();
    let bad = w.run(TestRelay::start(api.addr, relay_id, "fyl.1.2.0000"));
    assert!(matches!(bad, Err(ClientError::Refused { code: ErrorCode::Unauthorized, .. })));
    let log = w.actions();
    assert!(log.iter().filter(|l| l.ends_with("gateway.connect false")).count() >= 2, "{log:#?}");
    assert!(log.iter().filter(|l| l.ends_with("gateway.enrol false")).count() >= 2);
    assert!(log.iter().any(|l| l.ends_with("relay.connect false")));
}

#[test]
fn disabling_a_user_ends_their_sessions_at_once() {
    let w = world();
    let api = &w.api;
    let mut gw = w.gateway(true);
    let id = w.session(false);
    assert_eq!(api.post(&format!("/api/v1/sessions/{id}/start"), &w.tech, json!({})).status, 200);
    assert_eq!(
        api.post(&format!("/api/v1/sessions/{id}/config"), &w.tech, json!({"public_key": key_b64(4)})).status,
        200
    );
    w.run(gw.until(|s| s.sessions.first().is_some_and(|s| !s.peers.is_empty())));
    let disabled = api.call(
        "PATCH",
        &format!("/api/v1/users/{}", w.tech_id),
        Some(&w.admin),
        Some(json!({"disabled": true})),
    );
    assert_eq!(disabled.status, 200, "{disabled:?}");
    let session = api.get(&format!("/api/v1/sessions/{id}"), &w.admin);
    assert_eq!(session.body["end_reason"], json!({"by": "user_disabled", "name": "tech"}));
    w.run(gw.until(|s| s.sessions.is_empty()));
    assert_eq!(api.get("/api/v1/me", &w.tech).status, 401);
}

/// `ferry_cloud_sessions_live` and `ferry_cloud_subnets_held` show what the
/// store holds at the scrape: a started session holds a tunnel subnet, an
/// ended one gives it back (the soak's leak check reads them).
#[test]
fn the_live_sessions_and_held_subnets_gauges_follow_a_session() {
    let w = world();
    let api = &w.api;
    let _gw = w.gateway(true);
    let gauges = || {
        let metrics = api.call("GET", "/metrics", None, None).text;
        let value = |name: &str| {
            metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<i64>().ok())
        };
        (value("ferry_cloud_sessions_live"), value("ferry_cloud_subnets_held"))
    };
    assert_eq!(gauges(), (Some(0), Some(0)));
    let id = w.session(false);
    assert_eq!(api.post(&format!("/api/v1/sessions/{id}/start"), &w.tech, json!({})).status, 200);
    assert_eq!(gauges(), (Some(1), Some(1)));
    assert_eq!(api.post(&format!("/api/v1/sessions/{id}/end"), &w.admin, json!({})).status, 200);
    assert_eq!(gauges(), (Some(0), Some(0)));
}

/// The brief's rights table, walked role by action over HTTP: every cell
/// either succeeds or is refused with 403 (and the refusal is audited).
#[test]
fn the_rights_matrix_over_http() {
    let w = world();
    let api = &w.api;
    let _gw = w.gateway(true);
    api.user("rcadmin", Role::RemoteConnectAdministrator);
    let other_id = api.user("other", Role::RemoteConnectUser);
    let (rcadmin, _) = api.login("rcadmin");
    let (other, _) = api.login("other");
    let gw = w.gateway_id;

    // (role label, token, can add gateways, can manage users, can create
    // sessions, can add devices, own: start/end/view, others: start/end/view)
    type Row<'a> = (&'a str, &'a str, bool, bool, bool, bool, bool, bool);
    let rows: [Row; 3] = [
        ("Administrator", &w.admin, true, true, true, true, true, true),
        ("remoteConnect Administrator", &rcadmin, false, false, true, true, true, true),
        ("remoteConnect User", &w.tech, false, false, false, false, true, false),
    ];
    let mut names = 0;
    for (role, token, add_gateway, manage_users, create, add_devices, own, others) in rows {
        let check = |what: &str, reply: common::Reply, allowed: bool| {
            if allowed {
                assert!(reply.status < 300, "{role} {what}: {reply:?}");
            } else {
                assert_eq!(reply.status, 403, "{role} {what}: {reply:?}");
                assert_eq!(reply.content_type, "application/problem+json");
            }
        };
        names += 1;
        check(
            "add gateway",
            api.post("/api/v1/gateways", token, json!({"name": format!("g{names}"), "site": "s"})),
            add_gateway,
        );
        check(
            "add user",
            api.post(
                "/api/v1/users",
                token,
                json!({"name": format!("u{names}"), "role": "remote_connect_user"}),
            ),
            manage_users,
        );
        check(
            "assign rights",
            api.call(
                "PATCH",
                &format!("/api/v1/users/{other_id}"),
                Some(token),
                Some(json!({"role": "remote_connect_user"})),
            ),
            manage_users,
        );
        check(
            "create session",
            api.post(
                "/api/v1/sessions",
                token,
                json!({"name": "m", "gateway_id": gw, "targets": ["plc"], "max_duration_s": 600}),
            ),
            create,
        );
        // Sessions prepared by the Administrator: one released to the tech
        // ("own" for the tech), one not.
        let own_session = w.session(false);
        let others_session = {
            let made = api.post(
                "/api/v1/sessions",
                &w.admin,
                json!({"name": "theirs", "gateway_id": gw, "targets": ["plc"], "released_to": [other_id], "max_duration_s": 600}),
            );
            made.body["id"].as_u64().unwrap()
        };
        check(
            "add devices",
            api.call(
                "PATCH",
                &format!("/api/v1/sessions/{own_session}"),
                Some(token),
                Some(json!({"add_targets": ["hmi"]})),
            ),
            add_devices,
        );
        check("view own", api.get(&format!("/api/v1/sessions/{own_session}"), token), own);
        check("view others", api.get(&format!("/api/v1/sessions/{others_session}"), token), others);
        check("start own", api.post(&format!("/api/v1/sessions/{own_session}/start"), token, json!({})), own);
        check(
            "start others",
            api.post(&format!("/api/v1/sessions/{others_session}/start"), token, json!({})),
            others,
        );
        if !others {
            // Started by its own user, so that ending is the only question.
            api.post(&format!("/api/v1/sessions/{others_session}/start"), &other, json!({}));
        }
        check("end own", api.post(&format!("/api/v1/sessions/{own_session}/end"), token, json!({})), own);
        check(
            "end others",
            api.post(&format!("/api/v1/sessions/{others_session}/end"), token, json!({})),
            others,
        );
        // Listing shows all sessions, or only the own ones.
        let listed: Vec<Value> = api.get("/api/v1/sessions", token).body.as_array().unwrap().clone();
        let all_own = listed.iter().all(|s| s["released_to"].as_array().unwrap().contains(&json!(w.tech_id)));
        assert_eq!(all_own, !others, "{role}: list");
    }
    let refusals = api.audit().into_iter().filter(|e| !e.event.allowed && e.event.actor == "tech").count();
    assert!(refusals >= 7, "every refused cell is audited ({refusals})");
}

/// Malformed openings are refused with a reason; malformed frames later
/// are dropped and counted, and the connection goes on.
#[test]
fn malformed_frames_are_refused_or_dropped_and_counted() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let w = world();
    let api = &w.api;
    let url = format!("ws://{}/api/v1/control/gateway", api.addr);
    let opening = |frame: &'static str| {
        let url = url.clone();
        w.run(async move {
            let mut ws = ferry_control::client::connect(&url, None).await.unwrap();
            let _server_hello = ws.next().await.unwrap().unwrap();
            ws.send(Message::Text(frame.into())).await.unwrap();
            match ws.next().await.unwrap().unwrap() {
                Message::Text(text) => text.to_string(),
                other => panic!("{other:?}"),
            }
        })
    };
    let version = opening(r#"{"v":2,"type":"gateway_hello"}"#);
    assert!(version.contains(r#""code":"version""#), "{version}");
    let garbage = opening("{not json");
    assert!(garbage.contains(r#""code":"malformed""#), "{garbage}");
    let wrong_first = opening(r#"{"v":1,"type":"applied","revision":1}"#);
    assert!(wrong_first.contains("must be gateway_hello"), "{wrong_first}");

    // After a good hello: junk is dropped, the next real event still works.
    let (key, id) = (w.key.clone(), w.gateway_id);
    w.run(async move {
        use ferry_control::{
            GatewayId, WgKey, codec,
            gateway::{Event, FromGateway, sign_gateway_hello},
        };
        let mut ws = ferry_control::client::connect(&url, None).await.unwrap();
        let Message::Text(first) = ws.next().await.unwrap().unwrap() else { panic!() };
        let Ok(ToGateway::ServerHello(hello)) = codec::decode::<ToGateway>(first.as_str()) else { panic!() };
        let signed =
            sign_gateway_hello(&key, &hello.challenge, GatewayId(id), "raw", true, WgKey([1; 32]), None);
        ws.send(Message::Text(codec::encode(&FromGateway::GatewayHello(signed)).into())).await.unwrap();
        let _welcome = ws.next().await.unwrap().unwrap();
        let _state = ws.next().await.unwrap().unwrap();
        ws.send(Message::Text("{\"v\":1,\"type\":\"event\",\"seq\":\"x\"}".into())).await.unwrap();
        ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
        let event = Event { seq: 1, time_ms: 0, event: GatewayEvent::SwitchChanged { on: true } };
        ws.send(Message::Text(codec::encode(&FromGateway::Event(event)).into())).await.unwrap();
        loop {
            let Message::Text(text) = ws.next().await.unwrap().unwrap() else { continue };
            if let Ok(ToGateway::EventAck(ack)) = codec::decode::<ToGateway>(text.as_str()) {
                assert_eq!(ack.seq, 1);
                break;
            }
        }
    });
    let metrics = api.call("GET", "/metrics", None, None).text;
    assert!(metrics.contains(r#"ferry_cloud_control_refused_total{channel="gateway"} 5"#), "{metrics}");
}

/// A gateway or a relay whose machine vanishes (power cut, cable pulled)
/// closes nothing: TCP alone would keep its channel, and the cloud would
/// show it online for good. The cloud closes a channel silent for a minute
/// (`PEER_SILENCE_LIMIT`); one that pings, as the daemons do every 10 s,
/// stays however long it is idle.
#[test]
fn a_gateway_and_a_relay_gone_silent_are_shown_offline_and_peers_that_ping_stay() {
    use std::time::{Duration, Instant};
    let w = world();
    let api = &w.api;
    let (pinging_id, pinging_key) = TestGateway::create_and_enrol(api, &w.admin, "press-5", 8);
    let relay = api.post("/api/v1/relays", &w.admin, json!({"name": "relay-silent"}));
    let silent_relay_id = relay.body["relay"]["id"].as_u64().unwrap();
    let _silent_relay = w
        .run(TestRelay::start_silent(api.addr, silent_relay_id, relay.body["token"].as_str().unwrap()))
        .unwrap();
    let relay = api.post("/api/v1/relays", &w.admin, json!({"name": "relay-pinging"}));
    let pinging_relay_id = relay.body["relay"]["id"].as_u64().unwrap();
    let _pinging_relay =
        w.run(TestRelay::start(api.addr, pinging_relay_id, relay.body["token"].as_str().unwrap())).unwrap();
    // Held open, never read from, never written to.
    let _silent = w.gateway(true);
    let mut pinging = w.run(TestGateway::connect(api.addr, pinging_id, &pinging_key, true)).unwrap();

    let online = |path: String, field: &str| api.get(&path, &w.admin).body[field]["online"] == json!(true);
    let silent_gateway = format!("/api/v1/gateways/{}", w.gateway_id);
    let pinging_gateway = format!("/api/v1/gateways/{pinging_id}");
    let relay_online = |id: u64| {
        let relays = api.get("/api/v1/relays", &w.admin).body;
        relays
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == json!(id) && r["health"]["online"] == json!(true))
    };
    assert!(online(silent_gateway.clone(), "last_seen") && online(pinging_gateway.clone(), "last_seen"));
    assert!(relay_online(silent_relay_id) && relay_online(pinging_relay_id));

    let start = Instant::now();
    let mut last_ping = Instant::now();
    while online(silent_gateway.clone(), "last_seen") || relay_online(silent_relay_id) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the silent peers are still online after 120 s (gateway {}, relay {})",
            online(silent_gateway.clone(), "last_seen"),
            relay_online(silent_relay_id)
        );
        if last_ping.elapsed() >= Duration::from_secs(10) {
            w.run(pinging.ping());
            last_ping = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(online(pinging_gateway, "last_seen"), "a gateway that pings stays online");
    assert!(relay_online(pinging_relay_id), "a relay that pings stays online");
    assert!(w.actions().iter().any(|l| l == &format!("gateway:{} gateway.disconnect true", w.gateway_id)));
    let metrics = api.call("GET", "/metrics", None, None).text;
    for channel in ["gateway", "relay"] {
        let line = format!("ferry_cloud_control_silent_total{{channel=\"{channel}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}
