//! `ferry-relay` on the cloud's relay control channel: it connects out with
//! its relay token, stays connected, and its health reaches the cloud; a
//! wrong token is refused and the relay keeps retrying with backoff. A relay
//! serving its WebSocket listener over TLS reports its certificate's pin,
//! which the cloud hands to the gateway and the technician.

use std::{path::Path, time::Duration};

use ferry_control::{
    GatewayId, SigningKey, WgKey,
    client::{self, Channel},
    gateway::ToGateway,
    pin::{fingerprint, format_fingerprint},
};
use ferry_lab::Process;
use ferry_tests::{
    bin,
    cloud::{admin_token, call, start},
    wg::wait_for,
};
use serde_json::json;

const PASSWORD: &str = "relay channel test password";

/// Registers a relay at the cloud; returns its id and token.
fn register_relay(cloud: std::net::SocketAddr, admin: &str, name: &str) -> (u64, String) {
    let (status, created) = call(cloud, "POST", "/api/v1/relays", Some(admin), json!({ "name": name }));
    assert_eq!(status, 201, "{created}");
    (created["relay"]["id"].as_u64().unwrap(), created["token"].as_str().unwrap().to_string())
}

/// The relay's health as the cloud's admin API shows it.
fn relay_health(cloud: std::net::SocketAddr, admin: &str, id: u64) -> serde_json::Value {
    let (_, relays) = call(cloud, "GET", "/api/v1/relays", Some(admin), json!(null));
    relays.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap()["health"].clone()
}

/// `extra`: the relay's WebSocket arguments (`--websocket off`, or a
/// listener with its URL and TLS files), and its STUN listener if any (off
/// unless `extra` names one).
fn relay(dir: &Path, cloud: std::net::SocketAddr, id: u64, token: &str, extra: &[&str]) -> Process {
    let token_file = dir.join(format!("relay-{id}.token"));
    std::fs::write(&token_file, token).unwrap();
    let mut cmd = bin("ferry-relay");
    cmd.args([
        "run",
        "--xdp",
        "off",
        "--public-ipv4",
        "127.0.0.1",
        "--ports",
        &format!("{}-{}", 41000 + id * 100, 41099 + id * 100),
        "--metrics",
        "off",
        "--cloud-url",
        &format!("ws://{cloud}/api/v1/control/relay"),
        "--cloud-relay-id",
        &id.to_string(),
        "--cloud-token-file",
        token_file.to_str().unwrap(),
    ]);
    if !extra.contains(&"--stun") {
        cmd.args(["--stun", "off"]);
    }
    cmd.args(extra);
    let mut process = Process::spawn(&mut cmd, dir).unwrap();
    process.wait_for_output("ferry-relay ready", Duration::from_secs(20)).unwrap();
    process
}

#[test]
fn a_relay_connects_with_its_token_and_reports_health() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&dir.path().join("cloud"));
    let admin = admin_token(cloud.addr, &cloud.one_time_password().unwrap(), PASSWORD);
    let (id, token) = register_relay(cloud.addr, &admin, "relay-a");

    let mut good = relay(dir.path(), cloud.addr, id, &token, &["--websocket", "off"]);
    let health = || relay_health(cloud.addr, &admin, id);
    wait_for(|| health()["online"] == true, "the relay to come online at the cloud");
    let seen = health();
    assert_eq!(seen["udp"], format!("127.0.0.1:{}", 41000 + id * 100));
    assert_eq!(seen["software_version"], env!("CARGO_PKG_VERSION"));
    assert!(seen["capacity"].as_u64().unwrap() > 0);
    good.wait_for_output("connected to the cloud", Duration::from_secs(10)).unwrap();

    // A relay with a made-up token is refused and keeps retrying.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let mut bad = relay(dir.path(), cloud.addr, id + 1, &forged, &["--websocket", "off"]);
    bad.wait_for_output("reconnecting to the cloud", Duration::from_secs(20)).unwrap();
    assert!(!bad.stderr().contains("connected to the cloud"), "{}", bad.stderr());

    good.kill();
    wait_for(|| health()["online"] == false, "the cloud to see the relay leave");
}

/// A STUN Binding request (RFC 8489) to `server`; whether an answer to it
/// (a Binding success response with the same transaction id) comes back.
fn stun_answers(server: std::net::SocketAddr) -> bool {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(b"ferry-stun12");
    let mut answer = [0u8; 512];
    (0..10).any(|_| {
        socket.send_to(&request, server).unwrap();
        matches!(socket.recv_from(&mut answer), Ok((n, _)) if n >= 20 && answer[..2] == [0x01, 0x01] && answer[8..20] == request[8..20])
    })
}

/// Relays tell the cloud where their STUN servers are; the cloud lists the
/// connected ones for clients, and they answer there.
#[test]
fn relays_tell_the_cloud_their_stun_servers() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&dir.path().join("cloud"));
    let admin = admin_token(cloud.addr, &cloud.one_time_password().unwrap(), PASSWORD);
    let (a, token_a) = register_relay(cloud.addr, &admin, "relay-a");
    let (b, token_b) = register_relay(cloud.addr, &admin, "relay-b");
    let stun = || {
        let (status, body) = call(cloud.addr, "GET", "/api/v1/stun", Some(&admin), json!(null));
        assert_eq!(status, 200, "{body}");
        body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(stun().is_empty());
    // The listener on a port of the kernel's choosing: the relay reports the
    // one it got, with its public address.
    let mut first =
        relay(dir.path(), cloud.addr, a, &token_a, &["--websocket", "off", "--stun", "127.0.0.1:0"]);
    wait_for(|| stun().len() == 1, "the relay's STUN server at the cloud");
    let server: std::net::SocketAddr = stun()[0].parse().unwrap();
    assert_eq!(server.ip().to_string(), "127.0.0.1");
    assert_ne!(server.port(), 0);
    assert!(stun_answers(server), "the advertised STUN server answers");
    // Behind a port forward: what --stun-public says.
    let _second = relay(
        dir.path(),
        cloud.addr,
        b,
        &token_b,
        &["--websocket", "off", "--stun", "127.0.0.1:0", "--stun-public", "192.0.2.9:13478"],
    );
    wait_for(|| stun().len() == 2, "the second relay's STUN server at the cloud");
    assert_eq!(stun(), [server.to_string(), "192.0.2.9:13478".to_string()], "by relay id");
    // A relay that goes is no longer listed.
    first.kill();
    wait_for(|| stun() == ["192.0.2.9:13478"], "the cloud to drop the first relay's STUN server");
}

