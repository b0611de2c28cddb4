//! The audit log over HTTP: query by every filter and page through it,
//! export JSON Lines that re-verify, verify the chain, rights, bad
//! parameters, and retention.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod common;

use common::{Api, START_MS};
use ferry_cloud::{
    audit::{self, Entry, Event},
    rights::Role,
    store::{Batch, Collection},
};
use serde_json::{Value, json};

const DAY_MS: u64 = 86_400_000;

fn event(actor: &str, action: &str, allowed: bool, session: Option<&str>, gateway: Option<&str>) -> Event {
    Event {
        actor: actor.into(),
        action: action.into(),
        allowed,
        source: Some("192.0.2.9".into()),
        session: session.map(str::to_string),
        gateway: gateway.map(str::to_string),
        detail: None,
    }
}

/// Every page of `GET /api/v1/audit?<filters>` followed to the end.
fn all_pages(api: &Api, token: &str, filters: &str, limit: usize) -> (Vec<Entry>, usize) {
    let mut found = Vec::new();
    let mut after: Option<u64> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/api/v1/audit?limit={limit}");
        if !filters.is_empty() {
            path.push('&');
            path.push_str(filters);
        }
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let reply = api.get(&path, token);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        pages += 1;
        let entries: Vec<Entry> = serde_json::from_value(reply.body["entries"].clone()).unwrap();
        assert!(entries.len() <= limit);
        found.extend(entries);
        match reply.body["next"].as_u64() {
            Some(next) => after = Some(next),
            None => {
                assert!(reply.body["next"].is_null(), "{reply:?}");
                return (found, pages);
            }
        }
    }
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

#[test]
fn queries_filter_by_time_actor_session_gateway_action_and_outcome() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    // A login entry before the events below.
    api.login("root");
    // Ten minutes apart, from START_MS + 1 h on.
    api.clock.advance(3_600_000);
    let t0 = api.clock.now();
    let made = [
        event("alice", "session.start", true, Some("11"), Some("3")),
        event("bob", "session.start", false, Some("12"), Some("3")),
        event("alice", "session.end", true, Some("11"), Some("3")),
        event("carol", "gateway.add", true, None, Some("4")),
        event("bob", "session.start", true, Some("13"), Some("4")),
    ];
    for e in made {
        api.state.audit(e);
        api.clock.advance(600_000);
    }
    // The first access token has expired by now.
    let (token, _) = api.login("root");
    let find = |filters: &str| -> Vec<(String, String)> {
        let (entries, _) = all_pages(&api, &token, filters, 100);
        entries.into_iter().filter(|e| e.time_ms >= t0).map(|e| (e.event.actor, e.event.action)).collect()
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    };
    assert_eq!(find("actor=alice"), pairs(&[("alice", "session.start"), ("alice", "session.end")]));
    assert_eq!(find("session=12"), pairs(&[("bob", "session.start")]));
    assert_eq!(find("gateway=4"), pairs(&[("carol", "gateway.add"), ("bob", "session.start")]));
    assert_eq!(
        find("action=session.start&allowed=true"),
        pairs(&[("alice", "session.start"), ("bob", "session.start")])
    );
    assert_eq!(find("allowed=false&actor=bob"), pairs(&[("bob", "session.start")]));
    // Time: from inclusive, to exclusive.
    let window = format!("from_ms={}&to_ms={}", t0 + 600_000, t0 + 1_800_000);
    assert_eq!(find(&window), pairs(&[("bob", "session.start"), ("alice", "session.end")]));
    let (before, _) = all_pages(&api, &token, &format!("to_ms={t0}"), 100);
    assert!(before.iter().all(|e| e.time_ms < t0) && !before.is_empty(), "the login is before");
    assert_eq!(
        find(&format!("from_ms={}&gateway=3&actor=alice&session=11", t0 + 1)),
        pairs(&[("alice", "session.end")])
    );
    assert_eq!(find("actor=nobody"), pairs(&[]));
    // A URL-encoded value.
    api.state.audit(event("gateway:7", "gateway.connect", true, None, Some("7")));
    let (found, _) = all_pages(&api, &token, "actor=gateway%3A7", 100);
    assert_eq!(found.len(), 1);
}

