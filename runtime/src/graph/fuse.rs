//! Fusion passes: op patterns from both `torch.onnx` exporters (and ONNX Runtime's
//! quantizer) become the engine's high-level ops.
//!
//! Each pass matches on the unchanged graph and collects a [`Patch`]; the fused node takes
//! the place, and the outputs, of the pattern's last node. A pattern only fuses when its
//! intermediate values have no other readers, so nothing is computed twice.

use std::sync::Arc;

use super::{Graph, Node, Patch, ValueId};
use crate::error::Result;
use crate::kernels::gemm_i8::PackedI8;
use crate::kernels::quantize::quantize_weight_per_channel;
use crate::onnx::import::ImportInfo;
use crate::ops::attention::Layout;
use crate::ops::{Attention, BinaryOp, Linear, LinearWeight, Op, UnaryOp};
use crate::tensor::{DType, Tensor};

/// Runs every fusion, in dependency order.
pub fn fuse_all(g: &mut Graph, info: &ImportInfo) -> Result<()> {
    fuse_linear(g, info);
    fuse_int8_linear(g, info);
    fuse_layer_norm(g);
    fuse_rms_norm(g);
    fuse_gelu(g);
    fuse_silu(g);
    fuse_rotary(g);
    fuse_attention(g);
    fuse_embedding(g);
    fuse_add_layer_norm(g);
    Ok(())
}

/// Read-only helpers over a graph for pattern matching.
struct View<'g> {
    g: &'g Graph,
    producers: Vec<Option<usize>>,
    consumers: Vec<Vec<usize>>,
}

impl<'g> View<'g> {
    fn new(g: &'g Graph) -> Self {
        View { g, producers: g.producers(), consumers: g.consumers() }
    }

    /// The node writing `v`, if it runs `pred`.
    fn producer(&self, v: ValueId, pred: impl Fn(&Op) -> bool) -> Option<(usize, &'g Node)> {
        let i = self.producers[v]?;
        let n = &self.g.nodes[i];
        pred(&n.op).then_some((i, n))
    }

    /// The value's only reader, if it has exactly one and is not a graph output.
    fn sole_consumer(&self, v: ValueId) -> Option<(usize, &'g Node)> {
        match self.consumers[v].as_slice() {
            [i] if !self.g.outputs.contains(&v) => Some((*i, &self.g.nodes[*i])),
            _ => None,
        }
    }

    fn only_read_by(&self, v: ValueId, readers: &[usize]) -> bool {
        !self.g.outputs.contains(&v) && self.consumers[v].iter().all(|c| readers.contains(c))
    }

    fn input(&self, n: &Node, slot: usize) -> Option<ValueId> {
        n.inputs.get(slot).copied().flatten()
    }

    fn constant(&self, v: ValueId) -> Option<&'g Tensor> {
        self.g.constant(v)
    }

    /// A constant with a single f32 element.
    fn scalar(&self, v: ValueId) -> Option<f32> {
        let t = self.constant(v)?;
        (t.len() == 1).then(|| t.as_slice::<f32>().map(|s| s[0])).flatten()
    }

    /// For a commutative binary node, the (constant scalar, other input) split.
    fn scalar_operand(&self, n: &Node) -> Option<(f32, ValueId)> {
        let (a, b) = (self.input(n, 0)?, self.input(n, 1)?);
        match (self.scalar(a), self.scalar(b)) {
            (_, Some(s)) => Some((s, a)),
            (Some(s), None) => Some((s, b)),
            _ => None,
        }
    }

    /// A 1-D f32 constant of length `n`.
    fn vector(&self, v: ValueId, n: usize) -> Option<&'g Tensor> {
        let t = self.constant(v)?;
        (t.dtype() == DType::F32 && t.len() == n && t.rank() <= 1).then_some(t)
    }
}

fn is_bin(op: &Op, b: BinaryOp) -> bool {
    matches!(op, Op::Binary(x) if *x == b)
}

fn is_un(op: &Op, u: UnaryOp) -> bool {
    matches!(op, Op::Unary(x) if *x == u)
}

