//! Reverse-mode differentiation over the fused graph.
//!
//! The forward pass keeps every intermediate (checkpointing comes later); the reverse pass
//! walks the nodes backwards and sends each output's gradient to the inputs that lead to a
//! trainable parameter: LoRA A/B of a `Linear`, a `Linear`'s bias, or a named constant such as
//! a LayerNorm's β. Frozen weights never get a weight gradient; only the input gradient flows
//! through them, computed from the weights as stored (see
//! [`super::backward::linear::frozen_input_grad`] for int8 weights).

use std::collections::{HashMap, HashSet};

use super::backward::{activation, attention as attn_bw, linear as lin_bw, norm as norm_bw, patch as patch_bw, rotary as rotary_bw};
use crate::ops::linear_patch::scale_rows;
use crate::error::{Error, Result};
use crate::graph::{Graph, ValueId};
use crate::kernels::attention::{AttentionDims, MaskView};
use crate::ops::attention::{prepare_mask, to_bhsd, view, Layout};
use crate::ops::broadcast::{broadcast_strides, for_each_offset};
use crate::ops::shape::permute;
use crate::ops::{BinaryOp, Op};
use crate::tensor::Tensor;

/// What a training step differentiates with respect to.
#[derive(Clone, Debug, Default)]
pub struct Trainables {
    /// Nodes (indices into `Graph::nodes`) whose `Linear` LoRA A/B are trained.
    pub lora: HashSet<usize>,
    /// Nodes whose `Linear` bias is trained (BitFit).
    pub linear_bias: HashSet<usize>,
    /// Constant values trained as additive deltas (e.g. LayerNorm β for BitFit).
    pub constants: HashSet<ValueId>,
    /// Nodes whose `Linear` weight is trained outright (top-layer fine-tuning).
    pub linear_weight: HashSet<usize>,
    /// Nodes whose `Linear` patch ((IA)3 scales, adapter) is trained.
    pub patch: HashSet<usize>,
    /// `Attention` nodes whose prefix keys and values are trained.
    pub prefix: HashSet<usize>,
    /// `Embedding` nodes whose soft prompt is trained (prompt tuning).
    pub prompt: HashSet<usize>,
    /// `Invertible` nodes whose coupling is trained (MAD-X language adapters).
    pub invertible: HashSet<usize>,
}

/// Gradients of the loss with respect to every trainable.
#[derive(Clone, Debug, Default)]
pub struct Grads {
    /// Per node: (dA [r×k], dB [n×r]).
    pub lora: HashMap<usize, (Vec<f32>, Vec<f32>)>,
    /// Per node: dbias [n].
    pub linear_bias: HashMap<usize, Vec<f32>>,
    /// Per constant value: d(delta), its shape.
    pub constants: HashMap<ValueId, Vec<f32>>,
    /// Per node: d(weight) `[k×n]`.
    pub linear_weight: HashMap<usize, Vec<f32>>,
    /// Per node: the patch's gradients.
    pub patch: HashMap<usize, PatchGrads>,
    /// Per `Attention` node: (d prefix keys, d prefix values), each `[len × kv_heads·head_dim]`.
    pub prefix: HashMap<usize, (Vec<f32>, Vec<f32>)>,
    /// Per `Embedding` node: d soft prompt, `[len × dim]`.
    pub prompt: HashMap<usize, Vec<f32>>,
    /// Per `Invertible` node: its branches' gradients.
    pub invertible: HashMap<usize, super::backward::invertible::CouplingGrads>,
}

/// Gradients of one `Linear`'s patch; a part is `None` when the patch has none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PatchGrads {
    /// d(s_in), `[k]`.
    pub scale_in: Option<Vec<f32>>,
    /// d(s_out), `[n]`.
    pub scale_out: Option<Vec<f32>>,
    /// The adapter's gradients.
    pub adapter: Option<patch_bw::AdapterGrads>,
    /// The stacked adapter's gradients (MAD-X's task adapter).
    pub stacked: Option<patch_bw::AdapterGrads>,
}

fn unsupported(op: &Op) -> Error {
    Error::Config(format!("training through `{}` is not supported yet", op.name()))
}

