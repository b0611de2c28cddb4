//! The STUN server on arbitrary datagrams: no panic, and whatever it
//! answers is a well-formed STUN response to the same transaction.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use stun_types::message::Message;

fuzz_target!(|data: &[u8]| {
    // The source address comes from the input too, v4 or v6.
    let from: SocketAddr = match data.first() {
        Some(b) if b & 1 == 1 => "[2001:db8::7]:3478".parse().unwrap(),
        _ => "192.0.2.7:40000".parse().unwrap(),
    };
    if let Ok(Some(response)) = ferry_relay::stun::answer(data, from) {
        let message = Message::from_bytes(&response).expect("our response parses");
        assert!(message.is_response());
        assert_eq!(&response[4..20], &data[4..20], "transaction id not echoed");
    }
});
