//! The host side of each compute kernel: shapes checked, buffers made, dispatches recorded.
//!
//! Weights (and a delta's LoRA and bias tensors) are uploaded once and kept in a
//! [`WeightCache`] keyed by their `Arc`'s address, with a clone of the `Arc` so the address
//! cannot be reused while the entry lives. Activations travel per op: on lavapipe the device
//! memory is host memory anyway; keeping them resident is the next step on a real GPU.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use super::device::{err, groups, Buf, Gpu, Kernel};
use crate::error::Result;
use crate::kernels::gemm_i8::PackedI8;
use crate::kernels::quantize::quantize_dynamic_u8;
use crate::ops::attention::{prepare_mask, view};
use crate::ops::{Attention, Linear, LinearWeight};
use crate::tensor::Tensor;

/// Device copies of constant tensors, keyed by the address of the `Arc` holding them.
#[derive(Default)]
pub(super) struct WeightCache {
    entries: HashMap<(usize, u8), (Buf, Arc<dyn Any + Send + Sync>)>,
}

impl WeightCache {
    fn get<T: Any + Send + Sync>(&mut self, owner: &Arc<T>, part: u8, make: impl FnOnce(&T) -> Result<Buf>) -> Result<Buf> {
        let key = (Arc::as_ptr(owner) as usize, part);
        if let Some((b, _)) = self.entries.get(&key) {
            return Ok(b.clone());
        }
        let b = make(owner)?;
        self.entries.insert(key, (b.clone(), owner.clone() as Arc<dyn Any + Send + Sync>));
        Ok(b)
    }

    /// Drops the entries nothing but this cache holds on to any more (a previous delta's).
    pub(super) fn prune(&mut self) {
        self.entries.retain(|_, (_, owner)| Arc::strong_count(owner) > 1);
    }
}

fn f32s<'a>(t: &'a Tensor, what: &str) -> Result<&'a [f32]> {
    t.typed::<f32>(what)
}

/// `Linear`: f32 or int8 weight, bias, and a LoRA side path, in one submission.
pub(super) fn linear(gpu: &Gpu, cache: &mut WeightCache, l: &Linear, x: &Tensor) -> Result<Tensor> {
    let v = f32s(x, "Linear input")?;
    let (k, n) = (l.k, l.n);
    if x.shape().last() != Some(&k) {
        return Err(err(format!("Linear `{}`: input {:?} does not end in {k}", l.module, x.shape())));
    }
    let m = v.len() / k.max(1);
    let out = gpu.zeros(m * n)?;
    let bias = match &l.bias {
        Some(b) => Some(cache.get(b, 0, |b| gpu.upload_f32(b))?),
        None => None,
    };
    let dummy = gpu.zeros(1)?;
    let bias_buf = bias.as_ref().unwrap_or(&dummy);
    let mut batch = gpu.batch()?;
    let mut x_buf = None;
    match &l.weight {
        LinearWeight::F32(w) => {
            let wb = cache.get(w, 0, |w| gpu.upload_f32(w))?;
            let xb = gpu.upload_f32(v)?;
            let flags = if bias.is_some() { 4 } else { 0 };
            batch.dispatch(Kernel::GemmF32, &[&xb, &wb, &out, bias_buf], [m as u32, n as u32, k as u32, flags, 1f32.to_bits()], [
                groups(n, 16),
                groups(m, 16),
                1,
            ])?;
            x_buf = Some(xb);
        }
        LinearWeight::I8(w) => {
            let kw = k.div_ceil(4);
            let wb = cache.get(w, 0, |w| gpu.upload(pack_weights(w, kw).into_iter()))?;
            let sb = cache.get(w, 1, |w| gpu.upload_f32(w.scales()))?;
            let mut q = vec![0u8; v.len()];
            let (scale, zp) = quantize_dynamic_u8(v, &mut q);
            let xq = gpu.upload(pack_rows(&q, m, k, kw, zp).into_iter())?;
            let flags = u32::from(bias.is_some());
            batch.dispatch(
                Kernel::GemmU8I8,
                &[&xq, &wb, &out, &sb, bias_buf],
                [m as u32, n as u32, kw as u32, u32::from(zp), scale.to_bits(), flags],
                [groups(m * n, 64), 1, 1],
            )?;
        }
    }
    if let Some(lora) = &l.lora {
        let r = lora.r;
        let xb = match x_buf {
            Some(b) => b,
            None => gpu.upload_f32(v)?,
        };
        let ab = cache.get(lora, 0, |p| gpu.upload_f32(&p.a))?;
        let bb = cache.get(lora, 1, |p| gpu.upload_f32(&p.b))?;
        let t = gpu.zeros(m * r)?;
        // t = scale·(x·Aᵀ), then y += t·Bᵀ: the CPU's order (it scales the rank-r product).
        batch.dispatch(Kernel::GemmF32, &[&xb, &ab, &t, &dummy], [m as u32, r as u32, k as u32, 1, lora.scale.to_bits()], [
            groups(r, 16),
            groups(m, 16),
            1,
        ])?;
        batch.dispatch(Kernel::GemmF32, &[&t, &bb, &out, &dummy], [m as u32, n as u32, r as u32, 3, 1f32.to_bits()], [
            groups(n, 16),
            groups(m, 16),
            1,
        ])?;
    }
    batch.run()?;
    let mut shape = x.shape().to_vec();
    let last = shape.len() - 1;
    shape[last] = n;
    Tensor::new(&shape, gpu.read_f32(&out, m * n)?)
}

