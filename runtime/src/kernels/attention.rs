//! Fused scaled-dot-product attention, out = softmax(scale·Q·Kᵀ + mask) · V, per (batch, head)
//! in parallel, with grouped-query heads and causal or additive masks.
//!
//! The arithmetic follows ONNX Runtime's unfused path on x86-64 to the bit (one FMA chain per
//! dot product in increasing index order, the scale applied once to the finished dot product,
//! the mask added after, its softmax, then P·V as FMA chains over keys in blocks of 256), so
//! int8 models, which re-quantize the attention output, agree with it exactly. Both products
//! run on [`small_gemm`], whose tiles keep each output's FMA chain in that order.

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

/// Query rows whose scores are held at once.
const QCHUNK: usize = 64;
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

/// Rows of one [`small_gemm`] tile.
const MR: usize = 4;
/// Columns of one AVX-512 [`small_gemm`] tile: two registers, so a tile keeps eight
/// independent FMA chains in flight.
const NR: usize = 32;

/// `c[m×n] (+)= a[m×k]·b[k×n]` for the small blocks of one attention head: `a`'s element
/// (i, p) is `a[i·ars + p·acs]` (row-major `a`: `(lda, 1)`; a transposed one: `(1, lda)`); `b`
/// and `c` are row-major with `ldb` and `ldc` elements between rows. Every output is one FMA chain over `p = 0..k` in
/// increasing order, started from zero and added to `c` once at the end when `accumulate`:
/// the same bits as a dot product written as FMAs in that order, on every path and tiling.
///
/// Panics if a slice is too short for its sizes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn small_gemm(a: &[f32], (ars, acs): (usize, usize), b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, m: usize, k: usize, n: usize, accumulate: bool) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldb >= n && ldc >= n, "small_gemm: a row stride is shorter than its row");
    assert!(k == 0 || a.len() > (m - 1) * ars + (k - 1) * acs, "small_gemm: a is too short");
    assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "small_gemm: b is too short");
    assert!(c.len() >= (m - 1) * ldc + n, "small_gemm: c is too short");
    #[cfg(target_arch = "x86_64")]
    if super::simd::level() == super::simd::Level::Avx512 {
        // SAFETY: AVX-512F is present, and the asserts above bound every access the kernel makes.
        unsafe { small_gemm_avx512(a, (ars, acs), b, ldb, c, ldc, m, k, n, accumulate) };
        return;
    }
    small_gemm_portable(a, ars, acs, b, ldb, c, ldc, m, k, n, accumulate);
}

