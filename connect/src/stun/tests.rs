use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use stun_types::{
    attribute::{ErrorCode, Software, XorMappedAddress},
    message::{MessageWriteExt as _, MessageWriteVec},
};

use super::*;

/// RFC 5769 2.2: an IPv4 Binding success response (with SOFTWARE,
/// MESSAGE-INTEGRITY and FINGERPRINT), reporting 192.0.2.1:32853.
const RFC5769_RESPONSE_V4: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa,
    0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f,
    0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00,
    0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53,
    0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];
const RFC5769_TRANSACTION: [u8; 12] =
    [0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae];

/// A response as a server would write it, with stun-types.
fn response(
    class: MessageClass,
    transaction: &[u8; 12],
    build: impl FnOnce(&mut MessageWriteVec),
) -> Vec<u8> {
    let mut out = Message::builder(
        MessageType::from_class_method(class, BINDING),
        transaction_id(transaction),
        MessageWriteVec::new(),
    );
    build(&mut out);
    out.finish()
}

fn success(transaction: &[u8; 12], mapped: SocketAddr) -> Vec<u8> {
    response(MessageClass::Success, transaction, |out| {
        out.add_attribute(&XorMappedAddress::new(mapped, transaction_id(transaction))).unwrap();
        out.add_attribute(&Software::new("test").unwrap()).unwrap();
        out.add_fingerprint().unwrap();
    })
}

#[test]
fn the_request_is_a_bare_binding_header_with_our_transaction() {
    let transaction = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    let request = binding_request(&transaction);
    assert_eq!(request.len(), HEADER_LEN);
    assert_eq!(request[..8], [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]);
    assert_eq!(request[8..], transaction);
    assert!(is_stun(&request));
    let parsed = Message::from_bytes(&request).unwrap();
    assert!(parsed.has_class(MessageClass::Request) && parsed.has_method(BINDING));
}

#[test]
fn rfc5769_ipv4_response() {
    assert_eq!(
        parse_binding_response(&RFC5769_RESPONSE_V4, &RFC5769_TRANSACTION),
        Ok("192.0.2.1:32853".parse().unwrap())
    );
    let mut other = RFC5769_TRANSACTION;
    other[11] ^= 1;
    assert_eq!(parse_binding_response(&RFC5769_RESPONSE_V4, &other), Err(ResponseError::OtherTransaction));
    // One flipped bit anywhere in the body fails the FINGERPRINT.
    let mut flipped = RFC5769_RESPONSE_V4;
    flipped[30] ^= 0x01;
    assert!(matches!(
        parse_binding_response(&flipped, &RFC5769_TRANSACTION),
        Err(ResponseError::Malformed(_))
    ));
}

#[test]
fn answers_that_are_not_an_address_say_why() {
    let transaction = [7; 12];
    let error = response(MessageClass::Error, &transaction, |out| {
        out.add_attribute(&ErrorCode::builder(420).reason("Unknown Attribute").build().unwrap()).unwrap();
    });
    assert_eq!(
        parse_binding_response(&error, &transaction),
        Err(ResponseError::ErrorResponse { code: 420, reason: "Unknown Attribute".into() })
    );
    let bare = response(MessageClass::Success, &transaction, |_| {});
    assert_eq!(parse_binding_response(&bare, &transaction), Err(ResponseError::NoMappedAddress));
    // Our own request reflected back is not an answer.
    assert_eq!(
        parse_binding_response(&binding_request(&transaction), &transaction),
        Err(ResponseError::NotBindingResponse)
    );
    for (junk, problem) in [
        (&[][..], FramingError::TooShort { len: 0 }),
        (&[0xc0; 20][..], FramingError::NotStun),
        (&[0u8; 20][..], FramingError::NoMagicCookie),
    ] {
        assert_eq!(
            parse_binding_response(junk, &transaction),
            Err(ResponseError::Malformed(problem.to_string()))
        );
        assert!(!is_stun(junk));
    }
    // A length field that disagrees with the datagram.
    let mut long = success(&transaction, "192.0.2.1:1".parse().unwrap());
    long.extend_from_slice(&[0; 4]);
    assert!(matches!(parse_binding_response(&long, &transaction), Err(ResponseError::Malformed(_))));
}

#[test]
fn a_wireguard_message_is_not_stun() {
    // A handshake initiation's first bytes: type 1 and three zero bytes.
    let mut initiation = vec![0u8; 148];
    initiation[0] = 1;
    assert!(!is_stun(&initiation));
}

fn address() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

proptest! {
    #[test]
    fn parsing_arbitrary_bytes_never_panics(datagram in proptest::collection::vec(any::<u8>(), 0..600), transaction in any::<[u8; 12]>()) {
        let _ = parse_binding_response(&datagram, &transaction);
        let _ = is_stun(&datagram);
    }

    /// Arbitrary attributes behind a valid header, so that the codec's
    /// attribute parsing is what gets exercised.
    #[test]
    fn arbitrary_attributes_never_panic(
        class in 0u16..4,
        words in proptest::collection::vec(any::<[u8; 4]>(), 0..64),
        transaction in any::<[u8; 12]>(),
        ours in any::<bool>(),
    ) {
        let body: Vec<u8> = words.concat();
        let kind = 0x0001 | ((class & 1) << 4) | ((class & 2) << 7);
        let mut datagram = kind.to_be_bytes().to_vec();
        datagram.extend_from_slice(&(body.len() as u16).to_be_bytes());
        datagram.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        let mut expected = transaction;
        if !ours {
            expected[0] ^= 0xff;
        }
        datagram.extend_from_slice(&transaction);
        datagram.extend_from_slice(&body);
        prop_assert!(is_stun(&datagram));
        let parsed = parse_binding_response(&datagram, &expected);
        if !ours {
            prop_assert!(matches!(parsed, Err(ResponseError::OtherTransaction | ResponseError::Malformed(_))));
        }
    }

    #[test]
    fn success_responses_round_trip(transaction in any::<[u8; 12]>(), mapped in address()) {
        let datagram = success(&transaction, mapped);
        let canonical = SocketAddr::new(mapped.ip().to_canonical(), mapped.port());
        prop_assert_eq!(parse_binding_response(&datagram, &transaction), Ok(canonical));
        let request = binding_request(&transaction);
        prop_assert_eq!(Message::from_bytes(&request).unwrap().transaction_id(), transaction_id(&transaction));
    }
}
