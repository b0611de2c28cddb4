//! ChaCha20-Poly1305 throughput on 1420-byte packets: the ceiling of what one
//! core can encrypt.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_tunnel::proto::crypto;

fn aead(c: &mut Criterion) {
    let key = [7u8; 32];
    let mut buffer = vec![0u8; 1420 + 16];
    let mut group = c.benchmark_group("aead");
    group.throughput(Throughput::Bytes(1420));
    let mut counter = 0u64;
    group.bench_function("seal_1420", |b| {
        b.iter(|| {
            counter += 1;
            crypto::seal_in_place(&key, counter, &[], black_box(&mut buffer));
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = aead
}
criterion_main!(benches);
