//! `kilotune train`: JSON lines → a PEFT delta (LoRA, BitFit, adapters, ...) for a task (a classification or
//! regression head, or the model's own LM head for causal language modelling), saved as a
//! `.ktd` file.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kilotune::peft::{
    AdapterActivation, AdapterConfig, AdapterPlacement, BitFitConfig, BitFitVariant,
    DiffPruningConfig, Ia3Config,
    LoraConfig, MadxLanguageConfig, MadxTaskConfig, PeftMethod, Pooling, PrefixConfig,
    PromptConfig, TaskHead, TopLayersConfig,
};
use kilotune::train::optim::{Decay, OptimizerConfig, Schedule};
use kilotune::train::mlm::{mask_tokens, MaskingConfig};
use kilotune::train::trainer::{Batch, Evaluation, TrainConfig, Trainer};
use kilotune::Base;

use crate::data::{self, Classes, Encoded, LabelKind, Labels};
use crate::embed::{FeedPlan, TextTokenizer};
use crate::error::{CliError, Result};
use crate::report::{EpochRecord, Finished, ReportDir, RunConfig, TrainLog};
use crate::{ActivationChoice, BitFitChoice, Method, PoolingChoice, Task, TrainArgs};

/// The share of all steps spent warming the learning rate up.
const WARMUP_FRACTION: f64 = 0.06;

