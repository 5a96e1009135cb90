//! Tests of merging and unmerging on the tiny fixture models (f32, and int8 quantized at load),
//! and of writing merged models as ONNX, including an ONNX Runtime–style int8 model built here.

use std::path::{Path, PathBuf};

use super::*;
use crate::delta::{Delta, NamedTensor, TrainingSummary};
use crate::onnx::proto::{AttributeProto, DimProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::onnx::write::{attr_kind, encode_model, tensor_to_proto};
use crate::peft::{BitFitConfig, BitFitVariant, LoraConfig, PeftMethod, Pooling, TaskHead};
use crate::tensor::Tensor;
use crate::{Base, Error, LoadOptions, Session, SessionConfig, WeightFormat};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

const BERT: [&str; 2] = ["tiny-bert.dynamo.onnx", "tiny-bert.legacy.onnx"];
const LLAMA: [&str; 2] = ["tiny-llama.dynamo.onnx", "tiny-llama.legacy.onnx"];

fn load(name: &str, weights: WeightFormat) -> Arc<Base> {
    Base::load(fixtures().join(name), LoadOptions { weights, ..Default::default() }).unwrap()
}

fn inputs(model: &str) -> Vec<(&'static str, Tensor)> {
    let (dir, names): (&str, &[&'static str]) = if model.starts_with("tiny-bert") {
        ("tiny-bert.reference", &["input_ids", "attention_mask", "token_type_ids"])
    } else {
        ("tiny-llama.reference", &["input_ids", "attention_mask"])
    };
    names.iter().map(|&n| (n, crate::npy::read(fixtures().join(dir).join(format!("{n}.npy"))).unwrap())).collect()
}

/// All outputs of one run, by name.
fn run(s: &Session, model: &str) -> Vec<(String, Vec<f32>)> {
    s.run(&inputs(model)).unwrap().0.into_iter().map(|(n, t)| (n, t.to_f32_vec())).collect()
}

/// Max |a − b| over positions whose attention mask is 1 (the Llama fixture's left-padded
/// positions are undefined, see tests/fixtures/README.md). Outputs are [batch, seq, d].
fn max_diff(model: &str, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mask = inputs(model).into_iter().find(|(n, _)| *n == "attention_mask").unwrap().1.to_f32_vec();
    let per_token = a.len() / mask.len();
    a.chunks(per_token).zip(b.chunks(per_token)).zip(&mask).filter(|(_, &m)| m != 0.0).flat_map(|((x, y), _)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}

/// Deterministic values in [-scale, scale).
fn random(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) as f32 / (1u32 << 23) as f32 - 1.0) * scale
        })
        .collect()
}

/// A LoRA delta on every `Linear` of `base`, rank 4, alpha 8, with random non-zero A and B.
fn lora_delta(base: &Base, scale: f32) -> Delta {
    let mut tensors = Vec::new();
    for (i, l) in base.linears().iter().enumerate() {
        let r = 4;
        tensors.push(NamedTensor::f32(format!("{}.lora_A", l.module), &[r, l.k as u32], random(r as usize * l.k, 2 * i as u32, 0.3)));
        tensors.push(NamedTensor::f32(format!("{}.lora_B", l.module), &[l.n as u32, r], random(l.n * r as usize, 2 * i as u32 + 1, scale)));
    }
    let targets = base.linears().iter().map(|l| l.module.clone()).collect();
    Delta {
        base_fingerprint: base.fingerprint(),
        method: PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, target_modules: targets, ..Default::default() }),
        head: None,
        tensors,
        summary: TrainingSummary::default(),
    }
}

/// A BitFit delta on every `Linear` (biased or not) and every LayerNorm β.
fn bitfit_delta(base: &Base) -> Delta {
    let mut tensors: Vec<NamedTensor> =
        base.linears().iter().enumerate().map(|(i, l)| NamedTensor::f32(format!("{}.bias", l.module), &[l.n as u32], random(l.n, 100 + i as u32, 0.2))).collect();
    let g = base.graph();
    for n in &g.nodes {
        let beta = match n.op {
            Op::LayerNorm { .. } => n.inputs.get(2).copied().flatten(),
            Op::AddLayerNorm { .. } => n.inputs.get(3).copied().flatten(),
            _ => None,
        };
        if let Some(b) = beta {
            let t = g.constant(b).unwrap();
            tensors.push(NamedTensor::f32(g.values[b].name.clone(), &[t.len() as u32], random(t.len(), 300 + b as u32, 0.2)));
        }
    }
    Delta {
        base_fingerprint: base.fingerprint(),
        method: PeftMethod::BitFit(BitFitConfig { variant: BitFitVariant::All, include_layer_norm: true }),
        head: None,
        tensors,
        summary: TrainingSummary::default(),
    }
}

