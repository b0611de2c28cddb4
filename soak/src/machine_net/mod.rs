//! Issue 18's first invariant, from a capture: no packet reaches a machine
//! that a session live at that moment does not whitelist, and nothing
//! reaches the machine network while the customer's switch is off or after
//! a session ended. Every frame the machine network delivers
//! ([`crate::capture`]) is checked against the sessions' history the
//! workload records ([`History`]): when each session could first carry
//! traffic, when it ended, the entries it whitelists, and when the switch
//! was off. Every frame falls in a named class or is a breach; nothing is
//! let through by a blanket rule.

mod check;
mod history;
mod packet;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ferry_lab::Netns;
use serde_json::Value;

pub use self::{
    check::{CLASSES, Checker, Network},
    history::History,
    packet::{Frame, L4, Packet, Quoted},
};
use crate::{
    capture::Capture,
    soak::{Outcome, Soak},
};

/// How long after an end, and after the switch went off, the gateway's
/// packets may still reach a machine: the bound docs/gateway.md promises
/// for the switch and the customer's end, and the soak's echo loops check
/// for every end (for an end at the cloud, counted from the gateway
/// dropping the session, as the workload records it).
pub const SLACK: Duration = Duration::from_secs(1);

/// The bridge of the world's machine network (its switch namespace).
const BRIDGE: &str = "br0";

/// The capture on site `index`'s machine network, for a gateway with
/// `targets`.
pub fn start(world: &ferry_world::World, index: usize, targets: &Value) -> Result<MachineNet, String> {
    let site = world.site(index);
    let ip = |s: &str| s.parse::<Ipv4Addr>().map_err(|e| format!("{s}: {e}"));
    let network = Network {
        gateway: ip(site.addrs.gw_lan_ip)?,
        machines: vec![
            ("target-a", ip(site.addrs.target_a_ip)?),
            ("target-b", ip(site.addrs.target_b_ip)?),
            // The world's probe host: nothing of the soak's uses it, so
            // its traffic is checked like any machine's.
            ("probe", ip(site.addrs.probe_ip)?),
        ],
    };
    MachineNet::start(site.lan_ns, BRIDGE, network, targets, SLACK)
}

impl Soak {
    /// The packets captured since the last step, against the history so
    /// far.
    pub fn check_machine_net(&mut self) -> Outcome {
        for g in 0..self.gateways.len() {
            self.stats.checks += 1;
            let checked = self.gateways[g].machine_net.check();
            for note in self.gateways[g].machine_net.take_notable() {
                self.event(format!("gateway {}'s machine network: {note}", g + 1));
            }
            self.count_machine_packets();
            checked.map_err(|breach| format!("gateway {}'s machine network: {breach}", g + 1))?;
        }
        Ok(())
    }

    /// The packets checked on every machine network, by class.
    fn count_machine_packets(&mut self) {
        let mut total = (0, BTreeMap::new());
        for (g, gateway) in self.gateways.iter().enumerate() {
            let (n, counts) = gateway.machine_net.counts();
            total.0 += n;
            for (class, k) in counts {
                *total.1.entry(class).or_default() += k;
            }
            self.stats.machine_packets_by_gateway.insert(g, n);
        }
        self.stats.machine_packets = total;
    }

    /// At the end, every session ended: every packet of the run again,
    /// against the whole history (an end the workload recorded after the
    /// step that saw its packets counts now).
    pub fn check_machine_net_all(&mut self) -> Outcome {
        // The last frames reach the reader.
        std::thread::sleep(Duration::from_millis(500));
        for g in 0..self.gateways.len() {
            self.stats.checks += 1;
            let checked = self.gateways[g].machine_net.check_all();
            self.count_machine_packets();
            for note in self.gateways[g].machine_net.take_notable() {
                self.event(format!("gateway {}'s machine network: {note}", g + 1));
            }
            let (n, counts) = self.gateways[g].machine_net.counts();
            let classes: Vec<String> = counts.iter().map(|(class, n)| format!("{class} {n}")).collect();
            self.event(format!(
                "gateway {}'s machine network's capture, checked again against the whole history: {n} packets ({})",
                g + 1,
                classes.join(", ")
            ));
            checked.map_err(|breach| format!("gateway {}'s machine network: {breach}", g + 1))?;
        }
        let cpu = crate::capture::cpu_time().map_or("unknown".into(), |t| format!("{:.2}s", t.as_secs_f64()));
        self.event(format!("the captures' threads used {cpu} of CPU"));
        Ok(())
    }
}

/// The capture, the history the workload records, and the check after
/// every step (on the packets captured since) and at the end (every
/// packet again, against the whole history: an end the workload learns
/// late, a short session's expiry, counts then).
pub struct MachineNet {
    capture: Capture,
    pub history: History,
    network: Network,
    slack: Duration,
    checker: Checker,
    packets: Vec<Packet>,
}

impl MachineNet {
    /// Starts the capture on the switch in `lan_ns` (its bridge `bridge`),
    /// for a gateway with `targets`.
    pub fn start(
        lan_ns: &Netns,
        bridge: &str,
        network: Network,
        targets: &Value,
        slack: Duration,
    ) -> Result<MachineNet, String> {
        let history = History::new(targets)?;
        let capture = Capture::start(lan_ns, bridge)?;
        let origin = Instant::now();
        Ok(MachineNet {
            capture,
            history,
            checker: Checker::new(network.clone(), slack, origin),
            network,
            slack,
            packets: Vec::new(),
        })
    }

