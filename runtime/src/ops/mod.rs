//! Operators: what each node computes. One file per op family, each with its evaluation and
//! tests; fused ops (`Linear`, `LayerNorm`, `RmsNorm`, `Attention`, ...) live beside the plain
//! ONNX ones they replace.

pub mod attention;
pub mod attention_prefix;
pub mod broadcast;
pub mod budget;
pub mod elementwise;
pub mod gather;
pub mod invertible;
pub mod linear;
pub mod linear_patch;
pub mod matmul;
pub mod norm;
pub mod quant;
pub mod reduce;
pub mod rotary;
pub mod shape;
pub mod softmax;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

pub use attention::Attention;
pub use elementwise::{BinaryOp, UnaryOp};
pub use linear::{Linear, LinearWeight, LoraPatch};

/// One entry of a [`Op::SymShape`]: a fixed value or a dimension of one of the node's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymShapeDim {
    /// A fixed value.
    Fixed(i64),
    /// Dimension `axis` of input `slot`.
    Dim {
        /// Which of the node's inputs.
        slot: usize,
        /// Which of its axes.
        axis: usize,
    },
}

/// Everything a node can compute.
#[derive(Clone, Debug)]
pub enum Op {
    /// Broadcasting binary arithmetic, comparison or logic.
    Binary(BinaryOp),
    /// Elementwise unary function.
    Unary(UnaryOp),
    /// N-ary elementwise `Max`/`Min`.
    Variadic(BinaryOp),
    /// `Where(cond, x, y)`.
    Where,
    /// `Cast` to a dtype.
    Cast(DType),
    /// `Identity`.
    Identity,
    /// `Shape` with optional `start`/`end`.
    Shape {
        /// First axis.
        start: i64,
        /// One past the last axis.
        end: Option<i64>,
    },
    /// `Reshape`.
    Reshape {
        /// Whether a 0 in the target shape is a real 0 rather than "copy this dim".
        allowzero: bool,
    },
    /// `Squeeze` (axes from the attribute in opset < 13, else the second input).
    Squeeze(Option<Vec<i64>>),
    /// `Unsqueeze` (axes from the attribute in opset < 13, else the second input).
    Unsqueeze(Option<Vec<i64>>),
    /// `Flatten`.
    Flatten(i64),
    /// `Concat`.
    Concat(i64),
    /// `Transpose` (reverse axes when no permutation is given).
    Transpose(Option<Vec<usize>>),
    /// `Expand`.
    Expand,
    /// `Range`.
    Range,
    /// `ConstantOfShape` with the fill value.
    ConstantOfShape(Tensor),
    /// `Slice` (opset 10+: starts/ends/axes/steps as inputs).
    Slice,
    /// `Gather` along an axis.
    Gather(i64),
    /// `GatherND` with `batch_dims`.
    GatherNd(usize),
    /// Batched `MatMul` with NumPy broadcasting.
    MatMul,
    /// `MatMulInteger` (reference; fused into an int8 [`Linear`] when the weight is constant).
    MatMulInteger,
    /// `Softmax` along an axis.
    Softmax(i64),
    /// `ReduceMean` (axes from the attribute before opset 18, else the second input).
    ReduceMean {
        /// Axes from the attribute, if given there.
        axes: Option<Vec<i64>>,
        /// Whether reduced axes stay as size 1.
        keepdims: bool,
        /// With no axes: reduce nothing (true) or everything (false).
        noop_with_empty_axes: bool,
    },
    /// `LayerNormalization`, also the fused form of its decomposition.
    LayerNorm {
        /// First normalized axis.
        axis: i64,
        /// Variance epsilon.
        epsilon: f32,
    },
    /// Residual add fused with LayerNorm over the last axis (inputs x, skip, γ, β).
    AddLayerNorm {
        /// Variance epsilon.
        epsilon: f32,
    },
    /// RMSNorm (fused from `Pow`/`ReduceMean`/`Sqrt`/`Reciprocal`): x / sqrt(mean(x²) + eps) · w.
    RmsNorm {
        /// Variance epsilon.
        epsilon: f32,
    },
    /// GELU, exact (erf) or tanh-approximated.
    Gelu {
        /// Whether the tanh approximation is used.
        tanh: bool,
    },
    /// SiLU: x · sigmoid(x).
    Silu,
    /// `DynamicQuantizeLinear`.
    DynamicQuantizeLinear,
    /// `DequantizeLinear` along an axis.
    DequantizeLinear(i64),
    /// Fused `MatMul` (+ `Add` bias) with a constant weight, f32 or int8.
    Linear(Linear),
    /// Fused scaled-dot-product attention.
    Attention(Attention),
    /// A constant produced by a pass (folded into the graph's constants afterwards).
    Constant(Tensor),
    /// A shape computed from the run's input dims: what a folded `Shape`/`Gather`/`Concat`
    /// chain evaluated to, symbolically.
    SymShape {
        /// The entries.
        dims: Vec<SymShapeDim>,
        /// Whether the result is a scalar (one entry) rather than a 1-D tensor.
        scalar: bool,
        /// Whether the result is i32 rather than i64.
        int32: bool,
    },
    /// Rotary position embedding on per-head Q or K (inputs: x, cos, sin, and the bounds of
    /// the two half slices).
    Rotary,
    /// Row lookup in a constant table (`Gather` on axis 0), f32 or quantized; inputs are the
    /// table and the ids.
    Embedding {
        /// `(scale, zero point)` when the table is stored quantized (ONNX Runtime's
        /// `Gather` → `DequantizeLinear`).
        dequant: Option<(f32, i64)>,
        /// Prompt tuning's soft prompt, `[len × dim]`: it replaces the first `len` looked-up
        /// rows of every sequence (see [`crate::peft::prompt`]).
        prompt: Option<std::sync::Arc<Vec<f32>>>,
    },
    /// MAD-X's invertible adapter on the embedding output (inserted by a delta).
    Invertible(std::sync::Arc<invertible::InvertibleAdapter>),
}

