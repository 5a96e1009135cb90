//! The cross-backend parity suite: one test body, run on every backend this build has
//! (`cpu` always; `ort`, `tract`, `vulkan` with their features), against kilotune's own CPU
//! engine (`Session::with_delta`), on the base alone and with a LoRA and a BitFit delta.
//!
//! ```sh
//! cargo test --workspace --test parity                       # cpu only: the fixtures
//! bash scripts/get-ort.sh && export ORT_DYLIB_PATH=$PWD/.ort/libonnxruntime.so.1.31.1
//! cargo test --workspace --features kilotune-tests/backends,kilotune-tests/real-models --test parity
//! ```
//!
//! Tolerances, per backend, on the max |Δ| at unmasked positions (fp32) and the min cosine
//! (int8), with why:
//!
//! - `cpu` (through `BackendSession`): bit for bit: the same engine.
//! - `ort`, `tract`, `vulkan` on fp32: max |Δ| ≤ 1e-4 (other summation orders; the README's
//!   bound for ONNX Runtime against kilotune on MiniLM).
//! - on int8 bases: min cosine ≥ 0.99, with the max |Δ| printed, not asserted. Every
//!   activation is re-quantized, so a one-ulp difference that crosses a rounding boundary
//!   moves a whole row and spreads through the later layers. The base alone matches to ~1e-6
//!   (kilotune's float kernels follow ONNX Runtime's), but a LoRA side path's f32 products
//!   differ in their last bits between engines: measured on MiniLM int8 with LoRA on every
//!   `Linear`, ONNX Runtime's min cosine is 0.9954 (max |Δ| 0.15). tract's own int8 kernels
//!   differ on the base alone (min cosine 0.9993), and it gets ≥ 0.98 (measured: 0.988 with
//!   BitFit).
//!
//! Every delta is checked to move the output by far more than the tolerance, so agreeing
//! with the delta cannot happen by ignoring it. An `ort` build without `ORT_DYLIB_PATH` fails:
//! the suite never passes by skipping a backend.

use std::path::{Path, PathBuf};
use kilotune::delta::{Delta, NamedTensor, TrainingSummary};
use kilotune::ops::Op;
use kilotune::peft::{BitFitConfig, LoraConfig, PeftMethod};
use kilotune::{BackendConfig, BackendKind, BackendSession, Base, LoadOptions, Session, SessionConfig, Tensor};
use kilotune_tests::{fixtures, load_npy, max_abs_diff_masked, min_cosine_masked};

/// One model and the batch it runs.
struct Case {
    model: PathBuf,
    inputs: Vec<(&'static str, Tensor)>,
    mask: Tensor,
    int8: bool,
}

fn case(model: PathBuf, reference: &Path, names: &[&'static str], int8: bool) -> Case {
    let inputs: Vec<(&'static str, Tensor)> = names.iter().map(|&n| (n, load_npy(reference.join(format!("{n}.npy"))))).collect();
    let mask = inputs.iter().find(|(n, _)| *n == "attention_mask").expect("every case has a mask").1.clone();
    Case { model, inputs, mask, int8 }
}

/// A deterministic value in [-0.5, 0.5) for index `i` under `seed`.
fn noise(i: usize, seed: usize) -> f32 {
    ((i.wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503)) % 1000) as f32) / 1000.0 - 0.5
}

/// LoRA r=4 (alpha 8) with A and B both non-zero on every `Linear`.
fn lora_delta(base: &Base) -> Delta {
    let mut tensors = Vec::new();
    for (li, l) in base.linears().into_iter().enumerate() {
        let r = 4usize;
        let a: Vec<f32> = (0..r * l.k).map(|i| noise(i, 2 * li) * 0.2).collect();
        let b: Vec<f32> = (0..l.n * r).map(|i| noise(i, 2 * li + 1) * 0.2).collect();
        tensors.push(NamedTensor::f32(format!("{}.lora_A", l.module), &[r as u32, l.k as u32], a));
        tensors.push(NamedTensor::f32(format!("{}.lora_B", l.module), &[l.n as u32, r as u32], b));
    }
    // `target_modules` matters only to training: a delta names its modules through its tensors.
    let method = PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, ..Default::default() });
    Delta { base_fingerprint: base.fingerprint(), method, head: None, tensors, summary: TrainingSummary::default() }
}

