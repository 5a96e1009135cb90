//! Hugging Face checkpoints: `config.json` + `model.safetensors` → [`super::Checkpoint`].
//!
//! A checkpoint folder as `save_pretrained` writes it: `config.json` names the architecture and
//! its sizes; the weights are in `model.safetensors`, or in shards listed by
//! `model.safetensors.index.json`. f32, f16, bf16 (and f64) tensors are read as f32; integer
//! buffers (BERT's `position_ids`) are skipped. Every size is bounded before anything is
//! allocated from it, and every malformed input is a typed error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};

use super::{Architecture, BertConfig, Checkpoint, ImportError, LlamaConfig};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Largest `config.json` (or shard index) read, in bytes; real ones are a few kilobytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Largest total size of the safetensors files read, in bytes.
pub const MAX_WEIGHTS_BYTES: u64 = 64 << 30;

/// Reads the checkpoint in `dir`: its `config.json` and its safetensors weights.
///
/// Fails with [`Error::Io`] when a file is missing or unreadable, [`ImportError::Config`]
/// when `config.json` is oversized, malformed or out of range,
/// [`ImportError::UnsupportedArchitecture`] for an architecture other than BERT or Llama, and
/// [`ImportError::Safetensors`] when a weights file is malformed or holds a dtype kilotune does
/// not read. Shapes are checked against the configuration by [`super::to_onnx`].
pub fn read_dir(dir: &Path) -> Result<Checkpoint> {
    let config = read_text(&dir.join("config.json"))?;
    let (arch, prefix) = parse_config(&config)?;
    let mut tensors = BTreeMap::new();
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        shard_files(&read_text(&index)?)?.into_iter().map(|f| dir.join(f)).collect()
    } else if dir.join("pytorch_model.bin").is_file() {
        return Err(ImportError::Safetensors(format!(
            "{} holds pytorch_model.bin; only safetensors weights are read (convert with `save_pretrained(safe_serialization=True)`)",
            dir.display()
        ))
        .into());
    } else {
        return Err(Error::Io { path: single, source: std::io::ErrorKind::NotFound.into() });
    };
    let mut budget = MAX_WEIGHTS_BYTES;
    for f in &files {
        let bytes = read_bounded(f, budget, ImportError::Safetensors)?;
        budget -= bytes.len() as u64;
        read_safetensors(&bytes, prefix, &mut tensors)?;
    }
    Ok(Checkpoint { arch, tensors })
}

/// Reads a file of at most `limit` bytes, refusing a larger one without reading it all.
fn read_bounded(path: &Path, limit: u64, too_big: fn(String) -> ImportError) -> Result<Vec<u8>> {
    let io = |source| Error::Io { path: path.to_owned(), source };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    f.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_big(format!("{} is over the limit of {limit} bytes", path.display())).into());
    }
    Ok(bytes)
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bounded(path, MAX_CONFIG_BYTES, ImportError::Config)?;
    String::from_utf8(bytes).map_err(|_| ImportError::Config(format!("{} is not UTF-8", path.display())).into())
}

/// The shard files a `model.safetensors.index.json` lists, each a plain file name in the
/// checkpoint's folder (a path elsewhere is refused).
fn shard_files(index: &str) -> Result<BTreeSet<String>> {
    let bad = |m: String| -> Error { ImportError::Safetensors(format!("model.safetensors.index.json: {m}")).into() };
    let v: Value = serde_json::from_str(index).map_err(|e| bad(e.to_string()))?;
    let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let f = file.as_str().ok_or_else(|| bad(format!("`{tensor}` maps to a non-string")))?;
        let plain = !f.is_empty() && f != "." && f != ".." && !f.contains(['/', '\\']) && !f.contains('\0');
        if !plain {
            return Err(bad(format!("shard `{f}` is not a file name in the checkpoint's folder")));
        }
        files.insert(f.to_owned());
    }
    if files.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok(files)
}

/// Adds the floating-point tensors of one safetensors file to `out`, as f32, with `prefix`
/// (`bert.` of a task model) removed from their names and BERT's old `LayerNorm.gamma`/`beta`
/// names mapped to `weight`/`bias`, as `transformers` maps them.
pub fn read_safetensors(bytes: &[u8], prefix: Option<&str>, out: &mut BTreeMap<String, Tensor>) -> Result<()> {
    let bad = |m: String| -> Error { ImportError::Safetensors(m).into() };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    for (name, view) in st.iter() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32).collect(),
            // Buffers, not weights (`embeddings.position_ids`): nothing the graphs read.
            Dtype::BOOL | Dtype::U8 | Dtype::I8 | Dtype::I16 | Dtype::U16 | Dtype::I32 | Dtype::U32 | Dtype::I64 | Dtype::U64 => continue,
            other => return Err(bad(format!("tensor `{name}` has dtype {other:?}, which kilotune does not read"))),
        };
        let mut name = prefix.and_then(|p| name.strip_prefix(p)).unwrap_or(name).to_owned();
        if name.contains("LayerNorm.") {
            if let Some(stem) = name.strip_suffix(".gamma") {
                name = format!("{stem}.weight");
            } else if let Some(stem) = name.strip_suffix(".beta") {
                name = format!("{stem}.bias");
            }
        }
        let t = Tensor::new(view.shape(), values).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        if out.insert(name.clone(), t).is_some() {
            return Err(bad(format!("tensor `{name}` appears twice")));
        }
    }
    Ok(())
}

