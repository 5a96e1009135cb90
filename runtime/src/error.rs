//! The crate's error type: one rich enum, so every failure a caller can hit is a typed value.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A model file (or buffer) is larger than [`LoadOptions::max_file_bytes`](crate::LoadOptions):
    /// refused before any of it is parsed.
    #[error("model is {size} bytes or more, over the limit of {limit}")]
    TooLarge {
        /// The size seen: the exact length, or `limit + 1` when reading stopped at the limit.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The bytes are not a well-formed ONNX protobuf.
    #[error("malformed ONNX protobuf: {0}")]
    Protobuf(String),
    /// The model is valid ONNX but uses an operator kilotune does not implement.
    #[error("unsupported op `{op}` (node `{node}`, opset {opset})")]
    UnsupportedOp {
        /// The ONNX op type, with its domain if not the default one.
        op: String,
        /// The node's name.
        node: String,
        /// The opset the model imports for that domain.
        opset: i64,
    },
    /// An op is supported but one of its attributes has a value kilotune does not handle.
    #[error("unsupported attribute `{attribute}` = {value} on op `{op}` (node `{node}`)")]
    UnsupportedAttribute {
        /// The ONNX op type.
        op: String,
        /// The node's name.
        node: String,
        /// The attribute's name.
        attribute: String,
        /// Its value, as text.
        value: String,
    },
    /// The model is not one kilotune can run (missing opset, bad graph wiring, unsupported dtype...).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// An external-data reference points outside the model's folder or cannot be read.
    #[error("external data `{location}` of tensor `{tensor}`: {reason}")]
    ExternalData {
        /// The tensor that refers to external data.
        tensor: String,
        /// The location as written in the model.
        location: String,
        /// Why it was refused.
        reason: String,
    },
    /// A run was given an input that does not fit the model.
    #[error("input `{name}`: {reason}")]
    BadInput {
        /// The input's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An op met shapes it cannot work with at run time.
    #[error("node `{node}` ({op}): {reason}")]
    Shape {
        /// The node's name.
        node: String,
        /// The op type.
        op: String,
        /// What did not fit.
        reason: String,
    },
    /// A `.npy` file is malformed or holds a type kilotune does not read.
    #[error("bad .npy data: {0}")]
    Npy(String),
    /// A delta file was refused (see [`crate::delta::DeltaError`] for the cases).
    #[error(transparent)]
    Delta(#[from] crate::delta::DeltaError),
    /// A delta could not be merged into (or taken out of) a base's weights (see
    /// [`crate::peft::merge::MergeError`] for the cases).
    #[error(transparent)]
    Merge(#[from] crate::peft::merge::MergeError),
    /// A checkpoint could not be imported (see [`crate::import::ImportError`] for the cases).
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The backend asked for was not compiled in (its cargo feature is off).
    #[error("backend `{0}` is not compiled into this build (enable the cargo feature `{0}`)")]
    BackendUnavailable(&'static str),
    /// A backend (ONNX Runtime, tract, Vulkan) failed to load or run the model.
    #[error("backend `{backend}`: {reason}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// Its own message.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