/// The module path of a `Linear`, so `query` or `q_proj` can be targeted like PEFT does.
///
/// Sources, best first: the dynamo exporter's scope metadata; the bias initializer's name
/// (`encoder.layer.0.attention.self.query.bias`); the legacy exporter's node path
/// (`/encoder/layer.0/attention/self/query/MatMul`); the node's own name.
fn module_name(v: &View<'_>, info: &ImportInfo, node: &Node, bias: Option<ValueId>) -> String {
    if let Some(s) = info.scopes.get(&node.name) {
        return s.clone();
    }
    if let Some(b) = bias {
        if let Some(stem) = v.g.values[b].name.strip_suffix(".bias") {
            return stem.to_owned();
        }
    }
    if node.name.starts_with('/') && node.name.matches('/').count() > 1 {
        let path = node.name.trim_start_matches('/');
        if let Some((module, _op)) = path.rsplit_once('/') {
            return module.replace('/', ".");
        }
    }
    node.name.clone()
}

/// The bias `Add` after a projection, if it adds a constant vector of `n`.
fn bias_after(v: &View<'_>, out: ValueId, n: usize) -> Option<(usize, ValueId, ValueId)> {
    let (ai, add) = v.sole_consumer(out).filter(|(_, c)| is_bin(&c.op, BinaryOp::Add))?;
    let other = if v.input(add, 0)? == out { v.input(add, 1)? } else { v.input(add, 0)? };
    v.vector(other, n)?;
    Some((ai, other, add.outputs[0]))
}

/// `MatMul(x, W)` (+ `Add(b)`) with constant f32 `W` → `Linear`.
pub fn fuse_linear(g: &mut Graph, info: &ImportInfo) {
    let v = View::new(g);
    let mut patch = Patch::default();
    for (i, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::MatMul) {
            continue;
        }
        let (Some(x), Some(w)) = (v.input(n, 0), v.input(n, 1)) else { continue };
        let Some(wt) = v.constant(w).filter(|t| t.rank() == 2 && t.dtype() == DType::F32) else { continue };
        let (k, nn) = (wt.shape()[0], wt.shape()[1]);
        let weight = LinearWeight::F32(Arc::new(wt.as_slice::<f32>().expect("checked f32").to_vec()));
        let (at, bias, out) = match bias_after(&v, n.outputs[0], nn) {
            Some((ai, b, out)) => (ai, Some(b), out),
            None => (i, None, n.outputs[0]),
        };
        let module = module_name(&v, info, n, bias);
        let bias_data = bias.and_then(|b| v.constant(b)).map(|t| Arc::new(t.to_f32_vec()));
        let lin = Linear { module, k, n: nn, weight, bias: bias_data, lora: None, patch: None };
        patch.replace(at, Node { name: n.name.clone(), op: Op::Linear(lin), inputs: vec![Some(x)], outputs: vec![out] });
    }
    patch.apply(g);
}

