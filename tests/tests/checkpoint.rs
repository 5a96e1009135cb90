//! `TrainConfig::memory_budget`: a checkpointed step recomputes block activations during the
//! backward pass instead of keeping them, and must train exactly like a plain one: the same
//! deltas bit for bit, on every task and both exporters, with less activation memory held.

use kilotune::peft::{LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, LoadOptions, Tensor};
use kilotune_tests::fixtures;

fn rows(seq: usize, rows: usize, vocab: i64, left_pad: bool) -> Vec<(String, Tensor)> {
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in 0..rows {
        let pad = if r % 2 == 1 { 2 } else { 0 };
        for t in 0..seq {
            let live = if left_pad { t >= pad } else { t < seq - pad };
            ids.push(if live { (r as i64 * 37 + t as i64 * 11) % (vocab - 5) + 5 } else { 0 });
            mask.push(i64::from(live));
        }
    }
    vec![("input_ids".into(), Tensor::new(&[rows, seq], ids).unwrap()), ("attention_mask".into(), Tensor::new(&[rows, seq], mask).unwrap())]
}

/// Trains `steps` steps plainly and with a zero budget (every step checkpointed) and compares
/// the deltas' tensors bit for bit.
fn same_training(file: &str, method: PeftMethod, task: TaskHead, batch: impl Fn(usize) -> Batch) {
    let base = Base::load(fixtures().join(file), LoadOptions::default()).unwrap();
    let mut config = TrainConfig { seed: 3, threads: 2, ..Default::default() };
    config.optimizer.lr = 1e-2;
    let mut plain = Trainer::new(base.clone(), method.clone(), task.clone(), config.clone()).unwrap();
    let mut lean = Trainer::new(base, method, task, TrainConfig { memory_budget: Some(0), ..config }).unwrap();
    for s in 0..3 {
        let b = batch(s);
        let (a, c) = (plain.step(&b).unwrap(), lean.step(&b).unwrap());
        assert_eq!(a.loss.to_bits(), c.loss.to_bits(), "{file}: step {s} loss");
        let (u, v) = (plain.last_usage(), lean.last_usage());
        assert!(v.peak < u.peak, "{file}: checkpointed step held {} bytes, plain {}", v.peak, u.peak);
    }
    let (d1, d2) = (plain.delta(), lean.delta());
    assert_eq!(d1.tensors.len(), d2.tensors.len());
    for (x, y) in d1.tensors.iter().zip(&d2.tensors) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.to_f32().unwrap(), y.to_f32().unwrap(), "{file}: {} differs", x.name);
    }
}

#[test]
fn checkpointed_causal_lm_training_on_the_tiny_llama_is_bit_identical() {
    for file in ["tiny-llama.dynamo.onnx", "tiny-llama.legacy.onnx"] {
        let method = PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, target_modules: vec!["q_proj".into(), "v_proj".into()], ..Default::default() });
        same_training(file, method, TaskHead::CausalLm, |s| Batch::causal_lm(rows(9, 3 + s, 120, true)));
    }
}

#[test]
fn checkpointed_classification_on_the_tiny_bert_is_bit_identical() {
    for file in ["tiny-bert.dynamo.onnx", "tiny-bert.legacy.onnx"] {
        // LoRA dropout on: the recomputed pieces must draw the same masks.
        let method = PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, dropout: 0.3, ..Default::default() });
        let task = TaskHead::Classification { classes: 3, pooling: Pooling::Mean };
        same_training(file, method, task, |s| {
            let mut inputs = rows(7, 4, 90, false);
            inputs.push(("token_type_ids".into(), Tensor::new(&[4, 7], vec![0i64; 28]).unwrap()));
            Batch::classification(inputs, (0..4).map(|r| (r + s) % 3).collect())
        });
    }
}

