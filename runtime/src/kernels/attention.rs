//! Fused scaled-dot-product attention, out = softmax(scale·Q·Kᵀ + mask) · V, per (batch, head)
//! in parallel, with grouped-query heads and causal or additive masks.
//!
//! The arithmetic follows ONNX Runtime's unfused path on x86-64 to the bit (one FMA chain per
//! dot product in increasing index order, the scale applied once to the finished dot product,
//! the mask added after, its softmax, then P·V as FMA chains over keys in blocks of 256), so
//! int8 models, which re-quantize the attention output, agree with it exactly. The loops are
//! written so the innermost one runs over independent outputs and vectorizes.

use rayon::prelude::*;

use super::simd::multiversion;
use super::softmax::softmax_row;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch size.
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (`heads` must be a multiple).
    pub kv_heads: usize,
    /// Query positions.
    pub q_len: usize,
    /// Key positions.
    pub kv_len: usize,
    /// Features per head.
    pub head_dim: usize,
}

/// An additive mask, addressed as `data[b·batch_stride + h·head_stride + i·row_stride + j]`
/// (stride 0 broadcasts; keys are contiguous).
pub struct MaskView<'a> {
    /// The mask values (0 or −∞ / a large negative number).
    pub data: &'a [f32],
    /// Stride between batch items.
    pub batch_stride: usize,
    /// Stride between heads.
    pub head_stride: usize,
    /// Stride between query rows.
    pub row_stride: usize,
}

/// Where head `h`, position `i` of batch item `b` starts: `b·batch + h·head + i·row`
/// (features are contiguous). [B, H, S, D] and [B, S, H, D] are both just strides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    /// Elements between batch items.
    pub batch: usize,
    /// Elements between heads.
    pub head: usize,
    /// Elements between positions.
    pub row: usize,
}

impl Strides {
    /// Contiguous [B, H, S, D].
    pub fn bhsd(heads: usize, seq: usize, dim: usize) -> Strides {
        Strides { batch: heads * seq * dim, head: seq * dim, row: dim }
    }

    /// Contiguous [B, S, H, D] (a projection's output viewed per head).
    pub fn bshd(heads: usize, seq: usize, dim: usize) -> Strides {
        Strides { batch: seq * heads * dim, head: dim, row: heads * dim }
    }

    fn at(&self, b: usize, h: usize, i: usize) -> usize {
        b * self.batch + h * self.head + i * self.row
    }
}

/// Keys per P·V accumulation block (ONNX Runtime's SGEMM K-blocking for these shapes).
const PV_BLOCK: usize = 256;

/// Query rows computed together: independent FMA chains hide the FMA latency.
const ROWS: usize = 4;
/// Lanes per vector block (one AVX-512 register of f32).
const LANES: usize = 16;

/// The first `width` (≤ LANES) values of `src` as one vector block, zero-padded; a full block
/// is a single load rather than a `memcpy` call.
#[inline(always)]
fn lanes(src: &[f32], width: usize) -> [f32; LANES] {
    if width == LANES {
        return src[..LANES].try_into().expect("a slice of LANES elements");
    }
    let mut out = [0f32; LANES];
    for (o, &x) in out.iter_mut().zip(&src[..width]) {
        *o = x;
    }
    out
}

multiversion! {
    /// Scores of `rows` query rows against keys `j0..j0+LANES` (clipped to `kv_len`):
    /// s[r][j] = Σ_d q[r][d]·k[j][d], one FMA chain per score in increasing d.
    /// `q` holds ROWS rows back to back (`head_dim` each; rows past `rows` are computed and
    /// ignored); `kt` is Kᵀ, [D][kv_len].
    fn scores_block(q: &[f32], rows: usize, kt: &[f32], kv_len: usize, j0: usize, head_dim: usize, s: &mut [f32]) {
        let width = LANES.min(kv_len - j0);
        let mut acc = [[0f32; LANES]; ROWS];
        for d in 0..head_dim {
            let k = lanes(&kt[d * kv_len + j0..], width);
            for r in 0..ROWS {
                let qd = q[r * head_dim + d];
                for l in 0..LANES {
                    acc[r][l] = qd.mul_add(k[l], acc[r][l]);
                }
            }
        }
        for r in 0..rows {
            s[r * kv_len + j0..r * kv_len + j0 + width].copy_from_slice(&acc[r][..width]);
        }
    }
}

