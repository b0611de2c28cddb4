//! The check of each captured packet against the history: its class, or a
//! breach that names it.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use super::{
    history::{History, Life},
    packet::{Frame, ICMP, L4, Packet, TCP, UDP, describe},
};

/// The hosts of the machine network.
#[derive(Clone, Debug)]
pub struct Network {
    pub gateway: Ipv4Addr,
    /// The machines, by name (the world's probe among them).
    pub machines: Vec<(&'static str, Ipv4Addr)>,
}

impl Network {
    fn machine(&self, ip: Ipv4Addr) -> Option<&'static str> {
        self.machines.iter().find(|(_, m)| *m == ip).map(|(name, _)| *name)
    }

    fn host(&self, ip: Ipv4Addr) -> bool {
        ip == self.gateway || self.machine(ip).is_some()
    }
}

/// The classes a packet may fall in, as the table names them.
pub const TO_MACHINE: &str = "to machines: whitelisted, session live";
pub const ANSWER: &str = "from machines: answers to those";
pub const ARP: &str = "ARP between its hosts";
pub const IGMP: &str = "IGMP reports (224.0.0.0/24)";
pub const IPV6_LINK: &str = "IPv6 link-local (ND, MLD)";
pub const KERNEL_ANSWER: &str = "gateway down: its kernel's RST, ICMP error";
pub const CLASSES: [&str; 6] = [TO_MACHINE, ANSWER, ARP, IGMP, IPV6_LINK, KERNEL_ANSWER];

/// How recent a machine's packet must be for the gateway's kernel's answer
/// to be taken for one to it (it answers at once).
const KERNEL_ANSWERS_WITHIN: Duration = Duration::from_secs(1);

/// A flow the gateway opened to a machine, as the machine's answers carry
/// it: (protocol, machine, machine's port, gateway's port); an echo's
/// identifier stands for both ports.
type Flow = (u8, Ipv4Addr, u16, u16);

/// The check, one packet after the other in the order captured.
pub struct Checker {
    network: Network,
    /// How long after an end (and after the switch went off) traffic may
    /// still be seen: the bound the docs promise for the switch and the
    /// customer's end, and for an expiry by the gateway's clock.
    slack: Duration,
    /// Where the soak's event log counts time from, for the messages.
    pub origin: Instant,
    /// The flows the gateway opened for live sessions, with when the
    /// machine last sent a packet of each.
    flows: HashMap<Flow, Option<Instant>>,
    pub counts: BTreeMap<&'static str, u64>,
    pub checked: u64,
    /// The packets of the rare classes (the gateway's kernel answering),
    /// described for the event log, until taken.
    pub notable: Vec<String>,
}

impl Checker {
    pub fn new(network: Network, slack: Duration, origin: Instant) -> Checker {
        Checker {
            network,
            slack,
            origin,
            flows: HashMap::new(),
            counts: BTreeMap::new(),
            checked: 0,
            notable: Vec::new(),
        }
    }

