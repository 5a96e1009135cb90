//! Writes the fuzz targets' seed corpora (`fuzz/seeds/<target>/`) from the same tiny models,
//! deltas and adapters the unit tests build, so the seeds are valid inputs that cover every
//! part of each format. Regenerate with:
//!
//! ```text
//! cargo test --workspace --lib -- --ignored fuzz_seed
//! ```

use std::path::PathBuf;

/// Writes `bytes` as the seed `name` of fuzz target `target`.
pub(crate) fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).expect("create the seed folder");
    std::fs::write(dir.join(name), bytes).expect("write the seed");
}

/// The PEFT-adapter target's input: `adapter_config.json`'s length (u32, little-endian), the
/// JSON, then `adapter_model.safetensors`.
pub(crate) fn adapter_input(config_json: &[u8], safetensors: &[u8]) -> Vec<u8> {
    let mut out = (config_json.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(config_json);
    out.extend_from_slice(safetensors);
    out
}
