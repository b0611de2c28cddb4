//! Two cloud replicas on one PostgreSQL database, each a real HTTP server
//! with its own hub: a session made on one reaches a gateway connected to
//! the other, an end on the other stops it, a relay connected to one
//! serves a configuration issued by the other, expiry happens once, the
//! audit chain is one chain, and refresh tokens and lockouts hold across
//! both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use std::time::{Duration, Instant};

use common::{
    Api, START_MS,
    peers::{RELAY_UDP, TestGateway, TestRelay},
    pg,
};
use ferry_cloud::{audit, clock::ManualClock, rights::Role};
use serde_json::json;

struct Pair {
    a: Api,
    b: Api,
    clock: ManualClock,
    admin: String,
    tech: String,
    gateway_id: u64,
    key: ed25519_dalek::SigningKey,
    /// The test peers' own runtime.
    peers: tokio::runtime::Runtime,
}

fn pair() -> Pair {
    let database = pg::fresh_database();
    let clock = ManualClock::new(START_MS);
    let a = Api::over_storage(tempfile::tempdir().unwrap(), Some(database.clone()), clock.clone(), |b| b);
    let b = Api::over_storage(tempfile::tempdir().unwrap(), Some(database), clock.clone(), |b| b);
    a.user("root", Role::Administrator);
    a.user("tech", Role::RemoteConnectUser);
    let (admin, _) = a.login("root");
    let (tech, _) = b.login("tech");
    let (gateway_id, key) = TestGateway::create_and_enrol(&a, &admin, "press-1", 1);
    let peers = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    Pair { a, b, clock, admin, tech, gateway_id, key, peers }
}

/// Polls `check` until it holds (bounded).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Pair {
    /// A session on the gateway released to the technician.
    fn session(&self, api: &Api, duration_s: u64) -> u64 {
        let tech_id = self
            .a
            .get("/api/v1/users", &self.admin)
            .body
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "tech")
            .unwrap()["id"]
            .as_u64()
            .unwrap();
        let made = api.post(
            "/api/v1/sessions",
            &self.admin,
            json!({"name": "fix the plc", "gateway_id": self.gateway_id, "targets": ["plc"],
                   "released_to": [tech_id], "max_duration_s": duration_s}),
        );
        assert_eq!(made.status, 201, "{made:?}");
        made.body["id"].as_u64().unwrap()
    }

    fn chain_verifies(&self) -> u64 {
        let intact = audit::verify(&self.a.store).unwrap().unwrap_or_else(|b| panic!("broken: {b:?}"));
        assert_eq!(audit::verify(&self.b.store).unwrap().unwrap(), intact);
        intact.entries
    }
}

#[test]
fn a_session_made_on_one_replica_reaches_a_gateway_on_the_other_and_an_end_there_stops_it() {
    let p = pair();
    // The gateway is connected to B only; A sees it online.
    let mut gateway = p.peers.block_on(TestGateway::connect(p.b.addr, p.gateway_id, &p.key, true)).unwrap();
    eventually("A sees the gateway online", || {
        p.a.get(&format!("/api/v1/gateways/{}", p.gateway_id), &p.admin).body["last_seen"]["online"] == true
    });

    // A relay connected to A, for the configuration issued on B.
    let relay = p.a.post("/api/v1/relays", &p.admin, json!({"name": "relay-1"}));
    assert_eq!(relay.status, 201, "{relay:?}");
    let relay_id = relay.body["relay"]["id"].as_u64().unwrap();
    let relay = p
        .peers
        .block_on(TestRelay::start(p.a.addr, relay_id, relay.body["token"].as_str().unwrap()))
        .unwrap();
    // B learns of the relay (and the gateway of its STUN server) from A.
    eventually("B sees the relay", || {
        let relays = p.b.get("/api/v1/relays", &p.admin).body;
        relays.as_array().unwrap().iter().any(|r| r["id"] == relay_id && r["health"]["online"] == true)
    });

    let id = p.session(&p.a, 3600);
    let started = p.a.post(&format!("/api/v1/sessions/{id}/start"), &p.tech, json!({}));
    assert_eq!(started.status, 200, "{started:?}");
    let state = p.peers.block_on(gateway.until(|s| s.sessions.iter().any(|s| s.session_id.0 == id)));
    assert!(state.sessions[0].peers.is_empty());

    // A configuration issued on B: the relay on A allocates, B waits for
    // its answer, and the gateway on B gets the peer with the relay.
    let key = "kLpQrD2UYdT0f2kM2g0tVt3bqR3XbUsbJpCMvKgXz3E=";
    let config = p.b.post(&format!("/api/v1/sessions/{id}/config"), &p.tech, json!({"public_key": key}));
    assert_eq!(config.status, 200, "{config:?}");
    let udp: std::net::SocketAddr = RELAY_UDP.parse().unwrap();
    let client_side =
        config.body["relay"]["udp"].as_str().unwrap_or_else(|| panic!("no relay endpoint: {config:?}"));
    assert_eq!(client_side.parse::<std::net::SocketAddr>().unwrap().ip(), udp.ip());
    // The peer comes first, its relay binding once the relay answered.
    let state = p
        .peers
        .block_on(gateway.until(|s| s.sessions.iter().any(|s| s.peers.iter().any(|p| p.relay.is_some()))));
    let peer = &state.sessions[0].peers[0];
    assert_eq!(peer.relay.as_ref().unwrap().relay_id.0, relay_id);
    assert!(relay.latest().unwrap().allocations.iter().any(|a| a.session_id.0 == id));

    // Ended on B (where nothing of it was made): the gateway drops it at
    // once, and the relay on A its allocation.
    let ended = p.b.post(&format!("/api/v1/sessions/{id}/end"), &p.admin, json!({}));
    assert_eq!(ended.status, 200, "{ended:?}");
    p.peers.block_on(gateway.until(|s| s.sessions.is_empty()));
    eventually("the relay drops the allocation", || relay.latest().is_some_and(|l| l.allocations.is_empty()));

    // One chain, with entries from both replicas.
    let entries = audit::entries(&p.a.store, 0, usize::MAX).unwrap();
    let action = |a: &str| entries.iter().filter(|e| e.event.action == a).count();
    assert_eq!((action("session.create"), action("session.config"), action("session.end")), (1, 1, 1));
    assert!(p.chain_verifies() > 5);
}

