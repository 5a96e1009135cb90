//! `kilotune embed`: texts → token ids → encoder → one mean-pooled vector per text.
//!
//! Texts are sorted by token count before batching, so each batch pads to a length close to
//! its members' own; mean pooling ignores padding, so the order changes speed, not results.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kilotune::{BackendSession, Base, DType, Tensor};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::error::{CliError, Result};
use crate::EmbedArgs;

/// Runs `kilotune embed`.
pub fn embed(args: &EmbedArgs, out: &mut dyn Write) -> Result<()> {
    let texts = read_texts(args)?;
    let tok = TextTokenizer::load(&args.tokenizer, args.max_len as usize)?;
    let encodings = texts
        .iter()
        .map(|t| tok.encode(t))
        .collect::<Result<Vec<_>>>()?;

    let t_load = Instant::now();
    let base = Base::load(&args.model.model, args.model.load_options(true))?;
    let feeds = FeedPlan::for_model(&base)?;
    let threads = match args.model.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut session = BackendSession::open(&args.model.model, base, &args.backend.config(args.model.threads))?;
    let load_time = t_load.elapsed();

    // Without an attention mask the model would attend to padding, and a text's vector would
    // depend on its batch mates: run each text alone instead.
    let batch = if feeds.has_mask {
        args.batch as usize
    } else {
        1
    };
    let mut order: Vec<usize> = (0..encodings.len()).collect();
    order.sort_by_key(|&i| encodings[i].get_ids().len());
    let batches: Vec<&[usize]> = order.chunks(batch).collect();

    let progress = if batches.len() > 1 && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(batches.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} batches, {elapsed} elapsed, {eta} left",
            )
            .expect("the template is a valid literal"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let t_run = Instant::now();
    let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); encodings.len()];
    let mut tokens = 0usize;
    for members in &batches {
        let group: Vec<&Encoding> = members.iter().map(|&i| &encodings[i]).collect();
        let (padded, inputs) = pad_and_feed(&tok, &feeds, &group)?;
        tokens += padded.mask.iter().filter(|&&m| m).count();
        let outputs = session.run(&inputs)?;
        let hidden = pick_hidden(&outputs)?;
        let (seq, dim) = hidden_dims(hidden, &padded)?;
        let data = hidden.typed::<f32>("embedding output")?;
        let pooled = mean_pool(data, &padded.mask, seq, dim);
        for (row, &i) in pooled.chunks_exact(dim).zip(members.iter()) {
            let mut v = row.to_vec();
            if args.normalize {
                l2_normalize(&mut v);
            }
            vectors[i] = v;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let run_time = t_run.elapsed();

    let dim = vectors.first().map_or(0, Vec::len);
    if let Some(path) = &args.out {
        let flat: Vec<f32> = vectors.concat();
        let tensor = Tensor::new(&[vectors.len(), dim], flat)?;
        kilotune::npy::write(path, &tensor)?;
        note(&format!(
            "wrote {} [{}, {dim}]",
            path.display(),
            vectors.len()
        ));
    } else {
        for v in &vectors {
            serde_json::to_writer(&mut *out, v).map_err(|e| CliError::Stdout(e.into()))?;
            writeln!(out).map_err(CliError::Stdout)?;
        }
    }
    note(&format!(
        "embedded {} texts ({tokens} tokens, {} batches) in {:.1} ms on {} with {} threads; load {:.1} ms",
        vectors.len(),
        batches.len(),
        run_time.as_secs_f64() * 1e3,
        args.backend.backend,
        threads,
        load_time.as_secs_f64() * 1e3,
    ));
    Ok(())
}

/// A line for the user on stderr: stdout carries only the vectors.
fn note(msg: &str) {
    // A closed stderr is no reason to fail a run whose results were written.
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The texts from the arguments or from `--file`, one per line.
fn read_texts(args: &EmbedArgs) -> Result<Vec<String>> {
    let texts = match &args.file {
        None => args.texts.clone(),
        Some(path) => {
            let read_err = |source| CliError::Io {
                action: "cannot read",
                path: path.clone(),
                source,
            };
            let content = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).map_err(read_err)?;
                s
            } else {
                std::fs::read_to_string(path).map_err(read_err)?
            };
            // Blank lines are kept: vector i is line i, which a caller may rely on.
            content.lines().map(str::to_owned).collect()
        }
    };
    if texts.is_empty() {
        return Err(CliError::Usage(match &args.file {
            Some(path) => format!("{} holds no lines to embed", path.display()),
            None => "no texts to embed: give TEXT arguments or --file FILE".into(),
        }));
    }
    Ok(texts)
}

