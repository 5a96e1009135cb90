//! Hugging Face PEFT LoRA adapters in and out of a [`Delta`]: the `adapter_config.json` +
//! `adapter_model.safetensors` pair that `PeftModel.save_pretrained` writes.
//!
//! Only what a [`LoraConfig`] can express is accepted; every other PEFT feature that changes
//! the math (DoRA, rsLoRA, `fan_in_fan_out`, LoRA biases, `alpha_pattern`, `modules_to_save`,
//! ...) is refused with [`PeftInteropError::Unsupported`] rather than silently dropped, since
//! a dropped feature would give an adapter that loads and computes something else.
//!
//! PEFT names a tensor `base_model.model.<module path>.lora_A.weight` (A is `[r, in]`, B is
//! `[out, r]`, the same layout the delta uses). The module path is matched to exactly one of
//! the base's `Linear` modules by PEFT's suffix rule, because an exported base may carry a
//! prefix (`m.encoder.layer.0...`) that the PyTorch model did not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::{json, Map, Value};

use super::error::DeltaError;
use super::format::{Delta, NamedTensor, TrainingSummary};
use crate::base::Base;
use crate::peft::{LoraConfig, PeftMethod};

/// The adapter's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights file.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT puts before every module path in the weights file.
pub const PEFT_PREFIX: &str = "base_model.model.";
/// The largest `adapter_config.json` [`import_peft_adapter`] reads; real ones are about 1 KB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest `adapter_model.safetensors` [`import_peft_adapter`] reads: far above a LoRA
/// adapter of any model a phone runs (MiniLM's rank-4 adapter is 150 KB).
pub const MAX_WEIGHTS_BYTES: u64 = 4 << 30;

/// What [`import_peft_adapter`] writes into [`TrainingSummary::kilotune_version`].
pub const IMPORT_MARK: &str = "peft-import";

/// Why a PEFT adapter could not be imported or exported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeftInteropError {
    /// A filesystem operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than the importer reads ([`MAX_CONFIG_BYTES`], [`MAX_WEIGHTS_BYTES`]);
    /// refused before it is read.
    #[error("{path} is {size} bytes or more, over the limit of {limit}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size: the exact length, or `limit + 1` when reading stopped at the limit.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// `adapter_config.json` is not valid JSON, or a field has the wrong JSON type.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        #[source]
        source: serde_json::Error,
    },
    /// The weights file is not valid safetensors.
    #[error("{path}: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's (or serializer's) reason.
        #[source]
        source: SafeTensorError,
    },
    /// A configuration field, dtype or method kilotune cannot represent faithfully.
    #[error("unsupported PEFT adapter: {field} = {value}")]
    Unsupported {
        /// The field (or `dtype of <tensor>`, `method`, ...).
        field: String,
        /// The value found.
        value: String,
    },
    /// A tensor name is not `base_model.model.<module>.lora_{A,B}.weight` (or, on export, not
    /// `<module>.lora_{A,B}`).
    #[error("unexpected tensor `{tensor}`: not a LoRA A or B weight")]
    UnexpectedTensor {
        /// The tensor's name.
        tensor: String,
    },
    /// No `Linear` of the base is the tensor's module.
    #[error("tensor `{tensor}` adapts a module the base has no Linear for")]
    UnknownModule {
        /// The tensor's name.
        tensor: String,
    },
    /// Several `Linear`s of the base end with the tensor's module path.
    #[error("tensor `{tensor}` matches several base modules: {candidates:?}")]
    AmbiguousModule {
        /// The tensor's name.
        tensor: String,
        /// The base modules it matches.
        candidates: Vec<String>,
    },
    /// A tensor's shape disagrees with its `Linear`, its partner or the configured rank.
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The tensor's name.
        tensor: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A module has an A without a B, or a B without an A.
    #[error("module `{module}` has only one of lora_A and lora_B")]
    MissingPair {
        /// The module.
        module: String,
    },
    /// The configuration's values are out of range (see [`LoraConfig::validate`]).
    #[error("invalid adapter configuration: {0}")]
    InvalidConfig(String),
    /// The imported delta fails the delta's own checks (e.g. a NaN), or an exported delta's
    /// tensor cannot be decoded.
    #[error(transparent)]
    Delta(#[from] DeltaError),
}

