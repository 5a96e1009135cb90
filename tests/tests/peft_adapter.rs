//! Imports the PEFT LoRA adapter that Hugging Face PEFT saved for MiniLM
//! (`../shared/reference/minilm-peft/peft_adapter`) and checks it against the file itself.
//! Run it with `cargo test -p kilotune-tests --features real-models --test peft_adapter`.
#![cfg(feature = "real-models")]

use kilotune::delta::peft_interop::{export_peft_adapter, import_peft_adapter};
use kilotune::delta::TensorData;
use kilotune::peft::PeftMethod;
use kilotune::{Base, LoadOptions};
use kilotune_tests::shared;

/// The f32 values of tensor `name` in a safetensors file, read by hand (8-byte header length,
/// JSON header, data) so the check does not trust the importer's own reader.
fn safetensors_f32(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let at = header.find(&format!("\"{name}\":")).unwrap_or_else(|| panic!("{name} not in the file"));
    let entry = &header[at..at + header[at..].find('}').unwrap()];
    assert!(entry.contains("\"dtype\":\"F32\""), "{entry}");
    let list = |key: &str| -> Vec<usize> {
        let s = &entry[entry.find(key).unwrap() + key.len()..];
        let s = &s[s.find('[').unwrap() + 1..s.find(']').unwrap()];
        s.split(',').map(|x| x.trim().parse().unwrap()).collect()
    };
    let (shape, offsets) = (list("\"shape\""), list("\"data_offsets\""));
    let data = &bytes[8 + n + offsets[0]..8 + n + offsets[1]];
    (shape, data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
}

#[test]
fn minilm_peft_adapter_imports_exactly() {
    let dir = shared().join("reference/minilm-peft/peft_adapter");
    let base = Base::load(shared().join("models/minilm-l6/model.onnx"), LoadOptions::default()).expect("load MiniLM");
    let delta = import_peft_adapter(&dir, &base, [1; 32]).expect("import the PEFT adapter");
    let PeftMethod::Lora(c) = &delta.method else { panic!("not LoRA: {:?}", delta.method) };
    assert_eq!((c.r, c.alpha), (4, 8.0));
    assert_eq!(c.target_modules, ["query", "value"]);
    assert_eq!(delta.tensors.len(), 24);

    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let modules: Vec<&str> = delta.tensors.iter().filter_map(|t| t.name.strip_suffix(".lora_A")).collect();
    assert_eq!(modules.len(), 12);
    for t in &delta.tensors {
        let (module, factor) = t.name.rsplit_once('.').unwrap();
        let want_shape: [u32; 2] = if factor == "lora_A" { [4, 384] } else { [384, 4] };
        assert_eq!(t.shape, want_shape, "{}", t.name);
        // The base may carry an exporter prefix; PEFT's path is a dot-suffix of the module.
        let i = module.find("encoder.layer.").unwrap_or_else(|| panic!("{module}"));
        let (shape, want) = safetensors_f32(&bytes, &format!("base_model.model.{}.{factor}.weight", &module[i..]));
        assert_eq!(shape, [t.shape[0] as usize, t.shape[1] as usize]);
        let TensorData::F32(got) = &t.data else { panic!("{} is not f32", t.name) };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(got), bits(&want), "{}", t.name);
    }

    // And back: exporting writes a file the importer reads to the same tensors.
    let prefix = &delta.tensors[0].name[..delta.tensors[0].name.find("encoder.").unwrap()];
    let out = std::env::temp_dir().join(format!("kilotune-peft-real-{}", std::process::id()));
    export_peft_adapter(&delta, &out, prefix).expect("export");
    let back = import_peft_adapter(&out, &base, [1; 32]).expect("re-import");
    assert_eq!(back.tensors, delta.tensors);
    let _ = std::fs::remove_dir_all(&out);
}