#[test]
fn a_tls_relay_hands_its_pin_through_the_cloud_to_gateway_and_technician() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = start(&dir.path().join("cloud"));
    let admin = admin_token(cloud.addr, &cloud.one_time_password().unwrap(), PASSWORD);
    let (relay_id, relay_token) = register_relay(cloud.addr, &admin, "relay-tls");

    // A self-signed certificate, as relays are expected to use.
    let certified = rcgen::generate_simple_self_signed(vec!["relay.example".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let pin = format_fingerprint(&fingerprint(certified.cert.der()));
    // Nothing connects to the listener here: what counts is the URL and pin
    // the relay advertises. It listens on a port of the kernel's choosing,
    // so the test needs no particular port to be free.
    let url = "wss://relay.example/".to_string();
    let _relay = relay(
        dir.path(),
        cloud.addr,
        relay_id,
        &relay_token,
        &[
            "--websocket",
            "127.0.0.1:0",
            "--websocket-url",
            &url,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let health = || relay_health(cloud.addr, &admin, relay_id);
    wait_for(|| health()["online"] == true, "the relay to come online at the cloud");
    assert_eq!(
        (health()["websocket_url"].clone(), health()["websocket_pin"].clone()),
        (json!(url), json!(pin))
    );

    // A gateway on its control channel, switched on, and a technician who
    // starts a session and asks for a configuration.
    let (status, gateway) = call(
        cloud.addr,
        "POST",
        "/api/v1/gateways",
        Some(&admin),
        json!({"name": "press", "site": "plant 1", "targets": [
            {"name": "plc", "address": "192.168.0.10", "protocol": "tcp", "ports": [{"first": 502, "last": 502}]}
        ]}),
    );
    assert_eq!(status, 201, "{gateway}");
    let identity = SigningKey::from_bytes(&[7; 32]);
    let identity_hex: String =
        identity.verifying_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let enrolment = json!({"token": gateway["enrolment"]["token"], "identity_key": identity_hex});
    let (status, enrolled) = call(cloud.addr, "POST", "/api/v1/enrol", None, enrolment);
    assert_eq!(status, 200, "{enrolled}");
    let gateway_id = enrolled["gateway_id"].as_u64().unwrap();
    let control = format!("ws://{}{}", cloud.addr, enrolled["control_path"].as_str().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut channel = runtime.block_on(async {
        let mut channel = Channel::new(client::connect(&control, None).await.unwrap());
        client::gateway_handshake(
            &mut channel,
            &identity,
            GatewayId(gateway_id),
            "test",
            true,
            WgKey([1; 32]),
            None,
        )
        .await
        .unwrap();
        channel
    });

    let tech = json!({"name": "tech", "role": "remote_connect_user", "password": PASSWORD});
    let (status, user) = call(cloud.addr, "POST", "/api/v1/users", Some(&admin), tech);
    assert_eq!(status, 201, "{user}");
    let (status, login) =
        call(cloud.addr, "POST", "/api/v1/auth/login", None, json!({"name": "tech", "password": PASSWORD}));
    assert_eq!(status, 200, "{login}");
    let tech_token = login["access_token"].as_str().unwrap();
    let session = json!({"name": "plc update", "gateway_id": gateway_id, "targets": ["plc"],
        "released_to": [user["user"]["id"]], "max_duration_s": 600, "approval_required": false});
    let (status, session) = call(cloud.addr, "POST", "/api/v1/sessions", Some(&admin), session);
    assert_eq!(status, 201, "{session}");
    let session_id = session["id"].as_u64().unwrap();
    let (status, started) = call(
        cloud.addr,
        "POST",
        &format!("/api/v1/sessions/{session_id}/start"),
        Some(tech_token),
        json!({}),
    );
    assert_eq!(status, 200, "{started}");
    let (status, config) = call(
        cloud.addr,
        "POST",
        &format!("/api/v1/sessions/{session_id}/config"),
        Some(tech_token),
        json!({"public_key": WgKey([2; 32]).to_string()}),
    );
    assert_eq!(status, 200, "{config}");
    // The technician's view, for `ferry-relay ws-bridge --pin`.
    assert_eq!(
        (config["relay"]["websocket_url"].clone(), config["relay"]["websocket_pin"].clone()),
        (json!(url), json!(pin))
    );

    // The gateway's desired state binds the peer to the relay with its pin.
    let binding = runtime.block_on(async {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(20), channel.recv::<ToGateway>()).await;
            match next.expect("a desired state with the relayed peer").unwrap() {
                Some(ToGateway::DesiredState(state)) => {
                    let relayed = state.sessions.iter().flat_map(|s| &s.peers).find_map(|p| p.relay.clone());
                    if let Some(binding) = relayed {
                        return binding;
                    }
                }
                Some(_) => {}
                None => panic!("the cloud closed the gateway's channel"),
            }
        }
    });
    assert_eq!(binding.websocket_url, url);
    assert_eq!(binding.websocket_pin, Some(pin));
}