fn session(base: Arc<Base>) -> Session {
    Session::new(base, SessionConfig { threads: 1 }).unwrap()
}

fn with_delta(base: &Arc<Base>, d: &Delta) -> Session {
    Session::with_delta(base.clone(), d, SessionConfig { threads: 1 }).unwrap()
}

fn linears(g: &Graph) -> Vec<&Linear> {
    g.nodes.iter().filter_map(|n| if let Op::Linear(l) = &n.op { Some(l) } else { None }).collect()
}

fn f32_weight(l: &Linear) -> &[f32] {
    match &l.weight {
        LinearWeight::F32(w) => w,
        LinearWeight::I8(_) => panic!("`{}` is int8", l.module),
    }
}

/// Unmerged (side path) vs merged, on all four fixture exports: within 1e-5. The LoRA moves the
/// outputs by far more than that, so the comparison is not trivially met.
#[test]
fn merged_lora_matches_the_side_path_on_bert_and_llama() {
    for model in BERT.iter().chain(&LLAMA) {
        let base = load(model, WeightFormat::AsShipped);
        let d = lora_delta(&base, 0.3);
        let (merged, report) = merge(&base, &d, &MergeOptions::default()).unwrap();
        assert_eq!(report.counts(), (base.linears().len(), 0, 0), "{model}");
        assert_eq!((report.max_abs_dw(), report.rel_frobenius()), (0.0, 0.0));
        let plain = run(&session(base.clone()), model);
        let side = run(&with_delta(&base, &d), model);
        let folded = run(&session(merged), model);
        for ((p, s), (name, f)) in plain.iter().zip(&side).zip(&folded) {
            let moved = max_diff(model, &p.1, &s.1);
            let diff = max_diff(model, &s.1, f);
            eprintln!("{model} {name}: merged vs side path max |Δ| {diff:.3e} (the delta moves it by {moved:.3e})");
            assert!(moved > 1e-2, "{model}: the delta should change `{name}`");
            assert!(diff <= 1e-5, "{model} `{name}`: merged vs unmerged max |Δ| {diff:e}");
        }
    }
}

#[test]
fn merge_then_unmerge_restores_the_weights() {
    for model in BERT.iter().chain(&LLAMA) {
        let base = load(model, WeightFormat::AsShipped);
        for d in [lora_delta(&base, 0.3), bitfit_delta(&base)] {
            let (merged, _) = merge_graph(base.graph(), &d, &MergeOptions::default()).unwrap();
            let back = unmerge_graph(&merged, &d).unwrap();
            let mut worst = 0f32;
            for ((b, m), u) in linears(base.graph()).into_iter().zip(linears(&merged)).zip(linears(&back)) {
                let moved = f32_weight(b).iter().zip(f32_weight(m)).any(|(x, y)| x != y) || b.bias != m.bias;
                assert!(moved, "{model}: the merge left `{}` unchanged", b.module);
                for (x, y) in f32_weight(b).iter().zip(f32_weight(u)) {
                    worst = worst.max((x - y).abs());
                }
                let zeros = vec![0.0; b.n];
                let bb = b.bias.as_deref().unwrap_or(&zeros);
                let ub = u.bias.as_deref().unwrap_or(&zeros);
                worst = bb.iter().zip(ub).fold(worst, |w, (x, y)| w.max((x - y).abs()));
                assert!(u.lora.is_none());
            }
            assert!(worst <= 1e-6, "{model}: merge → unmerge is off by {worst:e}");
        }
    }
}

