//! `kilotune compare`: the PEFT lecture's comparison table on one classification task. Each
//! row trains one method on the same rows with the same head, seed and schedule, then reports
//! its trainable share, delta size, test accuracy (also as a share of full fine-tuning's), its
//! median training step, and its inference latency as a ratio of the base's, measured in the
//! same run, interleaved.

use std::io::Write;
use std::time::Instant;

use kilotune::delta::{to_bytes, Precision};
use kilotune::ops::Op;
use kilotune::peft::{
    AdapterActivation, AdapterConfig, AdapterPlacement, BitFitConfig, BitFitVariant,
    DiffPruningConfig, Ia3Config,
    LoraConfig, MadxLanguageConfig, MadxTaskConfig, PeftMethod, Pooling, PrefixConfig,
    PromptConfig, TaskHead, TopLayersConfig,
};
use kilotune::train::optim::{Decay, OptimizerConfig, Schedule};
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, Session};

use crate::data::{self, Classes, Encoded, LabelKind, Labels};
use crate::embed::{FeedPlan, TextTokenizer};
use crate::error::{CliError, Result};
use crate::CompareArgs;

/// One row of the table: a label, the method, its peak learning rate.
struct Row {
    label: &'static str,
    method: PeftMethod,
    lr: f32,
}

/// The lecture's rows. The learning rates are each method's usual one for a BERT-sized
/// encoder (full fine-tuning 5e-5 as BERT; LoRA and adapters 5e-4 to 1e-3; BitFit and (IA)3,
/// which train few, scale-like parameters, 2e-3 to 3e-3; soft prompts 1e-2); none was tuned on
/// the test file.
fn rows() -> Vec<Row> {
    let adapter = |placement, m| PeftMethod::Adapter(AdapterConfig { placement, bottleneck: m, activation: AdapterActivation::Relu });
    let lora = |r| PeftMethod::Lora(LoraConfig { r, alpha: 2.0 * r as f32, ..LoraConfig::default() });
    vec![
        Row { label: "full", method: PeftMethod::TopLayers(TopLayersConfig { layers: u32::MAX }), lr: 5e-5 },
        Row { label: "head-only", method: PeftMethod::HeadOnly, lr: 2e-3 },
        Row { label: "top-2", method: PeftMethod::TopLayers(TopLayersConfig { layers: 2 }), lr: 1e-4 },
        Row { label: "bitfit", method: PeftMethod::BitFit(BitFitConfig::default()), lr: 2e-3 },
        Row { label: "bitfit-query-mlp", method: PeftMethod::BitFit(BitFitConfig { variant: BitFitVariant::QueryAndMlp, include_layer_norm: false }), lr: 2e-3 },
        // The head trains at this rate too and must relearn after the projection halfway: at
        // full fine-tuning's 5e-5 the row fell to 0.5905, from 0.6430 at 5e-4.
        Row { label: "diff-0.5%", method: PeftMethod::DiffPruning(DiffPruningConfig { density: 0.005, l0_lambda: 1.0, target_modules: Vec::new() }), lr: 5e-4 },
        Row { label: "houlsby-8", method: adapter(AdapterPlacement::Houlsby, 8), lr: 1e-3 },
        Row { label: "houlsby-64", method: adapter(AdapterPlacement::Houlsby, 64), lr: 1e-3 },
        Row { label: "pfeiffer-8", method: adapter(AdapterPlacement::Pfeiffer, 8), lr: 1e-3 },
        Row { label: "pfeiffer-64", method: adapter(AdapterPlacement::Pfeiffer, 64), lr: 1e-3 },
        Row { label: "prefix-10", method: PeftMethod::Prefix(PrefixConfig { len: 10, mlp_hidden: 128 }), lr: 1e-3 },
        Row { label: "prefix-30", method: PeftMethod::Prefix(PrefixConfig { len: 30, mlp_hidden: 128 }), lr: 1e-3 },
        // Prompt tuning moves a few embeddings far: Lester et al. train them at 0.3 with
        // Adafactor; with AdamW 1e-2, as PEFT's examples.
        Row { label: "prompt-10", method: PeftMethod::Prompt(PromptConfig { len: 10 }), lr: 1e-2 },
        // MAD-X with the paper's sizes (language adapter reduction 2, task adapter 16, the
        // invertible adapter's halves reduced by 2): the language adapter is first trained by
        // masked-LM on the training rows' own texts (the same epochs), then the task adapter.
        Row {
            label: "madx",
            method: PeftMethod::MadxTask(MadxTaskConfig {
                language: MadxLanguageConfig { bottleneck: 192, invertible_bottleneck: 96, activation: AdapterActivation::Relu },
                bottleneck: 24,
            }),
            lr: 1e-3,
        },
        Row { label: "lora-4", method: lora(4), lr: 5e-4 },
        Row { label: "lora-8", method: lora(8), lr: 5e-4 },
        Row { label: "ia3", method: PeftMethod::Ia3(Ia3Config::default()), lr: 3e-3 },
    ]
}