type Result<T> = std::result::Result<T, PeftInteropError>;

fn unsupported(field: impl Into<String>, value: impl std::fmt::Display) -> PeftInteropError {
    PeftInteropError::Unsupported { field: field.into(), value: value.to_string() }
}

fn json_err(path: &Path, source: serde_json::Error) -> PeftInteropError {
    PeftInteropError::Json { path: path.to_owned(), source }
}

/// Which LoRA factor a tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Factor {
    A,
    B,
}

impl Factor {
    fn suffix(self) -> &'static str {
        match self {
            Factor::A => "lora_A",
            Factor::B => "lora_B",
        }
    }
}

/// Splits `<module>.lora_A` / `<module>.lora_B` (after `tail` was removed) into its parts.
fn split_factor(name: &str) -> Option<(&str, Factor)> {
    if let Some(m) = name.strip_suffix(".lora_A") {
        Some((m, Factor::A))
    } else {
        name.strip_suffix(".lora_B").map(|m| (m, Factor::B))
    }
}

// ---------------------------------------------------------------------------------------
// Configuration

/// The fields of `adapter_config.json` kilotune reads, after the refusals.
struct AdapterConfig {
    lora: LoraConfig,
    /// `target_modules` was a string (a regular expression in PEFT): the targets are then
    /// taken from the tensors present, since kilotune's targets are literal suffixes.
    targets_from_tensors: bool,
}

fn parse_config(path: &Path, text: &str) -> Result<AdapterConfig> {
    let v: Value = serde_json::from_str(text).map_err(|e| json_err(path, e))?;
    let obj = v.as_object().ok_or_else(|| unsupported("adapter_config.json", "not a JSON object"))?;
    let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);

    match get("peft_type") {
        Value::String(s) if s == "LORA" => {}
        other => return Err(unsupported("peft_type", other)),
    }
    // Features that change the computation and that a `LoraConfig` cannot carry: each must be
    // absent, null, false or empty.
    for field in [
        "fan_in_fan_out",
        "use_rslora",
        "use_dora",
        "lora_bias",
        "use_qalora",
        "modules_to_save",
        "layers_to_transform",
        "layer_replication",
        "exclude_modules",
        "target_parameters",
        "trainable_token_indices",
        "alora_invocation_tokens",
    ] {
        let value = get(field);
        let trivial = match value {
            Value::Null | Value::Bool(false) => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !trivial {
            return Err(unsupported(field, value));
        }
    }
    match get("bias") {
        Value::Null => {}
        Value::String(s) if s == "none" => {}
        other => return Err(unsupported("bias", other)),
    }

    let r = match get("r") {
        Value::Null => 8, // PEFT's default
        v => v.as_u64().and_then(|r| u32::try_from(r).ok()).ok_or_else(|| unsupported("r", v))?,
    };
    let alpha = match get("lora_alpha") {
        Value::Null => 8.0, // PEFT's default
        v => v.as_f64().ok_or_else(|| unsupported("lora_alpha", v))? as f32,
    };
    let dropout = match get("lora_dropout") {
        Value::Null => 0.0,
        v => v.as_f64().ok_or_else(|| unsupported("lora_dropout", v))? as f32,
    };
    // An alpha_pattern that gives every module the global alpha changes nothing.
    if let Some(pattern) = get("alpha_pattern").as_object() {
        if let Some((k, v)) = pattern.iter().find(|(_, v)| v.as_f64().map(|a| a as f32) != Some(alpha)) {
            return Err(unsupported("alpha_pattern", format!("{{{k:?}: {v}}}")));
        }
    } else if !get("alpha_pattern").is_null() {
        return Err(unsupported("alpha_pattern", get("alpha_pattern")));
    }
    let mut rank_pattern = Vec::new();
    match get("rank_pattern") {
        Value::Null => {}
        Value::Object(o) => {
            for (k, v) in o {
                let rk = v
                    .as_u64()
                    .and_then(|r| u32::try_from(r).ok())
                    .ok_or_else(|| unsupported(format!("rank_pattern[{k:?}]"), v))?;
                rank_pattern.push((k.clone(), rk));
            }
        }
        other => return Err(unsupported("rank_pattern", other)),
    }
    let (target_modules, targets_from_tensors) = match get("target_modules") {
        Value::Array(a) => {
            let mut t = Vec::with_capacity(a.len());
            for x in a {
                t.push(x.as_str().ok_or_else(|| unsupported("target_modules", x))?.to_owned());
            }
            (t, false)
        }
        Value::String(_) => (Vec::new(), true),
        other => return Err(unsupported("target_modules", other)),
    };
    Ok(AdapterConfig { lora: LoraConfig { r, alpha, dropout, target_modules, rank_pattern }, targets_from_tensors })
}

