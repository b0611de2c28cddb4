use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use stun_types::{
    attribute::{
        Attribute as _, AttributeStaticType, ErrorCode, Fingerprint, RawAttribute, Software,
        UnknownAttributes, XorMappedAddress,
    },
    message::{
        BINDING, Message, MessageClass, MessageType, MessageWrite, MessageWriteExt, MessageWriteVec, Method,
        TransactionId,
    },
};

use super::*;

/// RFC 5769 2.1: a Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED,
/// USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
const RFC5769_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa,
    0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20,
    0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00,
    0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a,
    0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf,
    0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28,
    0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769 2.2: an IPv4 Binding success response.
const RFC5769_RESPONSE_V4: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa,
    0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f,
    0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00,
    0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53,
    0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769's transaction id and mapped addresses (2.2 and 2.3).
const RFC5769_TRANSACTION: u128 = 0xb7e7_a701_bc34_d686_fa87_dfae;
const RFC5769_XOR_MAPPED_V4: [u8; 12] =
    [0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
const RFC5769_XOR_MAPPED_V6: [u8; 24] = [
    0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc,
    0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
];

fn from() -> SocketAddr {
    "192.0.2.1:32853".parse().unwrap()
}

fn request(transaction: u128, fingerprint: bool) -> Vec<u8> {
    let mut out = Message::builder(
        MessageType::from_class_method(MessageClass::Request, BINDING),
        TransactionId::from(transaction),
        MessageWriteVec::new(),
    );
    if fingerprint {
        out.add_fingerprint().unwrap();
    }
    out.finish()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Parses a response and returns it with the address it reports.
fn mapped(response: &[u8], transaction: u128) -> SocketAddr {
    let message = Message::from_bytes(response).unwrap();
    assert!(message.has_class(MessageClass::Success));
    assert!(message.has_method(BINDING));
    assert_eq!(message.transaction_id(), TransactionId::from(transaction));
    message.attribute::<XorMappedAddress>().unwrap().addr(message.transaction_id())
}

#[test]
fn binding_request_gets_xor_mapped_address_as_in_rfc5769_ipv4() {
    let response = answer(&request(RFC5769_TRANSACTION, false), from()).unwrap().unwrap();
    // Byte for byte the attribute of RFC 5769 2.2.
    assert!(contains(&response, &RFC5769_XOR_MAPPED_V4), "{response:02x?}");
    assert_eq!(mapped(&response, RFC5769_TRANSACTION), from());
    let message = Message::from_bytes(&response).unwrap();
    assert_eq!(message.attribute::<Software>().unwrap().software(), SOFTWARE);
    assert!(!message.has_attribute(Fingerprint::TYPE), "no FINGERPRINT asked for");
    // The same transaction id, cookie included.
    assert_eq!(response[4..20], request(RFC5769_TRANSACTION, false)[4..20]);
}

#[test]
fn binding_request_gets_xor_mapped_address_as_in_rfc5769_ipv6() {
    let from: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap();
    let response = answer(&request(RFC5769_TRANSACTION, true), from).unwrap().unwrap();
    assert!(contains(&response, &RFC5769_XOR_MAPPED_V6), "{response:02x?}");
    assert_eq!(mapped(&response, RFC5769_TRANSACTION), from);
}

#[test]
fn fingerprint_is_answered_with_fingerprint() {
    let response = answer(&request(7, true), from()).unwrap().unwrap();
    let message = Message::from_bytes(&response).unwrap();
    // from_bytes checks the CRC; it must also be the last attribute.
    let last = message.iter_attributes().last().unwrap().1;
    assert_eq!(last.get_type(), Fingerprint::TYPE);
    assert_eq!(response.len(), usize::from(u16::from_be_bytes([response[2], response[3]])) + 20);
}

#[test]
fn ipv4_mapped_sources_are_reported_as_ipv4() {
    let v4 = Ipv4Addr::new(198, 51, 100, 7);
    let from = SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), 4242);
    let response = answer(&request(1, false), from).unwrap().unwrap();
    assert_eq!(mapped(&response, 1), SocketAddr::new(IpAddr::V4(v4), 4242));
}