multiversion! {
    /// out[r][t0..t0+LANES] = Σ_j p[r][j]·v[j][t] for the ROWS rows of `p`, over keys `j0..j1`, one FMA chain per output
    /// in increasing j. `p` holds ROWS rows of `kv_len` (rows past `rows` are computed and
    /// ignored); V row j starts at `v[j·row_stride]`.
    #[allow(clippy::too_many_arguments)]
    fn weighted_block(p: &[f32], kv_len: usize, j0: usize, j1: usize, v: &[f32], row_stride: usize, t0: usize, head_dim: usize, out: &mut [[f32; LANES]; ROWS]) {
        let width = LANES.min(head_dim - t0);
        let mut acc = [[0f32; LANES]; ROWS];
        for j in j0..j1 {
            let vv = lanes(&v[j * row_stride + t0..], width);
            for r in 0..ROWS {
                let pj = p[r * kv_len + j];
                for l in 0..LANES {
                    acc[r][l] = pj.mul_add(vv[l], acc[r][l]);
                }
            }
        }
        *out = acc;
    }
}

/// One operand of [`attention_f32`]: its data and layout.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    /// The elements.
    pub data: &'a [f32],
    /// Where each (batch, head, position) row starts.
    pub strides: Strides,
}

impl Operand<'_> {
    fn check(&self, batch: usize, heads: usize, len: usize, dim: usize, what: &str) {
        if batch * heads * len * dim == 0 {
            return;
        }
        let last = self.strides.at(batch - 1, heads - 1, len - 1) + dim;
        assert!(self.data.len() >= last, "attention: {what} holds {} elements, needs {last}", self.data.len());
    }
}

