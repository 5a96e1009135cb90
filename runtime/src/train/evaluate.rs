//! Running a trained delta's task: its head's outputs for a batch and an [`Evaluation`] in the
//! task's own terms. The [`super::trainer::Trainer`] and a [`TaskSession`] built from a saved
//! delta go through the same functions here, so a delta evaluates to the same numbers after
//! a save and load as it did in training.

use std::sync::Arc;

use super::backward::{cross_entropy, mse, next_token_nll};
use super::batch::{Batch, Targets};
use super::causal_lm::{check_logits, ids_and_mask};
use super::head::{batch_rows, find_mask, PooledHead, REGRESSION_POOLING};
use super::regress::check_targets;
use crate::base::Base;
use crate::delta::Delta;
use crate::error::{Error, Result};
use crate::peft::apply::HEAD_PREFIX;
use crate::peft::TaskHead;
use crate::session::{Session, SessionConfig};

/// How a delta does on some batches, in its task's terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// The loss, averaged as in training: cross-entropy per row (classification) or per
    /// predicted token (causal LM), squared error per value (regression).
    pub loss: f32,
    /// Rows seen.
    pub rows: usize,
    /// Classification: the fraction of rows whose highest logit is their label.
    pub accuracy: Option<f32>,
    /// Causal or masked LM: `exp(loss)`, the perplexity over the predicted tokens.
    pub perplexity: Option<f32>,
    /// Causal LM: the positions predicted (those whose token and next token are unmasked);
    /// masked LM: the masked positions.
    pub tokens: Option<usize>,
    /// Regression: the mean squared error over rows and outputs (the loss itself).
    pub mse: Option<f32>,
}

/// A task's name for messages.
fn task_name(task: &TaskHead) -> &'static str {
    match task {
        TaskHead::Classification { .. } => "classification",
        TaskHead::Regression { .. } => "regression",
        TaskHead::CausalLm => "causal-LM",
        TaskHead::MaskedLm => "masked-LM",
    }
}

fn wrong_batch(task: &TaskHead, batch: &Batch) -> Error {
    let kind = match batch.targets {
        Targets::Classes(_) => "classification",
        Targets::Values(_) => "regression",
        Targets::NextTokens => "causal-LM",
        Targets::Masked(_) => "masked-LM",
    };
    Error::BadInput { name: "batch".into(), reason: format!("a {kind} batch for a {} head", task_name(task)) }
}

/// The head a task needs, or an error naming the task.
fn need_head<'a>(task: &TaskHead, head: Option<&'a PooledHead>) -> Result<&'a PooledHead> {
    head.ok_or_else(|| Error::Config(format!("a {} task needs a head", task_name(task))))
}

/// What the task's head computes for `batch`: class logits `[rows × classes]`, predictions
/// `[rows × outputs]`, or the LM's logits `[rows × seq × vocab]`.
pub(crate) fn task_outputs(session: &Session, task: &TaskHead, head: Option<&PooledHead>, batch: &Batch) -> Result<Vec<f32>> {
    let named = batch.named();
    let rows = batch_rows(&named)?;
    let out = session.run(&named)?;
    let first = out.0.into_iter().next().map(|(_, t)| t).ok_or_else(|| Error::InvalidModel("no output".into()))?;
    match task {
        TaskHead::MaskedLm => Err(Error::Config("a masked-LM delta (a MAD-X language adapter) scores masked tokens; it has no per-row outputs: evaluate it, or use it under a task adapter".into())),
        TaskHead::CausalLm => {
            let (ids, _, _) = ids_and_mask(&named)?;
            check_logits(&first, &ids, rows)?;
            Ok(first.typed::<f32>("logits")?.to_vec())
        }
        _ => need_head(task, head)?.forward(&first, find_mask(&named).as_deref(), rows),
    }
}

/// Sums over batches, turned into an [`Evaluation`] at the end.
#[derive(Default)]
struct Totals {
    rows: usize,
    /// Σ loss × count.
    loss: f64,
    /// What the loss averages over.
    count: usize,
    right: usize,
}

