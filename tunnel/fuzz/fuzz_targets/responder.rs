//! The whole device as a responder with a live session, fed arbitrary
//! datagrams. The first byte picks a real message to mutate (an initiation,
//! a response, a cookie reply or a transport packet, so the fuzzer reaches
//! past mac1 and the AEAD) or raw bytes; the rest is XORed onto it.
//! Nothing it sends may come out as a packet: the real messages were all
//! consumed before the fuzzing starts.
#![no_main]

use std::{
    net::SocketAddr,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use ferry_tunnel::{
    PrivateKey,
    proto::{Device, DeviceConfig, Incoming, Now, PeerConfig, Tai64N, Transmit},
};
use libfuzzer_sys::fuzz_target;
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};

struct World {
    responder: Device,
    initiator: Device,
    templates: Vec<Vec<u8>>,
    from: SocketAddr,
    t0: Instant,
}

fn now(t0: Instant, secs: u64) -> Now {
    Now {
        instant: t0 + Duration::from_secs(secs),
        wall: Tai64N::from_unix(Duration::from_secs(1_800_000_000 + secs)),
    }
}

fn world() -> &'static Mutex<World> {
    static WORLD: OnceLock<Mutex<World>> = OnceLock::new();
    WORLD.get_or_init(|| {
        let (ka, kb) = (PrivateKey::from_bytes([1; 32]), PrivateKey::from_bytes([2; 32]));
        let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let to: SocketAddr = "192.0.2.2:51820".parse().unwrap();
        let mut initiator =
            Device::new(DeviceConfig::new(ka.clone()), Box::new(ChaCha20Rng::seed_from_u64(1)));
        let mut responder =
            Device::new(DeviceConfig::new(kb.clone()), Box::new(ChaCha20Rng::seed_from_u64(2)));
        let mut pa = PeerConfig::new(kb.public_key());
        pa.endpoint = Some(to);
        pa.allowed_ips = vec!["10.0.0.2/32".parse().unwrap()];
        let mut pb = PeerConfig::new(ka.public_key());
        pb.allowed_ips = vec!["10.0.0.1/32".parse().unwrap()];
        initiator.add_peer(pa).unwrap();
        responder.add_peer(pb).unwrap();
        let t0 = Instant::now();
        let mut templates = Vec::new();
        // A real exchange: initiation, response, first data packet.
        let mut packet = vec![0x45u8; 28];
        packet[2..4].copy_from_slice(&28u16.to_be_bytes());
        packet[12..16].copy_from_slice(&[10, 0, 0, 1]);
        packet[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let mut to_b: Vec<Transmit> = Vec::new();
        let mut out = vec![0u8; 256];
        initiator.send_packet(now(t0, 0), &packet, &mut out, &mut to_b).unwrap();
        let mut init = to_b.remove(0).payload;
        templates.push(init.clone());
        let mut to_a = Vec::new();
        responder.handle_datagram(now(t0, 0), from, &mut init, &mut to_a);
        let mut resp = to_a.remove(0).payload;
        templates.push(resp.clone());
        let mut to_b = Vec::new();
        initiator.handle_datagram(now(t0, 0), to, &mut resp, &mut to_b);
        for t in to_b {
            templates.push(t.payload.clone());
            let mut d = t.payload;
            responder.handle_datagram(now(t0, 0), from, &mut d, &mut Vec::new());
        }
        let mut cookie = vec![3u8, 0, 0, 0];
        cookie.resize(64, 7);
        templates.push(cookie);
        Mutex::new(World { responder, initiator, templates, from, t0 })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let mut world = world().lock().unwrap();
    let mut datagram = match world.templates.get(usize::from(selector) % (world.templates.len() + 1)) {
        Some(template) => {
            let mut d = template.clone();
            for (byte, mask) in d.iter_mut().zip(rest) {
                *byte ^= mask;
            }
            d
        }
        None => rest.to_vec(),
    };
    let (from, t0) = (world.from, world.t0);
    let mut transmits = Vec::new();
    let result = world.responder.handle_datagram(now(t0, 1), from, &mut datagram, &mut transmits);
    // Every authentic message in the templates was consumed during setup, so
    // whatever arrives now (mutated, replayed or raw) must not yield a packet.
    assert!(
        !matches!(result, Incoming::Packet { .. }),
        "a forged or replayed datagram produced a packet: {result:?}"
    );
    // Timers stay sane whatever came in.
    world.responder.update_timers(now(t0, 2), &mut transmits);
    let _ = &world.initiator;
});
