//! A small ONNX graph builder for the importers: nodes named like the `torch.onnx` legacy
//! exporter names them (`/encoder/layer.0/attention/self/query/MatMul`), so that the fusion
//! passes recover each `Linear`'s PyTorch module path, and `Linear` layers written either as
//! `MatMul` (+ `Add`) or in ONNX Runtime's dynamic int8 form.

use std::collections::HashMap;

use super::{ImportError, ImportPrecision};
use crate::error::Result;
use crate::kernels::quantize::quantize_weight_per_channel;
use crate::onnx::proto::{AttributeProto, DimProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::onnx::write::{attr_kind, tensor_to_proto};
use crate::tensor::{DType, Tensor};

/// The default-domain opset the importers write: the `torch.onnx` legacy exporter's, and the
/// first with `LayerNormalization`.
pub(super) const OPSET: i64 = 17;

/// IR version 8 goes with opset 17 (ONNX's versioning table).
const IR_VERSION: i64 = 8;

/// The ONNX path of a module: `encoder.layer.0.attention` → `/encoder/layer.0/attention`, the
/// way the legacy exporter writes scopes (an index stays with the list it indexes).
fn scope_path(module: &str) -> String {
    let mut out = String::new();
    for part in module.split('.').filter(|p| !p.is_empty()) {
        if part.bytes().all(|b| b.is_ascii_digit()) && !out.is_empty() {
            out.push('.');
        } else {
            out.push('/');
        }
        out.push_str(part);
    }
    out
}

/// An INT attribute.
pub(super) fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), kind: attr_kind::INT, i, ..Default::default() }
}

/// An INTS attribute.
pub(super) fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), kind: attr_kind::INTS, ints: ints.to_vec(), ..Default::default() }
}

/// A FLOAT attribute.
pub(super) fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), kind: attr_kind::FLOAT, f, ..Default::default() }
}

/// `[rows, cols]` → `[cols, rows]`: PyTorch's `Linear` weight `[out, in]` becomes the `[in, out]`
/// right operand of `MatMul`.
pub(super) fn transpose_2d(t: &Tensor) -> Result<Tensor> {
    let (r, c) = match *t.shape() {
        [r, c] => (r, c),
        _ => return Err(ImportError::Config(format!("expected a 2-D weight, got shape {:?}", t.shape())).into()),
    };
    let src = t.typed::<f32>("weight")?;
    let mut out = vec![0f32; r * c];
    for (i, row) in src.chunks_exact(c.max(1)).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * r + i] = v;
        }
    }
    Tensor::new(&[c, r], out)
}

/// Builds one graph: nodes in topological order (each reads only values written before it),
/// initializers, and the precision its `Linear` layers are written in.
#[derive(Debug)]
pub(super) struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// How many nodes of each name stem exist, to number repeats like the exporter does.
    used: HashMap<String, usize>,
    /// Small constants already written, by content, so each is stored once.
    consts: HashMap<String, String>,
    /// The `DynamicQuantizeLinear` outputs of each value already quantized: Q, K and V
    /// projections share one quantization of their input, as ONNX Runtime writes it.
    quantized: HashMap<String, [String; 3]>,
    precision: ImportPrecision,
}

impl Builder {
    /// An empty graph whose `Linear` layers are written in `precision`.
    pub(super) fn new(precision: ImportPrecision) -> Builder {
        Builder {
            nodes: Vec::new(),
            inits: Vec::new(),
            used: HashMap::new(),
            consts: HashMap::new(),
            quantized: HashMap::new(),
            precision,
        }
    }

    /// A fresh node name `/<scope>/<Op>`, `_1`, `_2`... for repeats within the scope.
    fn node_name(&mut self, module: &str, op: &str) -> String {
        let stem = format!("{}/{op}", scope_path(module));
        let n = self.used.entry(stem.clone()).or_insert(0);
        let name = if *n == 0 { stem } else { format!("{stem}_{n}") };
        *n += 1;
        name
    }

