//! `kilotune delta inspect|export|import`: look into a `.ktd` file, and move LoRA deltas to and
//! from Hugging Face PEFT's adapter format.

use std::io::Write;
use std::path::Path;

use kilotune::delta::peft_interop::{
    export_peft_adapter, import_peft_adapter, CONFIG_FILE, WEIGHTS_FILE,
};
use kilotune::delta::{self, Delta, LoadLimits, Precision, TensorData};
use kilotune::peft::apply::HEAD_PREFIX;
use kilotune::peft::PeftMethod;
use kilotune::{Base, LoadOptions};
use serde::Serialize;
use serde_json::Value;

use crate::error::{CliError, Result};
use crate::{DeltaConvertArgs, DeltaExportArgs, DeltaImportArgs, DeltaInspectArgs, PrecisionChoice};

/// A one-line description of a method: `LoRA r=8 alpha=16`, `BitFit All (+LayerNorm)`.
pub fn method_summary(m: &PeftMethod) -> String {
    match m {
        PeftMethod::Lora(c) => format!("LoRA r={} alpha={}", c.r, c.alpha),
        PeftMethod::BitFit(c) => format!(
            "BitFit {:?}{}",
            c.variant,
            if c.include_layer_norm {
                " (+LayerNorm)"
            } else {
                ""
            }
        ),
        other => other.describe(),
    }
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::F16 => "f16",
        Precision::Int8 => "int8",
    }
}

/// Everything `delta inspect` shows.
#[derive(Serialize, Debug)]
struct Report {
    file: String,
    file_bytes: u64,
    format_version: u32,
    base_fingerprint: String,
    method: String,
    /// The method's settings, as the file stores them.
    config: Value,
    head: Option<Value>,
    tensors: Vec<TensorReport>,
    tensor_bytes: u64,
    summary: Value,
}

#[derive(Serialize, Debug)]
struct TensorReport {
    name: String,
    shape: Vec<u32>,
    precision: &'static str,
    /// Bytes of values (and int8 scales) in the file.
    bytes: u64,
}