#[test]
fn rfc5769_request_with_ice_attributes_gets_420_listing_them() {
    let response = answer(&RFC5769_REQUEST, from()).unwrap().unwrap();
    assert!(matches!(respond(&RFC5769_REQUEST, from()), Outcome::ErrorResponse(_)));
    let message = Message::from_bytes(&response).unwrap();
    assert!(message.has_class(MessageClass::Error));
    assert!(message.has_method(BINDING));
    assert_eq!(message.transaction_id(), TransactionId::from(RFC5769_TRANSACTION));
    assert_eq!(message.attribute::<ErrorCode>().unwrap().code(), 420);
    let unknown = message.attribute::<UnknownAttributes>().unwrap();
    // PRIORITY, USERNAME, MESSAGE-INTEGRITY; not the optional SOFTWARE,
    // ICE-CONTROLLED or FINGERPRINT.
    for kind in [0x0024u16, 0x0006, 0x0008] {
        assert!(unknown.has_attribute(kind.into()), "{kind:#06x} not listed");
    }
    for kind in [0x8022u16, 0x8029, 0x8028] {
        assert!(!unknown.has_attribute(kind.into()), "{kind:#06x} listed");
    }
    // The request had a FINGERPRINT, so the error response has one.
    assert!(message.has_attribute(Fingerprint::TYPE));
}

#[test]
fn unknown_attribute_list_is_bounded_and_deduplicated() {
    let mut out = Message::builder_request(BINDING, MessageWriteVec::new());
    for kind in 0x7000u16..0x7040 {
        out.add_attribute(&RawAttribute::new(kind.into(), &[1, 2, 3, 4])).unwrap();
    }
    let request = out.finish();
    let response = answer(&request, from()).unwrap().unwrap();
    let message = Message::from_bytes(&response).unwrap();
    let listed = message.raw_attribute(UnknownAttributes::TYPE).unwrap();
    assert_eq!(usize::from(listed.length()), MAX_UNKNOWN_LISTED * 2);
    assert!(response.len() < request.len());

    // The same unknown type twice is listed once.
    let mut out = Message::builder_request(BINDING, MessageWriteVec::new());
    out.add_attribute(&RawAttribute::new(0x0003.into(), &[0, 0, 0, 0])).unwrap();
    let mut request = out.finish();
    request.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0]);
    let len = (request.len() - 20) as u16;
    request[2..4].copy_from_slice(&len.to_be_bytes());
    let response = answer(&request, from()).unwrap().unwrap();
    let message = Message::from_bytes(&response).unwrap();
    assert_eq!(message.raw_attribute(UnknownAttributes::TYPE).unwrap().length(), 2);
}

#[test]
fn optional_unknown_attributes_are_ignored() {
    let mut out = Message::builder_request(BINDING, MessageWriteVec::new());
    out.add_attribute(&Software::new("someone else").unwrap()).unwrap();
    out.add_attribute(&RawAttribute::new(0xc001.into(), &[9; 5])).unwrap();
    let request = out.finish();
    assert!(matches!(respond(&request, from()), Outcome::Answered(_)));
}

#[test]
fn responses_indications_and_other_methods_get_no_answer() {
    assert_eq!(answer(&RFC5769_RESPONSE_V4, from()), Ok(None));
    let indication = Message::builder_indication(BINDING, MessageWriteVec::new()).finish();
    assert_eq!(answer(&indication, from()), Ok(None));
    // TURN Allocate (0x003).
    let allocate = Message::builder_request(Method::new(0x003), MessageWriteVec::new()).finish();
    assert_eq!(answer(&allocate, from()), Ok(None));
    assert_eq!(respond(&allocate, from()), Outcome::NotBinding);
    assert_eq!(respond(&allocate, from()).label(), "not_binding");
}

