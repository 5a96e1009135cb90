//! `kilotune::import`: a checkpoint → standard ONNX → kilotune, against PyTorch.
//!
//! The tiny fixtures' legacy exports hold every weight of the PyTorch models they were exported
//! from (biases and norms under their Hugging Face names, `Linear` weights transposed beside
//! `MatMul` nodes named by module path). Rebuilt into a [`Checkpoint`] and imported, they
//! must give PyTorch's outputs, fuse into the same ops as the exports, and train the same.
//!
//! Set `KILOTUNE_IMPORT_OUT=DIR` to keep the imported models (for the ONNX Runtime check in
//! `scripts/check-import-ort.py`).

use std::collections::BTreeMap;

use kilotune::import::{hf, to_onnx, Architecture, BertConfig, Checkpoint, ImportPrecision, LlamaConfig};
use kilotune::onnx::proto::ModelProto;
use kilotune::onnx::tensor_from_proto;
use kilotune::ops::Op;
use kilotune::peft::{LoraConfig, PeftMethod, TaskHead};
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, LoadOptions, Session, SessionConfig, Tensor};
use kilotune_tests::{fixtures, load_npy, max_abs_diff_masked, min_cosine_masked};

/// PyTorch vs. the imported graph on kilotune's f32 kernels: the same math in another
/// summation order, held to the bound the PyTorch exports themselves meet (`tests/fixtures.rs`).
/// Measured: 9.5e-7 (BERT), 1.2e-7 (Llama).
const TOL: f32 = 1e-5;

/// The fixture's configuration, read off its export: hidden 32, 2 layers, 4 heads (Llama: 2 KV
/// heads, tied embeddings, rope_theta 10000 from its `inv_freq`, eps 1e-5; BERT: eps 1e-12).
fn config(model: &str) -> Architecture {
    match model {
        "tiny-bert" => Architecture::Bert(BertConfig {
            vocab_size: 128,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }),
        _ => Architecture::Llama(LlamaConfig {
            vocab_size: 128,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 64,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: true,
        }),
    }
}

fn transpose(t: &Tensor) -> Tensor {
    let (r, c) = (t.shape()[0], t.shape()[1]);
    let v = t.to_f32_vec();
    Tensor::new(&[c, r], (0..r * c).map(|i| v[(i % r) * c + i / r]).collect()).unwrap()
}

/// The PyTorch weights of a tiny fixture, from its legacy export: initializers `m.<name>`, and
/// each `MatMul` node `/m/<module path>/MatMul`'s constant right operand, the transpose of
/// `<module>.weight`.
fn fixture_checkpoint(model: &str) -> Checkpoint {
    let bytes = std::fs::read(fixtures().join(format!("{model}.legacy.onnx"))).unwrap();
    let proto = ModelProto::decode(&bytes).unwrap();
    let inits: BTreeMap<&str, Tensor> = proto.graph.initializer.iter().map(|t| (t.name.as_str(), tensor_from_proto(t, None).unwrap())).collect();
    let mut tensors = BTreeMap::new();
    for (name, t) in &inits {
        if let Some(hf) = name.strip_prefix("m.") {
            tensors.insert(hf.to_owned(), t.clone());
        }
    }
    for n in proto.graph.node.iter().filter(|n| n.op_type == "MatMul") {
        let Some(w) = inits.get(n.input[1].as_str()) else { continue };
        let module = n.name.strip_prefix("/m/").and_then(|p| p.strip_suffix("/MatMul")).unwrap().replace('/', ".");
        tensors.insert(format!("{module}.weight"), transpose(w));
    }
    Checkpoint { arch: config(model), tensors }
}

