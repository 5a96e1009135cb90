//! [`BackendSession`]: one base, one optional user delta, on the backend the config names.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::base::Base;
use crate::delta::Delta;
use crate::error::{Error, Result};
use crate::session::{Outputs, Session, SessionConfig};
use crate::tensor::Tensor;

/// Which engine runs a [`BackendSession`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// kilotune's own CPU engine (always compiled; the only one that trains).
    #[default]
    Cpu,
    /// ONNX Runtime, opened at run time (cargo feature `ort`).
    Ort,
    /// tract, pure-Rust ONNX inference (cargo feature `tract`).
    Tract,
    /// Vulkan compute shaders (cargo feature `vulkan`).
    Vulkan,
}

impl BackendKind {
    /// Every backend, compiled or not.
    pub const ALL: [BackendKind; 4] = [BackendKind::Cpu, BackendKind::Ort, BackendKind::Tract, BackendKind::Vulkan];

    /// The name `--backend` takes, which is also the cargo feature's.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Ort => "ort",
            BackendKind::Tract => "tract",
            BackendKind::Vulkan => "vulkan",
        }
    }

    /// Whether this build has the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Ort => cfg!(feature = "ort"),
            BackendKind::Tract => cfg!(feature = "tract"),
            BackendKind::Vulkan => cfg!(feature = "vulkan"),
        }
    }

    /// The backends this build has.
    pub fn compiled() -> Vec<BackendKind> {
        BackendKind::ALL.into_iter().filter(|b| b.is_compiled()).collect()
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        BackendKind::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown backend `{s}` (cpu, ort, tract or vulkan)")))
    }
}

/// Settings for a [`BackendSession`].
#[derive(Clone, Debug, Default)]
pub struct BackendConfig {
    /// The engine.
    pub backend: BackendKind,
    /// Worker threads; 0 means the backend's default (one per core).
    pub threads: usize,
    /// `ort` only: run the merged graph (a new ONNX Runtime session per delta) instead of the
    /// adapter-ready one (one session for every user).
    pub merged: bool,
    /// `ort` only: the ONNX Runtime library to open; `None` reads `ORT_DYLIB_PATH`.
    pub ort_library: Option<PathBuf>,
    /// `ort` adapter-ready only: which delta inputs the file gets.
    pub adapter: crate::peft::merge::AdapterReadyConfig,
}

enum Engine {
    Cpu(Session),
    #[cfg(feature = "ort")]
    Ort(super::ort::OrtSession),
    #[cfg(feature = "tract")]
    Tract(super::tract::TractSession),
    #[cfg(feature = "vulkan")]
    Vulkan(super::vulkan::VulkanSession),
}

/// A base, run with an optional user delta by the backend [`BackendConfig::backend`] names.
///
/// ```no_run
/// use kilotune::backend::{BackendConfig, BackendKind, BackendSession};
/// use kilotune::{Base, LoadOptions};
/// let base = Base::load("model.onnx", LoadOptions::default())?;
/// let config = BackendConfig { backend: BackendKind::Cpu, threads: 2, ..Default::default() };
/// let mut session = BackendSession::open("model.onnx", base, &config)?;
/// session.set_delta(None)?;
/// # Ok::<(), kilotune::Error>(())
/// ```
pub struct BackendSession {
    engine: Engine,
    kind: BackendKind,
}

impl std::fmt::Debug for BackendSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSession").field("backend", &self.kind).finish()
    }
}

impl BackendSession {
    /// A session for the ONNX file at `path`, whose fused form is `base` (loaded from the
    /// same file with the default [`crate::LoadOptions`], or with `--int8` for `cpu` and
    /// `vulkan`). `ort` and `tract` read the file itself.
    pub fn open(path: impl AsRef<Path>, base: Arc<Base>, config: &BackendConfig) -> Result<BackendSession> {
        let path = path.as_ref();
        let needs_file = matches!(config.backend, BackendKind::Ort | BackendKind::Tract);
        let bytes: Arc<[u8]> = if needs_file && config.backend.is_compiled() {
            std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?.into()
        } else {
            Arc::from(Vec::new())
        };
        Self::from_parts(bytes, base, config)
    }

    /// [`BackendSession::open`] on the file's bytes (`ort` and `tract` need them; `cpu` and
    /// `vulkan` run `base` and ignore them).
    pub fn from_parts(bytes: Arc<[u8]>, base: Arc<Base>, config: &BackendConfig) -> Result<BackendSession> {
        let _ = &bytes;
        let engine = match config.backend {
            BackendKind::Cpu => Engine::Cpu(Session::new(base, SessionConfig { threads: config.threads })?),
            #[cfg(feature = "ort")]
            BackendKind::Ort => {
                let graph = if config.merged {
                    super::ort::OrtGraph::Merged
                } else {
                    super::ort::OrtGraph::AdapterReady(config.adapter.clone())
                };
                Engine::Ort(super::ort::OrtSession::new(bytes, base, graph, config.threads, config.ort_library.as_deref())?)
            }
            #[cfg(feature = "tract")]
            BackendKind::Tract => Engine::Tract(super::tract::TractSession::new(bytes, base)?),
            #[cfg(feature = "vulkan")]
            BackendKind::Vulkan => Engine::Vulkan(super::vulkan::VulkanSession::new(base, config.threads)?),
            #[allow(unreachable_patterns)]
            other => return Err(Error::BackendUnavailable(other.name())),
        };
        Ok(BackendSession { engine, kind: config.backend })
    }

    /// The backend running this session.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Runs `delta` from now on (`None`: the base alone). The delta must have been made for
    /// this base. `cpu`, `vulkan` and adapter-ready `ort` keep their session; merged `ort`
    /// and `tract` build one for the merged graph.
    pub fn set_delta(&mut self, delta: Option<&Delta>) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(s) => s.set_delta(delta),
            #[cfg(feature = "ort")]
            Engine::Ort(s) => s.set_delta(delta),
            #[cfg(feature = "tract")]
            Engine::Tract(s) => s.set_delta(delta),
            #[cfg(feature = "vulkan")]
            Engine::Vulkan(s) => s.set_delta(delta),
        }
    }

    /// Runs the model on named inputs; returns the base's outputs (a delta's task head is
    /// not run here: see [`crate::train::evaluate::TaskSession`]).
    pub fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Outputs> {
        match &mut self.engine {
            Engine::Cpu(s) => s.run(inputs),
            #[cfg(feature = "ort")]
            Engine::Ort(s) => s.run(inputs),
            #[cfg(feature = "tract")]
            Engine::Tract(s) => s.run(inputs),
            #[cfg(feature = "vulkan")]
            Engine::Vulkan(s) => s.run(inputs),
        }
    }

    /// The ONNX Runtime session, to prepare deltas once and run many users on it
    /// ([`super::ort::OrtSession::run_with`]).
    #[cfg(feature = "ort")]
    pub fn as_ort(&mut self) -> Option<&mut super::ort::OrtSession> {
        match &mut self.engine {
            Engine::Ort(s) => Some(s),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}