#[test]
fn bitfit_folds_into_biases_and_layer_norm_betas() {
    for model in [BERT[0], BERT[1], LLAMA[0]] {
        let base = load(model, WeightFormat::AsShipped);
        let d = bitfit_delta(&base);
        let (merged, report) = merge(&base, &d, &MergeOptions::default()).unwrap();
        assert!(report.layers.is_empty());
        assert_eq!(report.biases, base.linears().len());
        assert_eq!(report.constants, d.tensors.len() - report.biases);
        for (b, m) in base.linears().iter().zip(merged.linears()) {
            let delta = d.tensor(&format!("{}.bias", b.module)).unwrap().to_f32().unwrap();
            let before = b.bias.as_deref().cloned().unwrap_or_else(|| vec![0.0; b.n]);
            let after: &[f32] = m.bias.as_deref().unwrap();
            for ((x, dx), y) in before.iter().zip(&delta).zip(after) {
                assert_eq!(x + dx, *y);
            }
        }
        // The same patch a session makes: outputs agree bit for bit.
        assert_eq!(run(&with_delta(&base, &d), model), run(&session(merged), model), "{model}");
    }
}

#[test]
fn int8_bases_keep_the_side_path_unless_asked() {
    let model = BERT[0];
    let base = load(model, WeightFormat::Int8);
    let d = lora_delta(&base, 0.3);
    let (merged, report) = merge(&base, &d, &MergeOptions::default()).unwrap();
    assert_eq!(report.counts(), (0, base.linears().len(), 0));
    assert_eq!(report.probe_max_abs_dy(), 0.0);
    for (b, m) in base.linears().iter().zip(merged.linears()) {
        assert!(same_weight_ptr(b, m) && m.lora.is_some(), "`{}` int8 weight must be untouched", b.module);
    }
    assert_eq!(run(&with_delta(&base, &d), model), run(&session(merged.clone()), model));
    // Unmerging drops the side paths and gives the base back exactly.
    let back = unmerge(&merged, &d).unwrap();
    assert_eq!(back.fingerprint(), base.fingerprint());
}

