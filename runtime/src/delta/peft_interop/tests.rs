//! Tests of PEFT adapter import and export against the tiny fixture base.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::*;
use crate::LoadOptions;

const FP: [u8; 32] = [7; 32];
const L0Q: &str = "encoder.layer.0.attention.self.query";
const L1V: &str = "encoder.layer.1.attention.self.value";

fn base() -> Arc<Base> {
    static BASE: OnceLock<Arc<Base>> = OnceLock::new();
    BASE.get_or_init(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-bert.dynamo.onnx");
        Base::load(p, LoadOptions::default()).expect("tiny BERT fixture")
    })
    .clone()
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "kilotune-peft-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| seed + (i as f32) * 0.001 - 0.01 * (i % 7) as f32).collect()
}

fn config() -> Value {
    json!({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "lora_dropout": 0.1,
        "target_modules": ["query", "value"], "rank_pattern": {}, "alpha_pattern": {},
        "fan_in_fan_out": false, "bias": "none", "use_rslora": false, "modules_to_save": null,
        "task_type": null
    })
}

/// `(PEFT module path, A shape, B shape)` → tensors with distinct values.
fn lora_tensors(modules: &[(&str, [usize; 2], [usize; 2])]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for (i, (m, a, b)) in modules.iter().enumerate() {
        out.push((format!("{PEFT_PREFIX}{m}.lora_A.weight"), a.to_vec(), values(a[0] * a[1], i as f32)));
        out.push((format!("{PEFT_PREFIX}{m}.lora_B.weight"), b.to_vec(), values(b[0] * b[1], -(i as f32))));
    }
    out
}

fn write_adapter_as(dir: &Path, config: &Value, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string(config).unwrap()).unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
            Dtype::BF16 => v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
            _ => unreachable!(),
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dir.join(WEIGHTS_FILE), safetensors::serialize(views, None).unwrap()).unwrap();
}

fn write_adapter(dir: &Path, config: &Value, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    write_adapter_as(dir, config, tensors, Dtype::F32);
}

fn good() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    lora_tensors(&[(L0Q, [2, 32], [32, 2]), (L1V, [2, 32], [32, 2])])
}

