//! A capture of every frame the machine network delivers: one AF_PACKET
//! socket in the switch's namespace, for the whole run. It takes each
//! frame as it leaves a switch port toward a host (the gateway, target-a,
//! target-b, the world's probe), so a frame counts once per host it
//! reaches, and none is missed whichever way it came (the gateway's TC
//! redirect, the bridge's flooding). The frames the bridge device itself
//! sends are taken at the ports they leave by, not on the bridge.
//!
//! Cheap on purpose (a debug-build soak on 2 cores): a classic BPF filter
//! in the kernel keeps outgoing frames only and cuts each to
//! [`SNAP_LEN`] bytes (the headers), and a thread parses them into
//! [`Packet`]s with the kernel's receive timestamp.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etherparse::{
    ArpOperation, EtherType, Icmpv4Type, IpNumber, Ipv4HeaderSlice, LaxNetSlice, LaxSlicedPacket,
    TransportSlice,
};
use ferry_lab::Netns;
use nix::sys::{
    socket::{setsockopt, sockopt},
    time::TimeVal,
};

use crate::machine_net::{Frame, L4, Packet, Quoted};

/// Bytes kept of each frame: Ethernet, IPv4 with options, TCP with
/// options, or an ICMP error's quoted header and ports.
pub const SNAP_LEN: u32 = 128;

/// The socket's receive buffer: room for seconds of the soak's traffic
/// should the reader fall behind (its losses are counted, and a breach).
const RECEIVE_BUFFER: usize = 32 << 20;

/// How long the kernel's timestamp may lag the reading before it is taken
/// for a step of the wall clock rather than a queue (see [`kernel_instant`]).
const MAX_QUEUE_AGE: Duration = Duration::from_secs(10);

/// The reader thread's name (at most 15 bytes: the kernel's `comm`).
const THREAD: &str = "soak-capture";

pub struct Capture {
    fd: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    packets: Arc<Mutex<Vec<Packet>>>,
    /// What stopped the reader, if anything did.
    failed: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
    /// Frames the kernel dropped for want of buffer, so far.
    lost: u64,
}

impl Capture {
    /// Starts the capture in `ns` on every interface but `bridge` (the
    /// bridge device, whose frames are taken at its ports).
    pub fn start(ns: &Netns, bridge: &str) -> Result<Capture, String> {
        let bridge = bridge.to_string();
        let fd = ns.run_in(move || open(&bridge)).map_err(|e| e.to_string())??;
        let fd = Arc::new(fd);
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(None));
        let thread = {
            let (fd, stop, packets, failed) = (fd.clone(), stop.clone(), packets.clone(), failed.clone());
            std::thread::Builder::new()
                .name(THREAD.into())
                .spawn(move || {
                    if let Err(e) = read(&fd, &stop, &packets) {
                        *failed.lock().unwrap() = Some(e);
                    }
                })
                .map_err(|e| format!("the capture's thread: {e}"))?
        };
        Ok(Capture { fd, stop, packets, failed, thread: Some(thread), lost: 0 })
    }

    /// The packets captured since the last call.
    pub fn take(&self) -> Vec<Packet> {
        std::mem::take(&mut *self.packets.lock().unwrap())
    }

    /// Frames lost so far (the kernel's count; a capture with losses
    /// cannot vouch for what it did not see), or why the capture stopped.
    pub fn health(&mut self) -> Result<u64, String> {
        if let Some(e) = self.failed.lock().unwrap().clone() {
            return Err(format!("the machine network's capture stopped: {e}"));
        }
        let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: a valid socket, and a buffer of the size the option takes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(format!("PACKET_STATISTICS: {}", std::io::Error::last_os_error()));
        }
        // Reading the statistics resets them.
        self.lost += u64::from(stats.tp_drops);
        Ok(self.lost)
    }
}