/// The input gradient of a frozen `Linear`, `dx[m×k] = dy[m×n]·Wᵀ`, from the f32 weight (an
/// int8 weight is dequantized once and kept, as the CPU's backward uses it).
pub(super) fn linear_input_grad(gpu: &Gpu, cache: &mut WeightCache, l: &Linear, dy: &[f32]) -> Result<Vec<f32>> {
    let (k, n) = (l.k, l.n);
    if n == 0 || !dy.len().is_multiple_of(n) {
        return Err(err(format!("Linear `{}`: a gradient of {} values is not rows of {n}", l.module, dy.len())));
    }
    let m = dy.len() / n;
    if m == 0 || k == 0 {
        return Ok(vec![0.0; m * k]);
    }
    let wb = match &l.weight {
        LinearWeight::F32(w) => cache.get(w, 0, |w| gpu.upload_f32(w))?,
        LinearWeight::I8(w) => cache.get(w, 2, |w| gpu.upload_f32(&w.dequantize()))?,
    };
    let (dyb, out, dummy) = (gpu.upload_f32(dy)?, gpu.zeros(m * k)?, gpu.zeros(1)?);
    let mut batch = gpu.batch()?;
    // In the shader's terms C = dx, A = dy, and W [k×n] is B stored "n×k" (flag 1).
    batch.dispatch(Kernel::GemmF32, &[&dyb, &wb, &out, &dummy], [m as u32, k as u32, n as u32, 1, 1f32.to_bits()], [
        groups(k, 16),
        groups(m, 16),
        1,
    ])?;
    batch.run()?;
    gpu.read_f32(&out, m * k)
}

/// Wᵀ as int8 rows [n × kw words], zero-padded.
fn pack_weights(w: &PackedI8, kw: usize) -> Vec<u32> {
    let (k, n) = (w.k(), w.n());
    let kn = w.weights_kn();
    let mut words = vec![0u32; n * kw];
    for j in 0..n {
        for p in 0..k {
            words[j * kw + p / 4] |= u32::from(kn[p * n + j] as u8) << (8 * (p % 4));
        }
    }
    words
}

/// u8 rows [m × kw words], padded with the zero point (which contributes nothing).
fn pack_rows(q: &[u8], m: usize, k: usize, kw: usize, zp: u8) -> Vec<u32> {
    let mut words = vec![0u32; m * kw];
    for i in 0..m {
        for w in 0..kw {
            let mut word = 0u32;
            for b in 0..4 {
                let p = w * 4 + b;
                let byte = if p < k { q[i * k + p] } else { zp };
                word |= u32::from(byte) << (8 * b);
            }
            words[i * kw + w] = word;
        }
    }
    words
}

/// LayerNorm over the last `d` values (the residual form adds `skip` first).
pub(super) fn layer_norm(gpu: &Gpu, x: &Tensor, skip: Option<&Tensor>, gamma: &Tensor, beta: Option<&Tensor>, d: usize, eps: f32) -> Result<Tensor> {
    let v = f32s(x, "LayerNorm input")?;
    let g = f32s(gamma, "LayerNorm scale")?;
    if d == 0 || g.len() != d || v.len() % d != 0 {
        return Err(err(format!("LayerNorm: scale of {} over rows of {d}", g.len())));
    }
    let rows = v.len() / d;
    let xb = gpu.upload_f32(v)?;
    let sb = match skip {
        Some(s) => gpu.upload_f32(f32s(s, "AddLayerNorm skip")?)?,
        None => gpu.zeros(1)?,
    };
    let gb = gpu.upload_f32(g)?;
    let bb = match beta {
        Some(b) => gpu.upload_f32(f32s(b, "LayerNorm bias")?)?,
        None => gpu.zeros(1)?,
    };
    let out = gpu.zeros(v.len())?;
    let flags = u32::from(skip.is_some()) | if beta.is_some() { 2 } else { 0 };
    let mut batch = gpu.batch()?;
    batch.dispatch(Kernel::LayerNorm, &[&xb, &sb, &gb, &bb, &out], [rows as u32, d as u32, eps.to_bits(), flags], [groups(rows, 64), 1, 1])?;
    batch.run()?;
    Tensor::new(x.shape(), gpu.read_f32(&out, v.len())?)
}

