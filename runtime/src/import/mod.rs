//! Importers: other checkpoint formats → a standard ONNX graph that kilotune (and ONNX Runtime)
//! load like any exported model.
//!
//! Every importer first produces a [`Checkpoint`]: the architecture's configuration and its
//! tensors as f32, named as Hugging Face `transformers` names them
//! (`encoder.layer.0.attention.self.query.weight`, `model.layers.0.self_attn.q_proj.weight`).
//! [`to_onnx`] then writes one graph per architecture from that, so the Hugging Face
//! (`hf`) and llama.cpp (`gguf`) paths share the graph builders and differ only in how they
//! read and name tensors.
//!
//! The graphs are standard ONNX (opset 17) that ONNX Runtime loads as well, written in the
//! op patterns of the `torch.onnx` exporters so kilotune's fusion passes turn them into its
//! `Linear`, `LayerNorm`, `RmsNorm`, `Gelu`, `Silu`, `Rotary`, `Attention` and `Embedding`
//! ops; each `Linear` keeps its PyTorch module path (`encoder.layer.0.attention.self.query`,
//! `model.layers.0.self_attn.q_proj`) so LoRA's `target_modules` work as in PEFT.
//!
//! ```no_run
//! use kilotune::import::{hf, to_onnx, ImportPrecision};
//! let checkpoint = hf::read_dir("all-MiniLM-L6-v2".as_ref())?;
//! let onnx = to_onnx(&checkpoint, ImportPrecision::F32)?;
//! std::fs::write("model.onnx", onnx).expect("writable");
//! # Ok::<(), kilotune::Error>(())
//! ```

mod bert;
mod builder;
pub mod gguf;
pub mod hf;
mod llama;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::error::Result;
use crate::onnx::proto::ModelProto;
use crate::tensor::{DType, Tensor};

/// A BERT encoder's configuration (`BertModel`), as `config.json` spells it.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// `type_vocab_size`.
    pub type_vocab_size: usize,
    /// `layer_norm_eps`.
    pub layer_norm_eps: f32,
}

/// A Llama decoder's configuration (`LlamaForCausalLM`), as `config.json` spells it.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `num_key_value_heads`.
    pub num_key_value_heads: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `max_position_embeddings`.
    pub max_position_embeddings: usize,
    /// `rms_norm_eps`.
    pub rms_norm_eps: f32,
    /// `rope_theta`.
    pub rope_theta: f32,
    /// `tie_word_embeddings`: the LM head reuses `model.embed_tokens.weight`.
    pub tie_word_embeddings: bool,
}

/// Which architecture a checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    /// `BertModel`.
    Bert(BertConfig),
    /// `LlamaForCausalLM`.
    Llama(LlamaConfig),
}

/// An architecture and its tensors, f32, under Hugging Face `transformers` names.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The architecture and its hyper-parameters.
    pub arch: Architecture,
    /// Every weight, by its Hugging Face name, as f32 (PyTorch's layout: a `Linear` weight is
    /// `[out, in]`).
    pub tensors: BTreeMap<String, Tensor>,
}

/// How the imported graph stores its `Linear` weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ImportPrecision {
    /// f32 weights.
    #[default]
    F32,
    /// int8 weights in ONNX Runtime's dynamic-quantization form
    /// (`DynamicQuantizeLinear` + `MatMulInteger`).
    Int8,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The checkpoint's `config.json` is missing a field, or has a value kilotune cannot build.
    #[error("config: {0}")]
    Config(String),
    /// The architecture is not one the importers build.
    #[error("unsupported architecture `{0}` (supported: BertModel, LlamaForCausalLM)")]
    UnsupportedArchitecture(String),
    /// A tensor the architecture needs is missing.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor has the wrong shape for the configuration.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor.
        name: String,
        /// Its shape in the file.
        got: Vec<usize>,
        /// The shape the configuration implies.
        expected: Vec<usize>,
    },
    /// A safetensors file is malformed or holds a dtype kilotune does not read.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A GGUF file was refused (see [`gguf::GgufError`] for the cases).
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
}

