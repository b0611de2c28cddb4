//! The technician client `ferry` in the gateway lab: its service in the
//! technician's namespace, driven by several local users (uids without a
//! passwd entry, so nothing of the host's is touched), against a stock
//! wireguard-go peer and against the real cloud, relay and a stand-in
//! gateway.
//!
//! Run as root after `cargo build --bins`:
//! `cargo test -p ferry-tests --test client`.

use std::{
    net::SocketAddr,
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        net::UnixStream,
    },
    path::Path,
    time::Duration,
};

use ferry_lab::Netns;
use ferry_tests::{
    bin_path,
    client_lab::{LocalUser, *},
    gateway_lab::*,
    stand_in_gateway::StandInGateway,
    wg::Keys,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(5);
fn config(session_id: u64, peer: &str, expires_ms: u64, endpoint: &str) -> Value {
    let target = |name: &str, last: u8, port: u16| {
        json!({"name": name, "proxy_address": format!("100.96.0.{last}"), "protocol": "tcp",
               "ports": [{"first": port, "last": port}]})
    };
    json!({
        "config_id": session_id * 10,
        "session_id": session_id,
        "session_name": format!("stand-in {session_id}"),
        "expires_ms": expires_ms,
        "address": "100.96.0.2/32",
        "peer_public_key": peer,
        "allowed_ips": ["100.96.0.100/32", "100.96.0.101/32"],
        "endpoints": [format!("{endpoint}")],
        "relay": null,
        "persistent_keepalive": 25,
        "targets": [target("plc-web", 100, HTTP_PORT), target("echo", 101, ECHO_PORT)],
    })
}

/// Prepares and brings up a tunnel for `user` with a configuration made
/// here (no cloud); returns the tunnel and the service's public key.
fn tunnel_for(
    ns: &Netns,
    user: LocalUser,
    socket: &Path,
    session: u64,
    peer: &str,
    expires_ms: u64,
) -> (Value, String) {
    let prepared = ask(ns, user, socket, json!({"v": 1, "op": "prepare", "session_id": session}));
    assert_eq!(prepared["answer"], "prepared", "{prepared}");
    let public_key = prepared["public_key"].as_str().unwrap().to_string();
    let endpoint = format!("{OFFICE_IP}:{GATEWAY_WG_PORT}");
    let up = json!({"v": 1, "op": "up", "prepare_id": prepared["prepare_id"],
                    "config": config(session, peer, expires_ms, &endpoint)});
    let answer = ask(ns, user, socket, up);
    assert_eq!(answer["answer"], "tunnel", "{answer}");
    (answer["tunnel"].clone(), public_key)
}

fn status_of(ns: &Netns, user: LocalUser, socket: &Path) -> Vec<Value> {
    let answer = ask(ns, user, socket, json!({"v": 1, "op": "status"}));
    assert_eq!(answer["answer"], "tunnels", "{answer}");
    answer["tunnels"].as_array().unwrap().clone()
}

/// The service against a stock wireguard-go peer in the office namespace,
/// with configurations made by the test: a tunnel belongs to the uid that
/// made it, only that uid's traffic to the proxy addresses enters it, the
/// home LAN that overlaps the machine network stays reachable, other users
/// neither see nor drive it, a user outside the group cannot even connect;
/// expiry and a killed service's leftovers.
#[test]
fn the_service_gives_each_user_only_their_own_tunnel() {
    let lab = GatewayLab::new(Options::default());
    // Strict reverse-path filtering, as some distributions set it: the
    // gateway's answers must pass it.
    lab.tech_ns.sysctl("net.ipv4.conf.all.rp_filter=1").unwrap();
    lab.tech_ns.sysctl("net.ipv4.conf.default.rp_filter=1").unwrap();
    let stand_in_keys = Keys::generate(&lab.office_ns);
    let mut service = Service::start(&lab.tech_ns);
    let socket = service.socket.clone();
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, GROUP), "the socket is 0660 with the group");

    let (tunnel, tech_key) =
        tunnel_for(&lab.tech_ns, TECH, &socket, 8, &stand_in_keys.public, unix_ms() + 600_000);
    assert_eq!(tunnel["public_key"], tech_key.as_str());
    assert_eq!((tunnel["path"].as_str(), tunnel["address"].as_str()), (Some("direct"), Some("100.96.0.2")));
    let interface = tunnel["interface"].as_str().unwrap().to_string();
    let stand_in = lab.office_wireguard(&stand_in_keys, &tech_key);
    let _page = Server::http(&lab.office_ns, "100.96.0.100", HTTP_PORT, PLC_PAGE);
    let witness = Server::counter(&lab.office_ns, "100.96.0.100", 9000);

    // The owner reaches the target through the tunnel...
    let page = eventually(Duration::from_secs(15), || get_as(&lab.tech_ns, TECH, "100.96.0.100", HTTP_PORT));
    assert_eq!(page.as_deref(), Ok(PLC_PAGE), "{}", service.log());
    let route = lab.tech_ns.ip(&["route", "get", "100.96.0.100", "uid", &TECH.uid.to_string()]).unwrap();
    assert!(route.contains(&format!("dev {interface}")) && route.contains("src 100.96.0.2"), "{route}");
    // ...and its own home LAN, which uses the machine network's addresses.
    assert_eq!(get_as(&lab.tech_ns, TECH, HOME_DEVICE_IP, HTTP_PORT).as_deref(), Ok(HOME_PAGE));
    // Another user's packets to the same address never enter the tunnel.
    for user in [COLLEAGUE, OUTSIDER] {
        let route = lab.tech_ns.ip(&["route", "get", "100.96.0.100", "uid", &user.uid.to_string()]).unwrap();
        assert!(!route.contains(&interface), "{user:?}: {route}");
        let tried = get_as(&lab.tech_ns, user, "100.96.0.100", 9000);
        assert!(tried.is_err(), "{user:?} reached the target: {tried:?}");
    }
    assert_eq!(witness.accepted(), 0, "another user's connection arrived at the target");
    let rules = ferry_rules(&lab.tech_ns);
    assert_eq!(rules.len(), 2, "the owner's rule and the reverse-path rule: {rules:?}");
    assert!(rules.iter().any(|r| r.contains("uidrange 64001-64001")), "{rules:?}");
    assert!(rules.iter().any(|r| r.contains("from 100.96.0.2 uidrange 0-0")), "{rules:?}");

    // The owner's status shows it; nobody else's does, and nobody else can
    // take it down, with the CLI or the protocol.
    let homes = tempfile::tempdir().unwrap();
    std::fs::set_permissions(homes.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (tech_home, colleague_home, outsider_home) =
        (home_of(homes.path(), TECH), home_of(homes.path(), COLLEAGUE), home_of(homes.path(), OUTSIDER));
    let out = ferry_as(TECH, None, &tech_home, &socket, &["status", "--json"], "");
    assert!(out.status.success(), "{}", text(&out));
    let mine: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine[0]["session_id"], 8);
    assert!(mine[0]["last_handshake_ms"].is_u64() && mine[0]["rx_bytes"].as_u64() > Some(0), "{mine}");
    assert_eq!(mine[0]["peer_endpoint"], format!("{OFFICE_IP}:{GATEWAY_WG_PORT}"));
    let out = ferry_as(TECH, None, &tech_home, &socket, &["status"], "");
    let shown = String::from_utf8_lossy(&out.stdout);
    for needle in ["session 8 \"stand-in 8\"", "state:          up", "plc-web", "100.96.0.100", "time left:"]
    {
        assert!(shown.contains(needle), "{needle} in\n{shown}");
    }

    let out = ferry_as(COLLEAGUE, None, &colleague_home, &socket, &["status", "--json"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), json!([]));
    let out = ferry_as(COLLEAGUE, None, &colleague_home, &socket, &["disconnect", "8"], "");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tunnel to session 8"), "{}", text(&out));
    let out = ferry_as(COLLEAGUE, None, &colleague_home, &socket, &["disconnect"], "");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no tunnel up"),
        "{}",
        text(&out)
    );
    // Nor with a preparation's number: that is its owner's too.
    let prepared = ask(&lab.tech_ns, TECH, &socket, json!({"v": 1, "op": "prepare", "session_id": 12}));
    let id = prepared["prepare_id"].clone();
    let stolen = config(12, &stand_in_keys.public, unix_ms() + 60_000, "192.0.2.130:1");
    let up = json!({"v": 1, "op": "up", "prepare_id": id, "config": stolen});
    assert_eq!(ask(&lab.tech_ns, COLLEAGUE, &socket, up)["code"], "not_found");
    let cancel = json!({"v": 1, "op": "cancel", "prepare_id": id});
    assert_eq!(ask(&lab.tech_ns, COLLEAGUE, &socket, cancel.clone())["code"], "not_found");
    assert_eq!(ask(&lab.tech_ns, TECH, &socket, cancel)["answer"], "done");
    // What no cloud issues is refused: an address outside the pool, a
    // configuration for a month.
    for (change, why) in
        [("address", json!("192.168.50.77/32")), ("expires_ms", json!(unix_ms() + 30 * 86_400_000))]
    {
        let prepared = ask(&lab.tech_ns, TECH, &socket, json!({"v": 1, "op": "prepare", "session_id": 13}));
        let mut forged = config(13, &stand_in_keys.public, unix_ms() + 60_000, "192.0.2.130:1");
        forged[change] = why;
        let up = json!({"v": 1, "op": "up", "prepare_id": prepared["prepare_id"], "config": forged});
        assert_eq!(ask(&lab.tech_ns, TECH, &socket, up)["code"], "invalid", "{change}");
    }
    // A user outside the group does not get in at all.
    let out = ferry_as(OUTSIDER, None, &outsider_home, &socket, &["status"], "");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("group `ferry`"), "{}", text(&out));
    let refused = as_user(&lab.tech_ns, OUTSIDER, {
        let socket = socket.clone();
        move || UnixStream::connect(&socket).map(drop).map_err(|e| e.kind())
    });
    assert_eq!(refused, Err(std::io::ErrorKind::PermissionDenied));
    // The tunnel is untouched by all that.
    assert_eq!(get_as(&lab.tech_ns, TECH, "100.96.0.100", HTTP_PORT).as_deref(), Ok(PLC_PAGE));

    // The owner disconnects: routes, rules and the device go; the status
    // says why.
    let out = ferry_as(TECH, None, &tech_home, &socket, &["disconnect", "stand-in 8"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(ferry_rules(&lab.tech_ns).is_empty(), "{:?}", ferry_rules(&lab.tech_ns));
    assert!(!lab.tech_ns.ip(&["link", "show"]).unwrap().contains(&interface));
    assert!(get_as(&lab.tech_ns, TECH, "100.96.0.100", HTTP_PORT).is_err());
    let after = status_of(&lab.tech_ns, TECH, &socket);
    assert_eq!(after[0]["ended"]["cause"], "disconnected", "{after:?}");

    // A configuration that expires takes its tunnel down by itself.
    let (_, _) = tunnel_for(&lab.tech_ns, TECH, &socket, 9, &stand_in_keys.public, unix_ms() + 2_000);
    assert_eq!(ferry_rules(&lab.tech_ns).len(), 2);
    let expired = poll(Duration::from_secs(20), || {
        status_of(&lab.tech_ns, TECH, &socket)
            .iter()
            .any(|t| t["session_id"] == 9 && t["ended"]["cause"] == "expired")
    });
    assert!(expired, "{:?}\n{}", status_of(&lab.tech_ns, TECH, &socket), service.log());
    assert!(ferry_rules(&lab.tech_ns).is_empty(), "{:?}", ferry_rules(&lab.tech_ns));
    let out = ferry_as(TECH, None, &tech_home, &socket, &["status"], "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("down: expired"), "{}", text(&out));

    // A killed service leaves its rules behind; the next one removes them.
    tunnel_for(&lab.tech_ns, TECH, &socket, 10, &stand_in_keys.public, unix_ms() + 600_000);
    assert_eq!(ferry_rules(&lab.tech_ns).len(), 2);
    service.process.signal(Signal::SIGKILL).unwrap();
    service.process.wait_timeout(T).unwrap();
    assert_eq!(ferry_rules(&lab.tech_ns).len(), 2, "a killed service cannot clean up");
    service.process = Service::spawn(&lab.tech_ns, &socket);
    assert!(ferry_rules(&lab.tech_ns).is_empty(), "{:?}\n{}", ferry_rules(&lab.tech_ns), service.log());
    assert_eq!(status_of(&lab.tech_ns, TECH, &socket), Vec::<Value>::new());
    // Connecting again to a session replaces the tunnel; a clean stop takes
    // everything down too.
    tunnel_for(&lab.tech_ns, TECH, &socket, 11, &stand_in_keys.public, unix_ms() + 600_000);
    tunnel_for(&lab.tech_ns, TECH, &socket, 11, &stand_in_keys.public, unix_ms() + 600_000);
    let listed = status_of(&lab.tech_ns, TECH, &socket);
    let causes: Vec<&Value> = listed.iter().map(|t| &t["ended"]["cause"]).collect();
    assert_eq!(causes, [&Value::Null, &json!("replaced")], "{listed:?}");
    assert_eq!(ferry_rules(&lab.tech_ns).len(), 2);
    service.process.signal(Signal::SIGTERM).unwrap();
    assert!(service.process.wait_timeout(Duration::from_secs(15)).unwrap().success(), "{}", service.log());
    assert!(ferry_rules(&lab.tech_ns).is_empty());
    assert!(!socket.exists(), "the socket is removed on stop");
    drop(stand_in);
}

/// The whole technician flow with the CLI against the real cloud, a relay
/// and a stand-in gateway: login (refresh tokens rotated, stored 0600),
/// sessions, start by name, the wg-quick export, connect through the relay
/// with the service's candidates, traffic for the technician only; the
/// service's watch on the configuration: disconnect revokes it at the cloud,
/// the customer's switch-off and an end at the cloud take the tunnel down at
/// once with the reason, a cloud outage leaves it working; logout, TOTP.
#[test]
fn a_technician_works_a_session_with_the_cli() {
    let mut lab = GatewayLab::new(Options::default());
    lab.start_cloud_and_login();
    let tech = lab.create_technician("tech1");
    lab.start_relay();
    let gateway = lab.create_gateway("press line 3");
    let mut stand_in = StandInGateway::enrol_and_connect(&lab, &gateway.enrolment_token, true);
    lab.wait_gateway_at_cloud(gateway.id, true);
    let session = lab.create_session(gateway.id, &["plc-web", "echo"], &[tech.id], 600, false);
    let name = lab.session(session)["name"].as_str().unwrap().to_string();
    let service = Service::start(&lab.tech_ns);
    let socket = service.socket.clone();
    let homes = tempfile::tempdir().unwrap();
    std::fs::set_permissions(homes.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = home_of(homes.path(), TECH);
    let tech_ns = lab.tech_ns.clone();
    let ferry = |args: &[&str], stdin: &str| ferry_as(TECH, Some(&tech_ns), &home, &socket, args, stdin);

    // Not logged in yet.
    let out = ferry(&["sessions"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // A wrong password is the cloud's refusal, explained.
    let cloud = lab.cloud_url();
    let out = ferry(&["login", "--cloud", &cloud, "--user", "tech1", "--password-stdin"], "wrong\n");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the name or the password is wrong"),
        "{}",
        text(&out)
    );
    let out = ferry(
        &["login", "--cloud", &cloud, "--user", "tech1", "--password-stdin"],
        &format!("{TECH_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let credentials = home.join("config/ferry/credentials.json");
    let meta = std::fs::metadata(&credentials).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, TECH.uid));
    assert_eq!(std::fs::metadata(credentials.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
    let stored = || serde_json::from_slice::<Value>(&std::fs::read(&credentials).unwrap()).unwrap();
    assert_eq!((stored()["user"].as_str(), stored()["kind"].as_str()), (Some("tech1"), Some("login")));

    let out = ferry(&["sessions", "--json"], "");
    assert!(out.status.success(), "{}", text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["id"], session, "{listed}");
    assert_eq!(listed[0]["state"], "prepared");
    // Refused for the session's state: exit status 4, as the cloud's refusals.
    let out = ferry(&["connect", &session.to_string()], "");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ferry start"), "{}", text(&out));
    let out = ferry(&["start", &name], "");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("is active"),
        "{}",
        text(&out)
    );

    // The wg-quick export: a key made here, the file with it filled in.
    let (key_file, conf) = (home.join("press.key"), home.join("press.conf"));
    let out = ferry(
        &[
            "export",
            "wg-quick",
            &name,
            "--key-file",
            key_file.to_str().unwrap(),
            "--output",
            conf.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    for file in [&key_file, &conf] {
        assert_eq!(std::fs::metadata(file).unwrap().mode() & 0o777, 0o600, "{}", file.display());
    }
    let private = std::fs::read_to_string(&key_file).unwrap().trim().to_string();
    let exported = std::fs::read_to_string(&conf).unwrap();
    assert!(exported.contains(&format!("PrivateKey = {private}\n")), "{exported}");
    assert!(!exported.contains("__FERRY_PRIVATE_KEY__"), "{exported}");
    let endpoint = exported.lines().find_map(|l| l.strip_prefix("Endpoint = ")).unwrap_or_default();
    assert!(endpoint.starts_with(&format!("{RELAY_IP}:")), "{exported}");
    let exported_public = ferry_tunnel::PrivateKey::from_base64(&private).unwrap().public_key().to_base64();
    stand_in.wait_for_peer(&exported_public, Duration::from_secs(15));

    // The relays' STUN servers see the tunnel's own socket: the
    // server-reflexive candidate has its port.
    let (status, stun) = lab.api_from(&lab.tech_ns, "GET", "/api/v1/stun", Some(&tech.token), Value::Null);
    assert_eq!(status, 200, "{stun}");
    assert!(!stun["servers"].as_array().unwrap().is_empty(), "{stun}");
    let prepare = json!({"v": 1, "op": "prepare", "session_id": session, "stun_servers": stun["servers"]});
    let prepared = ask(&lab.tech_ns, TECH, &socket, prepare);
    let reflexive = prepared["reflexive"].as_array().cloned().unwrap_or_default();
    assert_eq!(reflexive.len(), 1, "{prepared}");
    let seen: SocketAddr = reflexive[0].as_str().unwrap().parse().unwrap();
    assert_eq!(seen.ip().to_string(), TECH_IP, "{prepared}");
    let host = prepared["candidates"].as_array().unwrap();
    assert!(host.contains(&json!(seen.to_string())), "the same socket: {prepared}");
    let cancel = json!({"v": 1, "op": "cancel", "prepare_id": prepared["prepare_id"]});
    assert_eq!(ask(&lab.tech_ns, TECH, &socket, cancel)["answer"], "done");

    // Connect: the service's key, through the relay.
    let out = ferry(&["connect", &name, "--wait", "0", "--json"], "");
    assert!(out.status.success(), "{}\n{}", text(&out), service.log());
    let tunnel: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tunnel["path"], "relay_udp", "{tunnel}");
    assert!(tunnel["peer_endpoint"].as_str().unwrap().starts_with(&format!("{RELAY_IP}:")), "{tunnel}");
    let web = tunnel["targets"].as_array().unwrap().iter().find(|t| t["name"] == "plc-web").unwrap()
        ["proxy_address"]
        .as_str()
        .unwrap()
        .to_string();
    let state = stand_in.wait_for_peer(tunnel["public_key"].as_str().unwrap(), Duration::from_secs(15));
    // The service's host candidates reached the gateway, with the tunnel's port.
    let candidates = &state.peers[0].candidates;
    assert!(candidates.iter().any(|c| c.ip().to_string() == TECH_IP && c.port() != 0), "{candidates:?}");
    let data_path = stand_in.data_path(&lab, &state);
    let page = eventually(Duration::from_secs(30), || get_as(&lab.tech_ns, TECH, &web, HTTP_PORT));
    assert_eq!(page.as_deref(), Ok(PLC_PAGE), "{}", service.log());
    assert!(get_as(&lab.tech_ns, COLLEAGUE, &web, HTTP_PORT).is_err(), "another user used the tunnel");
    let out = ferry(&["status", "--json"], "");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status[0]["last_handshake_ms"].is_u64() && status[0]["tx_bytes"].as_u64() > Some(0), "{status}");

    // The access token no longer works (as after its five minutes): the
    // command refreshes, and the rotated refresh token is stored.
    let before = stored()["refresh_token"].clone();
    let mut edited = stored();
    edited["access_token"] = json!("expired-or-forged");
    std::fs::write(&credentials, serde_json::to_vec(&edited).unwrap()).unwrap();
    let out = ferry(&["sessions"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(stored()["refresh_token"], before, "the refresh token rotated");
    assert_ne!(stored()["access_token"], "expired-or-forged");

    // The service watches the configuration at the cloud with its watch
    // token; `disconnect` revokes it there, and the gateway drops the peer.
    let watching = |config: &Value| {
        let config = config.clone();
        move || {
            let out = ferry(&["status", "--json"], "");
            let all: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let now = all
                .as_array()
                .and_then(|a| a.iter().find(|t| t["config_id"] == config["config_id"]).cloned());
            now.unwrap_or_default()
        }
    };
    let first = watching(&tunnel);
    assert!(poll(T, || first()["cloud"] == "watching"), "{}\n{}", first(), service.log());
    let out = ferry(&["disconnect", &name], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(first()["ended"]["reason"].as_str().unwrap().contains("revoked at the cloud"), "{}", first());
    stand_in.wait_without_peer(tunnel["public_key"].as_str().unwrap(), Duration::from_secs(10));
    assert!(get_as(&lab.tech_ns, TECH, &web, HTTP_PORT).is_err());

    // The customer switches off: the tunnel goes at once, and says why.
    let connect = || {
        let out = ferry(&["connect", &name, "--wait", "0", "--json"], "");
        assert!(out.status.success(), "{}\n{}", text(&out), service.log());
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let second = watching(&connect());
    assert!(poll(T, || second()["cloud"] == "watching"), "{}", second());
    stand_in.switch(false);
    assert!(poll(Duration::from_secs(10), || second()["ended"]["cause"] == "ended"), "{}", second());
    assert_eq!(second()["ended"]["reason"], "ended by the customer (switch off)");
    assert!(ferry_rules(&lab.tech_ns).is_empty(), "{:?}", ferry_rules(&lab.tech_ns));
    let out = ferry(&["status"], "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("down: ended by the customer"), "{}", text(&out));

    // A cloud outage leaves a working tunnel up; the watch comes back.
    stand_in.switch(true);
    lab.wait_gateway_at_cloud(gateway.id, true);
    let out = ferry(&["start", &name], "");
    assert!(out.status.success(), "{}", text(&out));
    let third_tunnel = connect();
    let state = stand_in.wait_for_peer(third_tunnel["public_key"].as_str().unwrap(), Duration::from_secs(15));
    drop(data_path);
    lab.gw_ns.exec("nft", &["delete", "table", "ip", "standin"]).unwrap();
    let _data_path = stand_in.data_path(&lab, &state);
    let page = eventually(Duration::from_secs(30), || get_as(&lab.tech_ns, TECH, &web, HTTP_PORT));
    assert_eq!(page.as_deref(), Ok(PLC_PAGE), "{}", service.log());
    let third = watching(&third_tunnel);
    assert!(poll(T, || third()["cloud"] == "watching"), "{}", third());
    lab.kill_cloud();
    let lost = poll(Duration::from_secs(60), || {
        third()["cloud"].as_str().is_some_and(|c| c.starts_with("cloud unreachable"))
    });
    assert!(lost, "{}\n{}", third(), service.log());
    assert_eq!(get_as(&lab.tech_ns, TECH, &web, HTTP_PORT).as_deref(), Ok(PLC_PAGE), "through the outage");
    assert!(third()["ended"].is_null(), "{}", third());
    assert!(lab.start_cloud().is_none());
    assert!(
        poll(Duration::from_secs(60), || third()["cloud"] == "watching"),
        "{}\n{}",
        third(),
        service.log()
    );
    let out = ferry(&["end", &name, "--json"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["state"], "ended");
    assert!(poll(Duration::from_secs(10), || third()["ended"]["cause"] == "ended"), "{}", third());
    assert_eq!(third()["ended"]["reason"], "ended by tech1");
    assert!(get_as(&lab.tech_ns, TECH, &web, HTTP_PORT).is_err());

    // Logout revokes at the cloud: the stored refresh token is refused.
    let refresh = stored()["refresh_token"].as_str().unwrap().to_string();
    let out = ferry(&["logout"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!credentials.exists());
    let (status, _) =
        lab.api_from(&lab.tech_ns, "POST", "/api/v1/auth/refresh", None, json!({"refresh_token": refresh}));
    assert_eq!(status, 401);
    let out = ferry(&["sessions"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    // An account with a second factor: the code comes after the password.
    let second = lab.create_technician("tech2");
    let (status, enrol) =
        lab.api_from(&lab.tech_ns, "POST", "/api/v1/me/totp", Some(&second.token), json!({}));
    assert_eq!(status, 200, "{enrol}");
    let totp = ferry_cloud::auth::totp::TotpState {
        secret: enrol["secret"].as_str().unwrap().to_string(),
        confirmed: true,
        last_step: 0,
    };
    let code = json!({"code": totp.code_at(unix_ms()).unwrap()});
    let (status, body) =
        lab.api_from(&lab.tech_ns, "POST", "/api/v1/me/totp/confirm", Some(&second.token), code);
    assert_eq!(status, 204, "{body}");
    let login = ["login", "--cloud", &cloud, "--user", "tech2", "--password-stdin"];
    let out = ferry(&login, &format!("{TECH_PASSWORD}\n"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no TOTP code on standard input"),
        "{}",
        text(&out)
    );
    // The next step's code: the confirmation spent this step's (the cloud
    // takes one step of skew).
    let next = totp.code_at(unix_ms() + 30_000).unwrap();
    let out = ferry(&login, &format!("{TECH_PASSWORD}\n{next}\n"));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stored()["user"], "tech2");

    // A script with an API token an administrator made.
    let (status, created) =
        lab.admin("POST", "/api/v1/tokens", json!({"name": "ci", "scopes": ["sessions:read"]}));
    assert_eq!(status, 201, "{created}");
    let script_home = home_of(homes.path(), COLLEAGUE);
    let token_file = script_home.join("token");
    std::fs::write(&token_file, created["secret"].as_str().unwrap()).unwrap();
    std::os::unix::fs::chown(&token_file, Some(COLLEAGUE.uid), Some(COLLEAGUE.uid)).unwrap();
    let script = |args: &[&str]| ferry_as(COLLEAGUE, Some(&tech_ns), &script_home, &socket, args, "");
    let out = script(&["login", "--cloud", &cloud, "--token-file", token_file.to_str().unwrap()]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("with an API token"),
        "{}",
        text(&out)
    );
    let out = script(&["sessions", "--all", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.as_array().unwrap().iter().any(|s| s["id"] == session), "{listed}");
    let out = script(&["logout"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!script_home.join("config/ferry/credentials.json").exists());
}

/// `--help` of every command says what it does.
#[test]
fn every_command_explains_itself() {
    let help = |args: &[&str]| {
        let out = ferry_tests::bin("ferry").args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&[]);
    for needle in ["sudo ferry install", "Exit status:", "  3  not logged in", "--socket <PATH>"] {
        assert!(top.contains(needle), "{needle} in\n{top}");
    }
    for (command, needle) in [
        (&["login"][..], "TOTP code"),
        (&["login"], "FERRY_API_TOKEN"),
        (&["logout"], "revoke"),
        (&["sessions"], "released to them"),
        (&["start"], "customer's approval"),
        (&["end"], "for everyone connected"),
        (&["export"], "wg-quick"),
        (&["export", "wg-quick"], "private key is filled in here"),
        (&["connect"], "never leaves the service"),
        (&["disconnect"], "all your tunnels"),
        (&["status"], "last handshake"),
        (&["status"], "time left"),
        (&["install"], "usermod -aG ferry"),
        (&["service"], "--group-id <GID>"),
    ] {
        let text = help(command);
        assert!(text.contains(&format!("Usage: ferry {}", command.join(" "))), "{command:?}:\n{text}");
        assert!(text.contains(needle), "{needle:?} in `ferry {} --help`:\n{text}", command.join(" "));
    }
    let wrong = ferry_tests::bin("ferry").arg("conect").output().unwrap();
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
}

/// `ferry install` into a folder: binary, unit and group; a second run finds
/// everything right and changes nothing.
#[test]
fn install_twice_changes_nothing_the_second_time() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    for file in ["group", "gshadow", "passwd", "shadow"] {
        std::fs::write(etc.join(file), "").unwrap();
    }
    let install = || {
        let out = ferry_tests::bin("ferry")
            .args(["install", "--root", root.path().to_str().unwrap(), "--no-systemctl"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let first = install();
    assert!(first.contains("created  group ferry") && first.contains("usermod -aG ferry"), "{first}");
    let unit = root.path().join("etc/systemd/system/ferry-client.service");
    let binary = root.path().join("usr/local/bin/ferry");
    assert_eq!(std::fs::metadata(&binary).unwrap().mode() & 0o777, 0o755);
    assert_eq!(std::fs::metadata(&unit).unwrap().mode() & 0o777, 0o644);
    assert_eq!(std::fs::read(&binary).unwrap(), std::fs::read(bin_path("ferry")).unwrap());
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/ferry-client.service"));
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), shipped.unwrap());
    let groups = std::fs::read_to_string(etc.join("group")).unwrap();
    assert_eq!(groups.lines().filter(|l| l.starts_with("ferry:")).count(), 1, "{groups}");

    let unit_file = std::fs::metadata(&unit).unwrap().ino();
    let second = install();
    assert_eq!(second.matches("up to date").count(), 2, "{second}");
    assert!(second.contains("exists  group ferry"), "{second}");
    assert_eq!(std::fs::metadata(&unit).unwrap().ino(), unit_file, "the unit was not rewritten");
    assert_eq!(std::fs::read_to_string(etc.join("group")).unwrap(), groups);
}
