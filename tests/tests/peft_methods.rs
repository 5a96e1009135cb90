//! The PEFT methods beyond LoRA and BitFit (head-only, top-layer and full fine-tuning, (IA)3,
//! Houlsby and Pfeiffer adapters, prefix tuning with and without its MLP) on the tiny BERT
//! (classification) and the tiny Llama (causal LM): every trainable tensor's gradient against
//! central finite differences of the real forward, a save → load round trip that evaluates to
//! the trainer's numbers, and merged == unmerged where a merge exists.

use std::sync::Arc;

use kilotune::delta::{self, Precision};
use kilotune::peft::diff_pruning::gate_eval;
use kilotune::peft::merge::{merge, MergeOptions};
use kilotune::peft::{AdapterActivation, AdapterConfig, AdapterPlacement, DiffPruningConfig, Ia3Config, MadxLanguageConfig, PeftMethod, Pooling, PrefixConfig, PromptConfig, TaskHead, TopLayersConfig};
use kilotune::train::mlm::{mask_tokens, MaskingConfig};
use kilotune::train::evaluate::TaskSession;
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, LoadOptions, Session, SessionConfig, Tensor};
use kilotune_tests::fixtures;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    fn f32(&mut self, amp: f32) -> f32 {
        (self.next(1 << 20) as f32 / (1 << 20) as f32 - 0.5) * 2.0 * amp
    }
}

fn load(name: &str) -> Arc<Base> {
    Base::load(fixtures().join(name), LoadOptions::default()).unwrap()
}

/// Three BERT rows of 6 tokens, the last one padded by 2, with labels from the first token.
fn bert_batch(seed: u64) -> Batch {
    let (rows, seq) = (3, 6);
    let mut rng = Lcg(seed);
    let ids: Vec<i64> = (0..rows * seq).map(|_| rng.next(127) as i64 + 1).collect();
    kilotune_tests::bert_batch(ids, rows, seq, 2, 64)
}

/// Two Llama rows of 6 tokens, the second left-padded by 2.
fn llama_batch(seed: u64) -> Batch {
    let (rows, seq) = (2, 6);
    let mut rng = Lcg(seed);
    let ids: Vec<i64> = (0..rows * seq).map(|_| rng.next(120) as i64 + 1).collect();
    let mask: Vec<i64> = (0..rows * seq).map(|i| i64::from(!(i / seq == 1 && i % seq < 2))).collect();
    Batch::causal_lm(vec![("input_ids".into(), Tensor::new(&[rows, seq], ids).unwrap()), ("attention_mask".into(), Tensor::new(&[rows, seq], mask).unwrap())])
}

fn config() -> TrainConfig {
    let mut c = TrainConfig { seed: 3, threads: 1, ..Default::default() };
    c.optimizer.lr = 1e-2;
    c
}

fn classify() -> TaskHead {
    TaskHead::Classification { classes: 2, pooling: Pooling::Mean }
}

/// Moves every parameter away from its initialization (where, say, a zero up-projection hides
/// the down-projection's gradient) by uniform noise of `amp`, keeping scales near 1 and
/// trained weights near the base's.
fn randomize(t: &mut Trainer, amp: f32, seed: u64) {
    let mut rng = Lcg(seed);
    for name in t.parameter_names() {
        let v = t.parameter_values(&name).unwrap().iter().map(|x| x + rng.f32(amp)).collect();
        t.set_parameter(&name, v).unwrap();
    }
}

