//! Importers: other checkpoint formats → a standard ONNX graph that kilotune (and ONNX Runtime)
//! load like any exported model.
//!
//! Every importer first produces a [`Checkpoint`]: the architecture's configuration and its
//! tensors as f32, named as Hugging Face `transformers` names them
//! (`encoder.layer.0.attention.self.query.weight`, `model.layers.0.self_attn.q_proj.weight`).
//! [`to_onnx`] then writes one graph per architecture from that, so the Hugging Face
//! (`hf`) and llama.cpp (`gguf`) paths share the graph builders and differ only in how they
//! read and name tensors.

pub mod gguf;
pub mod hf;

use std::collections::BTreeMap;

use crate::tensor::Tensor;

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