/// Largest size (hidden, vocabulary, positions, ...) a configuration may give; far above any
/// real model's, it keeps shapes derived from a hostile `config.json` from overflowing.
const MAX_DIM: usize = 1 << 24;

/// Largest number of layers a configuration may give.
const MAX_LAYERS: usize = 1 << 12;

impl Checkpoint {
    /// The number of weights: elements over every tensor.
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(Tensor::len).sum()
    }

    /// The architecture's name as `config.json` spells it (`BertModel`, `LlamaForCausalLM`).
    pub fn architecture_name(&self) -> &'static str {
        match self.arch {
            Architecture::Bert(_) => "BertModel",
            Architecture::Llama(_) => "LlamaForCausalLM",
        }
    }
}

fn check_dim(what: &str, v: usize, max: usize) -> Result<()> {
    if v == 0 || v > max {
        return Err(ImportError::Config(format!("`{what}` = {v} is out of range (1..={max})")).into());
    }
    Ok(())
}

fn check_positive(what: &str, v: f32) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(ImportError::Config(format!("`{what}` = {v} must be a positive, finite number")).into());
    }
    Ok(())
}

impl BertConfig {
    /// Checks that the sizes are in range and fit together (heads divide the hidden size).
    pub fn validate(&self) -> Result<()> {
        check_dim("vocab_size", self.vocab_size, MAX_DIM)?;
        check_dim("hidden_size", self.hidden_size, MAX_DIM)?;
        check_dim("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        check_dim("num_attention_heads", self.num_attention_heads, MAX_DIM)?;
        check_dim("intermediate_size", self.intermediate_size, MAX_DIM)?;
        check_dim("max_position_embeddings", self.max_position_embeddings, MAX_DIM)?;
        check_dim("type_vocab_size", self.type_vocab_size, MAX_DIM)?;
        check_positive("layer_norm_eps", self.layer_norm_eps)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ImportError::Config(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ))
            .into());
        }
        Ok(())
    }
}

impl LlamaConfig {
    /// Checks that the sizes are in range and fit together: heads divide the hidden size into
    /// an even head size (rotary embeddings rotate halves), KV heads divide the heads.
    pub fn validate(&self) -> Result<()> {
        check_dim("vocab_size", self.vocab_size, MAX_DIM)?;
        check_dim("hidden_size", self.hidden_size, MAX_DIM)?;
        check_dim("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        check_dim("num_attention_heads", self.num_attention_heads, MAX_DIM)?;
        check_dim("num_key_value_heads", self.num_key_value_heads, MAX_DIM)?;
        check_dim("intermediate_size", self.intermediate_size, MAX_DIM)?;
        check_dim("max_position_embeddings", self.max_position_embeddings, usize::MAX)?;
        check_positive("rms_norm_eps", self.rms_norm_eps)?;
        check_positive("rope_theta", self.rope_theta)?;
        let (h, heads, kv) = (self.hidden_size, self.num_attention_heads, self.num_key_value_heads);
        if h % heads != 0 || (h / heads) % 2 != 0 {
            return Err(ImportError::Config(format!("`hidden_size` {h} over {heads} heads does not give an even head size")).into());
        }
        if heads % kv != 0 {
            return Err(ImportError::Config(format!("`num_attention_heads` {heads} is not a multiple of `num_key_value_heads` {kv}")).into());
        }
        Ok(())
    }
}

/// A checkpoint's tensors, looked up with the shape the configuration implies.
pub(crate) struct Weights<'a> {
    tensors: &'a BTreeMap<String, Tensor>,
}

