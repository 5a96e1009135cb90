//! Loss and gradients on real MiniLM against Hugging Face PEFT / PyTorch
//! (`../shared/reference/minilm-peft`): LoRA r=4 on query+value with the adapter PEFT saved,
//! and BitFit with every encoder bias trainable; 8 real sentences, mean pooling, linear head,
//! cross-entropy.
#![cfg(feature = "real-models")]

use std::collections::HashMap;

use kilotune::delta::peft_interop::import_peft_adapter;
use kilotune::delta::{Delta, NamedTensor, TrainingSummary};
use kilotune::ops::Op;
use kilotune::peft::{BitFitConfig, PeftMethod, Pooling};
use kilotune::train::classify::step;
use kilotune::train::head::{PooledHead, StepResult};
use kilotune::train::tape::Trainables;
use kilotune::{Base, LoadOptions, Session, SessionConfig, Tensor, WeightFormat};
use kilotune_tests::{load_npy, shared};

fn dir() -> std::path::PathBuf {
    shared().join("reference/minilm-peft")
}

fn reference_grads(file: &str) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| (name, v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        .collect()
}

fn reference_loss(method: &str) -> f32 {
    let j: serde_json_lite::Value = serde_json_lite::parse(&std::fs::read_to_string(dir().join("reference.json")).unwrap());
    j.get(method).and_then(|m| m.get("loss")).and_then(|l| l.as_f64()).expect("loss in reference.json") as f32
}

/// A tiny JSON reader, enough for reference.json's numbers (the tests crate has no JSON dependency).
mod serde_json_lite {
    #[derive(Debug)]
    pub enum Value {
        Num(f64),
        Obj(Vec<(String, Value)>),
        Other,
    }
    impl Value {
        pub fn get(&self, k: &str) -> Option<&Value> {
            match self {
                Value::Obj(v) => v.iter().find(|(n, _)| n == k).map(|(_, v)| v),
                _ => None,
            }
        }
        pub fn as_f64(&self) -> Option<f64> {
            match self {
                Value::Num(n) => Some(*n),
                _ => None,
            }
        }
    }
    pub fn parse(s: &str) -> Value {
        let b = s.as_bytes();
        let mut i = 0;
        value(b, &mut i)
    }
    fn ws(b: &[u8], i: &mut usize) {
        while *i < b.len() && (b[*i] as char).is_whitespace() {
            *i += 1;
        }
    }
    fn string(b: &[u8], i: &mut usize) -> String {
        *i += 1;
        let start = *i;
        while b[*i] != b'"' {
            *i += if b[*i] == b'\\' { 2 } else { 1 };
        }
        *i += 1;
        String::from_utf8_lossy(&b[start..*i - 1]).into_owned()
    }
    fn value(b: &[u8], i: &mut usize) -> Value {
        ws(b, i);
        match b[*i] {
            b'{' => {
                *i += 1;
                let mut v = Vec::new();
                loop {
                    ws(b, i);
                    if b[*i] == b'}' {
                        *i += 1;
                        return Value::Obj(v);
                    }
                    let k = string(b, i);
                    ws(b, i);
                    *i += 1; // ':'
                    v.push((k, value(b, i)));
                    ws(b, i);
                    if b[*i] == b',' {
                        *i += 1;
                    }
                }
            }
            b'[' => {
                *i += 1;
                loop {
                    ws(b, i);
                    if b[*i] == b']' {
                        *i += 1;
                        return Value::Other;
                    }
                    value(b, i);
                    ws(b, i);
                    if b[*i] == b',' {
                        *i += 1;
                    }
                }
            }
            b'"' => {
                string(b, i);
                Value::Other
            }
            _ => {
                let start = *i;
                while *i < b.len() && !matches!(b[*i], b',' | b'}' | b']') && !(b[*i] as char).is_whitespace() {
                    *i += 1;
                }
                std::str::from_utf8(&b[start..*i]).ok().and_then(|t| t.parse().ok()).map_or(Value::Other, Value::Num)
            }
        }
    }
}

