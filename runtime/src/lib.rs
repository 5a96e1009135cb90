//! kilotune: personalize a frozen, quantized transformer on the device that runs it.
//!
//! This crate is the runtime: ONNX import, graph passes, CPU kernels, and sessions.
//! Load a [`Base`] once and run it with a [`Session`]:
//!
//! ```no_run
//! use kilotune::{Base, LoadOptions, Session, SessionConfig};
//! let base = Base::load("model.onnx", LoadOptions::default())?;
//! let session = Session::new(base.clone(), SessionConfig { threads: 2 })?;
//! # Ok::<(), kilotune::Error>(())
//! ```

pub mod alloc;
pub mod backend;
pub mod base;
pub mod delta;
pub mod error;
#[cfg(test)]
mod error_coverage;
pub mod fingerprint;
#[cfg(test)]
mod fuzz_seed;
pub mod graph;
pub mod import;
pub mod kernels;
pub mod npy;
pub mod onnx;
pub mod ops;
pub mod peft;
pub mod session;
pub mod tensor;
pub mod train;

pub use backend::{BackendConfig, BackendKind, BackendSession};
pub use base::{Base, LoadOptions, WeightFormat};
pub use error::{Error, Result};
pub use session::{Outputs, Session, SessionConfig};
pub use tensor::{DType, Tensor};
