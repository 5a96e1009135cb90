//! Prefix tuning's reparameterization (Li & Liang 2021, §4.3): every layer's prefix keys and
//! values come from one small matrix through a two-layer MLP,
//!
//! ```text
//! H = tanh(P'·W1 + b1)      P' [len × e], W1 [e × mid]
//! P = H·W2 + b2             W2 [mid × L·2·D], P [len × L·2·D]
//! ```
//!
//! where row `t` of `P` holds, for each layer `l`, the key (`D` values at `2l·D`) then the
//! value (at `(2l+1)·D`) of virtual token `t`. Only `P` reaches the delta; the MLP exists only
//! while training.

use crate::kernels::gemm_f32::{matmul_f32, matmul_f32_at, matmul_f32_bt};

use super::backward::linear_bias_grad;

/// The MLP's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixMlp {
    /// Virtual tokens.
    pub len: usize,
    /// Width of `P'`.
    pub e: usize,
    /// Hidden width.
    pub mid: usize,
    /// Attention layers.
    pub layers: usize,
    /// Key (and value) width per layer, `kv_heads · head_dim`.
    pub d: usize,
}

/// The MLP's parameters, in the order [`PrefixMlp::NAMES`] lists them.
pub type MlpParams<'a> = [&'a [f32]; 5];

impl PrefixMlp {
    /// The trainer's names for `P'`, W1, b1, W2, b2.
    pub const NAMES: [&'static str; 5] = ["prefix_mlp.input", "prefix_mlp.w1", "prefix_mlp.b1", "prefix_mlp.w2", "prefix_mlp.b2"];

    /// Output width, `L·2·D`.
    pub fn out(&self) -> usize {
        self.layers * 2 * self.d
    }

    /// The parameters' shapes, in [`PrefixMlp::NAMES`] order.
    pub fn shapes(&self) -> [Vec<u32>; 5] {
        let u = |x: usize| x as u32;
        [vec![u(self.len), u(self.e)], vec![u(self.e), u(self.mid)], vec![u(self.mid)], vec![u(self.mid), u(self.out())], vec![u(self.out())]]
    }

    /// (H, P).
    pub fn forward(&self, p: MlpParams<'_>) -> (Vec<f32>, Vec<f32>) {
        let [x, w1, b1, w2, b2] = p;
        let mut h = vec![0f32; self.len * self.mid];
        for row in h.chunks_exact_mut(self.mid) {
            row.copy_from_slice(b1);
        }
        matmul_f32(x, w1, &mut h, self.len, self.e, self.mid, true);
        h.iter_mut().for_each(|v| *v = v.tanh());
        let mut out = vec![0f32; self.len * self.out()];
        for row in out.chunks_exact_mut(self.out()) {
            row.copy_from_slice(b2);
        }
        matmul_f32(&h, w2, &mut out, self.len, self.mid, self.out(), true);
        (h, out)
    }

    /// Layer `l`'s keys and values, each `[len × D]`, from `P`.
    pub fn layer(&self, p: &[f32], l: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut k, mut v) = (Vec::with_capacity(self.len * self.d), Vec::with_capacity(self.len * self.d));
        for row in p.chunks_exact(self.out()) {
            k.extend_from_slice(&row[2 * l * self.d..][..self.d]);
            v.extend_from_slice(&row[(2 * l + 1) * self.d..][..self.d]);
        }
        (k, v)
    }

    /// Writes layer `l`'s key and value gradients (`[len × D]` each) into `dp` (`[len × L·2·D]`).
    pub fn put_layer(&self, dp: &mut [f32], l: usize, dk: &[f32], dv: &[f32]) {
        for (t, row) in dp.chunks_exact_mut(self.out()).enumerate() {
            row[2 * l * self.d..][..self.d].copy_from_slice(&dk[t * self.d..][..self.d]);
            row[(2 * l + 1) * self.d..][..self.d].copy_from_slice(&dv[t * self.d..][..self.d]);
        }
    }

    /// Gradients of the five parameters given `dP`:
    /// `dW2 = Hᵀ·dP`, `db2 = Σ dP`, `dH = dP·W2ᵀ`, `dZ = dH ⊙ (1 − H²)`, `dW1 = P'ᵀ·dZ`,
    /// `db1 = Σ dZ`, `dP' = dZ·W1ᵀ`.
    pub fn backward(&self, p: MlpParams<'_>, h: &[f32], dp: &[f32]) -> [Vec<f32>; 5] {
        let [x, w1, _, w2, _] = p;
        let mut dw2 = vec![0f32; self.mid * self.out()];
        matmul_f32_at(h, dp, &mut dw2, self.mid, self.len, self.out(), false);
        let mut dh = vec![0f32; self.len * self.mid];
        matmul_f32_bt(dp, w2, &mut dh, self.len, self.out(), self.mid, false);
        let dz: Vec<f32> = dh.iter().zip(h).map(|(&g, &h)| g * (1.0 - h * h)).collect();
        let mut dw1 = vec![0f32; self.e * self.mid];
        matmul_f32_at(x, &dz, &mut dw1, self.e, self.len, self.mid, false);
        let mut dx = vec![0f32; self.len * self.e];
        matmul_f32_bt(&dz, w1, &mut dx, self.len, self.mid, self.e, false);
        [dx, dw1, linear_bias_grad(&dz, self.mid), dw2, linear_bias_grad(dp, self.out())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backward::gradcheck::{check, dot, Rng};

    #[test]
    fn mlp_gradients_match_finite_differences() {
        let m = PrefixMlp { len: 3, e: 4, mid: 5, layers: 2, d: 2 };
        let mut rng = Rng::new(9);
        let ps: Vec<Vec<f32>> = m.shapes().iter().map(|s| rng.f32s(s.iter().product::<u32>() as usize, -1.0, 1.0)).collect();
        let dp = rng.f32s(m.len * m.out(), -1.0, 1.0);
        let as_arr = |ps: &[Vec<f32>]| -> [Vec<f32>; 5] { [ps[0].clone(), ps[1].clone(), ps[2].clone(), ps[3].clone(), ps[4].clone()] };
        let base = as_arr(&ps);
        let (h, _) = m.forward([&base[0], &base[1], &base[2], &base[3], &base[4]]);
        let g = m.backward([&base[0], &base[1], &base[2], &base[3], &base[4]], &h, &dp);
        for i in 0..5 {
            let loss = |v: &[f32]| {
                let mut q = as_arr(&ps);
                q[i] = v.to_vec();
                dot(&dp, &m.forward([&q[0], &q[1], &q[2], &q[3], &q[4]]).1)
            };
            // tanh's curvature is O(1): h = 1e-2 leaves ~1e-4 relative truncation error.
            check(PrefixMlp::NAMES[i], &ps[i], &g[i], 1e-2, 2e-3, loss);
        }
    }

    #[test]
    fn layers_split_and_join_the_rows() {
        let m = PrefixMlp { len: 2, e: 1, mid: 1, layers: 2, d: 1 };
        let p = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(m.layer(&p, 1), (vec![3.0, 7.0], vec![4.0, 8.0]));
        let mut dp = vec![0.0; 8];
        m.put_layer(&mut dp, 1, &[3.0, 7.0], &[4.0, 8.0]);
        assert_eq!(dp, vec![0.0, 0.0, 3.0, 4.0, 0.0, 0.0, 7.0, 8.0]);
    }
}
