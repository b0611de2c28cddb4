//! Login, tokens, lockout, TOTP and API tokens over real HTTP.

mod common;

use common::{Api, PASSWORD};
use ferry_cloud::{auth::ACCESS_TTL_MS, rights::Role};
use serde_json::json;

fn login_reply(api: &Api, name: &str, password: &str) -> common::Reply {
    api.call("POST", "/api/v1/auth/login", None, Some(json!({"name": name, "password": password})))
}

#[test]
fn access_tokens_expire_after_five_minutes_and_refresh_rotates() {
    let api = Api::start();
    api.user("alice", Role::Administrator);
    let (access, refresh) = api.login("alice");
    assert_eq!(api.get("/api/v1/me", &access).body["name"], "alice");

    api.clock.advance(ACCESS_TTL_MS - 1_000);
    assert_eq!(api.get("/api/v1/me", &access).status, 200);
    api.clock.advance(1_000);
    let expired = api.get("/api/v1/me", &access);
    assert_eq!(expired.status, 401, "{expired:?}");
    assert!(expired.body["detail"].as_str().unwrap().contains("expired"));

    // Refresh: a new pair; the old refresh token is spent.
    let renewed = api.call("POST", "/api/v1/auth/refresh", None, Some(json!({"refresh_token": refresh})));
    assert_eq!(renewed.status, 200, "{renewed:?}");
    let access2 = renewed.body["access_token"].as_str().unwrap().to_string();
    let refresh2 = renewed.body["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh2, refresh);
    assert_eq!(api.get("/api/v1/me", &access2).status, 200);

    // Reusing the spent token is theft: it fails and takes the new one too.
    let reuse = api.call("POST", "/api/v1/auth/refresh", None, Some(json!({"refresh_token": refresh})));
    assert_eq!(reuse.status, 401);
    assert!(reuse.body["detail"].as_str().unwrap().contains("already used"), "{reuse:?}");
    let after = api.call("POST", "/api/v1/auth/refresh", None, Some(json!({"refresh_token": refresh2})));
    assert_eq!(after.status, 401, "the family is revoked: {after:?}");
    assert!(
        api.audit()
            .iter()
            .any(|e| e.event.action == "auth.refresh" && !e.event.allowed && e.event.actor == "alice"),
        "the reuse is audited"
    );

    // Logout revokes.
    let (_, refresh3) = api.login("alice");
    assert_eq!(
        api.call("POST", "/api/v1/auth/logout", None, Some(json!({"refresh_token": refresh3}))).status,
        204
    );
    let gone = api.call("POST", "/api/v1/auth/refresh", None, Some(json!({"refresh_token": refresh3})));
    assert_eq!(gone.status, 401);
}

#[test]
fn forged_and_malformed_tokens_are_refused_and_audited() {
    let api = Api::start();
    api.user("alice", Role::RemoteConnectUser);
    let (access, _) = api.login("alice");
    let mut forged = access.clone();
    forged.insert(forged.len() - 3, 'A');
    for bad in [forged.as_str(), "not-a-token", "fya.1.2.00", ""] {
        let reply = api.get("/api/v1/me", bad);
        assert_eq!(reply.status, 401, "{bad}: {reply:?}");
        assert_eq!(reply.content_type, "application/problem+json");
    }
    let no_header = api.call("GET", "/api/v1/me", None, None);
    assert_eq!(no_header.status, 401);
    let refused = api.audit().iter().filter(|e| e.event.action == "auth.token" && !e.event.allowed).count();
    assert!(refused >= 4, "{refused}");
    assert!(
        api.audit()
            .iter()
            .all(|e| e.event.source.as_deref() == Some("127.0.0.1") || e.event.source.is_none())
    );
}

#[test]
fn failed_logins_slow_down_then_lock_out_and_both_are_audited() {
    let api = Api::start();
    api.user("bob", Role::RemoteConnectUser);
    for _ in 0..3 {
        assert_eq!(login_reply(&api, "bob", "wrong password!").status, 401);
    }
    // Slowed down: even the right password must wait now.
    let slowed = login_reply(&api, "bob", PASSWORD);
    assert_eq!((slowed.status, slowed.problem()), (429, "login-throttled"), "{slowed:?}");
    assert_eq!(slowed.retry_after.as_deref(), Some("1"));
    // Keep failing, respecting the delays, until the lock.
    let mut wait = 1_000;
    let mut locked = None;
    for _ in 0..10 {
        api.clock.advance(wait);
        wait = (wait * 2).min(60_000);
        let reply = login_reply(&api, "bob", "wrong password!");
        if reply.status == 429 {
            locked = Some(reply);
            break;
        }
    }
    let locked = locked.expect("locked out");
    assert_eq!(locked.problem(), "account-locked");
    assert_eq!(locked.retry_after.as_deref(), Some("900"));
    // The right password does not help while locked.
    api.clock.advance(14 * 60_000);
    assert_eq!(login_reply(&api, "bob", PASSWORD).status, 429);
    api.clock.advance(60_000);
    assert_eq!(login_reply(&api, "bob", PASSWORD).status, 200);

    let audit = api.audit();
    let throttled = audit.iter().filter(|e| e.event.detail.as_deref() == Some("throttled")).count();
    assert!(throttled >= 1);
    assert_eq!(audit.iter().filter(|e| e.event.action == "auth.lockout").count(), 1);
    assert!(audit.iter().any(|e| e.event.action == "auth.login" && e.event.allowed));
    // Unknown users are refused like wrong passwords, and audited.
    let unknown = login_reply(&api, "mallory", PASSWORD);
    assert_eq!((unknown.status, unknown.problem()), (401, "bad-credentials"));
    assert!(
        api.audit()
            .iter()
            .any(|e| e.event.actor == "mallory" && e.event.detail.as_deref() == Some("unknown user"))
    );
}

#[test]
fn totp_second_factor() {
    let api = Api::start();
    api.user("carol", Role::RemoteConnectAdministrator);
    let (access, _) = api.login("carol");
    let enrol = api.post("/api/v1/me/totp", &access, json!({}));
    assert_eq!(enrol.status, 200, "{enrol:?}");
    let state = ferry_cloud::auth::totp::TotpState {
        secret: enrol.body["secret"].as_str().unwrap().to_string(),
        confirmed: true,
        last_step: 0,
    };
    // Not yet confirmed: login still works without a code.
    api.login("carol");
    assert_eq!(api.post("/api/v1/me/totp/confirm", &access, json!({"code": "000000"})).status, 400);
    let code = state.code_at(api.clock.now()).unwrap();
    assert_eq!(api.post("/api/v1/me/totp/confirm", &access, json!({"code": code})).status, 204);

    let no_code = login_reply(&api, "carol", PASSWORD);
    assert_eq!((no_code.status, no_code.problem()), (401, "totp-required"));
    api.clock.advance(30_000);
    let code = state.code_at(api.clock.now()).unwrap();
    let with_code = api.call(
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"name": "carol", "password": PASSWORD, "totp": code})),
    );
    assert_eq!(with_code.status, 200, "{with_code:?}");
    let replay = api.call(
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"name": "carol", "password": PASSWORD, "totp": code})),
    );
    assert_eq!((replay.status, replay.problem()), (401, "totp-wrong"), "a code works once");
    assert_eq!(api.get("/api/v1/me", &access).body["totp_enabled"], true);
}