impl<'a> Weights<'a> {
    /// The f32 tensor `name` of shape `shape`, or [`ImportError::MissingTensor`] /
    /// [`ImportError::TensorShape`].
    fn get(&self, name: &str, shape: &[usize]) -> Result<&'a Tensor> {
        self.opt(name, shape)?.ok_or_else(|| ImportError::MissingTensor(name.to_owned()).into())
    }

    /// [`Weights::get`] for a tensor the architecture may go without (a bias).
    fn opt(&self, name: &str, shape: &[usize]) -> Result<Option<&'a Tensor>> {
        let Some(t) = self.tensors.get(name) else { return Ok(None) };
        if t.shape() != shape {
            return Err(ImportError::TensorShape { name: name.to_owned(), got: t.shape().to_vec(), expected: shape.to_vec() }.into());
        }
        if t.dtype() != DType::F32 {
            return Err(ImportError::Config(format!("tensor `{name}` holds {}, not f32", t.dtype())).into());
        }
        Ok(Some(t))
    }
}

/// The checkpoint as a standard ONNX model (see the module's documentation for the graph).
///
/// Fails with [`ImportError::Config`] when the configuration is out of range,
/// [`ImportError::MissingTensor`] or [`ImportError::TensorShape`] when a weight the
/// architecture needs is absent or does not fit the configuration. Tensors the graph does not
/// use (BERT's pooler, a masked-LM head) are left out.
pub fn to_model(checkpoint: &Checkpoint, precision: ImportPrecision) -> Result<ModelProto> {
    let w = Weights { tensors: &checkpoint.tensors };
    let b = builder::Builder::new(precision);
    match &checkpoint.arch {
        Architecture::Bert(cfg) => {
            cfg.validate()?;
            bert::build(cfg, &w, b)
        }
        Architecture::Llama(cfg) => {
            cfg.validate()?;
            llama::build(cfg, &w, b)
        }
    }
}

/// [`to_model`], serialized: the bytes of a `.onnx` file.
pub fn to_onnx(checkpoint: &Checkpoint, precision: ImportPrecision) -> Result<Vec<u8>> {
    crate::onnx::write::encode_model(&to_model(checkpoint, precision)?)
}

/// Initializers at least this large move to the external data file of [`split_external_data`];
/// smaller ones (biases, norms, shape constants) stay in the model.
pub const EXTERNAL_MIN_BYTES: usize = 1024;

/// Where each tensor starts in an external data file: a multiple of 64 KiB, the largest
/// mapping granularity ONNX Runtime meets (Windows), so every tensor can be memory-mapped.
pub const EXTERNAL_ALIGN: usize = 64 << 10;

/// Moves the data of every initializer of at least [`EXTERNAL_MIN_BYTES`] out of `model` into
/// one buffer, returned, to be written as the file `location` beside the model (ONNX external
/// data: each tensor records `location`, `offset` and `length`). Protobuf caps a message at
/// 2 GiB, so models above that must be written this way for ONNX Runtime to load them.
///
/// `location` must be a plain file name (kilotune and ONNX Runtime resolve it in the model's
/// folder); anything else is an [`ImportError::Config`].
pub fn split_external_data(model: &mut ModelProto, location: &str) -> Result<Vec<u8>> {
    let plain = !location.is_empty() && location != "." && location != ".." && !location.contains(['/', '\\', '\0']);
    if !plain {
        return Err(ImportError::Config(format!("external data location `{location}` is not a plain file name")).into());
    }
    let big = |t: &crate::onnx::proto::TensorProto| t.raw_data.len() >= EXTERNAL_MIN_BYTES;
    let total: usize = model.graph.initializer.iter().filter(|t| big(t)).map(|t| t.raw_data.len() + EXTERNAL_ALIGN).sum();
    let mut data = Vec::with_capacity(total);
    for t in model.graph.initializer.iter_mut().filter(|t| big(t)) {
        data.resize(data.len().next_multiple_of(EXTERNAL_ALIGN), 0);
        let raw = std::mem::take(&mut t.raw_data);
        t.external_data = vec![
            ("location".into(), location.into()),
            ("offset".into(), data.len().to_string()),
            ("length".into(), raw.len().to_string()),
        ];
        t.data_location = 1;
        data.extend_from_slice(&raw);
    }
    Ok(data)
}
