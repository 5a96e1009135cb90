//! Gradients of the three task heads through the whole fused graph, against central finite
//! differences of the real forward: next-token cross-entropy on the tiny Llama (LoRA on q_proj
//! and v_proj, so through `Rotary`, grouped-query attention and RMSNorm, with left padding),
//! and regression and CLS-pooled classification on the tiny BERT (LoRA on value, and the head).

use kilotune::delta::{Delta, NamedTensor, TrainingSummary};
use kilotune::graph::Graph;
use kilotune::ops::Op;
use kilotune::peft::{LoraConfig, PeftMethod, Pooling};
use kilotune::train::head::{PooledHead, StepResult};
use kilotune::train::tape::Trainables;
use kilotune::train::{causal_lm, classify, regress};
use kilotune::{Base, LoadOptions, Session, SessionConfig, Tensor};
use kilotune_tests::{fixtures, load_npy};

fn noise(n: usize, seed: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|i| ((((i + 1) * 2654435761 + seed * 97) % 1000) as f32 / 1000.0 - 0.5) * 2.0 * amp).collect()
}

fn inputs(model: &str, names: &[&'static str]) -> Vec<(&'static str, Tensor)> {
    let r = fixtures().join(format!("{model}.reference"));
    names.iter().map(|&n| (n, load_npy(r.join(format!("{n}.npy"))))).collect()
}

/// LoRA (r = 2, A and B both non-zero) on the Linears whose module ends with one of `targets`;
/// `tweak` adds `h` to element `i` of the named tensor.
fn lora_delta(base: &Base, targets: &[&str], tweak: Option<(&str, usize, f32)>) -> Delta {
    let mut tensors = Vec::new();
    for (li, l) in base.linears().iter().enumerate() {
        if targets.iter().any(|t| l.module.ends_with(t)) {
            tensors.push(NamedTensor::f32(format!("{}.lora_A", l.module), &[2, l.k as u32], noise(2 * l.k, li, 0.3)));
            tensors.push(NamedTensor::f32(format!("{}.lora_B", l.module), &[l.n as u32, 2], noise(2 * l.n, li + 50, 0.3)));
        }
    }
    if let Some((name, i, h)) = tweak {
        let t = tensors.iter_mut().find(|t| t.name == name).expect("tensor to tweak");
        let mut v = t.to_f32().unwrap();
        v[i] += h;
        *t = NamedTensor::f32(name, &t.shape.clone(), v);
    }
    Delta {
        base_fingerprint: base.fingerprint(),
        method: PeftMethod::Lora(LoraConfig { r: 2, alpha: 4.0, ..Default::default() }),
        head: None,
        tensors,
        summary: TrainingSummary::default(),
    }
}

fn lora_trainables(g: &Graph) -> Trainables {
    let mut t = Trainables::default();
    for (i, n) in g.nodes.iter().enumerate() {
        if matches!(&n.op, Op::Linear(l) if l.lora.is_some()) {
            t.lora.insert(i);
        }
    }
    t
}

/// (tensor name, element, analytic gradient) for the `per` largest |gradient| elements of each
/// LoRA A and B of the modules ending with `targets`. The largest ones, so the numeric
/// derivative stands well above the forward's rounding noise.
fn largest_lora_cases(g: &Graph, r: &StepResult, targets: &[&str], per: usize) -> Vec<(String, usize, f32)> {
    let mut cases = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::Linear(l) = &n.op else { continue };
        if !targets.iter().any(|t| l.module.ends_with(t)) {
            continue;
        }
        let (da, db) = &r.grads.lora[&i];
        for (suffix, grad) in [("lora_A", da), ("lora_B", db)] {
            let mut order: Vec<usize> = (0..grad.len()).collect();
            order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
            for &j in order.iter().take(per) {
                cases.push((format!("{}.{suffix}", l.module), j, grad[j]));
            }
        }
    }
    cases
}

/// Central differences with step `h` of `loss_of(Some((name, i, ±h)))` against each case's
/// analytic value: `|analytic − numeric| ≤ rel·|numeric| + abs`, each numeric value above
/// `min` so the check cannot pass on noise.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn check_cases(what: &str, cases: &[(String, usize, f32)], h: f32, rel: f64, abs: f64, min: f64, loss_of: impl Fn(Option<(&str, usize, f32)>) -> f64) {
    assert!(!cases.is_empty(), "{what}: nothing to check");
    for (name, i, analytic) in cases {
        let numeric = (loss_of(Some((name, *i, h))) - loss_of(Some((name, *i, -h)))) / (2.0 * f64::from(h));
        assert!(numeric.abs() > min, "{what} {name}[{i}]: gradient too small to check ({numeric:e})");
        let err = (f64::from(*analytic) - numeric).abs();
        assert!(err <= rel * numeric.abs() + abs, "{what} {name}[{i}]: analytic {analytic:e}, numeric {numeric:e}, error {err:e}");
    }
}

