//! `kilotune eval`: a trained delta on JSON lines of its task → accuracy and loss (classifier),
//! loss and perplexity (causal or masked LM) or mean squared error (regressor). A MAD-X task
//! delta can run on another language adapter (`--lang-adapter`).
//!
//! The base runs with the delta applied and the delta's head on top, through the runtime's
//! `TaskSession`: the same code the trainer evaluates with, so the numbers match training's.

use std::io::Write;

use kilotune::delta::{self, LoadLimits};
use kilotune::peft::TaskHead;
use kilotune::train::evaluate::TaskSession;
use kilotune::Base;

use crate::data::{self, Classes, Encoded, LabelKind, Labels};
use crate::embed::{FeedPlan, TextTokenizer};
use crate::error::{CliError, Result};
use crate::EvalArgs;

/// Runs `kilotune eval`.
pub fn eval(args: &EvalArgs, out: &mut dyn Write) -> Result<()> {
    let Some(delta_path) = &args.delta else {
        return Err(CliError::Usage(
            "eval needs a delta with a task head (--delta FILE.ktd from `kilotune train`)".into(),
        ));
    };
    let base = Base::load(&args.model.model, args.model.load_options())?;
    let delta = delta::load(
        delta_path,
        Some(&base.fingerprint()),
        &LoadLimits::default(),
    )
    .map_err(kilotune::Error::from)?;
    let delta = match &args.lang_adapter {
        Some(path) => {
            let lang = delta::load(path, Some(&base.fingerprint()), &LoadLimits::default())
                .map_err(kilotune::Error::from)?;
            kilotune::peft::madx::with_language(&delta, &lang)?
        }
        None => delta,
    };
    let Some(task) = delta.head.clone() else {
        return Err(CliError::Usage(format!(
            "eval needs a delta with a task head; {} has none",
            delta_path.display()
        )));
    };
    let kind = match task {
        TaskHead::Classification { .. } => LabelKind::Class,
        TaskHead::Regression { .. } => LabelKind::Number,
        TaskHead::CausalLm | TaskHead::MaskedLm => LabelKind::None,
    };
    let rows = data::read_jsonl(&args.data, args.limit, kind)?;
    let rule = match task {
        TaskHead::Classification { classes, .. } => {
            Some(class_rule(args, &rows, classes as usize)?)
        }
        _ => None,
    };
    let labels = match (&rule, &task) {
        (Some(rule), _) => Labels::Classes(rule),
        (None, TaskHead::Regression { .. }) => Labels::Values,
        _ => Labels::NextTokens,
    };
    let tok = TextTokenizer::load(&args.model.tokenizer, args.model.max_len as usize)?;
    let set = Encoded::new(&rows, &tok, &labels)?;
    let feeds = FeedPlan::for_model(&base)?;
    let session = TaskSession::new(base, &delta, args.model.session_config())?.on_backend(args.backend)?;
    let order: Vec<usize> = (0..set.len()).collect();
    let batches = set.batches(&order, args.batch as usize, &tok, &feeds)?;
    // A masked LM (a MAD-X language adapter) is scored on BERT-masked texts, fixed by a seed.
    let masking = match task {
        TaskHead::MaskedLm => Some(tok.masking()?),
        _ => None,
    };
    let batches = crate::train::mask_batches(batches, masking.as_ref(), 0)?;
    let e = session.evaluate(&batches)?;

    let line = match task {
        TaskHead::Classification { classes, .. } => {
            let accuracy = e.accuracy.unwrap_or(0.0);
            if args.json {
                serde_json::json!({"task": "classify", "accuracy": accuracy, "loss": e.loss, "rows": e.rows, "classes": classes})
                    .to_string()
            } else {
                format!(
                    "accuracy: {accuracy:.4}\nloss: {:.4}\nrows: {}",
                    e.loss, e.rows
                )
            }
        }
        TaskHead::CausalLm | TaskHead::MaskedLm => {
            let (ppl, tokens) = (e.perplexity.unwrap_or(f32::NAN), e.tokens.unwrap_or(0));
            let name = if task == TaskHead::CausalLm { "causal-lm" } else { "mlm" };
            if args.json {
                serde_json::json!({"task": name, "loss": e.loss, "perplexity": ppl, "tokens": tokens, "rows": e.rows})
                    .to_string()
            } else {
                format!(
                    "loss: {:.4}\nperplexity: {ppl:.4}\ntokens: {tokens}\nrows: {}",
                    e.loss, e.rows
                )
            }
        }
        TaskHead::Regression { outputs } => {
            let mse = e.mse.unwrap_or(e.loss);
            if args.json {
                serde_json::json!({"task": "regress", "mse": mse, "rows": e.rows, "outputs": outputs})
                    .to_string()
            } else {
                format!("mse: {mse:.6}\nrows: {}", e.rows)
            }
        }
    };
    writeln!(out, "{line}").map_err(CliError::Stdout)
}

/// The label rule for a classifier with `classes` classes: string labels must name exactly
/// that many classes in this file (the rule counts what it sees), integer labels are ids.
fn class_rule(args: &EvalArgs, rows: &[data::Row], classes: usize) -> Result<Classes> {
    let rule = Classes::from_rows(rows)?;
    if matches!(rule, Classes::Named(_)) && rule.count() != classes {
        return Err(CliError::Usage(format!(
            "{} has {} distinct labels ({}), the delta's head {classes} classes; string labels map to ids in \
             sorted order, so the file must hold every class",
            args.data.display(),
            rule.count(),
            rule.describe()
        )));
    }
    Ok(match rule {
        Classes::Ids { .. } => Classes::Ids { count: classes },
        named => named,
    })
}