/// Checks every trainable tensor's gradient at `per` of its coordinates (the largest analytic
/// ones, so the check never rests on a gradient that is zero by structure) against central
/// differences of the loss.
fn gradcheck(mut t: Trainer, batch: &Batch, per: usize, what: &str) {
    let (loss, grads) = t.gradients(batch).unwrap();
    assert!(loss.is_finite());
    let mut checked = 0;
    for (name, g) in grads {
        if name.starts_with("head.") {
            continue;
        }
        let values = t.parameter_values(&name).unwrap().to_vec();
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        if g[order[0]].abs() <= 1e-6 {
            // Zero by structure (a key bias: softmax ignores a shift shared by all keys); the
            // loss must then not move either.
            let loss_at = |t: &mut Trainer, d: f32| {
                let mut v = values.clone();
                v[0] += d;
                t.set_parameter(&name, v).unwrap();
                f64::from(t.gradients(batch).unwrap().0)
            };
            let moved = (loss_at(&mut t, 1e-2) - loss_at(&mut t, -1e-2)) / 2e-2;
            t.set_parameter(&name, values.clone()).unwrap();
            assert!(moved.abs() < 1e-3, "{what} {name}: analytic gradient 0, numeric {moved:e}");
            continue;
        }
        for &i in order.iter().take(per) {
            // f32 forward, h = 1e-2: truncation O(h²) ≈ 1e-4 relative, rounding ≈ 1e-7/h; a
            // wrong rule is off by O(1). Scale-aware bound as in gradients.rs.
            let h = 1e-2f32;
            let mut at = |d: f32| {
                let mut v = values.clone();
                v[i] += d;
                t.set_parameter(&name, v).unwrap();
                f64::from(t.gradients(batch).unwrap().0)
            };
            let numeric = (at(h) - at(-h)) / (2.0 * f64::from(h));
            t.set_parameter(&name, values.clone()).unwrap();
            let tol = 3e-3 * numeric.abs().max(1e-2);
            assert!((f64::from(g[i]) - numeric).abs() <= tol, "{what} {name}[{i}]: analytic {:e}, numeric {numeric:e}", g[i]);
            checked += 1;
        }
    }
    assert!(checked > 0, "{what}: nothing checked");
}

fn methods() -> Vec<(&'static str, PeftMethod)> {
    vec![
        ("top-1", PeftMethod::TopLayers(TopLayersConfig { layers: 1 })),
        ("full", PeftMethod::TopLayers(TopLayersConfig { layers: 99 })),
        ("ia3", PeftMethod::Ia3(Ia3Config::default())),
        ("houlsby-gelu", PeftMethod::Adapter(AdapterConfig { placement: AdapterPlacement::Houlsby, bottleneck: 4, activation: AdapterActivation::Gelu })),
        ("pfeiffer-relu", PeftMethod::Adapter(AdapterConfig { placement: AdapterPlacement::Pfeiffer, bottleneck: 3, activation: AdapterActivation::Relu })),
        ("prefix-mlp", PeftMethod::Prefix(PrefixConfig { len: 3, mlp_hidden: 8 })),
        ("prefix-direct", PeftMethod::Prefix(PrefixConfig { len: 2, mlp_hidden: 0 })),
    ]
}

#[test]
fn every_method_gradient_matches_finite_differences_on_tiny_bert() {
    let base = load("tiny-bert.dynamo.onnx");
    for (what, m) in methods() {
        let mut t = Trainer::new(base.clone(), m, classify(), config()).unwrap();
        randomize(&mut t, 0.3, 11);
        gradcheck(t, &bert_batch(5), 2, what);
    }
}

#[test]
fn llama_methods_gradients_match_finite_differences() {
    let base = load("tiny-llama.dynamo.onnx");
    for (what, m) in [
        ("prefix-mlp", PeftMethod::Prefix(PrefixConfig { len: 2, mlp_hidden: 6 })),
        ("ia3", PeftMethod::Ia3(Ia3Config::llama())),
        // GELU: central differences across ReLU's kink would be off by the kink's jump.
        ("houlsby", PeftMethod::Adapter(AdapterConfig { bottleneck: 3, activation: AdapterActivation::Gelu, ..Default::default() })),
        ("top-1", PeftMethod::TopLayers(TopLayersConfig { layers: 1 })),
    ] {
        let mut t = Trainer::new(base.clone(), m, TaskHead::CausalLm, config()).unwrap();
        randomize(&mut t, 0.3, 12);
        gradcheck(t, &llama_batch(6), 2, what);
    }
}

#[test]
fn fresh_adapters_ia3_and_top_layers_leave_the_base_unchanged() {
    // Near-identity initialization: a zero up-projection, unit scales, the base's own weights.
    let base = load("tiny-bert.dynamo.onnx");
    let batch = bert_batch(2);
    let feed: Vec<(&str, Tensor)> = batch.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let hidden = |s: Session| s.run(&feed).unwrap().get("last_hidden_state").unwrap().to_f32_vec();
    let plain = hidden(Session::new(base.clone(), SessionConfig { threads: 1 }).unwrap());
    for (what, m) in methods().into_iter().filter(|(w, _)| !w.starts_with("prefix")) {
        let d = Trainer::new(base.clone(), m, classify(), config()).unwrap().delta();
        let out = hidden(Session::with_delta(base.clone(), &d, SessionConfig { threads: 1 }).unwrap());
        // The same f32 GEMMs on the same values; a unit scale or a zero adapter changes nothing.
        for (a, b) in out.iter().zip(&plain) {
            assert!((a - b).abs() <= 1e-5, "{what}: {a} vs {b}");
        }
    }
}