/// Runs `kilotune train`.
pub fn train(args: &TrainArgs, out: &mut dyn Write) -> Result<()> {
    let t_start = Instant::now();
    let outln = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(CliError::Stdout);
    if args.pooling == Some(PoolingChoice::Cls) && args.task != Task::Classify {
        return Err(CliError::Usage(
            "--pooling cls is for --task classify: a regression head pools by the mean (the delta \
             stores no pooling for it) and a causal LM does not pool"
                .into(),
        ));
    }
    match (args.task, args.method) {
        (Task::Mlm, Method::MadxLang) => {}
        (Task::Mlm, _) | (_, Method::MadxLang) => {
            return Err(CliError::Usage(
                "--task mlm trains MAD-X language adapters: use it with --method madx-lang (and                  the other way round)"
                    .into(),
            ))
        }
        (_, Method::MadxTask) if args.methods.lang_adapter.is_none() => {
            return Err(CliError::Usage(
                "--method madx-task stacks on a language adapter: give --lang-adapter LANG.ktd                  (trained with --method madx-lang --task mlm)"
                    .into(),
            ))
        }
        _ => {}
    }
    // Before any slow work: a report folder that cannot be written must not cost a run.
    let report_dir = args.report.as_deref().map(ReportDir::create).transpose()?;
    let kind = match args.task {
        Task::Classify => LabelKind::Class,
        Task::Regress => LabelKind::Number,
        Task::CausalLm | Task::Mlm => LabelKind::None,
    };

    let rows = data::read_jsonl(&args.data, args.limit, kind)?;
    let classes = match args.task {
        Task::Classify => {
            let classes = Classes::from_rows(&rows)?;
            if classes.count() < 2 {
                return Err(CliError::Usage(format!(
                    "{} has a single class ({}); classification needs at least 2",
                    args.data.display(),
                    classes.describe()
                )));
            }
            outln(out, format!("labels: {}", classes.describe()))?;
            Some(classes)
        }
        _ => None,
    };
    let labels = match (&classes, args.task) {
        (Some(c), _) => Labels::Classes(c),
        (None, Task::Regress) => Labels::Values,
        _ => Labels::NextTokens,
    };

    let tok = TextTokenizer::load(&args.model.tokenizer, args.model.max_len as usize)?;
    let train_set = Encoded::new(&rows, &tok, &labels)?;
    if let Some(v) = train_set.values() {
        let (lo, hi) = v
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        outln(out, format!("targets: {} values in [{lo}, {hi}]", v.len()))?;
    }
    let eval_set = match &args.eval {
        Some(path) => {
            let eval_rows = data::read_jsonl(path, None, kind)?;
            // The training run's classes, so ids mean the same; an unseen label is an error.
            Some(
                Encoded::new(&eval_rows, &tok, &labels)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };

    let base = Base::load(&args.model.model, args.model.load_options())?;
    let feeds = FeedPlan::for_model(&base)?;
    if !feeds.has_mask {
        return Err(CliError::Usage(
            "the model has no `attention_mask` input; training needs it to leave padding out"
                .into(),
        ));
    }

    let batch = args.batch as usize;
    let steps_per_epoch = train_set.len().div_ceil(batch) as u64;
    let total_steps = steps_per_epoch * u64::from(args.epochs);
    let warmup_steps =
        ((total_steps as f64 * WARMUP_FRACTION).ceil() as u64).min(total_steps.saturating_sub(1));
    let method = peft_method(args.method, args, &base);
    let config = TrainConfig {
        seed: args.seed,
        threads: args.model.threads,
        optimizer: OptimizerConfig {
            lr: args.lr,
            schedule: Schedule {
                warmup_steps,
                total_steps,
                decay: Decay::Linear,
            },
            ..OptimizerConfig::default()
        },
        memory_budget: args.memory_budget.map(|mib| mib.saturating_mul(1 << 20)),
        backend: args.backend,
        ..TrainConfig::default()
    };
    let head = match (&classes, args.task) {
        (Some(c), _) => TaskHead::Classification {
            classes: c.count() as u32,
            pooling: match args.pooling {
                Some(PoolingChoice::Cls) => Pooling::Cls,
                _ => Pooling::Mean,
            },
        },
        (None, Task::Regress) => TaskHead::Regression { outputs: 1 },
        (None, Task::Mlm) => TaskHead::MaskedLm,
        _ => TaskHead::CausalLm,
    };
    let masking = match args.task {
        Task::Mlm => Some(tok.masking()?),
        _ => None,
    };
    let mut trainer = match (args.method, &args.methods.lang_adapter) {
        (Method::MadxTask, Some(path)) => {
            let lang = kilotune::delta::load(path, Some(&base.fingerprint()), &Default::default())
                .map_err(kilotune::Error::from)?;
            Trainer::madx_task(base, &lang, args.methods.bottleneck, head, config)?
        }
        _ => Trainer::new(base, method, head, config)?,
    };
    outln(
        out,
        format!(
            "training {} parameters on {} rows: {} epochs x {steps_per_epoch} steps, warm-up {warmup_steps}",
            trainer.parameter_count(),
            train_set.len(),
            args.epochs
        ),
    )?;
    out.flush().map_err(CliError::Stdout)?;
    let config = RunConfig::new(
        args,
        train_set.len(),
        steps_per_epoch,
        warmup_steps,
        trainer.parameter_count(),
    );
    let mut log = TrainLog::new(config);
    if let Some(dir) = &report_dir {
        dir.write(&log)?;
    }

    let eval_batches = match &eval_set {
        Some(set) => {
            let b = set.batches(&(0..set.len()).collect::<Vec<_>>(), batch, &tok, &feeds)?;
            // Held-out masks are fixed, so epochs compare.
            Some(mask_batches(b, masking.as_ref(), args.seed ^ EVAL_MASK_SEED)?)
        }
        None => None,
    };

    let interactive = std::io::stderr().is_terminal();
    for epoch in 0..args.epochs {
        let order = data::shuffled(train_set.len(), args.seed, epoch);
        let batches = train_set.batches(&order, batch, &tok, &feeds)?;
        let batches = mask_batches(batches, masking.as_ref(), args.seed ^ (u64::from(epoch) << 32))?;
        let bar = if interactive {
            let bar = ProgressBar::new(batches.len() as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} {bar:30} step {pos}/{len} {msg} [{elapsed}]",
                )
                .expect("the template is a valid literal"),
            );
            bar.set_prefix(format!("{}/{}", epoch + 1, args.epochs));
            bar
        } else {
            ProgressBar::hidden()
        };
        let t_epoch = Instant::now();
        let (mut loss_sum, mut seen) = (0f64, 0usize);
        for b in &batches {
            let report = trainer.step(b)?;
            log.step_losses.push(report.loss);
            loss_sum += f64::from(report.loss) * b.rows() as f64;
            seen += b.rows();
            let rate = seen as f64 / t_epoch.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4}, {rate:.1} rows/s",
                loss_sum / seen as f64
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let secs = t_epoch.elapsed().as_secs_f64();
        let train_loss = loss_sum / seen.max(1) as f64;
        let rows_per_sec = seen as f64 / secs.max(1e-9);
        let line = format!(
            "epoch {}/{}: {} steps, loss {train_loss:.4}, {rows_per_sec:.1} rows/s, {secs:.2} s",
            epoch + 1,
            args.epochs,
            batches.len(),
        );
        // Not eprintln!: a closed stderr must not stop training.
        let _ = writeln!(std::io::stderr(), "{line}");
        let mut eval = None;
        if let Some(eb) = &eval_batches {
            let e = trainer.evaluate(eb)?;
            outln(out, format!("epoch {}: {}", epoch + 1, describe(&e)))?;
            out.flush().map_err(CliError::Stdout)?;
            eval = Some(e);
        }
        log.epochs.push(EpochRecord {
            steps: batches.len(),
            train_loss,
            rows_per_sec,
            secs,
            eval,
        });
        if let Some(dir) = &report_dir {
            // The run matters more than its pictures: warn and go on; the last write reports.
            if let Err(e) = dir.write(&log) {
                let _ = writeln!(std::io::stderr(), "warning: report not updated: {e}");
            }
        }
    }

    outln(out, crate::gate::guard_line(&trainer.guard_stats()))?;
    crate::gate::check(&args.gate, &trainer, eval_batches.as_deref(), &args.out, out)?;
    let mut delta = trainer.delta();
    delta.summary.epochs = args.epochs;
    delta.summary.eval_metric = log
        .epochs
        .last()
        .and_then(|r| r.eval.as_ref())
        .map(headline);
    let (_, size) = crate::delta::save_sized(&delta, &args.out, args.precision)?;
    outln(out, format!("saved {} ({size} bytes)", args.out.display()))?;
    if matches!(args.method, Method::TopLayers | Method::Full) {
        outln(
            out,
            "note: this delta holds whole weight matrices, so it is far larger than a LoRA, \
             adapter or BitFit delta of the same model"
                .into(),
        )?;
    }
    let wall_secs = t_start.elapsed().as_secs_f64();
    if let Some(dir) = &report_dir {
        log.finished = Some(Finished {
            delta_bytes: size,
            wall_secs,
        });
        dir.write(&log)?;
        outln(out, format!("report {}", dir.index().display()))?;
    }
    outln(out, format!("wall time {wall_secs:.2} s"))?;
    Ok(())
}

