//! Malformed input: GGUF files, safetensors checkpoints, `config.json` and PEFT adapters.

use super::*;

// ---------------------------------------------------------------------------------------
// GGUF

fn gguf_header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

fn gguf_err(bytes: &[u8]) -> GgufError {
    match gguf::read_bytes(bytes) {
        Err(Error::Import(ImportError::Gguf(e))) => e,
        Err(e) => panic!("expected a GgufError, got {e:?}"),
        Ok(_) => panic!("expected a GgufError, got an import"),
    }
}

#[test]
fn gguf_wrong_magic_or_empty_file_is_bad_magic() {
    // Through the importer's whole error chain once; the other GGUF tests unwrap it.
    let r = gguf::read_bytes(b"");
    assert!(matches!(r, Err(Error::Import(ImportError::Gguf(GgufError::BadMagic { .. })))), "{:?}", r.map(|_| ()));
    assert_eq!(gguf_err(b""), GgufError::BadMagic { found: vec![] });
    let (_, delta_bytes) = real_delta_bytes();
    assert_eq!(gguf_err(&delta_bytes), GgufError::BadMagic { found: b"KTDE".to_vec() });
}

#[test]
fn gguf_unknown_version_is_unsupported() {
    for v in [1u32, 4, 0x0300_0000] {
        assert_eq!(gguf_err(&gguf_header(v, 0, 0)), GgufError::UnsupportedVersion { version: v });
    }
}

#[test]
fn gguf_truncated_header_is_truncated() {
    let h = gguf_header(3, 0, 0);
    for cut in 8..h.len() {
        assert!(matches!(gguf_err(&h[..cut]), GgufError::Truncated { .. }), "cut at {cut}");
    }
}

#[test]
fn gguf_u64_max_counts_and_lengths_are_refused_before_reserving() {
    assert!(matches!(gguf_err(&gguf_header(3, 0, u64::MAX)), GgufError::CountPastEnd { count: u64::MAX, .. }));
    assert!(matches!(gguf_err(&gguf_header(3, u64::MAX, 0)), GgufError::CountPastEnd { count: u64::MAX, .. }));
    let mut b = gguf_header(3, 0, 1);
    b.extend(u64::MAX.to_le_bytes()); // the key's length
    b.extend(b"key");
    b.extend([0u8; 32]); // room for the entry, so the count passes and the length fails
    assert!(matches!(gguf_err(&b), GgufError::StringPastEnd { length: u64::MAX, .. }));
}

// ---------------------------------------------------------------------------------------
// safetensors (Hugging Face checkpoints) and config.json

fn safetensors_err(bytes: &[u8]) -> String {
    let mut out = std::collections::BTreeMap::new();
    match hf::read_safetensors(bytes, None, &mut out) {
        Err(Error::Import(ImportError::Safetensors(m))) => m,
        Err(e) => panic!("expected ImportError::Safetensors, got {e:?}"),
        Ok(()) => panic!("expected ImportError::Safetensors, got tensors"),
    }
}

