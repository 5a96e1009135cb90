//! Regression on top of an encoder: the pooled hidden state, a linear head to `outputs` values,
//! and the mean squared error over rows and outputs; gradients as in [`super::classify`].

use super::backward::mse;
use super::head::{batch_rows, pooled_step, PooledHead, StepResult};
use super::tape::Trainables;
use crate::error::{Error, Result};
use crate::session::Session;
use crate::tensor::Tensor;

/// Loss and gradients for a batch. `inputs` are the model's named inputs (`[batch, seq]`; mean
/// pooling needs `attention_mask` among them), `targets` [rows × head.outputs], finite.
pub fn step(session: &Session, inputs: &[(&str, Tensor)], targets: &[f32], head: &PooledHead, trainables: &Trainables, checkpoint: Option<&super::checkpoint::Pieces>) -> Result<StepResult> {
    check_targets(targets, batch_rows(inputs)?, head.outputs)?;
    pooled_step(session, inputs, head, trainables, checkpoint, |pred| {
        let (loss, dpred) = mse(pred, targets);
        (loss, dpred, targets.len())
    })
}

/// Checks there are `rows × outputs` finite targets.
pub(crate) fn check_targets(targets: &[f32], rows: usize, outputs: usize) -> Result<()> {
    if targets.len() != rows * outputs {
        return Err(Error::BadInput { name: "targets".into(), reason: format!("{} values for {rows} rows of {outputs} outputs", targets.len()) });
    }
    if let Some(t) = targets.iter().find(|t| !t.is_finite()) {
        return Err(Error::BadInput { name: "targets".into(), reason: format!("{t} is not a finite number") });
    }
    Ok(())
}
