//! The gateway programs attached for real: a gateway namespace with a TUN
//! device (standing in for the WireGuard engine) and a veth to a target
//! namespace. Packets written into the TUN from a technician's tunnel address
//! to a proxy address reach the target's sockets from the gateway's LAN
//! address; the target's answers come back out of the TUN from the proxy
//! address to the technician, with checksums valid, and so does the ICMP
//! error about a datagram to a closed port. Needs root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]

mod gateway_support;

use std::{
    collections::BTreeSet,
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use ferry_ebpf::{
    AttachMode,
    common::gateway::{NAT_PORT_MAX, NAT_PORT_MIN, Outcome, PROTO_TCP},
    gateway::{Flow, FlowTimeouts, ForwarderConfig, ForwardingTable, GatewayForwarder, Protocol},
};
use ferry_lab::{Lab, Netns};
use gateway_support::{PEER_A1, PROXY_PLC, PROXY_SENSOR, PROXY_SNMP, SESSION_A, TUNNEL_NET, spec};

const SNAT: [u8; 4] = [10, 20, 0, 1];
const TARGET: [u8; 4] = [10, 20, 0, 5];
/// A proxy address for TARGET whose change, with the peer's to SNAT, the
/// L4 checksum does not see: the words of [PEER_A1, PROXY_BALANCED] and of
/// [SNAT, TARGET] have the same one's complement sum.
const PROXY_BALANCED: [u8; 4] = [100, 96, 74, 107];

/// Fields drop in order: the programs detach before the lab goes.
struct Setup {
    forwarder: GatewayForwarder,
    tun: File,
    target: Netns,
    target_if: String,
    _lab: Lab,
}

fn setup() -> Setup {
    setup_with(false, FlowTimeouts::DEFAULT)
}

/// `vnet`: the TUN carries a virtio-net header in front of every packet, as
/// the WireGuard engine writes GRO super-segments, and the gateway's LAN side
/// checksums and segments in software (TX offload off), as before a wire.
/// `timeouts`: the flow timeouts the programs are attached with.
fn setup_with(vnet: bool, timeouts: FlowTimeouts) -> Setup {
    let lab = Lab::new().expect("a lab (run as root)");
    let gw = lab.netns("gateway").unwrap();
    let target = lab.netns("target").unwrap();
    let link = lab.wire(&gw, &["10.20.0.1/24"], &target, &["10.20.0.5/24"]).unwrap();
    // The target's answers must carry full checksums, as a wire delivers
    // them: XDP updates them incrementally.
    target.exec("ethtool", &["-K", &link.b, "tx", "off"]).unwrap();
    if vnet {
        gw.exec("ethtool", &["-K", &link.a, "tx", "off"]).unwrap();
    }

    let tun_name = lab.ifname("tun");
    gw.ip(&["tuntap", "add", "dev", &tun_name, "mode", "tun"]).unwrap();
    let name = tun_name.clone();
    let tun = gw.run_in(move || open_tun(&name, vnet)).unwrap();
    gw.ip(&["addr", "add", "100.96.1.1/12", "dev", &tun_name]).unwrap();
    gw.ip(&["link", "set", "dev", &tun_name, "up"]).unwrap();
    // Translated replies are routed from the LAN interface to the TUN; the
    // source (a proxy address) is reached through the TUN, so strict reverse
    // path filtering would drop them.
    gw.enable_forwarding().unwrap();
    for setting in ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
        gw.sysctl(setting).unwrap();
    }
    gw.sysctl(&format!("net.ipv4.conf.{}.rp_filter=0", link.a)).unwrap();

    let config = ForwarderConfig {
        tunnel_if: tun_name,
        lan_if: link.a.clone(),
        tunnel_net: TUNNEL_NET,
        xdp_mode: AttachMode::Native,
        timeouts,
    };
    let forwarder = gw
        .run_in(move || {
            let mut f = GatewayForwarder::attach(&config).expect("attaching the gateway programs");
            let mut table = ForwardingTable::default();
            table.peers.insert(PEER_A1.into(), SESSION_A);
            table.targets.insert((SESSION_A, PROXY_PLC.into()), spec(TARGET, Protocol::Tcp, &[(22, 22)]));
            table.targets.insert((SESSION_A, PROXY_SNMP.into()), spec(TARGET, Protocol::Udp, &[(161, 161)]));
            table.targets.insert((SESSION_A, PROXY_SENSOR.into()), spec(TARGET, Protocol::Icmp, &[]));
            table.targets.insert((SESSION_A, PROXY_BALANCED.into()), spec(TARGET, Protocol::Any, &[]));
            f.apply(&table).unwrap();
            f
        })
        .unwrap();
    Setup { forwarder, tun, target, target_if: link.b, _lab: lab }
}