/// Evaluates `batches` with the task's head on `session`, without training.
pub(crate) fn evaluate_task(session: &Session, task: &TaskHead, head: Option<&PooledHead>, mlm_bias: Option<&[f32]>, batches: &[Batch]) -> Result<Evaluation> {
    let mut t = Totals::default();
    for b in batches {
        let rows = batch_rows(&b.named())?;
        match (task, &b.targets) {
            (TaskHead::Classification { classes, .. }, Targets::Classes(labels)) => {
                let c = *classes as usize;
                if labels.len() != rows || labels.iter().any(|&l| l >= c) {
                    return Err(Error::BadInput { name: "labels".into(), reason: format!("{} labels for {rows} rows, each must be < {c} classes", labels.len()) });
                }
                let logits = task_outputs(session, task, head, b)?;
                t.loss += f64::from(cross_entropy(&logits, labels).0) * rows as f64;
                t.count += rows;
                for (row, &label) in logits.chunks_exact(c).zip(labels) {
                    // The first maximum on ties, as argmax does.
                    let best = row.iter().enumerate().fold(0, |bi, (i, &v)| if v > row[bi] { i } else { bi });
                    t.right += usize::from(best == label);
                }
            }
            (TaskHead::Regression { outputs }, Targets::Values(targets)) => {
                check_targets(targets, rows, *outputs as usize)?;
                let pred = task_outputs(session, task, head, b)?;
                t.loss += f64::from(mse(&pred, targets).0) * targets.len() as f64;
                t.count += targets.len();
            }
            (TaskHead::CausalLm, Targets::NextTokens) => {
                let named = b.named();
                let (ids, mask, _) = ids_and_mask(&named)?;
                let logits = task_outputs(session, task, head, b)?;
                let (nll, n) = next_token_nll(&logits, &ids, &mask, rows);
                t.loss += nll;
                t.count += n;
            }
            (TaskHead::MaskedLm, Targets::Masked(labels)) => {
                let bias = mlm_bias.ok_or_else(|| Error::Config(format!("a masked-LM task needs the `{}` tensor", crate::peft::madx::MLM_BIAS)))?;
                let (loss, n) = super::mlm::evaluate(session, &b.named(), labels, bias)?;
                t.loss += f64::from(loss) * n as f64;
                t.count += n;
            }
            _ => return Err(wrong_batch(task, b)),
        }
        t.rows += rows;
    }
    if t.count == 0 {
        return Err(Error::BadInput { name: "evaluation".into(), reason: "nothing to score (no rows, or no token with a next one)".into() });
    }
    let loss = (t.loss / t.count as f64) as f32;
    let mut e = Evaluation { loss, rows: t.rows, accuracy: None, perplexity: None, tokens: None, mse: None };
    match task {
        TaskHead::Classification { .. } => e.accuracy = Some(t.right as f32 / t.rows as f32),
        TaskHead::Regression { .. } => e.mse = Some(loss),
        TaskHead::CausalLm | TaskHead::MaskedLm => {
            e.perplexity = Some((t.loss / t.count as f64).exp() as f32);
            e.tokens = Some(t.count);
        }
    }
    Ok(e)
}

/// A base running a user's delta together with the delta's task head: what an app runs to
/// use (or score) a personalized model. It computes exactly what the [`super::trainer::Trainer`]
/// that made the delta computed.
///
/// ```no_run
/// use kilotune::train::evaluate::TaskSession;
/// use kilotune::{delta, Base, LoadOptions, SessionConfig};
/// let base = Base::load("model.onnx", LoadOptions::default())?;
/// let user = delta::load("user.ktd", Some(&base.fingerprint()), &Default::default())?;
/// let task = TaskSession::new(base, &user, SessionConfig { threads: 2 })?;
/// # let batches = Vec::new();
/// let report = task.evaluate(&batches)?;
/// # Ok::<(), kilotune::Error>(())
/// ```
pub struct TaskSession {
    session: Session,
    task: TaskHead,
    head: Option<PooledHead>,
    /// A masked-LM delta's output bias.
    mlm_bias: Option<Vec<f32>>,
}

