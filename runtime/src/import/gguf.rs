//! llama.cpp's GGUF (v3): a bounded reader, dequantization, and the Llama checkpoint it holds.

/// Why a GGUF file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not start with the GGUF magic.
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
}

// ---------------------------------------------------------------------------------------
// STUB, to be replaced by the GGUF reader: the interface `kilotune import gguf` calls.

/// What a GGUF file yields: the Llama checkpoint and, when the file carries one, its
/// tokenizer as a Hugging Face `tokenizer.json` string.
#[derive(Debug)]
pub struct GgufImport {
    /// The architecture and its weights as f32 under Hugging Face names.
    pub checkpoint: super::Checkpoint,
    /// The tokenizer as `tokenizer.json` text, if the file has one kilotune can express.
    pub tokenizer_json: Option<String>,
}

/// Reads a GGUF file (stub: refuses every file until the reader lands).
pub fn read_file(path: &std::path::Path) -> crate::Result<GgufImport> {
    let _ = path;
    Err(GgufError::BadMagic.into())
}