impl Op {
    /// A short name for listings.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Binary(b) | Op::Variadic(b) => b.name(),
            Op::Unary(u) => u.name(),
            Op::Where => "Where",
            Op::Cast(_) => "Cast",
            Op::Identity => "Identity",
            Op::Shape { .. } => "Shape",
            Op::Reshape { .. } => "Reshape",
            Op::Squeeze(_) => "Squeeze",
            Op::Unsqueeze(_) => "Unsqueeze",
            Op::Flatten(_) => "Flatten",
            Op::Concat(_) => "Concat",
            Op::Transpose(_) => "Transpose",
            Op::Expand => "Expand",
            Op::Range => "Range",
            Op::ConstantOfShape(_) => "ConstantOfShape",
            Op::Slice => "Slice",
            Op::Gather(_) => "Gather",
            Op::GatherNd(_) => "GatherND",
            Op::MatMul => "MatMul",
            Op::MatMulInteger => "MatMulInteger",
            Op::Softmax(_) => "Softmax",
            Op::ReduceMean { .. } => "ReduceMean",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::RmsNorm { .. } => "RmsNorm",
            Op::AddLayerNorm { .. } => "AddLayerNorm",
            Op::Gelu { .. } => "Gelu",
            Op::Silu => "Silu",
            Op::DynamicQuantizeLinear => "DynamicQuantizeLinear",
            Op::DequantizeLinear(_) => "DequantizeLinear",
            Op::Linear(l) => {
                if l.is_int8() {
                    "Linear(int8)"
                } else {
                    "Linear"
                }
            }
            Op::Attention(_) => "Attention",
            Op::Embedding { .. } => "Embedding",
            Op::Invertible(_) => "InvertibleAdapter",
            Op::Rotary => "Rotary",
            Op::Constant(_) => "Constant",
            Op::SymShape { .. } => "SymShape",
        }
    }

    /// Whether the op is one of the high-level fused ops.
    pub fn is_fused(&self) -> bool {
        matches!(
            self,
            Op::Linear(_)
                | Op::LayerNorm { .. }
                | Op::RmsNorm { .. }
                | Op::AddLayerNorm { .. }
                | Op::Gelu { .. }
                | Op::Silu
                | Op::Attention(_)
                | Op::Embedding { .. }
                | Op::Rotary
        )
    }

    /// Computes the outputs from the inputs. `node` names the node in errors.
    pub fn eval(&self, inputs: &[Option<&Tensor>], node: &str) -> Result<Vec<Tensor>> {
        let cx = Cx { node, op: self.name(), inputs };
        let one = |t: Tensor| Ok(vec![t]);
        match self {
            Op::Binary(b) => one(elementwise::binary(*b, cx.req(0)?, cx.req(1)?).map_err(|e| cx.wrap(e))?),
            Op::Variadic(b) => {
                let mut acc = cx.req(0)?.clone();
                for i in 1..inputs.len() {
                    acc = elementwise::binary(*b, &acc, cx.req(i)?).map_err(|e| cx.wrap(e))?;
                }
                one(acc)
            }
            Op::Unary(u) => one(elementwise::unary(*u, cx.req(0)?).map_err(|e| cx.wrap(e))?),
            Op::Where => one(elementwise::where_(cx.req(0)?, cx.req(1)?, cx.req(2)?).map_err(|e| cx.wrap(e))?),
            Op::Cast(to) => one(elementwise::cast(cx.req(0)?, *to)),
            Op::Identity => one(cx.req(0)?.clone()),
            Op::Shape { start, end } => one(shape::shape(cx.req(0)?, *start, *end)),
            Op::Reshape { allowzero } => one(shape::reshape(cx.req(0)?, cx.req(1)?, *allowzero).map_err(|e| cx.wrap(e))?),
            Op::Squeeze(axes) => one(shape::squeeze(cx.req(0)?, axes.as_deref(), cx.opt(1)).map_err(|e| cx.wrap(e))?),
            Op::Unsqueeze(axes) => one(shape::unsqueeze(cx.req(0)?, axes.as_deref(), cx.opt(1)).map_err(|e| cx.wrap(e))?),
            Op::Flatten(axis) => one(shape::flatten(cx.req(0)?, *axis).map_err(|e| cx.wrap(e))?),
            Op::Concat(axis) => {
                let ts: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
                one(shape::concat(&ts, *axis).map_err(|e| cx.wrap(e))?)
            }
            Op::Transpose(perm) => one(shape::transpose(cx.req(0)?, perm.as_deref()).map_err(|e| cx.wrap(e))?),
            Op::Expand => one(shape::expand(cx.req(0)?, cx.req(1)?).map_err(|e| cx.wrap(e))?),
            Op::Range => one(shape::range(cx.req(0)?, cx.req(1)?, cx.req(2)?).map_err(|e| cx.wrap(e))?),
            Op::ConstantOfShape(v) => one(shape::constant_of_shape(cx.req(0)?, v).map_err(|e| cx.wrap(e))?),
            Op::Slice => one(gather::slice(cx.req(0)?, cx.req(1)?, cx.req(2)?, cx.opt(3), cx.opt(4)).map_err(|e| cx.wrap(e))?),
            Op::Gather(axis) => one(gather::gather(cx.req(0)?, cx.req(1)?, *axis).map_err(|e| cx.wrap(e))?),
            Op::GatherNd(b) => one(gather::gather_nd(cx.req(0)?, cx.req(1)?, *b).map_err(|e| cx.wrap(e))?),
            Op::MatMul => one(matmul::matmul(cx.req(0)?, cx.req(1)?).map_err(|e| cx.wrap(e))?),
            Op::MatMulInteger => one(matmul::matmul_integer(cx.req(0)?, cx.req(1)?, cx.opt(2), cx.opt(3)).map_err(|e| cx.wrap(e))?),
            Op::Softmax(axis) => one(softmax::softmax(cx.req(0)?, *axis).map_err(|e| cx.wrap(e))?),
            Op::ReduceMean { axes, keepdims, noop_with_empty_axes } => one(
                reduce::reduce_mean(cx.req(0)?, axes.as_deref(), cx.opt(1), *keepdims, *noop_with_empty_axes)
                    .map_err(|e| cx.wrap(e))?,
            ),
            Op::LayerNorm { axis, epsilon } => {
                one(norm::layer_norm(cx.req(0)?, cx.req(1)?, cx.opt(2), *axis, *epsilon).map_err(|e| cx.wrap(e))?)
            }
            Op::AddLayerNorm { epsilon } => one(
                norm::add_layer_norm(cx.req(0)?, cx.req(1)?, cx.req(2)?, cx.opt(3), *epsilon).map_err(|e| cx.wrap(e))?,
            ),
            Op::RmsNorm { epsilon } => one(norm::rms_norm(cx.req(0)?, cx.req(1)?, *epsilon).map_err(|e| cx.wrap(e))?),
            Op::Gelu { tanh } => one(elementwise::gelu(cx.req(0)?, *tanh).map_err(|e| cx.wrap(e))?),
            Op::Silu => one(elementwise::silu(cx.req(0)?).map_err(|e| cx.wrap(e))?),
            Op::DynamicQuantizeLinear => quant::dynamic_quantize_linear(cx.req(0)?).map_err(|e| cx.wrap(e)),
            Op::DequantizeLinear(axis) => {
                one(quant::dequantize_linear(cx.req(0)?, cx.req(1)?, cx.opt(2), *axis).map_err(|e| cx.wrap(e))?)
            }
            Op::Linear(l) => one(l.forward(cx.req(0)?).map_err(|e| cx.wrap(e))?),
            Op::Embedding { dequant, prompt } => {
                let mut out = gather::embedding(cx.req(0)?, cx.req(1)?, *dequant).map_err(|e| cx.wrap(e))?;
                if let Some(p) = prompt {
                    out = gather::overwrite_prompt(&out, p).map_err(|e| cx.wrap(e))?;
                }
                one(out)
            }
            Op::Invertible(a) => one(a.forward(cx.req(0)?).map_err(|e| cx.wrap(e))?),
            Op::Constant(t) => one(t.clone()),
            Op::SymShape { dims, scalar, int32 } => {
                let mut v = Vec::with_capacity(dims.len());
                for d in dims {
                    v.push(match *d {
                        SymShapeDim::Fixed(k) => k,
                        SymShapeDim::Dim { slot, axis } => *cx.req(slot)?.shape().get(axis).ok_or_else(|| {
                            cx.wrap(shape_err(format!("input {slot} has no axis {axis}")))
                        })? as i64,
                    });
                }
                let shape: &[usize] = if *scalar { &[] } else { &[v.len()] };
                let t = if *int32 { Tensor::new(shape, v.iter().map(|&x| x as i32).collect()) } else { Tensor::new(shape, v) };
                one(t.map_err(|e| cx.wrap(e))?)
            }
            Op::Rotary => {
                let mut slots: [Option<&Tensor>; 11] = [None; 11];
                for (s, t) in slots.iter_mut().zip(inputs) {
                    *s = *t;
                }
                one(rotary::rotary(&slots).map_err(|e| cx.wrap(e))?)
            }
            Op::Attention(a) => one(a.forward(cx.req(0)?, cx.req(1)?, cx.req(2)?, cx.opt(3)).map_err(|e| cx.wrap(e))?),
        }
    }
}

/// Evaluation context: names the node in errors and fetches inputs.
struct Cx<'a> {
    node: &'a str,
    op: &'static str,
    inputs: &'a [Option<&'a Tensor>],
}

impl<'a> Cx<'a> {
    fn req(&self, i: usize) -> Result<&'a Tensor> {
        self.inputs.get(i).copied().flatten().ok_or_else(|| Error::Shape {
            node: self.node.to_owned(),
            op: self.op.to_owned(),
            reason: format!("input {i} is missing"),
        })
    }

    fn opt(&self, i: usize) -> Option<&'a Tensor> {
        self.inputs.get(i).copied().flatten()
    }

    /// Attaches the node to errors raised by op code (which does not know its node).
    fn wrap(&self, e: Error) -> Error {
        match e {
            Error::InvalidModel(reason) | Error::Shape { reason, .. } => {
                Error::Shape { node: self.node.to_owned(), op: self.op.to_owned(), reason }
            }
            other => other,
        }
    }
}

/// Shorthand for an op-level shape error (the caller attaches the node).
pub(crate) fn shape_err(reason: impl Into<String>) -> Error {
    Error::InvalidModel(reason.into())
}

/// Resolves a possibly negative axis against a rank.
pub(crate) fn norm_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(shape_err(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}