/// The CPU time the reader threads used so far (user and system; one per
/// machine network), from /proc: what the captures cost the soak.
pub fn cpu_time() -> Option<Duration> {
    // SAFETY: sysconf(3) has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let mut used: Option<u64> = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        if std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == THREAD) {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            // After the command's closing parenthesis: state is field 3,
            // utime and stime fields 14 and 15.
            let Some((_, rest)) = stat.rsplit_once(')') else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            *used.get_or_insert(0) += field(11) + field(12);
        }
    }
    used.map(|used| Duration::from_secs_f64(used as f64 / ticks.max(1) as f64))
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The socket, in the calling thread's namespace: every protocol, the
/// filter, kernel timestamps, a large buffer, and a read timeout so that
/// the reader sees its stop flag.
fn open(bridge: &str) -> Result<OwnedFd, String> {
    let bridge_index =
        nix::net::if_::if_nametoindex(bridge).map_err(|e| format!("the index of {bridge}: {e}"))?;
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol.into()) };
    if raw < 0 {
        return Err(format!("AF_PACKET socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut program = filter(bridge_index);
    let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
    // SAFETY: the program outlives the call, which copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("SO_ATTACH_FILTER: {}", std::io::Error::last_os_error()));
    }
    setsockopt(&fd, sockopt::ReceiveTimestampns, &true).map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
    setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER).map_err(|e| format!("SO_RCVBUFFORCE: {e}"))?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 200_000))
        .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
    Ok(fd)
}

/// Classic BPF: outgoing frames (PACKET_OUTGOING) of every interface but
/// the bridge's, cut to [`SNAP_LEN`]; everything else is not queued.
fn filter(bridge_index: u32) -> Vec<libc::sock_filter> {
    const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
    const SKF_AD_PKTTYPE: u32 = 4;
    const SKF_AD_IFINDEX: u32 = 8;
    const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        op(LD_B_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE),
        op(JEQ_K, 0, 3, libc::PACKET_OUTGOING as u32),
        op(LD_W_ABS, 0, 0, SKF_AD_OFF + SKF_AD_IFINDEX),
        op(JEQ_K, 1, 0, bridge_index),
        op(RET_K, 0, 0, SNAP_LEN),
        op(RET_K, 0, 0, 0),
    ]
}

fn read(fd: &OwnedFd, stop: &AtomicBool, packets: &Mutex<Vec<Packet>>) -> Result<(), String> {
    let mut buffer = [0u8; SNAP_LEN as usize];
    // Room for one control message: the timestamp (SCM_TIMESTAMPNS).
    let mut control = [0u64; 8];
    while !stop.load(Ordering::Relaxed) {
        let mut iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
        // SAFETY: zeroed msghdr is valid; the pointers set below outlive the call.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg(2) into the buffers described above.
        let len = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut message, 0) };
        if len < 0 {
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                _ => return Err(format!("recvmsg: {error}")),
            }
        }
        let stamp = timestamp(&message).ok_or("a frame without its kernel timestamp")?;
        let len = (len as usize).min(buffer.len());
        let packet = Packet { at: kernel_instant(stamp), frame: parse(&buffer[..len]) };
        packets.lock().unwrap().push(packet);
    }
    Ok(())
}

/// The SCM_TIMESTAMPNS control message of a received `message`.
fn timestamp(message: &libc::msghdr) -> Option<libc::timespec> {
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled, within
    // the length it set.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_TIMESTAMPNS {
                return Some(std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::timespec>()));
            }
            header = libc::CMSG_NXTHDR(message, header);
        }
    }
    None
}

/// The kernel's timestamp (wall clock) on the soak's monotonic clock, on
/// which the sessions' history is kept: now, less how long the frame
/// waited in the socket's queue by the wall clock. A step of the wall
/// clock (another fault steps clocks) then moves no packet in time, but
/// for one between a frame's arrival and its reading; an age beyond
/// [`MAX_QUEUE_AGE`], or negative, is such a step, and the reading time
/// stands in.
fn kernel_instant(stamp: libc::timespec) -> Instant {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let at =
        UNIX_EPOCH + Duration::new(stamp.tv_sec.max(0) as u64, stamp.tv_nsec.clamp(0, 999_999_999) as u32);
    match wall.duration_since(at) {
        Ok(age) if age <= MAX_QUEUE_AGE => now.checked_sub(age).unwrap_or(now),
        _ => now,
    }
}