/// Pads `group` (encodings from `tok`) to its longest member and builds the model's inputs
/// from it as `feeds` declares them: the tokenization path `embed`, `train` and `eval` share.
pub(crate) fn pad_and_feed<'a>(
    tok: &TextTokenizer,
    feeds: &'a FeedPlan,
    group: &[&Encoding],
) -> Result<(PaddedBatch, Vec<(&'a str, Tensor)>)> {
    let padded = PaddedBatch::new(group, tok.pad_id, tok.pad_type_id);
    let inputs = feeds.inputs(&padded)?;
    Ok((padded, inputs))
}

/// A Hugging Face tokenizer set up for `embed`: truncation to `--max-len`, no padding of its
/// own (batches are padded here, to their longest member).
pub(crate) struct TextTokenizer {
    tokenizer: Tokenizer,
    path: std::path::PathBuf,
    pad_id: u32,
    pad_type_id: u32,
}

impl TextTokenizer {
    pub(crate) fn load(path: &Path, max_len: usize) -> Result<TextTokenizer> {
        let err = |e: tokenizers::Error| CliError::Tokenizer {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let mut tokenizer = Tokenizer::from_file(path).map_err(err)?;
        // The file's own padding (often fixed at 128) names the pad token; BERT files without
        // one still have `[PAD]`, and 0 is BERT's id for it.
        let (pad_id, pad_type_id) = match tokenizer.get_padding() {
            Some(p) => (p.pad_id, p.pad_type_id),
            None => (tokenizer.token_to_id("[PAD]").unwrap_or(0), 0),
        };
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..TruncationParams::default()
            }))
            .map_err(err)?;
        Ok(TextTokenizer {
            tokenizer,
            path: path.to_owned(),
            pad_id,
            pad_type_id,
        })
    }

    /// BERT's masking settings for this tokenizer: its `[MASK]` id, the special tokens never
    /// masked (`[CLS]`, `[SEP]`, `[PAD]`), and its vocabulary for random replacements.
    pub(crate) fn masking(&self) -> Result<kilotune::train::mlm::MaskingConfig> {
        let mask_id = self.tokenizer.token_to_id("[MASK]").ok_or_else(|| CliError::Tokenizer {
            path: self.path.clone(),
            reason: "masked-LM training needs a `[MASK]` token".into(),
        })?;
        let special_ids = ["[CLS]", "[SEP]", "[PAD]"]
            .iter()
            .filter_map(|t| self.tokenizer.token_to_id(t))
            .chain([self.pad_id])
            .map(i64::from)
            .collect();
        Ok(kilotune::train::mlm::MaskingConfig {
            probability: 0.15,
            mask_id: i64::from(mask_id),
            special_ids,
            vocab: self.tokenizer.get_vocab_size(true),
        })
    }

    pub(crate) fn encode(&self, text: &str) -> Result<Encoding> {
        // One text at a time on this thread: `encode_batch` would use rayon's global pool and
        // ignore `--threads`, and tokenizing costs little next to the model.
        self.tokenizer
            .encode(text, true)
            .map_err(|e| CliError::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })
    }
}

/// Token ids of a batch, right-padded to its longest member, row-major [batch, seq].
pub(crate) struct PaddedBatch {
    pub(crate) batch: usize,
    pub(crate) seq: usize,
    ids: Vec<i64>,
    type_ids: Vec<i64>,
    pub(crate) mask: Vec<bool>,
}

impl PaddedBatch {
    fn new(group: &[&Encoding], pad_id: u32, pad_type_id: u32) -> PaddedBatch {
        let batch = group.len();
        let seq = group.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = vec![i64::from(pad_id); batch * seq];
        let mut type_ids = vec![i64::from(pad_type_id); batch * seq];
        let mut mask = vec![false; batch * seq];
        for (row, e) in group.iter().enumerate() {
            let at = row * seq;
            for (j, (&id, &ty)) in e.get_ids().iter().zip(e.get_type_ids()).enumerate() {
                ids[at + j] = i64::from(id);
                type_ids[at + j] = i64::from(ty);
                mask[at + j] = true;
            }
        }
        PaddedBatch {
            batch,
            seq,
            ids,
            type_ids,
            mask,
        }
    }
}

/// Which of the model's inputs `embed` fills, and with what element type.
pub(crate) struct FeedPlan {
    /// (input name, what fills it, declared element type) in declaration order.
    feeds: Vec<(String, Source, DType)>,
    pub(crate) has_mask: bool,
}

#[derive(Clone, Copy)]
enum Source {
    Ids,
    Mask,
    TypeIds,
}

impl FeedPlan {
    /// Feeds exactly the inputs the model declares; refuses one it cannot fill.
    pub(crate) fn for_model(base: &Base) -> Result<FeedPlan> {
        let g = base.graph();
        let mut feeds = Vec::new();
        for info in &g.inputs {
            let name = g.values[info.value].name.clone();
            let source = match name.as_str() {
                "input_ids" => Source::Ids,
                "attention_mask" => Source::Mask,
                "token_type_ids" => Source::TypeIds,
                _ => {
                    return Err(CliError::Usage(format!(
                        "the model declares input `{name}`, which embed cannot fill (it fills input_ids, \
                         attention_mask and token_type_ids); use `kilotune run` with .npy inputs"
                    )))
                }
            };
            if !matches!(info.dtype, DType::I64 | DType::I32) {
                return Err(CliError::Usage(format!(
                    "the model declares input `{name}` as {}; embed feeds integer token ids",
                    crate::inspect::dtype_name(info.dtype)
                )));
            }
            feeds.push((name, source, info.dtype));
        }
        if !feeds.iter().any(|(_, s, _)| matches!(s, Source::Ids)) {
            return Err(CliError::Usage(
                "the model has no `input_ids` input; embed needs a text encoder".into(),
            ));
        }
        let has_mask = feeds.iter().any(|(_, s, _)| matches!(s, Source::Mask));
        Ok(FeedPlan { feeds, has_mask })
    }