#[test]
fn api_tokens_are_scoped_and_die_with_their_creator() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    api.user("other", Role::Administrator);
    let (admin, _) = api.login("root");
    let made = api.post(
        "/api/v1/tokens",
        &admin,
        json!({"name": "inventory", "scopes": ["users:read"], "expires_in_days": 1}),
    );
    assert_eq!(made.status, 201, "{made:?}");
    let secret = made.body["secret"].as_str().unwrap().to_string();
    assert!(made.body["token"].get("secret_hash").is_none());
    assert_eq!(api.get("/api/v1/users", &secret).status, 200);
    // Out of scope: refused and audited.
    let write = api.post("/api/v1/users", &secret, json!({"name": "x1", "role": "remote_connect_user"}));
    assert_eq!(write.status, 403, "{write:?}");
    assert!(write.body["detail"].as_str().unwrap().contains("users:write"));
    // A token cannot mint tokens.
    let mint = api.post("/api/v1/tokens", &secret, json!({"name": "n", "scopes": ["users:read"]}));
    assert_eq!(mint.status, 403);
    // Expired after a day.
    api.clock.advance(86_400_000);
    assert_eq!(api.get("/api/v1/users", &secret).status, 401);

    // Disabling the creator kills their tokens at once.
    let (admin, _) = api.login("root");
    let (other, _) = api.login("other");
    let made = api.post("/api/v1/tokens", &admin, json!({"name": "ops", "scopes": ["users:read"]}));
    let secret = made.body["secret"].as_str().unwrap().to_string();
    assert_eq!(api.get("/api/v1/users", &secret).status, 200);
    let root_id = api.get("/api/v1/me", &admin).body["id"].as_u64().unwrap();
    let disable =
        api.call("PATCH", &format!("/api/v1/users/{root_id}"), Some(&other), Some(json!({"disabled": true})));
    assert_eq!(disable.status, 200, "{disable:?}");
    assert_eq!(api.get("/api/v1/users", &secret).status, 401);
    assert_eq!(api.get("/api/v1/me", &admin).status, 401, "the access token stopped too");
    assert_eq!(login_reply(&api, "root", PASSWORD).status, 403);
}

