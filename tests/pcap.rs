//! Captures on a lab interface with tcpdump, and checks of what was on the
//! wire: IPv4 header and UDP checksums recomputed from scratch.

use std::{path::PathBuf, time::Duration};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use ferry_lab::{Lab, Netns, Process};
use nix::sys::signal::Signal;

pub struct Capture {
    process: Process,
    file: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i <iface> <filter>` in `ns`, writing every packet as
    /// it arrives.
    pub fn start(lab: &Lab, ns: &Netns, iface: &str, filter: &str) -> Capture {
        let file = lab.dir().join(format!("{iface}-{}.pcap", std::process::id()));
        let mut process = ns
            .spawn_program(
                "tcpdump",
                // Immediate mode: without it, packets wait in a ring block
                // until a timeout, and those of a short capture are lost on stop.
                &[
                    "-i",
                    iface,
                    "--immediate-mode",
                    "-U",
                    "-n",
                    "-s",
                    "0",
                    "-w",
                    file.to_str().unwrap(),
                    filter,
                ],
            )
            .unwrap();
        process.wait_for_output("listening on", Duration::from_secs(10)).unwrap();
        Capture { process, file }
    }

    /// The file tcpdump writes (each packet as it arrives), to read while
    /// the capture runs.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// Stops the capture and returns the Ethernet frames.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        self.process.signal(Signal::SIGINT).unwrap();
        let _ = self.process.wait_timeout(Duration::from_secs(10));
        read_pcap(&std::fs::read(&self.file).unwrap())
    }
}

/// The frames of a classic pcap file (microsecond or nanosecond, either
/// byte order).
pub fn read_pcap(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert!(bytes.len() >= 24, "no pcap header");
    let magic = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    let little = matches!(magic, 0xa1b2c3d4 | 0xa1b23c4d);
    let word = |b: &[u8]| {
        let b: [u8; 4] = b.try_into().unwrap();
        if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }
    };
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let captured = word(&bytes[at + 8..at + 12]) as usize;
        let end = (at + 16 + captured).min(bytes.len());
        frames.push(bytes[at + 16..end].to_vec());
        at = end;
    }
    frames
}

/// Checks every IPv4/IPv6 UDP frame: the IPv4 header checksum and the UDP
/// checksum, both recomputed from scratch. Returns how many UDP frames were
/// checked; panics on the first bad one.
pub fn assert_checksums(frames: &[Vec<u8>]) -> usize {
    let mut checked = 0;
    for (i, frame) in frames.iter().enumerate() {
        let Ok(packet) = SlicedPacket::from_ethernet(frame) else { continue };
        let Some(TransportSlice::Udp(udp)) = &packet.transport else { continue };
        let header = udp.to_header();
        match &packet.net {
            Some(NetSlice::Ipv4(ip)) => {
                let ip_header = ip.header().to_header();
                assert_eq!(
                    ip_header.calc_header_checksum(),
                    ip_header.header_checksum,
                    "frame {i}: bad IPv4 header checksum"
                );
                // Zero means "no checksum" in IPv4.
                if header.checksum != 0 {
                    let expected = header.calc_checksum_ipv4(&ip_header, udp.payload()).unwrap();
                    assert_eq!(expected, header.checksum, "frame {i}: bad UDP checksum");
                }
            }
            Some(NetSlice::Ipv6(ip)) => {
                let ip_header = ip.header().to_header();
                let expected = header.calc_checksum_ipv6(&ip_header, udp.payload()).unwrap();
                assert_eq!(expected, header.checksum, "frame {i}: bad UDP checksum (IPv6)");
            }
            _ => continue,
        }
        checked += 1;
    }
    checked
}