/// Attaches to the existing TUN device `name` (IFF_TUN | IFF_NO_PI: raw IP
/// packets, no packet-information prefix; with `vnet` a 10-byte
/// virtio_net_hdr in front), non-blocking.
fn open_tun(name: &str, vnet: bool) -> File {
    let file = File::options().read(true).write(true).open("/dev/net/tun").expect("/dev/net/tun");
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
        *slot = *byte as libc::c_char;
    }
    let vnet_flag = if vnet { libc::IFF_VNET_HDR } else { 0 };
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | vnet_flag) as libc::c_short;
    // SAFETY: TUNSETIFF reads a valid ifreq.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    assert_eq!(rc, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    // SAFETY: F_SETFL on our own descriptor.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    file
}

/// The next IPv4 packet from `from` that the kernel writes to the TUN (it
/// also sends IPv6 router solicitations and the like, skipped here).
fn read_from(tun: &mut File, from: [u8; 4]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match tun.read(&mut buf) {
            Ok(n) if n >= 20 && buf[0] >> 4 == 4 && buf[12..16] == from => return buf[..n].to_vec(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("reading the TUN: {e}"),
        }
    }
    panic!("nothing from {from:?} came out of the TUN");
}

/// Checks the IPv4 and L4 checksums of a raw IP packet from scratch.
fn assert_checksums_valid(packet: &[u8]) {
    let mut framed = vec![0u8; 12];
    framed.extend_from_slice(&0x0800u16.to_be_bytes());
    framed.extend_from_slice(packet);
    gateway_support::assert_checksums_valid(&framed);
}

fn write_ip(tun: &mut File, builder: impl FnOnce(&mut Vec<u8>)) {
    let mut packet = Vec::new();
    builder(&mut packet);
    tun.write_all(&packet).expect("writing into the TUN");
}

#[test]
fn udp_reaches_the_target_from_the_snat_address_and_the_answer_comes_back() {
    let mut s = setup();
    let socket = s.target.run_in(|| UdpSocket::bind("10.20.0.5:161")).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

    write_ip(&mut s.tun, |out| {
        PacketBuilder::ipv4(PEER_A1, PROXY_SNMP, 64).udp(50000, 161).write(out, b"get sysDescr").unwrap()
    });
    let mut buf = [0u8; 2048];
    let (n, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("the target got nothing ({e}): {:?}", s.forwarder.counters().unwrap()));
    assert_eq!(&buf[..n], b"get sysDescr");
    let SocketAddr::V4(from) = from else { panic!("{from}") };
    assert_eq!(from.ip().octets(), SNAT, "the target sees the gateway's LAN address");
    assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&from.port()), "NAT port {}", from.port());

    socket.send_to(b"Ferry test PLC", from).unwrap();
    let reply = read_from(&mut s.tun, PROXY_SNMP);
    assert_checksums_valid(&reply);
    let sliced = SlicedPacket::from_ip(&reply).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else { panic!("not IPv4") };
    assert_eq!((ip.header().source(), ip.header().destination()), (PROXY_SNMP, PEER_A1));
    let Some(TransportSlice::Udp(udp)) = &sliced.transport else { panic!("not UDP") };
    assert_eq!((udp.source_port(), udp.destination_port()), (161, 50000));
    assert_eq!(udp.payload(), b"Ferry test PLC");

    // A datagram as large as the TUN's MTU still fits out of the LAN
    // interface once the Ethernet header is in front.
    let big = vec![0x5a; 1500 - 28];
    write_ip(&mut s.tun, |out| {
        PacketBuilder::ipv4(PEER_A1, PROXY_SNMP, 64).udp(50000, 161).write(out, &big).unwrap()
    });
    let (n, again) = socket.recv_from(&mut buf).expect("the MTU-sized datagram");
    assert_eq!((&buf[..n], again), (&big[..], SocketAddr::V4(from)));

    let counters = s.forwarder.counters().unwrap();
    assert_eq!(counters.get(Outcome::ForwardedToTarget), 2, "{counters:?}");
    assert_eq!(counters.get(Outcome::ForwardedFromTarget), 1, "{counters:?}");
    let traffic = s.forwarder.traffic(SESSION_A, PROXY_SNMP.into()).unwrap().unwrap();
    assert_eq!((traffic.to_target_packets, traffic.from_target_packets), (2, 1));
    assert_eq!(traffic.to_target_bytes, 40 + 1500);
}

