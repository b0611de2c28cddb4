//! The relay's handshake validator and binding state machine on arbitrary
//! datagrams from arbitrary senders: no panic, and the binding rules hold:
//! only a transport message from a bound address is forwarded, and it goes
//! to the other side's bound address.
#![no_main]

use std::{
    net::SocketAddr,
    sync::OnceLock,
    time::{Duration, Instant},
};

use ferry_relay::core::{Allocation, Decision, PeerAddr, Side, Timeouts, Validator};
use ferry_tunnel::PublicKey;
use libfuzzer_sys::fuzz_target;

/// Fixed keys, so the seed corpus can carry messages with a valid mac1
/// (relay/fuzz/seeds/handshake, made by seeds/make_handshake_seeds.py).
fn keys() -> &'static (PublicKey, PublicKey) {
    static KEYS: OnceLock<(PublicKey, PublicKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        (PublicKey::from_base64("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=").unwrap(), PublicKey::from_base64("ZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gIGCg4Q=").unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let (gateway, client) = keys();
    let start = Instant::now();
    let mut alloc = Allocation::new(Validator::new(gateway, client), Timeouts::default(), start);
    // Records: [sender 0..3][millis][len][bytes...]. Senders 0..3 are four
    // UDP addresses; the seeds hold complete handshakes with a valid mac1.
    let mut rest = data;
    let mut now = start;
    while rest.len() >= 3 {
        let (sender, step, len) = (rest[0] % 4, rest[1], usize::from(rest[2]));
        rest = &rest[3..];
        let datagram = &rest[..len.min(rest.len())];
        rest = &rest[datagram.len()..];
        now += Duration::from_millis(u64::from(step) * 10);
        let from = PeerAddr::Udp(SocketAddr::from(([192, 0, 2, sender + 1], 51820)));
        let is_transport = datagram.len() >= 32 && datagram[..4] == [4, 0, 0, 0];
        match alloc.handle(from, datagram, now) {
            Decision::Forward(to) if is_transport => {
                let side = alloc.bound_side(from).expect("transport forwarded from an unbound address");
                assert_eq!(alloc.bound(side.other()), Some(to), "transport forwarded elsewhere than the binding");
            }
            Decision::Forward(_) | Decision::Drop(_) => {}
        }
        alloc.poll(now);
        let _ = alloc.take_changed();
        let _ = [Side::Gateway, Side::Client].map(|s| alloc.bound(s));
    }
});
