//! Request and response slot validation on arbitrary slot contents and window sizes.
#![no_main]

use abi::{decode_request, decode_response, RawSlot, MAX_ERRNO, SLOT_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 64 bytes of slot followed by a little-endian u32 window; short inputs are zero-padded.
    let mut buf = [0u8; SLOT_SIZE + 4];
    let n = data.len().min(buf.len());
    buf[..n].copy_from_slice(&data[..n]);
    let mut slot = RawSlot::default();
    for (w, chunk) in slot.iter_mut().zip(buf[..SLOT_SIZE].chunks_exact(8)) {
        *w = u64::from_le_bytes(chunk.try_into().unwrap());
    }
    let window = u32::from_le_bytes(buf[SLOT_SIZE..].try_into().unwrap());

    match decode_request(&slot, window) {
        Ok(v) => {
            assert!(
                u64::from(v.raw.data_off) + u64::from(v.raw.data_len) <= u64::from(window),
                "accepted payload {}+{} outside window {window}",
                v.raw.data_off,
                v.raw.data_len
            );
            assert_eq!(v.raw.opcode, v.opcode as u16);
            assert_eq!(v.raw.reserved, 0);
            assert_eq!(v.raw.flags & !abi::REQ_FLAGS_KNOWN, 0);
            assert_eq!(v.raw.to_slot(), slot);
        }
        Err((id, e)) => {
            assert_eq!(id, slot[0]);
            let _ = e.errno();
        }
    }
    if let Ok(r) = decode_response(&slot, window) {
        assert!(r.data_len <= window);
        assert!(r.result >= -i64::from(MAX_ERRNO));
        assert_eq!(r.flags & !abi::RSP_FLAGS_KNOWN, 0);
        assert_eq!(r.to_slot(), slot);
        let _ = r.into_result();
    }
});