    /// Adds a node with `outputs` outputs (named `<node>_output_<i>`) and returns their names.
    pub(super) fn node_n(&mut self, module: &str, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>, outputs: usize) -> Vec<String> {
        let name = self.node_name(module, op);
        let output: Vec<String> = (0..outputs).map(|i| format!("{name}_output_{i}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: output.clone(),
            name,
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        output
    }

    /// Adds a single-output node and returns its output's name.
    pub(super) fn node(&mut self, module: &str, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.node_n(module, op, inputs, attribute, 1).remove(0)
    }

    /// Scaled dot-product attention over per-head `q` [b, heads, s, d], `kt` [b, heads, d, s]
    /// and `v` [b, heads, s, d]: `softmax(q·kt × scale + mask) · v`, with the heads merged back
    /// to [b, s, hidden] by the shape `merged`. The pattern both exporters write, which the
    /// engine fuses into one `Attention`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(&mut self, module: &str, q: &str, kt: &str, v: &str, scale: &str, mask: &str, merged: &str) -> String {
        let scores = self.node(module, "MatMul", &[q, kt], vec![]);
        let scores = self.node(module, "Mul", &[&scores, scale], vec![]);
        let scores = self.node(module, "Add", &[&scores, mask], vec![]);
        let probs = self.node(module, "Softmax", &[&scores], vec![attr_int("axis", -1)]);
        let ctx = self.node(module, "MatMul", &[&probs, v], vec![]);
        let ctx = self.node(module, "Transpose", &[&ctx], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        self.node(module, "Reshape", &[&ctx, merged], vec![])
    }

    /// Adds an initializer under `name` (a Hugging Face name where there is one).
    pub(super) fn init(&mut self, name: &str, t: &Tensor) -> String {
        self.inits.push(tensor_to_proto(name, t));
        name.to_owned()
    }

    fn constant(&mut self, key: String, t: impl FnOnce() -> Tensor) -> String {
        if let Some(name) = self.consts.get(&key) {
            return name.clone();
        }
        let name = format!("const_{}", self.consts.len());
        self.inits.push(tensor_to_proto(name.clone(), &t()));
        self.consts.insert(key, name.clone());
        name
    }

    /// A 1-D int64 constant.
    pub(super) fn ints(&mut self, v: &[i64]) -> String {
        let v = v.to_vec();
        self.constant(format!("i64{v:?}"), || Tensor::new(&[v.len()], v.clone()).expect("length matches"))
    }

    /// A rank-0 int64 constant.
    pub(super) fn int_scalar(&mut self, v: i64) -> String {
        self.constant(format!("i64 {v}"), || Tensor::scalar(v))
    }

    /// A rank-0 f32 constant.
    pub(super) fn float_scalar(&mut self, v: f32) -> String {
        self.constant(format!("f32 {:08x}", v.to_bits()), || Tensor::scalar(v))
    }

    /// Renames the output `value` of the node that writes it to `name` (a graph output's name);
    /// only before anything reads it.
    pub(super) fn rename_output(&mut self, value: &str, name: &str) -> Result<String> {
        let read = self.nodes.iter().any(|n| n.input.iter().any(|i| i == value));
        let node = self.nodes.iter_mut().rev().find(|n| n.output.first().is_some_and(|o| o == value));
        match node {
            Some(n) if !read => {
                n.output[0] = name.to_owned();
                Ok(name.to_owned())
            }
            _ => Err(ImportError::Config(format!("internal: cannot rename `{value}` to `{name}`")).into()),
        }
    }

    /// A `Linear` layer `y = x·Wᵀ + b` for module `module` (its PyTorch path), with `w` in
    /// PyTorch's `[out, in]` layout. f32 writes `MatMul(x, Wᵀ)` (+ `Add(·, b)`); int8 writes ONNX
    /// Runtime's dynamic form with symmetric per-output-channel weights:
    /// `DynamicQuantizeLinear(x)` → `MatMulInteger(xq, Wq, xzp, 0)` → `Cast(f32)` →
    /// `Mul(·, xs·ws)` (+ `Add(·, b)`). The bias is stored as `<module>.bias`, the Hugging
    /// Face name, which is also where the fusion pass reads the module's name from.
    pub(super) fn linear(&mut self, module: &str, x: &str, w: &Tensor, b: Option<&Tensor>) -> Result<String> {
        let wt = transpose_2d(w)?;
        let (k, n) = (wt.shape()[0], wt.shape()[1]);
        let y = match self.precision {
            ImportPrecision::F32 => {
                let w_name = self.init(&format!("{module}.weight_t"), &wt);
                self.node(module, "MatMul", &[x, &w_name], vec![])
            }
            ImportPrecision::Int8 => {
                let (q, scales) = quantize_weight_per_channel(wt.typed::<f32>("weight")?, k, n);
                let wq = self.init(&format!("{module}.weight_quantized"), &Tensor::new(&[k, n], q)?);
                let ws = self.init(&format!("{module}.weight_scale"), &Tensor::new(&[n], scales)?);
                let wzp = self.init(&format!("{module}.weight_zero_point"), &Tensor::scalar(0i8));
                let [xq, xs, xzp] = self.quantize(module, x);
                let scale = self.node(module, "Mul", &[&xs, &ws], vec![]);
                let acc = self.node(module, "MatMulInteger", &[&xq, &wq, &xzp, &wzp], vec![]);
                let accf = self.node(module, "Cast", &[&acc], vec![attr_int("to", i64::from(DType::F32.onnx_code()))]);
                self.node(module, "Mul", &[&accf, &scale], vec![])
            }
        };
        match b {
            Some(b) => {
                let b_name = self.init(&format!("{module}.bias"), b);
                Ok(self.node(module, "Add", &[&y, &b_name], vec![]))
            }
            None => Ok(y),
        }
    }

    /// `DynamicQuantizeLinear(x)`, once per value.
    fn quantize(&mut self, module: &str, x: &str) -> [String; 3] {
        if let Some(q) = self.quantized.get(x) {
            return q.clone();
        }
        let out = self.node_n(module, "DynamicQuantizeLinear", &[x], vec![], 3);
        let q = [out[0].clone(), out[1].clone(), out[2].clone()];
        self.quantized.insert(x.to_owned(), q.clone());
        q
    }

    /// The finished model with its graph `inputs` and `outputs` (see [`value_info`]) and
    /// `metadata` as model properties.
    pub(super) fn finish(self, inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>, metadata: Vec<(String, String)>) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![(String::new(), OPSET)],
            producer_name: "kilotune".into(),
            graph: GraphProto { name: "main".into(), node: self.nodes, initializer: self.inits, input: inputs, output: outputs },
            metadata_props: metadata,
        }
    }
}