#[test]
fn trained_deltas_round_trip_through_a_file_and_evaluate_the_same() {
    let dir = std::env::temp_dir().join(format!("kt-peft-methods-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (base, task, batch, list) in [
        (load("tiny-bert.dynamo.onnx"), classify(), bert_batch(7), {
            let mut v = methods();
            v.push(("head-only", PeftMethod::HeadOnly));
            v
        }),
        (load("tiny-llama.dynamo.onnx"), TaskHead::CausalLm, llama_batch(8), vec![("prefix", PeftMethod::Prefix(PrefixConfig { len: 2, mlp_hidden: 6 }))]),
    ] {
        for (what, m) in list {
            let mut t = Trainer::new(base.clone(), m.clone(), task.clone(), config()).unwrap();
            let first = t.step(&batch).unwrap().loss;
            for _ in 0..4 {
                t.step(&batch).unwrap();
            }
            let trained = t.evaluate(std::slice::from_ref(&batch)).unwrap();
            assert!(trained.loss < first, "{what}: loss {first} → {}", trained.loss);
            let path = dir.join(format!("{what}.ktd"));
            delta::save(&t.delta(), &path, Precision::F32).unwrap();
            let loaded = delta::load(&path, Some(&base.fingerprint()), &Default::default()).unwrap();
            assert_eq!(loaded.method, m, "{what}");
            // The prefix MLP is dropped: only prefixes reach the file.
            assert!(loaded.tensors.iter().all(|x| !x.name.starts_with("prefix_mlp")), "{what}");
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2, "{what}: a new method is format version 2");
            let session = TaskSession::new(base.clone(), &loaded, SessionConfig { threads: 1 }).unwrap();
            assert_eq!(session.evaluate(std::slice::from_ref(&batch)).unwrap(), trained, "{what}");
        }
    }
}

#[test]
fn ia3_and_top_layer_deltas_merge_into_the_weights() {
    let base = load("tiny-bert.dynamo.onnx");
    let batch = bert_batch(9);
    let feed: Vec<(&str, Tensor)> = batch.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    for (what, m) in [("ia3", PeftMethod::Ia3(Ia3Config::default())), ("top-1", PeftMethod::TopLayers(TopLayersConfig { layers: 1 }))] {
        let mut t = Trainer::new(base.clone(), m, classify(), config()).unwrap();
        randomize(&mut t, 0.3, 4);
        let d = t.delta();
        let unmerged = Session::with_delta(base.clone(), &d, SessionConfig { threads: 1 }).unwrap().run(&feed).unwrap();
        let (merged_base, _) = merge(&base, &d, &MergeOptions::default()).unwrap();
        assert!(merged_base.graph().nodes.iter().all(|n| !matches!(&n.op, kilotune::ops::Op::Linear(l) if l.patch.is_some())));
        let merged = Session::new(merged_base, SessionConfig { threads: 1 }).unwrap().run(&feed).unwrap();
        let (a, b) = (unmerged.get("last_hidden_state").unwrap().to_f32_vec(), merged.get("last_hidden_state").unwrap().to_f32_vec());
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // Folding reorders one multiply per weight: f32 rounding through two layers.
        assert!(max <= 1e-5, "{what}: merged vs unmerged max |Δ| {max:e}");
    }
}

fn diff(density: f32, lambda: f32) -> PeftMethod {
    PeftMethod::DiffPruning(DiffPruningConfig { density, l0_lambda: lambda, target_modules: vec!["layer.1.attention.self.value".into(), "layer.0.intermediate.dense".into()] })
}

