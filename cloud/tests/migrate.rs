//! `ferry-cloud migrate`: a sled folder made through the API (users, a
//! gateway enrolled, sessions started and ended, tokens, the audit log) is
//! copied into an empty PostgreSQL database; the binary checks every
//! document and the audit chain there, and a cloud over the copy serves
//! the same data, with new ids that do not collide with the old ones.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use common::{Api, START_MS, peers::TestGateway, pg};
use ferry_cloud::{audit, clock::ManualClock, rights::Role};
use serde_json::json;

fn migrate(from: &std::path::Path, to: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry-cloud"))
        .env("FERRY_CONFIG", "/dev/null")
        .args(["migrate", "--from"])
        .arg(from)
        .args(["--to", to])
        .output()
        .unwrap()
}

#[test]
fn a_sled_folder_moves_into_postgres_whole_and_verified() {
    let clock = ManualClock::new(START_MS);
    let api = Api::over_storage(tempfile::tempdir().unwrap(), None, clock.clone(), |b| b);
    api.user("root", Role::Administrator);
    let tech = api.user("tech", Role::RemoteConnectUser);
    let (admin, _) = api.login("root");
    let (gateway_id, key) = TestGateway::create_and_enrol(&api, &admin, "press-1", 1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let gateway = runtime.block_on(TestGateway::connect(api.addr, gateway_id, &key, true)).unwrap();
    let mut sessions = Vec::new();
    for n in 0..3 {
        let made = api.post(
            "/api/v1/sessions",
            &admin,
            json!({"name": format!("job {n}"), "gateway_id": gateway_id, "targets": ["plc"],
                   "released_to": [tech], "max_duration_s": 600}),
        );
        assert_eq!(made.status, 201, "{made:?}");
        let id = made.body["id"].as_u64().unwrap();
        assert_eq!(api.post(&format!("/api/v1/sessions/{id}/start"), &admin, json!({})).status, 200);
        if n < 2 {
            assert_eq!(api.post(&format!("/api/v1/sessions/{id}/end"), &admin, json!({})).status, 200);
        }
        sessions.push(id);
    }
    let token =
        api.post("/api/v1/tokens", &admin, json!({"name": "automation", "scopes": ["sessions:read"]}));
    assert_eq!(token.status, 201, "{token:?}");
    let listed = api.get("/api/v1/sessions", &admin).body;
    drop(gateway);
    runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(200)).await });
    let entries = api.audit();
    let chain = audit::verify(&api.store).unwrap().unwrap();
    let dir = api.stop();

    let url = pg::fresh_database();
    let output = migrate(dir.path(), &url);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("the audit log verifies there"), "{stdout}");
    assert!(stdout.contains(&format!("({} entries)", chain.entries)), "{stdout}");

    // Into a database that holds ferry data already: refused.
    let again = migrate(dir.path(), &url);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds ferry data"));

    // A cloud over the copy: same users (their passwords), sessions, chain.
    let copy = Api::over_storage(tempfile::tempdir().unwrap(), Some(url), clock, |b| b);
    let (admin, _) = copy.login("root");
    assert_eq!(copy.get("/api/v1/sessions", &admin).body, listed);
    // Every entry as it was, and the copy's own login after them.
    let copied = copy.audit();
    assert_eq!(copied[..entries.len()], entries[..]);
    assert_eq!(copied[entries.len()].event.action, "auth.login");
    let chain = audit::verify(&copy.store).unwrap().unwrap();
    assert_eq!(copy.get("/api/v1/tokens", &admin).body.as_array().unwrap().len(), 1);
    // New ids come after every copied one.
    let made = copy.post(
        "/api/v1/sessions",
        &admin,
        json!({"name": "after", "gateway_id": gateway_id, "targets": ["plc"], "max_duration_s": 600}),
    );
    assert_eq!(made.status, 201, "{made:?}");
    assert!(sessions.iter().all(|&old| made.body["id"].as_u64().unwrap() > old));
    // The chain goes on there.
    assert_eq!(audit::verify(&copy.store).unwrap().unwrap().entries, chain.entries + 1);
}
