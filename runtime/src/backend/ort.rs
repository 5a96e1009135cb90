//! The `ort` backend: ONNX Runtime through the `ort` crate, with `load-dynamic`.
//!
//! The ONNX Runtime library is opened at run time, from [`OrtSession::new`]'s `library`
//! argument or else from `ORT_DYLIB_PATH` (`ort`'s own convention); nothing is linked or
//! downloaded at build time. `scripts/get-ort.sh` fetches the library from the PyPI wheel.
//!
//! Two ways to run a user's delta:
//!
//! - **adapter-ready** ([`OrtGraph::AdapterReady`]): the base is written with every LoRA A/B
//!   and bias delta as an optional graph input ([`crate::peft::merge::adapter_ready_onnx`]).
//!   The session is created once; a user's delta is a set of prepared input tensors
//!   ([`OrtDelta`]), so switching users costs no new session and no graph work.
//! - **merged** ([`OrtGraph::Merged`]): the delta is folded into the weights
//!   ([`crate::peft::merge::merge_onnx`]) and a session is created for that file: the base's
//!   own speed per run, a new session per user.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use ort::session::{Session as OrtRt, SessionInputValue};
use ort::value::{DynValue, Tensor as OrtTensor};

use crate::base::Base;
use crate::delta::Delta;
use crate::error::{Error, Result};
use crate::peft::merge::{adapter_ready_onnx, merge_onnx, AdapterReady, AdapterReadyConfig, MergeOptions};
use crate::session::Outputs;
use crate::tensor::{Data, Tensor};

fn err(e: impl std::fmt::Display) -> Error {
    Error::Backend { backend: "ort", reason: e.to_string() }
}

/// Which graph the ONNX Runtime session runs.
#[derive(Clone, Debug)]
pub enum OrtGraph {
    /// The adapter-ready base: one session for every user.
    AdapterReady(AdapterReadyConfig),
    /// The base with the delta merged in: one session per delta.
    Merged,
}

impl Default for OrtGraph {
    fn default() -> Self {
        OrtGraph::AdapterReady(AdapterReadyConfig::default())
    }
}

/// The library's name when neither the caller nor `ORT_DYLIB_PATH` names a file: the dynamic
/// loader's search path decides.
#[cfg(target_os = "windows")]
const DEFAULT_LIBRARY: &str = "onnxruntime.dll";
#[cfg(target_os = "macos")]
const DEFAULT_LIBRARY: &str = "libonnxruntime.dylib";
#[cfg(not(any(target_os = "windows", target_os = "macos")))]
const DEFAULT_LIBRARY: &str = "libonnxruntime.so";

/// ONNX Runtime is one library per process: its environment is made once, by the first
/// session, and shared by every later one.
static ENVIRONMENT: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment(library: Option<&Path>) -> Result<&'static ort::environment::Environment> {
    ENVIRONMENT
        .get_or_init(|| {
            // `ort::init()` would panic when the library is missing; `init_from` returns an error.
            let path = match library {
                Some(p) => p.to_owned(),
                None => std::env::var_os("ORT_DYLIB_PATH").map_or_else(|| DEFAULT_LIBRARY.into(), std::path::PathBuf::from),
            };
            let builder = ort::init_from(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            builder.with_name("kilotune").build().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| err(format!("ONNX Runtime: {e} (set ORT_DYLIB_PATH, see scripts/get-ort.sh)")))
}

/// A user's delta, laid out as the adapter-ready session's inputs. Made once per user
/// ([`OrtSession::prepare`]); running with it copies nothing.
pub struct OrtDelta {
    feeds: Vec<(String, DynValue)>,
}

impl std::fmt::Debug for OrtDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtDelta").field("inputs", &self.feeds.len()).finish()
    }
}

/// A base run by ONNX Runtime.
pub struct OrtSession {
    session: OrtRt,
    threads: usize,
    graph: OrtGraph,
    /// The shipped file, kept only for the merged path (each delta is merged into it).
    original: Option<Arc<[u8]>>,
    base: Arc<Base>,
    ready: Option<AdapterReady>,
    delta: Option<OrtDelta>,
    outputs: Vec<String>,
}

impl std::fmt::Debug for OrtSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtSession").field("graph", &self.graph).field("threads", &self.threads).finish()
    }
}