fn same_weight_ptr(a: &Linear, b: &Linear) -> bool {
    match (&a.weight, &b.weight) {
        (LinearWeight::I8(x), LinearWeight::I8(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// The report's figures, recomputed here from the base's int8 weights and the delta's A and B
/// in f64, with the exact merge `dequantize(W) + (alpha/r)·(B·A)ᵀ` as the reference.
fn check_report(base: &Graph, merged: &Graph, d: &Delta, report: &MergeReport, scheme: Int8Scheme) {
    let PeftMethod::Lora(cfg) = &d.method else { panic!("LoRA expected") };
    let (mut err_sq, mut exact_sq, mut worst_dw, mut worst_dy) = (0f64, 0f64, 0f64, 0f64);
    let layers: Vec<(&Linear, &Linear)> = linears(base).into_iter().zip(linears(merged)).collect();
    assert_eq!(report.layers.len(), layers.len());
    for ((b, m), lr) in layers.into_iter().zip(&report.layers) {
        let LinearWeight::I8(pb) = &b.weight else { panic!("int8 base expected") };
        let LinearWeight::I8(pm) = &m.weight else { panic!("int8 merge expected") };
        assert_eq!((lr.module.as_str(), lr.action), (b.module.as_str(), LayerAction::Requantized(scheme)));
        let a = d.tensor(&format!("{}.lora_A", b.module)).unwrap().to_f32().unwrap();
        let bb = d.tensor(&format!("{}.lora_B", b.module)).unwrap().to_f32().unwrap();
        let r = a.len() / b.k;
        let scale = f64::from(cfg.alpha) / f64::from(cfg.rank_for(&b.module));
        let (wb, wm) = (pb.dequantize(), pm.dequantize());
        let (mut e2, mut x2, mut max_dw) = (0f64, 0f64, 0f64);
        let mut diff = vec![0f64; b.k * b.n];
        for p in 0..b.k {
            for j in 0..b.n {
                let upd: f64 = (0..r).map(|q| f64::from(bb[j * r + q]) * f64::from(a[q * b.k + p])).sum::<f64>() * scale;
                let exact = f64::from(wb[p * b.n + j]) + upd;
                let dv = f64::from(wm[p * b.n + j]) - exact;
                diff[p * b.n + j] = dv;
                e2 += dv * dv;
                x2 += exact * exact;
                max_dw = max_dw.max(dv.abs());
            }
        }
        let x = probe_input(b.k);
        let mut max_dy = 0f64;
        for row in x.chunks_exact(b.k) {
            for j in 0..b.n {
                let dy: f64 = (0..b.k).map(|i| f64::from(row[i]) * diff[i * b.n + j]).sum();
                max_dy = max_dy.max(dy.abs());
            }
        }
        // The report works in f32 where it can; 1e-3 relative covers that rounding and nothing
        // more (the figures themselves are of the order of the int8 step).
        let close = |got: f64, want: f64, what: &str| assert!((got - want).abs() <= 1e-3 * want.abs() + 1e-9, "{}: {what} {got:e} vs {want:e}", b.module);
        close(f64::from(lr.max_abs_dw), max_dw, "max |ΔW|");
        close(lr.rel_frobenius(), (e2 / x2).sqrt(), "relative Frobenius");
        close(f64::from(lr.probe_max_abs_dy), max_dy, "probe max |Δy|");
        assert!(lr.max_abs_dw > 0.0 && lr.probe_max_abs_dy > 0.0, "{}: a requantizing merge has some error", b.module);
        // Requantizing rounds to the nearest step: no element is off by more than half a step.
        let half_step = pm.scales().iter().fold(0f32, |a, &s| a.max(s)) / 2.0;
        assert!(lr.max_abs_dw <= half_step * 1.001, "{}: {} > half a step {half_step}", b.module, lr.max_abs_dw);
        err_sq += e2;
        exact_sq += x2;
        worst_dw = worst_dw.max(max_dw);
        worst_dy = worst_dy.max(max_dy);
    }
    assert!((f64::from(report.max_abs_dw()) - worst_dw).abs() <= 1e-3 * worst_dw);
    assert!((report.rel_frobenius() - (err_sq / exact_sq).sqrt()).abs() <= 1e-3 * (err_sq / exact_sq).sqrt());
    assert!((f64::from(report.probe_max_abs_dy()) - worst_dy).abs() <= 1e-3 * worst_dy);
    eprintln!(
        "requantize ({scheme:?}): max |ΔW| {:.3e}, relative Frobenius {:.3e}, probe max |Δy| {:.3e}",
        report.max_abs_dw(),
        report.rel_frobenius(),
        report.probe_max_abs_dy()
    );
}

#[test]
fn requantizing_reports_its_error_correctly() {
    let model = BERT[0];
    let base = load(model, WeightFormat::Int8);
    let d = lora_delta(&base, 0.3);
    let opts = MergeOptions { requantize_int8: true, ..Default::default() };
    let (merged, report) = merge(&base, &d, &opts).unwrap();
    check_report(base.graph(), merged.graph(), &d, &report, Int8Scheme::PerChannel);
    for l in merged.linears() {
        assert!(l.lora.is_none() && l.is_int8());
    }
    // Close to the exact side path, but not equal.
    let side = run(&with_delta(&base, &d), model);
    let folded = run(&session(merged.clone()), model);
    let diff = max_diff(model, &side[0].1, &folded[0].1);
    eprintln!("{model} int8 requantized vs side path: max |Δ| {diff:.3e}");
    assert!(diff > 0.0 && diff < 0.5, "{diff}");
    let e = unmerge(&merged, &d).unwrap_err();
    assert!(matches!(e, Error::Merge(MergeError::Irreversible { .. })), "{e}");
}

#[test]
fn a_delta_for_another_base_is_refused() {
    let base = load(BERT[0], WeightFormat::AsShipped);
    let mut d = lora_delta(&base, 0.3);
    d.base_fingerprint[3] ^= 1;
    assert!(matches!(merge(&base, &d, &MergeOptions::default()), Err(Error::Delta(crate::delta::DeltaError::WrongBase { .. }))));
    let bytes = std::fs::read(fixtures().join(BERT[0])).unwrap();
    assert!(matches!(merge_onnx(&bytes, &base, &d, &MergeOptions::default()), Err(Error::Delta(crate::delta::DeltaError::WrongBase { .. }))));
}

// ---------------------------------------------------------------------------------------
// Writing ONNX

fn merged_onnx(model: &str, d: &Delta, opts: &MergeOptions) -> (Arc<Base>, MergedOnnx, Arc<Base>) {
    let bytes = std::fs::read(fixtures().join(model)).unwrap();
    let base = Base::from_bytes(&bytes, LoadOptions::default()).unwrap();
    let out = merge_onnx(&bytes, &base, d, opts).unwrap();
    let reloaded = Base::from_bytes(&out.bytes, LoadOptions::default()).unwrap();
    (base, out, reloaded)
}

#[test]
fn written_merged_models_reload_with_the_merged_weights_and_outputs() {
    for model in BERT.iter().chain(&LLAMA) {
        let base = load(model, WeightFormat::AsShipped);
        for d in [lora_delta(&base, 0.3), bitfit_delta(&base)] {
            let (base, out, reloaded) = merged_onnx(model, &d, &MergeOptions::default());
            assert!(!out.external_data && out.head_output.is_none());
            // The file holds exactly the in-memory merge's weights.
            let (merged, _) = merge_graph(base.graph(), &d, &MergeOptions::default()).unwrap();
            for (m, r) in linears(&merged).into_iter().zip(reloaded.linears()) {
                assert_eq!(m.module, r.module, "{model}");
                assert!(f32_weight(m) == f32_weight(r), "{model} `{}`: weights differ", m.module);
                if m.bias.is_some() {
                    assert_eq!(m.bias, r.bias, "{model} `{}`", m.module);
                }
            }
            let side = run(&with_delta(&base, &d), model);
            let written = run(&session(reloaded), model);
            for ((name, s), (_, w)) in side.iter().zip(&written) {
                let diff = max_diff(model, s, w);
                assert!(diff <= 1e-5, "{model} `{name}`: written merge vs unmerged max |Δ| {diff:e}");
            }
            let m = ModelProto::decode(&out.bytes).unwrap();
            let fp = m.metadata_props.iter().find(|(k, _)| k == "kilotune.merge.base_fingerprint").unwrap();
            assert_eq!(fp.1, d.base_hex());
        }
    }
}

#[test]
fn a_task_head_becomes_an_extra_output() {
    let mean3 = TaskHead::Classification { classes: 3, pooling: Pooling::Mean };
    let cases = [
        (BERT[0], mean3.clone(), "logits"),
        (LLAMA[1], mean3, "task_logits"),
        (BERT[1], TaskHead::Classification { classes: 2, pooling: Pooling::Cls }, "logits"),
        (LLAMA[0], TaskHead::Regression { outputs: 1 }, "predictions"),
    ];
    for (model, task, want) in cases {
        let base = load(model, WeightFormat::AsShipped);
        let mut d = lora_delta(&base, 0.1);
        let hidden = base.linears().last().unwrap().n;
        let (classes, cls) = match task {
            TaskHead::Classification { classes, pooling } => (classes as usize, pooling == Pooling::Cls),
            TaskHead::Regression { outputs } => (outputs as usize, false),
            TaskHead::CausalLm | TaskHead::MaskedLm => unreachable!(),
        };
        d.head = Some(task);
        let (w, b) = (random(classes * hidden, 7, 0.5), random(classes, 8, 0.5));
        d.tensors.push(NamedTensor::f32("head.weight", &[classes as u32, hidden as u32], w.clone()));
        d.tensors.push(NamedTensor::f32("head.bias", &[classes as u32], b.clone()));
        let (base, out, reloaded) = merged_onnx(model, &d, &MergeOptions::default());
        assert_eq!(out.head_output.as_deref(), Some(want));
        assert_eq!(reloaded.output_names().last().copied(), Some(want));
        // Expected: the unmerged session's first output, pooled (mean over the mask in f64, or
        // the first position), through the head.
        let feeds = inputs(model);
        let first = with_delta(&base, &d).run(&feeds).unwrap().0.remove(0).1;
        let (batch, seq) = (first.shape()[0], first.shape()[1]);
        let h = first.to_f32_vec();
        let mask = feeds.iter().find(|(n, _)| *n == "attention_mask").unwrap().1.to_f32_vec();
        let got = session(reloaded).run(&feeds).unwrap();
        let logits = got.get(want).unwrap();
        assert_eq!(logits.shape(), [batch, classes]);
        let logits = logits.to_f32_vec();
        for bi in 0..batch {
            let count: f64 = (0..seq).map(|s| f64::from(mask[bi * seq + s])).sum();
            for c in 0..classes {
                let mut z = f64::from(b[c]);
                for j in 0..hidden {
                    let pooled: f64 = if cls {
                        f64::from(h[bi * seq * hidden + j])
                    } else {
                        (0..seq).map(|s| f64::from(mask[bi * seq + s]) * f64::from(h[(bi * seq + s) * hidden + j])).sum::<f64>() / count
                    };
                    z += pooled * f64::from(w[c * hidden + j]);
                }
                let diff = (z - f64::from(logits[bi * classes + c])).abs();
                assert!(diff <= 1e-4, "{model}: logits[{bi}][{c}] {} vs {z}", logits[bi * classes + c]);
            }
        }
        // Without the head, the file has only the base's outputs.
        let (_, out, reloaded) = merged_onnx(model, &d, &MergeOptions { write_head: false, ..Default::default() });
        assert!(out.head_output.is_none());
        assert_eq!(reloaded.output_names(), base.output_names());
    }
}

#[test]
fn the_wrong_file_is_a_layout_error() {
    let base = load(BERT[0], WeightFormat::AsShipped);
    let d = lora_delta(&base, 0.3);
    // Another export of the same model: same fingerprint, different value names.
    let legacy = std::fs::read(fixtures().join(BERT[1])).unwrap();
    let e = merge_onnx(&legacy, &base, &d, &MergeOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Merge(MergeError::OnnxLayout { .. })), "{e}");
}

// An ONNX Runtime–style int8 model, built here: two layers in `quantize_dynamic`'s pattern
// (per-tensor scale, zero point 0), the first with a bias.
const K: usize = 8;
const H: usize = 6;
const N: usize = 4;

fn int8_model() -> Vec<u8> {
    let io = |name: &str, d: usize| ValueInfoProto { name: name.into(), elem_type: 1, dims: vec![DimProto::Param("batch".into()), DimProto::Value(d as i64)] };
    let node = |name: &str, op: &str, ins: &[&str], outs: &[&str]| NodeProto {
        input: ins.iter().map(|s| (*s).to_owned()).collect(),
        output: outs.iter().map(|s| (*s).to_owned()).collect(),
        name: name.into(),
        op_type: op.into(),
        ..Default::default()
    };
    let quant = |w: &[f32]| {
        let amax = w.iter().fold(0f32, |a, v| a.max(v.abs()));
        let s = amax / 127.0;
        (w.iter().map(|v| (v / s).round() as i8).collect::<Vec<i8>>(), s)
    };
    let (w1, s1) = quant(&random(K * H, 41, 1.0));
    let (w2, s2) = quant(&random(H * N, 42, 1.0));
    let t = |name: &str, dims: &[usize], t: Tensor| -> TensorProto { TensorProto { dims: dims.iter().map(|&d| d as i64).collect(), ..tensor_to_proto(name, &t) } };
    let initializer = vec![
        t("W1_quantized", &[K, H], Tensor::new(&[K, H], w1).unwrap()),
        t("W1_scale", &[], Tensor::scalar(s1)),
        t("W1_zero_point", &[], Tensor::scalar(0i8)),
        t("layer1.bias", &[H], Tensor::new(&[H], random(H, 43, 0.5)).unwrap()),
        t("W2_quantized", &[H, N], Tensor::new(&[H, N], w2).unwrap()),
        t("W2_scale", &[], Tensor::scalar(s2)),
        t("W2_zero_point", &[], Tensor::scalar(0i8)),
    ];
    let mut cast1 = node("cast1", "Cast", &["mm1"], &["mm1_f"]);
    cast1.attribute.push(AttributeProto { name: "to".into(), kind: attr_kind::INT, i: 1, ..Default::default() });
    let mut cast2 = node("cast2", "Cast", &["mm2"], &["mm2_f"]);
    cast2.attribute = cast1.attribute.clone();
    let nodes = vec![
        node("dql1", "DynamicQuantizeLinear", &["x"], &["xq", "xs", "xz"]),
        node("layer1/MatMul_quant", "MatMulInteger", &["xq", "W1_quantized", "xz", "W1_zero_point"], &["mm1"]),
        cast1,
        node("scales1", "Mul", &["xs", "W1_scale"], &["s1"]),
        node("mul1", "Mul", &["mm1_f", "s1"], &["y1"]),
        node("add1", "Add", &["y1", "layer1.bias"], &["h"]),
        node("relu", "Relu", &["h"], &["hr"]),
        node("dql2", "DynamicQuantizeLinear", &["hr"], &["hq", "hs", "hz"]),
        node("layer2", "MatMulInteger", &["hq", "W2_quantized", "hz", "W2_zero_point"], &["mm2"]),
        cast2,
        node("scales2", "Mul", &["W2_scale", "hs"], &["s2"]),
        node("mul2", "Mul", &["s2", "mm2_f"], &["y"]),
    ];
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![(String::new(), 17)],
        producer_name: "onnx.quantize".into(),
        graph: GraphProto { name: "int8".into(), node: nodes, initializer, input: vec![io("x", K)], output: vec![io("y", N)] },
        metadata_props: vec![],
    };
    encode_model(&model).unwrap()
}

#[test]
fn an_onnx_runtime_int8_model_merges_as_side_paths_or_requantized() {
    let bytes = int8_model();
    let base = Base::from_bytes(&bytes, LoadOptions::default()).unwrap();
    let modules: Vec<&str> = base.linears().iter().map(|l| l.module.as_str()).collect();
    assert_eq!(modules, ["layer1", "layer2"]);
    assert!(base.linears().iter().all(|l| l.is_int8()));
    let d = lora_delta(&base, 0.5);
    let x = Tensor::new(&[3, K], random(3 * K, 44, 2.0)).unwrap();
    let run1 = |s: &Session| s.run(&[("x", x.clone())]).unwrap().0.remove(0).1.to_f32_vec();
    let side = run1(&with_delta(&base, &d));
    let plain = run1(&session(base.clone()));
    assert!(side.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-2));

    // Default: side paths written as MatMul → Mul → MatMul → Add beside the int8 layers.
    let out = merge_onnx(&bytes, &base, &d, &MergeOptions::default()).unwrap();
    assert_eq!(out.report.counts(), (0, 2, 0));
    let m = ModelProto::decode(&out.bytes).unwrap();
    assert_eq!(m.graph.node.len(), 12 + 2 * 4);
    let init = |name: &str| m.graph.initializer.iter().find(|t| t.name == name).unwrap().raw_data.clone();
    assert_eq!(init("W1_quantized"), ModelProto::decode(&bytes).unwrap().graph.initializer[0].raw_data, "int8 weights untouched");
    let reloaded = Base::from_bytes(&out.bytes, LoadOptions::default()).unwrap();
    let written = run1(&session(reloaded));
    let diff = side.iter().zip(&written).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff <= 1e-5, "side path written vs session: {diff:e}");

    // Requantized: per-tensor like the file, one scale written back.
    let opts = MergeOptions { requantize_int8: true, ..Default::default() };
    let out = merge_onnx(&bytes, &base, &d, &opts).unwrap();
    let (merged, _) = merge_graph(base.graph(), &d, &opts).unwrap();
    check_report(base.graph(), &merged, &d, &out.report, Int8Scheme::PerTensor);
    let m = ModelProto::decode(&out.bytes).unwrap();
    assert_eq!(m.graph.node.len(), 12, "requantizing adds no node");
    let scale = m.graph.initializer.iter().find(|t| t.name == "W1_scale").unwrap();
    assert!(scale.dims.is_empty() && scale.raw_data.len() == 4);
    let reloaded = Base::from_bytes(&out.bytes, LoadOptions::default()).unwrap();
    for (a, b) in linears(&merged).into_iter().zip(reloaded.linears()) {
        let (LinearWeight::I8(pa), LinearWeight::I8(pb)) = (&a.weight, &b.weight) else { panic!("int8 expected") };
        assert_eq!((pa.weights_kn(), pa.scales()), (pb.weights_kn(), pb.scales()), "`{}`", a.module);
    }
    assert_eq!(run1(&session(merged_base(&base, merged))), run1(&session(reloaded)));
}

fn merged_base(base: &Base, g: Graph) -> Arc<Base> {
    base.with_graph(g)
}
