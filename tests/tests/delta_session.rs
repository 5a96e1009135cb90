//! Running a base with a user's delta: LoRA side paths and bias deltas, bound to the base by
//! its fingerprint, through a real save and load.

use kilotune::delta::{self, Delta, NamedTensor, Precision, TrainingSummary};
use kilotune::peft::{BitFitConfig, LoraConfig, PeftMethod};
use kilotune::{Base, Error, LoadOptions, Session, SessionConfig, Tensor};
use kilotune_tests::{fixtures, load_npy};

fn base() -> std::sync::Arc<Base> {
    Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions::default()).unwrap()
}

fn run(s: &Session) -> Vec<f32> {
    let r = fixtures().join("tiny-bert.reference");
    let inputs: Vec<(&str, Tensor)> =
        ["input_ids", "attention_mask", "token_type_ids"].iter().map(|&n| (n, load_npy(r.join(format!("{n}.npy"))))).collect();
    s.run(&inputs).unwrap().0.remove(0).1.to_f32_vec()
}

/// A LoRA delta on every query and value projection: A pseudo-random, B = `b`.
fn lora_delta(base: &Base, b: f32) -> Delta {
    let mut tensors = Vec::new();
    for l in base.linears() {
        if l.module.ends_with(".query") || l.module.ends_with(".value") {
            let r = 4usize;
            let a: Vec<f32> = (0..r * l.k).map(|i| ((i * 7919 % 211) as f32 / 211.0 - 0.5) * 0.2).collect();
            tensors.push(NamedTensor::f32(format!("{}.lora_A", l.module), &[r as u32, l.k as u32], a));
            tensors.push(NamedTensor::f32(format!("{}.lora_B", l.module), &[l.n as u32, r as u32], vec![b; l.n * r]));
        }
    }
    Delta {
        base_fingerprint: base.fingerprint(),
        method: PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, ..Default::default() }),
        head: None,
        tensors,
        summary: TrainingSummary::default(),
    }
}

#[test]
fn zero_initialized_lora_reproduces_the_base_bit_for_bit() {
    let base = base();
    let plain = run(&Session::new(base.clone(), SessionConfig { threads: 2 }).unwrap());
    let with = run(&Session::with_delta(base.clone(), &lora_delta(&base, 0.0), SessionConfig { threads: 2 }).unwrap());
    assert_eq!(plain.len(), with.len());
    for (a, b) in plain.iter().zip(&with) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
}

#[test]
fn a_trained_lora_changes_the_output_and_survives_save_and_load() {
    let base = base();
    let plain = run(&Session::new(base.clone(), SessionConfig { threads: 2 }).unwrap());
    let d = lora_delta(&base, 0.05);
    let dir = std::env::temp_dir().join(format!("kt-delta-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("user.ktd");
    delta::save(&d, &path, Precision::F32).unwrap();
    let loaded = delta::load(&path, Some(&base.fingerprint()), &Default::default()).unwrap();
    let a = run(&Session::with_delta(base.clone(), &d, SessionConfig { threads: 2 }).unwrap());
    let b = run(&Session::with_delta(base.clone(), &loaded, SessionConfig { threads: 2 }).unwrap());
    assert_eq!(a, b, "a saved and loaded f32 delta runs identically");
    let moved = a.iter().zip(&plain).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-3, "LoRA had no effect (max |Δ| {moved:e})");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_delta_for_another_base_is_refused() {
    let base = base();
    let mut d = lora_delta(&base, 0.05);
    d.base_fingerprint[0] ^= 1;
    let e = Session::with_delta(base.clone(), &d, SessionConfig::default()).err().expect("must fail");
    assert!(matches!(e, Error::Delta(delta::DeltaError::WrongBase { .. })), "{e}");
    // Another model has another fingerprint.
    let llama = Base::load(fixtures().join("tiny-llama.dynamo.onnx"), LoadOptions::default()).unwrap();
    assert_ne!(llama.fingerprint(), base.fingerprint());
}

#[test]
fn bias_deltas_add_to_linear_and_norm_biases() {
    let base = base();
    let plain = run(&Session::new(base.clone(), SessionConfig { threads: 2 }).unwrap());
    let q = base.linears().iter().find(|l| l.module.ends_with("layer.0.attention.self.query")).map(|l| (l.module.clone(), l.n)).unwrap();
    let mk = |v: f32, extra: Option<NamedTensor>| Delta {
        base_fingerprint: base.fingerprint(),
        method: PeftMethod::BitFit(BitFitConfig::default()),
        head: None,
        tensors: std::iter::once(NamedTensor::f32(format!("{}.bias", q.0), &[q.1 as u32], vec![v; q.1])).chain(extra).collect(),
        summary: TrainingSummary::default(),
    };
    let zero = run(&Session::with_delta(base.clone(), &mk(0.0, None), SessionConfig { threads: 2 }).unwrap());
    assert_eq!(zero, plain, "a zero bias delta changes nothing");
    let ln = NamedTensor::f32("m.embeddings.LayerNorm.bias", &[32], vec![0.1; 32]);
    let moved = run(&Session::with_delta(base.clone(), &mk(0.3, Some(ln)), SessionConfig { threads: 2 }).unwrap());
    assert!(moved.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-3));
    let unknown = NamedTensor::f32("no.such.module.bias", &[3], vec![0.0; 3]);
    let e = Session::with_delta(base.clone(), &mk(0.0, Some(unknown)), SessionConfig::default()).err().expect("must fail");
    assert!(e.to_string().contains("matches nothing"), "{e}");
}

#[test]
fn fingerprint_is_stable_across_loads_and_sensitive_to_weights() {
    let a = base();
    let b = base();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let q = Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions { weights: kilotune::WeightFormat::Int8, ..Default::default() }).unwrap();
    assert_ne!(a.fingerprint(), q.fingerprint(), "quantized weights are another base");
}