#[test]
fn pages_return_every_entry_exactly_once() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let (token, _) = api.login("root");
    for i in 0..240 {
        api.state.audit(event(&format!("u{}", i % 5), "x.y", i % 4 != 0, None, None));
    }
    let stored = api.audit();
    assert!(stored.len() > 240);
    let (found, pages) = all_pages(&api, &token, "", 17);
    assert!(pages > 1);
    assert_eq!(found, stored, "every entry once, in order, as stored");
    let (found, pages) = all_pages(&api, &token, "actor=u3", 7);
    assert!(pages > 1);
    let expected: Vec<_> = stored.iter().filter(|e| e.event.actor == "u3").cloned().collect();
    assert_eq!(seqs(&found), seqs(&expected));
    // Without a limit: 100.
    let reply = api.get("/api/v1/audit", &token);
    assert_eq!(reply.body["entries"].as_array().unwrap().len(), 100);
    assert_eq!(reply.body["next"], 100);
}

/// `GET` with a raw ureq agent, for the headers `common` does not keep.
fn raw_get(api: &Api, path: &str, token: &str) -> (u16, String, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent
        .get(format!("{}{path}", api.base))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    let header = |name: &str| {
        response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    let body = response.body_mut().with_config().limit(64 << 20).read_to_string().unwrap();
    (response.status().as_u16(), content_type, disposition, body)
}

#[test]
fn the_export_is_json_lines_as_stored_that_rehash_in_order_and_is_audited() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let (token, _) = api.login("root");
    // More than one chunk of the export.
    for i in 0..2_100u64 {
        api.state.audit(event(&format!("u{}", i % 3), "x.y", true, Some(&i.to_string()), None));
    }
    let (status, content_type, disposition, body) = raw_get(&api, "/api/v1/audit/export", &token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/jsonl");
    assert_eq!(disposition, "attachment; filename=\"ferry-audit.jsonl\"");
    let stored = api.audit();
    let lines: Vec<&str> = body.lines().collect();
    // Everything, up to and including the export's own record.
    assert_eq!(lines.len(), stored.len());
    let mut previous = hex_zeros();
    for (line, entry) in lines.iter().zip(&stored) {
        let parsed: Entry = serde_json::from_str(line).unwrap();
        assert!(parsed.hash_matches(), "{line}");
        assert_eq!(parsed.prev_hash, previous, "{line}");
        previous = parsed.hash.clone();
        let raw = api.store.backend().get(Collection::Audit, &entry.seq.to_be_bytes()).unwrap().unwrap();
        assert_eq!(line.as_bytes(), raw.as_slice(), "the line is the stored JSON");
    }
    let last: Entry = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!((last.event.action.as_str(), last.event.actor.as_str()), ("audit.export", "root"));

    // Filtered.
    let (status, _, _, body) = raw_get(&api, "/api/v1/audit/export?actor=u1&to_ms=99999999999999", &token);
    assert_eq!(status, 200);
    let lines: Vec<Entry> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 700);
    assert!(lines.iter().all(|e| e.event.actor == "u1" && e.hash_matches()));
    let record = api.audit().pop().unwrap();
    assert_eq!(record.event.action, "audit.export");
    let detail = record.event.detail.unwrap();
    assert!(detail.contains(r#""actor":"u1""#) && detail.contains(r#""to_ms":99999999999999"#), "{detail}");

    // Export refuses paging parameters and bad filters like the query.
    let (status, _, _, body) = raw_get(&api, "/api/v1/audit/export?limit=5", &token);
    assert_eq!(status, 400);
    assert!(body.contains("`limit`"), "{body}");
}

fn hex_zeros() -> String {
    "0".repeat(64)
}

#[test]
fn verify_reports_intact_then_the_tampered_entry() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let (token, _) = api.login("root");
    for i in 0..20 {
        api.state.audit(event("someone", "x.y", true, Some(&format!("s{i}")), None));
    }
    let reply = api.get("/api/v1/audit/verify", &token);
    assert_eq!(reply.status, 200);
    let count = api.audit().len() as u64 - 1; // the verify's own record came after
    assert_eq!(reply.body, json!({"intact": true, "entries": count, "anchor_seq": null}));
    assert_eq!(api.audit().last().unwrap().event.action, "audit.verify");

    // Flip one byte of the entry for session s7, straight in the store.
    let target = api.audit().iter().find(|e| e.event.session.as_deref() == Some("s7")).unwrap().seq;
    let key = target.to_be_bytes();
    let mut value = api.store.backend().get(Collection::Audit, &key).unwrap().unwrap();
    let at = value.windows(2).position(|w| w == b"s7").unwrap();
    value[at + 1] = b'8';
    api.store.backend().commit(Batch::default().put(Collection::Audit, key.to_vec(), value)).unwrap();

    let reply = api.get("/api/v1/audit/verify", &token);
    assert_eq!(reply.status, 200, "a report, not an error");
    assert_eq!(reply.body["intact"], false);
    assert_eq!(reply.body["broken_seq"], target);
    assert!(reply.body["reason"].as_str().unwrap().contains("hash"), "{reply:?}");
    assert!(reply.body.get("entries").is_none());
    let record = api.audit().pop().unwrap();
    assert_eq!(record.event.action, "audit.verify");
    assert!(record.event.detail.unwrap().starts_with(&format!("broken at {target}")));
}

#[test]
fn only_those_who_may_read_the_audit_log_do_and_refusals_are_logged() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    api.user("rca", Role::RemoteConnectAdministrator);
    api.user("worker", Role::RemoteConnectUser);
    let (root, _) = api.login("root");
    let (rca, _) = api.login("rca");
    let (worker, _) = api.login("worker");
    for path in ["/api/v1/audit", "/api/v1/audit/export", "/api/v1/audit/verify"] {
        assert_eq!(api.get(path, &rca).status, 200, "{path}");
        let refused = api.get(path, &worker);
        assert_eq!(refused.status, 403, "{path}: {refused:?}");
        assert_eq!(refused.content_type, "application/problem+json");
        assert_eq!(api.call("GET", path, None, None).status, 401);
    }
    let refusals: Vec<_> = api
        .audit()
        .into_iter()
        .filter(|e| e.event.actor == "worker" && !e.event.allowed)
        .map(|e| e.event.action)
        .collect();
    assert_eq!(refusals, ["audit.read", "audit.export", "audit.verify"]);
    // The refusal is findable through the API itself.
    let (found, _) = all_pages(&api, &root, "actor=worker&allowed=false&action=audit.read", 100);
    assert_eq!(found.len(), 1);
    assert!(found[0].event.detail.as_deref().unwrap().contains("remoteConnect User"), "{found:?}");

    let token = |scopes: Value| {
        let made = api.post("/api/v1/tokens", &root, json!({"name": "robot", "scopes": scopes}));
        assert_eq!(made.status, 201, "{made:?}");
        made.body["secret"].as_str().unwrap().to_string()
    };
    let without = token(json!(["sessions:read", "users:read"]));
    let refused = api.get("/api/v1/audit", &without);
    assert_eq!(refused.status, 403);
    assert!(refused.body["detail"].as_str().unwrap().contains("audit:read"), "{refused:?}");
    assert_eq!(api.get("/api/v1/audit/verify", &without).status, 403);
    let with = token(json!(["audit:read"]));
    assert_eq!(api.get("/api/v1/audit?limit=1", &with).status, 200);
    assert_eq!(api.get("/api/v1/audit/verify", &with).status, 200);
}