multiversion! {
    /// [`small_gemm`] on plain arrays (AVX2 or portable code): 4 rows × 16 columns a tile.
    #[allow(clippy::too_many_arguments)]
    fn small_gemm_portable(a: &[f32], ars: usize, acs: usize, b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, m: usize, k: usize, n: usize, accumulate: bool) {
        for i0 in (0..m).step_by(MR) {
            let rows = MR.min(m - i0);
            // Rows past `rows` repeat the last one; their sums are computed and dropped.
            let arow: [usize; MR] = std::array::from_fn(|r| (i0 + r.min(rows - 1)) * ars);
            for j0 in (0..n).step_by(LANES) {
                let width = LANES.min(n - j0);
                let mut acc = [[0f32; LANES]; MR];
                for p in 0..k {
                    let bv = lanes(&b[p * ldb + j0..], width);
                    for r in 0..MR {
                        let ar = a[arow[r] + p * acs];
                        for l in 0..LANES {
                            acc[r][l] = ar.mul_add(bv[l], acc[r][l]);
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate().take(rows) {
                    let o = &mut c[(i0 + r) * ldc + j0..(i0 + r) * ldc + j0 + width];
                    if accumulate {
                        o.iter_mut().zip(row).for_each(|(o, &x)| *o += x);
                    } else {
                        o.copy_from_slice(&row[..width]);
                    }
                }
            }
        }
    }
}

/// [`small_gemm`] in AVX-512: 4 rows × 32 columns a tile, eight accumulators in registers;
/// ragged rows repeat the last row, ragged columns are masked.
///
/// # Safety
/// AVX-512F must be present, and the slices must hold what [`small_gemm`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_gemm_avx512(a: &[f32], (ars, acs): (usize, usize), b: &[f32], ldb: usize, c: &mut [f32], ldc: usize, m: usize, k: usize, n: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    let mask = |w: usize| -> __mmask16 { if w >= 16 { 0xffff } else { ((1u32 << w) - 1) as __mmask16 } };
    for i0 in (0..m).step_by(MR) {
        let rows = MR.min(m - i0);
        let arow: [usize; MR] = std::array::from_fn(|r| (i0 + r.min(rows - 1)) * ars);
        for j0 in (0..n).step_by(NR) {
            let width = NR.min(n - j0);
            let (m0, m1) = (mask(width), mask(width.saturating_sub(16)));
            let z = _mm512_setzero_ps();
            let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21, mut c30, mut c31) = (z, z, z, z, z, z, z, z);
            for p in 0..k {
                // SAFETY: p < k and j0 + width ≤ n: row p of b holds these columns; masked
                // lanes are not read.
                unsafe {
                    let brow = bp.add(p * ldb + j0);
                    let b0 = _mm512_maskz_loadu_ps(m0, brow);
                    let b1 = _mm512_maskz_loadu_ps(m1, brow.add(16));
                    let a0 = _mm512_set1_ps(*ap.add(arow[0] + p * acs));
                    let a1 = _mm512_set1_ps(*ap.add(arow[1] + p * acs));
                    let a2 = _mm512_set1_ps(*ap.add(arow[2] + p * acs));
                    let a3 = _mm512_set1_ps(*ap.add(arow[3] + p * acs));
                    c00 = _mm512_fmadd_ps(a0, b0, c00);
                    c01 = _mm512_fmadd_ps(a0, b1, c01);
                    c10 = _mm512_fmadd_ps(a1, b0, c10);
                    c11 = _mm512_fmadd_ps(a1, b1, c11);
                    c20 = _mm512_fmadd_ps(a2, b0, c20);
                    c21 = _mm512_fmadd_ps(a2, b1, c21);
                    c30 = _mm512_fmadd_ps(a3, b0, c30);
                    c31 = _mm512_fmadd_ps(a3, b1, c31);
                }
            }
            let acc = [(c00, c01), (c10, c11), (c20, c21), (c30, c31)];
            for (r, &(lo, hi)) in acc.iter().enumerate().take(rows) {
                // SAFETY: row i0 + r < m and columns j0..j0 + width < n of c; masked lanes are
                // neither read nor written.
                unsafe {
                    let o = cp.add((i0 + r) * ldc + j0);
                    let (lo, hi) = if accumulate {
                        (_mm512_add_ps(_mm512_maskz_loadu_ps(m0, o), lo), _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o.add(16)), hi))
                    } else {
                        (lo, hi)
                    };
                    _mm512_mask_storeu_ps(o, m0, lo);
                    _mm512_mask_storeu_ps(o.add(16), m1, hi);
                }
            }
        }
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
            let mut s = vec![0f32; QCHUNK.min(q_len) * kv_len];
            let mut causal_row = vec![0f32; kv_len];
            let mut block = vec![0f32; q_len * head_dim];
            for i0 in (0..q_len).step_by(QCHUNK) {
                let rows = QCHUNK.min(q_len - i0);
                small_gemm(&q.data[q.strides.at(b, h, i0)..], (q.strides.row, 1), &kt, kv_len, &mut s, kv_len, rows, head_dim, kv_len, false);
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
                // P·V over keys in blocks of PV_BLOCK, each block's sums added to the total once.
                let out_rows = &mut block[i0 * head_dim..(i0 + rows) * head_dim];
                for (c, j0) in (0..kv_len).step_by(PV_BLOCK).enumerate() {
                    let j1 = (j0 + PV_BLOCK).min(kv_len);
                    small_gemm(&s[j0..], (kv_len, 1), &vb[j0 * v.strides.row..], v.strides.row, out_rows, head_dim, rows, j1 - j0, head_dim, c > 0);
                }
                for r in 0..rows {
                    // A fully masked row (softmax NaN): the exporters' IsNaN guard makes it 0.
                    if s[r * kv_len].is_nan() {
                        out_rows[r * head_dim..(r + 1) * head_dim].fill(0.0);
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

    #[test]
    fn small_gemm_is_one_fma_chain_per_output_on_every_path() {
        // Each output must equal the FMA chain over p in increasing order, bit for bit, for
        // row-major and transposed a, ragged tiles in both directions, k = 0, and accumulation;
        // the AVX-512 and portable paths must agree with it (and so with each other).
        for &(m, k, n) in &[(1, 1, 1), (4, 32, 32), (5, 7, 33), (64, 32, 64), (3, 0, 17), (9, 64, 16), (2, 5, 48)] {
            for transposed in [false, true] {
                for accumulate in [false, true] {
                    let a = data(m * k.max(1), 3);
                    let (ars, acs) = if transposed { (1, m) } else { (k, 1) };
                    let b = data(k.max(1) * (n + 3), 4);
                    let ldb = n + 3;
                    let ldc = n + 2;
                    let start = data(m * ldc, 5);
                    let mut want = start.clone();
                    for i in 0..m {
                        for j in 0..n {
                            let mut acc = 0f32;
                            for p in 0..k {
                                acc = a[i * ars + p * acs].mul_add(b[p * ldb + j], acc);
                            }
                            want[i * ldc + j] = if accumulate { start[i * ldc + j] + acc } else { acc };
                        }
                    }
                    let mut got = start.clone();
                    small_gemm(&a, (ars, acs), &b, ldb, &mut got, ldc, m, k, n, accumulate);
                    let mut portable = start.clone();
                    small_gemm_portable(&a, ars, acs, &b, ldb, &mut portable, ldc, m, k, n, accumulate);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "m={m} k={k} n={n} transposed={transposed} accumulate={accumulate}");
                    assert_eq!(bits(&portable), bits(&want), "portable: m={m} k={k} n={n} transposed={transposed} accumulate={accumulate}");
                }
            }
        }
    }
}