/// GELU (erf form).
pub(super) fn gelu(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let v = f32s(x, "Gelu input")?;
    let (xb, out, none) = (gpu.upload_f32(v)?, gpu.zeros(v.len())?, gpu.zeros(1)?);
    let mut batch = gpu.batch()?;
    batch.dispatch(Kernel::Gelu, &[&xb, &out, &none], [v.len() as u32, 0], [groups(v.len(), 64), 1, 1])?;
    batch.run()?;
    Tensor::new(x.shape(), gpu.read_f32(&out, v.len())?)
}

/// a + b over equal shapes.
pub(super) fn add(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (av, bv) = (f32s(a, "Add input")?, f32s(b, "Add input")?);
    let (ab, bb, out) = (gpu.upload_f32(av)?, gpu.upload_f32(bv)?, gpu.zeros(av.len())?);
    let mut batch = gpu.batch()?;
    batch.dispatch(Kernel::Add, &[&ab, &bb, &out], [av.len() as u32], [groups(av.len(), 64), 1, 1])?;
    batch.run()?;
    Tensor::new(a.shape(), gpu.read_f32(&out, av.len())?)
}

/// Fused attention, Q, K and V read through their layouts' strides.
pub(super) fn attention(gpu: &Gpu, a: &Attention, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let ([b, h, sq, d], qs) = view(q, a.q_layout, "Q")?;
    let ([kb, kh, sk, kd], ks) = view(k, a.k_layout, "K")?;
    let ([vb, vh, vs, vd], vst) = view(v, a.v_layout, "V")?;
    if kb != b || vb != b || kd != d || vd != d || vh != kh || vs != sk || kh == 0 || h % kh != 0 {
        return Err(err(format!("Attention: Q {:?}, K {:?}, V {:?} do not fit", q.shape(), k.shape(), v.shape())));
    }
    let prepared = mask.map(|m| prepare_mask(m, [b, h, sq, sk])).transpose()?;
    let (mb, mst) = match &prepared {
        Some((data, st)) => (gpu.upload_f32(data)?, *st),
        None => (gpu.zeros(1)?, [0; 3]),
    };
    let (qb, kbuf, vbuf) = (gpu.upload_f32(f32s(q, "Q")?)?, gpu.upload_f32(f32s(k, "K")?)?, gpu.upload_f32(f32s(v, "V")?)?);
    let scores = gpu.zeros(b * h * sq * sk)?;
    let out = gpu.zeros(b * h * sq * d)?;
    let flags = u32::from(prepared.is_some()) | if a.causal { 2 } else { 0 } | if a.out_bshd { 0 } else { 4 };
    let u = |x: usize| x as u32;
    let push = [
        u(b),
        u(h),
        u(kh),
        u(sq),
        u(sk),
        u(d),
        u(qs.batch),
        u(qs.head),
        u(qs.row),
        u(ks.batch),
        u(ks.head),
        u(ks.row),
        u(vst.batch),
        u(vst.head),
        u(vst.row),
        u(mst[0]),
        u(mst[1]),
        u(mst[2]),
        flags,
        a.scale.to_bits(),
    ];
    let mut batch = gpu.batch()?;
    batch.dispatch(Kernel::Attention, &[&qb, &kbuf, &vbuf, &mb, &scores, &out], push, [groups(sq, 64), u(h), u(b)])?;
    batch.run()?;
    let shape = if a.out_bshd { [b, sq, h, d] } else { [b, h, sq, d] };
    Tensor::new(&shape, gpu.read_f32(&out, b * h * sq * d)?)
}

/// GELU's input gradient, `dy·(Φ(x) + x·φ(x))`.
pub(super) fn gelu_backward(gpu: &Gpu, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    if x.len() != dy.len() {
        return Err(err(format!("Gelu backward: {} inputs, {} gradients", x.len(), dy.len())));
    }
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let (xb, out, db) = (gpu.upload_f32(x)?, gpu.zeros(x.len())?, gpu.upload_f32(dy)?);
    let mut batch = gpu.batch()?;
    batch.dispatch(Kernel::Gelu, &[&xb, &out, &db], [x.len() as u32, 1], [groups(x.len(), 64), 1, 1])?;
    batch.run()?;
    gpu.read_f32(&out, x.len())
}

