//! llama.cpp's Llama tensors and hyper-parameters → Hugging Face `LlamaForCausalLM`'s.
//!
//! Two things differ beyond the names:
//! - ggml lists dimensions innermost first, so a `Linear` weight's `[in, out]` in the file is
//!   PyTorch's `[out, in]` with the same bytes: only the shape is reversed.
//! - llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders the rows of
//!   `q_proj` and `k_proj` within each head so its rotary embedding can rotate adjacent pairs
//!   (GPT-J style) where Hugging Face's `rotate_half` rotates the two halves of the head. The
//!   importer undoes that so the checkpoint is the one Hugging Face would hold.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::error::GgufError;
use super::reader::{Array, GgufFile, TensorInfo, Value};
use crate::error::Result;
use crate::import::{Architecture, Checkpoint, ImportError, LlamaConfig};
use crate::tensor::Tensor;

/// A tensor's role in a Llama block, by its GGUF name suffix: `(gguf, hf)`.
const BLOCK_TENSORS: [(&str, &str); 9] = [
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
];

/// The Hugging Face name for a GGUF tensor name, or `None` if the Llama mapping has none.
/// Block indices are not checked against the block count here.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (index, suffix) = rest.split_once('.')?;
    // Canonical decimal only, so `blk.01` and `blk.1` cannot both map to layer 1.
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || (index.len() > 1 && index.starts_with('0')) {
        return None;
    }
    let (_, hf) = BLOCK_TENSORS.iter().find(|(g, _)| *g == suffix)?;
    Some(format!("model.layers.{index}.{hf}"))
}

/// The block index of a GGUF block tensor name (`blk.N.…`).
fn block_index(gguf: &str) -> Option<usize> {
    gguf.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

fn config_err(key: &str, reason: impl Into<String>) -> GgufError {
    GgufError::BadConfig { key: key.into(), reason: reason.into() }
}

/// Reads the Llama hyper-parameters from the metadata. `vocab_size` comes from the token list
/// when there is one, else from `llama.vocab_size`, else from the embedding's shape.
pub fn config(file: &GgufFile<'_>) -> Result<LlamaConfig, GgufError> {
    let arch = file.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(GgufError::UnsupportedArchitecture { architecture: arch.into() });
    }
    let hidden = file.get_usize("llama.embedding_length")?;
    let layers = file.get_usize("llama.block_count")?;
    let heads = file.get_usize("llama.attention.head_count")?;
    let kv_heads = match file.metadata.get("llama.attention.head_count_kv") {
        None => heads,
        Some(_) => file.get_usize("llama.attention.head_count_kv")?,
    };
    let intermediate = file.get_usize("llama.feed_forward_length")?;
    let context = file.get_usize("llama.context_length")?;
    let eps = file.get_f32("llama.attention.layer_norm_rms_epsilon")?;
    let theta = match file.metadata.get("llama.rope.freq_base") {
        None => 10_000.0,
        Some(_) => file.get_f32("llama.rope.freq_base")?,
    };

    for (key, v) in [("llama.embedding_length", hidden), ("llama.block_count", layers), ("llama.attention.head_count", heads), ("llama.attention.head_count_kv", kv_heads), ("llama.feed_forward_length", intermediate)] {
        if v == 0 {
            return Err(config_err(key, "must be positive"));
        }
    }
    if hidden % heads != 0 {
        return Err(config_err("llama.attention.head_count", format!("{heads} heads do not divide embedding_length {hidden}")));
    }
    if heads % kv_heads != 0 {
        return Err(config_err("llama.attention.head_count_kv", format!("{kv_heads} kv-heads do not divide {heads} heads")));
    }
    let head_dim = hidden / heads;
    if head_dim % 2 != 0 {
        return Err(config_err("llama.attention.head_count", format!("head size {head_dim} is odd: rotary embeddings rotate pairs")));
    }
    // Hugging Face's LlamaConfig has no separate head size and rotates the whole head.
    for key in ["llama.attention.key_length", "llama.attention.value_length", "llama.rope.dimension_count"] {
        if file.metadata.contains_key(key) && file.get_usize(key)? != head_dim {
            return Err(config_err(key, format!("{} differs from embedding_length / head_count = {head_dim}", file.get_usize(key)?)));
        }
    }
    if let Some(v) = file.metadata.get("llama.rope.scaling.type") {
        if !matches!(v, Value::String(s) if s == "none") {
            return Err(config_err("llama.rope.scaling.type", "rotary scaling is not supported"));
        }
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(config_err("llama.attention.layer_norm_rms_epsilon", format!("{eps} is not a positive number")));
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(config_err("llama.rope.freq_base", format!("{theta} is not a positive number")));
    }

    let vocab = match file.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len(),
        Some(v) => return Err(GgufError::MetadataType { key: "tokenizer.ggml.tokens".into(), expected: "array of strings", found: v.type_name() }),
        None if file.metadata.contains_key("llama.vocab_size") => file.get_usize("llama.vocab_size")?,
        None => match file.tensor("token_embd.weight").map(|t| t.dims.as_slice()) {
            Some(&[_, v]) => usize::try_from(v).map_err(|_| config_err("llama.vocab_size", "embedding too large"))?,
            _ => return Err(GgufError::MissingKey { key: "tokenizer.ggml.tokens".into() }),
        },
    };
    if let Some(Value::Array(a)) = file.metadata.get("tokenizer.ggml.tokens") {
        if !matches!(a, Array::String(_)) {
            return Err(GgufError::MetadataType { key: "tokenizer.ggml.tokens".into(), expected: "array of strings", found: a.elem_type_name() });
        }
    }

    Ok(LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        intermediate_size: intermediate,
        max_position_embeddings: context,
        rms_norm_eps: eps,
        rope_theta: theta,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
    })
}