/// Fused attention. `q` has `heads` heads of `q_len` rows, `k` and `v` have `kv_heads` heads of
/// `kv_len` rows, each row `head_dim` contiguous features at the operand's strides; `out` is
/// [B, Sq, H, D]. Head h reads kv head h / (H / KVH). With `causal`, query i sees keys
/// j ≤ i + (Sk − Sq). A row with no visible key (fully masked) yields zeros.
#[allow(clippy::too_many_arguments)]
pub fn attention_f32(q: Operand<'_>, k: Operand<'_>, v: Operand<'_>, mask: Option<&MaskView<'_>>, causal: bool, scale: f32, dims: &AttentionDims, out: &mut [f32]) {
    let AttentionDims { batch, heads, kv_heads, q_len, kv_len, head_dim } = *dims;
    assert!(kv_heads > 0 && heads % kv_heads == 0, "attention: {heads} heads over {kv_heads} kv heads");
    q.check(batch, heads, q_len, head_dim, "q");
    k.check(batch, kv_heads, kv_len, head_dim, "k");
    v.check(batch, kv_heads, kv_len, head_dim, "v");
    assert_eq!(out.len(), batch * heads * q_len * head_dim, "attention: out size");
    if let Some(m) = mask {
        let last = (batch.max(1) - 1) * m.batch_stride + (heads.max(1) - 1) * m.head_stride + (q_len.max(1) - 1) * m.row_stride + kv_len;
        assert!(m.data.len() >= last, "attention: mask too small");
    }
    if out.is_empty() {
        return;
    }
    let group = heads / kv_heads;
    // Each (b, h) writes rows out[b, i, h, :], strided; compute per (b, h) into a local block
    // and scatter, so tasks never share memory.
    let blocks: Vec<(usize, usize, Vec<f32>)> = (0..batch * heads)
        .into_par_iter()
        .map(|bh| {
            let (b, h) = (bh / heads, bh % heads);
            let kvh = h / group;
            let vb = &v.data[v.strides.at(b, kvh, 0)..];
            debug_assert!(vb.len() >= (kv_len.max(1) - 1) * v.strides.row + head_dim);
            // Kᵀ for this head: [D][Sk], so scores vectorize over keys.
            let mut kt = vec![0f32; head_dim * kv_len];
            for j in 0..kv_len {
                let kr = &k.data[k.strides.at(b, kvh, j)..][..head_dim];
                for (d, &x) in kr.iter().enumerate() {
                    kt[d * kv_len + j] = x;
                }
            }
            let mut s = vec![0f32; ROWS * kv_len];
            let mut causal_row = vec![0f32; kv_len];
            let mut block = vec![0f32; q_len * head_dim];
            let mut qrows = vec![0f32; ROWS * head_dim];
            let mut part = [[0f32; LANES]; ROWS];
            for i0 in (0..q_len).step_by(ROWS) {
                let rows = ROWS.min(q_len - i0);
                for r in 0..rows {
                    let src = q.strides.at(b, h, i0 + r);
                    qrows[r * head_dim..(r + 1) * head_dim].copy_from_slice(&q.data[src..src + head_dim]);
                }
                for j0 in (0..kv_len).step_by(LANES) {
                    scores_block(&qrows, rows, &kt, kv_len, j0, head_dim, &mut s);
                }
                for r in 0..rows {
                    let i = i0 + r;
                    let srow = &mut s[r * kv_len..(r + 1) * kv_len];
                    let mrow = mask.map(|m| {
                        let o = b * m.batch_stride + h * m.head_stride + i * m.row_stride;
                        &m.data[o..o + kv_len]
                    });
                    let mrow = if causal {
                        let visible = i + kv_len.saturating_sub(q_len);
                        for (j, c) in causal_row.iter_mut().enumerate() {
                            *c = if j > visible { f32::NEG_INFINITY } else { mrow.map_or(0.0, |m| m[j]) };
                        }
                        Some(causal_row.as_slice())
                    } else {
                        mrow
                    };
                    // The scale multiplies the finished dot product; the mask is added after.
                    match mrow {
                        Some(m) => srow.iter_mut().zip(m).for_each(|(x, &mj)| *x = *x * scale + mj),
                        None => srow.iter_mut().for_each(|x| *x *= scale),
                    }
                    softmax_row(srow);
                }
                for t0 in (0..head_dim).step_by(LANES) {
                    let width = LANES.min(head_dim - t0);
                    for (c, j0) in (0..kv_len).step_by(PV_BLOCK).enumerate() {
                        let j1 = (j0 + PV_BLOCK).min(kv_len);
                        weighted_block(&s, kv_len, j0, j1, vb, v.strides.row, t0, head_dim, &mut part);
                        for r in 0..rows {
                            let o = &mut block[(i0 + r) * head_dim + t0..(i0 + r) * head_dim + t0 + width];
                            if c == 0 {
                                o.copy_from_slice(&part[r][..width]);
                            } else {
                                // Each further block of keys is added to the running total once.
                                o.iter_mut().zip(&part[r][..width]).for_each(|(o, &x)| *o += x);
                            }
                        }
                    }
                }
                for r in 0..rows {
                    // A fully masked row (softmax NaN): the exporters' IsNaN guard makes it 0.
                    if s[r * kv_len].is_nan() {
                        block[(i0 + r) * head_dim..(i0 + r + 1) * head_dim].fill(0.0);
                    }
                }
            }
            (b, h, block)
        })
        .collect();
    for (b, h, block) in blocks {
        for i in 0..q_len {
            let dst = ((b * q_len + i) * heads + h) * head_dim;
            out[dst..dst + head_dim].copy_from_slice(&block[i * head_dim..(i + 1) * head_dim]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain two-loop attention in f64: the reference.
    fn naive(q: &[f32], k: &[f32], v: &[f32], mask: Option<&[f32]>, causal: bool, scale: f32, d: &AttentionDims) -> Vec<f32> {
        let mut out = vec![0f32; q.len()];
        let grp = d.heads / d.kv_heads;
        for b in 0..d.batch {
            for h in 0..d.heads {
                let kh = b * d.kv_heads + h / grp;
                for i in 0..d.q_len {
                    let qi = &q[((b * d.heads + h) * d.q_len + i) * d.head_dim..][..d.head_dim];
                    let mut s: Vec<f64> = (0..d.kv_len)
                        .map(|j| {
                            let kj = &k[(kh * d.kv_len + j) * d.head_dim..][..d.head_dim];
                            let dot: f64 = qi.iter().zip(kj).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
                            let mut x = dot * f64::from(scale);
                            if let Some(m) = mask {
                                x += f64::from(m[(b * d.q_len + i) * d.kv_len + j]);
                            }
                            if causal && j > i + (d.kv_len - d.q_len) {
                                x = f64::NEG_INFINITY;
                            }
                            x
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let o = &mut out[((b * d.q_len + i) * d.heads + h) * d.head_dim..][..d.head_dim];
                    if mx == f64::NEG_INFINITY {
                        continue;
                    }
                    let sum: f64 = s.iter_mut().map(|x| { *x = (*x - mx).exp(); *x }).sum();
                    for t in 0..d.head_dim {
                        let acc: f64 = (0..d.kv_len).map(|j| s[j] / sum * f64::from(v[(kh * d.kv_len + j) * d.head_dim + t])).sum();
                        o[t] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) * 2.0 - 1.0).collect()
    }

    #[test]
    fn matches_naive_reference_on_odd_shapes() {
        // f32 accumulation vs. f64: 1e-5 relative to the O(1) outputs covers the rounding of
        // sums of up to 300 terms.
        for &(batch, heads, kv_heads, q_len, kv_len, head_dim, causal, masked) in &[
            (1, 1, 1, 1, 1, 1, false, false),
            (2, 4, 2, 5, 5, 8, false, true),
            (1, 4, 1, 3, 7, 16, true, false),
            (2, 12, 12, 17, 17, 32, false, true),
            (1, 2, 2, 9, 300, 8, false, true),
        ] {
            let d = AttentionDims { batch, heads, kv_heads, q_len, kv_len, head_dim };
            let q = data(batch * heads * q_len * head_dim, 1);
            let k = data(batch * kv_heads * kv_len * head_dim, 2);
            let v = data(k.len(), 3);
            let mask: Vec<f32> = (0..batch * q_len * kv_len).map(|i| if i % 7 == 3 { f32::NEG_INFINITY } else { 0.0 }).collect();
            let view = MaskView { data: &mask, batch_stride: q_len * kv_len, head_stride: 0, row_stride: kv_len };
            let mut out = vec![0f32; q.len()];
            fn op(data: &[f32], h: usize, len: usize, d: usize) -> Operand<'_> {
                Operand { data, strides: Strides::bhsd(h, len, d) }
            }
            attention_f32(op(&q, heads, q_len, head_dim), op(&k, kv_heads, kv_len, head_dim), op(&v, kv_heads, kv_len, head_dim), masked.then_some(&view), causal, 0.3, &d, &mut out);
            // The same through [B, S, H, D] views gives the same bits.
            let to_bshd = |x: &[f32], h: usize, len: usize| {
                let mut y = vec![0f32; x.len()];
                for b in 0..batch { for hh in 0..h { for i in 0..len { for t in 0..head_dim {
                    y[((b * len + i) * h + hh) * head_dim + t] = x[((b * h + hh) * len + i) * head_dim + t];
                } } } }
                y
            };
            let (qs, ks, vs) = (to_bshd(&q, heads, q_len), to_bshd(&k, kv_heads, kv_len), to_bshd(&v, kv_heads, kv_len));
            fn ops(data: &[f32], h: usize, len: usize, d: usize) -> Operand<'_> {
                Operand { data, strides: Strides::bshd(h, len, d) }
            }
            let mut out2 = vec![0f32; q.len()];
            attention_f32(ops(&qs, heads, q_len, head_dim), ops(&ks, kv_heads, kv_len, head_dim), ops(&vs, kv_heads, kv_len, head_dim), masked.then_some(&view), causal, 0.3, &d, &mut out2);
            assert_eq!(out, out2);
            let want = naive(&q, &k, &v, masked.then_some(&mask), causal, 0.3, &d);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-5, "{d:?} [{i}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn fully_masked_rows_are_zero() {
        let d = AttentionDims { batch: 1, heads: 1, kv_heads: 1, q_len: 2, kv_len: 3, head_dim: 2 };
        let mask = [f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0, 0.0, 0.0];
        let view = MaskView { data: &mask, batch_stride: 0, head_stride: 0, row_stride: 3 };
        let mut out = vec![9f32; 4];
        let (q, k, v) = ([1.0f32; 4], [1.0f32; 6], [2.0f32; 6]);
        attention_f32(
            Operand { data: &q, strides: Strides::bhsd(1, 2, 2) },
            Operand { data: &k, strides: Strides::bhsd(1, 3, 2) },
            Operand { data: &v, strides: Strides::bhsd(1, 3, 2) },
            Some(&view), false, 1.0, &d, &mut out,
        );
        assert_eq!(&out[..2], &[0.0, 0.0]);
        assert!((out[2] - 2.0).abs() < 1e-6);
    }
}