/// Parses `config.json`: the architecture with its sizes, and the prefix the weights carry
/// (`bert.` for BERT task models such as `BertForMaskedLM`, whose encoder is what is read).
pub fn parse_config(text: &str) -> Result<(Architecture, Option<&'static str>)> {
    let v: Value = serde_json::from_str(text).map_err(|e| ImportError::Config(format!("config.json: {e}")))?;
    let c = v.as_object().ok_or_else(|| ImportError::Config("config.json is not a JSON object".into()))?;
    let arch = c.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str);
    let model_type = c.get("model_type").and_then(Value::as_str);
    match (arch, model_type) {
        (Some("BertModel"), _) => Ok((Architecture::Bert(bert_config(c)?), None)),
        (Some(a), _) if a.starts_with("Bert") => Ok((Architecture::Bert(bert_config(c)?), Some("bert."))),
        (Some("LlamaForCausalLM"), _) => Ok((Architecture::Llama(llama_config(c)?), None)),
        (Some(a), _) => Err(ImportError::UnsupportedArchitecture(a.to_owned()).into()),
        (None, Some("bert")) => Ok((Architecture::Bert(bert_config(c)?), Some("bert."))),
        (None, Some("llama")) => Ok((Architecture::Llama(llama_config(c)?), None)),
        (None, Some(t)) => Err(ImportError::UnsupportedArchitecture(t.to_owned()).into()),
        (None, None) => Err(ImportError::Config("config.json names neither `architectures` nor `model_type`".into()).into()),
    }
}

type Object = Map<String, Value>;

fn size(c: &Object, key: &str, default: Option<usize>) -> Result<usize> {
    match c.get(key) {
        None | Some(Value::Null) => default.ok_or_else(|| ImportError::Config(format!("config.json has no `{key}`")).into()),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| ImportError::Config(format!("`{key}` = {v} is not a non-negative integer")).into()),
    }
}

fn number(c: &Object, key: &str, default: f32) -> Result<f32> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| ImportError::Config(format!("`{key}` = {v} is not a number")).into()),
    }
}

fn string<'c>(c: &'c Object, key: &str, default: &'c str) -> Result<&'c str> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_str().ok_or_else(|| ImportError::Config(format!("`{key}` = {v} is not a string")).into()),
    }
}

/// Refuses `key` unless it is `want` (a variant the graph does not build).
fn require(c: &Object, key: &str, default: &str, want: &str) -> Result<()> {
    let got = string(c, key, default)?;
    if got != want {
        return Err(ImportError::Config(format!("`{key}` = \"{got}\" is not supported (only \"{want}\")")).into());
    }
    Ok(())
}

fn bert_config(c: &Object) -> Result<BertConfig> {
    require(c, "hidden_act", "gelu", "gelu")?;
    require(c, "position_embedding_type", "absolute", "absolute")?;
    let cfg = BertConfig {
        vocab_size: size(c, "vocab_size", None)?,
        hidden_size: size(c, "hidden_size", None)?,
        num_hidden_layers: size(c, "num_hidden_layers", None)?,
        num_attention_heads: size(c, "num_attention_heads", None)?,
        intermediate_size: size(c, "intermediate_size", None)?,
        max_position_embeddings: size(c, "max_position_embeddings", Some(512))?,
        type_vocab_size: size(c, "type_vocab_size", Some(2))?,
        layer_norm_eps: number(c, "layer_norm_eps", 1e-12)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn llama_config(c: &Object) -> Result<LlamaConfig> {
    require(c, "hidden_act", "silu", "silu")?;
    if let Some(s) = c.get("rope_scaling").filter(|v| !v.is_null()) {
        let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("?");
        if kind != "default" {
            return Err(ImportError::Config(format!("`rope_scaling` of type \"{kind}\" is not supported")).into());
        }
    }
    let heads = size(c, "num_attention_heads", None)?;
    let cfg = LlamaConfig {
        vocab_size: size(c, "vocab_size", None)?,
        hidden_size: size(c, "hidden_size", None)?,
        num_hidden_layers: size(c, "num_hidden_layers", None)?,
        num_attention_heads: heads,
        num_key_value_heads: size(c, "num_key_value_heads", Some(heads))?,
        intermediate_size: size(c, "intermediate_size", None)?,
        max_position_embeddings: size(c, "max_position_embeddings", Some(2048))?,
        rms_norm_eps: number(c, "rms_norm_eps", 1e-6)?,
        rope_theta: number(c, "rope_theta", 10000.0)?,
        tie_word_embeddings: match c.get("tie_word_embeddings") {
            None | Some(Value::Null) => false,
            Some(v) => v.as_bool().ok_or_else(|| ImportError::Config(format!("`tie_word_embeddings` = {v} is not a boolean")))?,
        },
    };
    cfg.validate()?;
    if let Some(implied) = cfg.hidden_size.checked_div(heads) {
        let head_dim = size(c, "head_dim", Some(implied))?;
        if head_dim != implied {
            return Err(ImportError::Config(format!("`head_dim` {head_dim} differs from hidden_size / num_attention_heads = {implied}; not supported")).into());
        }
    }
    Ok(cfg)
}