fn batch() -> (Vec<(&'static str, Tensor)>, Vec<usize>, PooledHead) {
    let d = dir();
    let inputs = ["input_ids", "attention_mask", "token_type_ids"].iter().map(|&n| (n, load_npy(d.join(format!("{n}.npy"))))).collect();
    let labels = load_npy(d.join("labels.npy")).to_i64_vec("labels").unwrap().into_iter().map(|l| l as usize).collect();
    let head = PooledHead {
        pooling: Pooling::Mean,
        outputs: 2,
        hidden: 384,
        weight: load_npy(d.join("head_weight.npy")).to_f32_vec(),
        bias: load_npy(d.join("head_bias.npy")).to_f32_vec(),
    };
    (inputs, labels, head)
}

/// ||a − b|| / ||b||.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

/// PEFT's module path for one of our Linear modules (the export wrapper adds `m.`).
fn peft_name(module: &str) -> String {
    module.strip_prefix("m.").unwrap_or(module).to_owned()
}

fn lora_run(weights: WeightFormat) -> (StepResult, f64, f64) {
    let base = Base::load(shared().join("models/minilm-l6/model.onnx"), LoadOptions { weights, ..Default::default() }).unwrap();
    let delta = import_peft_adapter(&dir().join("peft_adapter"), &base, base.fingerprint()).expect("import the PEFT adapter");
    let s = Session::with_delta(base.clone(), &delta, SessionConfig { threads: 2 }).unwrap();
    let g = s.graph();
    let mut t = Trainables::default();
    for (i, n) in g.nodes.iter().enumerate() {
        if matches!(&n.op, Op::Linear(l) if l.lora.is_some()) {
            t.lora.insert(i);
        }
    }
    assert_eq!(t.lora.len(), 12, "query and value of 6 layers");
    let (inputs, labels, head) = batch();
    let r = step(&s, &inputs, &labels, &head, &t, None).unwrap();
    let want = reference_grads("lora_grads.safetensors");
    let (mut worst, mut worst_cos) = (0f64, 1f64);
    for &i in &t.lora {
        let Op::Linear(l) = &g.nodes[i].op else { unreachable!() };
        let (da, db) = &r.grads.lora[&i];
        for (suffix, got) in [("lora_A", da), ("lora_B", db)] {
            let key = format!("base_model.model.{}.{suffix}.weight", peft_name(&l.module));
            let w = want.get(&key).unwrap_or_else(|| panic!("{key} missing from the reference"));
            worst = worst.max(rel(got, w));
            let dot: f64 = got.iter().zip(w).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            let na: f64 = got.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = w.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>().sqrt();
            worst_cos = worst_cos.min(dot / (na * nb));
        }
    }
    (r, worst, worst_cos)
}

#[test]
fn lora_loss_and_gradients_match_peft() {
    let (r, worst, _) = lora_run(WeightFormat::AsShipped);
    let want_loss = reference_loss("lora");
    let want_logits = load_npy(dir().join("lora_logits.npy")).to_f32_vec();
    println!("LoRA: loss {} vs PEFT {want_loss}; worst relative gradient error {worst:e}; logits rel {:e}", r.loss, rel(&r.outputs, &want_logits));
    assert!((r.loss - want_loss).abs() / want_loss <= 1e-3, "loss {} vs {want_loss}", r.loss);
    assert!(worst <= 1e-3, "worst relative error of a LoRA gradient: {worst:e}");
}

#[test]
fn lora_gradients_on_the_int8_base_stay_aligned() {
    let (r, worst, cos) = lora_run(WeightFormat::Int8);
    println!("LoRA on the int8 base: loss {}; worst relative gradient error {worst:e}; min cosine {cos}", r.loss);
    // Quantization changes the forward (per-channel int8 weights, per-tensor u8 activations),
    // so the gradients only keep their direction: measured min cosine 0.93 over the 24 tensors.
    assert!(cos >= 0.9, "min cosine {cos}");
}

#[test]
fn bitfit_loss_and_gradients_match_pytorch() {
    let base = Base::load(shared().join("models/minilm-l6/model.onnx"), LoadOptions::default()).unwrap();
    let g = base.graph();
    let want = reference_grads("bitfit_grads.safetensors");
    // A zero delta on every bias, so the session's graph has them as trainables.
    let mut tensors = Vec::new();
    for l in base.linears() {
        tensors.push(NamedTensor::f32(format!("{}.bias", l.module), &[l.n as u32], vec![0.0; l.n]));
    }
    for v in &g.values {
        if v.name.ends_with("LayerNorm.bias") && v.constant.is_some() {
            tensors.push(NamedTensor::f32(v.name.clone(), &[384], vec![0.0; 384]));
        }
    }
    let delta = Delta {
        base_fingerprint: base.fingerprint(),
        method: PeftMethod::BitFit(BitFitConfig::default()),
        head: None,
        tensors,
        summary: TrainingSummary::default(),
    };
    let s = Session::with_delta(base.clone(), &delta, SessionConfig { threads: 2 }).unwrap();
    let sg = s.graph();
    let mut t = Trainables::default();
    for (i, n) in sg.nodes.iter().enumerate() {
        if matches!(&n.op, Op::Linear(_)) {
            t.linear_bias.insert(i);
        }
    }
    for (v, val) in sg.values.iter().enumerate() {
        if val.name.ends_with("LayerNorm.bias") && val.constant.is_some() {
            t.constants.insert(v);
        }
    }
    let (inputs, labels, head) = batch();
    let r = step(&s, &inputs, &labels, &head, &t, None).unwrap();
    let mut worst = 0f64;
    let mut checked = 0;
    for (&i, got) in &r.grads.linear_bias {
        let Op::Linear(l) = &sg.nodes[i].op else { unreachable!() };
        let key = format!("{}.bias", peft_name(&l.module));
        let w = want.get(&key).unwrap_or_else(|| panic!("{key} missing"));
        if key.ends_with("attention.self.key.bias") {
            // Exactly zero in exact arithmetic: a key bias adds q·b to every score of a query's
            // row, and softmax ignores a per-row shift. PyTorch's values are rounding noise
            // (~1e-9); ours must be noise of the same order, not a real gradient.
            let ours = got.iter().map(|x| x.abs()).fold(0f32, f32::max);
            let theirs = w.iter().map(|x| x.abs()).fold(0f32, f32::max);
            assert!(ours < 1e-6 && theirs < 1e-6, "{key}: ours {ours:e}, PyTorch {theirs:e}");
        } else {
            worst = worst.max(rel(got, w));
        }
        checked += 1;
    }
    for (&v, got) in &r.grads.constants {
        let key = peft_name(&sg.values[v].name);
        worst = worst.max(rel(got, want.get(&key).unwrap_or_else(|| panic!("{key} missing"))));
        checked += 1;
    }
    let want_loss = reference_loss("bitfit");
    println!("BitFit: loss {} vs PyTorch {want_loss}; {checked} bias gradients, worst relative error {worst:e}", r.loss);
    assert_eq!(checked, want.len(), "every reference bias is checked");
    assert!((r.loss - want_loss).abs() / want_loss <= 1e-3, "loss {} vs {want_loss}", r.loss);
    assert!(worst <= 1e-3, "worst relative error of a bias gradient: {worst:e}");
}
