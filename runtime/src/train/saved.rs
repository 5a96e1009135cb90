//! Which forward values a reverse pass reads, so the forward pass keeps only those.
//!
//! Keeping every intermediate of a BERT block costs about twice what its backward needs: a
//! frozen `Linear` needs no input to send its gradient on (only its weight), GELU's output is
//! never read again, and reshapes read nothing. The rules here mirror what [`super::tape`]
//! reads for each op; an op without a rule keeps all of its inputs and outputs, so a new
//! backward rule is correct before it is lean.

use super::tape::{reaching, Trainables};
use crate::graph::Graph;
use crate::ops::Op;

/// `saved[v]`: value `v` must outlive the forward pass. Graph outputs are always saved (the
/// loss reads them).
pub fn saved_values(g: &Graph, t: &Trainables) -> Vec<bool> {
    let reach = reaching(g, t);
    let mut saved = vec![false; g.values.len()];
    for &o in &g.outputs {
        saved[o] = true;
    }
    for (i, n) in g.nodes.iter().enumerate() {
        // A node's backward runs only if its output leads to a trainable.
        if !n.outputs.iter().any(|&o| reach[o]) {
            continue;
        }
        let mut keep = |k: usize| {
            if let Some(Some(v)) = n.inputs.get(k) {
                saved[*v] = true;
            }
        };
        match &n.op {
            // The frozen path needs only the weight; the LoRA path, a patch and a trained
            // weight read x.
            Op::Linear(l) => {
                if l.lora.is_some() || l.patch.is_some() || t.linear_weight.contains(&i) {
                    keep(0);
                }
            }
            Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::Gelu { .. } | Op::Silu => keep(0),
            Op::AddLayerNorm { .. } => {
                keep(0);
                keep(1);
            }
            Op::Attention(_) => (0..4).for_each(&mut keep),
            // A soft prompt's gradient needs only the ids' shape.
            Op::Embedding { .. } => keep(1),
            Op::Reshape { .. } | Op::Squeeze(_) | Op::Unsqueeze(_) | Op::Flatten(_) | Op::Identity => {}
            _ => {
                (0..n.inputs.len()).for_each(&mut keep);
                for &o in &n.outputs {
                    saved[o] = true;
                }
            }
        }
    }
    saved
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::base::{Base, LoadOptions};
    use crate::delta::{Delta, NamedTensor, TrainingSummary};
    use crate::peft::{LoraConfig, PeftMethod};
    use crate::session::{Session, SessionConfig};
    use crate::tensor::Tensor;
    use crate::train::rng::Rng;
    use crate::train::tape::backward;

    pub(crate) fn lora_session(base: &Arc<Base>) -> Session {
        let mut rng = Rng::new(7);
        let mut tensors = Vec::new();
        for l in base.linears() {
            if l.module.ends_with("query") || l.module.ends_with("value") {
                tensors.push(NamedTensor::f32(format!("{}.lora_A", l.module), &[2, l.k as u32], rng.uniform_vec(2 * l.k, 0.5)));
                tensors.push(NamedTensor::f32(format!("{}.lora_B", l.module), &[l.n as u32, 2], rng.uniform_vec(2 * l.n, 0.5)));
            }
        }
        let method = PeftMethod::Lora(LoraConfig { r: 2, alpha: 4.0, ..Default::default() });
        let delta = Delta { base_fingerprint: base.fingerprint(), method, head: None, tensors, summary: TrainingSummary::default() };
        Session::with_delta(base.clone(), &delta, SessionConfig { threads: 1 }).expect("delta applies")
    }

    #[test]
    fn saving_only_what_the_backward_reads_gives_the_same_gradients_from_fewer_values() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-bert.dynamo.onnx");
        let base = Base::load(path, LoadOptions::default()).expect("fixture loads");
        let s = lora_session(&base);
        let g = s.graph();
        let mut t = Trainables::default();
        for (i, n) in g.nodes.iter().enumerate() {
            if let Op::Linear(l) = &n.op {
                if l.lora.is_some() {
                    t.lora.insert(i);
                }
                if l.module.ends_with("intermediate.dense") {
                    t.linear_bias.insert(i);
                }
            }
        }
        let (b, sq) = (2, 5);
        let ids: Vec<i64> = (0..(b * sq) as i64).map(|i| (i * 31 + 3) % 90 + 5).collect();
        let inputs = [
            ("input_ids", Tensor::new(&[b, sq], ids).expect("shape")),
            ("attention_mask", Tensor::new(&[b, sq], vec![1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0]).expect("shape")),
            ("token_type_ids", Tensor::new(&[b, sq], vec![0i64; b * sq]).expect("shape")),
        ];
        let saved = saved_values(g, &t);
        let all = s.run_keep(&inputs).expect("forward");
        let lean = s.run_saving(&inputs, &saved).expect("forward");
        let kept = |slots: &[Option<Tensor>]| slots.iter().filter(|v| v.is_some()).count();
        assert!(kept(&lean) * 2 < kept(&all), "lean keeps {} of {} values", kept(&lean), kept(&all));
        let out = g.outputs[0];
        let seed: Vec<f32> = (0..all[out].as_ref().expect("output").len()).map(|i| ((i * 17 % 13) as f32 - 6.0) / 6.0).collect();
        let full = backward(g, &all, (out, seed.clone()), &t).expect("backward on every value");
        let part = backward(g, &lean, (out, seed), &t).expect("backward on the saved values");
        assert!(!full.lora.is_empty() && !full.linear_bias.is_empty());
        assert_eq!(full.lora, part.lora);
        assert_eq!(full.linear_bias, part.linear_bias);
    }
}
