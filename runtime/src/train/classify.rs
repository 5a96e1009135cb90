//! Sequence classification on top of an encoder: the hidden states pooled (mask-weighted mean
//! or the first token), a linear head, cross-entropy; and the gradients of that loss with
//! respect to the head and to every trainable of the base (through [`super::tape`]).

use super::backward::cross_entropy;
use super::head::{batch_rows, pooled_step, PooledHead, StepResult};
use super::tape::Trainables;
use crate::error::{Error, Result};
use crate::session::Session;
use crate::tensor::Tensor;

/// Loss and gradients for a batch. `inputs` are the model's named inputs (`[batch, seq]`; mean
/// pooling needs `attention_mask` among them), `labels` one class per row, each below
/// `head.outputs`. With `checkpoint`, activations are recomputed piece by piece
/// ([`super::checkpoint`]).
pub fn step(session: &Session, inputs: &[(&str, Tensor)], labels: &[usize], head: &PooledHead, trainables: &Trainables, checkpoint: Option<&super::checkpoint::Pieces>) -> Result<StepResult> {
    let rows = batch_rows(inputs)?;
    if labels.len() != rows || labels.iter().any(|&l| l >= head.outputs) {
        return Err(Error::BadInput { name: "labels".into(), reason: format!("{} labels for {rows} rows, each must be < {} classes", labels.len(), head.outputs) });
    }
    pooled_step(session, inputs, head, trainables, checkpoint, |logits| {
        let (loss, dlogits) = cross_entropy(logits, labels);
        (loss, dlogits, labels.len())
    })
}