    /// Checks `packet` against `history`: its class, or the breach, which
    /// names the packet and the sessions live then.
    pub fn check(&mut self, packet: &Packet, history: &History) -> Result<&'static str, String> {
        let class = self.classify(packet, history).map_err(|why| self.breach(packet, history, &why))?;
        self.checked += 1;
        *self.counts.entry(class).or_default() += 1;
        Ok(class)
    }

    fn classify(&mut self, packet: &Packet, history: &History) -> Result<&'static str, String> {
        let net = &self.network;
        match &packet.frame {
            Frame::Arp { sender, target, .. } => {
                // A probe for an address in use comes from 0.0.0.0.
                if (net.host(*sender) || sender.is_unspecified()) && net.host(*target) {
                    Ok(ARP)
                } else {
                    Err("ARP for or from an address that is no host of the machine network".into())
                }
            }
            Frame::Ipv6 { src, dst, next: 58, icmp_type: Some(t) } => {
                // Router and neighbour solicitations and advertisements,
                // redirects, MLD: what a link does by itself.
                let link_local = |a: &Ipv6Addr| a.is_unicast_link_local() || a.is_unspecified();
                let link_scope = |a: &Ipv6Addr| a.is_unicast_link_local() || a.segments()[0] == 0xff02;
                if matches!(t, 130..=137 | 143) && link_local(src) && link_scope(dst) {
                    Ok(IPV6_LINK)
                } else {
                    Err(format!("ICMPv6 type {t} that is no link-local housekeeping"))
                }
            }
            Frame::Ipv6 { .. } => Err("IPv6 beyond link-local housekeeping".into()),
            Frame::Other { what, .. } => Err(format!("a frame of no known kind: {what}")),
            Frame::Ipv4 { src, dst, l4: L4::Other { protocol: 2 } } => {
                // A host's multicast memberships, announced when its
                // addresses change: to the link-local group range only.
                if (net.host(*src) || src.is_unspecified()) && dst.octets()[..3] == [224, 0, 0] {
                    Ok(IGMP)
                } else {
                    Err("IGMP beyond a host's link-local reports".into())
                }
            }
            Frame::Ipv4 { src, dst, l4 } => {
                if *src == net.gateway && net.machine(*dst).is_some() {
                    self.sent_to_machine(packet.at, *dst, l4, history)
                } else if net.machine(*src).is_some() && *dst == net.gateway {
                    self.answer_from_machine(packet.at, *src, l4)
                } else {
                    Err("IPv4 neither from the gateway to a machine nor back".into())
                }
            }
        }
    }

    fn sent_to_machine(
        &mut self,
        at: Instant,
        dst: Ipv4Addr,
        l4: &L4,
        history: &History,
    ) -> Result<&'static str, String> {
        if history.gateway_down_at(at) && self.kernel_answer(at, dst, l4) {
            let mut note = format!(
                "{} at {}: the gateway's daemon down, its kernel answering",
                describe(&Frame::Ipv4 { src: self.network.gateway, dst, l4: l4.clone() }),
                self.time(at)
            );
            self.flow_note(&mut note, &Frame::Ipv4 { src: self.network.gateway, dst, l4: l4.clone() });
            self.notable.push(note);
            return Ok(KERNEL_ANSWER);
        }
        if let Some((off, _)) = history.switched_off_at(at, self.slack) {
            return Err(format!("the switch was off (since {}; {:?} of slack)", self.time(off), self.slack));
        }
        let mut live = history.live_at(at, self.slack).peekable();
        if live.peek().is_none() {
            return Err(format!("no session was live ({:?} of slack after an end)", self.slack));
        }
        let whitelisted = live.any(|s| s.entries.iter().any(|e| e.admits(dst, l4)));
        if !whitelisted {
            return Err("no live session whitelists it".into());
        }
        let flow = match *l4 {
            L4::Tcp { sport, dport, .. } => (TCP, dst, dport, sport),
            L4::Udp { sport, dport } => (UDP, dst, dport, sport),
            L4::Echo { id, .. } => (ICMP, dst, id, id),
            _ => return Err("no live session whitelists it".into()),
        };
        self.flows.entry(flow).or_insert(None);
        Ok(TO_MACHINE)
    }

    /// While the gateway's daemon is down, its kernel answers a machine's
    /// packet to a NAT port as any host's would: a TCP RST, or an ICMP error
    /// quoting it (no program drops the packet then; a running gateway's
    /// LAN program does). Only for a flow a session opened, whose machine
    /// sent a packet within [`KERNEL_ANSWERS_WITHIN`]: a machine
    /// retransmitting into a flow that ended.
    fn kernel_answer(&self, at: Instant, dst: Ipv4Addr, l4: &L4) -> bool {
        let flow = match *l4 {
            L4::Tcp { sport, dport, rst: true, syn: false } => (TCP, dst, dport, sport),
            L4::IcmpError { quoted: Some(q), .. } if q.src == dst && q.dst == self.network.gateway => {
                (q.protocol, q.src, q.sport, q.dport)
            }
            _ => return false,
        };
        self.flows
            .get(&flow)
            .copied()
            .flatten()
            .is_some_and(|last| last <= at && at.duration_since(last) <= KERNEL_ANSWERS_WITHIN)
    }

    /// A machine's packet to the gateway: an answer to a flow the gateway
    /// opened for a live session (at any time later: a machine may
    /// retransmit into a flow the gateway dropped at the end), or an ICMP
    /// error about one of that flow's packets.
    fn answer_from_machine(&mut self, at: Instant, src: Ipv4Addr, l4: &L4) -> Result<&'static str, String> {
        let flow = match *l4 {
            L4::Tcp { sport, dport, .. } => Some((TCP, src, sport, dport)),
            L4::Udp { sport, dport } => Some((UDP, src, sport, dport)),
            L4::Echo { request: false, id } => Some((ICMP, src, id, id)),
            L4::IcmpError { quoted: Some(q), .. } if q.src == self.network.gateway && q.dst == src => {
                Some((q.protocol, q.dst, q.dport, q.sport))
            }
            _ => None,
        };
        match flow.and_then(|flow| self.flows.get_mut(&flow)) {
            Some(last) => {
                *last = Some(at);
                Ok(ANSWER)
            }
            _ => Err("a machine's packet to the gateway that answers no flow a session opened".into()),
        }
    }

    fn time(&self, at: Instant) -> String {
        match at.checked_duration_since(self.origin) {
            Some(d) => format!("{:.3}s", d.as_secs_f64()),
            None => format!("-{:.3}s", (self.origin - at).as_secs_f64()),
        }
    }

    /// The breach: the packet (time, source, destination, protocol, port),
    /// why, the sessions live then and the last ended before.
    fn breach(&self, packet: &Packet, history: &History, why: &str) -> String {
        let mut text =
            format!("the machine network saw {} at {}: {why}", describe(&packet.frame), self.time(packet.at));
        let life = |s: &Life| {
            let until =
                s.until.map_or_else(|| "not ended".to_string(), |u| format!("ended {}", self.time(u)));
            let names: Vec<&str> = s.entries.iter().map(|e| e.name.as_str()).collect();
            format!("session {} (live from {}, {until}; {})", s.id, self.time(s.from), names.join(" "))
        };
        let live: Vec<String> = history.live_at(packet.at, self.slack).map(life).collect();
        let _ = write!(
            text,
            "; sessions live then: {}",
            if live.is_empty() { "none".to_string() } else { live.join(", ") }
        );
        if let Some(last) =
            history.sessions.iter().rfind(|s| s.until.is_some_and(|u| u + self.slack < packet.at))
        {
            let _ = write!(text, "; the last ended before: {}", life(last));
        }
        if let Some((off, on)) = history
            .switch_off
            .iter()
            .find(|(off, on)| *off <= packet.at && on.is_none_or(|on| packet.at < on))
        {
            let on =
                on.map_or_else(|| "not on again".to_string(), |on| format!("on again {}", self.time(on)));
            let _ = write!(text, "; the switch off since {} ({on})", self.time(*off));
        }
        if let Some((down, up)) = history
            .gateway_down
            .iter()
            .find(|(down, up)| *down <= packet.at && up.is_none_or(|up| packet.at <= up))
        {
            let up = up
                .map_or_else(|| "not ready again".to_string(), |up| format!("ready again {}", self.time(up)));
            let _ = write!(text, "; the gateway's daemon down since {} ({up})", self.time(*down));
        }
        self.flow_note(&mut text, &packet.frame);
        text
    }

    /// Whether `frame` belongs to a flow a session opened, and when the
    /// machine last sent one of it: what tells a late packet of an ended
    /// session from one of no session at all.
    fn flow_note(&self, text: &mut String, frame: &Frame) {
        if let Frame::Ipv4 { src, dst, l4 } = frame {
            let from_gateway = *src == self.network.gateway;
            let machine = if from_gateway { *dst } else { *src };
            let flow = match *l4 {
                L4::Tcp { sport, dport, .. } if from_gateway => Some((TCP, machine, dport, sport)),
                L4::Udp { sport, dport } if from_gateway => Some((UDP, machine, dport, sport)),
                L4::Tcp { sport, dport, .. } => Some((TCP, machine, sport, dport)),
                L4::Udp { sport, dport } => Some((UDP, machine, sport, dport)),
                L4::Echo { id, .. } => Some((ICMP, machine, id, id)),
                // An error about the machine's packet, or about the gateway's.
                L4::IcmpError { quoted: Some(q), .. } if q.src == machine => {
                    Some((q.protocol, machine, q.sport, q.dport))
                }
                L4::IcmpError { quoted: Some(q), .. } => Some((q.protocol, q.dst, q.dport, q.sport)),
                _ => None,
            };
            match flow.map(|flow| self.flows.get(&flow)) {
                Some(Some(Some(last))) => {
                    let _ = write!(
                        text,
                        "; its flow was opened for a session, the machine's last packet of it at {}",
                        self.time(*last)
                    );
                }
                Some(Some(None)) => {
                    let _ =
                        write!(text, "; its flow was opened for a session, the machine never answered it");
                }
                Some(None) => {
                    let _ = write!(text, "; no session opened its flow");
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{super::packet::Quoted, *};

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
    const SLACK: Duration = Duration::from_secs(1);

    fn network() -> Network {
        Network { gateway: GW, machines: vec![("target-a", A), ("target-b", B)] }
    }

    /// The soak's gateway's targets.
    fn history() -> History {
        History::new(&json!([
            {"name": "plc-web", "address": "192.168.50.10", "protocol": "tcp", "ports": [{"first": 8080, "last": 8080}]},
            {"name": "echo", "address": "192.168.50.11", "protocol": "tcp", "ports": [{"first": 7000, "last": 7000}]},
            {"name": "udp-echo", "address": "192.168.50.11", "protocol": "udp", "ports": [{"first": 7000, "last": 7000}]},
            {"name": "plc-ping", "address": "192.168.50.10", "protocol": "icmp"},
        ]))
        .unwrap()
    }

    fn tcp(at: Instant, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
        Packet { at, frame: Frame::Ipv4 { src, dst, l4: L4::Tcp { sport, dport, rst: false, syn: false } } }
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// Session 7 with every target, live from t0+1 s to t0+10 s; the switch
    /// off from t0+20 s to t0+30 s.
    fn scene() -> (Instant, History, Checker) {
        let t0 = Instant::now();
        let mut h = history();
        h.live(7, &["plc-web", "echo", "udp-echo", "plc-ping"], t0 + s(1.0));
        h.ended(7, t0 + s(10.0));
        h.switch_off(t0 + s(20.0));
        h.switch_on(t0 + s(30.0));
        (t0, h, Checker::new(network(), SLACK, t0))
    }

    #[test]
    fn whitelisted_traffic_and_its_answers_pass() {
        let (t0, h, mut c) = scene();
        assert_eq!(c.check(&tcp(t0 + s(2.0), GW, 40001, A, 8080), &h), Ok(TO_MACHINE));
        assert_eq!(c.check(&tcp(t0 + s(2.1), A, 8080, GW, 40001), &h), Ok(ANSWER));
        // Within the slack after the end, and a machine's late retransmission.
        assert_eq!(c.check(&tcp(t0 + s(10.9), GW, 40001, A, 8080), &h), Ok(TO_MACHINE));
        assert_eq!(c.check(&tcp(t0 + s(40.0), A, 8080, GW, 40001), &h), Ok(ANSWER));
        let udp = |at, src, sport, dst, dport| Packet {
            at,
            frame: Frame::Ipv4 { src, dst, l4: L4::Udp { sport, dport } },
        };
        assert_eq!(c.check(&udp(t0 + s(3.0), GW, 40002, B, 7000), &h), Ok(TO_MACHINE));
        assert_eq!(c.check(&udp(t0 + s(3.0), B, 7000, GW, 40002), &h), Ok(ANSWER));
        let echo = |at, src, dst, request| Packet {
            at,
            frame: Frame::Ipv4 { src, dst, l4: L4::Echo { request, id: 9 } },
        };
        assert_eq!(c.check(&echo(t0 + s(4.0), GW, A, true), &h), Ok(TO_MACHINE));
        assert_eq!(c.check(&echo(t0 + s(4.0), A, GW, false), &h), Ok(ANSWER));
        let arp = Packet { at: t0 + s(25.0), frame: Frame::Arp { request: true, sender: A, target: GW } };
        assert_eq!(c.check(&arp, &h), Ok(ARP));
        let nd = Packet {
            at: t0,
            frame: Frame::Ipv6 {
                src: "fe80::1".parse().unwrap(),
                dst: "ff02::1:ff00:1".parse().unwrap(),
                next: 58,
                icmp_type: Some(135),
            },
        };
        assert_eq!(c.check(&nd, &h), Ok(IPV6_LINK));
        let igmp = Packet {
            at: t0,
            frame: Frame::Ipv4 {
                src: Ipv4Addr::UNSPECIFIED,
                dst: Ipv4Addr::new(224, 0, 0, 22),
                l4: L4::Other { protocol: 2 },
            },
        };
        assert_eq!(c.check(&igmp, &h), Ok(IGMP));
        assert_eq!(c.checked, 11);
    }

    #[test]
    fn a_port_no_session_whitelists_is_a_breach() {
        let (t0, h, mut c) = scene();
        let breach = c.check(&tcp(t0 + s(2.0), GW, 40001, A, 8081), &h).unwrap_err();
        assert!(breach.contains("192.168.50.1:40001 > 192.168.50.10:8081 tcp port 8081"), "{breach}");
        assert!(breach.contains("no live session whitelists it"), "{breach}");
        assert!(breach.contains("at 2.000s"), "{breach}");
        assert!(
            breach.contains("sessions live then: session 7 (live from 1.000s, ended 10.000s"),
            "{breach}"
        );
        assert!(breach.contains("no session opened its flow"), "{breach}");
        // UDP at the TCP entry's port, ICMP to the machine without an ICMP entry.
        let udp = Packet {
            at: t0 + s(2.0),
            frame: Frame::Ipv4 { src: GW, dst: A, l4: L4::Udp { sport: 1, dport: 8080 } },
        };
        assert!(c.check(&udp, &h).is_err());
        let ping_b = Packet {
            at: t0 + s(2.0),
            frame: Frame::Ipv4 { src: GW, dst: B, l4: L4::Echo { request: true, id: 1 } },
        };
        assert!(c.check(&ping_b, &h).is_err());
        assert_eq!(c.checked, 0);
    }

    #[test]
    fn a_packet_after_the_end_beyond_the_slack_is_a_breach() {
        let (t0, h, mut c) = scene();
        let breach = c.check(&tcp(t0 + s(11.2), GW, 40001, A, 8080), &h).unwrap_err();
        assert!(breach.contains("no session was live"), "{breach}");
        assert!(breach.contains("sessions live then: none; the last ended before: session 7"), "{breach}");
        // And before the session could carry traffic.
        assert!(c.check(&tcp(t0 + s(0.5), GW, 40001, A, 8080), &h).is_err());
    }

    #[test]
    fn a_packet_while_the_switch_is_off_is_a_breach() {
        let (t0, mut h, mut c) = scene();
        // A session still live by the history (its end not known yet): the
        // switch decides.
        h.live(8, &["plc-web"], t0 + s(15.0));
        assert_eq!(c.check(&tcp(t0 + s(20.5), GW, 40003, A, 8080), &h), Ok(TO_MACHINE));
        let breach = c.check(&tcp(t0 + s(21.5), GW, 40003, A, 8080), &h).unwrap_err();
        assert!(breach.contains("the switch was off (since 20.000s"), "{breach}");
        assert!(breach.contains("the switch off since 20.000s (on again 30.000s)"), "{breach}");
        // On again: the live session carries traffic.
        assert_eq!(c.check(&tcp(t0 + s(30.5), GW, 40003, A, 8080), &h), Ok(TO_MACHINE));
    }

    #[test]
    fn what_is_neither_whitelisted_nor_an_answer_is_a_breach() {
        let (t0, h, mut c) = scene();
        // An answer to a flow nobody opened.
        assert!(c.check(&tcp(t0 + s(2.0), A, 8080, GW, 40009), &h).is_err());
        // Machine to machine, and an unknown host.
        assert!(c.check(&tcp(t0 + s(2.0), A, 5000, B, 7000), &h).is_err());
        assert!(c.check(&tcp(t0 + s(2.0), Ipv4Addr::new(10, 0, 0, 1), 5000, A, 8080), &h).is_err());
        let arp = Packet {
            at: t0,
            frame: Frame::Arp { request: true, sender: Ipv4Addr::new(10, 0, 0, 1), target: A },
        };
        assert!(c.check(&arp, &h).is_err());
        let v6 = Packet {
            at: t0,
            frame: Frame::Ipv6 {
                src: "fe80::1".parse().unwrap(),
                dst: "fe80::2".parse().unwrap(),
                next: 6,
                icmp_type: None,
            },
        };
        assert!(c.check(&v6, &h).is_err());
        let other = Packet { at: t0, frame: Frame::Other { ether_type: 0x88cc, what: "LLDP".into() } };
        assert!(c.check(&other, &h).is_err());
        assert_eq!(c.checked, 0);
    }

    /// Seed 2 (90 s): a SIGKILLed gateway's kernel answered target-b's
    /// retransmission into a flow of a session ended 26 s before with a RST.
    #[test]
    fn the_gateway_kernels_answer_while_the_daemon_is_down_is_classified_narrowly() {
        let (t0, mut h, mut c) = scene();
        h.gateway_killed(t0 + s(40.0));
        h.gateway_ready(t0 + s(43.0));
        let rst = |at, sport| Packet {
            at,
            frame: Frame::Ipv4 { src: GW, dst: B, l4: L4::Tcp { sport, dport: 7000, rst: true, syn: false } },
        };
        assert_eq!(c.check(&tcp(t0 + s(2.0), GW, 40001, B, 7000), &h), Ok(TO_MACHINE));
        assert_eq!(c.check(&tcp(t0 + s(2.0), GW, 40002, B, 7000), &h), Ok(TO_MACHINE));
        assert_eq!(c.check(&tcp(t0 + s(3.0), B, 7000, GW, 40002), &h), Ok(ANSWER));
        // The machine retransmits while the gateway is down; its kernel resets.
        assert_eq!(c.check(&tcp(t0 + s(41.0), B, 7000, GW, 40001), &h), Ok(ANSWER));
        assert_eq!(c.check(&rst(t0 + s(41.001), 40001), &h), Ok(KERNEL_ANSWER));
        assert_eq!(c.notable.len(), 1);
        assert!(c.notable[0].contains("the machine's last packet of it at 41.000s"), "{:?}", c.notable);
        // Not without a machine's packet just before, not a segment other
        // than a RST, not once the gateway runs again.
        let breach = c.check(&rst(t0 + s(41.5), 40002), &h).unwrap_err();
        assert!(breach.contains("RST") && breach.contains("no session was live"), "{breach}");
        assert!(breach.contains("the gateway's daemon down since 40.000s (ready again 43.000s)"), "{breach}");
        assert!(breach.contains("the machine's last packet of it at 3.000s"), "{breach}");
        assert!(c.check(&tcp(t0 + s(41.1), GW, 40001, B, 7000), &h).is_err());
        assert_eq!(c.check(&tcp(t0 + s(43.5), B, 7000, GW, 40001), &h), Ok(ANSWER));
        assert!(c.check(&rst(t0 + s(43.6), 40001), &h).is_err());
    }

    #[test]
    fn a_machines_icmp_error_about_an_allowed_flow_is_an_answer() {
        let (t0, h, mut c) = scene();
        let udp = Packet {
            at: t0 + s(2.0),
            frame: Frame::Ipv4 { src: GW, dst: B, l4: L4::Udp { sport: 40005, dport: 7000 } },
        };
        c.check(&udp, &h).unwrap();
        let quoted = |sport| Quoted { protocol: UDP, src: GW, dst: B, sport, dport: 7000 };
        let error = |q| Packet {
            at: t0 + s(2.0),
            frame: Frame::Ipv4 { src: B, dst: GW, l4: L4::IcmpError { icmp_type: 3, quoted: Some(q) } },
        };
        assert_eq!(c.check(&error(quoted(40005)), &h), Ok(ANSWER));
        assert!(c.check(&error(quoted(40006)), &h).is_err());
    }
}
