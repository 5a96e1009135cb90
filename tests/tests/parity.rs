//! The cross-backend parity suite: one test body, run on every backend this build has
//! (`cpu` always; `ort`, `tract`, `vulkan` with their features), against kilotune's own CPU
//! engine (`Session::with_delta`), on the base alone and with a LoRA and a BitFit delta; and,
//! with `vulkan`, training on the device against training on `cpu` (`mod vulkan_training`).
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

/// Training on `vulkan`: the forward ops its shaders cover and the frozen layers' input
/// gradients run on the device, the rest of the step on the CPU. The loss and every gradient
/// must match a trainer on `cpu` (same seed, same batch), on the tiny BERT (classification,
/// LoRA + BitFit, (IA)3 and a Houlsby adapter, which the shaders leave to the CPU, and prefix
/// tuning, whose attention stays on the CPU) and the tiny Llama (causal LM, LoRA), f32 and
/// int8; then three SGD steps must leave the same delta.
#[cfg(feature = "vulkan")]
mod vulkan_training {
    use std::sync::Arc;

    use kilotune::peft::prompt::PromptConfig;
    use kilotune::peft::{AdapterConfig, Ia3Config, Pooling, PrefixConfig, TaskHead};
    use kilotune::train::optim::OptimizerKind;
    use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
    use kilotune::WeightFormat;

    use super::*;

    fn load(name: &str, int8: bool) -> Arc<Base> {
        let weights = if int8 { WeightFormat::Int8 } else { WeightFormat::AsShipped };
        Base::load(fixtures().join(name), LoadOptions { weights, ..Default::default() }).unwrap()
    }

    fn ids(rows: usize, seq: usize, vocab: usize, seed: usize) -> Vec<i64> {
        (0..rows * seq).map(|i| ((noise(i, seed) + 0.5) * (vocab - 1) as f32) as i64 + 1).collect()
    }

    fn bert_batch() -> Batch {
        let (rows, seq) = (4, 8);
        kilotune_tests::bert_batch(ids(rows, seq, 120, 7), rows, seq, 3, 60)
    }

    fn llama_batch() -> Batch {
        let (rows, seq) = (2, 8);
        let mask: Vec<i64> = (0..rows * seq).map(|i| i64::from(!(i / seq == 1 && i % seq < 2))).collect();
        Batch::causal_lm(vec![
            ("input_ids".into(), Tensor::new(&[rows, seq], ids(rows, seq, 120, 11)).unwrap()),
            ("attention_mask".into(), Tensor::new(&[rows, seq], mask).unwrap()),
        ])
    }

    fn trainer(base: &Arc<Base>, method: &PeftMethod, task: &TaskHead, backend: BackendKind) -> Trainer {
        let mut c = TrainConfig { seed: 5, threads: 2, backend, ..Default::default() };
        // SGD with momentum: its update is proportional to the gradient, where AdamW's first
        // steps (g/|g|) would magnify rounding noise in the smallest gradients.
        c.optimizer.kind = OptimizerKind::Sgd { momentum: 0.9 };
        c.optimizer.lr = 1e-2;
        let mut t = Trainer::new(base.clone(), method.clone(), task.clone(), c).unwrap();
        // Away from the initialization (LoRA's B = 0, adapters' up = 0), so every gradient is
        // non-zero and every input gradient flows.
        for (k, name) in t.parameter_names().into_iter().enumerate() {
            let v = t.parameter_values(&name).unwrap().iter().enumerate().map(|(i, x)| x + noise(i, 900 + k) * 0.2).collect();
            t.set_parameter(&name, v).unwrap();
        }
        t
    }

    fn norm(a: &[f32]) -> f64 {
        a.iter().map(|y| f64::from(*y).powi(2)).sum::<f64>().sqrt()
    }

