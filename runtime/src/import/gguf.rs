//! llama.cpp's GGUF (v3): a bounded reader, dequantization, and the Llama checkpoint it holds.

/// Why a GGUF file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not start with the GGUF magic.
    #[error("not a GGUF file (bad magic)")]
    BadMagic,
}