// ---------------------------------------------------------------------------------------
// Import

fn to_f32(tensor: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(unsupported(format!("dtype of {tensor}"), format!("{other:?}"))),
    })
}

/// Reads the file at `path` if it holds at most `limit` bytes. A larger one is refused from its
/// metadata, and reading stops one byte past the limit should it grow meanwhile.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| PeftInteropError::Io { action: "read", path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > limit {
        return Err(PeftInteropError::TooLarge { path: path.to_owned(), size: len, limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(PeftInteropError::TooLarge { path: path.to_owned(), size: limit + 1, limit });
    }
    Ok(bytes)
}

/// The one base `Linear` whose module is `path` or ends with `"." + path`: (module, k, n).
fn find_linear(base: &Base, path: &str, tensor: &str) -> Result<(String, usize, usize)> {
    let mut found: Vec<(String, usize, usize)> = Vec::new();
    for l in base.linears() {
        let hit = l.module.strip_suffix(path).is_some_and(|rest| rest.is_empty() || rest.ends_with('.'));
        // A module called twice appears as several Linears with one name: one module.
        if hit && !found.iter().any(|(m, _, _)| *m == l.module) {
            found.push((l.module.clone(), l.k, l.n));
        }
    }
    match found.len() {
        0 => Err(PeftInteropError::UnknownModule { tensor: tensor.to_owned() }),
        1 => Ok(found.swap_remove(0)),
        _ => Err(PeftInteropError::AmbiguousModule {
            tensor: tensor.to_owned(),
            candidates: found.into_iter().map(|(m, _, _)| m).collect(),
        }),
    }
}