fn causal_lm_check(file: &str) {
    let base = Base::load(fixtures().join(file), LoadOptions::default()).unwrap();
    let feed = inputs("tiny-llama", &["input_ids", "attention_mask"]);
    let targets = ["q_proj", "v_proj"];
    let session = |tweak: Option<(&str, usize, f32)>| Session::with_delta(base.clone(), &lora_delta(&base, &targets, tweak), SessionConfig { threads: 1 }).unwrap();
    let s = session(None);
    let t = lora_trainables(s.graph());
    assert_eq!(t.lora.len(), 4, "q_proj and v_proj of 2 layers");
    let r = causal_lm::step(&s, &feed, &t, None).unwrap();
    // 3 rows of 11 tokens, the last row left-padded by 3: 10 + 10 + 7 predicted positions.
    assert_eq!(r.count, 27);
    assert!(r.loss.is_finite() && r.loss > 0.0);
    for (da, db) in r.grads.lora.values() {
        assert!(da.iter().chain(db).all(|v| v.is_finite()));
        assert!(da.iter().any(|v| v.abs() > 1e-4), "every adapted module, q_proj included (through Rotary), gets a gradient");
    }
    let cases = largest_lora_cases(s.graph(), &r, &targets, 2);
    assert_eq!(cases.len(), 16);
    // The loss in f64 from the logits (next_token_nll sums in f64), so the f32 rounding of the
    // returned loss (~2e-7 of ln 128) does not enter; what is left is the f32 forward's noise,
    // measured below 5e-7 absolute with h = 1e-2, and truncation O(h²·L''') ≤ 3e-4 relative
    // (measured). q_proj gradients are small here (~1e-3: the random model's attention is
    // nearly flat) but stand 1000× above that floor. A wrong rule (a sign or a swapped half in
    // Rotary, a padded position counted) is off by O(1) relative.
    check_cases(file, &cases, 1e-2, 2e-3, 1e-6, 3e-4, |tweak| {
        let s = session(tweak);
        let r = causal_lm::step(&s, &feed, &lora_trainables(s.graph()), None).unwrap();
        let ids = feed[0].1.to_i64_vec("ids").unwrap();
        let mask = feed[1].1.to_f32_vec();
        let (nll, n) = kilotune::train::backward::next_token_nll(&r.outputs, &ids, &mask, 3);
        nll / n as f64
    });
}

#[test]
fn causal_lm_lora_gradients_match_finite_differences_dynamo() {
    causal_lm_check("tiny-llama.dynamo.onnx");
}

#[test]
fn causal_lm_lora_gradients_match_finite_differences_legacy() {
    causal_lm_check("tiny-llama.legacy.onnx");
}

#[test]
fn causal_lm_ignores_what_sits_under_the_padding() {
    let base = Base::load(fixtures().join("tiny-llama.dynamo.onnx"), LoadOptions::default()).unwrap();
    let s = Session::with_delta(base.clone(), &lora_delta(&base, &["q_proj", "v_proj"], None), SessionConfig { threads: 1 }).unwrap();
    let t = lora_trainables(s.graph());
    let feed = inputs("tiny-llama", &["input_ids", "attention_mask"]);
    let a = causal_lm::step(&s, &feed, &t, None).unwrap();
    // Other tokens under the last row's three left pads: attention gives them probability
    // exactly 0 and the loss skips them, so loss and gradients keep every bit.
    let mut ids = feed[0].1.to_i64_vec("ids").unwrap();
    let mask = feed[1].1.to_i64_vec("mask").unwrap();
    let mut changed = 0;
    for (id, &m) in ids.iter_mut().zip(&mask) {
        if m == 0 {
            *id = (*id + 17) % 128;
            changed += 1;
        }
    }
    assert_eq!(changed, 3);
    let other = vec![("input_ids", Tensor::new(&[3, 11], ids).unwrap()), ("attention_mask", feed[1].1.clone())];
    let b = causal_lm::step(&s, &other, &t, None).unwrap();
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    assert_eq!(a.count, b.count);
    for (node, (da, db)) in &a.grads.lora {
        let (ea, eb) = &b.grads.lora[node];
        assert_eq!((da, db), (ea, eb), "node {node}");
    }
}

