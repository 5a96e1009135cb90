//! The delta reader (`.ktd`). Two inputs per run: the bytes as they are (framing: size, magic,
//! version, length, checksum), and the same bytes re-framed with a correct length and CRC32C,
//! so that the postcard body and the validation behind the checksum are fuzzed too.
//! Oracle: whatever decodes re-encodes (at the precision it was stored in) to bytes that decode
//! and re-encode to the same bytes.
#![no_main]

use kilotune::delta::{from_bytes, to_bytes, LoadLimits, HEADER_LEN, TRAILER_LEN};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    let limits = LoadLimits::default();
    let Ok(delta) = from_bytes(bytes, None, &limits) else { return };
    let precision = delta.tensors.first().map(|t| t.precision()).unwrap_or_default();
    if delta.tensors.iter().all(|t| t.precision() == precision) {
        let again = to_bytes(&delta, precision).expect("a delta that loaded must encode");
        let back = from_bytes(&again, None, &limits).expect("what was encoded must load");
        // Compared as bytes, not with `==`: a summary may carry a NaN loss, which is never
        // equal to itself.
        let twice = to_bytes(&back, precision).expect("a delta that loaded must encode");
        assert!(twice == again, "encode(decode(encode(d))) != encode(d)");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= HEADER_LEN + TRAILER_LEN {
        let mut framed = data.to_vec();
        let n = framed.len();
        let body = (n - HEADER_LEN - TRAILER_LEN) as u64;
        framed[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&body.to_le_bytes());
        let crc = crc32c::crc32c(&framed[..n - TRAILER_LEN]);
        framed[n - TRAILER_LEN..].copy_from_slice(&crc.to_le_bytes());
        check(&framed);
    }
});
