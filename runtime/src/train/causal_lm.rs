//! Causal language modelling through the base's own LM head: the model's first output is the
//! logits `[batch, seq, vocab]`, position t is scored on the token at t + 1, and positions whose
//! attention mask (or the next one's) is 0 count for nothing. The reverse pass is seeded at the
//! logits, so the LM head itself stays frozen like every other base weight.

use super::backward::next_token_cross_entropy;
use super::head::{batch_rows, find_mask, StepResult};
use super::tape::Trainables;
use crate::error::{Error, Result};
use crate::session::Session;
use crate::tensor::Tensor;

/// The token ids and 0/1 mask weights of a batch (`[rows, seq]` each), and its rows. Without an
/// `attention_mask` input every position counts.
pub(crate) fn ids_and_mask(inputs: &[(&str, Tensor)]) -> Result<(Vec<i64>, Vec<f32>, usize)> {
    let rows = batch_rows(inputs)?;
    let ids_t = inputs.iter().find(|(n, _)| *n == "input_ids").map(|(_, t)| t).ok_or_else(|| Error::BadInput { name: "input_ids".into(), reason: "a causal LM predicts its next token".into() })?;
    let ids = ids_t.to_i64_vec("input_ids")?;
    let mask = find_mask(inputs).unwrap_or_else(|| vec![1.0; ids.len()]);
    if ids_t.rank() != 2 || mask.len() != ids.len() {
        return Err(Error::BadInput { name: "attention_mask".into(), reason: format!("input_ids {:?} and the mask ({} values) must both be [batch, seq]", ids_t.shape(), mask.len()) });
    }
    Ok((ids, mask, rows))
}

/// Checks `logits` is `[rows, seq, vocab]` for `ids` and every id a counted position predicts is
/// below `vocab`; returns `vocab`.
pub(crate) fn check_logits(logits: &Tensor, ids: &[i64], rows: usize) -> Result<usize> {
    let seq = ids.len() / rows.max(1);
    let vocab = match *logits.shape() {
        [b, s, v] if b == rows && s == seq && v > 0 => v,
        _ => return Err(Error::Config(format!("a causal LM needs logits [{rows}, {seq}, vocab] as the model's first output, not {:?}", logits.shape()))),
    };
    if let Some(id) = ids.iter().find(|&&i| usize::try_from(i).map_or(true, |i| i >= vocab)) {
        return Err(Error::BadInput { name: "input_ids".into(), reason: format!("token {id} is outside the model's {vocab} logits") });
    }
    Ok(vocab)
}

/// Loss and gradients for a batch of token sequences: `inputs` are the model's named inputs,
/// `input_ids` among them and `attention_mask` where the model takes one (left or right
/// padding both work). The loss is the mean next-token cross-entropy over counted positions.
pub fn step(session: &Session, inputs: &[(&str, Tensor)], trainables: &Trainables, checkpoint: Option<&super::checkpoint::Pieces>) -> Result<StepResult> {
    let g = session.graph();
    let (ids, mask, rows) = ids_and_mask(inputs)?;
    let out = *g.outputs.first().ok_or_else(|| Error::InvalidModel("no output".into()))?;
    let (grads, (loss, outputs, count), usage) = super::checkpoint::forward_backward(session, inputs, trainables, checkpoint, |slots| {
        let logits_t = slots[out].as_ref().ok_or_else(|| Error::InvalidModel("output not computed".into()))?;
        check_logits(logits_t, &ids, rows)?;
        let logits = logits_t.typed::<f32>("logits")?;
        let (loss, dlogits, count) = next_token_cross_entropy(logits, &ids, &mask, rows)
            .ok_or_else(|| Error::BadInput { name: "attention_mask".into(), reason: "no row has two consecutive tokens: nothing to predict".into() })?;
        Ok(super::checkpoint::LossSeed { seed: vec![(out, dlogits)], extra: (loss, logits.to_vec(), count) })
    })?;
    Ok(StepResult { loss, outputs, count, grads, head_weight: Vec::new(), head_bias: Vec::new(), usage })
}