/// ONNX Runtime's dynamic int8 pattern → int8 `Linear`:
/// `DynamicQuantizeLinear(x)` → `MatMulInteger(xq, Wq, xzp, wzp)` → `Cast(f32)` →
/// `Mul(·, xs·ws)` (+ `Add(b)`).
pub fn fuse_int8_linear(g: &mut Graph, info: &ImportInfo) {
    let v = View::new(g);
    let mut patch = Patch::default();
    for (i, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::MatMulInteger) {
            continue;
        }
        let m = || -> Option<(usize, Node)> {
            let (xq, wq, xzp) = (v.input(n, 0)?, v.input(n, 1)?, v.input(n, 2)?);
            let (_, dq) = v.producer(xq, |o| matches!(o, Op::DynamicQuantizeLinear))?;
            if dq.outputs.first() != Some(&xq) || dq.outputs.get(2) != Some(&xzp) {
                return None;
            }
            let x = v.input(dq, 0)?;
            let wt = v.constant(wq).filter(|t| t.rank() == 2)?;
            let (k, nn) = (wt.shape()[0], wt.shape()[1]);
            let w_i8: Vec<i8> = match wt.dtype() {
                DType::I8 => wt.as_slice::<i8>()?.to_vec(),
                _ => return None,
            };
            let wzp = match v.input(n, 3) {
                Some(z) => {
                    let t = v.constant(z).filter(|t| t.len() == 1)?;
                    t.to_i64_vec("zp").ok()?[0] as i8
                }
                None => 0,
            };
            let (_, cast) = v.sole_consumer(n.outputs[0]).filter(|(_, c)| matches!(c.op, Op::Cast(DType::F32)))?;
            let (mi, mul) = v.sole_consumer(cast.outputs[0]).filter(|(_, c)| is_bin(&c.op, BinaryOp::Mul))?;
            let other = if v.input(mul, 0)? == cast.outputs[0] { v.input(mul, 1)? } else { v.input(mul, 0)? };
            // The scale product xs · ws, with ws constant (per tensor or per column).
            let (_, smul) = v.producer(other, |o| is_bin(o, BinaryOp::Mul))?;
            let (s0, s1) = (v.input(smul, 0)?, v.input(smul, 1)?);
            let xs = dq.outputs.get(1).copied()?;
            let ws_v = if s0 == xs { s1 } else if s1 == xs { s0 } else { return None };
            let ws = v.constant(ws_v)?.as_slice::<f32>()?;
            let scales: Vec<f32> = match ws.len() {
                1 => vec![ws[0]; nn],
                l if l == nn => ws.to_vec(),
                _ => return None,
            };
            let (at, bias, out) = match bias_after(&v, mul.outputs[0], nn) {
                Some((ai, b, out)) => (ai, Some(b), out),
                None => (mi, None, mul.outputs[0]),
            };
            let module = module_name(&v, info, n, bias);
            let packed = PackedI8::new(&w_i8, k, nn, &scales, wzp);
            let lin = Linear {
                module,
                k,
                n: nn,
                weight: LinearWeight::I8(Arc::new(packed)),
                bias: bias.and_then(|b| v.constant(b)).map(|t| Arc::new(t.to_f32_vec())),
                lora: None,
                patch: None,
            };
            Some((at, Node { name: n.name.clone(), op: Op::Linear(lin), inputs: vec![Some(x)], outputs: vec![out] }))
        };
        if let Some((at, node)) = m() {
            let _ = i;
            patch.replace(at, node);
        }
    }
    patch.apply(g);
}

/// Quantizes every f32 `Linear` weight to int8 (symmetric, per output channel).
pub fn quantize_linears(g: &mut Graph) {
    for n in &mut g.nodes {
        if let Op::Linear(l) = &mut n.op {
            if let LinearWeight::F32(w) = &l.weight {
                let (q, s) = quantize_weight_per_channel(w, l.k, l.n);
                l.weight = LinearWeight::I8(Arc::new(PackedI8::new(&q, l.k, l.n, &s, 0)));
            }
        }
    }
}

/// Whether `v` is `ReduceMean(x, axes = [-1], keepdims)`; returns x.
fn mean_last(view: &View<'_>, v: ValueId) -> Option<(usize, ValueId)> {
    let (i, n) = view.producer(v, |o| matches!(o, Op::ReduceMean { keepdims: true, .. }))?;
    let axes = match &n.op {
        Op::ReduceMean { axes: Some(a), .. } => a.clone(),
        _ => view.constant(view.input(n, 1)?)?.to_i64_vec("axes").ok()?,
    };
    (axes == [-1]).then_some((i, view.input(n, 0)?))
}

