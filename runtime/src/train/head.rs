//! The pooled linear head that classification and regression put on top of an encoder, and
//! the forward/backward plumbing the tasks share: run the base keeping activations, pool,
//! apply the head, take the task's loss, and send the gradient back through the base.

use super::backward::{cls_pool, cls_pool_backward, mean_pool, mean_pool_backward};
use super::checkpoint::{forward_backward, LossSeed, Usage};
use super::tape::{Grads, Trainables};
use crate::error::{Error, Result};
use crate::peft::Pooling;
use crate::session::Session;
use crate::tensor::Tensor;

/// How a regression head pools. The delta format (version 1) stores no pooling for a
/// regression head, so a trainer and a session reading its delta must agree on one: the
/// mask-weighted mean, which works for encoders with or without a `[CLS]` token.
pub const REGRESSION_POOLING: Pooling = Pooling::Mean;

/// A linear head over the pooled hidden state: `out[b] = W·pool(hidden[b]) + bias`, with
/// `outputs` classes (classification) or values (regression).
#[derive(Clone, Debug, PartialEq)]
pub struct PooledHead {
    /// How each row's hidden states become one vector.
    pub pooling: Pooling,
    /// Outputs per row: classes or regression targets.
    pub outputs: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Weight, `[outputs × hidden]` (PyTorch `nn.Linear` layout).
    pub weight: Vec<f32>,
    /// Bias, `[outputs]`.
    pub bias: Vec<f32>,
}

/// Gradients of a [`PooledHead`]'s linear map.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadGrads {
    /// d loss / d weight, `[outputs × hidden]`.
    pub weight: Vec<f32>,
    /// d loss / d bias, `[outputs]`.
    pub bias: Vec<f32>,
    /// d loss / d pooled, `[rows × hidden]`.
    pub pooled: Vec<f32>,
}

impl PooledHead {
    /// `out[b][c] = Σ_h pooled[b][h]·W[c][h] + bias[c]`.
    pub fn linear(&self, pooled: &[f32]) -> Vec<f32> {
        let rows = pooled.len() / self.hidden.max(1);
        let mut out = Vec::with_capacity(rows * self.outputs);
        for p in pooled.chunks_exact(self.hidden) {
            for c in 0..self.outputs {
                let w = &self.weight[c * self.hidden..(c + 1) * self.hidden];
                out.push(p.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + self.bias[c]);
            }
        }
        out
    }

    /// Backward of [`PooledHead::linear`]: `dW = doutᵀ·pooled`, `db = Σ_rows dout`,
    /// `dpooled = dout·W`.
    pub fn linear_backward(&self, pooled: &[f32], dout: &[f32]) -> HeadGrads {
        let (c, h) = (self.outputs, self.hidden);
        let rows = dout.len() / c.max(1);
        let mut g = HeadGrads { weight: vec![0f32; c * h], bias: vec![0f32; c], pooled: vec![0f32; rows * h] };
        for b in 0..rows {
            for k in 0..c {
                let d = dout[b * c + k];
                g.bias[k] += d;
                for j in 0..h {
                    g.weight[k * h + j] += d * pooled[b * h + j];
                    g.pooled[b * h + j] += d * self.weight[k * h + j];
                }
            }
        }
        g
    }

    /// Pools `hidden` (`[rows, seq, hidden]`) as the head's [`Pooling`] says. Mean pooling needs
    /// the attention mask (`[rows, seq]`); the first-token pooling ignores it.
    pub fn pool(&self, hidden: &[f32], mask: Option<&[f32]>, rows: usize) -> Result<Vec<f32>> {
        let per_pos = rows * self.hidden;
        if per_pos == 0 || hidden.is_empty() || !hidden.len().is_multiple_of(per_pos) {
            return Err(Error::Config(format!("{} hidden values are not [{rows}, seq, {}]", hidden.len(), self.hidden)));
        }
        let seq = hidden.len() / per_pos;
        match self.pooling {
            Pooling::Mean => {
                let mask = mask.ok_or_else(mask_needed)?;
                if mask.len() != rows * seq {
                    return Err(Error::BadInput { name: "attention_mask".into(), reason: format!("{} values for [{rows}, {seq}] hidden states", mask.len()) });
                }
                Ok(mean_pool(hidden, mask, rows))
            }
            Pooling::Cls => Ok(cls_pool(hidden, rows, seq)),
        }
    }

    /// The head's outputs, `[rows × outputs]`, from the base's hidden states.
    pub fn forward(&self, hidden: &Tensor, mask: Option<&[f32]>, rows: usize) -> Result<Vec<f32>> {
        self.check_hidden(hidden, rows)?;
        Ok(self.linear(&self.pool(hidden.typed::<f32>("hidden state")?, mask, rows)?))
    }

    /// Checks `hidden` is [rows, seq, self.hidden].
    fn check_hidden(&self, hidden: &Tensor, rows: usize) -> Result<()> {
        match *hidden.shape() {
            [b, s, h] if b == rows && s > 0 && h == self.hidden => Ok(()),
            _ => Err(Error::Config(format!("the head expects hidden states [{rows}, seq, {}], the model gives {:?}", self.hidden, hidden.shape()))),
        }
    }
}

fn mask_needed() -> Error {
    Error::BadInput { name: "attention_mask".into(), reason: "needed for mean pooling".into() }
}

/// The `attention_mask` among `inputs`, as f32 0/1 weights.
pub(crate) fn find_mask(inputs: &[(&str, Tensor)]) -> Option<Vec<f32>> {
    inputs.iter().find(|(n, _)| *n == "attention_mask").map(|(_, t)| t.to_f32_vec())
}

