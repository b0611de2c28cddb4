//! A hostile client against the real cloud: schemathesis (from PyPI)
//! generates requests from the cloud's own OpenAPI document and checks every
//! answer against it, once for a logged-in user of each role. The run must
//! be clean: no server error, every status, content type and body as
//! documented, and no success for anything the role may not do (checked
//! here against the brief's rights table, from schemathesis' record of every
//! exchange).
//!
//! schemathesis is installed into a virtualenv under the target folder, once
//! per pinned version (python3 with its venv module is a prerequisite that
//! `cargo xtask setup` installs).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use ferry_tests::{bin_path, cloud::spawn};
use ferry_world::api::Api;
use serde_json::{Value, json};

/// The pinned release: a new one may check more, which is welcome, but on
/// purpose, not by surprise in an unrelated change.
const REQUIREMENT: &str = "schemathesis==4.32.5";
/// Fixed, so that a failure replays; schemathesis prints it too.
const SEED: u64 = 18;
/// Test cases per operation and phase; bounds the run to a few minutes on
/// two cores.
const MAX_EXAMPLES: u32 = 30;
const ADMIN_PASSWORD: &str = "schemathesis admin password";
const PASSWORD: &str = "schemathesis user password";

/// The schemathesis executable in its own virtualenv, installed if missing
/// or of another version.
fn schemathesis() -> PathBuf {
    let target = bin_path("ferry-cloud").parent().and_then(Path::parent).unwrap().to_path_buf();
    let venv = target.join("schemathesis-venv");
    let exe = venv.join("bin").join("schemathesis");
    let stamp = venv.join(".ferry-installed");
    if exe.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == REQUIREMENT) {
        return exe;
    }
    eprintln!("installing {REQUIREMENT} into {} (once)", venv.display());
    let status = Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv).status().unwrap();
    assert!(status.success(), "python3 -m venv failed (is python3-venv installed? cargo xtask setup)");
    let output = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", REQUIREMENT])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pip install {REQUIREMENT}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(&stamp, REQUIREMENT).unwrap();
    exe
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    User,
    ConnectAdmin,
    Admin,
}

/// What the test made before the run, to tell own from others'.
struct World {
    /// The ids of the users acting in each role.
    user_ids: BTreeMap<Role, u64>,
    /// Sessions released to the remoteConnect User.
    own_sessions: Vec<u64>,
}

/// Whether `role` may succeed at `method path` (a concrete path, matched to
/// its `template`): the brief's rights table, written out here on its own
/// rather than read from the server's code.
fn may(role: Role, method: &str, template: &str, path: &str, world: &World) -> bool {
    let id = || path.split('/').nth(4).and_then(|s| s.parse::<u64>().ok());
    let own_user = || id() == world.user_ids.get(&role).copied();
    let own_session = || id().is_some_and(|id| world.own_sessions.contains(&id));
    let is_admin = role == Role::Admin;
    let manages_sessions = role != Role::User;
    match (method, template) {
        // Anyone, or authenticated by something other than the user.
        (_, "/healthz" | "/metrics" | "/api/v1/version" | "/api/v1/openapi.json") => true,
        (_, p) if p.starts_with("/api/v1/auth/") || p.starts_with("/api/v1/me") => true,
        (_, p) if p.starts_with("/api/v1/configs/") => true,
        ("POST", "/api/v1/enrol") => true,
        (_, "/api/v1/control/gateway" | "/api/v1/control/relay" | "/api/v1/stun") => true,
        // Users and tokens are the Administrator's; everyone sees themselves.
        ("GET", "/api/v1/users/{id}") => is_admin || own_user(),
        ("GET", "/api/v1/users/releasable") => manages_sessions,
        (_, p) if p.starts_with("/api/v1/users") || p.starts_with("/api/v1/tokens") => is_admin,
        // Gateways: added and changed by the Administrator, seen by those who
        // prepare sessions. Relays are the Administrator's.
        ("GET", "/api/v1/gateways" | "/api/v1/gateways/{id}") => manages_sessions,
        (_, p) if p.starts_with("/api/v1/gateways") || p.starts_with("/api/v1/relays") => is_admin,
        // Sessions: a remoteConnect User sees (their own, filtered), starts,
        // uses and ends only the sessions released to them.
        ("GET", "/api/v1/sessions") => true,
        ("POST", "/api/v1/sessions") | ("PATCH", "/api/v1/sessions/{id}") => manages_sessions,
        (_, p) if p.starts_with("/api/v1/sessions/") => manages_sessions || own_session(),
        (_, "/api/v1/audit" | "/api/v1/audit/export" | "/api/v1/audit/verify") => manages_sessions,
        (_, "/api/v1/events") => true,
        _ => panic!("no rights for {method} {template}: add it to the table"),
    }
}