/// The decomposed LayerNorm (legacy exporter) → `LayerNorm`:
/// d = x − mean(x); y = d / sqrt(mean(d²) + eps) · γ + β.
pub fn fuse_layer_norm(g: &mut Graph) {
    let v = View::new(g);
    let mut patch = Patch::default();
    for n in &g.nodes {
        if !is_bin(&n.op, BinaryOp::Div) {
            continue;
        }
        let m = || -> Option<(usize, Node)> {
            let (d, s) = (v.input(n, 0)?, v.input(n, 1)?);
            let (si, sub) = v.producer(d, |o| is_bin(o, BinaryOp::Sub))?;
            let x = v.input(sub, 0)?;
            let (mi, mx) = mean_last(&v, v.input(sub, 1)?)?;
            if mx != x {
                return None;
            }
            let (qi, sq) = v.producer(s, |o| is_un(o, UnaryOp::Sqrt))?;
            let (ai, add) = v.producer(v.input(sq, 0)?, |o| is_bin(o, BinaryOp::Add))?;
            let (eps, var) = v.scalar_operand(add)?;
            let (vi, pv) = mean_last(&v, var)?;
            let (pi, pow) = v.producer(pv, |o| is_bin(o, BinaryOp::Pow))?;
            if v.input(pow, 0)? != d || v.scalar(v.input(pow, 1)?)? != 2.0 {
                return None;
            }
            let (gi, gmul) = v.sole_consumer(n.outputs[0]).filter(|(_, c)| is_bin(&c.op, BinaryOp::Mul))?;
            let gamma = if v.input(gmul, 0)? == n.outputs[0] { v.input(gmul, 1)? } else { v.input(gmul, 0)? };
            let feat = v.constant(gamma)?.len();
            v.vector(gamma, feat)?;
            let (beta, at, out) = match bias_after(&v, gmul.outputs[0], feat) {
                Some((bi, b, out)) => (Some(b), bi, out),
                None => (None, gi, gmul.outputs[0]),
            };
            let div_i = v.producers[n.outputs[0]]?;
            let inner = [si, mi, qi, ai, vi, pi, div_i, gi];
            if !v.only_read_by(d, &inner) || !v.only_read_by(sub.inputs[1]?, &inner) {
                return None;
            }
            Some((
                at,
                Node {
                    name: n.name.clone(),
                    op: Op::LayerNorm { axis: -1, epsilon: eps },
                    inputs: vec![Some(x), Some(gamma), beta],
                    outputs: vec![out],
                },
            ))
        };
        if let Some((at, node)) = m() {
            patch.replace(at, node);
        }
    }
    patch.apply(g);
}

/// RMSNorm as exported from Llama → `RmsNorm`:
/// y = w · (x · 1/sqrt(mean(x²) + eps)), with `Reciprocal` or `Div(1, ·)`.
pub fn fuse_rms_norm(g: &mut Graph) {
    let v = View::new(g);
    let mut patch = Patch::default();
    for n in &g.nodes {
        if !is_un(&n.op, UnaryOp::Sqrt) {
            continue;
        }
        let m = || -> Option<(usize, Node)> {
            let (_, add) = v.producer(v.input(n, 0)?, |o| is_bin(o, BinaryOp::Add))?;
            let (eps, var) = v.scalar_operand(add)?;
            let (_, px) = mean_last(&v, var)?;
            let (_, pow) = v.producer(px, |o| is_bin(o, BinaryOp::Pow))?;
            let x = v.input(pow, 0)?;
            if v.scalar(v.input(pow, 1)?)? != 2.0 {
                return None;
            }
            let (_, rec) = v.sole_consumer(n.outputs[0])?;
            let ok = is_un(&rec.op, UnaryOp::Reciprocal)
                || (is_bin(&rec.op, BinaryOp::Div) && v.input(rec, 0).and_then(|a| v.scalar(a)) == Some(1.0));
            if !ok {
                return None;
            }
            let (_, mx) = v.sole_consumer(rec.outputs[0]).filter(|(_, c)| is_bin(&c.op, BinaryOp::Mul))?;
            let other = if v.input(mx, 0)? == rec.outputs[0] { v.input(mx, 1)? } else { v.input(mx, 0)? };
            if other != x {
                return None;
            }
            let (wi, wm) = v.sole_consumer(mx.outputs[0]).filter(|(_, c)| is_bin(&c.op, BinaryOp::Mul))?;
            let w = if v.input(wm, 0)? == mx.outputs[0] { v.input(wm, 1)? } else { v.input(wm, 0)? };
            let feat = v.constant(w)?.len();
            v.vector(w, feat)?;
            Some((
                wi,
                Node { name: n.name.clone(), op: Op::RmsNorm { epsilon: eps }, inputs: vec![Some(x), Some(w)], outputs: vec![wm.outputs[0]] },
            ))
        };
        if let Some((at, node)) = m() {
            patch.replace(at, node);
        }
    }
    patch.apply(g);
}

