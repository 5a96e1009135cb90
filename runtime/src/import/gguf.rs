//! llama.cpp's GGUF (v2 and v3): a bounded reader, dequantization, and the Llama checkpoint and
//! tokenizer it holds.
//!
//! The file is treated as hostile: every count, length, offset and shape is checked against the
//! bytes present before anything is reserved or indexed, and every defect is a typed
//! [`GgufError`]. The pieces are public so a caller can inspect a file without importing it:
//!
//! - [`reader`]: [`GgufFile::parse`] reads the header, metadata and tensor infos.
//! - [`quant`]: ggml's types and their dequantization to f32.
//! - [`llama`]: GGUF Llama names and hyper-parameters → Hugging Face `LlamaForCausalLM`'s.
//! - [`tokenizer`]: `tokenizer.ggml.*` → a Hugging Face `tokenizer.json`.
//!
//! ```no_run
//! let import = kilotune::import::gguf::read_file("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref())?;
//! println!("{} tensors", import.checkpoint.tensors.len());
//! # Ok::<(), kilotune::Error>(())
//! ```

mod error;
pub mod llama;
pub mod quant;
pub mod reader;
pub mod tokenizer;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::GgufError;
pub use quant::GgmlType;
pub use reader::{Array, GgufFile, TensorInfo, Value};

use crate::error::{Error, Result};
use crate::import::{Checkpoint, ImportError};

/// What a GGUF file imports to.
#[derive(Clone, Debug)]
pub struct GgufImport {
    /// The model, f32, under Hugging Face names.
    pub checkpoint: Checkpoint,
    /// The tokenizer as a Hugging Face `tokenizer.json` document, when the file describes one.
    pub tokenizer_json: Option<String>,
}

/// Reads and imports a GGUF file (see [`read_bytes`]).
pub fn read_file(path: &Path) -> Result<GgufImport> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    read_bytes(&bytes)
}

/// Imports a GGUF file from its bytes: a Llama checkpoint (dequantized to f32, Q/K rows
/// restored to Hugging Face's order) and its tokenizer. Fails with a typed error on any
/// malformed structure, a non-llama architecture, a tensor type that is not dequantized, a
/// tensor the mapping does not know, or a tokenizer that is not converted.
pub fn read_bytes(bytes: &[u8]) -> Result<GgufImport> {
    // Through `ImportError`, whose `From` reaches `crate::Error`.
    let file = GgufFile::parse(bytes).map_err(ImportError::from)?;
    let tokenizer_json = tokenizer::tokenizer_json(&file).map_err(ImportError::from)?;
    let checkpoint = llama::checkpoint(&file)?;
    Ok(GgufImport { checkpoint, tokenizer_json })
}

impl From<GgufError> for Error {
    fn from(e: GgufError) -> Error {
        Error::Import(ImportError::Gguf(e))
    }
}

