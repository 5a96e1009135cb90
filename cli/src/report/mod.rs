//! `kilotune train --report DIR`: the run's curves as SVG files and a page that shows them.
//!
//! The folder holds `loss.svg` (the loss of every step, with a smoothed line and the epoch
//! boundaries), with `--eval` also `eval-loss.svg` (held-out loss beside the epoch's mean
//! training loss) and `eval-metric.svg` (accuracy or perplexity), and `index.html`: the run's
//! settings, its final figures, a table per epoch and the pictures, with no script, style sheet
//! or font from outside the folder. Training rewrites the folder after every epoch, each file
//! atomically, so a run that is stopped still leaves a report of the epochs it finished.
//!
//! The charts are drawn by `plotters` into SVG without its font feature: the SVG backend writes
//! text as `<text>` elements that the browser sets in its own sans-serif, so no font library
//! (and no C code) is built.

mod chart;
mod page;
#[cfg(test)]
mod testing;

use std::path::{Path, PathBuf};

use kilotune::train::trainer::Evaluation;

use crate::error::{CliError, Result};
use crate::{BitFitChoice, Method, PrecisionChoice, Task, TrainArgs};

/// The file name of the page.
pub const INDEX: &str = "index.html";
/// The per-step loss chart.
pub const LOSS_SVG: &str = "loss.svg";
/// Held-out loss per epoch (with `--eval`).
pub const EVAL_LOSS_SVG: &str = "eval-loss.svg";
/// Accuracy or perplexity per epoch (with `--eval`, for classification and causal LM).
pub const EVAL_METRIC_SVG: &str = "eval-metric.svg";

/// The settings of a run, as the page lists them.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The model file, as given.
    pub model: String,
    /// The training data file, as given.
    pub data: String,
    /// The held-out data file, if any.
    pub eval_data: Option<String>,
    /// `classify`, `regress` or `causal-lm`.
    pub task: &'static str,
    /// The method and its settings, e.g. `LoRA r=8 alpha=16 on query,value`.
    pub method: String,
    /// Peak learning rate.
    pub lr: f32,
    /// Epochs asked for.
    pub epochs: u32,
    /// Rows per step.
    pub batch: u32,
    /// Training rows.
    pub rows: usize,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Trainable parameters (delta and head).
    pub parameters: usize,
    /// The seed.
    pub seed: u64,
    /// The delta file, as given.
    pub out: String,
    /// The delta's storage precision.
    pub precision: &'static str,
}

impl RunConfig {
    /// The settings of `args`, with the figures only known once the data and model are loaded.
    pub fn new(
        args: &TrainArgs,
        rows: usize,
        steps_per_epoch: u64,
        warmup_steps: u64,
        parameters: usize,
    ) -> RunConfig {
        let method = match args.method {
            Method::Lora => format!(
                "LoRA r={} alpha={} dropout={} on {}",
                args.rank,
                args.alpha,
                args.lora_dropout,
                args.targets.join(",")
            ),
            Method::Bitfit => format!(
                "BitFit ({} biases{})",
                match args.bitfit_variant {
                    BitFitChoice::All => "all",
                    BitFitChoice::QueryMlp => "query and MLP",
                },
                if args.no_layernorm {
                    ", LayerNorm frozen"
                } else {
                    ", with LayerNorm"
                }
            ),
            Method::HeadOnly => "head only".into(),
            Method::TopLayers => format!("top {} layers", args.methods.layers),
            Method::Full => "full fine-tuning".into(),
            Method::Ia3 => "(IA)3".into(),
            Method::Houlsby | Method::Pfeiffer => format!(
                "{:?} adapter m={} {:?}",
                args.method, args.methods.bottleneck, args.methods.adapter_activation
            ),
            Method::DiffPruning => format!(
                "diff pruning, density {}, L0 weight {}",
                args.methods.density, args.methods.l0_lambda
            ),
            Method::Prefix => format!(
                "prefix tuning, {} tokens (MLP {})",
                args.methods.prefix_len, args.methods.prefix_mlp
            ),
            Method::Prompt => format!("prompt tuning, {} tokens", args.methods.prompt_len),
            Method::MadxLang => format!(
                "MAD-X language adapter m={}, invertible adapter m={} {:?}",
                args.methods.bottleneck,
                args.methods.invertible_bottleneck,
                args.methods.adapter_activation
            ),
            Method::MadxTask => format!(
                "MAD-X task adapter m={} on {}",
                args.methods.bottleneck,
                args.methods
                    .lang_adapter
                    .as_ref()
                    .map_or("?".into(), |p| p.display().to_string())
            ),
        };
        RunConfig {
            model: args.model.model.display().to_string(),
            data: args.data.display().to_string(),
            eval_data: args.eval.as_ref().map(|p| p.display().to_string()),
            task: match args.task {
                Task::Classify => "classify",
                Task::Regress => "regress",
                Task::CausalLm => "causal-lm",
                Task::Mlm => "mlm",
            },
            method,
            lr: args.lr,
            epochs: args.epochs,
            batch: args.batch,
            rows,
            steps_per_epoch,
            warmup_steps,
            parameters,
            seed: args.seed,
            out: args.out.display().to_string(),
            precision: match args.precision {
                PrecisionChoice::F32 => "f32",
                PrecisionChoice::F16 => "f16",
                PrecisionChoice::Int8 => "int8",
            },
        }
    }
}