/// The timeouts given at attach are the ones the programs and the sweep go
/// by: an idle flow is swept, a live one stays and keeps its NAT port.
#[test]
fn the_timeouts_given_at_attach_decide_which_flows_are_swept() {
    let ages = gateway_support::ages();
    let mut s = setup_with(false, ages.timeouts);
    assert_eq!(s.forwarder.timeouts(), ages.timeouts);
    let socket = s.target.run_in(|| UdpSocket::bind("10.20.0.5:161")).unwrap().unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let get = |tun: &mut File| {
        write_ip(tun, |out| {
            PacketBuilder::ipv4(PEER_A1, PROXY_SNMP, 64).udp(50000, 161).write(out, b"get").unwrap()
        })
    };
    get(&mut s.tun);
    let mut buf = [0u8; 64];
    let (_, from) = socket.recv_from(&mut buf).expect("the datagram through the gateway");
    let live = s.forwarder.flows().unwrap();
    assert_eq!(live.len(), 1);

    // A TCP flow idle since long ago: alive under the default TCP timeout
    // (two hours), dead under the ones given.
    let idle = Flow {
        protocol: PROTO_TCP,
        peer: SocketAddrV4::new(PEER_A1.into(), 40000),
        proxy: PROXY_PLC.into(),
        target_port: 22,
        nat_port: if live[0].nat_port == NAT_PORT_MIN { NAT_PORT_MAX } else { NAT_PORT_MIN },
        last_seen_ns: ages.long_ago,
        ..live[0]
    };
    s.forwarder.insert_flow(&idle).unwrap();
    assert_eq!(s.forwarder.expire_flows().unwrap(), 2, "both halves of the idle flow");
    assert_eq!(s.forwarder.flows().unwrap(), live);
    get(&mut s.tun);
    let (_, again) = socket.recv_from(&mut buf).expect("the next datagram");
    assert_eq!(again, from, "the live flow kept its NAT port");
}

#[test]
fn a_closed_udp_port_answers_port_unreachable_from_the_proxy_address() {
    let mut s = setup();
    // Nothing listens on the target's UDP 161: its kernel answers with ICMP
    // port unreachable (the technician's "connection refused"), quoting the
    // whole datagram as it arrived, from the SNAT address and NAT port.
    write_ip(&mut s.tun, |out| {
        PacketBuilder::ipv4(PEER_A1, PROXY_SNMP, 64).udp(50000, 161).write(out, b"get sysDescr").unwrap()
    });
    let error = read_from(&mut s.tun, PROXY_SNMP);
    assert_checksums_valid(&error);
    let sliced = SlicedPacket::from_ip(&error).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else { panic!("not IPv4") };
    assert_eq!((ip.header().source(), ip.header().destination()), (PROXY_SNMP, PEER_A1));
    let Some(TransportSlice::Icmpv4(icmp)) = &sliced.transport else { panic!("not ICMP: {error:02x?}") };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
    );
    // The quote is the technician's own datagram, one hop older, every
    // checksum in it valid again.
    let mut expected = Vec::new();
    PacketBuilder::ipv4(PEER_A1, PROXY_SNMP, 63)
        .udp(50000, 161)
        .write(&mut expected, b"get sysDescr")
        .unwrap();
    assert_eq!(icmp.payload(), expected, "the quoted datagram");
    let counters = s.forwarder.counters().unwrap();
    assert_eq!(counters.get(Outcome::ForwardedIcmpError), 1, "{counters:?}");
}

