//! Constant folding and dtype inference.
//!
//! Everything that depends only on constants is computed once at load: the legacy
//! exporter's `Constant` chains, transposed or dequantized weights, and shape arithmetic that
//! does not involve a run-time input. What remains depends on the inputs' shapes or values.

use super::{Graph, Patch};
use crate::error::Result;
use crate::ops::{budget, Op};
use crate::tensor::{DType, Tensor};

/// Constant folding stops at tensors larger than this (in elements), so a pass never
/// materializes something huge that the graph would otherwise compute lazily.
const MAX_FOLDED: usize = 1 << 24;

/// Evaluates every node whose inputs are all constants and turns its outputs into constants.
///
/// An op that would create more elements than the model's stored constants hold in all (or
/// 2^20, whichever is more) is left to run: what folding makes at load is then bounded by the
/// file (a dequantized or transposed weight is as large as the weight), and a few bytes that
/// ask for a huge `ConstantOfShape` or broadcast allocate nothing until a run asks for it.
pub fn fold_constants(g: &mut Graph) -> Result<()> {
    let stored: usize = g.values.iter().filter_map(|v| v.constant.as_ref()).map(Tensor::len).sum();
    let limit = stored.clamp(1 << 20, MAX_FOLDED);
    for i in 0..g.nodes.len() {
        let node = &g.nodes[i];
        let all_const = node.inputs.iter().all(|v| v.is_none_or(|v| g.values[v].constant.is_some()));
        let source = node.inputs.iter().all(Option::is_none) && !matches!(node.op, Op::Constant(_));
        if !all_const || source {
            continue;
        }
        let inputs: Vec<Option<&Tensor>> = node.inputs.iter().map(|v| v.and_then(|v| g.constant(v))).collect();
        let (outs, too_large) = budget::with_limit(limit, || node.op.eval(&inputs, &node.name));
        let outs = match outs {
            Err(_) if too_large => continue,
            r => r?,
        };
        if outs.iter().any(|t| t.len() > MAX_FOLDED) {
            continue;
        }
        let outputs = node.outputs.clone();
        for (v, t) in outputs.into_iter().zip(outs) {
            g.values[v].constant = Some(t);
        }
    }
    // Nodes whose every output is now constant are dead.
    let values = &g.values;
    g.nodes.retain(|n| !n.outputs.iter().all(|&o| values[o].constant.is_some()));
    g.prune();
    Ok(())
}

/// The element type of every value, where the graph determines it.
pub fn infer_dtypes(g: &Graph) -> Vec<Option<DType>> {
    let mut t: Vec<Option<DType>> = g.values.iter().map(|v| v.constant.as_ref().map(Tensor::dtype)).collect();
    for i in &g.inputs {
        t[i.value] = Some(i.dtype);
    }
    for n in &g.nodes {
        let first = n.inputs.first().copied().flatten().and_then(|v| t[v]);
        let second = n.inputs.get(1).copied().flatten().and_then(|v| t[v]);
        let out = match &n.op {
            Op::Binary(b) => match b.name() {
                "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" => Some(DType::Bool),
                _ => first,
            },
            Op::Unary(u) => match u.name() {
                "IsNaN" | "Not" => Some(DType::Bool),
                _ => first,
            },
            Op::Where => second,
            Op::Cast(d) => Some(*d),
            Op::Shape { .. } => Some(DType::I64),
            Op::ConstantOfShape(v) => Some(v.dtype()),
            Op::MatMulInteger => Some(DType::I32),
            Op::DynamicQuantizeLinear => Some(DType::U8),
            Op::DequantizeLinear(_)
            | Op::Linear(_)
            | Op::Attention(_)
            | Op::LayerNorm { .. }
            | Op::AddLayerNorm { .. }
            | Op::RmsNorm { .. }
            | Op::Embedding { .. } => {
                Some(DType::F32)
            }
            _ => first,
        };
        if let Some(&o) = n.outputs.first() {
            t[o] = out;
        }
        if let Op::DynamicQuantizeLinear = n.op {
            if let [_, s, z] = n.outputs[..] {
                t[s] = Some(DType::F32);
                t[z] = Some(DType::U8);
            }
        }
    }
    t
}

/// Removes `Identity` nodes and `Cast`s to the type a value already has.
pub fn drop_identities(g: &mut Graph) {
    let dtypes = infer_dtypes(g);
    let mut patch = Patch::default();
    for n in &g.nodes {
        let Some(Some(src)) = n.inputs.first().copied() else { continue };
        let same = match &n.op {
            Op::Identity => true,
            Op::Cast(to) => dtypes[src] == Some(*to),
            _ => false,
        };
        if same && !g.outputs.contains(&n.outputs[0]) {
            patch.rewire(n.outputs[0], src);
        }
    }
    if !patch.is_empty() {
        patch.apply(g);
    }
}