/// A graph input or output: a tensor of `dtype` whose dims are named (`batch`) or fixed.
pub(super) fn value_info(name: &str, dtype: DType, dims: &[Dim<'_>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        elem_type: dtype.onnx_code(),
        dims: dims
            .iter()
            .map(|d| match d {
                Dim::Named(s) => DimProto::Param((*s).to_owned()),
                Dim::Fixed(v) => DimProto::Value(*v as i64),
            })
            .collect(),
    }
}

/// One dimension of a graph input or output.
#[derive(Clone, Copy, Debug)]
pub(super) enum Dim<'a> {
    /// A run-time size.
    Named(&'a str),
    /// A size fixed by the model.
    Fixed(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_paths_keep_indices_with_their_list() {
        assert_eq!(scope_path("encoder.layer.0.attention.self.query"), "/encoder/layer.0/attention/self/query");
        assert_eq!(scope_path("model.layers.11.mlp.up_proj"), "/model/layers.11/mlp/up_proj");
        assert_eq!(scope_path("lm_head"), "/lm_head");
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let t = Tensor::new(&[2, 3], vec![1f32, 2., 3., 4., 5., 6.]).unwrap();
        let tt = transpose_2d(&t).unwrap();
        assert_eq!(tt.shape(), &[3, 2]);
        assert_eq!(tt.as_slice::<f32>().unwrap(), &[1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn repeated_ops_in_a_scope_are_numbered() {
        let mut b = Builder::new(ImportPrecision::F32);
        let a = b.node("encoder.layer.0", "Add", &["x", "y"], vec![]);
        let c = b.node("encoder.layer.0", "Add", &[&a, "y"], vec![]);
        assert_eq!(a, "/encoder/layer.0/Add_output_0");
        assert_eq!(c, "/encoder/layer.0/Add_1_output_0");
        assert_eq!(b.ints(&[0, 1]), b.ints(&[0, 1]), "equal constants are stored once");
    }
}
