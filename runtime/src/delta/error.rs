//! [`DeltaError`]: every way saving or loading a delta can fail, one variant per class of bad
//! input so a caller (and a test) can tell them apart.

use std::path::PathBuf;

/// Why a delta could not be saved, loaded or converted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// A filesystem operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done (`read`, `rename a temporary file over`, ...).
        action: &'static str,
        /// The file or folder it was done to.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`LoadLimits::max_bytes`](super::LoadLimits::max_bytes).
    #[error("delta is {size} bytes or more, over the limit of {limit}")]
    TooLarge {
        /// The size seen: the exact length, or `limit + 1` when reading stopped at the limit.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The file ends before the header, or before the length the header declares.
    #[error("delta is truncated: {found} bytes, expected {expected}")]
    Truncated {
        /// The length the header implies (saturating at `u64::MAX`), or the minimum length.
        expected: u64,
        /// The actual length.
        found: u64,
    },
    /// The file is longer than the length the header declares.
    #[error("delta has {extra} bytes after its declared end")]
    TrailingBytes {
        /// How many bytes are left over.
        extra: u64,
    },
    /// The file does not start with `KTDELTA\0`: it is not a delta.
    #[error("not a kilotune delta (bad magic {found:02x?})")]
    BadMagic {
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// The file is a delta in a format version this build cannot read.
    #[error("delta format version {found} is not supported (this build reads versions 1 to {supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The CRC32C trailer does not match the bytes: the file is corrupt.
    #[error("delta checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC32C stored in the file.
        stored: u32,
        /// The CRC32C of the bytes before it.
        computed: u32,
    },
    /// The body passed the checksum but is not a valid delta (bad encoding, shape and data
    /// disagree, a size overflows, an invalid method configuration...).
    #[error("malformed delta: {0}")]
    Malformed(String),
    /// A tensor holds NaN or ±infinity (or would, after conversion to f16).
    #[error("tensor `{tensor}` holds a NaN or infinite value")]
    NonFinite {
        /// The tensor's name.
        tensor: String,
    },
    /// Two tensors have the same name.
    #[error("tensor name `{name}` appears more than once")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A tensor name is empty or contains a NUL character.
    #[error("bad tensor name {name:?}: names must be non-empty and free of NUL")]
    BadName {
        /// The offending name.
        name: String,
    },
    /// The delta was trained on another base model.
    #[error("delta belongs to base {found}, not to the loaded base {expected}")]
    WrongBase {
        /// The fingerprint of the base the caller has, in lowercase hex.
        expected: String,
        /// The fingerprint recorded in the delta, in lowercase hex.
        found: String,
    },
}