/// BitFit: a delta on every `Linear` bias and every LayerNorm β.
fn bitfit_delta(base: &Base) -> Delta {
    let mut tensors = Vec::new();
    for (li, l) in base.linears().into_iter().enumerate() {
        let d: Vec<f32> = (0..l.n).map(|i| noise(i, 100 + li) * 0.1).collect();
        tensors.push(NamedTensor::f32(format!("{}.bias", l.module), &[l.n as u32], d));
    }
    let g = base.graph();
    let mut seen = std::collections::HashSet::new();
    for n in &g.nodes {
        let slot = match n.op {
            Op::LayerNorm { .. } => 2,
            Op::AddLayerNorm { .. } => 3,
            _ => continue,
        };
        let Some(Some(v)) = n.inputs.get(slot) else { continue };
        let Some(c) = g.constant(*v) else { continue };
        let name = g.values[*v].name.clone();
        if seen.insert(name.clone()) {
            let d: Vec<f32> = (0..c.len()).map(|i| noise(i, 500 + seen.len()) * 0.1).collect();
            let shape: Vec<u32> = c.shape().iter().map(|&x| x as u32).collect();
            tensors.push(NamedTensor::f32(name, &shape, d));
        }
    }
    Delta {
        base_fingerprint: base.fingerprint(),
        method: PeftMethod::BitFit(BitFitConfig::default()),
        head: None,
        tensors,
        summary: TrainingSummary::default(),
    }
}

/// The backends (and ONNX Runtime's two graphs) this build runs.
fn configs() -> Vec<(String, BackendConfig)> {
    let mut out = Vec::new();
    for kind in BackendKind::compiled() {
        let c = BackendConfig { backend: kind, threads: 2, ..Default::default() };
        if kind == BackendKind::Ort {
            out.push(("ort-merged".to_owned(), BackendConfig { merged: true, ..c.clone() }));
        }
        out.push((kind.name().to_owned(), c));
    }
    out
}

enum Tol {
    Exact,
    MaxAbs(f32),
    Cosine(f32),
}

fn tolerance(kind: BackendKind, int8: bool) -> Tol {
    match (kind, int8) {
        (BackendKind::Cpu, _) => Tol::Exact,
        (_, false) => Tol::MaxAbs(1e-4),
        (BackendKind::Tract, true) => Tol::Cosine(0.98),
        (_, true) => Tol::Cosine(0.99),
    }
}

fn output(case: &Case, run: impl FnOnce(&[(&str, Tensor)]) -> kilotune::Outputs) -> Tensor {
    run(&case.inputs).0.remove(0).1
}

/// Runs `case` on every compiled backend with no delta, LoRA and (when the base has biases)
/// BitFit, against `Session::with_delta` on the CPU.
fn check(case: &Case, bitfit: bool) {
    let base = Base::load(&case.model, LoadOptions::default()).unwrap();
    let mut deltas: Vec<(&str, Option<Delta>)> = vec![("base", None), ("lora", Some(lora_delta(&base)))];
    if bitfit {
        deltas.push(("bitfit", Some(bitfit_delta(&base))));
    }
    let cfg = SessionConfig { threads: 2 };
    let plain = output(case, |i| Session::new(base.clone(), cfg.clone()).unwrap().run(i).unwrap());
    let want: Vec<Tensor> = deltas
        .iter()
        .map(|(_, d)| match d {
            None => plain.clone(),
            Some(d) => output(case, |i| Session::with_delta(base.clone(), d, cfg.clone()).unwrap().run(i).unwrap()),
        })
        .collect();
    for (name, w) in deltas.iter().zip(&want).skip(1).map(|((n, _), w)| (n, w)) {
        let moved = max_abs_diff_masked(&plain, w, &case.mask);
        assert!(moved > 1e-2, "{}: the {name} delta moves the output by only {moved}", case.model.display());
    }
    for (label, config) in configs() {
        let mut s = BackendSession::open(&case.model, base.clone(), &config)
            .unwrap_or_else(|e| panic!("{label} on {}: {e}", case.model.display()));
        // Twice round, so switching users back and forth is checked too.
        for round in 0..2 {
            for ((name, d), w) in deltas.iter().zip(&want) {
                s.set_delta(d.as_ref()).unwrap_or_else(|e| panic!("{label}: set_delta({name}): {e}"));
                let got = output(case, |i| s.run(i).unwrap_or_else(|e| panic!("{label} {name}: {e}")));
                let diff = max_abs_diff_masked(&got, w, &case.mask);
                let cos = min_cosine_masked(&got, w, &case.mask);
                if round == 0 {
                    println!("{label:>10} {:<28} {name:<6} max|Δ| {diff:.2e}  min cos {cos:.6}", file(&case.model));
                }
                match tolerance(config.backend, case.int8) {
                    Tol::Exact => assert_eq!(got.to_f32_vec(), w.to_f32_vec(), "{label} {name}: not bit for bit"),
                    Tol::MaxAbs(t) => assert!(diff <= t, "{label} {name} on {}: max |Δ| {diff} > {t}", file(&case.model)),
                    Tol::Cosine(t) => assert!(cos >= t, "{label} {name} on {}: min cosine {cos} < {t}", file(&case.model)),
                }
            }
        }
    }
}