    /// ‖a − b‖ / max(‖b‖, floor).
    fn rel(a: &[f32], b: &[f32], floor: f64) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        num.sqrt() / norm(b).max(floor).max(1e-30)
    }

    /// Gradients and three steps on `vulkan` against `cpu`; returns whether any gradient
    /// differed at all (the device's summation order is its own).
    fn check(label: &str, base: &Arc<Base>, method: PeftMethod, task: TaskHead, batch: &Batch, tol: f64) -> bool {
        check_steps(label, base, method, task, batch, tol, 3)
    }

    fn check_steps(label: &str, base: &Arc<Base>, method: PeftMethod, task: TaskHead, batch: &Batch, tol: f64, steps: usize) -> bool {
        let (mut cpu, mut gpu) = (trainer(base, &method, &task, BackendKind::Cpu), trainer(base, &method, &task, BackendKind::Vulkan));
        let ((lc, gc), (lv, gv)) = (cpu.gradients(batch).unwrap(), gpu.gradients(batch).unwrap());
        let dl = f64::from((lc - lv).abs()) / f64::from(lc.abs()).max(1e-6);
        println!("{label:<28} loss {lc:.6} vs {lv:.6} (rel {dl:.1e})");
        assert!(dl <= tol, "{label}: loss {lv} on vulkan, {lc} on cpu");
        assert_eq!(gc.len(), gv.len());
        let mut differs = false;
        let mut worst = 0f64;
        // A gradient that is zero by structure (a key bias: softmax ignores it) holds only
        // rounding noise, which differs between engines: errors are relative to the larger of
        // the tensor's norm and a thousandth of the whole gradient's.
        let floor = 1e-3 * gc.iter().map(|(_, c)| norm(c).powi(2)).sum::<f64>().sqrt();
        for ((name, c), (_, v)) in gc.iter().zip(&gv) {
            assert!(c.iter().any(|x| *x != 0.0), "{label}: `{name}` has a zero gradient on cpu");
            let e = rel(v, c, floor);
            worst = worst.max(e);
            differs |= c != v;
            assert!(e <= tol, "{label}: `{name}` gradient off by {e:.2e} (relative L2) on vulkan");
        }
        println!("{label:<28} {} gradients, worst relative L2 error {worst:.2e}", gc.len());
        for _ in 0..steps {
            cpu.step(batch).unwrap();
            gpu.step(batch).unwrap();
        }
        let (dc, dv) = (cpu.delta(), gpu.delta());
        for (c, v) in dc.tensors.iter().zip(&dv.tensors) {
            assert_eq!(c.name, v.name);
            let e = rel(&v.to_f32().unwrap(), &c.to_f32().unwrap(), 0.0);
            assert!(e <= tol, "{label}: `{}` after 3 steps off by {e:.2e} on vulkan", c.name);
        }
        differs
    }

    fn lora_qv() -> PeftMethod {
        PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, target_modules: vec!["query".into(), "value".into()], ..Default::default() })
    }

    fn classify() -> TaskHead {
        TaskHead::Classification { classes: 2, pooling: Pooling::Mean }
    }

    #[test]
    fn bert_lora_and_bitfit_train_on_vulkan_as_on_cpu() {
        let batch = bert_batch();
        for name in ["tiny-bert.dynamo.onnx", "tiny-bert.legacy.onnx"] {
            let base = load(name, false);
            // f32: GEMM and attention sum in another order; 1e-4 relative leaves room for that.
            assert!(check(&format!("{name} lora"), &base, lora_qv(), classify(), &batch, 1e-4), "{name}: vulkan gave the CPU's bits exactly: did the device run?");
            check(&format!("{name} bitfit"), &base, PeftMethod::BitFit(BitFitConfig::default()), classify(), &batch, 1e-4);
        }
    }

    #[test]
    fn bert_on_an_int8_base_trains_on_vulkan_as_on_cpu() {
        // The int8 forward re-quantizes activations: a last-bit difference from the LoRA path
        // can flip a rounding step, so the bound is looser than on f32.
        let base = load("tiny-bert.dynamo.onnx", true);
        check("tiny-bert int8 lora", &base, lora_qv(), classify(), &bert_batch(), 1e-2);
    }

    #[test]
    fn patched_layers_and_prefixes_train_on_vulkan_as_on_cpu() {
        // (IA)3 scales, adapters, prefix attention and the prompt's embedding rows have no
        // shader: those ops run on the CPU, the rest on the device, and the result must not
        // change.
        let base = load("tiny-bert.dynamo.onnx", false);
        let batch = bert_batch();
        check("tiny-bert ia3", &base, PeftMethod::Ia3(Ia3Config::default()), classify(), &batch, 1e-4);
        check("tiny-bert houlsby", &base, PeftMethod::Adapter(AdapterConfig::default()), classify(), &batch, 1e-4);
        check("tiny-bert prefix", &base, PeftMethod::Prefix(PrefixConfig { len: 4, mlp_hidden: 0 }), classify(), &batch, 1e-4);
        // A soft prompt: the CPU session widens the inputs, the device runs the rest.
        check("tiny-bert prompt", &base, PeftMethod::Prompt(PromptConfig { len: 3 }), classify(), &batch, 1e-4);
    }

    #[test]
    fn llama_lora_trains_on_vulkan_as_on_cpu() {
        let base = load("tiny-llama.dynamo.onnx", false);
        let lora = PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into()], ..Default::default() });
        check("tiny-llama lora", &base, lora, TaskHead::CausalLm, &llama_batch(), 1e-4);
    }

    /// MiniLM, fp32 and int8, LoRA on query and value: 2 rows of 16 tokens (lavapipe is slow).
    #[cfg(feature = "real-models")]
    #[test]
    fn minilm_lora_trains_on_vulkan_as_on_cpu() {
        let dir = kilotune_tests::shared().join("models/minilm-l6");
        let (rows, seq) = (2, 16);
        let ids: Vec<i64> = ids(rows, seq, 20000, 13).into_iter().map(|i| i + 999).collect();
        let mut mask = vec![1i64; rows * seq];
        mask[rows * seq - 5..].fill(0);
        let batch = Batch::classification(
            vec![
                ("input_ids".into(), Tensor::new(&[rows, seq], ids).unwrap()),
                ("attention_mask".into(), Tensor::new(&[rows, seq], mask).unwrap()),
                ("token_type_ids".into(), Tensor::new(&[rows, seq], vec![0i64; rows * seq]).unwrap()),
            ],
            vec![0, 1],
        );
        for (file, tol) in [("model.onnx", 1e-4), ("model.int8.onnx", 1e-2)] {
            let base = Base::load(dir.join(file), LoadOptions::default()).unwrap();
            check_steps(&format!("minilm {file} lora"), &base, lora_qv(), classify(), &batch, tol, 1);
        }
    }

    #[test]
    fn ort_and_tract_cannot_train() {
        let base = load("tiny-bert.dynamo.onnx", false);
        for kind in [BackendKind::Ort, BackendKind::Tract] {
            let c = TrainConfig { backend: kind, ..Default::default() };
            let e = Trainer::new(base.clone(), lora_qv(), classify(), c).err().expect("a typed error");
            assert!(matches!(e, kilotune::Error::Config(_)), "{kind}: {e}");
        }
    }
}

