//! The Hugging Face PEFT adapter reader (`adapter_config.json` + `adapter_model.safetensors`)
//! against the tiny BERT fixture. Input: the JSON's length (u32, little-endian), the JSON, then
//! the safetensors bytes; both are written to a scratch folder, as the reader takes a folder.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use kilotune::delta::peft_interop::import_peft_adapter;
use kilotune::{Base, LoadOptions};
use libfuzzer_sys::fuzz_target;

static FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/tiny-bert.dynamo.onnx");

fn base() -> &'static Arc<Base> {
    static BASE: OnceLock<Arc<Base>> = OnceLock::new();
    BASE.get_or_init(|| Base::from_bytes(FIXTURE, LoadOptions::default()).expect("the tiny BERT fixture loads"))
}

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kilotune-fuzz-peft-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (json, weights) = rest.split_at(len);
    let dir = scratch();
    std::fs::write(dir.join("adapter_config.json"), json).expect("write the config");
    std::fs::write(dir.join("adapter_model.safetensors"), weights).expect("write the weights");
    let base = base();
    let _ = import_peft_adapter(dir, base, base.fingerprint());
});
