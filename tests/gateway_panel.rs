//! The gateway's local panel in the gateway lab (see `gateway_lab.rs`): the
//! real cloud and the real `ferry-gateway` behind the site's NAT router,
//! the panel on the machine network's side.
//!
//! - Nothing on the uplink side reaches it: not the internet (the gateway's
//!   uplink address, the site's public address), and not a host on the
//!   customer's network that routes the machine network through the
//!   gateway's uplink (Linux would accept that for the LAN address: the
//!   panel's socket is bound to the LAN interface). A device on the machine
//!   network gets the login page.
//! - What the customer does on the panel is what the command line does: the
//!   same events reach the cloud's audit log (switch, approve, deny, end),
//!   and the panel's logins are audited there too.
//!
//! Run as root after `cargo build --bins`:
//! `cargo test -p ferry-tests --test gateway_panel`.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use ferry_lab::Netns;
use ferry_tests::{
    gateway_lab::*,
    panel::{PANEL_PORT, header, https, panel_addr},
};
use serde_json::Value;

const PANEL_PASSWORD: &str = "plant operator passphrase";
const T: Duration = Duration::from_secs(5);

/// A browser on a device of the machine network, logged in to the panel.
struct Operator<'a> {
    ns: &'a Netns,
    pin: String,
    cookie: String,
    csrf: String,
}