/// A safetensors file with one F32 tensor `w` of `shape` and `data_bytes` bytes of data.
fn safetensors_file(shape: &[usize], data_bytes: usize) -> Vec<u8> {
    let header = format!(r#"{{"w":{{"dtype":"F32","shape":{shape:?},"data_offsets":[0,{data_bytes}]}}}}"#);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(vec![0u8; data_bytes]);
    b
}

#[test]
fn safetensors_u64_max_header_length_is_refused() {
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend(b"{}");
    let mut out = std::collections::BTreeMap::new();
    let r = hf::read_safetensors(&b, None, &mut out);
    assert!(matches!(&r, Err(Error::Import(ImportError::Safetensors(m))) if m.contains("header too large")), "{r:?}");
}

#[test]
fn safetensors_shape_data_mismatch_and_shape_overflow_are_refused() {
    assert!(hf::read_safetensors(&safetensors_file(&[2, 2], 16), None, &mut Default::default()).is_ok());
    safetensors_err(&safetensors_file(&[2, 3], 16));
    safetensors_err(&safetensors_file(&[usize::MAX, 2], 16));
}

#[test]
fn safetensors_every_truncation_is_refused() {
    let good = safetensors_file(&[2, 2], 16);
    for cut in 0..good.len() {
        safetensors_err(&good[..cut]);
    }
}

#[test]
fn config_json_malformed_out_of_range_or_unknown_is_refused() {
    let config = |extra: &str| {
        format!(
            r#"{{"architectures":["BertModel"],"vocab_size":100,"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":64,"max_position_embeddings":64,"type_vocab_size":2,"layer_norm_eps":1e-12{extra}}}"#
        )
    };
    assert!(hf::parse_config(&config("")).is_ok());
    let is_config = |r: Result<_, Error>| matches!(r, Err(Error::Import(ImportError::Config(_))));
    assert!(is_config(hf::parse_config("{not json")));
    assert!(is_config(hf::parse_config("[1, 2]")));
    // A later key overrides the earlier one in serde_json: hidden size 0, then an overflowing one.
    assert!(is_config(hf::parse_config(&config(r#","hidden_size":0"#))));
    assert!(is_config(hf::parse_config(&config(r#","hidden_size":18446744073709551615"#))));
    assert!(is_config(hf::parse_config(&config(r#","hidden_size":30"#))), "heads must divide hidden");
    let unknown = hf::parse_config(r#"{"architectures":["GPT2LMHeadModel"],"model_type":"gpt2"}"#);
    assert!(matches!(unknown, Err(Error::Import(ImportError::UnsupportedArchitecture(a))) if a.contains("GPT2")));
}

// ---------------------------------------------------------------------------------------
// PEFT adapters (adapter_config.json + adapter_model.safetensors)

/// A real adapter: the trained LoRA delta exported by `export_peft_adapter`, and its base.
fn real_adapter(tag: &str) -> (std::sync::Arc<Base>, TempDir) {
    let (base, delta) = trained();
    let mut lora_only = delta.clone();
    lora_only.head = None;
    lora_only.tensors.retain(|t| t.name.ends_with(".lora_A") || t.name.ends_with(".lora_B"));
    let dir = TempDir::new(tag);
    let first = &lora_only.tensors[0].name;
    let prefix = &first[..first.find("encoder.").expect("a BERT module path")];
    export_peft_adapter(&lora_only, dir.path(), prefix).expect("exports");
    import_peft_adapter(dir.path(), &base, [0; 32]).expect("the exported adapter imports");
    (base, dir)
}

fn weights_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("adapter_model.safetensors")
}

#[test]
fn peft_adapter_every_truncation_of_its_weights_is_a_safetensors_error() {
    let (base, dir) = real_adapter("malformed-peft-cut");
    let good = std::fs::read(weights_path(&dir)).expect("exported");
    // Every cut of the header, then every 97th cut of the data.
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    for cut in (0..header_end + 8).chain((header_end + 8..good.len()).step_by(97)) {
        std::fs::write(weights_path(&dir), &good[..cut]).expect("writable");
        let r = import_peft_adapter(dir.path(), &base, [0; 32]);
        assert!(matches!(r, Err(PeftInteropError::Safetensors { .. })), "cut at {cut} of {}: {r:?}", good.len());
    }
}

#[test]
fn peft_adapter_u64_max_header_length_is_a_safetensors_error() {
    let (base, dir) = real_adapter("malformed-peft-huge");
    let mut bytes = std::fs::read(weights_path(&dir)).expect("exported");
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(weights_path(&dir), &bytes).expect("writable");
    assert!(matches!(import_peft_adapter(dir.path(), &base, [0; 32]), Err(PeftInteropError::Safetensors { .. })));
}

#[test]
fn peft_adapter_bad_json_config_is_json() {
    let (base, dir) = real_adapter("malformed-peft-json");
    std::fs::write(dir.path().join("adapter_config.json"), b"{\"peft_type\": \"LORA\", ").expect("writable");
    assert!(matches!(import_peft_adapter(dir.path(), &base, [0; 32]), Err(PeftInteropError::Json { .. })));
}

#[test]
fn peft_adapter_unsupported_feature_is_unsupported() {
    let (base, dir) = real_adapter("malformed-peft-dora");
    let path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&path).expect("exported").replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(&path, text).expect("writable");
    assert!(matches!(import_peft_adapter(dir.path(), &base, [0; 32]), Err(PeftInteropError::Unsupported { field, .. }) if field == "use_dora"));
}

#[test]
fn peft_adapter_nan_weight_is_a_non_finite_delta() {
    let (base, dir) = real_adapter("malformed-peft-nan");
    let mut bytes = std::fs::read(weights_path(&dir)).expect("exported");
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    bytes[header_end..header_end + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(weights_path(&dir), &bytes).expect("writable");
    let r = import_peft_adapter(dir.path(), &base, [0; 32]);
    assert!(matches!(r, Err(PeftInteropError::Delta(DeltaError::NonFinite { .. }))), "{r:?}");
}

#[test]
fn peft_adapter_out_of_range_config_is_invalid_config() {
    let (base, dir) = real_adapter("malformed-peft-dropout");
    let path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&path).expect("exported").replace("\"lora_dropout\": 0.0", "\"lora_dropout\": 1.5");
    assert!(text.contains("1.5"), "{text}");
    std::fs::write(&path, text).expect("writable");
    let r = import_peft_adapter(dir.path(), &base, [0; 32]);
    assert!(matches!(&r, Err(PeftInteropError::InvalidConfig(m)) if m.contains("dropout")), "{r:?}");
}

#[test]
fn peft_adapter_oversized_files_are_too_large_before_they_are_read() {
    use kilotune::delta::peft_interop::{MAX_CONFIG_BYTES, MAX_WEIGHTS_BYTES};
    let (base, dir) = real_adapter("malformed-peft-large");
    // A sparse file one byte over the limit: refused from its size, never read.
    let weights = std::fs::OpenOptions::new().write(true).open(weights_path(&dir)).expect("exported");
    weights.set_len(MAX_WEIGHTS_BYTES + 1).expect("a sparse file");
    drop(weights);
    let r = import_peft_adapter(dir.path(), &base, [0; 32]);
    assert!(matches!(&r, Err(PeftInteropError::TooLarge { size, limit, .. }) if *size == MAX_WEIGHTS_BYTES + 1 && *limit == MAX_WEIGHTS_BYTES), "{r:?}");
    std::fs::write(dir.path().join("adapter_config.json"), vec![b' '; MAX_CONFIG_BYTES as usize + 1]).expect("writable");
    let r = import_peft_adapter(dir.path(), &base, [0; 32]);
    assert!(matches!(&r, Err(PeftInteropError::TooLarge { limit, .. }) if *limit == MAX_CONFIG_BYTES), "{r:?}");
}

#[test]
fn peft_adapter_missing_files_are_io() {
    let (base, dir) = real_adapter("malformed-peft-missing");
    std::fs::remove_file(weights_path(&dir)).expect("exported");
    assert!(matches!(import_peft_adapter(dir.path(), &base, [0; 32]), Err(PeftInteropError::Io { .. })));
}
