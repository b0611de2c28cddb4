//! The engine's crypto alone: two sans-IO devices with a session between
//! them, one direction's 1420-byte packets sealed by one and opened by the
//! other in batches through [`CryptoPool`], as the endpoint does, with no TUN
//! device and no socket. Run with one thread and with two, interleaved, to
//! show what spreading a direction over cores gives. `ferry-bench
//! tunnel-crypto` runs this part alone.

use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use ferry_tunnel::{
    PrivateKey,
    parallel::CryptoPool,
    proto::{Begin, Device, DeviceConfig, Incoming, Now, PeerConfig, Prepared, Transmit},
};
use rand_core::OsRng;

use crate::report::{Better, Row};

/// Packets per batch: one 64 KiB TUN read of 1420-byte packets is about 46.
const BATCH: usize = 46;
const PACKET: usize = 1420;
/// Short rounds, interleaved, and the best of each: on a shared machine a
/// round of two threads only shows what they do when both get a core, which
/// the best of many short rounds comes closest to (and the best is taken for
/// one thread alike).
const ROUND: Duration = Duration::from_millis(400);
const ROUNDS: usize = 8;

pub fn rows() -> Result<Vec<Row>> {
    let mut pair = Pair::new()?;
    let one = CryptoPool::new(NonZeroUsize::MIN)?;
    let two = CryptoPool::new(NonZeroUsize::new(2).context("two")?)?;
    let (mut one_bps, mut two_bps) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        one_bps.push(pair.throughput(&one)?);
        two_bps.push(pair.throughput(&two)?);
    }
    eprintln!(
        "tunnel bench: crypto alone, Gbit/s per round: 1 thread {:.2?}, 2 threads {:.2?}",
        one_bps.iter().map(|b| b / 1e9).collect::<Vec<_>>(),
        two_bps.iter().map(|b| b / 1e9).collect::<Vec<_>>()
    );
    Ok(vec![Row::new(
        "tunnel",
        "crypto_only_2_threads",
        "Gbit/s",
        best(&two_bps) / 1e9,
        best(&one_bps) / 1e9,
        "the same engine's crypto on 1 thread (seal + open of 1420-byte packets, no TUN, no sockets)",
        Better::Higher,
    )])
}

/// Two devices with a confirmed session, A sending to B.
struct Pair {
    a: Device,
    b: Device,
    a_addr: SocketAddr,
    packet: Vec<u8>,
}

impl Pair {
    fn new() -> Result<Pair> {
        let (ka, kb) = (PrivateKey::generate(), PrivateKey::generate());
        let a_addr: SocketAddr = "192.0.2.1:51820".parse()?;
        let b_addr: SocketAddr = "192.0.2.2:51820".parse()?;
        let mut a = Device::new(DeviceConfig::new(ka.clone()), Box::new(OsRng));
        let mut b = Device::new(DeviceConfig::new(kb.clone()), Box::new(OsRng));
        let mut to_b = PeerConfig::new(kb.public_key());
        to_b.endpoint = Some(b_addr);
        to_b.allowed_ips = vec!["10.88.0.2/32".parse()?];
        let mut to_a = PeerConfig::new(ka.public_key());
        to_a.allowed_ips = vec!["10.88.0.1/32".parse()?];
        a.add_peer(to_b).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        b.add_peer(to_a).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let packet = ipv4_udp([10, 88, 0, 1], [10, 88, 0, 2], PACKET);
        let mut pair = Pair { a, b, a_addr, packet };
        pair.handshake()?;
        Ok(pair)
    }

    /// The handshake, then one packet each way so both hold current keys.
    fn handshake(&mut self) -> Result<()> {
        let mut out = vec![0u8; 2048];
        let mut to_b = Vec::new();
        let mut to_a = Vec::new();
        self.a.send_packet(Now::system(), &self.packet, &mut out, &mut to_b)?;
        for _ in 0..4 {
            deliver(&mut self.b, self.a_addr, &mut to_b, &mut to_a);
            deliver(&mut self.a, "192.0.2.2:51820".parse()?, &mut to_a, &mut to_b);
        }
        let mut batch = vec![0u8; 2048];
        let Ok(Prepared::Seal { job, .. }) =
            self.a.prepare_packet(Now::system(), &self.packet, &mut batch, &mut to_b)
        else {
            bail!("no session after the handshake");
        };
        job.seal(&mut batch);
        let datagram = &mut batch[..job.len];
        ensure!(
            matches!(
                self.b.handle_datagram(Now::system(), self.a_addr, datagram, &mut to_a),
                Incoming::Packet { .. }
            ),
            "the session does not carry packets"
        );
        Ok(())
    }

    /// Bits per second of plaintext carried A to B through `pool`.
    fn throughput(&mut self, pool: &CryptoPool) -> Result<f64> {
        let sealed_max = self.packet.len() + 64;
        let mut out = vec![0u8; BATCH * sealed_max];
        let mut transmits: Vec<Transmit> = Vec::new();
        let started = Instant::now();
        let mut bytes = 0u64;
        while started.elapsed() < ROUND {
            let now = Now::system();
            let mut jobs = Vec::with_capacity(BATCH);
            for slot in out.chunks_mut(sealed_max) {
                match self.a.prepare_packet(now, &self.packet, slot, &mut transmits)? {
                    Prepared::Seal { job, .. } => jobs.push((job, slot)),
                    Prepared::Queued => bail!("a packet was queued for a handshake"),
                }
            }
            pool.run(&mut jobs, |(job, slot)| job.seal(slot));
            let mut opens = Vec::with_capacity(BATCH);
            for (job, slot) in jobs {
                let datagram = &mut slot[..job.len];
                match self.b.begin_datagram(now, self.a_addr, datagram, &mut transmits) {
                    Begin::Open(pending) => opens.push((pending, datagram, None)),
                    Begin::Done(incoming) => bail!("a transport message was not opened: {incoming:?}"),
                }
            }
            pool.run(&mut opens, |(pending, datagram, opened)| *opened = Some(pending.open(datagram)));
            for (pending, datagram, opened) in opens {
                let opened = opened.context("a job was not run")?;
                match self.b.finish_open(now, pending, opened, datagram, &mut transmits) {
                    Incoming::Packet { range, .. } => bytes += range.len() as u64,
                    other => bail!("a packet did not come through: {other:?}"),
                }
            }
            transmits.clear();
        }
        Ok(bytes as f64 * 8.0 / started.elapsed().as_secs_f64())
    }
}

fn deliver(to: &mut Device, from: SocketAddr, datagrams: &mut Vec<Transmit>, replies: &mut Vec<Transmit>) {
    for mut t in datagrams.drain(..) {
        to.handle_datagram(Now::system(), from, &mut t.payload, replies);
    }
}

/// An IPv4 UDP packet of `len` bytes (checksums are not the engine's business).
fn ipv4_udp(source: [u8; 4], destination: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&source);
    p[16..20].copy_from_slice(&destination);
    p
}

fn best(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}