/// What `device` computes on `offload` when there is one and it takes the work (it answers
/// `None` for what it does not cover), else what `cpu` computes.
fn device_or_cpu<T>(offload: Option<&dyn crate::backend::cpu::Offload>, device: impl FnOnce(&dyn crate::backend::cpu::Offload) -> Result<Option<T>>, cpu: impl FnOnce() -> T) -> Result<T> {
    Ok(offload.map(device).transpose()?.flatten().unwrap_or_else(cpu))
}

/// Attention's gradients on `offload` when it takes them, else on the CPU.
#[allow(clippy::too_many_arguments)]
fn attention_grads(offload: Option<&dyn crate::backend::cpu::Offload>, q: &[f32], k: &[f32], v: &[f32], mask: Option<&MaskView<'_>>, causal: bool, scale: f32, dims: &AttentionDims, dout: &[f32]) -> Result<attn_bw::AttentionGrads> {
    device_or_cpu(offload, |o| o.attention_backward(q, k, v, mask, causal, scale, dims, dout), || attn_bw::attention_backward(q, k, v, mask, causal, scale, dims, dout))
}

/// Sums a broadcast gradient back to `shape` (the reverse of NumPy broadcasting).
fn unbroadcast(dy: &[f32], out: &[usize], shape: &[usize]) -> Vec<f32> {
    if out == shape {
        return dy.to_vec();
    }
    let mut g = vec![0f32; shape.iter().product()];
    let st = broadcast_strides(shape, out);
    for_each_offset(out, [st], |i, [o]| g[o] += dy[i]);
    g
}

/// Which values depend on a trainable (only their gradients are worth computing).
pub(crate) fn reaching(g: &Graph, t: &Trainables) -> Vec<bool> {
    let mut r = vec![false; g.values.len()];
    for &c in &t.constants {
        r[c] = true;
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let own = t.lora.contains(&i) || t.linear_bias.contains(&i) || t.linear_weight.contains(&i) || t.patch.contains(&i) || t.prefix.contains(&i) || t.prompt.contains(&i) || t.invertible.contains(&i);
        if own || n.inputs.iter().flatten().any(|&v| r[v]) {
            for &o in &n.outputs {
                r[o] = true;
            }
        }
    }
    r
}

/// Gradients of a scalar loss, given d(loss)/d(`seed.0`) = `seed.1`, from a forward pass whose
/// every value is in `slots` (graph inputs and computed values; constants are read from `g`).
pub fn backward(g: &Graph, slots: &[Option<Tensor>], seed: (ValueId, Vec<f32>), t: &Trainables) -> Result<Grads> {
    let mut r = Reverse::new(g, t);
    r.seed(seed.0, seed.1);
    r.run(slots, 0..g.nodes.len())?;
    Ok(r.finish())
}

/// A reverse pass that can walk the graph in pieces, last piece first, so a checkpointed step
/// can recompute one piece's forward values, run its reverse, and drop them before the next.
pub struct Reverse<'g> {
    g: &'g Graph,
    t: &'g Trainables,
    reach: Vec<bool>,
    /// The device that computes frozen `Linear` input gradients, if any.
    offload: Option<&'g dyn crate::backend::cpu::Offload>,
    /// The pending gradient of each value not yet sent on.
    grads: Vec<Option<Vec<f32>>>,
    out: Grads,
}

impl<'g> Reverse<'g> {
    /// A reverse pass over `g` for the trainables `t`, with no gradient yet.
    pub fn new(g: &'g Graph, t: &'g Trainables) -> Self {
        Reverse { g, t, reach: reaching(g, t), offload: None, grads: vec![None; g.values.len()], out: Grads::default() }
    }

    /// Computes the input gradients of frozen `Linear` layers on `offload` (the `vulkan`
    /// backend), the rest on the CPU.
    pub fn with_offload(mut self, offload: Option<&'g dyn crate::backend::cpu::Offload>) -> Self {
        self.offload = offload;
        self
    }

    /// Sets d(loss)/d(`v`).
    pub fn seed(&mut self, v: ValueId, d: Vec<f32>) {
        self.grads[v] = Some(d);
    }

    /// The gradients of the trainables, once every node has been walked.
    pub fn finish(self) -> Grads {
        self.out
    }

