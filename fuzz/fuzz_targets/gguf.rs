//! The GGUF reader and the Llama mapping (header, metadata, tensor table, dequantization,
//! tokenizer), as `kilotune import gguf` runs them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kilotune::import::gguf::read_bytes(data);
});
