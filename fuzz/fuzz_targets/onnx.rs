//! The ONNX reader: protobuf decoding, op import, shape inference and the graph passes, from
//! bytes (no folder, so every external-data reference must be refused with a typed error).
#![no_main]

use kilotune::{Base, LoadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Base::from_bytes(data, LoadOptions { max_file_bytes: 1 << 20, ..LoadOptions::default() });
});