fn inputs(model: &str) -> Vec<(&'static str, Tensor)> {
    let refdir = fixtures().join(format!("{model}.reference"));
    let names: &[&'static str] = if model == "tiny-bert" { &["input_ids", "attention_mask", "token_type_ids"] } else { &["input_ids", "attention_mask"] };
    names.iter().map(|&n| (n, load_npy(refdir.join(format!("{n}.npy"))))).collect()
}

fn imported(model: &str, precision: ImportPrecision) -> std::sync::Arc<Base> {
    let onnx = to_onnx(&fixture_checkpoint(model), precision).unwrap();
    if let Some(dir) = std::env::var_os("KILOTUNE_IMPORT_OUT") {
        let suffix = if precision == ImportPrecision::Int8 { ".int8" } else { "" };
        std::fs::write(std::path::Path::new(&dir).join(format!("{model}.import{suffix}.onnx")), &onnx).unwrap();
    }
    Base::from_bytes(&onnx, LoadOptions::default()).unwrap()
}

/// The model's output on the fixture's inputs, the PyTorch reference, and the mask.
fn run(model: &str, base: std::sync::Arc<Base>) -> (Tensor, Tensor, Tensor) {
    let s = Session::new(base, SessionConfig { threads: 2 }).unwrap();
    let out = s.run(&inputs(model)).unwrap();
    let (name, got) = out.0.into_iter().next().unwrap();
    let refdir = fixtures().join(format!("{model}.reference"));
    (got, load_npy(refdir.join(format!("{name}.npy"))), load_npy(refdir.join("attention_mask.npy")))
}

#[test]
fn the_fixture_llama_ties_its_lm_head() {
    // The configuration above says tied: the export's LM head must be the embeddings.
    let c = fixture_checkpoint("tiny-llama");
    assert_eq!(c.tensors["lm_head.weight"].to_f32_vec(), c.tensors["model.embed_tokens.weight"].to_f32_vec());
}

#[test]
fn imported_bert_matches_pytorch() {
    let (got, want, mask) = run("tiny-bert", imported("tiny-bert", ImportPrecision::F32));
    assert_eq!(got.shape(), want.shape());
    let d = max_abs_diff_masked(&got, &want, &mask);
    println!("tiny-bert import f32: max |Δ| vs PyTorch = {d:e}");
    assert!(d <= TOL, "max |Δ| = {d:e}");
}

#[test]
fn imported_llama_matches_pytorch_at_unpadded_positions() {
    let (got, want, mask) = run("tiny-llama", imported("tiny-llama", ImportPrecision::F32));
    assert_eq!(got.shape(), want.shape());
    let d = max_abs_diff_masked(&got, &want, &mask);
    println!("tiny-llama import f32: max |Δ| vs PyTorch = {d:e}");
    assert!(d <= TOL, "max |Δ| = {d:e}");
}

#[test]
fn int8_imports_stay_close_to_pytorch_f32() {
    for model in ["tiny-bert", "tiny-llama"] {
        let base = imported(model, ImportPrecision::Int8);
        // ONNX Runtime's int8 pattern must fuse into int8 Linear layers, every one of them.
        let linears = base.linears();
        assert_eq!(linears.len(), if model == "tiny-bert" { 12 } else { 15 });
        assert!(linears.iter().all(|l| l.is_int8()), "{model}: an int8 Linear did not fuse");
        let (got, want, mask) = run(model, base);
        let c = min_cosine_masked(&got, &want, &mask);
        let d = max_abs_diff_masked(&got, &want, &mask);
        println!("{model} import int8: min cosine vs PyTorch f32 = {c}, max |Δ| = {d:e}");
        // The bound of `quantizing_at_load_keeps_outputs_close` (same per-channel scheme): a
        // wrong scale, layout or zero point gives cosines near 0. Measured: cosine 0.99999994 /
        // 0.99990, max |Δ| 9.8e-4 / 4.7e-3 (BERT / Llama), so |Δ| is held under 1e-2 too.
        assert!(c > 0.99, "{model}: min cosine {c}");
        assert!(d < 1e-2, "{model}: max |Δ| {d:e}");
    }
}

/// Each fused op in execution order, `Linear`s with module name and shape.
fn signature(base: &Base) -> Vec<String> {
    base.graph()
        .nodes
        .iter()
        .filter(|n| n.op.is_fused())
        .map(|n| match &n.op {
            Op::Linear(l) => format!("Linear {} {}x{} bias={}", l.module.trim_start_matches("m."), l.k, l.n, l.bias.is_some()),
            Op::Attention(a) => format!("Attention scale={:.6} causal={}", a.scale, a.causal),
            op => op.name().to_owned(),
        })
        .collect()
}

#[test]
fn imports_fuse_into_the_same_ops_as_the_pytorch_exports() {
    for model in ["tiny-bert", "tiny-llama"] {
        let base = imported(model, ImportPrecision::F32);
        let left: Vec<_> = base.graph().nodes.iter().map(|n| n.op.name()).filter(|o| ["MatMul", "Softmax", "Erf", "Sqrt", "Sigmoid", "Neg", "Pow"].contains(o)).collect();
        assert!(left.is_empty(), "{model}: left unfused: {left:?}");
        let export = Base::load(fixtures().join(format!("{model}.legacy.onnx")), LoadOptions::default()).unwrap();
        let (ours, theirs) = (signature(&base), signature(&export));
        assert_eq!(ours, theirs, "{model}: the import fuses differently from the PyTorch export");
        let count = |op: &str| ours.iter().filter(|s| s.starts_with(op)).count();
        assert_eq!(count("Attention"), 2, "{model}");
        if model == "tiny-llama" {
            assert_eq!((count("Rotary"), count("RmsNorm"), count("Silu")), (4, 5, 2), "{ours:#?}");
            assert!(ours.contains(&"Linear model.layers.0.self_attn.q_proj 32x32 bias=false".to_owned()));
            assert!(ours.contains(&"Linear lm_head 32x128 bias=false".to_owned()));
        } else {
            assert_eq!((count("Gelu"), count("AddLayerNorm")), (2, 4), "{ours:#?}");
            assert!(ours.contains(&"Linear encoder.layer.1.attention.self.value 32x32 bias=true".to_owned()));
        }
    }
}

fn lm_rows(step: usize) -> Batch {
    let (rows, seq) = (3 + step, 9);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in 0..rows {
        let pad = if r % 2 == 1 { 2 } else { 0 };
        for t in 0..seq {
            let live = t >= pad;
            ids.push(if live { (r as i64 * 37 + t as i64 * 11) % 115 + 5 } else { 0 });
            mask.push(i64::from(live));
        }
    }
    Batch::causal_lm(vec![("input_ids".into(), Tensor::new(&[rows, seq], ids).unwrap()), ("attention_mask".into(), Tensor::new(&[rows, seq], mask).unwrap())])
}

/// LoRA on `q_proj`/`v_proj` attaches to the imported Llama's layers by module name and trains
/// as it does on the PyTorch export of the same weights: the same adapted layers, the same
/// losses step after step.
#[test]
fn lora_trains_the_imported_llama_like_the_pytorch_export() {
    let method = PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into()], ..Default::default() });
    let mut config = TrainConfig { seed: 3, threads: 2, ..Default::default() };
    config.optimizer.lr = 1e-2;
    let export = Base::load(fixtures().join("tiny-llama.legacy.onnx"), LoadOptions::default()).unwrap();
    let mut a = Trainer::new(imported("tiny-llama", ImportPrecision::F32), method.clone(), TaskHead::CausalLm, config.clone()).unwrap();
    let mut b = Trainer::new(export, method, TaskHead::CausalLm, config).unwrap();
    let mut losses = Vec::new();
    for s in 0..4 {
        let batch = lm_rows(s);
        let (x, y) = (a.step(&batch).unwrap().loss, b.step(&batch).unwrap().loss);
        losses.push((x, y));
        assert!((x - y).abs() <= 1e-4 * y.abs(), "step {s}: loss {x} (import) vs {y} (export)");
    }
    assert!(losses[3].0 < losses[0].0, "the loss went down: {losses:?}");
    let names = |d: &kilotune::delta::Delta| d.tensors.iter().map(|t| t.name.trim_start_matches("m.").to_owned()).collect::<Vec<_>>();
    let (da, db) = (a.delta(), b.delta());
    assert_eq!(names(&da), names(&db));
    assert_eq!(da.tensors.len(), 2 * 2 * 2, "A and B for q_proj and v_proj of 2 layers: {:?}", names(&da));
}