fn import_with(config: &Value, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<Delta> {
    let dir = temp_dir();
    write_adapter(&dir, config, tensors);
    let r = import_peft_adapter(&dir, &base(), FP);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn f32s(t: &NamedTensor) -> &[f32] {
    match &t.data {
        super::super::TensorData::F32(v) => v,
        other => panic!("expected f32, got {other:?}"),
    }
}

#[test]
fn peft_interop_import_maps_modules_by_suffix_and_keeps_values() {
    let tensors = good();
    let d = import_with(&config(), &tensors).unwrap();
    let PeftMethod::Lora(c) = &d.method else { panic!("not LoRA") };
    assert_eq!((c.r, c.alpha, c.dropout), (2, 4.0, 0.1));
    assert_eq!(c.target_modules, ["query", "value"]);
    assert_eq!(d.base_fingerprint, FP);
    assert_eq!(d.head, None);
    assert_eq!(d.summary.kilotune_version, IMPORT_MARK);
    let names: Vec<&str> = d.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "m.encoder.layer.0.attention.self.query.lora_A",
            "m.encoder.layer.0.attention.self.query.lora_B",
            "m.encoder.layer.1.attention.self.value.lora_A",
            "m.encoder.layer.1.attention.self.value.lora_B",
        ]
    );
    assert_eq!(d.tensors[0].shape, [2, 32]);
    assert_eq!(d.tensors[1].shape, [32, 2]);
    for (t, (_, _, want)) in d.tensors.iter().zip(&tensors) {
        assert_eq!(
            f32s(t).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn peft_interop_import_widens_f16_and_bf16_exactly() {
    for dtype in [Dtype::F16, Dtype::BF16] {
        let dir = temp_dir();
        let tensors = good();
        write_adapter_as(&dir, &config(), &tensors, dtype);
        let d = import_peft_adapter(&dir, &base(), FP).unwrap();
        let want: Vec<f32> = match dtype {
            Dtype::F16 => tensors[0].2.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
            _ => tensors[0].2.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
        };
        assert_eq!(f32s(&d.tensors[0]), &want[..], "{dtype:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn peft_interop_string_target_modules_take_targets_from_tensors() {
    let mut c = config();
    c["target_modules"] = json!(".*\\.(query|value)");
    let d = import_with(&c, &good()).unwrap();
    let PeftMethod::Lora(c) = &d.method else { panic!("not LoRA") };
    assert_eq!(c.target_modules, [L0Q, L1V]);
}

#[test]
fn peft_interop_refuses_each_unsupported_field() {
    let cases: [(&str, Value); 10] = [
        ("peft_type", json!("IA3")),
        ("fan_in_fan_out", json!(true)),
        ("bias", json!("all")),
        ("use_rslora", json!(true)),
        ("use_dora", json!(true)),
        ("modules_to_save", json!(["classifier"])),
        ("alpha_pattern", json!({"query": 16})),
        ("layers_to_transform", json!([0])),
        ("r", json!(-1)),
        ("target_modules", json!(["key"])),
    ];
    for (field, value) in cases {
        let mut c = config();
        c[field] = value;
        match import_with(&c, &good()) {
            Err(PeftInteropError::Unsupported { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected Unsupported, got {other:?}"),
        }
    }
    // An alpha_pattern that repeats the global alpha is harmless.
    let mut c = config();
    c["alpha_pattern"] = json!({"query": 4});
    import_with(&c, &good()).unwrap();
}

#[test]
fn peft_interop_refuses_unknown_ambiguous_and_stray_tensors() {
    let t = lora_tensors(&[("encoder.layer.0.attention.self.nope", [2, 32], [32, 2])]);
    match import_with(&config(), &t) {
        Err(PeftInteropError::UnknownModule { tensor }) => {
            assert!(tensor.contains(".nope.lora_"), "{tensor}")
        }
        other => panic!("expected UnknownModule, got {other:?}"),
    }
    let t = lora_tensors(&[("attention.self.query", [2, 32], [32, 2])]);
    match import_with(&config(), &t) {
        Err(PeftInteropError::AmbiguousModule { candidates, .. }) => {
            assert_eq!(
                candidates,
                ["m.encoder.layer.0.attention.self.query", "m.encoder.layer.1.attention.self.query"]
            )
        }
        other => panic!("expected AmbiguousModule, got {other:?}"),
    }
    let mut t = good();
    t[0].0 = format!("{L0Q}.lora_A.weight"); // no base_model.model. prefix
    assert!(matches!(import_with(&config(), &t), Err(PeftInteropError::UnexpectedTensor { .. })));
}

#[test]
fn peft_interop_refuses_bad_shapes_and_lone_factors() {
    // In-features wrong.
    let t = lora_tensors(&[(L0Q, [2, 31], [32, 2])]);
    match import_with(&config(), &t) {
        Err(PeftInteropError::Shape { expected, found, tensor }) => {
            assert_eq!((expected, found), (vec![2, 32], vec![2, 31]));
            assert!(tensor.ends_with("lora_A.weight"));
        }
        other => panic!("expected Shape, got {other:?}"),
    }
    // Rank disagrees with r (and with rank_pattern).
    let t = lora_tensors(&[(L0Q, [3, 32], [32, 3])]);
    assert!(matches!(import_with(&config(), &t), Err(PeftInteropError::Shape { .. })));
    let mut c = config();
    c["rank_pattern"] = json!({ "layer.0.attention.self.query": 3 });
    let d = import_with(&c, &t).unwrap();
    assert_eq!(d.tensors[0].shape, [3, 32]);
    // An A without its B.
    let mut t = good();
    t.remove(1);
    match import_with(&config(), &t) {
        Err(PeftInteropError::MissingPair { module }) => assert_eq!(module, L0Q),
        other => panic!("expected MissingPair, got {other:?}"),
    }
}

#[test]
fn peft_interop_bad_json_and_missing_files_are_typed() {
    let dir = temp_dir();
    assert!(matches!(import_peft_adapter(&dir, &base(), FP), Err(PeftInteropError::Io { .. })));
    std::fs::write(dir.join(CONFIG_FILE), "{not json").unwrap();
    assert!(matches!(import_peft_adapter(&dir, &base(), FP), Err(PeftInteropError::Json { .. })));
    std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string(&config()).unwrap()).unwrap();
    std::fs::write(dir.join(WEIGHTS_FILE), b"garbage!garbage!").unwrap();
    assert!(matches!(import_peft_adapter(&dir, &base(), FP), Err(PeftInteropError::Safetensors { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn peft_interop_export_then_import_is_bit_exact() {
    let mut c = config();
    c["rank_pattern"] = json!({ "layer.0.attention.self.query": 3 });
    let t = lora_tensors(&[(L0Q, [3, 32], [32, 3]), (L1V, [2, 32], [32, 2])]);
    let d = import_with(&c, &t).unwrap();
    let out = temp_dir().join("exported");
    export_peft_adapter(&d, &out, "m.").unwrap();
    // PEFT's names, without the exporter's prefix.
    let bytes = std::fs::read(out.join(WEIGHTS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names[0], format!("{PEFT_PREFIX}{L0Q}.lora_A.weight"));
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(
        (cfg["peft_type"].as_str(), cfg["r"].as_u64(), cfg["bias"].as_str()),
        (Some("LORA"), Some(2), Some("none"))
    );
    assert_eq!(cfg["rank_pattern"], json!({ "layer.0.attention.self.query": 3 }));
    let back = import_peft_adapter(&out, &base(), FP).unwrap();
    assert_eq!(back.method, d.method);
    assert_eq!(back.tensors.len(), d.tensors.len());
    for (x, y) in back.tensors.iter().zip(&d.tensors) {
        assert_eq!((&x.name, &x.shape), (&y.name, &y.shape));
        let bits = |t: &NamedTensor| f32s(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(x), bits(y), "{}", x.name);
    }
    // No temporary file is left behind.
    let mut files: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, [CONFIG_FILE, WEIGHTS_FILE]);
    let _ = std::fs::remove_dir_all(out.parent().unwrap());
}

#[test]
fn peft_interop_export_refuses_lone_factor_and_bitfit() {
    let mut d = import_with(&config(), &good()).unwrap();
    d.tensors.remove(3);
    let out = temp_dir();
    match export_peft_adapter(&d, &out, "m.") {
        Err(PeftInteropError::MissingPair { module }) => assert_eq!(module, format!("m.{L1V}")),
        other => panic!("expected MissingPair, got {other:?}"),
    }
    d.method = PeftMethod::BitFit(Default::default());
    assert!(matches!(export_peft_adapter(&d, &out, "m."), Err(PeftInteropError::Unsupported { .. })));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
#[ignore = "writes fuzz/seeds/peft_adapter: cargo test --workspace --lib -- --ignored fuzz_seed"]
fn fuzz_seed_peft_adapter() {
    for (dtype, name) in [(Dtype::F32, "lora-f32"), (Dtype::F16, "lora-f16")] {
        let dir = temp_dir();
        write_adapter_as(&dir, &config(), &good(), dtype);
        let json = std::fs::read(dir.join(CONFIG_FILE)).unwrap();
        let weights = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
        crate::fuzz_seed::write("peft_adapter", name, &crate::fuzz_seed::adapter_input(&json, &weights));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