/// The document's path template that a concrete path matches.
fn template_of<'a>(templates: &'a [String], path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = path.split('/').collect();
    // A literal segment beats a parameter (`/users/releasable` over
    // `/users/{id}`).
    templates
        .iter()
        .filter(|t| {
            let parts: Vec<&str> = t.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(p, s)| p.starts_with('{') || p == s)
        })
        .min_by_key(|t| t.matches('{').count())
        .map(String::as_str)
}

fn login(api: &Api, name: &str, password: &str) -> String {
    let (status, body) =
        api.call("POST", "/api/v1/auth/login", None, json!({"name": name, "password": password})).unwrap();
    assert_eq!(status, 200, "login {name}: {body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// Makes the users of the two other roles, a gateway, a session released to
/// the remoteConnect User and one that is not.
fn prepare(api: &Api, admin: &str) -> World {
    let mut user_ids = BTreeMap::new();
    let (_, me) = api.call("GET", "/api/v1/me", Some(admin), Value::Null).unwrap();
    user_ids.insert(Role::Admin, me["id"].as_u64().unwrap());
    for (role, name, label) in [
        (Role::ConnectAdmin, "rc-admin", "remote_connect_administrator"),
        (Role::User, "rc-user", "remote_connect_user"),
    ] {
        let (status, created) = api
            .call(
                "POST",
                "/api/v1/users",
                Some(admin),
                json!({"name": name, "role": label, "password": PASSWORD}),
            )
            .unwrap();
        assert_eq!(status, 201, "{created}");
        user_ids.insert(role, created["user"]["id"].as_u64().unwrap());
    }
    let (status, gateway) = api
        .call(
            "POST",
            "/api/v1/gateways",
            Some(admin),
            json!({"name": "press-7", "site": "plant", "targets": [{"name": "plc", "address": "192.168.0.10",
                "protocol": "tcp", "ports": [{"first": 502, "last": 502}]}]}),
        )
        .unwrap();
    assert_eq!(status, 201, "{gateway}");
    let gateway_id = gateway["gateway"]["id"].as_u64().unwrap();
    let mut own_sessions = Vec::new();
    for (name, released_to) in [("released", vec![user_ids[&Role::User]]), ("not-released", vec![])] {
        let session = json!({"name": name, "gateway_id": gateway_id, "targets": ["plc"],
            "released_to": released_to, "max_duration_s": 600});
        let (status, created) = api.call("POST", "/api/v1/sessions", Some(admin), session).unwrap();
        assert_eq!(status, 201, "{created}");
        if !released_to.is_empty() {
            own_sessions.push(created["id"].as_u64().unwrap());
        }
    }
    World { user_ids, own_sessions }
}

/// One exchange as schemathesis recorded it.
struct Exchange {
    method: String,
    path: String,
    status: u16,
}

/// The exchanges of a HAR file.
fn exchanges(har: &Path) -> Vec<Exchange> {
    let har: Value = serde_json::from_slice(&std::fs::read(har).unwrap()).unwrap();
    har["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let url = entry["request"]["url"].as_str().unwrap();
            let path = url.split("://").nth(1).and_then(|rest| rest.find('/').map(|i| &rest[i..])).unwrap();
            Exchange {
                method: entry["request"]["method"].as_str().unwrap().to_string(),
                path: path.split('?').next().unwrap().to_string(),
                status: entry["response"]["status"].as_u64().unwrap() as u16,
            }
        })
        .collect()
}

/// Operations left out: those that would destroy the run's own
/// credentials (revoking its API token, logging out, changing the password,
/// turning on TOTP), the event streams, which never end by themselves, and
/// the WebSocket control channels of gateways and relays, which are not
/// request and response (tests/control_gateway.rs and the relay's tests
/// drive them).
const EXCLUDED: &[&str] = &[
    "GET /api/v1/control/gateway",
    "GET /api/v1/control/relay",
    "DELETE /api/v1/tokens/{id}",
    "POST /api/v1/auth/logout",
    "POST /api/v1/me/password",
    "POST /api/v1/me/totp",
    "POST /api/v1/me/totp/confirm",
    "POST /api/v1/me/totp/disable",
    "GET /api/v1/events",
    "GET /api/v1/configs/{config_id}/events",
];

#[test]
fn schemathesis_finds_nothing_for_any_role() {
    let exe = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let cloud = spawn(&dir.path().join("data"), &[]);
    let cert = std::fs::read(dir.path().join("data/tls/cert.pem")).unwrap();
    let api = Api::https(cloud.addr, &cert).unwrap();
    let one_time = cloud.one_time_password().unwrap();
    let first = login(&api, "admin", &one_time);
    let change = json!({"current_password": one_time, "new_password": ADMIN_PASSWORD});
    assert_eq!(api.call("POST", "/api/v1/me/password", Some(&first), change).unwrap().0, 204);
    let admin = login(&api, "admin", ADMIN_PASSWORD);
    let world = prepare(&api, &admin);

    let (_, doc) = api.call("GET", "/api/v1/openapi.json", None, Value::Null).unwrap();
    let templates: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();

    // The remoteConnect roles first: the Administrator's run may disable
    // them or reset their passwords. The Administrator acts through an API
    // token with every scope, which a password reset does not end.
    let scopes = [
        "sessions:read",
        "sessions:write",
        "gateways:read",
        "gateways:write",
        "users:read",
        "users:write",
        "audit:read",
    ];
    let (status, token) = api
        .call("POST", "/api/v1/tokens", Some(&admin), json!({"name": "schemathesis", "scopes": scopes}))
        .unwrap();
    assert_eq!(status, 201, "{token}");
    let admin_token = token["secret"].as_str().unwrap().to_string();

    let mut totals = BTreeMap::new();
    let mut breaches = Vec::new();
    let mut failed = Vec::new();
    for role in [Role::User, Role::ConnectAdmin, Role::Admin] {
        let bearer = match role {
            Role::User => login(&api, "rc-user", PASSWORD),
            Role::ConnectAdmin => login(&api, "rc-admin", PASSWORD),
            Role::Admin => admin_token.clone(),
        };
        let har = dir.path().join(format!("{role:?}.har"));
        let mut cmd = Command::new(&exe);
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis").join("schemathesis.toml");
        cmd.arg("--config-file")
            .arg(config)
            .arg("run")
            .arg(format!("https://{}/api/v1/openapi.json", cloud.addr))
            .args(["--seed", &SEED.to_string(), "--max-examples", &MAX_EXAMPLES.to_string()])
            // Every check runs (schemathesis' default; naming them on the
            // command line would override the per-operation settings). One
            // worker: CPython 3.11's parser is not thread-safe in what
            // hypothesis asks of it (an AST recursion depth mismatch), and
            // one is deterministic.
            .args(["--workers", "1", "--no-color", "--generation-database", "none"])
            .args(["--request-timeout", "20", "--tls-verify"])
            .arg(dir.path().join("data/tls/cert.pem"))
            .args(["--header", &format!("Authorization: Bearer {bearer}")])
            .args(["--report", "har", "--report-har-path"])
            .arg(&har)
            .current_dir(dir.path());
        for operation in EXCLUDED {
            cmd.args(["--exclude-name", operation]);
        }
        let output = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        println!("=== schemathesis as {role:?} ===\n{stdout}{}", String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            failed.push(role);
        }
        let exchanges = exchanges(&har);
        let mut by_status: BTreeMap<u16, u32> = BTreeMap::new();
        for exchange in &exchanges {
            *by_status.entry(exchange.status).or_default() += 1;
            let Some(template) = template_of(&templates, &exchange.path) else { continue };
            if (200..300).contains(&exchange.status)
                && !may(role, &exchange.method, template, &exchange.path, &world)
            {
                breaches
                    .push(format!("{role:?}: {} {} -> {}", exchange.method, exchange.path, exchange.status));
            }
        }
        println!("{role:?}: {} requests, by status {by_status:?}", exchanges.len());
        totals.insert(role, exchanges.len());
    }
    println!("requests per role: {totals:?}");
    assert!(breaches.is_empty(), "a role did what it may not:\n{}", breaches.join("\n"));
    assert!(failed.is_empty(), "schemathesis found problems as {failed:?} (see its reports above)");
    // The run really exercised the API: every role made many requests.
    assert!(totals.values().all(|&n| n > 500), "{totals:?}");
    assert!(cloud.stderr_text().lines().all(|l| !l.contains("panicked")), "{}", cloud.stderr_text());
}