/// The rows of a batch: the first dim of its inputs, which must all agree.
pub(crate) fn batch_rows(inputs: &[(&str, Tensor)]) -> Result<usize> {
    let mut rows = None;
    for (name, t) in inputs {
        let r = *t.shape().first().ok_or_else(|| Error::BadInput { name: (*name).into(), reason: "a scalar; expected [batch, seq]".into() })?;
        if rows.is_some_and(|x| x != r) {
            return Err(Error::BadInput { name: (*name).into(), reason: format!("{r} rows, another input has {}", rows.unwrap_or(0)) });
        }
        rows = Some(r);
    }
    rows.filter(|&r| r > 0).ok_or_else(|| Error::BadInput { name: "batch".into(), reason: "no rows".into() })
}

/// One forward and backward pass of a task.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// The task's loss: mean cross-entropy over rows (classification) or over predicted tokens
    /// (causal LM), or mean squared error over rows and outputs (regression).
    pub loss: f32,
    /// The head's outputs: class logits `[rows × classes]`, predictions `[rows × outputs]`, or the
    /// LM's logits `[rows × seq × vocab]`.
    pub outputs: Vec<f32>,
    /// What the loss averages over: rows (classification), predicted tokens (causal LM) or
    /// rows × outputs (regression).
    pub count: usize,
    /// Gradients of the base's trainables.
    pub grads: Grads,
    /// d loss / d head weight, `[outputs × hidden]`; empty without a head (causal LM).
    pub head_weight: Vec<f32>,
    /// d loss / d head bias, `[outputs]`; empty without a head.
    pub head_bias: Vec<f32>,
    /// The step's activation memory.
    pub usage: Usage,
}

/// Runs `inputs` keeping activations, applies `head`, takes `loss` of its outputs (which
/// returns the loss, d loss / d outputs and the count it averages over), and differentiates
/// back through the head, the pooling and the base.
pub(crate) fn pooled_step(
    session: &Session,
    inputs: &[(&str, Tensor)],
    head: &PooledHead,
    trainables: &Trainables,
    checkpoint: Option<&super::checkpoint::Pieces>,
    loss: impl FnOnce(&[f32]) -> (f32, Vec<f32>, usize),
) -> Result<StepResult> {
    let g = session.graph();
    let rows = batch_rows(inputs)?;
    let mask = find_mask(inputs);
    let out = *g.outputs.first().ok_or_else(|| Error::InvalidModel("no output".into()))?;
    let (grads, (loss, outputs, count, hg), usage) = forward_backward(session, inputs, trainables, checkpoint, |slots| {
        let hidden_t = slots[out].as_ref().ok_or_else(|| Error::InvalidModel("output not computed".into()))?;
        head.check_hidden(hidden_t, rows)?;
        let hidden = hidden_t.typed::<f32>("hidden state")?;
        let seq = hidden_t.shape()[1];
        let pooled = head.pool(hidden, mask.as_deref(), rows)?;
        let outputs = head.linear(&pooled);
        let (loss, dout, count) = loss(&outputs);
        let hg = head.linear_backward(&pooled, &dout);
        let dhidden = match head.pooling {
            Pooling::Mean => mean_pool_backward(mask.as_deref().ok_or_else(mask_needed)?, rows, &hg.pooled),
            Pooling::Cls => cls_pool_backward(&hg.pooled, rows, seq),
        };
        Ok(LossSeed { seed: vec![(out, dhidden)], extra: (loss, outputs, count, hg) })
    })?;
    Ok(StepResult { loss, outputs, count, grads, head_weight: hg.weight, head_bias: hg.bias, usage })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backward::gradcheck::{check, dot, Rng};

    #[test]
    fn head_gradients_match_finite_differences() {
        let (rows, c, h) = (3, 2, 5);
        let mut rng = Rng::new(31);
        let head = PooledHead { pooling: Pooling::Mean, outputs: c, hidden: h, weight: rng.f32s(c * h, -1.0, 1.0), bias: rng.f32s(c, -1.0, 1.0) };
        let pooled = rng.f32s(rows * h, -1.0, 1.0);
        let dout = rng.f32s(rows * c, -1.0, 1.0);
        let g = head.linear_backward(&pooled, &dout);
        // Linear in each argument: no truncation error; f32 rounding of O(1) outputs over 2h.
        check("dpooled", &pooled, &g.pooled, 0.25, 1e-5, |p| dot(&dout, &head.linear(p)));
        check("dweight", &head.weight, &g.weight, 0.25, 1e-5, |w| dot(&dout, &PooledHead { weight: w.to_vec(), ..head.clone() }.linear(&pooled)));
        check("dbias", &head.bias, &g.bias, 0.25, 1e-5, |b| dot(&dout, &PooledHead { bias: b.to_vec(), ..head.clone() }.linear(&pooled)));
    }

    #[test]
    fn pooling_follows_the_head_and_mean_needs_a_mask() {
        let head = PooledHead { pooling: Pooling::Cls, outputs: 1, hidden: 2, weight: vec![1.0, 0.0], bias: vec![0.0] };
        // [1 row, 2 positions, 2 features]: CLS takes position 0.
        let hidden = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(head.pool(&hidden, None, 1).unwrap(), [1.0, 2.0]);
        let mean = PooledHead { pooling: Pooling::Mean, ..head };
        assert_eq!(mean.pool(&hidden, Some(&[1.0, 1.0]), 1).unwrap(), [2.0, 3.0]);
        assert!(matches!(mean.pool(&hidden, None, 1), Err(Error::BadInput { .. })));
    }
}
