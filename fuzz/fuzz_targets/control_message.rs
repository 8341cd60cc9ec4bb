//! Control-message decoding on arbitrary bytes; whatever decodes must round-trip.
#![no_main]

use abi::control::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        let bytes = m.as_bytes();
        assert_eq!(
            bytes, data,
            "decode accepted bytes that do not re-encode identically"
        );
        assert_eq!(Message::decode(bytes), Ok(m));
    }
});
