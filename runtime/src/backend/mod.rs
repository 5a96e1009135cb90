//! Execution backends. `cpu` is kilotune's own engine, always built; `ort` (ONNX Runtime),
//! `tract` and `vulkan` are cargo features of this crate.
//!
//! [`BackendSession`] runs a base with an optional user delta on any of them, chosen by
//! [`BackendConfig::backend`]. Every backend runs the same model and answers to the same
//! parity suite (`tests/tests/parity.rs`). `cpu` trains, and `vulkan` takes over the heavy part
//! of a training step through [`cpu::Offload`] (see [`offload_for`]).

pub mod cpu;
mod session;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;
#[cfg(feature = "vulkan")]
pub mod vulkan;

pub use session::{BackendConfig, BackendKind, BackendSession};

/// The device that takes part of a `cpu` walk's work for a trainer or a task session on
/// `kind`: none for `cpu`, the Vulkan device for `vulkan`. `ort` and `tract` run whole graphs
/// only and cannot train: an [`Error::Config`](crate::error::Error::Config). Tests use it to
/// check each device kernel against the CPU.
pub fn offload_for(kind: BackendKind) -> crate::error::Result<Option<std::sync::Arc<dyn cpu::Offload>>> {
    match kind {
        BackendKind::Cpu => Ok(None),
        #[cfg(feature = "vulkan")]
        BackendKind::Vulkan => Ok(Some(std::sync::Arc::new(vulkan::VulkanOffload::new()?))),
        #[cfg(not(feature = "vulkan"))]
        BackendKind::Vulkan => Err(crate::error::Error::BackendUnavailable("vulkan")),
        BackendKind::Ort | BackendKind::Tract => {
            Err(crate::error::Error::Config(format!("`{kind}` runs whole graphs and cannot train or evaluate a task: use cpu or vulkan")))
        }
    }
}