impl<'a> Operator<'a> {
    fn login(ns: &'a Netns, pin: &str) -> Operator<'a> {
        let origin = format!("https://{}", panel_addr());
        let form = format!("password={}", PANEL_PASSWORD.replace(' ', "+"));
        let (status, headers, body) =
            https(ns, panel_addr(), pin, "POST", "/login", &[("Origin", &origin)], Some(&form)).unwrap();
        assert_eq!(status, 303, "{body}");
        let set = header(&headers, "set-cookie");
        let cookie = set.split(';').next().unwrap().to_string();
        assert!(cookie.starts_with("ferry_panel="), "{set}");
        let mut operator = Operator { ns, pin: pin.to_string(), cookie, csrf: String::new() };
        let page = operator.page();
        let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
        operator.csrf = page[at..at + 64].to_string();
        operator
    }

    fn page(&self) -> String {
        let (status, _, body) =
            https(self.ns, panel_addr(), &self.pin, "GET", "/", &[("Cookie", &self.cookie)], None).unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A form post as the panel's page makes it; returns the status.
    fn post(&self, path: &str, fields: &str) -> u16 {
        let origin = format!("https://{}", panel_addr());
        let form = format!("csrf={}{fields}", self.csrf);
        let headers = [("Cookie", self.cookie.as_str()), ("Origin", origin.as_str())];
        let (status, _, body) =
            https(self.ns, panel_addr(), &self.pin, "POST", path, &headers, Some(&form)).unwrap();
        assert_eq!(status, 303, "POST {path}: {body}");
        status
    }
}

/// A lab with the cloud, the gateway enrolled and running with its panel
/// password set, and a technician.
fn site() -> (GatewayLab, GatewayRecord, User) {
    let mut lab = GatewayLab::new(Options::default());
    lab.start_cloud_and_login();
    let gateway = lab.create_gateway("press line 4");
    lab.enroll(&gateway.enrolment_token);
    lab.set_panel_password(PANEL_PASSWORD);
    lab.start_gateway();
    lab.wait_gateway_at_cloud(gateway.id, false);
    let tech = lab.create_technician("tech1");
    (lab, gateway, tech)
}

/// Connecting from `ns` to `ip:port` fails (refused, unreachable or no
/// answer within [`T`]).
fn assert_unreachable(ns: &Netns, ip: &str, port: u16, what: &str) {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    let connected = ns.run_in(move || TcpStream::connect_timeout(&addr, T).map(|_| ())).unwrap();
    assert!(connected.is_err(), "{what}: {addr} accepted a connection from {}", ns.name());
}

#[test]
fn the_panel_answers_on_the_machine_network_and_nowhere_on_the_uplink() {
    let (lab, _, _) = site();
    assert!(lab.gateway_log().contains("local panel listening"), "{}", lab.gateway_log());
    let pin = lab.panel_pin();

    // A device of the machine network gets the login page, over TLS with
    // the certificate `panel status` names.
    let (status, headers, body) =
        https(&lab.probe_ns, panel_addr(), &pin, "GET", "/login", &[], None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("name=\"password\""), "{body}");
    assert!(header(&headers, "content-security-policy").contains("frame-ancestors 'none'"));

    // The internet: the gateway's uplink address and the site's public one.
    assert_unreachable(&lab.inet, GW_UPLINK_IP, PANEL_PORT, "the gateway's uplink address from the internet");
    assert_unreachable(&lab.inet, SITE_WAN_IP, PANEL_PORT, "the site's public address from the internet");
    assert_unreachable(&lab.inet, GW_LAN_IP, PANEL_PORT, "the LAN address from the internet");

    // The customer's network, behind the uplink, even with a route to the
    // machine network through the gateway: the gateway takes the packets
    // (it answers a ping to its LAN address that way), but not the panel.
    let router = &lab.site_router().ns;
    router.ip(&["route", "add", "192.168.50.0/24", "via", GW_UPLINK_IP]).unwrap();
    let ping = router.output("ping", &["-c", "1", "-W", "3", GW_LAN_IP]).unwrap();
    assert!(
        ping.status.success(),
        "the premise: the gateway accepts packets for its LAN address on its uplink\n{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert_unreachable(router, GW_LAN_IP, PANEL_PORT, "the LAN address through the uplink");
    assert_unreachable(router, GW_UPLINK_IP, PANEL_PORT, "the uplink address from the customer's network");

    // And the LAN still gets it after all that.
    let (status, _, _) = https(&lab.probe_ns, panel_addr(), &pin, "GET", "/login", &[], None).unwrap();
    assert_eq!(status, 200);
}

/// The audit entries of the gateway for `action`, oldest first, as
/// `(allowed, session, detail)`.
fn audited(lab: &GatewayLab, gateway: u64, action: &str) -> Vec<(bool, String, String)> {
    lab.audit(&format!("action={action}"))
        .iter()
        .filter(|e| e["actor"] == format!("gateway:{gateway}"))
        .map(|e| {
            (
                e["allowed"].as_bool().unwrap_or_default(),
                e["session"].as_str().unwrap_or_default().to_string(),
                e["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn wait_audited(lab: &GatewayLab, gateway: u64, action: &str, count: usize) -> Vec<(bool, String, String)> {
    let mut last = Vec::new();
    let reached = poll(Duration::from_secs(20), || {
        last = audited(lab, gateway, action);
        last.len() >= count
    });
    assert!(reached, "{count} {action} entries expected, the cloud has {last:?}\n{}", lab.gateway_log());
    last
}

/// Waits until the gateway lists session `id` in `state`.
fn wait_gateway_state(lab: &GatewayLab, id: u64, state: &str) {
    let mut last = Value::Null;
    let reached = poll(Duration::from_secs(20), || {
        last = lab.gateway_sessions();
        last.as_array().is_some_and(|l| l.iter().any(|s| s["id"] == id && s["state"] == state))
    });
    assert!(reached, "the gateway does not show session {id} {state}: {last}");
}

#[test]
fn what_the_customer_does_on_the_panel_is_audited_as_the_command_lines() {
    let (lab, gateway, mut tech) = site();
    let pin = lab.panel_pin();
    let operator = Operator::login(&lab.probe_ns, &pin);
    let logins = wait_audited(&lab, gateway.id, "gateway.panel_login", 1);
    assert!(logins[0].0, "{logins:?}");
    assert!(logins[0].2.contains(&format!("from {PROBE_IP}: success")), "{logins:?}");

    // The switch: command line, panel, panel, command line, command line.
    lab.remote("on");
    lab.wait_gateway_at_cloud(gateway.id, true);
    operator.post("/switch", "&on=off");
    lab.wait_gateway_at_cloud(gateway.id, false);
    assert!(!lab.switch_status());
    operator.post("/switch", "&on=on");
    lab.wait_gateway_at_cloud(gateway.id, true);
    lab.remote("off");
    lab.wait_gateway_at_cloud(gateway.id, false);
    lab.remote("on");
    let switches = wait_audited(&lab, gateway.id, "gateway.switch", 5);
    let positions: Vec<&str> = switches.iter().map(|(_, _, d)| d.as_str()).collect();
    assert_eq!(positions, ["on", "off", "on", "off", "on"], "{switches:?}");
    assert!(switches.iter().all(|(allowed, _, _)| *allowed));

    // Approve and deny, one each way, then end one each way.
    let ids: Vec<u64> =
        (0..4).map(|_| lab.create_session(gateway.id, &["plc-web"], &[tech.id], 600, true)).collect();
    for &id in &ids {
        let (status, body) = lab.start_session(&mut tech, id);
        assert_eq!(status, 200, "{body}");
        wait_gateway_state(&lab, id, "waiting_for_approval");
    }
    let page = operator.page();
    assert!(page.contains(&format!("data-session=\"{}\"", ids[1])), "the panel lists the waiting session");
    assert!(page.contains("Asked by</dt><dd class=\"who\">tech1"), "and who asks");
    lab.gateway_ok(&["approve", &ids[0].to_string()]);
    operator.post(&format!("/sessions/{}/approve", ids[1]), "");
    lab.gateway_ok(&["deny", &ids[2].to_string()]);
    operator.post(&format!("/sessions/{}/deny", ids[3]), "");
    for (id, state) in [(ids[0], "active"), (ids[1], "active"), (ids[2], "ended"), (ids[3], "ended")] {
        lab.wait_session_state(id, state, Duration::from_secs(20));
    }
    wait_gateway_state(&lab, ids[0], "active");
    wait_gateway_state(&lab, ids[1], "active");
    lab.gateway_ok(&["end", &ids[0].to_string()]);
    operator.post(&format!("/sessions/{}/end", ids[1]), "");
    for id in [ids[0], ids[1]] {
        let session = lab.wait_session_state(id, "ended", Duration::from_secs(20));
        assert_eq!(
            session["end_reason"],
            serde_json::json!({"by": "customer", "session_only": true}),
            "{session}"
        );
    }
    assert!(lab.switch_status(), "ending one session leaves the switch on");

    // Each pair: the same entry but for the session.
    for (action, first, second) in [("session.approve", 0, 1), ("session.deny", 2, 3), ("session.end", 0, 1)]
    {
        let entries = wait_audited(&lab, gateway.id, action, 2);
        let of = |i: usize| {
            let id = ids[i].to_string();
            entries
                .iter()
                .find(|(_, s, _)| *s == id)
                .cloned()
                .unwrap_or_else(|| panic!("{action} {id}: {entries:?}"))
        };
        let (cli, panel) = (of(first), of(second));
        assert_eq!(
            (cli.0, &cli.2),
            (panel.0, &panel.2),
            "{action}: the command line's {cli:?}, the panel's {panel:?}"
        );
        assert!(cli.0, "{action} allowed");
    }
    let ended = wait_audited(&lab, gateway.id, "session.end", 2);
    assert!(ended.iter().all(|(_, _, d)| d == "ended by the customer at the gateway"), "{ended:?}");
}
