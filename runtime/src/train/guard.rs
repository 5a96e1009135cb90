//! Guards on training, so that one bad batch or a too-large learning rate never ends up in the
//! user's delta:
//!
//! - the **step guard**: a step whose loss or gradients are not finite is skipped; three such
//!   steps in a row, a loss spike, or an update that leaves a parameter non-finite send the
//!   [`Trainer`](super::trainer::Trainer) back to its last good parameters and optimizer
//!   state (a *rollback*);
//! - the **evaluation gate**: a new delta replaces the old one only if it does no worse on
//!   held-out data ([`GateDecision`]).
//!
//! Good parameters are the ones whose loss was finite and not a spike and whose gradients were
//! finite: before applying such a step's update the trainer keeps a copy of the parameters and
//! the optimizer state, and a rollback restores that copy. The copy costs the memory of the trainable parameters and the
//! optimizer's state once more (for AdamW, three floats per trainable parameter).
//!
//! A spike is a loss above `spike_factor × average + spike_margin`, where the average is an
//! exponential moving average over the losses of good steps
//! (`average ← decay·average + (1 − decay)·loss`, starting at the first good loss), looked for
//! only after `warmup_steps` good steps, so that the noisy first steps never trigger it.
//! The margin keeps a run whose loss has fallen near zero from calling an ordinary hard batch
//! a spike: at an average of 0.05, a batch at 0.3 is six times the average and no divergence.

use std::fmt;

use super::evaluate::Evaluation;
use crate::error::{Error, Result};

/// Settings of the step guard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardConfig {
    /// Bad steps in a row (non-finite loss or gradients) after which the trainer rolls back.
    /// At least 1. Default 3.
    pub max_bad_steps: u32,
    /// A loss above `spike_factor × average + spike_margin` rolls the trainer back; `None`
    /// turns spike detection off. Default `Some(3.0)`.
    pub spike_factor: Option<f32>,
    /// See `spike_factor`; in the loss's own units. Default 1.0.
    pub spike_margin: f32,
    /// The weight of the old average in the moving average of good losses, in `[0, 1)`.
    /// Default 0.9 (about the last ten good steps).
    pub average_decay: f32,
    /// Good steps before spikes are looked for. Default 5.
    pub warmup_steps: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig { max_bad_steps: 3, spike_factor: Some(3.0), spike_margin: 1.0, average_decay: 0.9, warmup_steps: 5 }
    }
}

impl GuardConfig {
    /// Checks every value is in range; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config(what));
        if self.max_bad_steps == 0 {
            return bad("guard max_bad_steps must be at least 1".into());
        }
        if let Some(f) = self.spike_factor {
            if !(f.is_finite() && f >= 1.0) {
                return bad(format!("guard spike_factor {f} is not a finite number ≥ 1"));
            }
        }
        if !(self.spike_margin.is_finite() && self.spike_margin >= 0.0) {
            return bad(format!("guard spike_margin {} is not a non-negative finite number", self.spike_margin));
        }
        if !(0.0..1.0).contains(&self.average_decay) {
            return bad(format!("guard average_decay {} is not in [0, 1)", self.average_decay));
        }
        Ok(())
    }
}

/// Why the guard stopped a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadStep {
    /// The loss was NaN or infinite.
    NonFiniteLoss,
    /// A gradient was NaN or infinite.
    NonFiniteGradient,
    /// The update left a parameter NaN or infinite.
    NonFiniteParameter,
    /// The loss was a spike (see the module's documentation).
    LossSpike,
}

/// What the guard did about one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardAction {
    /// The step was good and its update applied.
    Passed,
    /// The step was bad and skipped: no parameter or optimizer state changed.
    Skipped(BadStep),
    /// The step was bad, and the trainer went back to its last good parameters and
    /// optimizer state.
    RolledBack(BadStep),
}

/// What the guard has done over a trainer's life: each bad step counted once by its cause,
/// and the rollbacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Steps whose loss was not finite.
    pub non_finite_loss: u64,
    /// Steps whose gradients were not finite.
    pub non_finite_gradients: u64,
    /// Steps whose update left a parameter not finite (undone by a rollback).
    pub non_finite_parameters: u64,
    /// Steps whose loss was a spike (each followed by a rollback).
    pub loss_spikes: u64,
    /// Times the trainer went back to its last good parameters.
    pub rollbacks: u64,
}

impl GuardStats {
    /// Steps whose update did not stay: every bad step.
    pub fn bad_steps(&self) -> u64 {
        self.non_finite_loss + self.non_finite_gradients + self.non_finite_parameters + self.loss_spikes
    }
}

/// How a step's loss looks to the guard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum LossCheck {
    Good,
    NonFinite,
    Spike,
}