    fn inputs<'a>(&'a self, b: &PaddedBatch) -> Result<Vec<(&'a str, Tensor)>> {
        let shape = [b.batch, b.seq];
        self.feeds
            .iter()
            .map(|(name, source, dtype)| {
                let values: Vec<i64> = match source {
                    Source::Ids => b.ids.clone(),
                    Source::TypeIds => b.type_ids.clone(),
                    Source::Mask => b.mask.iter().map(|&m| i64::from(m)).collect(),
                };
                let t = match dtype {
                    // Token ids come from a vocabulary far below i32::MAX.
                    DType::I32 => Tensor::new(&shape, values.iter().map(|&v| v as i32).collect()),
                    _ => Tensor::new(&shape, values),
                }?;
                Ok((name.as_str(), t))
            })
            .collect()
    }
}

/// The hidden states: the output named `last_hidden_state` if there is one, else the first.
pub(crate) fn pick_hidden(outputs: &kilotune::Outputs) -> Result<&Tensor> {
    outputs
        .get("last_hidden_state")
        .or_else(|| outputs.0.first().map(|(_, t)| t))
        .ok_or_else(|| CliError::Usage("the model has no outputs".into()))
}

/// Checks the hidden states are f32 [batch, seq, hidden] for this batch; returns (seq, hidden).
pub(crate) fn hidden_dims(hidden: &Tensor, b: &PaddedBatch) -> Result<(usize, usize)> {
    match *hidden.shape() {
        [nb, ns, dim] if nb == b.batch && ns == b.seq && hidden.dtype() == DType::F32 => Ok((ns, dim)),
        _ => Err(CliError::Usage(format!(
            "the model's hidden-state output (`last_hidden_state`, else the first) is {} {:?}; embed needs f32 [{}, {}, hidden]",
            crate::inspect::dtype_name(hidden.dtype()),
            hidden.shape(),
            b.batch,
            b.seq
        ))),
    }
}

/// Mean of `hidden` ([batch, seq, dim], row-major) over the positions where `mask`
/// ([batch, seq]) is set: one `dim` vector per row, [batch, dim] flat. A row with no set
/// position pools to zeros rather than dividing by zero.
pub fn mean_pool(hidden: &[f32], mask: &[bool], seq: usize, dim: usize) -> Vec<f32> {
    let batch = mask.len().checked_div(seq).unwrap_or(0);
    debug_assert_eq!(hidden.len(), batch * seq * dim);
    let mut out = vec![0f32; batch * dim];
    for (b, acc) in out.chunks_exact_mut(dim).enumerate() {
        let mut count = 0usize;
        for s in 0..seq {
            if mask[b * seq + s] {
                let row = &hidden[(b * seq + s) * dim..][..dim];
                acc.iter_mut().zip(row).for_each(|(a, &h)| *a += h);
                count += 1;
            }
        }
        if count > 0 {
            let inv = 1.0 / count as f32;
            acc.iter_mut().for_each(|a| *a *= inv);
        }
    }
    out
}

/// Scales `v` to unit Euclidean length (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_ignores_masked_positions() {
        // batch 2, seq 3, dim 2; row 0 keeps positions 0 and 1, row 1 keeps only position 0.
        let hidden = [
            1.0, 2.0, 3.0, 4.0, 100.0, 100.0, //
            5.0, -6.0, 100.0, 100.0, 100.0, 100.0,
        ];
        let mask = [true, true, false, true, false, false];
        assert_eq!(mean_pool(&hidden, &mask, 3, 2), [2.0, 3.0, 5.0, -6.0]);
    }

    #[test]
    fn mean_pool_of_an_all_masked_row_is_zero() {
        assert_eq!(mean_pool(&[7.0, 8.0], &[false], 1, 2), [0.0, 0.0]);
        assert!(mean_pool(&[], &[], 0, 4).is_empty());
    }

    #[test]
    fn l2_normalize_gives_unit_length() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0, 0.0]);
    }

    #[test]
    fn padded_batch_pads_right_and_masks_padding() {
        let short = Encoding::new(
            vec![5, 6],
            vec![0, 0],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            Default::default(),
        );
        let long = Encoding::new(
            vec![7, 8, 9],
            vec![0, 1, 1],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            Default::default(),
        );
        let b = PaddedBatch::new(&[&short, &long], 0, 0);
        assert_eq!((b.batch, b.seq), (2, 3));
        assert_eq!(b.ids, [5, 6, 0, 7, 8, 9]);
        assert_eq!(b.type_ids, [0, 0, 0, 0, 1, 1]);
        assert_eq!(b.mask, [true, true, false, true, true, true]);
    }
}
