//! Unit tests of the importers: every bad input class gives its typed error, dtypes convert
//! exactly, and synthetic checkpoints (untied heads, biases, grouped heads) load and fuse.
//! Parity with PyTorch on the tiny fixtures is in `tests/tests/import.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::hf::{parse_config, read_dir, read_safetensors};
use super::*;
use crate::error::Error;
use crate::{Base, LoadOptions, Session, SessionConfig};

fn bert_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": 50, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 24,
        "max_position_embeddings": 20, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"
    })
}

fn llama_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 40, "hidden_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 24,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "hidden_act": "silu",
        "tie_word_embeddings": false
    })
}

fn config_error(v: &serde_json::Value) -> Error {
    parse_config(&v.to_string()).expect_err("must be refused")
}

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Every tensor a configuration needs, random, under Hugging Face names.
fn synthetic(arch: &Architecture, with_biases: bool) -> Checkpoint {
    let mut t = BTreeMap::new();
    let mut add = |name: String, shape: &[usize]| {
        let n = shape.iter().product();
        let seed = t.len() as u64 + 1;
        t.insert(name, Tensor::new(shape, values(n, seed)).unwrap());
    };
    match arch {
        Architecture::Bert(c) => {
            let (h, i) = (c.hidden_size, c.intermediate_size);
            add("embeddings.word_embeddings.weight".into(), &[c.vocab_size, h]);
            add("embeddings.position_embeddings.weight".into(), &[c.max_position_embeddings, h]);
            add("embeddings.token_type_embeddings.weight".into(), &[c.type_vocab_size, h]);
            for p in ["embeddings.LayerNorm".to_owned()].into_iter().chain((0..c.num_hidden_layers).flat_map(|l| {
                [format!("encoder.layer.{l}.attention.output.LayerNorm"), format!("encoder.layer.{l}.output.LayerNorm")]
            })) {
                add(format!("{p}.weight"), &[h]);
                add(format!("{p}.bias"), &[h]);
            }
            for l in 0..c.num_hidden_layers {
                let p = format!("encoder.layer.{l}");
                for (m, o, k) in [("attention.self.query", h, h), ("attention.self.key", h, h), ("attention.self.value", h, h), ("attention.output.dense", h, h), ("intermediate.dense", i, h), ("output.dense", h, i)] {
                    add(format!("{p}.{m}.weight"), &[o, k]);
                    add(format!("{p}.{m}.bias"), &[o]);
                }
            }
        }
        Architecture::Llama(c) => {
            let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.hidden_size / c.num_attention_heads);
            let kv = c.num_key_value_heads * hd;
            add("model.embed_tokens.weight".into(), &[c.vocab_size, h]);
            add("model.norm.weight".into(), &[h]);
            if !c.tie_word_embeddings {
                add("lm_head.weight".into(), &[c.vocab_size, h]);
            }
            for l in 0..c.num_hidden_layers {
                let p = format!("model.layers.{l}");
                add(format!("{p}.input_layernorm.weight"), &[h]);
                add(format!("{p}.post_attention_layernorm.weight"), &[h]);
                for (m, o, k) in [("self_attn.q_proj", h, h), ("self_attn.k_proj", kv, h), ("self_attn.v_proj", kv, h), ("self_attn.o_proj", h, h), ("mlp.gate_proj", i, h), ("mlp.up_proj", i, h), ("mlp.down_proj", h, i)] {
                    add(format!("{p}.{m}.weight"), &[o, k]);
                    if with_biases && m.starts_with("self_attn") {
                        add(format!("{p}.{m}.bias"), &[o]);
                    }
                }
            }
        }
    }
    Checkpoint { arch: arch.clone(), tensors: t }
}

fn bert() -> Checkpoint {
    synthetic(&parse_config(&bert_json().to_string()).unwrap().0, true)
}

fn llama(with_biases: bool) -> Checkpoint {
    synthetic(&parse_config(&llama_json().to_string()).unwrap().0, with_biases)
}

