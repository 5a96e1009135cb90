//! `kilotune import hf|gguf`: a Hugging Face checkpoint folder or a llama.cpp GGUF file →
//! a standard ONNX model (and its tokenizer.json beside it).
//!
//! The conversion itself is [`kilotune::import`]; this module reads the arguments, writes the
//! files atomically, loads the result once to confirm what kilotune fuses it into, and reports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kilotune::import::{self, Architecture, Checkpoint, ImportPrecision};
use kilotune::ops::Op;
use kilotune::{Base, LoadOptions};
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::merge::write_atomic;
use crate::{ImportGgufArgs, ImportHfArgs, ImportOutputArgs};

/// Largest tokenizer.json copied, in bytes (large vocabularies stay under 20 MB).
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// Weights above this many bytes go to an external data file: protobuf refuses messages of
/// 2 GiB and more (ONNX Runtime enforces it), and the graph itself needs some room.
const MAX_INLINE_BYTES: usize = 2_000_000_000;

/// Everything an import reports.
#[derive(Serialize, Debug)]
struct Report {
    source: String,
    architecture: &'static str,
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    parameters: usize,
    tensors: usize,
    /// "f32" or "int8".
    precision: &'static str,
    out: String,
    out_bytes: usize,
    /// The weights file beside `out`, when they were written as ONNX external data.
    external_data: Option<ExternalData>,
    /// Reading the checkpoint, in seconds.
    read_seconds: f64,
    /// Building and writing the ONNX model, in seconds.
    write_seconds: f64,
    /// What kilotune fused the written model into (absent with --no-check).
    check: Option<Check>,
    /// Where the tokenizer was written, if it was.
    tokenizer: Option<String>,
    /// Why no tokenizer was written, if none was.
    tokenizer_note: Option<String>,
}

#[derive(Serialize, Debug)]
struct ExternalData {
    file: String,
    bytes: usize,
}

#[derive(Serialize, Debug)]
struct Check {
    linear: usize,
    attention: usize,
    seconds: f64,
}

/// `kilotune import hf DIR --out FILE`.
pub fn hf(args: &ImportHfArgs, out: &mut impl Write) -> Result<()> {
    let t0 = Instant::now();
    let checkpoint = import::hf::read_dir(&args.dir)?;
    let read_seconds = t0.elapsed().as_secs_f64();
    let source = args.dir.join("tokenizer.json");
    let tokenizer = if args.output.no_tokenizer {
        Tokenizer::Skip("--no-tokenizer".into())
    } else if source.is_file() {
        Tokenizer::Write(read_tokenizer(&source)?)
    } else {
        Tokenizer::Skip(format!("{} has no tokenizer.json", args.dir.display()))
    };
    finish(
        &args.dir,
        checkpoint,
        tokenizer,
        Some(&source),
        read_seconds,
        &args.output,
        out,
    )
}

/// `kilotune import gguf FILE --out FILE`.
pub fn gguf(args: &ImportGgufArgs, out: &mut impl Write) -> Result<()> {
    let t0 = Instant::now();
    let g = import::gguf::read_file(&args.file)?;
    let read_seconds = t0.elapsed().as_secs_f64();
    let tokenizer = match (args.output.no_tokenizer, g.tokenizer_json) {
        (true, _) => Tokenizer::Skip("--no-tokenizer".into()),
        (false, Some(json)) => Tokenizer::Write(json.into_bytes()),
        (false, None) => Tokenizer::Skip("the GGUF file holds no tokenizer kilotune can write".into()),
    };
    finish(
        &args.file,
        g.checkpoint,
        tokenizer,
        None,
        read_seconds,
        &args.output,
        out,
    )
}

/// What to do about the tokenizer.
enum Tokenizer {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Write nothing, for this reason.
    Skip(String),
}