#[test]
fn malformed_messages_are_refused_with_the_reason() {
    let good = request(5, true);
    assert_eq!(answer(&good[..19], from()), Err(StunError::TooShort { len: 19 }));
    assert_eq!(answer(&[], from()), Err(StunError::TooShort { len: 0 }));

    let mut bits = good.clone();
    bits[0] |= 0x80;
    assert_eq!(answer(&bits, from()), Err(StunError::NotStun));

    // An RFC 3489 request (the Vovida `stun` client's): no magic cookie.
    let classic = hex("0001000801f6de2a093b417e1e784f15397501460003000400000000");
    assert_eq!(answer(&classic, from()), Err(StunError::NoMagicCookie));

    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 4]);
    assert_eq!(answer(&longer, from()), Err(StunError::LengthMismatch { declared: 8, actual: 12 }));

    // Length 2 with two trailing bytes: consistent, but not whole words.
    let mut unaligned = request(5, false);
    unaligned[3] = 2;
    unaligned.extend_from_slice(&[0, 0]);
    assert_eq!(answer(&unaligned, from()), Err(StunError::Unaligned(2)));

    // An attribute that claims more bytes than there are.
    let mut overrun = request(5, false);
    overrun.extend_from_slice(&[0x80, 0x22, 0x00, 0x40, 0x61, 0x62, 0x63, 0x64]);
    overrun[3] = 8;
    assert!(matches!(answer(&overrun, from()), Err(StunError::Parse(_))), "{:?}", answer(&overrun, from()));

    let mut tampered = good.clone();
    tampered[10] ^= 1;
    assert_eq!(answer(&tampered, from()), Err(StunError::Parse(StunParseError::FingerprintMismatch)));

    let mut after = good.clone();
    after.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
    after[3] += 4;
    assert_eq!(answer(&after, from()), Err(StunError::AfterFingerprint));
    assert_eq!(respond(&after, from()).label(), "malformed");
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), addr in any_addr()) {
        let _ = answer(&bytes, addr);
    }

    /// Arbitrary attributes behind a header that passes the framing checks,
    /// so the codec itself is exercised; whatever comes back parses.
    #[test]
    fn arbitrary_attributes_never_panic(
        transaction in any::<[u8; 12]>(),
        words in proptest::collection::vec(any::<[u8; 4]>(), 0..40),
        class in 0u16..4,
        addr in any_addr(),
    ) {
        let mut bytes = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        bytes[0] |= ((class & 2) >> 1) as u8;
        bytes[1] |= ((class & 1) << 4) as u8;
        bytes.extend_from_slice(&transaction);
        for word in &words {
            bytes.extend_from_slice(word);
        }
        let len = (words.len() * 4) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        if let Ok(Some(response)) = answer(&bytes, addr) {
            let message = Message::from_bytes(&response).unwrap();
            prop_assert!(message.is_response());
            prop_assert_eq!(&response[4..20], &bytes[4..20]);
        }
    }

    #[test]
    fn valid_requests_round_trip_to_the_source_address(
        transaction in any::<u128>(),
        addr in any_addr(),
        fingerprint in any::<bool>(),
    ) {
        let transaction = transaction & ((1u128 << 96) - 1);
        let response = answer(&request(transaction, fingerprint), addr).unwrap().unwrap();
        prop_assert_eq!(mapped(&response, transaction), SocketAddr::new(addr.ip().to_canonical(), addr.port()));
        let message = Message::from_bytes(&response).unwrap();
        prop_assert_eq!(message.has_attribute(Fingerprint::TYPE), fingerprint);
    }
}

mod udp {
    use std::{process::Stdio, time::Duration};

    use tokio::net::UdpSocket;

    use super::*;
    use crate::metrics::{Metrics, OutcomeLabels};

    async fn start() -> (SocketAddr, Metrics, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let metrics = Metrics::new();
        let task = tokio::spawn(serve(socket, metrics.clone()));
        (addr, metrics, task)
    }

    fn count(metrics: &Metrics, outcome: &'static str) -> u64 {
        metrics.stun_requests.get_or_create(&OutcomeLabels { outcome }).get()
    }

    #[tokio::test]
    async fn serves_and_counts_over_udp() {
        let (server, metrics, task) = start().await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 512];

        client.send_to(&request(99, true), server).await.unwrap();
        let (n, _) =
            tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(mapped(&buf[..n], 99), client.local_addr().unwrap());

        client.send_to(&RFC5769_REQUEST, server).await.unwrap();
        let (n, _) =
            tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert!(Message::from_bytes(&buf[..n]).unwrap().has_class(MessageClass::Error));

        client.send_to(b"not stun at all, not at all", server).await.unwrap();
        client.send_to(&RFC5769_RESPONSE_V4, server).await.unwrap();
        // A last request to know the two before it were handled.
        client.send_to(&request(100, false), server).await.unwrap();
        let (n, _) =
            tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(mapped(&buf[..n], 100), client.local_addr().unwrap());

        assert_eq!(count(&metrics, "answered"), 2);
        assert_eq!(count(&metrics, "error_response"), 1);
        assert_eq!(count(&metrics, "malformed"), 1);
        assert_eq!(count(&metrics, "not_binding"), 1);
        assert!(metrics.encode().contains("ferry_relay_stun_requests_total{outcome=\"answered\"} 2"));
        task.abort();
    }

    /// coturn's `turnutils_stunclient` (Debian package `coturn`, installed by
    /// `cargo xtask setup`; only the client is used, the server stays off)
    /// is an independent RFC 5389 client: it must read our answer.
    #[tokio::test]
    async fn coturn_stunclient_reads_the_mapped_address() {
        let (server, metrics, task) = start().await;
        let output = tokio::process::Command::new("turnutils_stunclient")
            .args(["-p", &server.port().to_string(), "127.0.0.1"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(20), output)
            .await
            .expect("turnutils_stunclient did not finish")
            .expect("running turnutils_stunclient (Debian package coturn; `cargo xtask setup` installs it)");
        let out =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
        assert!(count(&metrics, "answered") >= 1, "{out}");
        task.abort();
    }
}