#[test]
fn a_tcp_syn_reaches_the_listener_and_its_syn_ack_comes_back() {
    let mut s = setup();
    let _listener = s.target.run_in(|| TcpListener::bind("10.20.0.5:22")).unwrap().unwrap();
    write_ip(&mut s.tun, |out| {
        PacketBuilder::ipv4(PEER_A1, PROXY_PLC, 64)
            .tcp(40000, 22, 1_000_000, 64240)
            .syn()
            .write(out, &[])
            .unwrap()
    });
    let reply = read_from(&mut s.tun, PROXY_PLC);
    assert_checksums_valid(&reply);
    let sliced = SlicedPacket::from_ip(&reply).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &sliced.net else { panic!("not IPv4") };
    assert_eq!(ip.header().destination(), PEER_A1);
    let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else { panic!("not TCP") };
    assert!(tcp.syn() && tcp.ack(), "a SYN-ACK from the listener");
    assert_eq!((tcp.source_port(), tcp.destination_port()), (22, 40000));
    assert_eq!(tcp.acknowledgment_number(), 1_000_001);

    // A port the entry does not allow never reaches the target.
    write_ip(&mut s.tun, |out| {
        PacketBuilder::ipv4(PEER_A1, PROXY_PLC, 64).tcp(40001, 23, 1, 64240).syn().write(out, &[]).unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.forwarder.counters().unwrap().get(Outcome::PortNotAllowed) == 0 {
        assert!(Instant::now() < deadline, "the refused SYN was not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ping_through_the_proxy_address() {
    let mut s = setup();
    write_ip(&mut s.tun, |out| {
        PacketBuilder::ipv4(PEER_A1, PROXY_SENSOR, 64)
            .icmpv4_echo_request(777, 1)
            .write(out, b"abcdefgh")
            .unwrap()
    });
    let reply = read_from(&mut s.tun, PROXY_SENSOR);
    assert_checksums_valid(&reply);
    let sliced = SlicedPacket::from_ip(&reply).unwrap();
    let Some(TransportSlice::Icmpv4(icmp)) = &sliced.transport else { panic!("not ICMP") };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 777, seq: 1 })
    );
    let _ = &s.target;
}

/// A virtio_net_hdr (legacy, 10 bytes, little-endian on x86) asking the
/// kernel to finish the L4 checksum (NEEDS_CSUM) and, with `gso_size`, to
/// segment a TCP super-segment (GSO_TCPV4).
fn vnet_header(gso_size: u16, l4_header_len: u16, csum_offset: u16) -> [u8; 10] {
    const NEEDS_CSUM: u8 = 1;
    const GSO_TCPV4: u8 = 1;
    let gso_type = if gso_size != 0 { GSO_TCPV4 } else { 0 };
    let mut h = [0u8; 10];
    h[0] = NEEDS_CSUM;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&(20 + l4_header_len).to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&20u16.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}

/// Replaces the L4 checksum of a raw IPv4 packet by its pseudo-header sum,
/// the CHECKSUM_PARTIAL form a NEEDS_CSUM packet carries.
fn partial_checksum(packet: &mut [u8], csum_at: usize) {
    let l4_len = (packet.len() - 20) as u32;
    let mut sum = packet[9] as u32 + l4_len;
    for pair in packet[12..20].chunks(2) {
        sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    packet[20 + csum_at..20 + csum_at + 2].copy_from_slice(&(sum as u16).to_be_bytes());
}

/// An AF_PACKET socket on `iface` of the calling thread's namespace that sees
/// every frame the interface receives.
fn capture(iface: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let ifindex = ferry_ebpf::if_index(iface).unwrap();
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket() has no memory preconditions; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol as i32) };
    assert!(raw >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: bind reads a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "binding AF_PACKET: {}", std::io::Error::last_os_error());
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
    // SAFETY: SO_RCVTIMEO reads one timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

/// Ethernet frames carrying IPv4 from the gateway's LAN address, for up to
/// two seconds or until `count` arrived.
fn captured_from_gateway(fd: &std::os::fd::OwnedFd, count: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    while frames.len() < count && Instant::now() < deadline {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 34 {
            continue;
        }
        let frame = &buf[..n as usize];
        if frame[12..14] == [8, 0] && frame[26..30] == SNAT {
            frames.push(frame.to_vec());
        }
    }
    frames
}

/// What the WireGuard engine writes: a GRO-coalesced TCP super-segment and a
/// UDP datagram, both CHECKSUM_PARTIAL (NEEDS_CSUM, pseudo-header sum in the
/// checksum field). The TC program's checksum helpers must update that sum
/// as a pseudo-header sum; the segments that reach the target carry full,
/// valid checksums and every segment the NAT port.
#[test]
fn gro_super_segments_with_partial_checksums_are_translated_correctly() {
    let mut s = setup_with(true, FlowTimeouts::DEFAULT);
    let iface = s.target_if.clone();
    let capture = s.target.run_in(move || capture(&iface)).unwrap();

    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut tcp = Vec::new();
    PacketBuilder::ipv4(PEER_A1, PROXY_PLC, 64)
        .tcp(40000, 22, 5_000_000, 64240)
        .ack(1)
        .psh()
        .write(&mut tcp, &payload)
        .unwrap();
    partial_checksum(&mut tcp, 16);
    let mut write = vnet_header(1000, 20, 16).to_vec();
    write.extend_from_slice(&tcp);
    s.tun.write_all(&write).expect("writing the super-segment");

    let segments = captured_from_gateway(&capture, 3);
    assert_eq!(segments.len(), 3, "segments at the target: {:?}", s.forwarder.counters().unwrap());
    let mut received = Vec::new();
    let mut nat_ports = BTreeSet::new();
    for frame in &segments {
        gateway_support::assert_checksums_valid(frame);
        let sliced = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &sliced.net else { panic!("not IPv4") };
        assert_eq!((ip.header().source(), ip.header().destination()), (SNAT, TARGET));
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else { panic!("not TCP") };
        assert_eq!(tcp.destination_port(), 22);
        nat_ports.insert(tcp.source_port());
        received.extend_from_slice(tcp.payload());
    }
    assert_eq!(received, payload, "the segments carry the super-segment's payload in order");
    assert_eq!(nat_ports.len(), 1);
    assert!(nat_ports.iter().all(|p| (NAT_PORT_MIN..=NAT_PORT_MAX).contains(p)));

    let mut udp = Vec::new();
    PacketBuilder::ipv4(PEER_A1, PROXY_SNMP, 64).udp(50000, 161).write(&mut udp, b"partial").unwrap();
    partial_checksum(&mut udp, 6);
    let mut write = vnet_header(0, 8, 6).to_vec();
    write.extend_from_slice(&udp);
    s.tun.write_all(&write).expect("writing the datagram");
    let datagrams = captured_from_gateway(&capture, 1);
    assert_eq!(datagrams.len(), 1);
    gateway_support::assert_checksums_valid(&datagrams[0]);
}

/// The TUN program tells a partial L4 checksum from a full one by what its
/// address update did to the field; when the address change sums to nothing
/// it cannot, and leaves the port to the checksum helper, which knows the
/// skb's state. Partial (NEEDS_CSUM) and full checksums, TCP and UDP, to a
/// proxy address that balances: every one reaches the target valid.
#[test]
fn partial_and_full_checksums_are_translated_right_when_the_address_change_sums_to_nothing() {
    assert_eq!(gateway_support::folded(&[PEER_A1, PROXY_BALANCED]), gateway_support::folded(&[SNAT, TARGET]));
    let mut s = setup_with(true, FlowTimeouts::DEFAULT);
    let iface = s.target_if.clone();
    let capture = s.target.run_in(move || capture(&iface)).unwrap();

    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 11) as u8).collect();
    let tcp = |payload: &[u8]| {
        let mut out = Vec::new();
        PacketBuilder::ipv4(PEER_A1, PROXY_BALANCED, 64)
            .tcp(40000, 22, 7_000_000, 64240)
            .ack(1)
            .psh()
            .write(&mut out, payload)
            .unwrap();
        out
    };
    let mut udp = Vec::new();
    PacketBuilder::ipv4(PEER_A1, PROXY_BALANCED, 64).udp(50000, 161).write(&mut udp, b"balanced").unwrap();

    let mut partial_tcp = tcp(&payload);
    partial_checksum(&mut partial_tcp, 16);
    let mut partial_udp = udp.clone();
    partial_checksum(&mut partial_udp, 6);
    // No virtio-net request (all zeroes): a full checksum.
    let full = [0u8; 10];
    // (what is written, how many segments reach the target)
    let writes = [
        ([&vnet_header(1000, 20, 16)[..], &partial_tcp].concat(), 3),
        ([&vnet_header(0, 8, 6)[..], &partial_udp].concat(), 1),
        ([&full[..], &udp].concat(), 1),
        ([&full[..], &tcp(&payload[..500])].concat(), 1),
        // Partial again, now that both connections are established: these
        // meet the established connections' fast path, which must leave a
        // partial checksum to the full path.
        ([&vnet_header(1000, 20, 16)[..], &partial_tcp].concat(), 3),
        ([&vnet_header(0, 8, 6)[..], &partial_udp].concat(), 1),
    ];

    for (write, expected) in &writes {
        s.tun.write_all(write).expect("writing into the TUN");
        let frames = captured_from_gateway(&capture, *expected);
        assert_eq!(frames.len(), *expected, "at the target: {:?}", s.forwarder.counters().unwrap());
        for frame in &frames {
            gateway_support::assert_checksums_valid(frame);
            let sliced = SlicedPacket::from_ethernet(frame).unwrap();
            let Some(NetSlice::Ipv4(ip)) = &sliced.net else { panic!("not IPv4") };
            assert_eq!((ip.header().source(), ip.header().destination()), (SNAT, TARGET));
            let source_port = match &sliced.transport {
                Some(TransportSlice::Tcp(tcp)) => tcp.source_port(),
                Some(TransportSlice::Udp(udp)) => {
                    assert_ne!(udp.checksum(), 0, "the UDP checksum is kept");
                    udp.source_port()
                }
                other => panic!("not TCP or UDP: {other:?}"),
            };
            assert!((NAT_PORT_MIN..=NAT_PORT_MAX).contains(&source_port), "NAT port {source_port}");
        }
    }
}