/// The step guard's state: the moving average of good losses and the run of bad steps.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    config: GuardConfig,
    average: Option<f32>,
    good_steps: u64,
    bad_in_a_row: u32,
    stats: GuardStats,
}

impl Guard {
    /// A guard with nothing seen yet; `config` must be valid.
    pub(crate) fn new(config: GuardConfig) -> Guard {
        Guard { config, average: None, good_steps: 0, bad_in_a_row: 0, stats: GuardStats::default() }
    }

    pub(crate) fn stats(&self) -> GuardStats {
        self.stats
    }

    /// Whether `loss` lets the step go on.
    pub(crate) fn check_loss(&self, loss: f32) -> LossCheck {
        if !loss.is_finite() {
            return LossCheck::NonFinite;
        }
        match (self.config.spike_factor, self.average) {
            (Some(factor), Some(avg)) if self.good_steps >= u64::from(self.config.warmup_steps) && loss > factor * avg + self.config.spike_margin => {
                LossCheck::Spike
            }
            _ => LossCheck::Good,
        }
    }

    /// Records a good step with `loss` (finite).
    pub(crate) fn good(&mut self, loss: f32) {
        let d = self.config.average_decay;
        self.average = Some(self.average.map_or(loss, |avg| d * avg + (1.0 - d) * loss));
        self.good_steps += 1;
        self.bad_in_a_row = 0;
    }

    /// Records a bad step and says what to do: a rollback for a spike, a non-finite parameter,
    /// or the `max_bad_steps`-th bad step in a row, else a skip. The caller performs the
    /// rollback.
    pub(crate) fn bad(&mut self, why: BadStep) -> GuardAction {
        let s = &mut self.stats;
        match why {
            BadStep::NonFiniteLoss => s.non_finite_loss += 1,
            BadStep::NonFiniteGradient => s.non_finite_gradients += 1,
            BadStep::NonFiniteParameter => s.non_finite_parameters += 1,
            BadStep::LossSpike => s.loss_spikes += 1,
        }
        self.bad_in_a_row += 1;
        let roll = matches!(why, BadStep::LossSpike | BadStep::NonFiniteParameter) || self.bad_in_a_row >= self.config.max_bad_steps;
        if roll {
            self.stats.rollbacks += 1;
            self.bad_in_a_row = 0;
            GuardAction::RolledBack(why)
        } else {
            GuardAction::Skipped(why)
        }
    }
}

/// A test-only fault for [`Trainer::inject_fault`](super::trainer::Trainer::inject_fault):
/// what to corrupt in one step.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedFault {
    /// The step's loss becomes NaN.
    NanLoss,
    /// One gradient value becomes NaN.
    NanGradient,
    /// One parameter becomes NaN right after the update.
    NanParameter,
    /// The step's loss becomes a finite spike, a thousand times the real one and more.
    LossSpike,
}

/// The verdict of the evaluation gate
/// ([`Trainer::accept_if_better`](super::trainer::Trainer::accept_if_better)): both deltas'
/// evaluations on the same held-out data, and whether the new one may replace the old.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GateDecision {
    /// The new delta's held-out loss is finite and no higher than the old one's (or the old
    /// one's is not finite): keep the new delta.
    Accept {
        /// The new delta's evaluation.
        new: Evaluation,
        /// The old delta's evaluation.
        old: Evaluation,
    },
    /// The new delta does worse, or its loss is not finite: keep the old one.
    Reject {
        /// The new delta's evaluation.
        new: Evaluation,
        /// The old delta's evaluation.
        old: Evaluation,
    },
}

impl GateDecision {
    /// Judges `new` against `old` by their held-out loss.
    pub fn judge(new: Evaluation, old: Evaluation) -> GateDecision {
        // `!(new > old)` rather than `new <= old`: a NaN old loss loses to any finite new one.
        if new.loss.is_finite() && new.loss.partial_cmp(&old.loss) != Some(std::cmp::Ordering::Greater) {
            GateDecision::Accept { new, old }
        } else {
            GateDecision::Reject { new, old }
        }
    }

    /// Whether the new delta may replace the old one.
    pub fn accepted(&self) -> bool {
        matches!(self, GateDecision::Accept { .. })
    }

    /// The new delta's evaluation.
    pub fn new_evaluation(&self) -> &Evaluation {
        match self {
            GateDecision::Accept { new, .. } | GateDecision::Reject { new, .. } => new,
        }
    }

    /// The old delta's evaluation.
    pub fn old_evaluation(&self) -> &Evaluation {
        match self {
            GateDecision::Accept { old, .. } | GateDecision::Reject { old, .. } => old,
        }
    }
}

impl fmt::Display for GateDecision {
    /// `held-out loss 0.4100 (new) is no worse than 0.4500 (old)`, or `... is worse than ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (new, old) = (self.new_evaluation().loss, self.old_evaluation().loss);
        let verdict = if self.accepted() { "is no worse than" } else { "is worse than" };
        write!(f, "held-out loss {new:.4} (new) {verdict} {old:.4} (old)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(loss: f32) -> Evaluation {
        Evaluation { loss, rows: 4, accuracy: None, perplexity: None, tokens: None, mse: Some(loss) }
    }