fn feeds(names: &[&'static str], batch: usize, seq: usize, vocab: i64) -> Vec<(&'static str, Tensor)> {
    names
        .iter()
        .map(|&n| {
            let v: Vec<i64> = match n {
                "input_ids" => (0..batch * seq).map(|i| (i as i64 * 7 + 3) % vocab).collect(),
                "attention_mask" => (0..batch * seq).map(|i| i64::from(i % seq >= i / seq)).collect(),
                _ => vec![0; batch * seq],
            };
            (n, Tensor::new(&[batch, seq], v).unwrap())
        })
        .collect()
}

fn run(c: &Checkpoint, precision: ImportPrecision) -> (std::sync::Arc<Base>, Vec<f32>) {
    let base = Base::from_bytes(&to_onnx(c, precision).unwrap(), LoadOptions::default()).unwrap();
    let names: Vec<&'static str> = base.input_names().iter().map(|n| match *n {
        "input_ids" => "input_ids",
        "attention_mask" => "attention_mask",
        _ => "token_type_ids",
    }).collect();
    let s = Session::new(base.clone(), SessionConfig { threads: 1 }).unwrap();
    let out = s.run(&feeds(&names, 2, 5, 40)).unwrap();
    (base, out.0[0].1.to_f32_vec())
}

fn count(base: &Base, op: &str) -> usize {
    base.graph().nodes.iter().filter(|n| n.op.name() == op).count()
}

// --- configuration -------------------------------------------------------------------------

#[test]
fn configs_parse_with_transformers_defaults() {
    let mut v = llama_json();
    let o = v.as_object_mut().unwrap();
    for k in ["num_key_value_heads", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings"] {
        o.remove(k);
    }
    let Architecture::Llama(c) = parse_config(&v.to_string()).unwrap().0 else { panic!("llama") };
    assert_eq!((c.num_key_value_heads, c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings), (4, 10000.0, 1e-6, false));
    let (arch, prefix) = parse_config(&serde_json::json!({"architectures": ["BertForSequenceClassification"], "vocab_size": 5,
        "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 8}).to_string()).unwrap();
    assert_eq!(prefix, Some("bert."), "a task model's encoder is under `bert.`");
    let Architecture::Bert(c) = arch else { panic!("bert") };
    assert_eq!((c.max_position_embeddings, c.type_vocab_size, c.layer_norm_eps), (512, 2, 1e-12));
}

#[test]
fn unknown_architectures_are_refused_by_name() {
    let mut v = bert_json();
    v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    assert!(matches!(config_error(&v), Error::Import(ImportError::UnsupportedArchitecture(a)) if a == "GPT2LMHeadModel"));
    let v = serde_json::json!({"model_type": "mistral"});
    assert!(matches!(config_error(&v), Error::Import(ImportError::UnsupportedArchitecture(a)) if a == "mistral"));
}

#[test]
fn bad_configs_are_config_errors() {
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("not JSON", serde_json::Value::String("{".into())),
        ("no sizes", serde_json::json!({"architectures": ["BertModel"]})),
        ("a string size", { let mut v = bert_json(); v["hidden_size"] = "16".into(); v }),
        ("a negative size", { let mut v = bert_json(); v["hidden_size"] = (-16).into(); v }),
        ("zero heads", { let mut v = bert_json(); v["num_attention_heads"] = 0.into(); v }),
        ("heads not dividing", { let mut v = bert_json(); v["num_attention_heads"] = 3.into(); v }),
        ("a huge vocabulary", { let mut v = bert_json(); v["vocab_size"] = (1u64 << 40).into(); v }),
        ("relu", { let mut v = bert_json(); v["hidden_act"] = "relu".into(); v }),
        ("relative positions", { let mut v = bert_json(); v["position_embedding_type"] = "relative_key".into(); v }),
        ("a NaN-ish eps", { let mut v = bert_json(); v["layer_norm_eps"] = (-1.0).into(); v }),
        ("kv heads not dividing", { let mut v = llama_json(); v["num_key_value_heads"] = 3.into(); v }),
        ("llama3 rope scaling", { let mut v = llama_json(); v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0}); v }),
        ("another head_dim", { let mut v = llama_json(); v["head_dim"] = 8.into(); v }),
        ("a string tie", { let mut v = llama_json(); v["tie_word_embeddings"] = "yes".into(); v }),
    ];
    for (what, v) in cases {
        let text = if let serde_json::Value::String(s) = &v { s.clone() } else { v.to_string() };
        let e = parse_config(&text).expect_err(what);
        assert!(matches!(e, Error::Import(ImportError::Config(_))), "{what}: {e:?}");
    }
}