    /// Where the event log counts time from.
    pub fn set_origin(&mut self, origin: Instant) {
        self.checker.origin = origin;
    }

    /// Checks the packets captured since the last check.
    pub fn check(&mut self) -> Result<(), String> {
        self.healthy()?;
        let new = self.capture.take();
        for packet in &new {
            self.checker.check(packet, &self.history)?;
        }
        self.packets.extend(new);
        Ok(())
    }

    /// The packets of the rare classes checked since the last call,
    /// described.
    pub fn take_notable(&mut self) -> Vec<String> {
        std::mem::take(&mut self.checker.notable)
    }

    /// Every packet of the run again, against the whole history.
    pub fn check_all(&mut self) -> Result<(), String> {
        self.check()?;
        let mut again = Checker::new(self.network.clone(), self.slack, self.checker.origin);
        for packet in &self.packets {
            again.check(packet, &self.history)?;
        }
        // Logged once, as the step checks found them.
        again.notable = std::mem::take(&mut self.checker.notable);
        self.checker = again;
        Ok(())
    }

    fn healthy(&mut self) -> Result<(), String> {
        match self.capture.health()? {
            0 => Ok(()),
            lost => Err(format!(
                "the machine network's capture lost {lost} frames (its buffer overflowed): it cannot vouch for them"
            )),
        }
    }

    /// Packets checked, and how many in each class.
    pub fn counts(&self) -> (u64, BTreeMap<&'static str, u64>) {
        (self.checker.checked, self.checker.counts.clone())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{
        check::{ANSWER, TO_MACHINE},
        *,
    };

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);

    /// A small machine network of its own (a switch, a gateway's host and a
    /// machine, as the world plugs them): the capture sees what really
    /// crossed it, and the check flags a port no session whitelists, a
    /// packet after an end beyond the slack and one while the switch is off.
    /// Needs root, as the soak does.
    #[test]
    fn the_capture_flags_real_packets_outside_the_history() {
        use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

        let lab = ferry_lab::Lab::new().unwrap();
        let lan = lab.netns("lan").unwrap();
        lan.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
        lan.ip(&["link", "set", "br0", "up"]).unwrap();
        let plug = |ns: &ferry_lab::Netns, cidr: &str| {
            let veth = lan.veth_to(ns).unwrap();
            lan.ip(&["link", "set", &veth.a, "master", "br0"]).unwrap();
            ns.add_addr(&veth.b, cidr).unwrap();
        };
        let gw = lab.netns("gw").unwrap();
        let target = lab.netns("target-a").unwrap();
        plug(&gw, "192.168.50.1/24");
        plug(&target, "192.168.50.10/24");
        let listener = target.run_in(|| TcpListener::bind("192.168.50.10:8080")).unwrap().unwrap();
        std::thread::spawn(move || for _ in listener.incoming() {});
        let targets = json!([{"name": "plc-web", "address": "192.168.50.10", "protocol": "tcp",
                              "ports": [{"first": 8080, "last": 8080}]}]);
        let start = || {
            let network = Network { gateway: GW, machines: vec![("target-a", A)] };
            MachineNet::start(&lan, "br0", network, &targets, SLACK).unwrap()
        };
        let connect = |port: u16| {
            let to = SocketAddr::from((A, port));
            let _ = gw.run_in(move || TcpStream::connect_timeout(&to, Duration::from_secs(1))).unwrap();
        };
        // The first breach among what the capture takes within a few seconds.
        let breach = |net: &mut MachineNet| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Err(breach) = net.check() {
                    return breach;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("no breach; counts {:?}", net.counts());
        };

        // Whitelisted while the session is live: the SYN, the machine's
        // answers, the ARP before them.
        let mut net = start();
        net.history.live(1, &["plc-web"], Instant::now());
        connect(8080);
        std::thread::sleep(Duration::from_millis(300));
        net.check().unwrap();
        let (checked, counts) = net.counts();
        assert!(
            counts.get(TO_MACHINE).is_some_and(|n| *n > 0) && counts.get(ANSWER).is_some_and(|n| *n > 0),
            "{counts:?}"
        );
        assert!(checked > 0);
        // After the end, past the slack.
        net.history.ended(1, Instant::now());
        std::thread::sleep(SLACK + Duration::from_millis(300));
        connect(8080);
        let found = breach(&mut net);
        assert!(found.contains("192.168.50.10:8080 tcp port 8080 SYN"), "{found}");
        assert!(found.contains("no session was live"), "{found}");

        // A port no session whitelists.
        let mut net = start();
        net.history.live(2, &["plc-web"], Instant::now());
        let udp = gw.run_in(|| UdpSocket::bind("192.168.50.1:0")).unwrap().unwrap();
        udp.send_to(b"probe", (A, 8081)).unwrap();
        let found = breach(&mut net);
        assert!(
            found.contains("udp port 8081") && found.contains("no live session whitelists it"),
            "{found}"
        );

        // The switch off (for longer than the slack), a session still live.
        let mut net = start();
        let now = Instant::now();
        net.history.live(3, &["plc-web"], now - Duration::from_secs(5));
        net.history.switch_off(now - Duration::from_secs(2));
        connect(8080);
        let found = breach(&mut net);
        assert!(found.contains("tcp port 8080") && found.contains("the switch was off"), "{found}");
    }
}
