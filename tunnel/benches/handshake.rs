//! Handshakes per second of the protocol core, and the X25519 operations it
//! is bounded by (a DH with another point, and a key generation), for work
//! on the handshake with criterion. `cargo xtask bench tunnel` measures the
//! handshake row itself, in interleaved rounds (`ferry-bench
//! tunnel-handshake`).

#![allow(clippy::unwrap_used, reason = "a benchmark whose setup fails should stop")]

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use ferry_tunnel::{
    PrivateKey,
    proto::{
        Tai64N,
        handshake::{self, Identity},
        messages::{Message, parse},
    },
};
use rand_core::OsRng;
use x25519_dalek::{PublicKey as DhPublic, StaticSecret};

/// One complete handshake: initiation, consumption, response, consumption.
fn handshake(c: &mut Criterion) {
    let (a, b) = (PrivateKey::generate(), PrivateKey::generate());
    let (ia, ib) = (Identity::new(&a), Identity::new(&b));
    let ss_a = ia.static_static(&b.public_key()).unwrap();
    let ss_b = ib.static_static(&a.public_key()).unwrap();
    let peer_b = b.public_key();
    let psk = [0u8; 32];
    let mut stamp = 0u64;
    c.bench_function("handshake", |bench| {
        bench.iter(|| {
            stamp += 1;
            let (state, init) = handshake::initiate(
                &ia,
                &peer_b,
                &ss_a,
                1,
                Tai64N::from_unix(Duration::from_secs(stamp)),
                &mut OsRng,
            )
            .unwrap();
            let Ok(Message::Initiation(init)) = parse(&init) else { unreachable!() };
            let consumed = handshake::consume_initiation(&ib, &init, |_| Some(ss_b)).unwrap();
            let (resp, keys_b) = handshake::respond(&consumed, &psk, 2, &mut OsRng).unwrap();
            let Ok(Message::Response(resp)) = parse(&resp) else { unreachable!() };
            let keys_a = handshake::consume_response(&ia, &state, &psk, &resp).unwrap();
            black_box((keys_a.send, keys_b.send));
        })
    });
    c.bench_function("x25519", |bench| {
        let other = PrivateKey::generate().public_key();
        bench.iter(|| black_box(ia.static_static(black_box(&other)).unwrap()))
    });
    // An ephemeral public key: X25519 of the base point, which the curve
    // library computes from a table, faster than a DH with another point.
    c.bench_function("x25519_keygen", |bench| {
        let secret = StaticSecret::random_from_rng(OsRng);
        bench.iter(|| black_box(DhPublic::from(black_box(&secret))))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = handshake
}
criterion_main!(benches);