/// Imports the PEFT LoRA adapter saved in `dir` as a delta for `base`, whose fingerprint is
/// `fingerprint`.
///
/// The tensors are named `<base module>.lora_A` (`[r, k]`) and `<base module>.lora_B`
/// (`[n, r]`), in f32 (f16 and bf16 are widened exactly), in the base's execution order.
/// Every PEFT feature kilotune cannot compute is refused (see the module docs), as is any
/// tensor that does not map to exactly one base `Linear` with matching sizes and rank. A file
/// over [`MAX_CONFIG_BYTES`] or [`MAX_WEIGHTS_BYTES`] is refused with
/// [`PeftInteropError::TooLarge`] before it is read.
pub fn import_peft_adapter(dir: &Path, base: &Base, fingerprint: [u8; 32]) -> Result<Delta> {
    let config_path = dir.join(CONFIG_FILE);
    let text = String::from_utf8(read_bounded(&config_path, MAX_CONFIG_BYTES)?).map_err(|e| PeftInteropError::Io {
        action: "read",
        path: config_path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let AdapterConfig { mut lora, targets_from_tensors } = parse_config(&config_path, &text)?;

    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = read_bounded(&weights_path, MAX_WEIGHTS_BYTES)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|source| PeftInteropError::Safetensors { path: weights_path.clone(), source })?;

    // Base module → (execution index, PEFT path, k, n, A, B).
    struct Pair {
        order: usize,
        peft_path: String,
        k: usize,
        n: usize,
        a: Option<(String, Vec<usize>, Vec<f32>)>,
        b: Option<(String, Vec<usize>, Vec<f32>)>,
    }
    let order: Vec<String> = base.linears().iter().map(|l| l.module.clone()).collect();
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    for (name, view) in st.iter() {
        let (path, factor) = name
            .strip_prefix(PEFT_PREFIX)
            .and_then(|s| s.strip_suffix(".weight"))
            .and_then(split_factor)
            .ok_or_else(|| PeftInteropError::UnexpectedTensor { tensor: name.to_owned() })?;
        let (module, k, n) = find_linear(base, path, name)?;
        let values = to_f32(name, &view)?;
        let entry = pairs.entry(module.clone()).or_insert_with(|| Pair {
            order: order.iter().position(|m| *m == module).unwrap_or(usize::MAX),
            peft_path: path.to_owned(),
            k,
            n,
            a: None,
            b: None,
        });
        let slot = match factor {
            Factor::A => &mut entry.a,
            Factor::B => &mut entry.b,
        };
        if slot.is_some() {
            // Two PEFT paths (e.g. `x.query` and `query`) landed on one base module.
            return Err(PeftInteropError::AmbiguousModule { tensor: name.to_owned(), candidates: vec![module] });
        }
        *slot = Some((name.to_owned(), view.shape().to_vec(), values));
    }

    let mut pairs: Vec<(String, Pair)> = pairs.into_iter().collect();
    pairs.sort_by_key(|(m, p)| (p.order, m.clone()));
    let peft_paths: Vec<String> = pairs.iter().map(|(_, p)| p.peft_path.clone()).collect();
    let mut tensors = Vec::with_capacity(pairs.len() * 2);
    // By value: each factor's values move into the delta instead of being copied, so the
    // import holds one f32 copy of the weights beside the file's bytes.
    for (module, p) in pairs {
        let (Some((a_name, a_shape, a)), Some((b_name, b_shape, b))) = (p.a, p.b) else {
            return Err(PeftInteropError::MissingPair { module: p.peft_path.clone() });
        };
        if !targets_from_tensors && !lora.matches(&module) {
            return Err(unsupported(
                "target_modules",
                format!("{:?} does not cover `{}`, which the adapter adapts", lora.target_modules, p.peft_path),
            ));
        }
        let r = lora.rank_for(&module) as usize;
        if a_shape != [r, p.k] {
            return Err(PeftInteropError::Shape { tensor: a_name, expected: vec![r, p.k], found: a_shape });
        }
        if b_shape != [p.n, r] {
            return Err(PeftInteropError::Shape { tensor: b_name, expected: vec![p.n, r], found: b_shape });
        }
        let dims = |s: &[usize]| s.iter().map(|&d| u32::try_from(d).unwrap_or(u32::MAX)).collect::<Vec<u32>>();
        tensors.push(NamedTensor::f32(format!("{module}.lora_A"), &dims(&a_shape), a));
        tensors.push(NamedTensor::f32(format!("{module}.lora_B"), &dims(&b_shape), b));
    }
    if targets_from_tensors {
        lora.target_modules = peft_paths;
    }
    lora.validate().map_err(|e| PeftInteropError::InvalidConfig(e.to_string()))?;

    let delta = Delta {
        base_fingerprint: fingerprint,
        method: PeftMethod::Lora(lora),
        head: None,
        tensors,
        summary: TrainingSummary { kilotune_version: IMPORT_MARK.to_owned(), ..Default::default() },
    };
    delta.validate()?;
    Ok(delta)
}

// ---------------------------------------------------------------------------------------
// Export

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|source| PeftInteropError::Io {
        action: "write",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp); // best effort; the rename error is the one to report
        PeftInteropError::Io { action: "rename a temporary file over", path: path.to_owned(), source }
    })
}