#[test]
fn expiry_happens_once_even_when_both_replicas_tick_together() {
    let p = pair();
    let _gateway = p.peers.block_on(TestGateway::connect(p.a.addr, p.gateway_id, &p.key, true)).unwrap();
    let ids: Vec<u64> = (0..6).map(|_| p.session(&p.b, 60)).collect();
    for id in &ids {
        let started = p.b.post(&format!("/api/v1/sessions/{id}/start"), &p.tech, json!({}));
        assert_eq!(started.status, 200, "{started:?}");
    }
    p.clock.advance(61_000);
    let (a, b) = (p.a.state.clone(), p.b.state.clone());
    let expired = std::thread::scope(|scope| {
        let one = scope.spawn(move || a.tick().unwrap());
        let two = scope.spawn(move || b.tick().unwrap());
        one.join().unwrap() + two.join().unwrap()
    });
    assert_eq!(expired, ids.len(), "each session expired by exactly one replica");
    let entries = audit::entries(&p.a.store, 0, usize::MAX).unwrap();
    for id in &ids {
        let expiries = entries
            .iter()
            .filter(|e| e.event.action == "session.expire" && e.event.session == Some(id.to_string()));
        assert_eq!(expiries.count(), 1, "session {id}");
    }
    // Nothing left to do for either.
    assert_eq!(p.a.state.tick().unwrap() + p.b.state.tick().unwrap(), 0);
    p.chain_verifies();
}

#[test]
fn a_refresh_token_spent_on_one_replica_is_refused_on_the_other_and_lockouts_hold_on_both() {
    let p = pair();
    let login = p.a.call(
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"name": "tech", "password": common::PASSWORD})),
    );
    assert_eq!(login.status, 200, "{login:?}");
    let first = login.body["refresh_token"].as_str().unwrap().to_string();
    let refresh = |api: &Api, token: &str| {
        api.call("POST", "/api/v1/auth/refresh", None, Some(json!({"refresh_token": token})))
    };
    let rotated = refresh(&p.a, &first);
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let second = rotated.body["refresh_token"].as_str().unwrap().to_string();
    // The spent one, on the other replica: refused, and the family with it.
    let reused = refresh(&p.b, &first);
    assert_eq!(reused.status, 401, "{reused:?}");
    assert_eq!(refresh(&p.b, &second).status, 401, "the whole login is revoked");
    assert_eq!(refresh(&p.a, &second).status, 401);

    // Wrong passwords spread over both replicas lock the account on both.
    let attempt = |api: &Api, password: &str| {
        api.call("POST", "/api/v1/auth/login", None, Some(json!({"name": "tech", "password": password})))
    };
    for i in 0..10 {
        let api = if i % 2 == 0 { &p.a } else { &p.b };
        let reply = attempt(api, "wrong password");
        assert!(matches!(reply.status, 401 | 429 | 423), "{reply:?}");
        // Past the slowdown, each next attempt may come.
        p.clock.advance(61_000);
    }
    for api in [&p.a, &p.b] {
        let locked = attempt(api, common::PASSWORD);
        assert_ne!(locked.status, 200, "the right password is refused while locked: {locked:?}");
        assert_eq!(locked.problem(), "account-locked", "{locked:?}");
    }
    p.chain_verifies();
}
