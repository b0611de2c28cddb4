//! Message parsing and the wg-quick parser on arbitrary bytes: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ferry_tunnel::proto::messages::parse(data) {
        // Touch every field accessor of whatever parsed.
        let _ = format!("{message:?}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<ferry_tunnel::config::WgQuickConfig>();
    }
});