/// The labels `--methods` accepts.
pub fn labels() -> Vec<&'static str> {
    rows().iter().map(|r| r.label).collect()
}

/// What one row measured.
struct Measured {
    label: &'static str,
    method: String,
    trainable: usize,
    delta_bytes: usize,
    accuracy: f32,
    step_secs: f64,
    latency_ratio: f64,
}

/// Parameters of the base: every `Linear`'s weight and bias and every f32 constant
/// (embeddings, norms).
fn base_parameters(base: &Base) -> usize {
    let g = base.graph();
    let linears: usize = g.nodes.iter().filter_map(|n| if let Op::Linear(l) = &n.op { Some(l.parameter_count()) } else { None }).sum();
    let constants: usize = g.values.iter().filter_map(|v| v.constant.as_ref()).filter(|t| t.as_slice::<f32>().is_some()).map(|t| t.len()).sum();
    linears + constants
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median latency of `with` over `without` on `batch`, `rounds` interleaved runs each after one
/// warm-up run.
fn latency_ratio(without: &Session, with: &Session, batch: &Batch, rounds: usize) -> Result<f64> {
    let feed: Vec<(&str, kilotune::Tensor)> = batch.inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let time = |s: &Session| -> Result<f64> {
        let t = Instant::now();
        s.run(&feed)?;
        Ok(t.elapsed().as_secs_f64())
    };
    time(without)?;
    time(with)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        a.push(time(without)?);
        b.push(time(with)?);
    }
    Ok(median(b) / median(a))
}

/// Runs `kilotune compare`.
pub fn compare(args: &CompareArgs, out: &mut dyn Write) -> Result<()> {
    let selected: Vec<Row> = match &args.methods {
        Some(list) => {
            let all = rows();
            let mut picked = Vec::new();
            for want in list {
                let row = all.iter().find(|r| r.label == want).ok_or_else(|| CliError::Usage(format!("unknown row `{want}`; the rows are {}", labels().join(", "))))?;
                picked.push(Row { label: row.label, method: row.method.clone(), lr: row.lr });
            }
            picked
        }
        None => rows(),
    };
    let train_rows = data::read_jsonl(&args.data, Some(args.rows), LabelKind::Class)?;
    let test_rows = data::read_jsonl(&args.test, args.test_rows, LabelKind::Class)?;
    let classes = Classes::from_rows(&train_rows)?;
    let tok = TextTokenizer::load(&args.model.tokenizer, args.model.max_len as usize)?;
    let labels = Labels::Classes(&classes);
    let train_set = Encoded::new(&train_rows, &tok, &labels)?;
    let test_set = Encoded::new(&test_rows, &tok, &labels).map_err(|e| CliError::Usage(format!("{}: {e}", args.test.display())))?;
    let base = Base::load(&args.model.model, args.model.load_options())?;
    let feeds = FeedPlan::for_model(&base)?;
    let batch = args.batch as usize;
    let test_batches = test_set.batches(&(0..test_set.len()).collect::<Vec<_>>(), batch, &tok, &feeds)?;
    let probe = test_batches.first().ok_or_else(|| CliError::Usage(format!("{} has no rows", args.test.display())))?;
    let steps = (train_set.len().div_ceil(batch) * args.epochs as usize) as u64;
    let total = base_parameters(&base);
    let plain = Session::new(base.clone(), args.model.session_config())?;
    let head = TaskHead::Classification { classes: classes.count() as u32, pooling: Pooling::Mean };
    let mut results = Vec::new();
    for row in &selected {
        let config = TrainConfig {
            seed: args.seed,
            threads: args.model.threads,
            optimizer: OptimizerConfig {
                lr: row.lr,
                schedule: Schedule { warmup_steps: (steps as f64 * 0.06).ceil() as u64, total_steps: steps, decay: Decay::Linear },
                ..OptimizerConfig::default()
            },
            ..TrainConfig::default()
        };
        let mut trainer = match &row.method {
            PeftMethod::MadxTask(c) => {
                let lang = train_language(&base, &c.language, &train_set, &tok, &feeds, args, config.clone())?;
                Trainer::madx_task(base.clone(), &lang, c.bottleneck, head.clone(), config)?
            }
            m => Trainer::new(base.clone(), m.clone(), head.clone(), config)?,
        };
        let mut step_secs = Vec::new();
        let t0 = Instant::now();
        for epoch in 0..args.epochs {
            for b in &train_set.batches(&data::shuffled(train_set.len(), args.seed, epoch), batch, &tok, &feeds)? {
                let t = Instant::now();
                trainer.step(b)?;
                step_secs.push(t.elapsed().as_secs_f64());
            }
        }
        let accuracy = trainer.evaluate(&test_batches)?.accuracy.unwrap_or(f32::NAN);
        let delta = trainer.delta();
        let trainable = delta.tensors.iter().filter(|t| !t.name.starts_with("head.")).map(|t| t.shape.iter().map(|&d| d as usize).product::<usize>()).sum();
        let delta_bytes = to_bytes(&delta, Precision::F32).map_err(kilotune::Error::from)?.len();
        let with = Session::with_delta(base.clone(), &delta, args.model.session_config())?;
        let latency = latency_ratio(&plain, &with, probe, args.latency_rounds as usize)?;
        let m = Measured { label: row.label, method: row.method.describe(), trainable, delta_bytes, accuracy, step_secs: median(step_secs), latency_ratio: latency };
        // Not eprintln!: a closed stderr must not stop the run.
        let _ = writeln!(std::io::stderr(), "{}: accuracy {:.4}, {:.1} s", m.label, m.accuracy, t0.elapsed().as_secs_f64());
        results.push(m);
        // Rewritten after every row, so a long run that is stopped still leaves its rows.
        if let Some(path) = &args.out {
            std::fs::write(path, markdown(&results, total, args)).map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?;
        }
    }
    writeln!(out, "{}", markdown(&results, total, args)).map_err(CliError::Stdout)?;
    Ok(())
}