/// A budget between the leanest step and a plain one: after the first (measuring) step, steps
/// recompute only their first pieces, hold more than the leanest step and less than a plain
/// one, and train exactly like a plain trainer.
#[test]
fn a_budget_between_the_leanest_and_a_plain_step_recomputes_only_some_pieces() {
    let base = Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions::default()).unwrap();
    let task = TaskHead::Classification { classes: 2, pooling: Pooling::Mean };
    let method = PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, ..Default::default() });
    let mut config = TrainConfig { seed: 5, threads: 2, ..Default::default() };
    config.optimizer.lr = 1e-2;
    let mut inputs = rows(8, 4, 90, false);
    inputs.push(("token_type_ids".into(), Tensor::new(&[4, 8], vec![0i64; 32]).unwrap()));
    let b = Batch::classification(inputs, vec![0, 1, 1, 0]);
    // What the leanest step holds and what a plain one keeps, for this batch.
    let mut probe = Trainer::new(base.clone(), method.clone(), task.clone(), TrainConfig { memory_budget: Some(0), ..config.clone() }).unwrap();
    probe.step(&b).unwrap();
    let lean = probe.last_usage();
    assert!(lean.peak < lean.full);
    let budget = (lean.peak + lean.full) / 2;
    let mut plain = Trainer::new(base.clone(), method.clone(), task.clone(), config.clone()).unwrap();
    let mut mid = Trainer::new(base, method, task, TrainConfig { memory_budget: Some(budget), ..config }).unwrap();
    for s in 0..3 {
        let (x, y) = (plain.step(&b).unwrap(), mid.step(&b).unwrap());
        assert_eq!(x.loss.to_bits(), y.loss.to_bits(), "step {s} loss");
        let u = mid.last_usage();
        if s > 0 {
            assert!(lean.peak < u.peak && u.peak < lean.full, "step {s} held {} bytes: not between {} and {}", u.peak, lean.peak, lean.full);
        }
    }
    for (x, y) in plain.delta().tensors.iter().zip(&mid.delta().tensors) {
        assert_eq!(x.to_f32().unwrap(), y.to_f32().unwrap(), "{} differs", x.name);
    }
}

#[test]
fn a_budget_the_batch_fits_in_trains_without_checkpointing() {
    let base = Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions::default()).unwrap();
    let task = TaskHead::Classification { classes: 2, pooling: Pooling::Mean };
    let config = TrainConfig { threads: 1, memory_budget: Some(1 << 30), ..Default::default() };
    let mut t = Trainer::new(base, PeftMethod::Lora(LoraConfig::default()), task, config).unwrap();
    let mut inputs = rows(6, 2, 90, false);
    inputs.push(("token_type_ids".into(), Tensor::new(&[2, 6], vec![0i64; 12]).unwrap()));
    let b = Batch::classification(inputs, vec![0, 1]);
    t.step(&b).unwrap();
    // The first step with a budget checkpoints to measure; the second fits and does not.
    let first = t.last_usage();
    assert!(first.peak < first.full);
    t.step(&b).unwrap();
    let second = t.last_usage();
    assert_eq!(second.peak, second.full);
}

#[test]
fn lora_dropout_changes_training_repeatably_and_never_touches_evaluation() {
    let base = Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions::default()).unwrap();
    let task = TaskHead::Classification { classes: 2, pooling: Pooling::Mean };
    let method = |p: f32| PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, dropout: p, ..Default::default() });
    let mut config = TrainConfig { seed: 9, threads: 1, ..Default::default() };
    config.optimizer.lr = 1e-2;
    let mut inputs = rows(6, 4, 90, false);
    inputs.push(("token_type_ids".into(), Tensor::new(&[4, 6], vec![0i64; 24]).unwrap()));
    let b = Batch::classification(inputs, vec![0, 1, 1, 0]);
    let train = |p: f32| {
        let mut t = Trainer::new(base.clone(), method(p), task.clone(), config.clone()).unwrap();
        for _ in 0..3 {
            t.step(&b).unwrap();
        }
        // Evaluation runs without dropout: twice the same, bit for bit.
        let (e1, e2) = (t.evaluate(std::slice::from_ref(&b)).unwrap(), t.evaluate(std::slice::from_ref(&b)).unwrap());
        assert_eq!(e1.loss.to_bits(), e2.loss.to_bits());
        t.delta().tensors.iter().map(|x| x.to_f32().unwrap()).collect::<Vec<_>>()
    };
    let (with, again, without) = (train(0.5), train(0.5), train(0.0));
    assert_eq!(with, again, "the same seed draws the same masks");
    assert_ne!(with, without, "dropout changes what is learned");
}
