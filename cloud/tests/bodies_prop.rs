//! Property test: arbitrary request bodies, and valid bodies with arbitrary
//! mutations, get a 2xx or a problem document that names the problem;
//! never a 500, never a dropped connection.

mod common;

use common::Api;
use ferry_cloud::rights::Role;
use proptest::prelude::*;
use serde_json::{Value, json};

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("x".repeat(70))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("name".to_string()),
                    Just("role".to_string()),
                    Just("password".to_string()),
                    Just("targets".to_string()),
                    Just("gateway_id".to_string()),
                    Just("max_duration_s".to_string()),
                    Just("public_key".to_string()),
                    Just("scopes".to_string()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces one field of a valid body with an arbitrary value.
fn mutate(valid: Value, field: usize, with: Value) -> Value {
    let mut body = valid;
    if let Some(map) = body.as_object_mut() {
        let keys: Vec<String> = map.keys().cloned().collect();
        if !keys.is_empty() {
            map.insert(keys[field % keys.len()].clone(), with);
        }
    }
    body
}

fn check(reply: &common::Reply, what: &str) {
    assert!(reply.status < 500, "{what}: {reply:?}");
    if reply.status >= 400 {
        assert_eq!(reply.content_type, "application/problem+json", "{what}: {reply:?}");
        let detail = reply.body["detail"].as_str().unwrap_or("");
        assert!(!detail.is_empty(), "{what}: a problem names itself: {reply:?}");
    }
}

#[test]
fn bodies_never_break_the_server() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let (admin, _) = api.login("root");
    let gateway = api.post("/api/v1/gateways", &admin, json!({"name": "g", "site": "s", "targets": [
        {"name": "plc", "address": "192.168.0.10", "protocol": "tcp", "ports": [{"first": 502, "last": 502}]}]}));
    let gid = gateway.body["gateway"]["id"].as_u64().unwrap();
    let session = api.post(
        "/api/v1/sessions",
        &admin,
        json!({"name": "s", "gateway_id": gid, "targets": ["plc"], "max_duration_s": 600}),
    );
    let sid = session.body["id"].as_u64().unwrap();
    let endpoints: Vec<(&str, String, Value)> = vec![
        ("POST", "/api/v1/auth/login".into(), json!({"name": "root", "password": "wrong but long enough"})),
        ("POST", "/api/v1/auth/refresh".into(), json!({"refresh_token": "fyr.1.2.00"})),
        (
            "POST",
            "/api/v1/users".into(),
            json!({"name": "u", "role": "remote_connect_user", "password": "a long password!"}),
        ),
        ("PATCH", format!("/api/v1/users/{}", 999), json!({"disabled": false})),
        ("POST", "/api/v1/tokens".into(), json!({"name": "t", "scopes": ["sessions:read"]})),
        ("POST", "/api/v1/gateways".into(), json!({"name": "g2", "site": "s", "targets": []})),
        ("PATCH", format!("/api/v1/gateways/{gid}"), json!({"name": "g3"})),
        ("POST", "/api/v1/enrol".into(), json!({"token": "fye.1.2.00", "identity_key": "00".repeat(32)})),
        ("POST", "/api/v1/relays".into(), json!({"name": "r"})),
        (
            "POST",
            "/api/v1/sessions".into(),
            json!({"name": "s2", "gateway_id": gid, "targets": ["plc"], "max_duration_s": 600}),
        ),
        ("PATCH", format!("/api/v1/sessions/{sid}"), json!({"add_targets": ["plc"]})),
        ("POST", format!("/api/v1/sessions/{sid}/config"), json!({"public_key": "A".repeat(43) + "="})),
    ];
    let config = ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(body in arbitrary_json(), field in 0usize..8, with in arbitrary_json(), pick in 0usize..64)| {
        let (method, path, valid) = &endpoints[pick % endpoints.len()];
        let reply = api.call(method, path, Some(&admin), Some(body.clone()));
        check(&reply, &format!("{method} {path} {body}"));
        let mutated = mutate(valid.clone(), field, with);
        let reply = api.call(method, path, Some(&admin), Some(mutated.clone()));
        check(&reply, &format!("{method} {path} {mutated}"));
    });
    // Lockout may have hit root through the login endpoint; the server is
    // alive either way.
    assert_eq!(api.call("GET", "/healthz", None, None).status, 200);
}