fn file(p: &Path) -> String {
    p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}

#[test]
fn tiny_bert_dynamo_on_every_backend() {
    let r = fixtures().join("tiny-bert.reference");
    check(&case(fixtures().join("tiny-bert.dynamo.onnx"), &r, &["input_ids", "attention_mask", "token_type_ids"], false), true);
}

#[test]
fn tiny_bert_legacy_on_every_backend() {
    let r = fixtures().join("tiny-bert.reference");
    check(&case(fixtures().join("tiny-bert.legacy.onnx"), &r, &["input_ids", "attention_mask", "token_type_ids"], false), true);
}

/// The Llama has no biases, so BitFit has nothing to train on it.
#[test]
fn tiny_llama_dynamo_on_every_backend() {
    let r = fixtures().join("tiny-llama.reference");
    check(&case(fixtures().join("tiny-llama.dynamo.onnx"), &r, &["input_ids", "attention_mask"], false), false);
}

#[test]
fn backends_not_compiled_in_are_a_typed_error() {
    let base = Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions::default()).unwrap();
    for kind in BackendKind::ALL.into_iter().filter(|k| !k.is_compiled()) {
        let config = BackendConfig { backend: kind, ..Default::default() };
        let e = BackendSession::open(fixtures().join("tiny-bert.dynamo.onnx"), base.clone(), &config).unwrap_err();
        assert!(matches!(e, kilotune::Error::BackendUnavailable(n) if n == kind.name()), "{kind}: {e}");
    }
    assert!("metal".parse::<BackendKind>().is_err());
    assert_eq!("tract".parse::<BackendKind>().unwrap(), BackendKind::Tract);
}

#[cfg(feature = "real-models")]
mod minilm {
    use super::*;

    fn minilm(file: &str, int8: bool) -> Case {
        let dir = kilotune_tests::shared().join("models/minilm-l6");
        case(dir.join(file), &dir.join("reference"), &["input_ids", "attention_mask", "token_type_ids"], int8)
    }

    #[test]
    fn minilm_fp32_with_lora_and_bitfit_on_every_backend() {
        check(&minilm("model.onnx", false), true);
    }

    #[test]
    fn minilm_int8_with_lora_and_bitfit_on_every_backend() {
        check(&minilm("model.int8.onnx", true), true);
    }
}

/// ONNX Runtime's adapter-ready session runs several users' deltas, prepared once, on one
/// session, each run equal to a session made for that user alone.
#[cfg(feature = "ort")]
#[test]
fn one_ort_session_serves_many_users() {
    let r = fixtures().join("tiny-bert.reference");
    let c = case(fixtures().join("tiny-bert.dynamo.onnx"), &r, &["input_ids", "attention_mask", "token_type_ids"], false);
    let base = Base::load(&c.model, LoadOptions::default()).unwrap();
    let (a, b) = (lora_delta(&base), bitfit_delta(&base));
    let config = BackendConfig { backend: BackendKind::Ort, threads: 2, ..Default::default() };
    let mut s = BackendSession::open(&c.model, base.clone(), &config).unwrap();
    let ort = s.as_ort().expect("an ort session");
    let (pa, pb) = (ort.prepare(&a).unwrap(), ort.prepare(&b).unwrap());
    let cfg = SessionConfig { threads: 2 };
    let want_a = output(&c, |i| Session::with_delta(base.clone(), &a, cfg.clone()).unwrap().run(i).unwrap());
    let want_b = output(&c, |i| Session::with_delta(base.clone(), &b, cfg.clone()).unwrap().run(i).unwrap());
    for _ in 0..2 {
        for (p, w) in [(&pa, &want_a), (&pb, &want_b)] {
            let got = output(&c, |i| ort.run_with(Some(p), i).unwrap());
            assert!(max_abs_diff_masked(&got, w, &c.mask) <= 1e-4);
        }
    }
    // A delta for another base is refused before anything runs.
    let mut other = a.clone();
    other.base_fingerprint[0] ^= 1;
    assert!(ort.prepare(&other).is_err());
}