/// GELU's erf form (legacy exporter) → `Gelu`: x · 0.5 · (1 + erf(x / √2)), in any of the
/// orders the exporters write it.
pub fn fuse_gelu(g: &mut Graph) {
    let v = View::new(g);
    let mut patch = Patch::default();
    const SQRT2: f32 = std::f32::consts::SQRT_2;
    for n in &g.nodes {
        if !is_un(&n.op, UnaryOp::Erf) {
            continue;
        }
        let m = || -> Option<(usize, Node)> {
            let (_, pre) = v.producer(v.input(n, 0)?, |o| is_bin(o, BinaryOp::Div) || is_bin(o, BinaryOp::Mul))?;
            let x = v.input(pre, 0)?;
            let c = v.scalar(v.input(pre, 1)?)?;
            let ok = if is_bin(&pre.op, BinaryOp::Div) { (c - SQRT2).abs() < 1e-4 } else { (c - 1.0 / SQRT2).abs() < 1e-4 };
            if !ok {
                return None;
            }
            let (_, add) = v.sole_consumer(n.outputs[0]).filter(|(_, c)| is_bin(&c.op, BinaryOp::Add))?;
            if v.scalar_operand(add)?.0 != 1.0 {
                return None;
            }
            let (mi, m1) = v.sole_consumer(add.outputs[0]).filter(|(_, c)| is_bin(&c.op, BinaryOp::Mul))?;
            // Either (x · (1+erf)) · 0.5, or (x · 0.5) · (1+erf).
            let other = if v.input(m1, 0)? == add.outputs[0] { v.input(m1, 1)? } else { v.input(m1, 0)? };
            if other == x {
                let (hi, half) = v.sole_consumer(m1.outputs[0]).filter(|(_, c)| is_bin(&c.op, BinaryOp::Mul))?;
                if v.scalar_operand(half)?.0 != 0.5 {
                    return None;
                }
                return Some((hi, Node { name: n.name.clone(), op: Op::Gelu { tanh: false }, inputs: vec![Some(x)], outputs: vec![half.outputs[0]] }));
            }
            let (_, xh) = v.producer(other, |o| is_bin(o, BinaryOp::Mul))?;
            let (h, hx) = v.scalar_operand(xh)?;
            (h == 0.5 && hx == x).then(|| (mi, Node { name: n.name.clone(), op: Op::Gelu { tanh: false }, inputs: vec![Some(x)], outputs: vec![m1.outputs[0]] }))
        };
        if let Some((at, node)) = m() {
            patch.replace(at, node);
        }
    }
    patch.apply(g);
}

/// x · sigmoid(x) → `Silu`.
pub fn fuse_silu(g: &mut Graph) {
    let v = View::new(g);
    let mut patch = Patch::default();
    for n in &g.nodes {
        if !is_un(&n.op, UnaryOp::Sigmoid) {
            continue;
        }
        let Some(x) = v.input(n, 0) else { continue };
        let Some((mi, mul)) = v.sole_consumer(n.outputs[0]).filter(|(_, c)| is_bin(&c.op, BinaryOp::Mul)) else { continue };
        let (a, b) = (mul.inputs[0], mul.inputs[1]);
        if (a == Some(x) && b == Some(n.outputs[0])) || (b == Some(x) && a == Some(n.outputs[0])) {
            patch.replace(mi, Node { name: mul.name.clone(), op: Op::Silu, inputs: vec![Some(x)], outputs: vec![mul.outputs[0]] });
        }
    }
    patch.apply(g);
}