/// Undoes `convert_hf_to_gguf.py`'s `permute(w, n_head)` on the rows of a `[rows, cols]`
/// weight: the file's row `h·d + 2i + j` is Hugging Face's row `h·d + j·d/2 + i`
/// (`d` the head size, `i < d/2`, `j < 2`).
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let d = rows / n_head;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_head {
        for i in 0..d / 2 {
            for j in 0..2 {
                let src = (h * d + 2 * i + j) * cols;
                let dst = (h * d + j * (d / 2) + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// The PyTorch shape a GGUF tensor must have under `c`, by its name; `None` for a name the
/// mapping does not know.
fn expected_shape(gguf: &str, c: &LlamaConfig) -> Option<Vec<usize>> {
    let kv = c.num_key_value_heads * (c.hidden_size / c.num_attention_heads);
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let suffix = gguf.strip_prefix("blk.").and_then(|r| r.split_once('.')).map_or(gguf, |(_, s)| s);
    Some(match suffix {
        "token_embd.weight" | "output.weight" => vec![c.vocab_size, h],
        "output_norm.weight" | "attn_norm.weight" | "ffn_norm.weight" => vec![h],
        "attn_q.weight" | "attn_output.weight" => vec![h, h],
        "attn_k.weight" | "attn_v.weight" => vec![kv, h],
        "ffn_gate.weight" | "ffn_up.weight" => vec![i, h],
        "ffn_down.weight" => vec![h, i],
        _ => return None,
    })
}

/// Builds the Hugging Face checkpoint: every tensor mapped, shape-checked, dequantized, and Q/K
/// un-permuted. A tensor the mapping does not know is an error rather than silently dropped.
pub fn checkpoint(file: &GgufFile<'_>) -> Result<Checkpoint> {
    let c = config(file).map_err(ImportError::from)?;
    let mut wanted: Vec<(&TensorInfo, String, Vec<usize>)> = Vec::with_capacity(file.tensors.len());
    for t in &file.tensors {
        let in_range = !t.name.starts_with("blk.") || block_index(&t.name).is_some_and(|b| b < c.num_hidden_layers);
        let (Some(hf), Some(expected), true) = (hf_name(&t.name), expected_shape(&t.name, &c), in_range) else {
            return Err(ImportError::from(GgufError::UnmappedTensor { name: t.name.clone() }).into());
        };
        let got: Vec<usize> = t.dims.iter().rev().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
        if got != expected {
            return Err(ImportError::TensorShape { name: t.name.clone(), got, expected }.into());
        }
        wanted.push((t, hf, expected));
    }
    // Checked one name at a time: `block_count` is the file's word, and the first missing block
    // ends the search long before a huge count could cost anything.
    let blocks = (0..c.num_hidden_layers).flat_map(|b| BLOCK_TENSORS.iter().map(move |(g, _)| format!("blk.{b}.{g}")));
    let mut required = ["token_embd.weight".to_string(), "output_norm.weight".to_string()].into_iter().chain(blocks);
    if let Some(missing) = required.find(|n| file.tensor(n).is_none()) {
        return Err(ImportError::MissingTensor(missing).into());
    }

    let head_dim = c.hidden_size / c.num_attention_heads;
    let tensors = wanted
        .into_par_iter()
        .map(|(t, hf, shape)| -> Result<(String, Tensor)> {
            let values = file.dequantize(t).map_err(ImportError::from)?;
            let values = if hf.ends_with("self_attn.q_proj.weight") {
                unpermute_rows(&values, shape[0], shape[1], c.num_attention_heads)
            } else if hf.ends_with("self_attn.k_proj.weight") {
                unpermute_rows(&values, shape[0], shape[1], shape[0] / head_dim)
            } else {
                values
            };
            Ok((hf, Tensor::new(&shape, values)?))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(Checkpoint { arch: Architecture::Llama(c), tensors })
}