/// The PEFT method `choice` with the settings of `args`. (IA)3 picks its targets by the
/// model's module names (BERT's `key`/`value`/`output.dense`, or Llama's `k_proj`/`v_proj`/
/// `down_proj`).
pub fn peft_method(choice: Method, args: &TrainArgs, base: &Base) -> PeftMethod {
    let m = &args.methods;
    let adapter = |placement| {
        PeftMethod::Adapter(AdapterConfig {
            placement,
            bottleneck: m.bottleneck,
            activation: match m.adapter_activation {
                ActivationChoice::Relu => AdapterActivation::Relu,
                ActivationChoice::Gelu => AdapterActivation::Gelu,
            },
        })
    };
    match choice {
        Method::Lora => PeftMethod::Lora(LoraConfig {
            r: args.rank,
            alpha: args.alpha,
            dropout: args.lora_dropout,
            target_modules: args.targets.clone(),
            rank_pattern: Vec::new(),
        }),
        Method::Bitfit => PeftMethod::BitFit(BitFitConfig {
            variant: match args.bitfit_variant {
                BitFitChoice::All => BitFitVariant::All,
                BitFitChoice::QueryMlp => BitFitVariant::QueryAndMlp,
            },
            include_layer_norm: !args.no_layernorm,
        }),
        Method::HeadOnly => PeftMethod::HeadOnly,
        Method::TopLayers => PeftMethod::TopLayers(TopLayersConfig { layers: m.layers }),
        Method::Full => PeftMethod::TopLayers(TopLayersConfig { layers: u32::MAX }),
        Method::Ia3 => PeftMethod::Ia3(if base.linears().iter().any(|l| l.module.ends_with("k_proj")) {
            Ia3Config::llama()
        } else {
            Ia3Config::default()
        }),
        Method::Houlsby => adapter(AdapterPlacement::Houlsby),
        Method::Pfeiffer => adapter(AdapterPlacement::Pfeiffer),
        Method::Prefix => PeftMethod::Prefix(PrefixConfig {
            len: m.prefix_len,
            mlp_hidden: m.prefix_mlp,
        }),
        Method::DiffPruning => PeftMethod::DiffPruning(DiffPruningConfig {
            density: m.density,
            l0_lambda: m.l0_lambda,
            target_modules: Vec::new(),
        }),
        Method::Prompt => PeftMethod::Prompt(PromptConfig { len: m.prompt_len }),
        Method::MadxLang => PeftMethod::MadxLanguage(madx_language(m)),
        // The language settings come from --lang-adapter's delta (`Trainer::madx_task`).
        Method::MadxTask => PeftMethod::MadxTask(MadxTaskConfig {
            language: madx_language(m),
            bottleneck: m.bottleneck,
        }),
    }
}

