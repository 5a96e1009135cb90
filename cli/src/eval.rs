//! `kilotune eval`: a trained delta's classifier on labelled JSON lines → accuracy and loss.
//!
//! The base runs with the delta applied; the hidden states are pooled over the attention mask
//! (or the first token, for a CLS head) and the delta's `head.weight` [classes × hidden] and
//! `head.bias` [classes] give the logits.

use std::io::Write;

use kilotune::delta::{self, LoadLimits};
use kilotune::peft::{Pooling, TaskHead};
use kilotune::{Base, DType, Session};
use tokenizers::Encoding;

use crate::data::{self, Classes, Encoded};
use crate::embed::{hidden_dims, mean_pool, pad_and_feed, pick_hidden, FeedPlan, TextTokenizer};
use crate::error::{CliError, Result};
use crate::EvalArgs;

/// Runs `kilotune eval`.
pub fn eval(args: &EvalArgs, out: &mut dyn Write) -> Result<()> {
    let Some(delta_path) = &args.delta else {
        return Err(CliError::Usage(
            "eval needs a delta with a classification head (--delta FILE.ktd from `kilotune train`)".into(),
        ));
    };
    let base = Base::load(&args.model.model, args.model.load_options())?;
    let delta = delta::load(
        delta_path,
        Some(&base.fingerprint()),
        &LoadLimits::default(),
    )
    .map_err(kilotune::Error::from)?;
    let no_head = || {
        CliError::Usage(format!(
            "eval needs a delta with a classification head; {} has none",
            delta_path.display()
        ))
    };
    let Some(TaskHead::Classification { classes, pooling }) = delta.head.clone() else {
        return Err(no_head());
    };
    let classes = classes as usize;
    let weight = delta.tensor("head.weight").ok_or_else(no_head)?;
    let bias = delta.tensor("head.bias").ok_or_else(no_head)?;
    let hidden = match weight.shape[..] {
        [c, h] if c as usize == classes && bias.shape[..] == [c] => h as usize,
        _ => {
            return Err(CliError::Usage(format!(
                "{}: head.weight is {:?} and head.bias {:?}; expected [{classes}, hidden] and [{classes}]",
                delta_path.display(),
                weight.shape,
                bias.shape
            )))
        }
    };
    let weight = weight.to_f32().map_err(kilotune::Error::from)?;
    let bias = bias.to_f32().map_err(kilotune::Error::from)?;

    let rows = data::read_jsonl(&args.data, args.limit)?;
    let rule = Classes::from_rows(&rows)?;
    // A named rule counts the classes in this file: it matches training only if all are present.
    if matches!(rule, Classes::Named(_)) && rule.count() != classes {
        return Err(CliError::Usage(format!(
            "{} has {} distinct labels ({}), the delta's head {classes} classes; string labels map to ids in \
             sorted order, so the file must hold every class",
            args.data.display(),
            rule.count(),
            rule.describe()
        )));
    }
    let rule = match rule {
        Classes::Ids { .. } => Classes::Ids { count: classes },
        named => named,
    };
    let tok = TextTokenizer::load(&args.model.tokenizer, args.model.max_len as usize)?;
    let set = Encoded::new(&rows, &tok, &rule)?;
    let feeds = FeedPlan::for_model(&base)?;
    let session = Session::with_delta(base, &delta, args.model.session_config())?;

    let (mut right, mut loss) = (0usize, 0f64);
    let order: Vec<usize> = (0..set.len()).collect();
    for members in order.chunks(args.batch as usize) {
        let group: Vec<&Encoding> = members.iter().map(|&i| &set.encodings[i]).collect();
        let (padded, inputs) = pad_and_feed(&tok, &feeds, &group)?;
        let outputs = session.run(&inputs)?;
        let h = pick_hidden(&outputs)?;
        let (seq, dim) = hidden_dims(h, &padded)?;
        if h.dtype() != DType::F32 || dim != hidden {
            return Err(CliError::Usage(format!(
                "the model's hidden size is {dim}, the delta's head expects {hidden}"
            )));
        }
        let data = h.typed::<f32>("hidden states")?;
        let pooled = match pooling {
            Pooling::Mean => mean_pool(data, &padded.mask, seq, dim),
            Pooling::Cls => data
                .chunks_exact(seq * dim)
                .flat_map(|r| r[..dim].iter().copied())
                .collect(),
        };
        for (p, &i) in pooled.chunks_exact(dim).zip(members) {
            let logits: Vec<f32> = weight
                .chunks_exact(dim)
                .zip(&bias)
                .map(|(w, b)| w.iter().zip(p).map(|(a, x)| a * x).sum::<f32>() + b)
                .collect();
            let (l, best) = cross_entropy_argmax(&logits, set.labels[i]);
            loss += l;
            right += usize::from(best == set.labels[i]);
        }
    }
    let n = set.len();
    let accuracy = right as f64 / n as f64;
    let loss = loss / n as f64;
    if args.json {
        let v =
            serde_json::json!({"accuracy": accuracy, "loss": loss, "rows": n, "classes": classes});
        writeln!(out, "{v}").map_err(CliError::Stdout)?;
    } else {
        writeln!(out, "accuracy: {accuracy:.4}\nloss: {loss:.4}\nrows: {n}")
            .map_err(CliError::Stdout)?;
    }
    Ok(())
}

/// The softmax cross-entropy of `logits` against `label`, and the argmax (first on ties).
fn cross_entropy_argmax(logits: &[f32], label: usize) -> (f64, usize) {
    let best = logits
        .iter()
        .enumerate()
        .fold(0, |bi, (i, &v)| if v > logits[bi] { i } else { bi });
    let max = f64::from(logits[best]);
    let lse = max
        + logits
            .iter()
            .map(|&v| (f64::from(v) - max).exp())
            .sum::<f64>()
            .ln();
    (lse - f64::from(logits[label]), best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_and_argmax() {
        let (l, best) = cross_entropy_argmax(&[0.0, 0.0], 1);
        assert!((l - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(best, 0);
        let (l, best) = cross_entropy_argmax(&[1.0, 3.0, 2.0], 1);
        assert_eq!(best, 1);
        assert!(l > 0.0 && l < 1.0);
    }
}
