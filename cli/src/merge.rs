//! `kilotune merge`: fold a user's delta into its base and write the merged model as ONNX.
//!
//! The delta is checked against the base's fingerprint, merged (see
//! `kilotune::peft::merge`), and the shipped ONNX file is rewritten with the merged weights. The
//! file is written atomically, then loaded again and run beside the unmerged delta on a small
//! probe batch, so a merge that does not compute what the delta computes is reported at once.

use std::io::Write;
use std::path::{Path, PathBuf};

use kilotune::delta::{self, DeltaError, LoadLimits};
use kilotune::graph::Dim;
use kilotune::ops::Op;
use kilotune::peft::merge::{merge_onnx, LayerAction, MergeOptions, MergeReport};
use kilotune::{Base, DType, LoadOptions, Session, SessionConfig, Tensor, WeightFormat};
use serde::Serialize;

use crate::error::{CliError, Result};
use crate::MergeArgs;

/// Everything `merge` reports.
#[derive(Serialize, Debug)]
struct Report {
    model: String,
    delta: String,
    out: String,
    bytes: u64,
    method: String,
    layers_merged_f32: usize,
    int8_side_paths: usize,
    int8_requantized: usize,
    biases: usize,
    constants: usize,
    /// The head's output, when written.
    head_output: Option<String>,
    /// Present when int8 layers were requantized.
    requantization: Option<Requantization>,
    /// The written file run beside the unmerged delta; absent with `--no-check` or when the
    /// model's inputs are not ones a probe can be made for.
    check: Option<Check>,
}

#[derive(Serialize, Debug)]
struct Requantization {
    layers: Vec<LayerError>,
    max_abs_dw: f32,
    rel_frobenius: f64,
    probe_max_abs_dy: f32,
}

#[derive(Serialize, Debug)]
struct LayerError {
    module: String,
    scheme: String,
    max_abs_dw: f32,
    rel_frobenius: f64,
    probe_max_abs_dy: f32,
}

#[derive(Serialize, Debug)]
struct Check {
    batch: usize,
    seq: usize,
    /// The largest |merged − unmerged| over every base output.
    max_abs_diff: f32,
    /// The mean |merged − unmerged| over the output where the largest occurs (int8 models
    /// re-quantize every activation, so one flipped rounding can make the largest difference
    /// much larger than the typical one).
    mean_abs_diff: f32,
    /// The output where it occurs.
    output: String,
}

/// Runs `kilotune merge`.
pub fn merge(args: &MergeArgs, out: &mut dyn Write) -> Result<()> {
    refuse_overwriting_the_base(&args.model, &args.out)?;
    let bytes = std::fs::read(&args.model).map_err(|source| CliError::Io {
        action: "cannot read",
        path: args.model.clone(),
        source,
    })?;
    let base = Base::load(&args.model, LoadOptions::default())?;
    let user = match delta::load(
        &args.delta,
        Some(&base.fingerprint()),
        &LoadLimits::default(),
    ) {
        Ok(d) => d,
        Err(e @ DeltaError::WrongBase { .. }) => {
            return Err(wrong_base(&args.model, &args.delta, e))
        }
        Err(e) => return Err(kilotune::Error::from(e).into()),
    };
    let options = MergeOptions {
        requantize_int8: args.requantize,
        write_head: !args.no_head,
    };
    let merged = merge_onnx(&bytes, &base, &user, &options)?;
    drop(bytes);
    if merged.external_data {
        same_folder(&args.model, &args.out)?;
    }
    write_atomic(&args.out, &merged.bytes)?;

    let check = if args.no_check {
        None
    } else {
        check(&base, &user, &args.out, args.threads)?
    };
    let report = gather(
        args,
        &user,
        &merged.report,
        merged.head_output,
        merged.bytes.len() as u64,
        check,
    );
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(|e| CliError::Stdout(e.into()))?;
        writeln!(out).map_err(CliError::Stdout)
    } else {
        render(&report, out).map_err(CliError::Stdout)
    }
}

/// A delta trained with `--int8` on an f32 model is bound to the model quantized at load, not to
/// the weights the file ships; say so rather than only that the fingerprints differ.
fn wrong_base(model: &Path, delta_path: &Path, e: DeltaError) -> CliError {
    let int8 = LoadOptions {
        weights: WeightFormat::Int8,
        ..LoadOptions::default()
    };
    let trained_int8 = Base::load(model, int8)
        .ok()
        .zip(delta::load(delta_path, None, &LoadLimits::default()).ok());
    match trained_int8 {
        Some((b, d)) if b.fingerprint() == d.base_fingerprint => CliError::Usage(format!(
            "{} was trained on {} quantized at load (--int8); merge writes the weights the file \
             ships, so it cannot merge that delta (run it with `kilotune run --int8 --delta`)",
            delta_path.display(),
            model.display()
        )),
        _ => kilotune::Error::from(e).into(),
    }
}

