//! Execution backends. `cpu` is kilotune's own engine, always built; `ort` (ONNX Runtime),
//! `tract` and `vulkan` are cargo features of this crate.
//!
//! [`BackendSession`] runs a base with an optional user delta on any of them, chosen by
//! [`BackendConfig::backend`]. Every backend runs the same model and answers to the same
//! parity suite (`tests/tests/parity.rs`); only `cpu` trains.

pub mod cpu;
mod session;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;
#[cfg(feature = "vulkan")]
pub mod vulkan;

pub use session::{BackendConfig, BackendKind, BackendSession};