/// The tiny BERT's reference batch (3 rows, right padding), a LoRA on its value projections,
/// and finite differences of `loss(session, head)` for the value LoRA and the head.
fn pooled_check(file: &str, pooling: Pooling, outputs: usize, loss: impl Fn(&Session, &PooledHead, &Trainables) -> StepResult) {
    let base = Base::load(fixtures().join(file), LoadOptions::default()).unwrap();
    let targets = [".value"];
    let session = |tweak: Option<(&str, usize, f32)>| Session::with_delta(base.clone(), &lora_delta(&base, &targets, tweak), SessionConfig { threads: 1 }).unwrap();
    let head = PooledHead { pooling, outputs, hidden: 32, weight: noise(outputs * 32, 7, 0.5), bias: noise(outputs, 3, 0.2) };
    let s = session(None);
    let r = loss(&s, &head, &lora_trainables(s.graph()));
    assert!(r.loss.is_finite() && r.loss > 0.0);
    // f32 forward, h = 1e-2: truncation O(h²) ≈ 1e-4 relative (measured ≤ 1.2e-3 for the
    // value LoRA, ≤ 2e-5 for the head, which the loss depends on almost linearly), rounding of
    // the f32 loss (~1e-7) / 2h ≈ 1e-5 absolute; the relative bound is gradients.rs's for the
    // same model.
    let what = format!("{file} {pooling:?}");
    let cases = largest_lora_cases(s.graph(), &r, &targets, 2);
    check_cases(&what, &cases, 1e-2, 2e-3, 2e-5, 1e-2, |tweak| {
        let s = session(tweak);
        f64::from(loss(&s, &head, &lora_trainables(s.graph())).loss)
    });
    // The head's own parameters: its largest weight gradients and every bias.
    let mut head_cases: Vec<(String, usize, f32)> = (0..outputs).map(|i| ("bias".to_owned(), i, r.head_bias[i])).collect();
    let mut order: Vec<usize> = (0..r.head_weight.len()).collect();
    order.sort_by(|&a, &b| r.head_weight[b].abs().total_cmp(&r.head_weight[a].abs()));
    head_cases.extend(order.iter().take(4).map(|&i| ("weight".to_owned(), i, r.head_weight[i])));
    check_cases(&what, &head_cases, 1e-2, 2e-3, 2e-5, 1e-2, |tweak| {
        let (name, i, h) = tweak.expect("always tweaked");
        let mut hd = head.clone();
        let v = if name == "weight" { &mut hd.weight } else { &mut hd.bias };
        v[i] += h;
        f64::from(loss(&s, &hd, &lora_trainables(s.graph())).loss)
    });
}

fn bert_inputs() -> Vec<(&'static str, Tensor)> {
    inputs("tiny-bert", &["input_ids", "attention_mask", "token_type_ids"])
}

fn regression_check(file: &str, pooling: Pooling) {
    let feed = bert_inputs();
    let targets = noise(3 * 2, 11, 1.0);
    pooled_check(file, pooling, 2, |s, head, t| {
        let r = regress::step(s, &feed, &targets, head, t, None).unwrap();
        assert_eq!((r.outputs.len(), r.count), (6, 6), "3 rows × 2 outputs");
        r
    });
}

#[test]
fn regression_gradients_match_finite_differences_mean_pooling() {
    regression_check("tiny-bert.dynamo.onnx", Pooling::Mean);
    regression_check("tiny-bert.legacy.onnx", Pooling::Mean);
}

#[test]
fn regression_gradients_match_finite_differences_cls_pooling() {
    regression_check("tiny-bert.dynamo.onnx", Pooling::Cls);
    regression_check("tiny-bert.legacy.onnx", Pooling::Cls);
}

#[test]
fn cls_classification_gradients_match_finite_differences() {
    let feed = bert_inputs();
    for file in ["tiny-bert.dynamo.onnx", "tiny-bert.legacy.onnx"] {
        pooled_check(file, Pooling::Cls, 3, |s, head, t| classify::step(s, &feed, &[2, 0, 1], head, t, None).unwrap());
    }
}

#[test]
fn cls_pooling_reads_only_the_first_position() {
    // CLS pooling is BERT's first token: the head's outputs are W·hidden[b, 0] + bias, exactly
    // (the same f32 sums in the same order).
    let base = Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions::default()).unwrap();
    let s = Session::new(base, SessionConfig { threads: 1 }).unwrap();
    let feed = bert_inputs();
    let hidden = s.run(&feed).unwrap().0.remove(0).1;
    let head = PooledHead { pooling: Pooling::Cls, outputs: 2, hidden: 32, weight: noise(64, 5, 0.5), bias: vec![0.0; 2] };
    let cls = head.forward(&hidden, None, 3).unwrap();
    let h = hidden.to_f32_vec();
    let seq = hidden.shape()[1];
    for b in 0..3 {
        let first = &h[b * seq * 32..b * seq * 32 + 32];
        let want: Vec<f32> = (0..2).map(|c| first.iter().zip(&head.weight[c * 32..(c + 1) * 32]).map(|(x, w)| x * w).sum()).collect();
        assert_eq!(&cls[b * 2..b * 2 + 2], &want[..], "row {b}");
    }
}