// --- safetensors ---------------------------------------------------------------------------

fn safetensors_bytes(entries: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        entries.iter().map(|(n, d, s, b)| ((*n).to_owned(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn f16_bf16_f64_read_exactly_and_integer_buffers_are_skipped() {
    let v = [1.5f32, -2.25, 0.0, 3072.0];
    let f16: Vec<u8> = v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let bf16: Vec<u8> = v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let f64b: Vec<u8> = v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect();
    let ids: Vec<u8> = [0i64, 1].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bytes = safetensors_bytes(&[
        ("bert.a", safetensors::Dtype::F16, vec![2, 2], f16),
        ("bert.b.LayerNorm.gamma", safetensors::Dtype::BF16, vec![4], bf16),
        ("c", safetensors::Dtype::F64, vec![4], f64b),
        ("bert.embeddings.position_ids", safetensors::Dtype::I64, vec![1, 2], ids),
    ]);
    let mut out = BTreeMap::new();
    read_safetensors(&bytes, Some("bert."), &mut out).unwrap();
    assert_eq!(out.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b.LayerNorm.weight", "c"]);
    for t in out.values() {
        assert_eq!(t.as_slice::<f32>().unwrap(), v, "all four values are exact in every dtype");
    }
    assert_eq!(out["a"].shape(), &[2, 2]);
}

#[test]
fn malformed_safetensors_are_typed_errors() {
    let good = safetensors_bytes(&[("a", safetensors::Dtype::F32, vec![2], vec![0; 8])]);
    let mut out = BTreeMap::new();
    for cut in [0, 4, 8, good.len() / 2, good.len() - 1] {
        let e = read_safetensors(&good[..cut], None, &mut out).expect_err("truncated");
        assert!(matches!(e, Error::Import(ImportError::Safetensors(_))), "cut at {cut}: {e:?}");
    }
    let fp8 = safetensors_bytes(&[("w", safetensors::Dtype::F8_E4M3, vec![2], vec![0; 2])]);
    let e = read_safetensors(&fp8, None, &mut out).expect_err("fp8");
    assert!(matches!(&e, Error::Import(ImportError::Safetensors(m)) if m.contains("`w`")), "{e:?}");
    assert!(read_safetensors(b"\xff\xff\xff\xff\xff\xff\xff\xffgarbage", None, &mut out).is_err());
}

// --- folders -------------------------------------------------------------------------------

/// A scratch folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("kilotune-hf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.0.join(name), bytes).unwrap();
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn missing_and_oversized_files_are_refused() {
    let d = Scratch::new("files");
    assert!(matches!(read_dir(d.path()), Err(Error::Io { path, .. }) if path.ends_with("config.json")));
    d.write("config.json", bert_json().to_string());
    assert!(matches!(read_dir(d.path()), Err(Error::Io { path, .. }) if path.ends_with("model.safetensors")));
    d.write("pytorch_model.bin", b"pickle");
    assert!(matches!(read_dir(d.path()), Err(Error::Import(ImportError::Safetensors(m))) if m.contains("pytorch_model.bin")));
    d.write("config.json", vec![b' '; (hf::MAX_CONFIG_BYTES + 1) as usize]);
    assert!(matches!(read_dir(d.path()), Err(Error::Import(ImportError::Config(m))) if m.contains("limit")));
}

#[test]
fn shard_indexes_only_name_files_in_the_folder() {
    let d = Scratch::new("shards");
    d.write("config.json", bert_json().to_string());
    for evil in ["../model.safetensors", "/etc/passwd", "..", "a\\\\b"] {
        d.write("model.safetensors.index.json", serde_json::json!({"weight_map": {"w": evil}}).to_string());
        let e = read_dir(d.path()).expect_err(evil);
        assert!(matches!(e, Error::Import(ImportError::Safetensors(_))), "{evil}: {e:?}");
    }
    // Two shards that together hold the checkpoint read as one.
    let c = bert();
    let (first, second): (Vec<_>, Vec<_>) = c.tensors.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-1.safetensors", first), ("model-2.safetensors", second)] {
        let entries: Vec<(String, Vec<u8>, Vec<usize>)> =
            part.iter().map(|(_, (n, t))| ((*n).clone(), t.to_f32_vec().iter().flat_map(|x| x.to_le_bytes()).collect(), t.shape().to_vec())).collect();
        let refs: Vec<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)> = entries.iter().map(|(n, b, s)| (n.as_str(), safetensors::Dtype::F32, s.clone(), b.clone())).collect();
        d.write(file, safetensors_bytes(&refs));
        for (n, _, _) in &entries {
            map.insert(n.clone(), file.into());
        }
    }
    d.write("model.safetensors.index.json", serde_json::json!({ "weight_map": map }).to_string());
    let got = read_dir(d.path()).unwrap();
    assert_eq!(got.tensors.len(), c.tensors.len());
    assert!(c.tensors.iter().all(|(n, t)| got.tensors[n].to_f32_vec() == t.to_f32_vec()));
}

// --- graphs --------------------------------------------------------------------------------

#[test]
fn missing_and_misshapen_tensors_name_the_tensor() {
    let mut c = bert();
    c.tensors.remove("encoder.layer.0.attention.self.key.bias");
    let e = to_onnx(&c, ImportPrecision::F32).expect_err("missing");
    assert!(matches!(e, Error::Import(ImportError::MissingTensor(n)) if n == "encoder.layer.0.attention.self.key.bias"));
    let mut c = llama(false);
    c.tensors.insert("model.layers.1.self_attn.k_proj.weight".into(), Tensor::new(&[16, 16], vec![0f32; 256]).unwrap());
    match to_onnx(&c, ImportPrecision::F32) {
        Err(Error::Import(ImportError::TensorShape { name, got, expected })) => {
            assert_eq!((name.as_str(), got, expected), ("model.layers.1.self_attn.k_proj.weight", vec![16, 16], vec![4, 16]));
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }
    let mut c = llama(false);
    c.tensors.remove("lm_head.weight");
    assert!(matches!(to_onnx(&c, ImportPrecision::F32), Err(Error::Import(ImportError::MissingTensor(n))) if n == "lm_head.weight"));
}

#[test]
fn out_of_range_configs_built_in_code_are_refused_too() {
    let mut c = llama(false);
    if let Architecture::Llama(cfg) = &mut c.arch {
        cfg.num_key_value_heads = 3;
    }
    assert!(matches!(to_onnx(&c, ImportPrecision::F32), Err(Error::Import(ImportError::Config(_)))));
}

#[test]
fn inv_freq_matches_the_pytorch_export() {
    // The dynamo export of the tiny Llama carries `transformers`' own inv_freq (theta 10000).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama.dynamo.onnx");
    let m = crate::onnx::proto::ModelProto::decode(&std::fs::read(path).unwrap()).unwrap();
    let t = m.graph.initializer.iter().find(|t| t.name == "m.model.rotary_emb.inv_freq").unwrap();
    let want = crate::onnx::tensor_from_proto(t, None).unwrap().to_f32_vec();
    assert_eq!(llama::inv_freq(10000.0, 8), want);
}

#[test]
fn grouped_heads_biases_and_an_untied_head_load_and_fuse() {
    for (biases, precision) in [(false, ImportPrecision::F32), (true, ImportPrecision::F32), (true, ImportPrecision::Int8)] {
        let (base, out) = run(&llama(biases), precision);
        assert_eq!(out.len(), 2 * 5 * 40);
        assert!(out.iter().all(|v| v.is_finite()));
        let lin = base.linears();
        assert_eq!(lin.len(), 2 * 7 + 1);
        assert_eq!(lin.iter().filter(|l| l.bias.is_some()).count(), if biases { 8 } else { 0 });
        assert_eq!(lin.iter().all(|l| l.is_int8()), precision == ImportPrecision::Int8);
        assert_eq!(lin[0].module, "model.layers.0.self_attn.q_proj");
        assert_eq!(lin.last().map(|l| l.module.as_str()), Some("lm_head"));
        assert_eq!((count(&base, "Attention"), count(&base, "Rotary"), count(&base, "RmsNorm"), count(&base, "Silu")), (2, 4, 5, 2));
    }
}

#[test]
fn a_tied_head_is_the_untied_head_set_to_the_embeddings() {
    let mut untied = llama(false);
    let embed = untied.tensors["model.embed_tokens.weight"].clone();
    untied.tensors.insert("lm_head.weight".into(), embed);
    let mut tied = untied.clone();
    tied.tensors.remove("lm_head.weight");
    if let Architecture::Llama(cfg) = &mut tied.arch {
        cfg.tie_word_embeddings = true;
    }
    assert_eq!(run(&untied, ImportPrecision::F32).1, run(&tied, ImportPrecision::F32).1);
}

#[test]
fn bert_fuses_and_int8_stays_close() {
    let c = bert();
    let (base, f32_out) = run(&c, ImportPrecision::F32);
    assert_eq!((count(&base, "Linear"), count(&base, "Attention"), count(&base, "Gelu"), count(&base, "AddLayerNorm")), (6, 1, 1, 2));
    assert_eq!(base.linears()[0].module, "encoder.layer.0.attention.self.query");
    let (base8, i8_out) = run(&c, ImportPrecision::Int8);
    assert!(base8.linears().iter().all(|l| l.is_int8()));
    let d = f32_out.iter().zip(&i8_out).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    // LayerNorm output is O(1); per-channel int8 weights and u8 activations move it by a few 1e-2.
    assert!(d < 0.1, "int8 vs f32: max |Δ| {d}");
}

#[test]
fn external_data_loads_like_the_inline_model() {
    let c = llama(true);
    let (_, inline) = run(&c, ImportPrecision::F32);
    let mut model = to_model(&c, ImportPrecision::F32).unwrap();
    let data = split_external_data(&mut model, "m.onnx.data").unwrap();
    let moved: Vec<_> = model.graph.initializer.iter().filter(|t| t.data_location == 1).collect();
    assert!(!moved.is_empty(), "the weights move out");
    for t in model.graph.initializer.iter().filter(|t| t.data_location != 1) {
        assert!(t.raw_data.len() < EXTERNAL_MIN_BYTES, "{} ({} bytes) stayed inline", t.name, t.raw_data.len());
    }
    for t in &moved {
        let offset: usize = t.external_data[1].1.parse().unwrap();
        assert_eq!(offset % EXTERNAL_ALIGN, 0, "{}", t.name);
        assert!(t.raw_data.is_empty());
    }
    let d = Scratch::new("external");
    d.write("m.onnx", crate::onnx::write::encode_model(&model).unwrap());
    d.write("m.onnx.data", &data);
    let base = Base::load(d.path().join("m.onnx"), LoadOptions::default()).unwrap();
    let s = Session::new(base, SessionConfig { threads: 1 }).unwrap();
    let out = s.run(&feeds(&["input_ids", "attention_mask"], 2, 5, 40)).unwrap();
    assert_eq!(out.0[0].1.to_f32_vec(), inline);
    for bad in ["", "../m.data", "a/b.data"] {
        let mut m = to_model(&c, ImportPrecision::F32).unwrap();
        assert!(matches!(split_external_data(&mut m, bad), Err(Error::Import(ImportError::Config(_)))), "{bad}");
    }
}

#[test]
#[ignore = "writes fuzz/seeds/onnx: cargo test --workspace --lib -- --ignored fuzz_seed"]
fn fuzz_seed_onnx() {
    crate::fuzz_seed::write("onnx", "bert.onnx", &to_onnx(&bert(), ImportPrecision::F32).unwrap());
    crate::fuzz_seed::write("onnx", "bert-int8.onnx", &to_onnx(&bert(), ImportPrecision::Int8).unwrap());
    crate::fuzz_seed::write("onnx", "llama.onnx", &to_onnx(&llama(true), ImportPrecision::F32).unwrap());
}