/// Rotary embeddings, x·cos + concat(−x[h..], x[..h])·sin → `Rotary` (the slices' bounds,
/// constant or computed from the shape, become its inputs).
pub fn fuse_rotary(g: &mut Graph) {
    let v = View::new(g);
    let mut patch = Patch::default();
    for (i, n) in g.nodes.iter().enumerate() {
        if !is_bin(&n.op, BinaryOp::Add) {
            continue;
        }
        let m = || -> Option<Node> {
            let (a, b) = (v.input(n, 0)?, v.input(n, 1)?);
            let (_, ma) = v.producer(a, |o| is_bin(o, BinaryOp::Mul))?;
            let (_, mb) = v.producer(b, |o| is_bin(o, BinaryOp::Mul))?;
            // One product is x·cos, the other rotate_half(x)·sin: find the Concat side.
            let concat_of = |m: &Node| -> Option<(ValueId, ValueId)> {
                for (c, other) in [(0, 1), (1, 0)] {
                    let cv = v.input(m, c)?;
                    if v.producer(cv, |o| matches!(o, Op::Concat(-1) | Op::Concat(3))).is_some() {
                        return Some((cv, v.input(m, other)?));
                    }
                }
                None
            };
            let ((cat, sin), xm) = match (concat_of(ma), concat_of(mb)) {
                (Some(c), None) => (c, mb),
                (None, Some(c)) => (c, ma),
                _ => return None,
            };
            let (_, concat) = v.producer(cat, |_| true)?;
            let [Some(neg_v), Some(lo_v)] = concat.inputs[..] else { return None };
            let (_, neg) = v.producer(neg_v, |o| is_un(o, UnaryOp::Neg))?;
            let (_, hi) = v.producer(v.input(neg, 0)?, |o| matches!(o, Op::Slice))?;
            let (_, lo) = v.producer(lo_v, |o| matches!(o, Op::Slice))?;
            let x = v.input(hi, 0)?;
            if v.input(lo, 0)? != x {
                return None;
            }
            let (xa, xb) = (v.input(xm, 0)?, v.input(xm, 1)?);
            let cos = if xa == x { xb } else if xb == x { xa } else { return None };
            // Both slices run along the last axis with unit steps.
            for s in [hi, lo] {
                let axis_ok = match v.input(s, 3) {
                    Some(ax) => matches!(v.constant(ax)?.to_i64_vec("axes").ok()?.as_slice(), [-1] | [3]),
                    None => false,
                };
                let step_ok = v.input(s, 4).is_none_or(|st| v.constant(st).and_then(|t| t.to_i64_vec("steps").ok()) == Some(vec![1]));
                if !axis_ok || !step_ok {
                    return None;
                }
            }
            let mut inputs = vec![Some(x), Some(cos), Some(sin)];
            for s in [hi, lo] {
                inputs.extend((1..5).map(|k| v.input(s, k)));
            }
            Some(Node { name: n.name.clone(), op: Op::Rotary, inputs, outputs: n.outputs.clone() })
        };
        if let Some(node) = m() {
            patch.replace(i, node);
        }
    }
    patch.apply(g);
}

/// Strips `Mul`/`Div` by constant scalars from `v`, returning the source and the factor.
fn strip_scale(view: &View<'_>, mut v: ValueId) -> (ValueId, f32) {
    let mut scale = 1.0f32;
    while let Some((_, n)) = view.producer(v, |o| is_bin(o, BinaryOp::Mul) || is_bin(o, BinaryOp::Div)) {
        let div = is_bin(&n.op, BinaryOp::Div);
        let (Some(a), Some(b)) = (view.input(n, 0), view.input(n, 1)) else { break };
        if let Some(c) = view.scalar(b) {
            scale *= if div { 1.0 / c } else { c };
            v = a;
        } else if let (false, Some(c)) = (div, view.scalar(a)) {
            scale *= c;
            v = b;
        } else {
            break;
        }
        if view.consumers[n.outputs[0]].len() != 1 {
            break;
        }
    }
    (v, scale)
}

/// Finds K from the transposed-keys operand of Q·Kᵀ.
fn keys_from_transposed(view: &View<'_>, kt: ValueId) -> Option<(ValueId, Layout)> {
    if let Some((_, t)) = view.producer(kt, |o| matches!(o, Op::Transpose(Some(_)))) {
        let Op::Transpose(Some(perm)) = &t.op else { return None };
        return match perm.as_slice() {
            [0, 1, 3, 2] => Some((view.input(t, 0)?, Layout::Bhsd)),
            [0, 2, 3, 1] => Some((view.input(t, 0)?, Layout::Bshd)),
            _ => None,
        };
    }
    // The dynamo exporter's form: Reshape(Transpose(Reshape(K, [B·H, S, D]), [0, 2, 1]), [B, H, D, S]).
    let (_, r2) = view.producer(kt, |o| matches!(o, Op::Reshape { .. }))?;
    let (_, t) = view.producer(view.input(r2, 0)?, |o| matches!(o, Op::Transpose(Some(p)) if p == &[0, 2, 1]))?;
    let (_, r1) = view.producer(view.input(t, 0)?, |o| matches!(o, Op::Reshape { .. }))?;
    Some((view.input(r1, 0)?, Layout::Bhsd))
}