fn to_json<T: Serialize>(v: &T) -> Value {
    // These are plain data types (numbers, strings, vectors): serializing cannot fail.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Runs `kilotune delta inspect`.
pub fn inspect(args: &DeltaInspectArgs, out: &mut dyn Write) -> Result<()> {
    let limits = LoadLimits::default();
    let bytes = read_bounded(&args.file, limits.max_bytes)?;
    let d = delta::from_bytes(&bytes, None, &limits).map_err(kilotune::Error::from)?;
    // The reader has checked the frame, so bytes 8..12 are the version it accepted.
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let config = match &d.method {
        PeftMethod::Lora(c) => to_json(c),
        PeftMethod::BitFit(c) => to_json(c),
        PeftMethod::TopLayers(c) => to_json(c),
        PeftMethod::Ia3(c) => to_json(c),
        PeftMethod::Adapter(c) => to_json(c),
        PeftMethod::Prefix(c) => to_json(c),
        PeftMethod::DiffPruning(c) => to_json(c),
        PeftMethod::Prompt(c) => to_json(c),
        PeftMethod::MadxLanguage(c) => to_json(c),
        PeftMethod::MadxTask(c) => to_json(c),
        other => Value::String(other.describe()),
    };
    let tensors: Vec<TensorReport> = d
        .tensors
        .iter()
        .map(|t| TensorReport {
            name: t.name.clone(),
            shape: t.shape.clone(),
            precision: precision_name(t.precision()),
            bytes: match &t.data {
                TensorData::F32(v) => 4 * v.len() as u64,
                TensorData::F16(v) => 2 * v.len() as u64,
                TensorData::I8 { values, scales } => values.len() as u64 + 4 * scales.len() as u64,
            },
        })
        .collect();
    let report = Report {
        file: args.file.display().to_string(),
        file_bytes: bytes.len() as u64,
        format_version: version,
        base_fingerprint: d.base_hex(),
        method: method_summary(&d.method),
        config,
        head: d.head.as_ref().map(to_json),
        tensor_bytes: tensors.iter().map(|t| t.bytes).sum(),
        tensors,
        summary: to_json(&d.summary),
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(|e| CliError::Stdout(e.into()))?;
        writeln!(out).map_err(CliError::Stdout)
    } else {
        render(&report, out).map_err(CliError::Stdout)
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| CliError::Io {
        action: "cannot read",
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    // One byte past the limit is enough for the reader to call the file too large.
    let mut bytes = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

/// `key=value` pairs of a JSON object (strings unquoted), or the value as JSON.
fn pairs(v: &Value) -> String {
    match v {
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join("  "),
        v => v.to_string(),
    }
}

fn render(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "file         {} ({} bytes)", r.file, r.file_bytes)?;
    writeln!(out, "format       version {}", r.format_version)?;
    writeln!(out, "base         {}", r.base_fingerprint)?;
    writeln!(out, "method       {}", r.method)?;
    writeln!(out, "config       {}", pairs(&r.config))?;
    match &r.head {
        Some(h) => writeln!(out, "head         {}", pairs(h))?,
        None => writeln!(out, "head         none")?,
    }
    writeln!(out, "training     {}", pairs(&r.summary))?;
    writeln!(
        out,
        "\ntensors ({}, {} bytes of values)",
        r.tensors.len(),
        r.tensor_bytes
    )?;
    let w = r.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in &r.tensors {
        let shape = format!("{:?}", t.shape);
        writeln!(
            out,
            "  {:<w$}  {:<12}  {:<4}  {:>9}",
            t.name, shape, t.precision, t.bytes
        )?;
    }
    Ok(())
}

/// Runs `kilotune delta export`.
pub fn export(args: &DeltaExportArgs, out: &mut dyn Write) -> Result<()> {
    let mut d: Delta =
        delta::load(&args.file, None, &LoadLimits::default()).map_err(kilotune::Error::from)?;
    if d.head.is_some() {
        if !args.without_head {
            return Err(CliError::Usage(format!(
                "{} has a task head, which a PEFT LoRA adapter does not hold; pass --without-head to export only the LoRA tensors",
                args.file.display()
            )));
        }
        d.head = None;
        d.tensors.retain(|t| !t.name.starts_with(HEAD_PREFIX));
    }
    export_peft_adapter(&d, &args.out, &args.strip_prefix)?;
    writeln!(
        out,
        "exported {} ({}, {} tensors) to {}: {WEIGHTS_FILE}, {CONFIG_FILE}",
        args.file.display(),
        method_summary(&d.method),
        d.tensors.len(),
        args.out.display()
    )
    .map_err(CliError::Stdout)
}

/// Saves `d` atomically in the chosen precision; returns that precision and the file's size.
pub fn save_sized(d: &Delta, path: &Path, choice: PrecisionChoice) -> Result<(Precision, u64)> {
    let precision = Precision::from(choice);
    delta::save(d, path, precision).map_err(kilotune::Error::from)?;
    let size = std::fs::metadata(path).map_err(|source| CliError::Io { action: "cannot stat", path: path.to_owned(), source })?.len();
    Ok((precision, size))
}

/// Runs `kilotune delta convert`.
pub fn convert(args: &DeltaConvertArgs, out: &mut dyn Write) -> Result<()> {
    let limits = LoadLimits::default();
    let bytes = read_bounded(&args.file, limits.max_bytes)?;
    let d = delta::from_bytes(&bytes, None, &limits).map_err(kilotune::Error::from)?;
    let (precision, size) = save_sized(&d, &args.out, args.precision)?;
    writeln!(out, "{} ({} bytes) → {} ({} bytes, {})", args.file.display(), bytes.len(), args.out.display(), size, precision_name(precision)).map_err(CliError::Stdout)
}

/// Runs `kilotune delta import`.
pub fn import(args: &DeltaImportArgs, out: &mut dyn Write) -> Result<()> {
    let base = Base::load(&args.model, LoadOptions::default())?;
    let d = import_peft_adapter(&args.dir, &base, base.fingerprint())?;
    let (precision, size) = save_sized(&d, &args.out, args.precision)?;
    writeln!(
        out,
        "imported {} ({}, {} modules) as {} ({} bytes, {}), bound to base {}",
        args.dir.display(),
        method_summary(&d.method),
        d.tensors.len() / 2,
        args.out.display(),
        size,
        precision_name(precision),
        d.base_hex()
    )
    .map_err(CliError::Stdout)
}
