//! The probe codec: what authenticates, and that nothing else does.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ferry_paths::probe::{self, ProbeBody};
use ferry_paths::{PROBE_LEN, ProbeDrop, ProbeSecrets};
use proptest::prelude::*;

/// The two ends of one pair.
fn pair(ss: [u8; 32], a: [u8; 32], b: [u8; 32]) -> (ProbeSecrets, ProbeSecrets) {
    (ProbeSecrets::derive(&ss, &a, &b), ProbeSecrets::derive(&ss, &b, &a))
}

fn distinct_keys() -> impl Strategy<Value = ([u8; 32], [u8; 32], [u8; 32])> {
    (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<[u8; 32]>())
        .prop_filter("two distinct ends", |(_, a, b)| a != b)
}

fn address() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        // Flow labels and scope ids do not travel.
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ]
}

fn body() -> impl Strategy<Value = ProbeBody> {
    prop_oneof![
        any::<[u8; 12]>().prop_map(|txid| ProbeBody::Ping { txid }),
        (any::<[u8; 12]>(), address()).prop_map(|(txid, observed)| ProbeBody::Pong { txid, observed }),
    ]
}

/// The refusal a mutation at `index` must meet: the type word, the tag, or the AEAD.
fn refusal_at(index: usize) -> ProbeDrop {
    match index {
        0..4 => ProbeDrop::NotProbe,
        4..12 => ProbeDrop::UnknownTag,
        _ => ProbeDrop::BadAuth,
    }
}

proptest! {
    #[test]
    fn round_trip((ss, a, b) in distinct_keys(), nonce in any::<[u8; 24]>(), body in body()) {
        let (at_a, at_b) = pair(ss, a, b);
        let wire = probe::seal(&at_a, &nonce, &body).unwrap();
        prop_assert_eq!(wire.len(), PROBE_LEN);
        prop_assert!(probe::is_probe(&wire));
        prop_assert_eq!(probe::probe_tag(&wire), Ok(at_b.tag_in));
        let opened = probe::open(&at_b, &wire).unwrap();
        prop_assert_eq!(opened.body, body);
        prop_assert_eq!(opened.nonce, nonce);
        prop_assert_eq!(opened.tag, at_b.tag_in);
        // And back the other way.
        let back = probe::seal(&at_b, &nonce, &body).unwrap();
        prop_assert_eq!(probe::open(&at_a, &back).unwrap().body, body);
    }

    #[test]
    fn one_random_byte_mutation_is_refused(
        (ss, a, b) in distinct_keys(),
        nonce in any::<[u8; 24]>(),
        body in body(),
        index in 0..PROBE_LEN,
        delta in 1..=255u8,
    ) {
        let (at_a, at_b) = pair(ss, a, b);
        let mut wire = probe::seal(&at_a, &nonce, &body).unwrap();
        wire[index] ^= delta;
        prop_assert_eq!(probe::open(&at_b, &wire), Err(refusal_at(index)));
    }

    #[test]
    fn arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..200), (ss, a, b) in distinct_keys()) {
        let (_, at_b) = pair(ss, a, b);
        prop_assert!(probe::open(&at_b, &bytes).is_err());
        let _ = probe::probe_tag(&bytes);
    }

    /// Datagrams shaped like probes (type 16, right length, and even the right
    /// tag, which travels in the clear) still do not authenticate.
    #[test]
    fn forged_probes_with_a_known_tag_fail_authentication(
        (ss, a, b) in distinct_keys(),
        rest in proptest::collection::vec(any::<u8>(), PROBE_LEN - 12),
    ) {
        let (_, at_b) = pair(ss, a, b);
        let mut forged = vec![16, 0, 0, 0];
        forged.extend_from_slice(&at_b.tag_in);
        forged.extend_from_slice(&rest);
        prop_assert_eq!(probe::open(&at_b, &forged), Err(ProbeDrop::BadAuth));
        forged[4] ^= 1;
        prop_assert_eq!(probe::open(&at_b, &forged), Err(ProbeDrop::UnknownTag));
    }

    /// A probe sent back to its sender carries the sender's tag_out, not its tag_in.
    #[test]
    fn a_reflected_probe_is_refused((ss, a, b) in distinct_keys(), nonce in any::<[u8; 24]>(), body in body()) {
        let (at_a, _) = pair(ss, a, b);
        let wire = probe::seal(&at_a, &nonce, &body).unwrap();
        prop_assert_eq!(probe::open(&at_a, &wire), Err(ProbeDrop::UnknownTag));
    }

    /// A probe of one pair means nothing to another pair, even one that shares
    /// an end, and even with the tag rewritten to the other pair's.
    #[test]
    fn a_probe_for_another_pair_is_refused(
        (ss, a, b) in distinct_keys(),
        c in any::<[u8; 32]>(),
        ss2 in any::<[u8; 32]>(),
        nonce in any::<[u8; 24]>(),
        body in body(),
    ) {
        prop_assume!(c != a && c != b);
        let (at_a, _) = pair(ss, a, b);
        let (_, at_c) = pair(ss2, a, c);
        let mut wire = probe::seal(&at_a, &nonce, &body).unwrap();
        prop_assert_eq!(probe::open(&at_c, &wire), Err(ProbeDrop::UnknownTag));
        wire[4..12].copy_from_slice(&at_c.tag_in);
        prop_assert_eq!(probe::open(&at_c, &wire), Err(ProbeDrop::BadAuth));
    }
}

proptest! {
    // Each case opens 84 × 255 mutants; a few cases cover many keys and bodies.
    #![proptest_config(ProptestConfig::with_cases(4))]

    #[test]
    fn every_single_byte_mutation_is_refused((ss, a, b) in distinct_keys(), nonce in any::<[u8; 24]>(), body in body()) {
        let (at_a, at_b) = pair(ss, a, b);
        let wire = probe::seal(&at_a, &nonce, &body).unwrap();
        for index in 0..PROBE_LEN {
            for delta in 1..=255u8 {
                let mut mutant = wire;
                mutant[index] ^= delta;
                prop_assert_eq!(probe::open(&at_b, &mutant), Err(refusal_at(index)), "byte {} ^ {}", index, delta);
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_refused(
        (ss, a, b) in distinct_keys(),
        nonce in any::<[u8; 24]>(),
        body in body(),
        extra in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let (at_a, at_b) = pair(ss, a, b);
        let wire = probe::seal(&at_a, &nonce, &body).unwrap();
        for len in 0..PROBE_LEN {
            let expected = if len < 4 { ProbeDrop::NotProbe } else { ProbeDrop::BadLength };
            prop_assert_eq!(probe::open(&at_b, &wire[..len]), Err(expected), "length {}", len);
            prop_assert_eq!(probe::probe_tag(&wire[..len]), Err(expected));
        }
        let mut longer = wire.to_vec();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(probe::open(&at_b, &longer), Err(ProbeDrop::BadLength));
    }
}

#[test]
fn wireguard_messages_are_not_probes() {
    for kind in 1u8..=4 {
        let mut message = vec![0u8; PROBE_LEN];
        message[0] = kind;
        assert!(!probe::is_probe(&message));
    }
    assert!(!probe::is_probe(&[16, 0, 0, 1]));
    assert!(probe::is_probe(&[16, 0, 0, 0]));
}