    #[test]
    fn guard_spike_needs_warmup_factor_and_margin() {
        let mut g = Guard::new(GuardConfig { warmup_steps: 3, ..GuardConfig::default() });
        // Before the warm-up, nothing is a spike.
        for _ in 0..2 {
            assert_eq!(g.check_loss(1e6), LossCheck::Good);
            g.good(1.0);
        }
        assert_eq!(g.check_loss(1e6), LossCheck::Good);
        g.good(1.0);
        // Average 1.0 (all good losses were 1): the limit is 3 × 1 + 1 = 4.
        assert_eq!(g.check_loss(4.0), LossCheck::Good);
        assert_eq!(g.check_loss(4.001), LossCheck::Spike);
        assert_eq!(g.check_loss(f32::NAN), LossCheck::NonFinite);
        assert_eq!(g.check_loss(f32::NEG_INFINITY), LossCheck::NonFinite);
        // One good 2.0 moves the average to 0.9·1 + 0.1·2 = 1.1: the limit to 4.3.
        g.good(2.0);
        assert_eq!(g.check_loss(4.29), LossCheck::Good);
        assert_eq!(g.check_loss(4.31), LossCheck::Spike);
        // Off: never a spike.
        let off = Guard { config: GuardConfig { spike_factor: None, ..g.config }, ..g.clone() };
        assert_eq!(off.check_loss(1e30), LossCheck::Good);
    }

    #[test]
    fn guard_rolls_back_on_the_third_bad_step_in_a_row() {
        let mut g = Guard::new(GuardConfig::default());
        use BadStep::*;
        assert_eq!(g.bad(NonFiniteLoss), GuardAction::Skipped(NonFiniteLoss));
        assert_eq!(g.bad(NonFiniteGradient), GuardAction::Skipped(NonFiniteGradient));
        assert_eq!(g.bad(NonFiniteLoss), GuardAction::RolledBack(NonFiniteLoss));
        // The count starts again after a rollback, and after a good step.
        assert_eq!(g.bad(NonFiniteLoss), GuardAction::Skipped(NonFiniteLoss));
        g.good(1.0);
        assert_eq!(g.bad(NonFiniteLoss), GuardAction::Skipped(NonFiniteLoss));
        assert_eq!(g.bad(NonFiniteLoss), GuardAction::Skipped(NonFiniteLoss));
        // A spike or a non-finite parameter rolls back at once.
        assert_eq!(g.bad(LossSpike), GuardAction::RolledBack(LossSpike));
        assert_eq!(g.bad(NonFiniteParameter), GuardAction::RolledBack(NonFiniteParameter));
        let s = g.stats();
        assert_eq!((s.non_finite_loss, s.non_finite_gradients, s.loss_spikes, s.non_finite_parameters), (5, 1, 1, 1));
        assert_eq!((s.rollbacks, s.bad_steps()), (3, 8));
    }

    #[test]
    fn guard_config_validation_names_the_field() {
        let bad = [
            GuardConfig { max_bad_steps: 0, ..GuardConfig::default() },
            GuardConfig { spike_factor: Some(0.5), ..GuardConfig::default() },
            GuardConfig { spike_factor: Some(f32::NAN), ..GuardConfig::default() },
            GuardConfig { spike_margin: -1.0, ..GuardConfig::default() },
            GuardConfig { average_decay: 1.0, ..GuardConfig::default() },
        ];
        for (c, field) in bad.iter().zip(["max_bad_steps", "spike_factor", "spike_factor", "spike_margin", "average_decay"]) {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        GuardConfig::default().validate().unwrap();
    }

    #[test]
    fn gate_accepts_no_worse_and_rejects_worse_or_non_finite() {
        assert!(GateDecision::judge(eval(0.5), eval(0.5)).accepted());
        assert!(GateDecision::judge(eval(0.4), eval(0.5)).accepted());
        assert!(!GateDecision::judge(eval(0.51), eval(0.5)).accepted());
        assert!(!GateDecision::judge(eval(f32::NAN), eval(0.5)).accepted());
        assert!(!GateDecision::judge(eval(f32::INFINITY), eval(f32::INFINITY)).accepted());
        assert!(GateDecision::judge(eval(9.0), eval(f32::NAN)).accepted());
        let d = GateDecision::judge(eval(0.75), eval(0.5));
        assert_eq!(d.to_string(), "held-out loss 0.7500 (new) is worse than 0.5000 (old)");
        assert_eq!((d.new_evaluation().loss, d.old_evaluation().loss), (0.75, 0.5));
    }
}
