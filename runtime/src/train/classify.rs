//! Sequence classification on top of an encoder: mean pooling over the attention mask, a
//! linear head, cross-entropy; and the gradients of that loss with respect to the head and to
//! every trainable of the base (through [`super::tape`]).

use super::backward::{cross_entropy, mean_pool, mean_pool_backward};
use super::tape::{backward, Grads, Trainables};
use crate::error::{Error, Result};
use crate::session::Session;
use crate::tensor::Tensor;

/// A linear classification head over the pooled hidden state.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifierHead {
    /// Classes.
    pub classes: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Weight, [classes × hidden] (PyTorch `nn.Linear` layout).
    pub weight: Vec<f32>,
    /// Bias, [classes].
    pub bias: Vec<f32>,
}

impl ClassifierHead {
    /// logits[b][c] = Σ_h pooled[b][h]·W[c][h] + bias[c].
    pub fn logits(&self, pooled: &[f32]) -> Vec<f32> {
        let rows = pooled.len() / self.hidden.max(1);
        let mut out = Vec::with_capacity(rows * self.classes);
        for p in pooled.chunks_exact(self.hidden) {
            for c in 0..self.classes {
                let w = &self.weight[c * self.hidden..(c + 1) * self.hidden];
                out.push(p.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + self.bias[c]);
            }
        }
        out
    }
}

/// One forward and backward pass.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// [batch × classes].
    pub logits: Vec<f32>,
    /// Gradients of the base's trainables.
    pub grads: Grads,
    /// d loss / d head weight, [classes × hidden].
    pub head_weight: Vec<f32>,
    /// d loss / d head bias, [classes].
    pub head_bias: Vec<f32>,
}

/// Loss and gradients for a batch. `inputs` are the model's named inputs ([batch, seq]); the
/// attention mask (also used for pooling) must be among them as `attention_mask`.
pub fn step(session: &Session, inputs: &[(&str, Tensor)], labels: &[usize], head: &ClassifierHead, trainables: &Trainables) -> Result<StepResult> {
    let g = session.graph();
    let mask = inputs
        .iter()
        .find(|(n, _)| *n == "attention_mask")
        .map(|(_, t)| t.to_f32_vec())
        .ok_or_else(|| Error::BadInput { name: "attention_mask".into(), reason: "needed for pooling".into() })?;
    let batch = labels.len();
    if batch == 0 || mask.len() % batch != 0 || labels.iter().any(|&l| l >= head.classes) {
        return Err(Error::BadInput { name: "labels".into(), reason: format!("{batch} labels for this batch, each < {}", head.classes) });
    }
    let slots = session.run_keep(inputs)?;
    let out = *g.outputs.first().ok_or_else(|| Error::InvalidModel("no output".into()))?;
    let hidden_t = slots[out].as_ref().ok_or_else(|| Error::InvalidModel("output not computed".into()))?;
    let hidden = hidden_t.typed::<f32>("hidden state")?;
    if hidden_t.shape().last() != Some(&head.hidden) {
        return Err(Error::Config(format!("head expects {} features, the model gives {:?}", head.hidden, hidden_t.shape())));
    }
    let pooled = mean_pool(hidden, &mask, batch);
    let logits = head.logits(&pooled);
    let (loss, dlogits) = cross_entropy(&logits, labels);
    // Head gradients: dW = dlogitsᵀ·pooled, db = Σ dlogits, dpooled = dlogits·W.
    let (c, h) = (head.classes, head.hidden);
    let mut head_weight = vec![0f32; c * h];
    let mut head_bias = vec![0f32; c];
    let mut dpooled = vec![0f32; batch * h];
    for b in 0..batch {
        for k in 0..c {
            let d = dlogits[b * c + k];
            head_bias[k] += d;
            for j in 0..h {
                head_weight[k * h + j] += d * pooled[b * h + j];
                dpooled[b * h + j] += d * head.weight[k * h + j];
            }
        }
    }
    let dhidden = mean_pool_backward(&mask, batch, &dpooled);
    let grads = session.install(|| backward(g, &slots, (out, dhidden), trainables))?;
    Ok(StepResult { loss, logits, grads, head_weight, head_bias })
}