    /// Walks `nodes` backwards (a range of `Graph::nodes` that ends where the previous call's
    /// began), reading forward values from `slots`.
    pub fn run(&mut self, slots: &[Option<Tensor>], nodes: std::ops::Range<usize>) -> Result<()> {
        let (g, t, reach, offload) = (self.g, self.t, &self.reach, self.offload);
        let (grads, out) = (std::mem::take(&mut self.grads), std::mem::take(&mut self.out));
        let (grads, out) = Self::walk(g, t, reach, offload, slots, nodes, grads, out)?;
        self.grads = grads;
        self.out = out;
        Ok(())
    }

    /// The reverse walk proper; the gradients it carries go in and come back out by value.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn walk(g: &Graph, t: &Trainables, reach: &[bool], offload: Option<&dyn crate::backend::cpu::Offload>, slots: &[Option<Tensor>], nodes: std::ops::Range<usize>, mut grads: Vec<Option<Vec<f32>>>, mut out: Grads) -> Result<(Vec<Option<Vec<f32>>>, Grads)> {
        let value = |v: ValueId| -> Result<&Tensor> {
            slots[v].as_ref().or(g.values[v].constant.as_ref()).ok_or_else(|| Error::InvalidModel(format!("value `{}` was not kept", g.values[v].name)))
        };
        let f32s = |v: ValueId| -> Result<&[f32]> { value(v)?.typed::<f32>("gradient input") };
        // Adds `d` to the gradient of `v` if `v` leads to a trainable.
        let send = |grads: &mut Vec<Option<Vec<f32>>>, v: Option<ValueId>, d: Vec<f32>, out: &mut Grads| {
            let Some(v) = v else { return };
            if t.constants.contains(&v) {
                match out.constants.get_mut(&v) {
                    Some(acc) => acc.iter_mut().zip(&d).for_each(|(a, b)| *a += b),
                    None => {
                        out.constants.insert(v, d);
                    }
                }
                return;
            }
            if !reach[v] || g.values[v].constant.is_some() {
                return;
            }
            match &mut grads[v] {
                Some(acc) => acc.iter_mut().zip(&d).for_each(|(a, b)| *a += b),
                slot @ None => *slot = Some(d),
            }
        };
        for i in nodes.rev() {
            let n = &g.nodes[i];
            let Some(&o) = n.outputs.first() else { continue };
            let Some(dy) = grads[o].take() else { continue };
            // Only the loss's seed can arrive at a node no trainable feeds (head-only
            // training): there is nothing to send back, and `saved` kept none of its inputs.
            if !n.outputs.iter().any(|&v| reach[v]) {
                continue;
            }
            let inp = |k: usize| n.inputs.get(k).copied().flatten();
            let wants = |k: usize| inp(k).is_some_and(|v| reach[v] || t.constants.contains(&v));
            match &n.op {
                Op::Linear(l) => {
                    let x_id = inp(0).ok_or_else(|| unsupported(&n.op))?;
                    // Rows from dy: x is kept only when a LoRA path, a patch or a trained
                    // weight needs it (see `saved`).
                    let rows = dy.len() / l.n.max(1);
                    let patch = l.patch.as_deref();
                    let needs_x = l.lora.is_some() || patch.is_some() || t.linear_weight.contains(&i);
                    let x = if needs_x { Some(f32s(x_id)?) } else { None };
                    // x' = x ⊙ s_in: what the frozen weight, LoRA and a trained weight see.
                    let scaled_in: Option<Vec<f32>> = match (patch.and_then(|p| p.scale_in.as_ref()), x) {
                        (Some(s), Some(x)) => {
                            let mut v = x.to_vec();
                            scale_rows(&mut v, s);
                            Some(v)
                        }
                        _ => None,
                    };
                    let xs = scaled_in.as_deref().or(x);
                    let mut pg = PatchGrads::default();
                    let mut dy = dy;
                    if let (Some(p), Some(xs)) = (patch, xs) {
                        if let Some(a) = &p.adapter {
                            let mut y1 = l.core(xs);
                            if let Some(s) = &p.scale_out {
                                scale_rows(&mut y1, s);
                            }
                            if let Some(top) = &p.stacked {
                                // The stacked adapter's input is the first adapter's output.
                                let mut y2 = y1.clone();
                                a.forward_in_place(&mut y2, l.n);
                                let (d, g) = patch_bw::adapter_backward(top, &y2, l.n, &dy);
                                dy = d;
                                pg.stacked = Some(g);
                            }
                            let (d, g) = patch_bw::adapter_backward(a, &y1, l.n, &dy);
                            dy = d;
                            pg.adapter = Some(g);
                        }
                        if let Some(s) = &p.scale_out {
                            pg.scale_out = Some(patch_bw::scale_grad(&l.core(xs), &dy, l.n));
                            scale_rows(&mut dy, s);
                        }
                    }
                    if t.linear_bias.contains(&i) {
                        out.linear_bias.insert(i, lin_bw::linear_bias_grad(&dy, l.n));
                    }
                    if let (true, Some(xs)) = (t.linear_weight.contains(&i), xs) {
                        out.linear_weight.insert(i, patch_bw::weight_grad(xs, &dy, l.k, l.n));
                    }
                    let scale_in = patch.and_then(|p| p.scale_in.as_ref());
                    let mut dx = if wants(0) || scale_in.is_some() {
                        let on_device = match offload {
                            Some(o) if !t.linear_weight.contains(&i) => o.linear_input_grad(l, &dy)?,
                            _ => None,
                        };
                        Some(match on_device {
                            Some(dx) => dx,
                            None => lin_bw::frozen_input_grad(l, &dy),
                        })
                    } else {
                        None
                    };
                    if let Some(lora) = &l.lora {
                        let shape = lin_bw::LoraShape { rows, k: l.k, n: l.n, rank: lora.r };
                        // With dropout, the side path saw x ⊙ mask/(1−p), and its input gradient
                        // goes back through the same mask.
                        let x = xs.ok_or_else(|| unsupported(&n.op))?;
                        let dropped = lora.dropout.map(|d| d.apply(x));
                        let mut gr = lin_bw::lora_backward(dropped.as_deref().unwrap_or(x), &lora.a, &lora.b, lora.scale, shape, &dy);
                        if let Some(d) = lora.dropout {
                            gr.dx = d.apply(&gr.dx);
                        }
                        if t.lora.contains(&i) {
                            out.lora.insert(i, (gr.da, gr.db));
                        }
                        if let Some(dx) = &mut dx {
                            dx.iter_mut().zip(&gr.dx).for_each(|(a, b)| *a += b);
                        }
                    }
                    if let (Some(s), Some(dx), Some(x)) = (scale_in, &mut dx, x) {
                        // dx' is the gradient at x ⊙ s_in: ds_in = Σ dx' ⊙ x, dx = dx' ⊙ s_in.
                        pg.scale_in = Some(patch_bw::scale_grad(x, dx, l.k));
                        scale_rows(dx, s);
                    }
                    if t.patch.contains(&i) {
                        out.patch.insert(i, pg);
                    }
                    if let (true, Some(dx)) = (wants(0), dx) {
                        send(&mut grads, inp(0), dx, &mut out);
                    }
                }
                Op::LayerNorm { axis: -1, epsilon } => {
                    let gamma = f32s(inp(1).ok_or_else(|| unsupported(&n.op))?)?;
                    let x = f32s(inp(0).ok_or_else(|| unsupported(&n.op))?)?;
                    let gr = device_or_cpu(offload, |o| o.layer_norm_backward(x, None, gamma, *epsilon, &dy), || norm_bw::layer_norm_backward(x, gamma, *epsilon, &dy))?;
                    send(&mut grads, inp(0), gr.dx, &mut out);
                    send(&mut grads, inp(1), gr.dgamma, &mut out);
                    send(&mut grads, inp(2), gr.dbeta, &mut out);
                }
                Op::AddLayerNorm { epsilon } => {
                    let (x, skip) = (f32s(inp(0).ok_or_else(|| unsupported(&n.op))?)?, f32s(inp(1).ok_or_else(|| unsupported(&n.op))?)?);
                    let gamma = f32s(inp(2).ok_or_else(|| unsupported(&n.op))?)?;
                    let gr = device_or_cpu(offload, |o| o.layer_norm_backward(x, Some(skip), gamma, *epsilon, &dy), || norm_bw::add_layer_norm_backward(x, skip, gamma, *epsilon, &dy))?;
                    send(&mut grads, inp(0), gr.dx.clone(), &mut out);
                    send(&mut grads, inp(1), gr.dx, &mut out);
                    send(&mut grads, inp(2), gr.dgamma, &mut out);
                    send(&mut grads, inp(3), gr.dbeta, &mut out);
                }
                Op::RmsNorm { epsilon } => {
                    let (x, w) = (f32s(inp(0).ok_or_else(|| unsupported(&n.op))?)?, f32s(inp(1).ok_or_else(|| unsupported(&n.op))?)?);
                    send(&mut grads, inp(0), norm_bw::rms_norm_backward(x, w, *epsilon, &dy), &mut out);
                }
                Op::Gelu { tanh: false } => {
                    let x = f32s(inp(0).ok_or_else(|| unsupported(&n.op))?)?;
                    let on_device = match offload {
                        Some(o) => o.gelu_backward(x, &dy)?,
                        None => None,
                    };
                    let dx = on_device.unwrap_or_else(|| {
                        let mut dx = dy;
                        activation::gelu_backward_in_place(x, &mut dx);
                        dx
                    });
                    send(&mut grads, inp(0), dx, &mut out);
                }
                Op::Silu => {
                    let x = f32s(inp(0).ok_or_else(|| unsupported(&n.op))?)?;
                    send(&mut grads, inp(0), activation::silu_backward(x, &dy), &mut out);
                }
                Op::Rotary => {
                    // Only x can lead to a trainable: cos/sin come from positions, the bounds from
                    // shapes (the legacy export computes them from x's shape, so they "reach").
                    let mut ins: [Option<&Tensor>; 11] = [None; 11];
                    for (k, slot) in ins.iter_mut().enumerate() {
                        *slot = inp(k).map(value).transpose()?;
                    }
                    send(&mut grads, inp(0), rotary_bw::rotary_input_grad(&ins, &dy)?, &mut out);
                }
                Op::Attention(a) => {
                    let (qt, kt, vt) = (value(inp(0).ok_or_else(|| unsupported(&n.op))?)?, value(inp(1).ok_or_else(|| unsupported(&n.op))?)?, value(inp(2).ok_or_else(|| unsupported(&n.op))?)?);
                    let ([b, h, sq, d], _) = view(qt, a.q_layout, "Q")?;
                    let ([_, kh, sk, _], _) = view(kt, a.k_layout, "K")?;
                    let dims = AttentionDims { batch: b, heads: h, kv_heads: kh, q_len: sq, kv_len: sk, head_dim: d };
                    let mask = match inp(3) {
                        Some(m) => Some(prepare_mask(value(m)?, [b, h, sq, sk])?),
                        None => None,
                    };
                    let mv = mask.as_ref().map(|(data, st)| MaskView { data, batch_stride: st[0], head_stride: st[1], row_stride: st[2] });
                    let dout = if a.out_bshd { dy } else { permute(&dy, &[b, h, sq, d], &[0, 2, 1, 3]) };
                    let (kb, vb) = (to_bhsd(kt, a.k_layout)?, to_bhsd(vt, a.v_layout)?);
                    let gr = match &a.prefix {
                        None => attention_grads(offload, &to_bhsd(qt, a.q_layout)?, &kb, &vb, mv.as_ref(), a.causal, a.scale, &dims, &dout)?,
                        Some(p) => {
                            // The forward's prepended keys, values and widened mask, then the
                            // prefix rows' share of dK and dV split off.
                            let (kp, vp) = (p.prepend(&p.k, &kb, b, kh, sk, d), p.prepend(&p.v, &vb, b, kh, sk, d));
                            let ext = mv.as_ref().map(|m| p.extend_mask(m, b, h, sq, sk));
                            let ev = ext.as_ref().map(|(data, st)| MaskView { data, batch_stride: st[0], head_stride: st[1], row_stride: st[2] });
                            let pd = AttentionDims { kv_len: p.len + sk, ..dims };
                            let mut gr = attention_grads(offload, &to_bhsd(qt, a.q_layout)?, &kp, &vp, ev.as_ref(), a.causal, a.scale, &pd, &dout)?;
                            let (dpk, dk) = p.split_grad(&gr.dk, b, kh, sk, d);
                            let (dpv, dv) = p.split_grad(&gr.dv, b, kh, sk, d);
                            if t.prefix.contains(&i) {
                                out.prefix.insert(i, (dpk, dpv));
                            }
                            (gr.dk, gr.dv) = (dk, dv);
                            gr
                        }
                    };
                    let back = |x: Vec<f32>, heads: usize, len: usize, layout: Layout| match layout {
                        Layout::Bhsd => x,
                        Layout::Bshd => permute(&x, &[b, heads, len, d], &[0, 2, 1, 3]),
                    };
                    send(&mut grads, inp(0), back(gr.dq, h, sq, a.q_layout), &mut out);
                    send(&mut grads, inp(1), back(gr.dk, kh, sk, a.k_layout), &mut out);
                    send(&mut grads, inp(2), back(gr.dv, kh, sk, a.v_layout), &mut out);
                }
                Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul)) => {
                    let (a, bb) = (inp(0).ok_or_else(|| unsupported(&n.op))?, inp(1).ok_or_else(|| unsupported(&n.op))?);
                    let out_shape = value(o).map(|t| t.shape().to_vec()).unwrap_or_default();
                    let (sa, sb) = (value(a)?.shape().to_vec(), value(bb)?.shape().to_vec());
                    let out_shape = if out_shape.is_empty() { crate::ops::broadcast::broadcast_shapes(&sa, &sb).map(|s| s.to_vec()).unwrap_or_default() } else { out_shape };
                    let times = |other: ValueId| -> Result<Vec<f32>> {
                        let ot = value(other)?;
                        let dyt = Tensor::new(&out_shape, dy.clone())?;
                        Ok(crate::ops::elementwise::binary(BinaryOp::Mul, &dyt, ot)?.to_f32_vec())
                    };
                    if wants(0) {
                        let d = if *op == BinaryOp::Mul { times(bb)? } else { dy.clone() };
                        send(&mut grads, Some(a), unbroadcast(&d, &out_shape, &sa), &mut out);
                    }
                    if wants(1) {
                        let d = match op {
                            BinaryOp::Mul => times(a)?,
                            BinaryOp::Sub => dy.iter().map(|v| -v).collect(),
                            _ => dy.clone(),
                        };
                        send(&mut grads, Some(bb), unbroadcast(&d, &out_shape, &sb), &mut out);
                    }
                }
                Op::Embedding { prompt: Some(p), .. } if t.prompt.contains(&i) => {
                    // The prompt replaced rows 0..len of every sequence: its gradient is those
                    // rows' gradient summed over the batch. The table and ids are frozen.
                    let dim = value(inp(0).ok_or_else(|| unsupported(&n.op))?)?.shape().get(1).copied().unwrap_or(0);
                    let seq_dim = dy.len() / dim.max(1);
                    let rows = value(inp(1).ok_or_else(|| unsupported(&n.op))?)?.shape().first().copied().unwrap_or(1).max(1);
                    let per_row = seq_dim / rows * dim;
                    let mut dp = vec![0f32; p.len()];
                    for row in dy.chunks_exact(per_row.max(1)) {
                        dp.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                    }
                    out.prompt.insert(i, dp);
                }
                Op::Invertible(a) => {
                    let x = f32s(inp(0).ok_or_else(|| unsupported(&n.op))?)?;
                    let (dx, gr) = super::backward::invertible::coupling_backward(a, x, &dy);
                    if t.invertible.contains(&i) {
                        out.invertible.insert(i, gr);
                    }
                    send(&mut grads, inp(0), dx, &mut out);
                }
                Op::Reshape { .. } | Op::Squeeze(_) | Op::Unsqueeze(_) | Op::Flatten(_) | Op::Identity | Op::Cast(crate::tensor::DType::F32) => {
                    send(&mut grads, inp(0), dy, &mut out);
                }
                Op::Transpose(perm) => {
                    let x = value(inp(0).ok_or_else(|| unsupported(&n.op))?)?;
                    let rank = x.rank();
                    let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..rank).rev().collect());
                    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
                    let mut inv = vec![0; rank];
                    for (i, &p) in perm.iter().enumerate() {
                        inv[p] = i;
                    }
                    send(&mut grads, inp(0), permute(&dy, &out_shape, &inv), &mut out);
                }
                op => {
                    if (0..n.inputs.len()).any(wants) {
                        return Err(unsupported(op));
                    }
                }
            }
        }
        Ok((grads, out))
    }
}