/// What a frame is, as far as the checks need to know; a frame that does
/// not parse is kept as [`Frame::Other`] with why (and is a breach).
pub fn parse(bytes: &[u8]) -> Frame {
    let sliced = match LaxSlicedPacket::from_ethernet(bytes) {
        Ok(sliced) => sliced,
        Err(e) => return Frame::Other { ether_type: 0, what: format!("not Ethernet: {e}") },
    };
    let ether_type = sliced.ether_payload().map_or(0, |p| p.ether_type.0);
    match &sliced.net {
        Some(LaxNetSlice::Arp(arp)) => {
            let ip = |b: &[u8]| <[u8; 4]>::try_from(b).ok().map(std::net::Ipv4Addr::from);
            match (ip(arp.sender_protocol_addr()), ip(arp.target_protocol_addr())) {
                (Some(sender), Some(target)) if arp.proto_addr_type() == EtherType::IPV4 => {
                    Frame::Arp { request: arp.operation() == ArpOperation::REQUEST, sender, target }
                }
                _ => Frame::Other { ether_type, what: "ARP for another protocol".into() },
            }
        }
        Some(LaxNetSlice::Ipv4(ip)) => {
            let header = ip.header();
            let (src, dst) = (header.source_addr(), header.destination_addr());
            if ip.is_payload_fragmented() {
                return Frame::Ipv4 { src, dst, l4: L4::Fragment };
            }
            let l4 = match &sliced.transport {
                Some(TransportSlice::Tcp(tcp)) => L4::Tcp {
                    sport: tcp.source_port(),
                    dport: tcp.destination_port(),
                    rst: tcp.rst(),
                    syn: tcp.syn(),
                },
                Some(TransportSlice::Udp(udp)) => {
                    L4::Udp { sport: udp.source_port(), dport: udp.destination_port() }
                }
                Some(TransportSlice::Icmpv4(icmp)) => match icmp.icmp_type() {
                    Icmpv4Type::EchoRequest(echo) => L4::Echo { request: true, id: echo.id },
                    Icmpv4Type::EchoReply(echo) => L4::Echo { request: false, id: echo.id },
                    Icmpv4Type::DestinationUnreachable(_)
                    | Icmpv4Type::TimeExceeded(_)
                    | Icmpv4Type::ParameterProblem(_) => {
                        L4::IcmpError { icmp_type: icmp.type_u8(), quoted: quoted(icmp.payload()) }
                    }
                    _ => L4::Icmp { icmp_type: icmp.type_u8() },
                },
                _ => L4::Other { protocol: ip.payload_ip_number().0 },
            };
            Frame::Ipv4 { src, dst, l4 }
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let header = ip.header();
            let icmp_type = match &sliced.transport {
                Some(TransportSlice::Icmpv6(icmp)) => Some(icmp.type_u8()),
                _ => None,
            };
            Frame::Ipv6 {
                src: header.source_addr(),
                dst: header.destination_addr(),
                next: ip.payload().ip_number.0,
                icmp_type,
            }
        }
        None => Frame::Other { ether_type, what: "no network layer".into() },
    }
}

/// The packet an ICMP error quotes: its addresses and ports (an echo's
/// identifier for both), as far as the quote goes.
fn quoted(payload: &[u8]) -> Option<Quoted> {
    let header = Ipv4HeaderSlice::from_slice(payload).ok()?;
    let l4 = payload.get(header.slice().len()..)?;
    let word = |at: usize| l4.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let protocol = header.protocol();
    let (sport, dport) = if protocol == IpNumber::ICMP {
        let id = word(4)?;
        (id, id)
    } else {
        (word(0)?, word(2)?)
    };
    Some(Quoted {
        protocol: protocol.0,
        src: header.source_addr(),
        dst: header.destination_addr(),
        sport,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);

    #[test]
    fn frames_parse_into_what_the_check_reads() {
        use ferry_lab::packet::{arp_request, icmp4_echo, tcp4, udp4};
        assert_eq!(
            parse(&tcp4([192, 168, 50, 1], 40001, [192, 168, 50, 10], 8081, b"x")),
            Frame::Ipv4 {
                src: GW,
                dst: A,
                l4: L4::Tcp { sport: 40001, dport: 8081, rst: false, syn: false }
            }
        );
        assert_eq!(
            parse(&udp4([192, 168, 50, 1], 40001, [192, 168, 50, 11], 7001, b"x")),
            Frame::Ipv4 { src: GW, dst: B, l4: L4::Udp { sport: 40001, dport: 7001 } }
        );
        assert_eq!(
            parse(&icmp4_echo([192, 168, 50, 1], [192, 168, 50, 11])),
            Frame::Ipv4 { src: GW, dst: B, l4: L4::Echo { request: true, id: 1 } }
        );
        assert_eq!(
            parse(&arp_request([192, 168, 50, 10], [192, 168, 50, 1])),
            Frame::Arp { request: true, sender: A, target: GW }
        );
        // Cut to the capture's snap length, a long segment still parses.
        let long = tcp4([192, 168, 50, 1], 40001, [192, 168, 50, 10], 8080, &[0u8; 1400]);
        assert_eq!(
            parse(&long[..SNAP_LEN as usize]),
            Frame::Ipv4 {
                src: GW,
                dst: A,
                l4: L4::Tcp { sport: 40001, dport: 8080, rst: false, syn: false }
            }
        );
    }
}
