//! The bindings' only contact with the trainer's API: building a trainer from [`Settings`],
//! turning plain arrays into a batch, stepping and evaluating. Kept small on purpose, so a
//! change of the trainer's API is an edit here and nowhere else.

use std::sync::Arc;

use kilotune::delta::Delta;
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::Base;

use super::{Settings, Tokens};
use crate::status::{Failure, Status};

/// A batch for a classification head: tokens and one class per row.
#[derive(Clone, Copy, Debug)]
pub struct Labeled<'a> {
    /// The rows.
    pub tokens: Tokens<'a>,
    /// The class of each row, below the head's class count.
    pub labels: &'a [u32],
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSummary {
    /// Loss before the update.
    pub loss: f32,
    /// Whether the update was applied (false: skipped for a non-finite gradient).
    pub applied: bool,
    /// Steps taken so far, this one included.
    pub steps: u64,
}

/// Accuracy and mean loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    /// Fraction of rows classified right.
    pub accuracy: f32,
    /// Mean loss.
    pub loss: f32,
    /// Rows seen.
    pub rows: u64,
}

/// A trainer and what the bindings need to check batches against it.
pub struct TrainerState {
    trainer: Trainer,
    base: Arc<Base>,
    classes: u32,
}

impl TrainerState {
    /// A trainer over `base` configured by `settings`.
    pub fn new(base: Arc<Base>, settings: &Settings) -> Result<TrainerState, Failure> {
        let (method, head) = (settings.method()?, settings.head()?);
        let config = TrainConfig { seed: settings.seed, threads: settings.threads as usize, optimizer: settings.optimizer()?, ..TrainConfig::default() };
        let trainer = Trainer::new(base.clone(), method, head, config)?;
        Ok(TrainerState { trainer, base, classes: settings.classes })
    }

    fn batch(&self, b: &Labeled<'_>) -> Result<Batch, Failure> {
        if b.labels.len() != b.tokens.rows {
            return Err(Failure::new(Status::Input, format!("{} labels for {} rows", b.labels.len(), b.tokens.rows)));
        }
        if let Some(&l) = b.labels.iter().find(|&&l| l >= self.classes) {
            return Err(Failure::new(Status::Input, format!("label {l} is not below the head's {} classes", self.classes)));
        }
        let inputs = b.tokens.inputs(&self.base)?;
        Ok(Batch::classification(inputs, b.labels.iter().map(|&l| l as usize).collect()))
    }

    /// One optimization step.
    pub fn step(&mut self, batch: &Labeled<'_>) -> Result<StepSummary, Failure> {
        let b = self.batch(batch)?;
        let r = self.trainer.step(&b)?;
        let applied = matches!(r.outcome, kilotune::train::optim::StepOutcome::Applied { .. });
        Ok(StepSummary { loss: r.loss, applied, steps: self.trainer.steps() })
    }

    /// Accuracy and loss over `batches`, without training.
    pub fn evaluate(&self, batches: &[Labeled<'_>]) -> Result<Scores, Failure> {
        let bs = batches.iter().map(|b| self.batch(b)).collect::<Result<Vec<_>, _>>()?;
        let e = self.trainer.evaluate(&bs)?;
        let accuracy = e.accuracy.ok_or_else(|| Failure::new(Status::Internal, "a classification evaluation without accuracy"))?;
        Ok(Scores { accuracy, loss: e.loss, rows: e.rows as u64 })
    }

    /// The delta as it stands now.
    pub fn delta(&self) -> Delta {
        self.trainer.delta()
    }
}
