//! Prefix tuning's part of attention (Li & Liang 2021): `len` trainable key and value rows
//! put in front of every sequence's keys and values, visible to every query.
//!
//! The keys grow from `Sk` to `len + Sk`; the mask grows with zeros (visible) in front, and
//! the causal rule, `j ≤ i + (Sk' − Sq)`, then lets query `i` see every prefix row and the keys
//! up to its own position, exactly as a cached prefix would. Prefix rows are stored per
//! virtual token, `[len, kv_heads · head_dim]`, as PEFT's `past_key_values` are, and are not
//! rotated: like a cache, they are keys as attention sees them.

use crate::kernels::attention::MaskView;

/// One attention layer's prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixKv {
    /// Virtual tokens.
    pub len: usize,
    /// Keys, `[len, kv_heads · head_dim]`.
    pub k: Vec<f32>,
    /// Values, `[len, kv_heads · head_dim]`.
    pub v: Vec<f32>,
}

impl PrefixKv {
    /// `[B, KVH, len + Sk, D]`: the prefix rows (`rows`, one of [`PrefixKv::k`] or
    /// [`PrefixKv::v`]) for every batch row, then `x` (`[B, KVH, Sk, D]`, contiguous).
    pub fn prepend(&self, rows: &[f32], x: &[f32], b: usize, kvh: usize, sk: usize, d: usize) -> Vec<f32> {
        let total = self.len + sk;
        let mut out = vec![0f32; b * kvh * total * d];
        for bi in 0..b {
            for h in 0..kvh {
                let dst = &mut out[(bi * kvh + h) * total * d..][..total * d];
                for j in 0..self.len {
                    dst[j * d..(j + 1) * d].copy_from_slice(&rows[j * kvh * d + h * d..][..d]);
                }
                dst[self.len * d..].copy_from_slice(&x[(bi * kvh + h) * sk * d..][..sk * d]);
            }
        }
        out
    }

    /// Splits the gradient of a [`PrefixKv::prepend`]ed operand into the prefix rows' gradient
    /// (`[len, KVH·D]`, summed over the batch: every row shares the prefix) and the original
    /// operand's (`[B, KVH, Sk, D]`).
    pub fn split_grad(&self, g: &[f32], b: usize, kvh: usize, sk: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
        let total = self.len + sk;
        let mut dp = vec![0f32; self.len * kvh * d];
        let mut dx = vec![0f32; b * kvh * sk * d];
        for bi in 0..b {
            for h in 0..kvh {
                let src = &g[(bi * kvh + h) * total * d..][..total * d];
                for j in 0..self.len {
                    dp[j * kvh * d + h * d..][..d].iter_mut().zip(&src[j * d..(j + 1) * d]).for_each(|(a, v)| *a += v);
                }
                dx[(bi * kvh + h) * sk * d..][..sk * d].copy_from_slice(&src[self.len * d..]);
            }
        }
        (dp, dx)
    }

    /// The mask over `[B, H, Sq, len + Sk]`: zeros (visible) for the prefix columns, then the
    /// original mask row. Dimensions the original broadcasts over (stride 0) stay broadcast.
    pub fn extend_mask(&self, m: &MaskView<'_>, b: usize, h: usize, sq: usize, sk: usize) -> (Vec<f32>, [usize; 3]) {
        let total = self.len + sk;
        let (nb, nh, nr) = (if m.batch_stride == 0 { 1 } else { b }, if m.head_stride == 0 { 1 } else { h }, if m.row_stride == 0 { 1 } else { sq });
        let mut out = vec![0f32; nb * nh * nr * total];
        for bi in 0..nb {
            for hi in 0..nh {
                for r in 0..nr {
                    let src = &m.data[bi * m.batch_stride + hi * m.head_stride + r * m.row_stride..][..sk];
                    out[((bi * nh + hi) * nr + r) * total + self.len..][..sk].copy_from_slice(src);
                }
            }
        }
        let st = |n: usize, s: usize| if n == 1 { 0 } else { s };
        (out, [st(nb, nh * nr * total), st(nh, nr * total), st(nr, total)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_then_split_round_trips_and_sums_the_prefix_over_the_batch() {
        let (b, kvh, sk, d) = (2, 2, 3, 2);
        let p = PrefixKv { len: 1, k: vec![9.0, 8.0, 7.0, 6.0], v: vec![0.0; 4] };
        let x: Vec<f32> = (0..b * kvh * sk * d).map(|i| i as f32).collect();
        let full = p.prepend(&p.k, &x, b, kvh, sk, d);
        // Batch 0, head 1 starts with the prefix's head-1 row [7, 6], then x's rows of head 1.
        assert_eq!(&full[8..12], &[7.0, 6.0, 6.0, 7.0]);
        let (dp, dx) = p.split_grad(&full, b, kvh, sk, d);
        assert_eq!(dx, x);
        assert_eq!(dp, vec![18.0, 16.0, 14.0, 12.0]);
    }

    #[test]
    fn extended_mask_keeps_the_original_after_visible_prefix_columns() {
        let p = PrefixKv { len: 2, k: vec![], v: vec![] };
        // [B=2, 1, 1, Sk=2] broadcast over heads and rows.
        let data = [0.0, -1e9, 0.0, 0.0];
        let m = MaskView { data: &data, batch_stride: 2, head_stride: 0, row_stride: 0 };
        let (out, st) = p.extend_mask(&m, 2, 4, 3, 2);
        assert_eq!(out, vec![0.0, 0.0, 0.0, -1e9, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(st, [4, 0, 0]);
    }
}