/// The MAD-X language adapter settings of the method flags.
fn madx_language(m: &crate::MethodFlags) -> MadxLanguageConfig {
    MadxLanguageConfig {
        bottleneck: m.bottleneck,
        invertible_bottleneck: m.invertible_bottleneck,
        activation: match m.adapter_activation {
            ActivationChoice::Relu => AdapterActivation::Relu,
            ActivationChoice::Gelu => AdapterActivation::Gelu,
        },
    }
}

/// Mixed into the seed of the held-out batches' masks.
const EVAL_MASK_SEED: u64 = 0x0065_7661_6C00;

/// `batches` as masked-LM batches when `masking` is given (BERT's rule, each batch with its own
/// seed drawn from `seed`), else unchanged.
pub(crate) fn mask_batches(
    batches: Vec<Batch>,
    masking: Option<&MaskingConfig>,
    seed: u64,
) -> Result<Vec<Batch>> {
    let Some(c) = masking else { return Ok(batches) };
    let mut out = Vec::with_capacity(batches.len());
    for (i, b) in batches.into_iter().enumerate() {
        let find = |name: &str| b.inputs.iter().position(|(n, _)| n == name);
        let (Some(ids_at), Some(mask_at)) = (find("input_ids"), find("attention_mask")) else {
            return Err(CliError::Usage(
                "masked-LM training needs the model's input_ids and attention_mask inputs".into(),
            ));
        };
        let ids = b.inputs[ids_at].1.to_i64_vec("input_ids")?;
        let mask = b.inputs[mask_at].1.to_i64_vec("attention_mask")?;
        let (masked, labels) = mask_tokens(&ids, &mask, c, seed.wrapping_add(i as u64))?;
        let mut inputs = b.inputs;
        let shape = inputs[ids_at].1.shape().to_vec();
        inputs[ids_at].1 = kilotune::Tensor::new(&shape, masked)?;
        out.push(Batch::masked_lm(inputs, labels));
    }
    Ok(out)
}

/// An epoch's evaluation in the task's terms, for the per-epoch line.
fn describe(e: &Evaluation) -> String {
    match (e.accuracy, e.perplexity, e.mse) {
        (Some(acc), _, _) => format!("accuracy {acc:.4} loss {:.4} ({} rows)", e.loss, e.rows),
        (_, Some(ppl), _) => format!(
            "loss {:.4} perplexity {ppl:.4} ({} tokens, {} rows)",
            e.loss,
            e.tokens.unwrap_or(0),
            e.rows
        ),
        (_, _, Some(mse)) => format!("mse {mse:.4} ({} rows)", e.rows),
        _ => format!("loss {:.4} ({} rows)", e.loss, e.rows),
    }
}

/// The task's own measure, as the delta's training summary records it.
fn headline(e: &Evaluation) -> (String, f32) {
    match (e.accuracy, e.perplexity, e.mse) {
        (Some(acc), _, _) => ("accuracy".into(), acc),
        (_, Some(ppl), _) => ("perplexity".into(), ppl),
        (_, _, Some(mse)) => ("mse".into(), mse),
        _ => ("loss".into(), e.loss),
    }
}