impl OrtSession {
    /// Creates a session for the ONNX file `original` (whose fused form is `base`), with
    /// `threads` intra-op threads (0: ONNX Runtime's default) and no delta.
    pub fn new(original: Arc<[u8]>, base: Arc<Base>, graph: OrtGraph, threads: usize, library: Option<&Path>) -> Result<OrtSession> {
        environment(library)?;
        let (bytes, ready, original) = match &graph {
            OrtGraph::AdapterReady(c) => {
                let ready = adapter_ready_onnx(&original, &base, c)?;
                (ready.bytes.clone(), Some(ready), None)
            }
            OrtGraph::Merged => (original.to_vec(), None, Some(original)),
        };
        let session = build(&bytes, threads, library)?;
        let outputs = base.output_names().iter().map(|s| (*s).to_owned()).collect();
        Ok(OrtSession { session, threads, graph, original, base, ready, delta: None, outputs })
    }

    /// Lays `delta` out as input tensors for this adapter-ready session.
    pub fn prepare(&self, delta: &Delta) -> Result<OrtDelta> {
        let ready = self.ready.as_ref().ok_or_else(|| err("prepare needs the adapter-ready graph"))?;
        let feeds = ready.feeds(delta)?.into_iter().map(|(n, t)| Ok((n, to_ort(&t)?))).collect::<Result<_>>()?;
        Ok(OrtDelta { feeds })
    }

    /// Runs `delta` from now on (`None`: the base). Adapter-ready: prepares its inputs, the
    /// session stays. Merged: merges it and creates a new session.
    pub fn set_delta(&mut self, delta: Option<&Delta>) -> Result<()> {
        match (&self.graph, delta) {
            (OrtGraph::AdapterReady(_), Some(d)) => self.delta = Some(self.prepare(d)?),
            (OrtGraph::AdapterReady(_), None) => self.delta = None,
            (OrtGraph::Merged, d) => {
                let original = self.original.as_ref().ok_or_else(|| err("the merged path lost its file"))?;
                let bytes = match d {
                    Some(d) => {
                        let options = MergeOptions { write_head: false, ..MergeOptions::default() };
                        merge_onnx(original, &self.base, d, &options)?.bytes
                    }
                    None => original.to_vec(),
                };
                self.session = build(&bytes, self.threads, None)?;
            }
        }
        Ok(())
    }

    /// Runs with the delta last set.
    pub fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Outputs> {
        let delta = self.delta.take();
        let out = self.run_with(delta.as_ref(), inputs);
        self.delta = delta;
        out
    }

    /// Runs with `delta` (prepared by [`OrtSession::prepare`]) for this run only: many users
    /// can share one session this way.
    pub fn run_with(&mut self, delta: Option<&OrtDelta>, inputs: &[(&str, Tensor)]) -> Result<Outputs> {
        let owned: Vec<(String, DynValue)> = inputs.iter().map(|(n, t)| Ok(((*n).to_owned(), to_ort(t)?))).collect::<Result<_>>()?;
        let mut feeds: Vec<(String, SessionInputValue<'_>)> = owned.iter().map(|(n, v)| (n.clone(), SessionInputValue::from(v))).collect();
        if let Some(d) = delta {
            feeds.extend(d.feeds.iter().map(|(n, v)| (n.clone(), SessionInputValue::from(v))));
        }
        let out = self.session.run(feeds).map_err(err)?;
        let mut result = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let v = out.get(name.as_str()).ok_or_else(|| err(format!("no output `{name}`")))?;
            let (shape, data) = v.try_extract_tensor::<f32>().map_err(err)?;
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            result.push((name.clone(), Tensor::new(&shape, data.to_vec())?));
        }
        Ok(Outputs(result))
    }

    /// The adapter-ready file's map of delta inputs (`None` on the merged path).
    pub fn adapter(&self) -> Option<&AdapterReady> {
        self.ready.as_ref()
    }
}

fn build(bytes: &[u8], threads: usize, library: Option<&Path>) -> Result<OrtRt> {
    let env = environment(library)?;
    let mut b = OrtRt::builder(env).map_err(err)?;
    if threads > 0 {
        b = b.with_intra_threads(threads).map_err(err)?;
    }
    b.commit_from_memory(bytes).map_err(err)
}

fn to_ort(t: &Tensor) -> Result<DynValue> {
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    let v = match t.data() {
        Data::F32(v) => OrtTensor::from_array((shape, v.to_vec())).map_err(err)?.into_dyn(),
        Data::I64(v) => OrtTensor::from_array((shape, v.to_vec())).map_err(err)?.into_dyn(),
        Data::I32(v) => OrtTensor::from_array((shape, v.to_vec())).map_err(err)?.into_dyn(),
        Data::I8(v) => OrtTensor::from_array((shape, v.to_vec())).map_err(err)?.into_dyn(),
        Data::U8(v) => OrtTensor::from_array((shape, v.to_vec())).map_err(err)?.into_dyn(),
        Data::Bool(v) => OrtTensor::from_array((shape, v.to_vec())).map_err(err)?.into_dyn(),
    };
    Ok(v)
}