/// Undoes grouped-query repetition (`repeat_kv`): Reshape(Expand(Unsqueeze(x, 2))) → x.
fn unrepeat_kv(view: &View<'_>, v: ValueId) -> ValueId {
    let find = || -> Option<ValueId> {
        let (_, r) = view.producer(v, |o| matches!(o, Op::Reshape { .. }))?;
        let (_, e) = view.producer(view.input(r, 0)?, |o| matches!(o, Op::Expand))?;
        let (_, u) = view.producer(view.input(e, 0)?, |o| matches!(o, Op::Unsqueeze(_)))?;
        let axes = match &u.op {
            Op::Unsqueeze(Some(a)) => a.clone(),
            _ => view.constant(view.input(u, 1)?)?.to_i64_vec("axes").ok()?,
        };
        (axes == [2]).then(|| view.input(u, 0)).flatten()
    };
    find().unwrap_or(v)
}

/// softmax(scale·Q·Kᵀ + mask) · V (with the exporters' NaN guard) → `Attention`.
pub fn fuse_attention(g: &mut Graph) {
    let v = View::new(g);
    let mut patch = Patch::default();
    for n in &g.nodes {
        if !matches!(n.op, Op::Softmax(-1) | Op::Softmax(3)) {
            continue;
        }
        let m = || -> Option<(usize, Node)> {
            let s_in = v.input(n, 0)?;
            // scores (+ mask)
            let (scores, mask) = match v.producer(s_in, |o| is_bin(o, BinaryOp::Add)) {
                Some((_, add)) => {
                    let (a, b) = (v.input(add, 0)?, v.input(add, 1)?);
                    let is_scores = |x| v.producer(strip_scale(&v, x).0, |o| matches!(o, Op::MatMul)).is_some();
                    if is_scores(a) {
                        (a, Some(b))
                    } else if is_scores(b) {
                        (b, Some(a))
                    } else {
                        return None;
                    }
                }
                None => (s_in, None),
            };
            let (mm_out, s0) = strip_scale(&v, scores);
            let (_, qk) = v.producer(mm_out, |o| matches!(o, Op::MatMul))?;
            let (q, s1) = strip_scale(&v, v.input(qk, 0)?);
            let (kt, s2) = strip_scale(&v, v.input(qk, 1)?);
            let (k, k_layout) = keys_from_transposed(&v, kt)?;
            // Read Q, K, V where the projections left them: a [0, 2, 1, 3] transpose into
            // per-head layout becomes a stride instead of a copy.
            let absorb = |x: ValueId| match v.producer(x, |o| matches!(o, Op::Transpose(Some(p)) if p == &[0, 2, 1, 3])) {
                Some((_, t)) => t.inputs[0].map_or((x, Layout::Bhsd), |src| (src, Layout::Bshd)),
                None => (x, Layout::Bhsd),
            };
            let (q, q_layout) = absorb(q);
            let (k, k_layout) = if k_layout == Layout::Bhsd { absorb(unrepeat_kv(&v, k)) } else { (k, k_layout) };
            // probabilities, optionally through Where(IsNaN(p), 0, p)
            let p = n.outputs[0];
            let mut probs = p;
            if let [a, b] = v.consumers[p].as_slice() {
                let (isnan, wh) = if is_un(&g.nodes[*a].op, UnaryOp::IsNaN) { (*a, *b) } else { (*b, *a) };
                let (isnan, wh) = (&g.nodes[isnan], &g.nodes[wh]);
                if !is_un(&isnan.op, UnaryOp::IsNaN) || !matches!(wh.op, Op::Where) {
                    return None;
                }
                if wh.inputs[0] != Some(isnan.outputs[0]) || wh.inputs[2] != Some(p) || v.scalar(v.input(wh, 1)?)? != 0.0 {
                    return None;
                }
                probs = wh.outputs[0];
            }
            let (pvi, pv) = v.sole_consumer(probs).filter(|(_, c)| matches!(c.op, Op::MatMul))?;
            if v.input(pv, 0)? != probs {
                return None;
            }
            let (val, v_layout) = absorb(unrepeat_kv(&v, v.input(pv, 1)?));
            let (at, out, out_bshd) = match v.sole_consumer(pv.outputs[0]) {
                Some((ti, t)) if matches!(&t.op, Op::Transpose(Some(p)) if p == &[0, 2, 1, 3]) => (ti, t.outputs[0], true),
                _ => (pvi, pv.outputs[0], false),
            };
            // Scales multiply in the order ONNX Runtime folds them (input side, then output side),
            // so the product rounds the same.
            let op = Attention { scale: s1 * s2 * s0, q_layout, k_layout, v_layout, causal: false, out_bshd, prefix: None };
            Some((at, Node { name: n.name.clone(), op: Op::Attention(op), inputs: vec![Some(q), Some(k), Some(val), mask], outputs: vec![out] }))
        };
        if let Some((at, node)) = m() {
            patch.replace(at, node);
        }
    }
    patch.apply(g);
}

