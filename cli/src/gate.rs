//! `kilotune train --gate-against OLD.ktd`: the evaluation gate (the new delta replaces the old
//! one only if it does no worse on the held-out data of `--eval`), and the line that reports
//! what the training guard did.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use kilotune::delta::{self, LoadLimits};
use kilotune::train::guard::GuardStats;
use kilotune::train::trainer::{Batch, Trainer};

use crate::error::{CliError, Result};

/// The gate's flag, flattened into `kilotune train`'s.
#[derive(Args, Debug)]
pub struct GateArgs {
    /// Save --out only if the new delta's held-out loss (on --eval) is no worse than this
    /// delta's; otherwise leave --out as it is and exit with status 3. Usually --out itself.
    #[arg(long, value_name = "OLD.ktd", requires = "eval")]
    pub gate_against: Option<PathBuf>,
}

/// Runs the gate when `--gate-against` was given: `Ok` to go on and save to `out_path`, or
/// [`CliError::GateRejected`] saying why the old delta stays.
pub fn check(args: &GateArgs, trainer: &Trainer, held_out: Option<&[Batch]>, out_path: &Path, out: &mut dyn Write) -> Result<()> {
    let Some(old_path) = &args.gate_against else { return Ok(()) };
    let held_out = held_out.ok_or_else(|| CliError::Usage("--gate-against needs held-out data: add --eval".into()))?;
    let old = delta::load(old_path, None, &LoadLimits::default()).map_err(kilotune::Error::from)?;
    let decision = trainer.accept_if_better(held_out, &old)?;
    if !decision.accepted() {
        return Err(CliError::GateRejected(format!("{decision}: kept {}, did not save {}", old_path.display(), out_path.display())));
    }
    writeln!(out, "gate: {decision} ({})", old_path.display()).map_err(CliError::Stdout)
}

/// `guard: 2 steps skipped or undone (1 non-finite loss, ...), 1 rollback`.
pub fn guard_line(s: &GuardStats) -> String {
    format!(
        "guard: {} steps skipped or undone ({} non-finite loss, {} non-finite gradients, {} non-finite parameters, {} loss spikes), {} rollbacks",
        s.bad_steps(),
        s.non_finite_loss,
        s.non_finite_gradients,
        s.non_finite_parameters,
        s.loss_spikes,
        s.rollbacks
    )
}