/// Each backward kernel of the Vulkan device against the CPU's, on shapes the models above do
/// not reach: grouped KV heads, more keys than queries under the causal rule, a query row that
/// sees no key, and large GELU inputs.
#[cfg(feature = "vulkan")]
mod vulkan_backward_kernels {
    use kilotune::backend::offload_for;
    use kilotune::kernels::attention::{AttentionDims, MaskView};
    use kilotune::train::backward::{activation, attention, norm};

    use super::*;

    fn rel(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    fn values(n: usize, seed: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|i| noise(i, seed) * 2.0 * amp).collect()
    }

    #[test]
    fn gelu_layer_norm_and_attention_gradients_match_the_cpu() {
        let dev = offload_for(BackendKind::Vulkan).unwrap().expect("vulkan hands work to the device");

        let x = values(1000, 1, 6.0);
        let dy = values(1000, 2, 1.0);
        let got = dev.gelu_backward(&x, &dy).unwrap().expect("on the device");
        let e = rel(&got, &activation::gelu_backward(&x, &dy));
        println!("gelu backward: relative L2 {e:.1e}");
        assert!(e <= 1e-5, "gelu backward off by {e}");

        let (rows, d) = (7, 48);
        let (x, skip, dy) = (values(rows * d, 3, 2.0), values(rows * d, 4, 1.0), values(rows * d, 5, 1.0));
        let gamma: Vec<f32> = values(d, 6, 0.5).iter().map(|g| 1.0 + g).collect();
        for residual in [false, true] {
            let got = dev.layer_norm_backward(&x, residual.then_some(&skip[..]), &gamma, 1e-12, &dy).unwrap().expect("on the device");
            let want = if residual { norm::add_layer_norm_backward(&x, &skip, &gamma, 1e-12, &dy) } else { norm::layer_norm_backward(&x, &gamma, 1e-12, &dy) };
            let (ex, eg, eb) = (rel(&got.dx, &want.dx), rel(&got.dgamma, &want.dgamma), rel(&got.dbeta, &want.dbeta));
            println!("layer norm backward (residual {residual}): dx {ex:.1e}, dγ {eg:.1e}, dβ {eb:.1e}");
            assert!(ex <= 1e-4 && eg <= 1e-4 && eb <= 1e-5, "layer norm backward off: {ex} {eg} {eb}");
        }

        let dims = AttentionDims { batch: 2, heads: 4, kv_heads: 2, q_len: 5, kv_len: 7, head_dim: 8 };
        let (qn, kvn) = (2 * 4 * 5 * 8, 2 * 2 * 7 * 8);
        let (q, k, v, dout) = (values(qn, 7, 1.0), values(kvn, 8, 1.0), values(kvn, 9, 1.0), values(qn, 10, 1.0));
        // A [B, 1, 1, Sk] padding mask, broadcast over heads and rows: batch item 1 hides
        // keys 4.., and under the causal rule its query row 0 (which sees keys 0..=2) keeps
        // some; a second mask hides every key from batch item 1.
        let mut pad = vec![0f32; 2 * 7];
        pad[7 + 4..].fill(f32::NEG_INFINITY);
        let mut none = vec![0f32; 2 * 7];
        none[7..].fill(f32::NEG_INFINITY);
        for (label, mask, causal) in [("no mask", None, false), ("padding, causal", Some(&pad), true), ("padding", Some(&pad), false), ("a row that sees nothing", Some(&none), false)] {
            let mv = mask.map(|m| MaskView { data: m, batch_stride: 7, head_stride: 0, row_stride: 0 });
            let got = dev.attention_backward(&q, &k, &v, mv.as_ref(), causal, 0.35, &dims, &dout).unwrap().expect("on the device");
            let want = attention::attention_backward(&q, &k, &v, mv.as_ref(), causal, 0.35, &dims, &dout);
            let (eq, ek, ev) = (rel(&got.dq, &want.dq), rel(&got.dk, &want.dk), rel(&got.dv, &want.dv));
            println!("attention backward ({label}): dq {eq:.1e}, dk {ek:.1e}, dv {ev:.1e}");
            assert!(eq <= 1e-4 && ek <= 1e-4 && ev <= 1e-4, "attention backward ({label}) off: {eq} {ek} {ev}");
            if label == "a row that sees nothing" {
                assert!(got.dq[qn / 2..].iter().all(|g| *g == 0.0), "a query that sees no key has no gradient");
                assert!(got.dq[..qn / 2].iter().any(|g| *g != 0.0));
            }
        }
    }
}