/// LayerNorm's gradients over rows of `gamma.len()` (at `x + skip` for the residual form):
/// dx, then dγ and dβ summed over the rows.
pub(super) fn layer_norm_backward(gpu: &Gpu, x: &[f32], skip: Option<&[f32]>, gamma: &[f32], eps: f32, dy: &[f32]) -> Result<crate::train::backward::norm::LayerNormGrads> {
    let d = gamma.len();
    if d == 0 || !x.len().is_multiple_of(d) || dy.len() != x.len() || skip.is_some_and(|s| s.len() != x.len()) {
        return Err(err(format!("LayerNorm backward: {} values, {} gradients over rows of {d}", x.len(), dy.len())));
    }
    let rows = x.len() / d;
    if rows == 0 {
        return Ok(crate::train::backward::norm::LayerNormGrads { dx: Vec::new(), dgamma: vec![0.0; d], dbeta: vec![0.0; d] });
    }
    let xb = gpu.upload_f32(x)?;
    let sb = match skip {
        Some(s) => gpu.upload_f32(s)?,
        None => gpu.zeros(1)?,
    };
    let (gb, db) = (gpu.upload_f32(gamma)?, gpu.upload_f32(dy)?);
    let (dx, stats, dgb) = (gpu.zeros(x.len())?, gpu.zeros(2 * rows)?, gpu.zeros(2 * d)?);
    let flags = u32::from(skip.is_some());
    let bufs = [&xb, &sb, &gb, &db, &dx, &stats, &dgb];
    let mut batch = gpu.batch()?;
    batch.dispatch(Kernel::LayerNormBackward, &bufs, [rows as u32, d as u32, eps.to_bits(), flags], [groups(rows, 64), 1, 1])?;
    batch.dispatch(Kernel::LayerNormBackward, &bufs, [rows as u32, d as u32, eps.to_bits(), flags | 2], [groups(d, 64), 1, 1])?;
    batch.run()?;
    let both = gpu.read_f32(&dgb, 2 * d)?;
    Ok(crate::train::backward::norm::LayerNormGrads { dx: gpu.read_f32(&dx, x.len())?, dgamma: both[..d].to_vec(), dbeta: both[d..].to_vec() })
}

/// Attention's gradients for contiguous q `[B, H, Sq, D]`, k and v `[B, KVH, Sk, D]` and
/// `dout` `[B, Sq, H, D]`, as [`crate::train::backward::attention::attention_backward`].
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_backward(
    gpu: &Gpu,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&crate::kernels::attention::MaskView<'_>>,
    causal: bool,
    scale: f32,
    dims: &crate::kernels::attention::AttentionDims,
    dout: &[f32],
) -> Result<crate::train::backward::attention::AttentionGrads> {
    let crate::kernels::attention::AttentionDims { batch, heads, kv_heads, q_len, kv_len, head_dim } = *dims;
    let (qn, kvn) = (batch * heads * q_len * head_dim, batch * kv_heads * kv_len * head_dim);
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || q.len() != qn || k.len() != kvn || v.len() != kvn || dout.len() != qn {
        return Err(err(format!("Attention backward: q {}, k {}, v {}, dout {} do not fit {dims:?}", q.len(), k.len(), v.len(), dout.len())));
    }
    let mut grads = crate::train::backward::attention::AttentionGrads { dq: vec![0.0; qn], dk: vec![0.0; kvn], dv: vec![0.0; kvn] };
    if qn == 0 || kv_len == 0 {
        return Ok(grads);
    }
    let (mb, mst) = match mask {
        Some(m) => (gpu.upload_f32(m.data)?, [m.batch_stride, m.head_stride, m.row_stride]),
        None => (gpu.zeros(1)?, [0; 3]),
    };
    let (qb, kb, vb, ob) = (gpu.upload_f32(q)?, gpu.upload_f32(k)?, gpu.upload_f32(v)?, gpu.upload_f32(dout)?);
    let scores = batch * heads * q_len * kv_len;
    let (pr, ds) = (gpu.zeros(scores)?, gpu.zeros(scores)?);
    let (dq, dk, dv) = (gpu.zeros(qn)?, gpu.zeros(kvn)?, gpu.zeros(kvn)?);
    let u = |x: usize| x as u32;
    let flags = u32::from(mask.is_some()) | if causal { 2 } else { 0 };
    let push = |flags: u32| [u(batch), u(heads), u(kv_heads), u(q_len), u(kv_len), u(head_dim), u(mst[0]), u(mst[1]), u(mst[2]), flags, scale.to_bits()];
    let bufs = [&qb, &kb, &vb, &mb, &ob, &pr, &ds, &dq, &dk, &dv];
    let mut b = gpu.batch()?;
    b.dispatch(Kernel::AttentionBackward, &bufs, push(flags), [groups(q_len, 64), u(heads), u(batch)])?;
    b.dispatch(Kernel::AttentionBackward, &bufs, push(flags | 4), [groups(kv_len, 64), u(kv_heads), u(batch)])?;
    b.run()?;
    grads.dq = gpu.read_f32(&dq, qn)?;
    grads.dk = gpu.read_f32(&dk, kvn)?;
    grads.dv = gpu.read_f32(&dv, kvn)?;
    Ok(grads)
}