/// Writes `tensors` as a safetensors file (f32, names with `prefix`).
fn write_safetensors(path: &std::path::Path, tensors: &BTreeMap<String, Tensor>, prefix: &str) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> =
        tensors.iter().map(|(n, t)| (format!("{prefix}{n}"), t.to_f32_vec().iter().flat_map(|x| x.to_le_bytes()).collect(), t.shape().to_vec())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        bytes.iter().map(|(n, b, s)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A Hugging Face folder written from the fixtures' weights (BERT as `BertForMaskedLM` saves
/// it, under `bert.`) reads back as the same checkpoint.
#[test]
fn a_safetensors_folder_round_trips_through_read_dir() {
    let cases = [
        ("tiny-bert", "bert.", r#"{"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": 128, "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}"#),
        ("tiny-llama", "", r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128, "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": true,
            "rope_scaling": null, "hidden_act": "silu"}"#),
    ];
    for (model, prefix, config_json) in cases {
        let dir = std::env::temp_dir().join(format!("kilotune-import-{model}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let want = fixture_checkpoint(model);
        write_safetensors(&dir.join("model.safetensors"), &want.tensors, prefix);
        std::fs::write(dir.join("config.json"), config_json).unwrap();
        let got = hf::read_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.arch, want.arch, "{model}");
        assert_eq!(got.tensors.keys().collect::<Vec<_>>(), want.tensors.keys().collect::<Vec<_>>(), "{model}");
        for (name, t) in &want.tensors {
            assert_eq!(got.tensors[name].shape(), t.shape(), "{model}: {name}");
            assert_eq!(got.tensors[name].to_f32_vec(), t.to_f32_vec(), "{model}: {name}");
        }
        let bytes = to_onnx(&got, ImportPrecision::F32).unwrap();
        assert_eq!(bytes, to_onnx(&want, ImportPrecision::F32).unwrap(), "{model}: the same checkpoint writes the same bytes");
    }
}