#[test]
fn diff_pruning_gradients_match_finite_differences_through_the_gates() {
    // λ = 0: the checked loss is the task's alone (the penalty's gradient is checked in
    // `peft::diff_pruning`). Gates near log α = 0 sit inside the clamp, where z is smooth in
    // log α for the step's fixed noise.
    let base = load("tiny-bert.dynamo.onnx");
    let mut t = Trainer::new(base, diff(1.0, 0.0), classify(), config()).unwrap();
    let mut rng = Lcg(21);
    for name in t.parameter_names() {
        let n = t.parameter_values(&name).unwrap().len();
        let v = if name.ends_with("log_alpha") { (0..n).map(|_| rng.f32(1.0)).collect() } else { (0..n).map(|_| rng.f32(0.5)).collect() };
        t.set_parameter(&name, v).unwrap();
    }
    gradcheck(t, &bert_batch(5), 3, "diff pruning");
}

#[test]
fn diff_pruning_keeps_the_target_density_sparse_and_merges() {
    let base = load("tiny-bert.dynamo.onnx");
    let batch = bert_batch(3);
    let mut t = Trainer::new(base.clone(), diff(0.05, 1.0), classify(), config()).unwrap();
    for _ in 0..5 {
        t.step(&batch).unwrap();
    }
    let d = t.delta();
    let gates: usize = t.parameter_names().iter().filter(|n| n.ends_with(".diff")).map(|n| t.parameter_values(n).unwrap().len()).sum();
    let kept: usize = d.tensors.iter().filter(|x| x.name.ends_with(".diff_value")).map(|x| x.shape[0] as usize).sum();
    // ceil(0.05 · N), or a few more on exact ties of |δ·z|.
    let want = (0.05 * gates as f64).ceil() as usize;
    assert!(kept >= want / 2 && kept <= want + 2, "kept {kept} of {gates}, want {want}");
    assert!(d.tensors.iter().all(|x| !x.name.ends_with(".diff") && !x.name.ends_with("log_alpha")));
    // f16 storage leaves the indices exact (f32) and the evaluation within f16's rounding.
    let dir = std::env::temp_dir().join(format!("kt-peft-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    delta::save(&d, dir.join("d.ktd"), Precision::F16).unwrap();
    let loaded = delta::load(dir.join("d.ktd"), Some(&base.fingerprint()), &Default::default()).unwrap();
    for (a, b) in d.tensors.iter().zip(&loaded.tensors).filter(|(a, _)| a.name.ends_with(".diff_index")) {
        assert_eq!(a, b);
    }
    let trained = t.evaluate(std::slice::from_ref(&batch)).unwrap();
    let f32_session = TaskSession::new(base.clone(), &d, SessionConfig { threads: 1 }).unwrap();
    assert_eq!(f32_session.evaluate(std::slice::from_ref(&batch)).unwrap(), trained);
    // Merged (the sparse δ added into the weights) == the delta run as a delta.
    let feed: Vec<(&str, Tensor)> = batch.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let unmerged = Session::with_delta(base.clone(), &d, SessionConfig { threads: 1 }).unwrap().run(&feed).unwrap();
    let merged = Session::new(merge(&base, &d, &MergeOptions::default()).unwrap().0, SessionConfig { threads: 1 }).unwrap().run(&feed).unwrap();
    assert_eq!(unmerged.get("last_hidden_state").unwrap().to_f32_vec(), merged.get("last_hidden_state").unwrap().to_f32_vec());
}

/// With a schedule, diff pruning projects δ onto the L0 ball halfway through and fine-tunes the
/// kept elements only (Guo et al.'s second phase): from then on the trainer trains exactly the
/// sparse δ it saves, so its own evaluation and the saved delta's agree at every step, and the
/// kept elements still move.
#[test]
fn diff_pruning_fine_tunes_the_projected_delta_in_its_second_half() {
    let base = load("tiny-bert.dynamo.onnx");
    let batch = bert_batch(3);
    let mut c = config();
    c.optimizer.schedule.total_steps = 8;
    let mut t = Trainer::new(base.clone(), diff(0.05, 1.0), classify(), c).unwrap();
    // δ as the weights see it: δ ⊙ z at the gates' evaluation value (pruned elements' δ may
    // still drift under the optimizer's momentum, behind a gate that is shut).
    let deltas = |t: &Trainer| -> Vec<f32> {
        let names: Vec<String> = t.parameter_names().into_iter().filter(|n| n.ends_with(".diff")).collect();
        names
            .iter()
            .flat_map(|n| {
                let gates = t.parameter_values(&format!("{n}_log_alpha")).unwrap();
                t.parameter_values(n).unwrap().iter().zip(gates).map(|(d, &la)| d * gate_eval(la)).collect::<Vec<f32>>()
            })
            .collect()
    };
    for _ in 0..4 {
        t.step(&batch).unwrap();
    }
    let dense = deltas(&t);
    let want = (0.05 * dense.len() as f64).ceil() as usize;
    assert!(dense.iter().filter(|x| **x != 0.0).count() > 2 * want, "the first half trains a dense δ");
    t.step(&batch).unwrap(); // projects, then steps
    let projected = deltas(&t);
    let kept = projected.iter().filter(|x| **x != 0.0).count();
    assert!(kept >= want / 2 && kept <= want + 2, "kept {kept}, want {want}");
    for _ in 0..3 {
        t.step(&batch).unwrap();
        let now = deltas(&t);
        // Pruned elements stay exactly zero.
        assert!(now.iter().zip(&projected).all(|(a, b)| *b != 0.0 || *a == 0.0));
        let d = t.delta();
        let session = TaskSession::new(base.clone(), &d, SessionConfig { threads: 1 }).unwrap();
        assert_eq!(session.evaluate(std::slice::from_ref(&batch)).unwrap(), t.evaluate(std::slice::from_ref(&batch)).unwrap());
    }
    let last = deltas(&t);
    assert!(last.iter().zip(&projected).any(|(a, b)| *b != 0.0 && a != b), "the kept elements are fine-tuned");
}

#[test]
fn adapters_and_prefixes_have_no_merge() {
    let base = load("tiny-bert.dynamo.onnx");
    for m in [PeftMethod::Adapter(AdapterConfig::default()), PeftMethod::Prefix(PrefixConfig::default())] {
        let t = Trainer::new(base.clone(), m, classify(), config()).unwrap();
        let Err(e) = merge(&base, &t.delta(), &MergeOptions::default()) else { panic!("an adapter or prefix merged") };
        assert!(matches!(e, kilotune::Error::Config(_)), "{e:?}");
    }
}

#[test]
fn a_version_1_file_cannot_claim_a_new_method() {
    let base = load("tiny-bert.dynamo.onnx");
    let t = Trainer::new(base, PeftMethod::Ia3(Ia3Config::default()), classify(), config()).unwrap();
    let mut bytes = delta::to_bytes(&t.delta(), Precision::F32).unwrap();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let n = bytes.len();
    let crc = crc32c::crc32c(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
    let e = delta::from_bytes(&bytes, None, &Default::default()).unwrap_err();
    assert!(matches!(e, delta::DeltaError::Malformed(_)), "{e:?}");
}

#[test]
fn merged_onnx_files_run_like_the_deltas() {
    // (IA)3 folded, top-layer weights and LayerNorm γ/β written, a sparse diff added: the
    // written file, loaded again, gives the delta's outputs.
    let path = fixtures().join("tiny-bert.dynamo.onnx");
    let bytes = std::fs::read(&path).unwrap();
    let base = load("tiny-bert.dynamo.onnx");
    let batch = bert_batch(4);
    let feed: Vec<(&str, Tensor)> = batch.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    for (what, m) in [("ia3", PeftMethod::Ia3(Ia3Config::default())), ("top-1", PeftMethod::TopLayers(TopLayersConfig { layers: 1 })), ("diff", diff(0.1, 1.0))] {
        let mut t = Trainer::new(base.clone(), m, classify(), config()).unwrap();
        randomize(&mut t, 0.3, 5);
        let d = t.delta();
        let out = kilotune::peft::merge::merge_onnx(&bytes, &base, &d, &MergeOptions::default()).unwrap();
        let merged = Base::from_bytes(&out.bytes, LoadOptions::default()).unwrap();
        let a = Session::with_delta(base.clone(), &d, SessionConfig { threads: 1 }).unwrap().run(&feed).unwrap().get("last_hidden_state").unwrap().to_f32_vec();
        let b = Session::new(merged, SessionConfig { threads: 1 }).unwrap().run(&feed).unwrap().get("last_hidden_state").unwrap().to_f32_vec();
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // The same folded weights, f32 rounding of the fold only.
        assert!(max <= 1e-5, "{what}: max |Δ| {max:e}");
    }
}

fn prompt(len: u32) -> PeftMethod {
    PeftMethod::Prompt(PromptConfig { len })
}

#[test]
fn prompt_tuning_gradients_match_finite_differences() {
    // Every prompt element reaches the loss through the attention of every real token.
    let bert = load("tiny-bert.dynamo.onnx");
    let mut t = Trainer::new(bert, prompt(3), classify(), config()).unwrap();
    randomize(&mut t, 0.3, 13);
    gradcheck(t, &bert_batch(5), 3, "prompt (BERT, mean pooling)");
    let cls = TaskHead::Classification { classes: 2, pooling: Pooling::Cls };
    let t = Trainer::new(load("tiny-bert.legacy.onnx"), prompt(2), cls, config()).unwrap();
    gradcheck(t, &bert_batch(6), 3, "prompt (BERT legacy export, [CLS] pooling)");
    let llama = load("tiny-llama.dynamo.onnx");
    let mut t = Trainer::new(llama, prompt(2), TaskHead::CausalLm, config()).unwrap();
    randomize(&mut t, 0.3, 14);
    gradcheck(t, &llama_batch(6), 3, "prompt (Llama)");
}

#[test]
fn a_soft_prompt_changes_the_outputs_but_not_their_shape() {
    let base = load("tiny-bert.dynamo.onnx");
    let batch = bert_batch(2);
    let feed: Vec<(&str, Tensor)> = batch.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let plain = Session::new(base.clone(), SessionConfig { threads: 1 }).unwrap().run(&feed).unwrap();
    let d = Trainer::new(base.clone(), prompt(4), classify(), config()).unwrap().delta();
    assert_eq!(d.tensor("prompt.embeddings").unwrap().shape, [4, 32]);
    let s = Session::with_delta(base, &d, SessionConfig { threads: 1 }).unwrap();
    assert_eq!(s.prompt_len(), 4);
    let with = s.run(&feed).unwrap();
    let (a, b) = (plain.get("last_hidden_state").unwrap(), with.get("last_hidden_state").unwrap());
    assert_eq!(a.shape(), b.shape(), "the prompt's positions are cut from the output");
    let max = a.to_f32_vec().iter().zip(b.to_f32_vec()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(max > 1e-3, "every real token attends to the prompt: max |Δ| {max:e}");
}

#[test]
fn prompt_deltas_round_trip_and_have_no_merge() {
    let dir = std::env::temp_dir().join(format!("kt-peft-prompt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (base, task, batch) in [(load("tiny-bert.dynamo.onnx"), classify(), bert_batch(7)), (load("tiny-llama.dynamo.onnx"), TaskHead::CausalLm, llama_batch(8))] {
        let mut t = Trainer::new(base.clone(), prompt(3), task, config()).unwrap();
        let first = t.step(&batch).unwrap().loss;
        for _ in 0..4 {
            t.step(&batch).unwrap();
        }
        let trained = t.evaluate(std::slice::from_ref(&batch)).unwrap();
        assert!(trained.loss < first, "loss {first} → {}", trained.loss);
        let path = dir.join("prompt.ktd");
        delta::save(&t.delta(), &path, Precision::F32).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
        let loaded = delta::load(&path, Some(&base.fingerprint()), &Default::default()).unwrap();
        assert_eq!(loaded.method, prompt(3));
        let session = TaskSession::new(base.clone(), &loaded, SessionConfig { threads: 1 }).unwrap();
        assert_eq!(session.evaluate(std::slice::from_ref(&batch)).unwrap(), trained);
        assert!(matches!(merge(&base, &loaded, &MergeOptions::default()), Err(kilotune::Error::Config(_))));
    }
}

/// A masked-LM batch from `bert_batch(seed)`'s texts: BERT's masking at 30% (so that every
/// row has masked tokens), `[MASK]` = 2.
fn mlm_batch(seed: u64) -> Batch {
    let b = bert_batch(seed);
    let ids = b.inputs[0].1.to_i64_vec("ids").unwrap();
    let mask = b.inputs[1].1.to_i64_vec("mask").unwrap();
    let c = MaskingConfig { probability: 0.3, mask_id: 2, special_ids: vec![], vocab: 128 };
    let (masked, labels) = mask_tokens(&ids, &mask, &c, seed).unwrap();
    let mut inputs = b.inputs.clone();
    inputs[0].1 = Tensor::new(&[3, 6], masked).unwrap();
    Batch::masked_lm(inputs, labels)
}

fn madx_language(activation: AdapterActivation) -> PeftMethod {
    PeftMethod::MadxLanguage(MadxLanguageConfig { bottleneck: 4, invertible_bottleneck: 3, activation })
}

/// A language adapter trained for `steps` steps on masked batches of `seed`'s texts.
fn trained_language(base: &Arc<Base>, seed: u64, steps: usize) -> kilotune::delta::Delta {
    let mut t = Trainer::new(base.clone(), madx_language(AdapterActivation::Gelu), TaskHead::MaskedLm, config()).unwrap();
    for s in 0..steps {
        t.step(&mlm_batch(seed + 100 * s as u64)).unwrap();
    }
    t.delta()
}

#[test]
fn madx_language_adapter_gradients_match_finite_differences() {
    // Through the tied output embedding, the invertible adapter's inverse and forward (its
    // parameters get both shares), the language adapters and the output bias. GELU: central
    // differences across ReLU's kink would be off by its jump.
    let base = load("tiny-bert.dynamo.onnx");
    let mut t = Trainer::new(base, madx_language(AdapterActivation::Gelu), TaskHead::MaskedLm, config()).unwrap();
    randomize(&mut t, 0.3, 15);
    assert!(t.parameter_names().iter().any(|n| n == "invertible.g.up") && t.parameter_names().iter().any(|n| n == "mlm.bias"));
    gradcheck(t, &mlm_batch(5), 2, "MAD-X language adapter");
}

#[test]
fn madx_task_adapter_gradients_match_finite_differences() {
    let base = load("tiny-bert.dynamo.onnx");
    let lang = trained_language(&base, 1, 3);
    let mut t = Trainer::madx_task(base, &lang, 3, classify(), config()).unwrap();
    // Only the task adapters (and the head) train: the language adapter is frozen.
    assert!(t.parameter_names().iter().all(|n| n.contains(".adapter.") && !n.contains("lang_adapter")), "{:?}", t.parameter_names());
    randomize(&mut t, 0.3, 16);
    gradcheck(t, &bert_batch(5), 2, "MAD-X task adapter");
}

#[test]
fn a_fresh_madx_language_adapter_leaves_the_base_unchanged() {
    // Zero up-projections: the adapters and the coupling's F and G are exactly 0.
    let base = load("tiny-bert.dynamo.onnx");
    let batch = bert_batch(2);
    let feed: Vec<(&str, Tensor)> = batch.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let plain = Session::new(base.clone(), SessionConfig { threads: 1 }).unwrap().run(&feed).unwrap();
    let d = Trainer::new(base.clone(), madx_language(AdapterActivation::Relu), TaskHead::MaskedLm, config()).unwrap().delta();
    let s = Session::with_delta(base, &d, SessionConfig { threads: 1 }).unwrap();
    assert!(s.graph().nodes.iter().any(|n| matches!(n.op, kilotune::ops::Op::Invertible(_))));
    let out = s.run(&feed).unwrap();
    assert_eq!(plain.get("last_hidden_state").unwrap().to_f32_vec(), out.get("last_hidden_state").unwrap().to_f32_vec());
}

#[test]
fn madx_deltas_round_trip_and_the_language_adapter_swaps() {
    let dir = std::env::temp_dir().join(format!("kt-peft-madx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = load("tiny-bert.dynamo.onnx");
    let fp = base.fingerprint();
    let reload = |d: &kilotune::delta::Delta, name: &str| {
        let path = dir.join(name);
        delta::save(d, &path, Precision::F32).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2, "{name}");
        delta::load(&path, Some(&fp), &Default::default()).unwrap()
    };
    // Language A: masked LM on one set of texts; its loss falls and the file evaluates alike.
    let mlm = mlm_batch(21);
    let mut t = Trainer::new(base.clone(), madx_language(AdapterActivation::Relu), TaskHead::MaskedLm, config()).unwrap();
    let first = t.step(&mlm).unwrap().loss;
    for _ in 0..5 {
        t.step(&mlm).unwrap();
    }
    let trained = t.evaluate(std::slice::from_ref(&mlm)).unwrap();
    assert!(trained.loss < first, "masked-LM loss {first} → {}", trained.loss);
    assert!(trained.perplexity.is_some() && trained.tokens.unwrap() > 0);
    let lang_a = reload(&t.delta(), "lang-a.ktd");
    assert!(lang_a.tensor("mlm.bias").is_some());
    let session = TaskSession::new(base.clone(), &lang_a, SessionConfig { threads: 1 }).unwrap();
    assert_eq!(session.evaluate(std::slice::from_ref(&mlm)).unwrap(), trained);
    // Language B: other texts.
    let lang_b = reload(&trained_language(&base, 40, 6), "lang-b.ktd");
    // The task adapter trains on A's adapter; its file holds A's adapter and no MLM bias.
    let batch = bert_batch(7);
    let mut t = Trainer::madx_task(base.clone(), &lang_a, 3, classify(), config()).unwrap();
    let first = t.step(&batch).unwrap().loss;
    for _ in 0..4 {
        t.step(&batch).unwrap();
    }
    let trained = t.evaluate(std::slice::from_ref(&batch)).unwrap();
    assert!(trained.loss < first, "task loss {first} → {}", trained.loss);
    let task = reload(&t.delta(), "task.ktd");
    assert!(task.tensor("mlm.bias").is_none() && task.tensor("invertible.f.down") == lang_a.tensor("invertible.f.down"));
    let with_a = TaskSession::new(base.clone(), &task, SessionConfig { threads: 1 }).unwrap().evaluate(std::slice::from_ref(&batch)).unwrap();
    assert_eq!(with_a, trained);
    // Swapped to B: it runs, and the language adapter changes what it computes.
    let swapped = kilotune::peft::madx::with_language(&task, &lang_b).unwrap();
    assert_eq!(swapped.tensor("invertible.f.down"), lang_b.tensor("invertible.f.down"));
    let ts = TaskSession::new(base.clone(), &swapped, SessionConfig { threads: 1 }).unwrap();
    let with_b = ts.evaluate(std::slice::from_ref(&batch)).unwrap();
    assert!(with_b.loss.is_finite() && with_b.loss != with_a.loss, "A {} vs B {}", with_a.loss, with_b.loss);
    let (oa, ob) = (TaskSession::new(base.clone(), &task, SessionConfig { threads: 1 }).unwrap().outputs(&batch).unwrap(), ts.outputs(&batch).unwrap());
    assert!(oa.iter().zip(&ob).any(|(a, b)| (a - b).abs() > 1e-4), "{oa:?} vs {ob:?}");
    // Swapping in something that is not a language adapter is a typed error.
    assert!(matches!(kilotune::peft::madx::with_language(&task, &task), Err(kilotune::Error::Config(_))));
    assert!(matches!(Trainer::new(base.clone(), PeftMethod::MadxTask(Default::default()), classify(), config()), Err(kilotune::Error::Config(_))));
    assert!(matches!(merge(&base, &task, &MergeOptions::default()), Err(kilotune::Error::Config(_))));
}

#[test]
fn prompt_and_madx_gradients_are_the_same_with_checkpointing() {
    // With a memory budget the first step always checkpoints (it has not measured a plain
    // step yet): the widened prompt inputs and the masked-LM seed must come through the
    // recomputed pieces unchanged, bit for bit.
    let bert = load("tiny-bert.dynamo.onnx");
    let checkpointed = || TrainConfig { memory_budget: Some(1), ..config() };
    for (what, m, task, batch) in [
        ("prompt", prompt(3), classify(), bert_batch(5)),
        ("madx-lang", madx_language(AdapterActivation::Gelu), TaskHead::MaskedLm, mlm_batch(5)),
    ] {
        let mut plain = Trainer::new(bert.clone(), m.clone(), task.clone(), config()).unwrap();
        let mut ck = Trainer::new(bert.clone(), m, task, checkpointed()).unwrap();
        randomize(&mut plain, 0.3, 17);
        randomize(&mut ck, 0.3, 17);
        let (a, b) = (plain.gradients(&batch).unwrap(), ck.gradients(&batch).unwrap());
        assert_eq!(a, b, "{what}");
    }
}
