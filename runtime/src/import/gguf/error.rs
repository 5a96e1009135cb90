//! Why a GGUF file was refused: one variant per kind of defect, each with the offset or name
//! that lets a reader find it in the file.

/// Why a GGUF file was refused.
///
/// Offsets are absolute byte offsets into the file. Tensor offsets in
/// [`GgufError::MisalignedTensor`] and [`GgufError::TensorOutOfBounds`] are relative to the start
/// of the data section, as the file states them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not start with the GGUF magic.
    #[error("not a GGUF file (bad magic {found:02x?})")]
    BadMagic {
        /// The first four bytes (fewer if the file is shorter).
        found: Vec<u8>,
    },
    /// The header states a version this reader does not know (it reads 2 and 3).
    #[error("unsupported GGUF version {version} (supported: 2, 3; a big-endian file reads as a huge version)")]
    UnsupportedVersion {
        /// The version as read, little-endian.
        version: u32,
    },
    /// A fixed-size field runs past the end of the file.
    #[error("truncated: {what} needs {needed} bytes at offset {offset}, {available} left")]
    Truncated {
        /// The field.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Its size.
        needed: u64,
        /// The bytes left from `offset` to the end of the file.
        available: u64,
    },
    /// A string's stated length runs past the end of the file.
    #[error("{what}: string length {length} at offset {offset} exceeds the {available} bytes left")]
    StringPastEnd {
        /// The string (which key, which tensor name...).
        what: String,
        /// Where its bytes start.
        offset: u64,
        /// The stated length.
        length: u64,
        /// The bytes left.
        available: u64,
    },
    /// A count (of metadata entries, tensors, array elements) cannot fit in the rest of the file,
    /// even if every item took its smallest encoding. Checked before anything is reserved.
    #[error("{what}: count {count} at offset {offset} needs at least {min_bytes} bytes, {available} left")]
    CountPastEnd {
        /// What is counted.
        what: String,
        /// Where the items start.
        offset: u64,
        /// The stated count.
        count: u64,
        /// The bytes `count` items take at the least (saturating).
        min_bytes: u64,
        /// The bytes left.
        available: u64,
    },
    /// A string (key, value, tensor name) is not UTF-8.
    #[error("{what}: string at offset {offset} is not UTF-8")]
    NonUtf8 {
        /// The string.
        what: String,
        /// Where its bytes start.
        offset: u64,
    },
    /// A metadata value (or array element) has a type id GGUF does not define.
    #[error("metadata `{key}`: unknown value type {type_id} at offset {offset}")]
    BadValueType {
        /// The key.
        key: String,
        /// The type id as read.
        type_id: u32,
        /// Where the id is.
        offset: u64,
    },
    /// A boolean metadata value is neither 0 nor 1.
    #[error("metadata `{key}`: boolean byte {byte} at offset {offset} is neither 0 nor 1")]
    BadBool {
        /// The key.
        key: String,
        /// The byte as read.
        byte: u8,
        /// Where it is.
        offset: u64,
    },
    /// Arrays of arrays nest deeper than the reader follows.
    #[error("metadata `{key}`: arrays nest deeper than {max} levels")]
    NestingTooDeep {
        /// The key.
        key: String,
        /// The deepest nesting read.
        max: usize,
    },
    /// Two metadata entries share a key.
    #[error("duplicate metadata key `{key}`")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A metadata value the importer needs has the wrong type.
    #[error("metadata `{key}`: expected {expected}, found {found}")]
    MetadataType {
        /// The key.
        key: String,
        /// The type(s) accepted.
        expected: &'static str,
        /// The type in the file.
        found: &'static str,
    },
    /// A metadata key the importer needs is absent.
    #[error("missing metadata `{key}`")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment = {alignment} is not a non-zero power of two")]
    BadAlignment {
        /// The value in the file.
        alignment: u64,
    },
    /// A tensor has more dimensions than ggml's four.
    #[error("tensor `{tensor}` has {n_dims} dimensions (at most {max})")]
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// The stated count.
        n_dims: u32,
        /// The most ggml allows.
        max: u32,
    },
    /// A tensor's dimensions, element count or byte size overflow (ggml caps them at `i64::MAX`).
    #[error("tensor `{tensor}`: shape {dims:?} overflows")]
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// Its dimensions, innermost first, as in the file.
        dims: Vec<u64>,
    },
    /// A tensor's type id is not a ggml type.
    #[error("tensor `{tensor}`: unknown ggml type id {type_id}")]
    BadTensorType {
        /// The tensor.
        tensor: String,
        /// The id as read.
        type_id: u32,
    },
    /// A tensor's rows are not a whole number of its type's blocks.
    #[error("tensor `{tensor}`: {ggml_type} packs {block} elements per block, but a row has {row}")]
    BlockMisfit {
        /// The tensor.
        tensor: String,
        /// Its ggml type.
        ggml_type: &'static str,
        /// Elements per block.
        block: u64,
        /// The row length (`ne[0]`).
        row: u64,
    },
    /// Two tensors share a name.
    #[error("duplicate tensor `{name}`")]
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A tensor's offset is not a multiple of the file's alignment.
    #[error("tensor `{tensor}`: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// The tensor.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
        /// `general.alignment` (32 by default).
        alignment: u64,
    },
    /// A tensor's bytes run past the end of the data section.
    #[error("tensor `{tensor}`: {size} bytes at data offset {offset} run past the data section's {data_len} bytes")]
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
        /// Its size in bytes.
        size: u64,
        /// The data section's length.
        data_len: u64,
    },
    /// Two tensors' bytes overlap.
    #[error("tensors `{first}` and `{second}` overlap in the data section")]
    OverlappingTensors {
        /// The tensor that starts first.
        first: String,
        /// The tensor that starts inside it.
        second: String,
    },
    /// A tensor's ggml type is one kilotune reads but does not dequantize.
    #[error("tensor `{tensor}`: ggml type {ggml_type} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)")]
    UnsupportedTensorType {
        /// The tensor.
        tensor: String,
        /// Its ggml type's name.
        ggml_type: &'static str,
    },
    /// `general.architecture` is not one the importer maps.
    #[error("GGUF architecture `{architecture}` is not supported (supported: llama)")]
    UnsupportedArchitecture {
        /// The architecture the file states.
        architecture: String,
    },
    /// A hyper-parameter is missing, out of range, or inconsistent with another.
    #[error("metadata `{key}`: {reason}")]
    BadConfig {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has a name the Llama mapping does not know (a bias, `rope_freqs`, a block index
    /// past `block_count`...): importing without it would change the model.
    #[error("tensor `{name}` has no Hugging Face Llama counterpart")]
    UnmappedTensor {
        /// The GGUF name.
        name: String,
    },
    /// The tokenizer is of a kind kilotune does not convert.
    #[error("tokenizer `{model}` (pre-tokenizer `{pre}`) is not supported (supported: gpt2 with pre-tokenizer default, gpt2, smollm, starcoder, llama-bpe)")]
    UnsupportedTokenizer {
        /// `tokenizer.ggml.model`.
        model: String,
        /// `tokenizer.ggml.pre` (empty when absent).
        pre: String,
    },
    /// The tokenizer metadata is inconsistent (a token id past the vocabulary, a malformed
    /// merge, arrays of different lengths...).
    #[error("tokenizer: {reason}")]
    BadTokenizer {
        /// What is wrong.
        reason: String,
    },
}