impl TaskSession {
    /// A session for `delta` on `base` (the delta's fingerprint is checked) with its task
    /// head. Classification and regression heads read `head.weight` `[outputs × hidden]` and
    /// `head.bias` `[outputs]` from the delta; a causal-LM delta has no head tensors.
    pub fn new(base: Arc<Base>, delta: &Delta, config: SessionConfig) -> Result<TaskSession> {
        let task = delta.head.clone().ok_or_else(|| Error::Config("the delta has no task head".into()))?;
        task.validate()?;
        let head = match task {
            TaskHead::Classification { classes, pooling } => Some(head_from_delta(delta, classes as usize, pooling)?),
            TaskHead::Regression { outputs } => Some(head_from_delta(delta, outputs as usize, REGRESSION_POOLING)?),
            TaskHead::CausalLm => {
                if let Some(t) = delta.tensors.iter().find(|t| t.name.starts_with(HEAD_PREFIX)) {
                    return Err(Error::Config(format!("a causal-LM delta uses the model's own LM head, but holds `{}`", t.name)));
                }
                None
            }
            TaskHead::MaskedLm => None,
        };
        let mlm_bias = match task {
            TaskHead::MaskedLm => {
                let name = crate::peft::madx::MLM_BIAS;
                Some(delta.tensor(name).ok_or_else(|| Error::Config(format!("a masked-LM delta needs `{name}`")))?.to_f32()?)
            }
            _ => None,
        };
        Ok(TaskSession { session: Session::with_delta(base, delta, config)?, task, head, mlm_bias })
    }

    /// Runs the heavy ops on another backend from now on: `vulkan` (cargo feature) runs the
    /// ops its shaders cover, the rest stays on the CPU; `cpu` runs everything. `ort` and
    /// `tract` run whole graphs and have no task heads here ([`Error::Config`]).
    pub fn on_backend(mut self, kind: crate::backend::BackendKind) -> Result<TaskSession> {
        self.session.set_offload(crate::backend::offload_for(kind)?);
        Ok(self)
    }

    /// The delta's task.
    pub fn task(&self) -> &TaskHead {
        &self.task
    }

    /// The head's outputs for `batch`: class logits `[rows × classes]`, predictions
    /// `[rows × outputs]`, or the LM's logits `[rows × seq × vocab]`. The batch's targets are not
    /// used.
    pub fn outputs(&self, batch: &Batch) -> Result<Vec<f32>> {
        task_outputs(&self.session, &self.task, self.head.as_ref(), batch)
    }

    /// The task's loss and measure over `batches`.
    pub fn evaluate(&self, batches: &[Batch]) -> Result<Evaluation> {
        evaluate_task(&self.session, &self.task, self.head.as_ref(), self.mlm_bias.as_deref(), batches)
    }
}

/// The delta's `head.weight` `[outputs × hidden]` and `head.bias` `[outputs]` as a head.
fn head_from_delta(delta: &Delta, outputs: usize, pooling: crate::peft::Pooling) -> Result<PooledHead> {
    let get = |name: &str| delta.tensor(&format!("{HEAD_PREFIX}{name}")).ok_or_else(|| Error::Config(format!("the delta's head has no `{HEAD_PREFIX}{name}`")));
    let (w, b) = (get("weight")?, get("bias")?);
    let hidden = match w.shape[..] {
        [o, h] if o as usize == outputs && h > 0 && b.shape[..] == [o] => h as usize,
        _ => return Err(Error::Config(format!("head.weight is {:?} and head.bias {:?}; expected [{outputs}, hidden] and [{outputs}]", w.shape, b.shape))),
    };
    Ok(PooledHead { pooling, outputs, hidden, weight: w.to_f32()?, bias: b.to_f32()? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn a_batch_for_another_task_is_refused_by_name() {
        let b = Batch::causal_lm(vec![("input_ids".into(), Tensor::new(&[1, 2], vec![1i64, 2]).unwrap())]);
        let e = wrong_batch(&TaskHead::Regression { outputs: 1 }, &b);
        assert!(e.to_string().contains("a causal-LM batch for a regression head"), "{e}");
    }
}
