//! [`Base`]: a frozen model, loaded once, fused, optionally quantized, and shared read-only by
//! every session (and later every trainer) through an `Arc`.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::{fold, fuse, shapes, Graph};
use crate::onnx::{import::{import_model_owned, ImportInfo}, proto::ModelProto};
use crate::ops::Op;

/// How the base's `Linear` weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// Keep what the model ships: f32 stays f32, ONNX Runtime int8 stays int8.
    #[default]
    AsShipped,
    /// Quantize f32 `Linear` weights to int8 (symmetric, per output channel) at load.
    Int8,
}

/// Options for [`Base::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Weight storage.
    pub weights: WeightFormat,
    /// Whether to fuse op patterns into `Linear`, `LayerNorm`, `Attention`, ... (on by
    /// default; off runs the graph exactly as exported, which helps when debugging parity).
    pub fuse: bool,
    /// Largest model file accepted, in bytes; protects a phone from a hostile download.
    pub max_file_bytes: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { weights: WeightFormat::AsShipped, fuse: true, max_file_bytes: 4 << 30 }
    }
}

/// A frozen, immutable model.
#[derive(Debug)]
pub struct Base {
    graph: Arc<Graph>,
    info: ImportInfo,
    fingerprint: std::sync::OnceLock<[u8; 32]>,
}

impl Base {
    /// Loads an ONNX model from a file; external data is read only from the file's folder.
    ///
    /// ```no_run
    /// use kilotune::{Base, LoadOptions};
    /// let base = Base::load("model.onnx", LoadOptions::default())?;
    /// println!("{} parameters", base.parameter_count());
    /// # Ok::<(), kilotune::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>, options: LoadOptions) -> Result<Arc<Base>> {
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.to_owned(), source };
        let limit = options.max_file_bytes;
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > limit {
            return Err(Error::TooLarge { size: len, limit });
        }
        // Read at most one byte past the limit: a file that grows after the check above is
        // still refused, and never read whole.
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        std::fs::File::open(path).and_then(|f| f.take(limit.saturating_add(1)).read_to_end(&mut bytes)).map_err(io)?;
        if bytes.len() as u64 > limit {
            return Err(Error::TooLarge { size: limit + 1, limit });
        }
        let dir = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
        // The file's bytes go as soon as they are decoded, and each initializer's decoded bytes
        // as soon as it is converted, so loading peaks near two copies of the weights, not three.
        let model = ModelProto::decode(&bytes)?;
        drop(bytes);
        let (graph, info) = import_model_owned(model, dir)?;
        Self::finish(graph, info, &options)
    }

    /// Loads an ONNX model from bytes (external data is refused: there is no folder).
    pub fn from_bytes(bytes: &[u8], options: LoadOptions) -> Result<Arc<Base>> {
        if bytes.len() as u64 > options.max_file_bytes {
            return Err(Error::TooLarge { size: bytes.len() as u64, limit: options.max_file_bytes });
        }
        Self::build(bytes, None, &options)
    }

    fn build(bytes: &[u8], dir: Option<&Path>, options: &LoadOptions) -> Result<Arc<Base>> {
        let model = ModelProto::decode(bytes)?;
        let (graph, info) = import_model_owned(model, dir)?;
        Self::finish(graph, info, options)
    }

    fn finish(mut graph: Graph, info: ImportInfo, options: &LoadOptions) -> Result<Arc<Base>> {
        fold::fold_constants(&mut graph)?;
        fold::drop_identities(&mut graph);
        if options.fuse {
            fuse::fuse_all(&mut graph, &info)?;
            shapes::fold_shapes(&mut graph);
            fold::fold_constants(&mut graph)?;
        }
        if options.weights == WeightFormat::Int8 {
            fuse::quantize_linears(&mut graph);
        }
        Ok(Arc::new(Base { graph: Arc::new(graph), info, fingerprint: std::sync::OnceLock::new() }))
    }

    /// A base that runs `graph` in place of this one's, with this one's import facts (a merged
    /// delta makes a new base: new weights, so a new fingerprint).
    pub(crate) fn with_graph(&self, graph: Graph) -> Arc<Base> {
        Arc::new(Base { graph: Arc::new(graph), info: self.info.clone(), fingerprint: std::sync::OnceLock::new() })
    }

    /// The fused graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The fused graph, shared (sessions without a delta run it as it is).
    pub(crate) fn shared_graph(&self) -> Arc<Graph> {
        Arc::clone(&self.graph)
    }

    /// SHA-256 over the fused graph and its weights: what binds a user's delta to this base.
    /// Computed on first use (it reads every weight once) and cached.
    pub fn fingerprint(&self) -> [u8; 32] {
        *self.fingerprint.get_or_init(|| crate::fingerprint::fingerprint(&self.graph))
    }

    /// The default-domain opset the model was exported with.
    pub fn opset(&self) -> i64 {
        self.info.opset
    }

    /// The producer recorded in the model.
    pub fn producer(&self) -> &str {
        &self.info.producer
    }

    /// Input names in declaration order.
    pub fn input_names(&self) -> Vec<&str> {
        self.graph.inputs.iter().map(|i| self.graph.values[i.value].name.as_str()).collect()
    }

    /// Output names in declaration order.
    pub fn output_names(&self) -> Vec<&str> {
        self.graph.outputs.iter().map(|&o| self.graph.values[o].name.as_str()).collect()
    }

    /// The fused `Linear` layers, in execution order: what LoRA and friends can target.
    pub fn linears(&self) -> Vec<&crate::ops::Linear> {
        self.graph.nodes.iter().filter_map(|n| if let Op::Linear(l) = &n.op { Some(l) } else { None }).collect()
    }

    /// Parameters in the model: constants of f32 or int8 that feed compute, plus fused weights.
    pub fn parameter_count(&self) -> usize {
        let consts: usize = self
            .graph
            .values
            .iter()
            .filter_map(|v| v.constant.as_ref())
            .filter(|t| matches!(t.dtype(), crate::tensor::DType::F32 | crate::tensor::DType::I8 | crate::tensor::DType::U8) && t.len() > 1)
            .map(|t| t.len())
            .sum();
        consts + self.linears().iter().map(|l| l.parameter_count()).sum::<usize>()
    }
}