#[test]
fn bad_parameters_are_refused_naming_the_parameter() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let (token, _) = api.login("root");
    for (query, named) in [
        ("limit=0", "`limit`"),
        ("limit=1001", "`limit`"),
        ("limit=ten", "`limit`"),
        ("after=-1", "`after`"),
        ("from_ms=yesterday", "`from_ms`"),
        ("to_ms=1.5", "`to_ms`"),
        ("from_ms=10&to_ms=10", "`to_ms`"),
        ("allowed=maybe", "`allowed`"),
        ("actor=", "`actor`"),
        ("actor=a&actor=b", "`actor`"),
        ("sort=desc", "`sort`"),
    ] {
        for endpoint in ["/api/v1/audit", "/api/v1/audit/export"] {
            if endpoint.ends_with("export") && (query.starts_with("limit") || query.starts_with("after")) {
                continue;
            }
            let reply = api.get(&format!("{endpoint}?{query}"), &token);
            assert_eq!(reply.status, 400, "{endpoint}?{query}: {reply:?}");
            assert_eq!(reply.content_type, "application/problem+json");
            let detail = reply.body["detail"].as_str().unwrap();
            assert!(detail.contains(named), "{endpoint}?{query}: {detail}");
        }
    }
    assert_eq!(api.get("/api/v1/audit?limit=1000&allowed=false&after=0", &token).status, 200);
}