/// One finished epoch, in the figures `train` prints for it.
#[derive(Clone, Copy, Debug)]
pub struct EpochRecord {
    /// Steps taken.
    pub steps: usize,
    /// The mean training loss over the epoch's rows.
    pub train_loss: f64,
    /// Training rows per second.
    pub rows_per_sec: f64,
    /// The epoch's wall time in seconds.
    pub secs: f64,
    /// The held-out evaluation after the epoch, with `--eval`.
    pub eval: Option<Evaluation>,
}

/// The saved delta, once the run is over.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The delta file's size in bytes.
    pub delta_bytes: u64,
    /// The whole command's wall time in seconds.
    pub wall_secs: f64,
}

/// What a run has recorded so far: everything the report draws.
#[derive(Clone, Debug)]
pub struct TrainLog {
    /// The run's settings.
    pub config: RunConfig,
    /// The loss of every step, in order.
    pub step_losses: Vec<f32>,
    /// The finished epochs, in order.
    pub epochs: Vec<EpochRecord>,
    /// Set when the delta has been saved.
    pub finished: Option<Finished>,
}

impl TrainLog {
    /// An empty log for a run with `config`.
    pub fn new(config: RunConfig) -> TrainLog {
        TrainLog {
            config,
            step_losses: Vec::new(),
            epochs: Vec::new(),
            finished: None,
        }
    }
}

/// A report folder that was created and shown to be writable.
#[derive(Debug)]
pub struct ReportDir {
    dir: PathBuf,
}

impl ReportDir {
    /// Creates `dir` (and its parents) and checks that a file can be written in it, so that a
    /// bad `--report` fails before training rather than after it.
    pub fn create(dir: &Path) -> Result<ReportDir> {
        std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
            action: "cannot create the report folder",
            path: dir.to_owned(),
            source,
        })?;
        let probe = dir.join(format!(".write-check.{}.tmp", std::process::id()));
        std::fs::write(&probe, b"").map_err(|source| CliError::Io {
            action: "cannot write in the report folder",
            path: dir.to_owned(),
            source,
        })?;
        // Best effort: the folder was shown writable, which is all the probe was for.
        let _ = std::fs::remove_file(&probe);
        Ok(ReportDir {
            dir: dir.to_owned(),
        })
    }

    /// The page's path.
    pub fn index(&self) -> PathBuf {
        self.dir.join(INDEX)
    }

    /// Writes the charts and the page for `log`, each file atomically; the page last, so it
    /// never shows a chart older than itself.
    pub fn write(&self, log: &TrainLog) -> Result<()> {
        let plot = |file: &str| {
            let file = self.dir.join(file);
            move |reason| CliError::Plot { file, reason }
        };
        let loss = chart::loss_svg(&log.step_losses, log.config.steps_per_epoch)
            .map_err(plot(LOSS_SVG))?;
        crate::merge::write_atomic(&self.dir.join(LOSS_SVG), loss.as_bytes())?;
        let charts = chart::eval_svgs(&log.epochs);
        for (file, svg) in [
            (EVAL_LOSS_SVG, charts.loss),
            (EVAL_METRIC_SVG, charts.metric),
        ] {
            let path = self.dir.join(file);
            match svg {
                Some(svg) => {
                    let svg = svg.map_err(plot(file))?;
                    crate::merge::write_atomic(&path, svg.as_bytes())?;
                }
                // A chart this run does not draw must not survive from an earlier run.
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(CliError::Io {
                            action: "cannot remove the stale chart",
                            path,
                            source: e,
                        })
                    }
                    _ => {}
                },
            }
        }
        crate::merge::write_atomic(&self.index(), page::html(log).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{config, epoch, evaluation};
    use super::*;

    #[test]
    fn a_report_folder_inside_a_file_is_an_io_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        match ReportDir::create(&file.join("report")) {
            Err(CliError::Io { action, path, .. }) => {
                assert_eq!(action, "cannot create the report folder");
                assert_eq!(path, file.join("report"));
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn writing_leaves_no_temporary_files_and_removes_stale_charts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let report = ReportDir::create(dir.path()).expect("a writable folder");
        let mut log = TrainLog::new(config());
        log.step_losses = vec![1.0, 0.5];
        log.epochs = vec![epoch(0.75, Some(evaluation(0.6, Some(0.5), None)))];
        report.write(&log).expect("written");
        let names = |d: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(d)
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names(dir.path()),
            [EVAL_LOSS_SVG, EVAL_METRIC_SVG, INDEX, LOSS_SVG]
        );
        log.epochs = vec![epoch(0.75, None)];
        log.config.eval_data = None;
        report.write(&log).expect("written");
        assert_eq!(names(dir.path()), [INDEX, LOSS_SVG]);
    }
}