fn canonical(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok()
}

/// The folder a path lives in (`.` for a bare file name).
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writing over the base would leave every delta bound to it without its base.
fn refuse_overwriting_the_base(model: &Path, out: &Path) -> Result<()> {
    if let (Some(m), Some(o)) = (canonical(model), canonical(out)) {
        if m == o {
            return Err(CliError::Usage(format!(
                "--out {} is the base model itself; write the merged model to another file",
                out.display()
            )));
        }
    }
    Ok(())
}

/// A model with external data refers to its weight files by paths relative to itself.
fn same_folder(model: &Path, out: &Path) -> Result<()> {
    let (m, o) = (canonical(folder(model)), canonical(folder(out)));
    if m.is_none() || m != o {
        return Err(CliError::Usage(format!(
            "the model keeps weights in external data files, which the merged file refers to by \
             relative path: write --out into the model's folder ({})",
            folder(model).display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` without ever leaving a partial file there: a new temporary file in
/// the same folder, flushed to disk, renamed over `path`, then the folder flushed so the rename
/// survives a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| CliError::Io {
            action,
            path,
            source,
        }
    };
    let name = path
        .file_name()
        .ok_or_else(|| CliError::Usage(format!("--out {} does not name a file", path.display())))?;
    let dir = folder(path);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io("cannot create", &tmp))?;
        f.write_all(bytes).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot flush", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("cannot rename the temporary file over", path))
    })();
    if let Err(e) = written {
        // Best effort: the error worth reporting is the one that stopped the write.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Opening a folder to flush it works on Unix; elsewhere the rename is what we have.
    if cfg!(unix) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot flush the folder", dir))?;
    }
    Ok(())
}

/// A probe batch: its batch size, sequence length and named inputs.
type Probe = (usize, usize, Vec<(String, Tensor)>);

/// A probe batch for models whose inputs are all `[batch, seq]` int64 token inputs:
/// ids within the vocabulary, a mask of ones, zero token types, positions 0..seq.
fn probe_feeds(base: &Base) -> Option<Probe> {
    let g = base.graph();
    let is_ids = |name: &str| {
        !["mask", "type", "position"]
            .iter()
            .any(|w| name.contains(w))
    };
    // The token embedding table (fed straight from the ids input) bounds the ids; without one
    // in sight, ids below 30 are valid for any real vocabulary.
    let vocab = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Embedding { .. }))
        .filter(|n| {
            let ids = n.inputs.get(1).copied().flatten();
            g.inputs
                .iter()
                .any(|i| Some(i.value) == ids && is_ids(&g.values[i.value].name))
        })
        .filter_map(|n| g.input_constant(n, 0).map(|t| t.shape()[0]))
        .min()
        .unwrap_or(30)
        .clamp(2, 1000);
    let (mut batch, mut seq) = (2usize, 8usize);
    for info in &g.inputs {
        if info.dtype != DType::I64 || info.dims.len() != 2 {
            return None;
        }
        if let Dim::Fixed(b) = info.dims[0] {
            batch = b;
        }
        if let Dim::Fixed(s) = info.dims[1] {
            seq = s;
        }
    }
    let mut feeds = Vec::new();
    for info in &g.inputs {
        let name = g.values[info.value].name.clone();
        let values: Vec<i64> = (0..batch * seq)
            .map(|i| {
                if is_ids(&name) {
                    1 + ((i * 7 + 3) % (vocab - 1)) as i64
                } else if name.contains("mask") {
                    1
                } else if name.contains("position") {
                    (i % seq) as i64
                } else {
                    0
                }
            })
            .collect();
        feeds.push((name, Tensor::new(&[batch, seq], values).ok()?));
    }
    Some((batch, seq, feeds))
}

/// Loads the written file and runs it beside the unmerged delta on a probe batch.
fn check(
    base: &std::sync::Arc<Base>,
    user: &delta::Delta,
    written: &Path,
    threads: usize,
) -> Result<Option<Check>> {
    let Some((batch, seq, feeds)) = probe_feeds(base) else {
        return Ok(None);
    };
    let feeds: Vec<(&str, Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let config = SessionConfig { threads };
    let unmerged = Session::with_delta(base.clone(), user, config.clone())?.run(&feeds)?;
    let reloaded = Base::load(written, LoadOptions::default())?;
    let merged = Session::new(reloaded, config)?.run(&feeds)?;
    let mut worst = (0f32, 0f32, String::new());
    for (name, a) in &unmerged.0 {
        let b = merged
            .get(name)
            .ok_or_else(|| CliError::Usage(format!("the merged file lost the output `{name}`")))?;
        let diffs: Vec<f32> = a
            .to_f32_vec()
            .iter()
            .zip(b.to_f32_vec())
            .map(|(x, y)| (x - y).abs())
            .collect();
        let max = diffs.iter().copied().fold(0f32, f32::max);
        if max >= worst.0 {
            let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len().max(1) as f64;
            worst = (max, mean as f32, name.clone());
        }
    }
    Ok(Some(Check {
        batch,
        seq,
        max_abs_diff: worst.0,
        mean_abs_diff: worst.1,
        output: worst.2,
    }))
}

fn gather(
    args: &MergeArgs,
    user: &delta::Delta,
    r: &MergeReport,
    head_output: Option<String>,
    bytes: u64,
    check: Option<Check>,
) -> Report {
    let (f32_layers, side, requantized) = r.counts();
    let requantization = (requantized > 0).then(|| Requantization {
        layers: r
            .layers
            .iter()
            .filter_map(|l| match l.action {
                LayerAction::Requantized(scheme) => Some(LayerError {
                    module: l.module.clone(),
                    scheme: format!("{scheme:?}"),
                    max_abs_dw: l.max_abs_dw,
                    rel_frobenius: l.rel_frobenius(),
                    probe_max_abs_dy: l.probe_max_abs_dy,
                }),
                _ => None,
            })
            .collect(),
        max_abs_dw: r.max_abs_dw(),
        rel_frobenius: r.rel_frobenius(),
        probe_max_abs_dy: r.probe_max_abs_dy(),
    });
    Report {
        model: args.model.display().to_string(),
        delta: args.delta.display().to_string(),
        out: args.out.display().to_string(),
        bytes,
        method: crate::delta::method_summary(&user.method),
        layers_merged_f32: f32_layers,
        int8_side_paths: side,
        int8_requantized: requantized,
        biases: r.biases,
        constants: r.constants,
        head_output,
        requantization,
        check,
    }
}

fn render(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "merged   {} ({}) into {}", r.delta, r.method, r.model)?;
    writeln!(
        out,
        "layers   {} merged into f32 weights, {} int8 side paths kept, {} int8 requantized",
        r.layers_merged_f32, r.int8_side_paths, r.int8_requantized
    )?;
    writeln!(
        out,
        "vectors  {} biases, {} other constants",
        r.biases, r.constants
    )?;
    match &r.head_output {
        Some(h) => writeln!(out, "head     written as output `{h}`")?,
        None => writeln!(out, "head     none written")?,
    }
    if let Some(q) = &r.requantization {
        let w = q
            .layers
            .iter()
            .map(|l| l.module.len())
            .max()
            .unwrap_or(0)
            .max(6);
        writeln!(
            out,
            "\nint8 requantization error (merged, dequantized, vs the exact f32 merge):"
        )?;
        writeln!(
            out,
            "  {:<w$}  {:>10}  {:>10}  {:>10}  scheme",
            "layer", "max|ΔW|", "rel. Frob.", "probe|Δy|"
        )?;
        for l in &q.layers {
            writeln!(
                out,
                "  {:<w$}  {:>10.3e}  {:>10.3e}  {:>10.3e}  {}",
                l.module, l.max_abs_dw, l.rel_frobenius, l.probe_max_abs_dy, l.scheme
            )?;
        }
        writeln!(
            out,
            "  {:<w$}  {:>10.3e}  {:>10.3e}  {:>10.3e}",
            "all", q.max_abs_dw, q.rel_frobenius, q.probe_max_abs_dy
        )?;
        writeln!(out)?;
    }
    match &r.check {
        Some(c) => writeln!(
            out,
            "check    reloaded, run beside the unmerged delta on a [{}, {}] probe: max |Δ| {:.3e}, mean |Δ| {:.3e} (`{}`)",
            c.batch, c.seq, c.max_abs_diff, c.mean_abs_diff, c.output
        )?,
        None => writeln!(out, "check    skipped")?,
    }
    writeln!(out, "wrote    {} ({} bytes)", r.out, r.bytes)
}