#[test]
fn the_openapi_document_covers_the_audit_endpoints() {
    let api = Api::start();
    let doc = api.call("GET", "/api/v1/openapi.json", None, None).body;
    let paths = &doc["paths"];
    let names = |path: &str| -> Vec<String> {
        paths[path]["get"]["parameters"]
            .as_array()
            .map(|ps| ps.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let filters = ["from_ms", "to_ms", "actor", "session", "gateway", "action", "allowed"];
    let listed = names("/api/v1/audit");
    assert!(filters.iter().chain(&["after", "limit"]).all(|f| listed.iter().any(|n| n == f)), "{listed:?}");
    let exported = names("/api/v1/audit/export");
    assert!(filters.iter().all(|f| exported.iter().any(|n| n == f)), "{exported:?}");
    for path in ["/api/v1/audit", "/api/v1/audit/export", "/api/v1/audit/verify"] {
        let responses = &paths[path]["get"]["responses"];
        assert!(responses["200"].is_object() && responses["403"].is_object(), "{path}: {responses}");
        assert_eq!(paths[path]["get"]["tags"][0], "audit");
    }
    assert!(
        paths["/api/v1/audit/export"]["get"]["responses"]["200"]["content"]["application/jsonl"].is_object()
    );
}

#[test]
fn entries_beyond_the_retention_are_pruned_and_the_chain_still_verifies() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    for i in 0..30 {
        api.state.audit(event("old", "x.y", true, Some(&i.to_string()), None));
    }
    api.clock.advance(551 * DAY_MS);
    let (token, _) = api.login("root");
    for i in 0..5 {
        api.state.audit(event("recent", "x.y", true, Some(&i.to_string()), None));
    }
    let before = api.audit();
    let now = api.clock.now();
    let removed = audit::prune(&api.store, now - 550 * DAY_MS, now).unwrap();
    assert_eq!(removed, 30);
    let left = api.audit();
    assert!(left.iter().all(|e| e.event.actor != "old"));
    assert_eq!(left.len(), before.len() - 30 + 1);
    let record = left.last().unwrap();
    assert_eq!((record.event.actor.as_str(), record.event.action.as_str()), ("system", "audit.prune"));
    let detail = record.event.detail.as_deref().unwrap();
    assert!(detail.starts_with("removed 30 entries") && detail.contains("up to seq 30 "), "{detail}");

    let reply = api.get("/api/v1/audit/verify", &token);
    assert_eq!(reply.body, json!({"intact": true, "entries": left.len(), "anchor_seq": 30}), "{reply:?}");
    // Pages and the export start after the anchor.
    let (found, _) = all_pages(&api, &token, &format!("from_ms={START_MS}"), 10);
    assert_eq!(found.first().unwrap().seq, 31);
    assert!(audit::verify(&api.store).unwrap().is_ok());

    // A second pass inside the retention removes nothing.
    assert_eq!(audit::prune(&api.store, now - 550 * DAY_MS, now).unwrap(), 0);
    // Deleting the first remaining entry behind the anchor's back shows.
    let key = 31u64.to_be_bytes();
    api.store.backend().commit(Batch::default().delete(Collection::Audit, key.to_vec())).unwrap();
    let reply = api.get("/api/v1/audit/verify", &token);
    assert_eq!((reply.body["intact"].clone(), reply.body["broken_seq"].clone()), (json!(false), json!(31)));
    assert_eq!(reply.body["anchor_seq"], 30);
}