/// `Gather(table, ids)` on a constant 2-D table (optionally followed by ONNX Runtime's
/// per-tensor `DequantizeLinear`) → `Embedding`.
pub fn fuse_embedding(g: &mut Graph) {
    let v = View::new(g);
    let mut patch = Patch::default();
    for (i, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::Gather(0)) {
            continue;
        }
        let (Some(table), Some(ids)) = (v.input(n, 0), v.input(n, 1)) else { continue };
        let Some(t) = v.constant(table).filter(|t| t.rank() == 2) else { continue };
        let node = |dequant, out| Node { name: n.name.clone(), op: Op::Embedding { dequant, prompt: None }, inputs: vec![Some(table), Some(ids)], outputs: vec![out] };
        match t.dtype() {
            DType::F32 => {
                patch.replace(i, node(None, n.outputs[0]));
            }
            DType::I8 | DType::U8 => {
                let deq = || -> Option<(usize, f32, i64, ValueId)> {
                    let (di, d) = v.sole_consumer(n.outputs[0]).filter(|(_, c)| matches!(c.op, Op::DequantizeLinear(_)))?;
                    let scale = v.scalar(v.input(d, 1)?)?;
                    let zp = match v.input(d, 2) {
                        Some(z) => v.constant(z).filter(|t| t.len() == 1)?.to_i64_vec("zp").ok()?[0],
                        None => 0,
                    };
                    Some((di, scale, zp, d.outputs[0]))
                };
                if let Some((di, scale, zp, out)) = deq() {
                    patch.replace(di, node(Some((scale, zp)), out));
                }
            }
            _ => {}
        }
    }
    patch.apply(g);
}

/// A residual `Add` of a projection's output, read only by a `LayerNorm` over the last axis
/// → `AddLayerNorm` (post-norm blocks: BERT). Pre-norm blocks (Llama) keep the sum for the
/// next residual, so their `Add` has other readers and stays.
pub fn fuse_add_layer_norm(g: &mut Graph) {
    let v = View::new(g);
    let mut patch = Patch::default();
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::LayerNorm { axis: -1, epsilon } = n.op else { continue };
        let m = || -> Option<Node> {
            let (_, add) = v.producer(v.input(n, 0)?, |o| is_bin(o, BinaryOp::Add))?;
            v.sole_consumer(add.outputs[0])?;
            let (a, b) = (v.input(add, 0)?, v.input(add, 1)?);
            let from_linear = |x| v.producer(x, |o| matches!(o, Op::Linear(_))).is_some();
            if v.constant(a).is_some() || v.constant(b).is_some() || !(from_linear(a) || from_linear(b)) {
                return None;
            }
            let (x, skip) = if from_linear(a) { (a, b) } else { (b, a) };
            Some(Node {
                name: n.name.clone(),
                op: Op::AddLayerNorm { epsilon },
                inputs: vec![Some(x), Some(skip), n.inputs.get(1).copied().flatten(), n.inputs.get(2).copied().flatten()],
                outputs: n.outputs.clone(),
            })
        };
        if let Some(node) = m() {
            patch.replace(i, node);
        }
    }
    patch.apply(g);
}