/// Exports a LoRA `delta` as a PEFT adapter in `dir` (created if missing):
/// `adapter_config.json` and `adapter_model.safetensors` (f32), each replaced atomically.
///
/// `module_prefix_to_strip` is removed from the front of every module name that carries it
/// (and of every target and rank-pattern key), so `m.encoder.layer.0.attention.self.query`
/// with prefix `m.` becomes PEFT's `base_model.model.encoder.layer.0.attention.self.query`.
/// f16 and int8 tensors are written as their f32 values. A delta with a task head or a
/// method other than LoRA is refused.
pub fn export_peft_adapter(delta: &Delta, dir: &Path, module_prefix_to_strip: &str) -> Result<()> {
    let PeftMethod::Lora(lora) = &delta.method else {
        return Err(unsupported("method", format!("{:?}", delta.method)));
    };
    if let Some(head) = &delta.head {
        return Err(unsupported("head", format!("{head:?}")));
    }
    let strip = |s: &str| s.strip_prefix(module_prefix_to_strip).unwrap_or(s).to_owned();

    // module → (A, B) as (shape, little-endian bytes).
    type Entry = Option<(Vec<usize>, Vec<u8>)>;
    let mut modules: BTreeMap<String, (Entry, Entry)> = BTreeMap::new();
    for t in &delta.tensors {
        let (module, factor) =
            split_factor(&t.name).ok_or_else(|| PeftInteropError::UnexpectedTensor { tensor: t.name.clone() })?;
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        if shape.len() != 2 {
            return Err(PeftInteropError::Shape { tensor: t.name.clone(), expected: vec![0, 0], found: shape });
        }
        let bytes: Vec<u8> = t.to_f32()?.iter().flat_map(|x| x.to_le_bytes()).collect();
        let e = modules.entry(module.to_owned()).or_default();
        let slot = if factor == Factor::A { &mut e.0 } else { &mut e.1 };
        *slot = Some((shape, bytes));
    }
    let mut named: Vec<(String, TensorView<'_>)> = Vec::with_capacity(modules.len() * 2);
    for (module, (a, b)) in &modules {
        let (Some((a_shape, a)), Some((b_shape, b))) = (a, b) else {
            return Err(PeftInteropError::MissingPair { module: module.clone() });
        };
        if a_shape[0] != b_shape[1] {
            return Err(PeftInteropError::Shape {
                tensor: format!("{module}.lora_B"),
                expected: vec![b_shape[0], a_shape[0]],
                found: b_shape.clone(),
            });
        }
        let path = strip(module);
        for (factor, shape, data) in [(Factor::A, a_shape, a), (Factor::B, b_shape, b)] {
            let name = format!("{PEFT_PREFIX}{path}.{}.weight", factor.suffix());
            let view = TensorView::new(Dtype::F32, shape.clone(), data)
                .map_err(|source| PeftInteropError::Safetensors { path: dir.join(WEIGHTS_FILE), source })?;
            named.push((name, view));
        }
    }
    let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let weights = safetensors::serialize(named, Some(metadata))
        .map_err(|source| PeftInteropError::Safetensors { path: dir.join(WEIGHTS_FILE), source })?;

    let rank_pattern: Map<String, Value> = lora.rank_pattern.iter().map(|(k, r)| (strip(k), json!(r))).collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": null,
        "base_model_name_or_path": null,
        "revision": null,
        "inference_mode": true,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": lora.target_modules.iter().map(|t| strip(t)).collect::<Vec<_>>(),
        "rank_pattern": rank_pattern,
        "alpha_pattern": {},
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "init_lora_weights": true,
    });
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config).map_err(|e| json_err(&config_path, e))?;

    std::fs::create_dir_all(dir).map_err(|source| PeftInteropError::Io {
        action: "create",
        path: dir.to_owned(),
        source,
    })?;
    write_atomic(&dir.join(WEIGHTS_FILE), &weights)?;
    write_atomic(&config_path, text.as_bytes())
}

#[cfg(test)]
mod tests;
