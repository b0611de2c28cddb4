//! The gateway lab of the end-to-end tests: the world of `ferry-world`
//! (see its crate docs for the topology and how to drive it), under the name
//! the tests know it by, and the assertions the tests make in it.
//!
//! Run as root after `cargo build --bins`:
//! `cargo test -p ferry-tests --test gateway_lab_infra` (passes without the
//! daemon, with a stand-in gateway for the session path) and
//! `cargo test -p ferry-tests --test gateway_e2e` (the daemon).

use std::time::{Duration, Instant};

use ferry_lab::Netns;
pub use ferry_world::EchoLoop;
pub use ferry_world::{
    GatewayRecord, Options, PANEL_PORT, Server, Site, TechTunnel, Technician, User, addresses::*,
    echo_round_trip, eventually, http_get, http_get_path, metric_value, panel_addr, parse_targets, poll,
    problem_type, switch_word, tcp_exchange, unix_ms, wait_until,
};

/// The world as the tests call it.
pub type GatewayLab = ferry_world::World;

/// Asserts that nothing answers from `ip:port` (connection refused, reset,
/// timed out, or no bytes back) within `timeout`: a bounded wait for a
/// behaviour, not a speed measurement.
pub fn assert_no_answer(ns: &Netns, ip: &str, port: u16, timeout: Duration, what: &str) {
    let probe = b"GET / HTTP/1.0\r\n\r\nferry probe\n";
    if let Ok(answer) = tcp_exchange(ns, ip, port, probe, Some(1), timeout) {
        panic!("{what}: {ip}:{port} answered from {}: {:?}", ns.name(), String::from_utf8_lossy(&answer));
    }
}

/// Asserts that a TCP connection from `from` (a device in the machine
/// network) toward `ip:port` (for example the technician's tunnel address,
/// where `listener` listens) fails within `timeout`, that the listener saw
/// no connection, and that a ping gets no answer either.
pub fn assert_lan_cannot_reach(from: &Netns, ip: &str, port: u16, listener: &Server, timeout: Duration) {
    let before = listener.accepted();
    let result = tcp_exchange(from, ip, port, b"from the machine network\n", Some(1), timeout);
    assert!(result.is_err(), "{} reached {ip}:{port}: {result:?}", from.name());
    assert_eq!(
        listener.accepted(),
        before,
        "the listener on {ip}:{port} accepted a connection from {}",
        from.name()
    );
    let ping = from.output("ping", &["-c", "2", "-i", "0.3", "-W", "1", ip]).unwrap();
    assert!(!ping.status.success(), "{} pings {ip}: {}", from.name(), String::from_utf8_lossy(&ping.stdout));
}

/// Both whitelisted services answer through the tunnel, the rest does not,
/// and the technician's own LAN stays theirs.
pub fn assert_whitelist(lab: &GatewayLab, tunnel: &TechTunnel) {
    let tech = &lab.tech_ns;
    let (web, echo) = (tunnel.proxy("plc-web"), tunnel.proxy("echo"));
    assert_ne!(web, TARGET_A_IP, "a proxy address, not the machine's own");
    assert_eq!(http_get(tech, web, HTTP_PORT, Duration::from_secs(5)).unwrap(), PLC_PAGE);
    eventually(Duration::from_secs(5), || echo_round_trip(tech, echo, ECHO_PORT, Duration::from_secs(5)))
        .unwrap();
    // Same target, another port with a listener behind it.
    assert_no_answer(tech, web, OTHER_HTTP_PORT, Duration::from_secs(3), "plc-web's port 8081");
    // The other target's port that no session whitelists.
    assert_no_answer(tech, echo, OTHER_ECHO_PORT, Duration::from_secs(3), "echo's port 7001");
    // Overlap: 192.168.50.10 is still the technician's own home device.
    assert_eq!(http_get(tech, HOME_DEVICE_IP, HTTP_PORT, Duration::from_secs(5)).unwrap(), HOME_PAGE);
    let route = tech.ip(&["route", "get", HOME_DEVICE_IP]).unwrap();
    assert!(route.contains(&lab.tech_lan_if), "{route}");
}

/// `remote off` while `echo` runs through a session, and the issue's
/// requirement that switching off stops traffic within 1 s: no echo answer
/// arrives more than 1 s after `remote off` returned (a behavioural bound,
/// the customer's switch must act at once; not a speed test).
pub fn switch_off_stops(lab: &GatewayLab, echo: EchoLoop) {
    lab.remote("off");
    let off = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    let late = echo.answers_after(off + Duration::from_secs(1));
    assert_eq!(late, 0, "{late} echo answers arrived more than 1 s after `remote off`");
}
