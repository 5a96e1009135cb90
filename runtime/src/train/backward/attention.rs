//! Scaled dot-product attention, `out = softmax(scale·Q·Kᵀ + mask)·V`, differentiated with the
//! probabilities recomputed from Q and K (nothing but the inputs is kept from the forward).

use crate::kernels::attention::{AttentionDims, MaskView};
use crate::kernels::gemm_f32::{matmul_f32, matmul_f32_at, matmul_f32_bt};
use crate::kernels::softmax::softmax_row;
use rayon::prelude::*;

/// Gradients of attention with respect to its three inputs (the mask is not differentiated).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionGrads {
    /// `[B, H, Sq, D]`, like q.
    pub dq: Vec<f32>,
    /// `[B, KVH, Sk, D]`, like k: summed over the query heads that share each kv head.
    pub dk: Vec<f32>,
    /// `[B, KVH, Sk, D]`, like v: summed over the query heads that share each kv head.
    pub dv: Vec<f32>,
}

/// Gradients of [`crate::kernels::attention::attention_f32`] for contiguous `[B, H, Sq, D]` q and
/// `[B, KVH, Sk, D]` k, v (`Strides::bhsd`), the same mask and causal rule, and `dout` in the
/// forward's output layout `[B, Sq, H, D]`.
///
/// Per (batch, head), with `S = scale·Q·Kᵀ + mask`, `P = softmax_rows(S)`, `O = P·V`:
/// `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))` (softmax's Jacobian),
/// `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`. Head h reads kv head `h / (H / KVH)`, so dK and dV
/// accumulate over the heads of a group. A row with no visible key (the forward outputs zeros,
/// a constant) gets zero gradients. P is recomputed with the forward's own f32 softmax; the
/// products use the f32 GEMM. Runs in parallel over (batch, kv head).
///
/// Panics if a slice does not match `dims`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(q: &[f32], k: &[f32], v: &[f32], mask: Option<&MaskView<'_>>, causal: bool, scale: f32, dims: &AttentionDims, dout: &[f32]) -> AttentionGrads {
    let AttentionDims { batch, heads, kv_heads, q_len, kv_len, head_dim } = *dims;
    assert!(kv_heads > 0 && heads % kv_heads == 0, "attention_backward: {heads} heads over {kv_heads} kv heads");
    let (qsz, kvsz) = (q_len * head_dim, kv_len * head_dim);
    assert_eq!(q.len(), batch * heads * qsz, "attention_backward: q size");
    assert_eq!(k.len(), batch * kv_heads * kvsz, "attention_backward: k size");
    assert_eq!(v.len(), batch * kv_heads * kvsz, "attention_backward: v size");
    assert_eq!(dout.len(), q.len(), "attention_backward: dout size");
    if let Some(m) = mask {
        let last = (batch.max(1) - 1) * m.batch_stride + (heads.max(1) - 1) * m.head_stride + (q_len.max(1) - 1) * m.row_stride + kv_len;
        assert!(m.data.len() >= last, "attention_backward: mask too small");
    }
    let mut grads = AttentionGrads { dq: vec![0f32; q.len()], dk: vec![0f32; k.len()], dv: vec![0f32; v.len()] };
    if q.is_empty() || kv_len == 0 {
        return grads;
    }
    let group = heads / kv_heads;
    // One task per (batch item, kv head): it owns the dq rows of the query heads in its group
    // and its own dk/dv block, so tasks never write the same memory.
    let AttentionGrads { dq, dk, dv } = &mut grads;
    dq.par_chunks_mut(group * qsz)
        .zip(dk.par_chunks_mut(kvsz).zip(dv.par_chunks_mut(kvsz)))
        .enumerate()
        .for_each(|(bk, (dq_g, (dk_g, dv_g)))| {
            let (b, kvg) = (bk / kv_heads, bk % kv_heads);
            let mut p = vec![0f32; q_len * kv_len];
            let mut ds = vec![0f32; q_len * kv_len];
            let mut d_o = vec![0f32; qsz];
            for hg in 0..group {
                let h = kvg * group + hg;
                let kvh = b * kv_heads + kvg;
                let qo = (b * heads + h) * qsz;
                let (qh, kh, vh) = (&q[qo..qo + qsz], &k[kvh * kvsz..(kvh + 1) * kvsz], &v[kvh * kvsz..(kvh + 1) * kvsz]);
                matmul_f32_bt(qh, kh, &mut p, q_len, head_dim, kv_len, false);
                let mut visible = vec![true; q_len];
                for (i, row) in p.chunks_exact_mut(kv_len).enumerate() {
                    let mrow = mask.map(|m| &m.data[b * m.batch_stride + h * m.head_stride + i * m.row_stride..][..kv_len]);
                    let last_visible = i + kv_len.saturating_sub(q_len);
                    // The forward's own scores and softmax, so P is exactly what the forward used.
                    for (j, x) in row.iter_mut().enumerate() {
                        *x = if causal && j > last_visible { f32::NEG_INFINITY } else { *x * scale + mrow.map_or(0.0, |m| m[j]) };
                    }
                    softmax_row(row);
                    if row.first().is_some_and(|p| p.is_nan()) {
                        visible[i] = false;
                        row.fill(0.0);
                    }
                }
                for i in 0..q_len {
                    let src = ((b * q_len + i) * heads + h) * head_dim;
                    d_o[i * head_dim..(i + 1) * head_dim].copy_from_slice(&dout[src..src + head_dim]);
                }
                // dV[Sk×D] += Pᵀ·dO.
                matmul_f32_at(&p, &d_o, dv_g, kv_len, q_len, head_dim, true);
                // dP[Sq×Sk] = dO·Vᵀ, then dS = scale·P ⊙ (dP − rowsum(P ⊙ dP)) in place.
                matmul_f32_bt(&d_o, vh, &mut ds, q_len, head_dim, kv_len, false);
                for ((prow, drow), &vis) in p.chunks_exact(kv_len).zip(ds.chunks_exact_mut(kv_len)).zip(&visible) {
                    if !vis {
                        drow.fill(0.0);
                        continue;
                    }
                    let dot: f64 = prow.iter().zip(drow.iter()).map(|(&p, &d)| f64::from(p) * f64::from(d)).sum();
                    for (d, &p) in drow.iter_mut().zip(prow) {
                        *d = (f64::from(scale) * f64::from(p) * (f64::from(*d) - dot)) as f32;
                    }
                }
                // dQ[Sq×D] = dS·K; dK[Sk×D] += dSᵀ·Q.
                matmul_f32(&ds, kh, &mut dq_g[hg * qsz..(hg + 1) * qsz], q_len, kv_len, head_dim, false);
                matmul_f32_at(&ds, qh, dk_g, kv_len, q_len, head_dim, true);
            }
        });
    grads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::{attention_f32, Operand, Strides};
    use crate::train::backward::gradcheck::{check, dot, Rng};

    // Forward: the crate's fused f32 kernel. h = 1e-2: truncation O(h²·|L'''|) ≈ 1e-4 (scores
    // are O(1), so softmax's third derivatives are O(1)); rounding ~1e-7·Σ|dy·y| / 2h ≈ 1e-4
    // over ~30 outputs → tol 3e-3 of the gradient's scale. A wrong group sum or a missing scale
    // is off by O(0.3) or more.
    const H: f32 = 1e-2;
    const TOL: f64 = 3e-3;

    struct Case<'a> {
        dims: AttentionDims,
        mask: Option<MaskView<'a>>,
        causal: bool,
        scale: f32,
    }

    impl Case<'_> {
        fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
            let d = &self.dims;
            let op = |data, heads, len| Operand { data, strides: Strides::bhsd(heads, len, d.head_dim) };
            let mut out = vec![0f32; q.len()];
            attention_f32(op(q, d.heads, d.q_len), op(k, d.kv_heads, d.kv_len), op(v, d.kv_heads, d.kv_len), self.mask.as_ref(), self.causal, self.scale, d, &mut out);
            out
        }

        fn check_all(&self, seed: u64) -> AttentionGrads {
            let d = &self.dims;
            let mut rng = Rng::new(seed);
            let q = rng.f32s(d.batch * d.heads * d.q_len * d.head_dim, -1.0, 1.0);
            let k = rng.f32s(d.batch * d.kv_heads * d.kv_len * d.head_dim, -1.0, 1.0);
            let v = rng.f32s(k.len(), -1.0, 1.0);
            let dout = rng.f32s(q.len(), -1.0, 1.0);
            let g = attention_backward(&q, &k, &v, self.mask.as_ref(), self.causal, self.scale, d, &dout);
            check("dq", &q, &g.dq, H, TOL, |q| dot(&dout, &self.forward(q, &k, &v)));
            check("dk", &k, &g.dk, H, TOL, |k| dot(&dout, &self.forward(&q, k, &v)));
            check("dv", &v, &g.dv, H, TOL, |v| dot(&dout, &self.forward(&q, &k, v)));
            g
        }
    }

    #[test]
    fn gqa_with_padding_mask_matches_finite_differences_of_attention_f32() {
        // 2 query heads share 1 kv head; head_dim 3, seq 5; batch 1 pads its last position.
        let dims = AttentionDims { batch: 2, heads: 2, kv_heads: 1, q_len: 5, kv_len: 5, head_dim: 3 };
        let mut m = vec![0f32; 10];
        m[9] = f32::NEG_INFINITY;
        let mask = MaskView { data: &m, batch_stride: 5, head_stride: 0, row_stride: 0 };
        let g = Case { dims, mask: Some(mask), causal: false, scale: 1.0 / 3f32.sqrt() }.check_all(12);
        // The padded key gets no gradient: it has zero probability everywhere.
        assert_eq!(&g.dk[(5 + 4) * 3..(5 + 5) * 3], &[0.0; 3]);
        assert_eq!(&g.dv[(5 + 4) * 3..(5 + 5) * 3], &[0.0; 3]);
    }

    #[test]
    fn causal_with_a_fully_masked_row_gives_that_row_zero_gradients() {
        // Sq 3 < Sk 5 (query i sees keys ≤ i + 2); query row 1 is fully masked by the mask.
        let dims = AttentionDims { batch: 1, heads: 2, kv_heads: 2, q_len: 3, kv_len: 5, head_dim: 3 };
        let mut m = vec![0f32; 15];
        m[5..10].fill(f32::NEG_INFINITY);
        m[2] = -0.7; // a finite additive bias on a visible key
        let mask = MaskView { data: &m, batch_stride: 0, head_stride: 0, row_stride: 5 };
        let g = Case { dims, mask: Some(mask), causal: true, scale: 0.8 }.check_all(13);
        for h in 0..2 {
            assert_eq!(&g.dq[(h * 3 + 1) * 3..(h * 3 + 2) * 3], &[0.0; 3], "head {h} row 1");
        }
        assert!(g.dq.iter().all(|v| v.is_finite()));
    }
    /// Prints the time of one forward and one backward on MiniLM's shape (16 × 12 heads × 64 ×
    /// 32) at 1 and 2 threads. Informational only: nothing asserts on time.
    /// `cargo test --release print_attention_times -- --nocapture`.
    #[test]
    fn print_attention_times() {
        use crate::kernels::testutil::bench_secs;
        let d = AttentionDims { batch: 16, heads: 12, kv_heads: 12, q_len: 64, kv_len: 64, head_dim: 32 };
        let mut rng = Rng::new(5);
        let q = rng.f32s(d.batch * d.heads * d.q_len * d.head_dim, -1.0, 1.0);
        let k = rng.f32s(q.len(), -1.0, 1.0);
        let v = rng.f32s(q.len(), -1.0, 1.0);
        let dout = rng.f32s(q.len(), -1.0, 1.0);
        let mut m = vec![0f32; d.batch * d.kv_len];
        m.iter_mut().skip(50).step_by(64).for_each(|x| *x = f32::NEG_INFINITY);
        let mask = MaskView { data: &m, batch_stride: d.kv_len, head_stride: 0, row_stride: 0 };
        let case = Case { dims: d, mask: Some(mask), causal: false, scale: 0.17 };
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            let f = pool.install(|| bench_secs(|| drop(case.forward(&q, &k, &v))));
            let b = pool.install(|| bench_secs(|| drop(attention_backward(&q, &k, &v, case.mask.as_ref(), false, 0.17, &d, &dout))));
            println!("attention 16x12x64x32 threads={threads}: forward {:.2} ms, backward {:.2} ms", f * 1e3, b * 1e3);
        }
    }
}