fn read_tokenizer(path: &Path) -> Result<Vec<u8>> {
    let io = |source| CliError::Io {
        action: "cannot read",
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_TOKENIZER_BYTES {
        return Err(CliError::Usage(format!(
            "{} is {len} bytes, over the limit of {MAX_TOKENIZER_BYTES}",
            path.display()
        )));
    }
    std::fs::read(path).map_err(io)
}

/// The folder a file is in (`.` for a bare name).
fn folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn finish(
    source: &Path,
    checkpoint: Checkpoint,
    tokenizer: Tokenizer,
    tokenizer_source: Option<&Path>,
    read_seconds: f64,
    o: &ImportOutputArgs,
    out: &mut impl Write,
) -> Result<()> {
    let precision = if o.int8 {
        ImportPrecision::Int8
    } else {
        ImportPrecision::F32
    };
    let (layers, hidden, heads, kv_heads, vocab) = match &checkpoint.arch {
        Architecture::Bert(c) => (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_attention_heads,
            c.vocab_size,
        ),
        Architecture::Llama(c) => (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.vocab_size,
        ),
    };
    let (architecture, parameters, tensors) = (
        checkpoint.architecture_name(),
        checkpoint.parameter_count(),
        checkpoint.tensors.len(),
    );
    let t1 = Instant::now();
    let mut model = import::to_model(&checkpoint, precision)?;
    // The f32 checkpoint is as large as the model: free it before encoding.
    drop(checkpoint);
    let weight_bytes: usize = model.graph.initializer.iter().map(|t| t.raw_data.len()).sum();
    let external_data = if o.external_data || weight_bytes > MAX_INLINE_BYTES {
        let name = o
            .out
            .file_name()
            .map(|n| format!("{}.data", n.to_string_lossy()))
            .ok_or_else(|| CliError::Usage(format!("--out {} does not name a file", o.out.display())))?;
        let data = import::split_external_data(&mut model, &name)?;
        let path = folder(&o.out).join(&name);
        write_atomic(&path, &data)?;
        Some(ExternalData { file: path.display().to_string(), bytes: data.len() })
    } else {
        None
    };
    let bytes = kilotune::onnx::write::encode_model(&model)?;
    drop(model);
    write_atomic(&o.out, &bytes)?;
    let write_seconds = t1.elapsed().as_secs_f64();

    let (tokenizer, tokenizer_note) = match tokenizer {
        Tokenizer::Skip(why) => (None, Some(why)),
        Tokenizer::Write(json) => {
            let dest = o
                .tokenizer_out
                .clone()
                .unwrap_or_else(|| folder(&o.out).join("tokenizer.json"));
            let same = |a: &Path, b: &Path| {
                matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
            };
            if tokenizer_source.is_some_and(|s| same(s, &dest)) {
                (
                    Some(dest.display().to_string()),
                    Some("already in place".into()),
                )
            } else {
                write_atomic(&dest, &json)?;
                (Some(dest.display().to_string()), None)
            }
        }
    };

    let check = if o.no_check {
        None
    } else {
        let t2 = Instant::now();
        let base = Base::load(&o.out, LoadOptions::default())?;
        let count = |f: fn(&Op) -> bool| base.graph().nodes.iter().filter(|n| f(&n.op)).count();
        Some(Check {
            linear: count(|op| matches!(op, Op::Linear(_))),
            attention: count(|op| matches!(op, Op::Attention(_))),
            seconds: t2.elapsed().as_secs_f64(),
        })
    };

    let report = Report {
        source: source.display().to_string(),
        architecture,
        layers,
        hidden,
        heads,
        kv_heads,
        vocab,
        parameters,
        tensors,
        precision: if o.int8 { "int8" } else { "f32" },
        out: o.out.display().to_string(),
        out_bytes: bytes.len(),
        external_data,
        read_seconds,
        write_seconds,
        check,
        tokenizer,
        tokenizer_note,
    };
    if o.json {
        let s = serde_json::to_string(&report).map_err(|e| CliError::Usage(e.to_string()))?;
        writeln!(out, "{s}").map_err(CliError::Stdout)?;
    } else {
        render(&report, out).map_err(CliError::Stdout)?;
    }
    Ok(())
}

fn render(r: &Report, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "source       {} ({})", r.source, r.architecture)?;
    let kv = if r.kv_heads != r.heads {
        format!(", {} kv heads", r.kv_heads)
    } else {
        String::new()
    };
    writeln!(
        out,
        "shape        {} layers, hidden {}, {} heads{kv}, vocabulary {}",
        r.layers, r.hidden, r.heads, r.vocab
    )?;
    writeln!(
        out,
        "parameters   {} in {} tensors (read in {:.2} s)",
        r.parameters, r.tensors, r.read_seconds
    )?;
    writeln!(
        out,
        "wrote        {} ({}, {:.1} MiB, {:.2} s)",
        r.out,
        r.precision,
        r.out_bytes as f64 / (1 << 20) as f64,
        r.write_seconds
    )?;
    if let Some(e) = &r.external_data {
        writeln!(
            out,
            "weights      {} ({:.1} MiB, ONNX external data)",
            e.file,
            e.bytes as f64 / (1 << 20) as f64
        )?;
    }
    if let Some(c) = &r.check {
        writeln!(
            out,
            "check        loads in kilotune: {} Linear, {} Attention fused ({:.2} s)",
            c.linear, c.attention, c.seconds
        )?;
    }
    match (&r.tokenizer, &r.tokenizer_note) {
        (Some(t), Some(note)) => writeln!(out, "tokenizer    {t} ({note})"),
        (Some(t), None) => writeln!(out, "tokenizer    {t}"),
        (None, Some(note)) => writeln!(out, "tokenizer    not written: {note}"),
        (None, None) => Ok(()),
    }
}