/// A MAD-X language adapter trained by masked-LM on `set`'s texts, as many epochs as the task.
fn train_language(base: &std::sync::Arc<Base>, c: &MadxLanguageConfig, set: &Encoded, tok: &TextTokenizer, feeds: &FeedPlan, args: &CompareArgs, config: TrainConfig) -> Result<kilotune::delta::Delta> {
    let t0 = Instant::now();
    let masking = tok.masking()?;
    let mut lang = Trainer::new(base.clone(), PeftMethod::MadxLanguage(c.clone()), TaskHead::MaskedLm, config)?;
    let batch = args.batch as usize;
    for epoch in 0..args.epochs {
        let batches = set.batches(&data::shuffled(set.len(), args.seed, epoch), batch, tok, feeds)?;
        for b in &crate::train::mask_batches(batches, Some(&masking), args.seed ^ (u64::from(epoch) << 32))? {
            lang.step(b)?;
        }
    }
    let _ = writeln!(std::io::stderr(), "madx: language adapter trained by masked LM in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(lang.delta())
}

/// The table, with the run's settings in a line above it.
fn markdown(results: &[Measured], total: usize, args: &CompareArgs) -> String {
    let full = results.iter().find(|m| m.label == "full").map(|m| m.accuracy);
    let mut s = format!(
        "{} training rows, {} epochs, batch {}, {} tokens, {} threads; base {} parameters; latency on one test batch, median of {} interleaved runs\n\n",
        args.rows, args.epochs, args.batch, args.model.max_len, args.model.threads, total, args.latency_rounds
    );
    s.push_str("| row | method | trainable % | delta bytes (f32) | accuracy | % of full FT | step s | latency vs base |\n|---|---|---|---|---|---|---|---|\n");
    for m in results {
        let of_full = full.map_or("—".into(), |f| format!("{:.1}%", 100.0 * m.accuracy / f));
        s.push_str(&format!(
            "| {} | {} | {:.3}% | {} | {:.4} | {} | {:.3} | {:.2}× |\n",
            m.label,
            m.method,
            100.0 * m.trainable as f64 / total as f64,
            m.delta_bytes,
            m.accuracy,
            of_full,
            m.step_secs,
            m.latency_ratio
        ));
    }
    s
}
