//! The delta: a user's trained parameters, the only per-user state, in a versioned `.ktd`
//! file bound to its base model.
//!
//! The byte layout is specified in `SPEC.md` beside this file. A reader refuses anything it
//! cannot vouch for (wrong size, magic, version, length, checksum, encoding, shapes,
//! non-finite values, names, or base) with a typed [`DeltaError`]; a writer replaces the old
//! file atomically ([`save`]).
//!
//! ```
//! use kilotune::delta::{self, Delta, LoadLimits, NamedTensor, Precision, TrainingSummary};
//! use kilotune::peft::{LoraConfig, PeftMethod};
//!
//! let base = [0x5a; 32]; // the base model's fingerprint
//! let delta = Delta {
//!     base_fingerprint: base,
//!     method: PeftMethod::Lora(LoraConfig { r: 1, ..Default::default() }),
//!     head: None,
//!     tensors: vec![
//!         NamedTensor::f32("layer.0.query.lora_A", &[1, 3], vec![0.1, -0.2, 0.3]),
//!         NamedTensor::f32("layer.0.query.lora_B", &[2, 1], vec![0.0, 0.0]),
//!     ],
//!     summary: TrainingSummary { steps: 10, ..Default::default() },
//! };
//! let bytes = delta::to_bytes(&delta, Precision::F32)?;
//! assert_eq!(&bytes[..8], b"KTDELTA\0");
//! let back = delta::from_bytes(&bytes, Some(&base), &LoadLimits::default())?;
//! assert_eq!(back, delta);
//!
//! // Bound to its base: any other one is refused.
//! let other = [0u8; 32];
//! let err = delta::from_bytes(&bytes, Some(&other), &LoadLimits::default()).unwrap_err();
//! assert!(matches!(err, delta::DeltaError::WrongBase { .. }));
//! # Ok::<(), delta::DeltaError>(())
//! ```

mod error;
#[cfg(test)]
mod fault;
mod format;
pub mod peft_interop;
mod precision;
mod storage;
mod store;
mod validate;

pub use error::DeltaError;
pub use format::{
    from_bytes, to_bytes, Delta, LoadLimits, NamedTensor, TensorData, TrainingSummary, DEFAULT_MAX_BYTES,
    FORMAT_VERSION, HEADER_LEN, MAGIC, TRAILER_LEN,
};
pub(crate) use format::hex;
pub use precision::Precision;
pub use storage::{FsStorage, Storage};
pub use store::{load, load_with, recover, recover_with, save, save_with};
