//! What the check reads of a captured frame.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

pub(super) const TCP: u8 = 6;
pub(super) const UDP: u8 = 17;
pub(super) const ICMP: u8 = 1;

/// One frame as it left a switch port toward a host, at the kernel's time.
#[derive(Clone, Debug)]
pub struct Packet {
    pub at: Instant,
    pub frame: Frame,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Arp {
        request: bool,
        sender: Ipv4Addr,
        target: Ipv4Addr,
    },
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        l4: L4,
    },
    Ipv6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next: u8,
        icmp_type: Option<u8>,
    },
    /// Another Ethernet type, or a frame that did not parse (`what` says).
    Other {
        ether_type: u16,
        what: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        rst: bool,
        syn: bool,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// An ICMP echo request or reply, with its identifier.
    Echo {
        request: bool,
        id: u16,
    },
    /// Destination unreachable, time exceeded, parameter problem, with the
    /// packet it quotes.
    IcmpError {
        icmp_type: u8,
        quoted: Option<Quoted>,
    },
    Icmp {
        icmp_type: u8,
    },
    /// A fragment after the first (no ports to check).
    Fragment,
    Other {
        protocol: u8,
    },
}

/// The packet an ICMP error quotes (ports: an echo's identifier for both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// A frame for a person: source, destination, protocol, port.
pub fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Arp { request, sender, target } => {
            format!("ARP {} {sender} > {target}", if *request { "request" } else { "reply" })
        }
        Frame::Ipv6 { src, dst, next, icmp_type } => match icmp_type {
            Some(t) => format!("{src} > {dst} icmpv6 type {t}"),
            None => format!("{src} > {dst} protocol {next}"),
        },
        Frame::Other { ether_type, what } => format!("a frame of Ethernet type {ether_type:#06x} ({what})"),
        Frame::Ipv4 { src, dst, l4 } => match l4 {
            L4::Tcp { sport, dport, rst, syn } => {
                let flags = match (syn, rst) {
                    (true, _) => " SYN",
                    (_, true) => " RST",
                    _ => "",
                };
                format!("{src}:{sport} > {dst}:{dport} tcp port {dport}{flags}")
            }
            L4::Udp { sport, dport } => format!("{src}:{sport} > {dst}:{dport} udp port {dport}"),
            L4::Echo { request, id } => {
                format!("{src} > {dst} icmp echo {} id {id}", if *request { "request" } else { "reply" })
            }
            L4::IcmpError { icmp_type, quoted } => match quoted {
                Some(q) => format!(
                    "{src} > {dst} icmp error type {icmp_type} about {}:{} > {}:{} protocol {}",
                    q.src, q.sport, q.dst, q.dport, q.protocol
                ),
                None => format!("{src} > {dst} icmp error type {icmp_type}"),
            },
            L4::Icmp { icmp_type } => format!("{src} > {dst} icmp type {icmp_type}"),
            L4::Fragment => format!("{src} > {dst} a fragment"),
            L4::Other { protocol } => format!("{src} > {dst} protocol {protocol}"),
        },
    }
}