#[test]
fn one_time_passwords_must_be_changed_first() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let (admin, _) = api.login("root");
    let made = api.post("/api/v1/users", &admin, json!({"name": "dora", "role": "remote_connect_user"}));
    assert_eq!(made.status, 201, "{made:?}");
    let one_time = made.body["one_time_password"].as_str().unwrap().to_string();
    let login = login_reply(&api, "dora", &one_time);
    assert_eq!(login.status, 200);
    let access = login.body["access_token"].as_str().unwrap().to_string();
    let blocked = api.get("/api/v1/users", &access);
    assert_eq!((blocked.status, blocked.problem()), (403, "password-change-required"), "{blocked:?}");
    let change = api.post(
        "/api/v1/me/password",
        &access,
        json!({"current_password": one_time, "new_password": "a new long password"}),
    );
    assert_eq!(change.status, 204, "{change:?}");
    assert_eq!(api.get("/api/v1/me", &access).status, 401, "old tokens end with the password");
    assert_eq!(login_reply(&api, "dora", "a new long password").status, 200);
}

#[test]
fn bad_bodies_get_problems_that_name_the_problem() {
    let api = Api::start();
    api.user("root", Role::Administrator);
    let (admin, _) = api.login("root");
    let cases = [
        (json!({"name": "x y", "role": "administrator"}), 400, "name"),
        (json!({"name": "ok", "role": "root"}), 422, "role"),
        (json!({"name": "ok", "role": "administrator", "extra": 1}), 422, "extra"),
        (json!({"name": "ok", "role": "administrator", "password": "short"}), 400, "password"),
        (json!({"role": "administrator"}), 422, "name"),
    ];
    for (body, status, names) in cases {
        let reply = api.post("/api/v1/users", &admin, body.clone());
        assert_eq!(reply.status, status, "{body}: {reply:?}");
        assert_eq!(reply.content_type, "application/problem+json");
        assert!(reply.body["detail"].as_str().unwrap().contains(names), "{body}: {reply:?}");
    }
    let huge = json!({"name": "ok", "role": "administrator", "password": "x".repeat(100_000)});
    assert_eq!(api.post("/api/v1/users", &admin, huge).status, 413);
    let not_json = api.call("POST", "/api/v1/auth/login", None, None);
    assert_eq!(not_json.status, 415);
}
