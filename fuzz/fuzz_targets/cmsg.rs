//! Control messages a client hands the network domain with sendmsg (`abi::cmsg::parse`):
//! any bytes decode or are refused, never panic, and what decodes lies inside the buffer and
//! re-encodes (without the ignored kinds) into something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msgs) = abi::cmsg::parse(data) {
        let total: usize = msgs.iter().map(|m| abi::cmsg::HDR + m.data.len()).sum();
        assert!(total <= data.len());
        let again = abi::cmsg::forwarded(&msgs);
        let back = abi::cmsg::parse(&again).expect("re-encoded messages decode");
        let kept: Vec<_> = msgs.iter().filter(|m| !m.ignored()).collect();
        assert_eq!(back.len(), kept.len());
        for (a, b) in back.iter().zip(kept) {
            assert_eq!((a.level, a.kind, a.data), (b.level, b.kind, b.data));
        }
    }
});
