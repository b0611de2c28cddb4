//! The database restarted (crashed, even) under load: while it is down,
//! requests fail with a clear 503 `storage-unavailable` problem, never
//! anything else; service comes back by itself when it is up again; every
//! write that was acknowledged is there, and the audit chain verifies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code")]

mod common;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use common::{Api, START_MS};
use ferry_cloud::{audit, clock::ManualClock, rights::Role};
use ferry_lab::postgres::{Durability, Postgres};
use serde_json::json;

#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    unavailable: usize,
}

#[test]
fn a_database_restart_under_load_gives_503s_then_service_with_nothing_lost() {
    let server = Postgres::start(Durability::Relaxed).unwrap();
    server.create_database("ferry").unwrap();
    let api = Api::over_storage(
        tempfile::tempdir().unwrap(),
        Some(server.url("ferry")),
        ManualClock::new(START_MS),
        |b| b,
    );
    api.user("root", Role::Administrator);
    let (admin, _) = api.login("root");
    let stop = AtomicBool::new(false);
    let seen: Vec<Seen> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (api, admin, stop) = (&api, admin.as_str(), &stop);
                scope.spawn(move || {
                    let mut seen = Seen::default();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    for n in 0.. {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            break;
                        }
                        let name = format!("w{w}-{n}");
                        let reply = api.post(
                            "/api/v1/tokens",
                            admin,
                            json!({"name": name, "scopes": ["sessions:read"]}),
                        );
                        match reply.status {
                            201 => seen.acknowledged.push(name),
                            503 => {
                                assert_eq!(reply.problem(), "storage-unavailable", "{reply:?}");
                                assert!(reply.retry_after.is_some(), "{reply:?}");
                                seen.unavailable += 1;
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            _ => panic!("neither acknowledged nor unavailable: {reply:?}"),
                        }
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400));
        server.stop(true).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        server.resume().unwrap();
        // Service is back by itself: each writer gets acknowledgements again.
        // A liveness bound, not a speed claim: up to 300 tries 100 ms apart.
        let acked_now = |attempt: u32| {
            let reply = api.post(
                "/api/v1/tokens",
                &admin,
                json!({"name": format!("probe-{attempt}"), "scopes": ["sessions:read"]}),
            );
            reply.status == 201
        };
        let mut attempt = 0;
        while !acked_now(attempt) {
            attempt += 1;
            assert!(attempt < 300, "service did not come back after {attempt} tries");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(400));
        stop.store(true, Ordering::SeqCst);
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let unavailable: usize = seen.iter().map(|s| s.unavailable).sum();
    assert!(unavailable > 0, "the outage was not noticed");
    let listed = api.get("/api/v1/tokens", &admin);
    assert_eq!(listed.status, 200, "{listed:?}");
    let names: std::collections::HashSet<String> =
        listed.body.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    for name in seen.iter().flat_map(|s| &s.acknowledged) {
        assert!(names.contains(name), "acknowledged token {name} is gone");
    }
    audit::verify(&api.store).unwrap().unwrap_or_else(|b| panic!("broken: {b:?}"));
    eprintln!(
        "acknowledged {} writes, {unavailable} answered 503 while the database was down",
        seen.iter().map(|s| s.acknowledged.len()).sum::<usize>()
    );
}
