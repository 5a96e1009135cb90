//! What a user's delta adds around one frozen `Linear` besides LoRA: (IA)3 scaling vectors on
//! its input or output, and a bottleneck adapter on its output.
//!
//! With all parts present the patched layer computes, in this order,
//!
//! ```text
//! x' = x ⊙ s_in                      (IA)3 on the input (the FFN's down projection)
//! y0 = x'·W + b (+ LoRA(x'))         the frozen layer
//! y1 = y0 ⊙ s_out                    (IA)3 on the output (keys, values)
//! y  = y1 + f(y1·Dᵀ + d)·Uᵀ + u      bottleneck adapter (Houlsby / Pfeiffer; MAD-X's language adapter)
//! y' = y + f'(y·D'ᵀ + d')·U'ᵀ + u'   a stacked adapter (MAD-X's task adapter)
//! ```
//!
//! The backward rules are in `train::backward::patch`; they recompute `y0` and `y1` from `x`
//! rather than keep them, since the forward pass keeps `x` anyway for the parameter gradients.

use crate::kernels::gemm_f32::matmul_f32_bt;

/// The activation inside a bottleneck adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AdapterActivation {
    /// max(0, z), as in Pfeiffer et al.'s adapters.
    #[default]
    Relu,
    /// Exact (erf) GELU, as BERT's own FFN.
    Gelu,
}

impl AdapterActivation {
    /// f(z), elementwise in place.
    pub fn apply(self, z: &mut [f32]) {
        match self {
            AdapterActivation::Relu => z.iter_mut().for_each(|v| *v = v.max(0.0)),
            AdapterActivation::Gelu => {
                let src = z.to_vec();
                crate::kernels::activation::gelu(&src, z);
            }
        }
    }
}

/// A bottleneck adapter `y ← y + f(y·Dᵀ + d)·Uᵀ + u` with `m` hidden units over `n` features.
#[derive(Clone, Debug, PartialEq)]
pub struct BottleneckAdapter {
    /// Bottleneck size m.
    pub m: usize,
    /// Down projection D, `[m × n]` (PyTorch `Linear` layout, out × in).
    pub down: Vec<f32>,
    /// Down bias d, `[m]`.
    pub down_bias: Vec<f32>,
    /// Up projection U, `[n × m]`.
    pub up: Vec<f32>,
    /// Up bias u, `[n]`.
    pub up_bias: Vec<f32>,
    /// The nonlinearity f.
    pub activation: AdapterActivation,
}

impl BottleneckAdapter {
    /// The pre-activation `z = y·Dᵀ + d` (`rows × m`) for `y` of rows of `n`.
    pub fn pre_activation(&self, y: &[f32], n: usize) -> Vec<f32> {
        let rows = y.len() / n.max(1);
        let mut z = vec![0f32; rows * self.m];
        for row in z.chunks_exact_mut(self.m) {
            row.copy_from_slice(&self.down_bias);
        }
        matmul_f32_bt(y, &self.down, &mut z, rows, n, self.m, true);
        z
    }

    /// The branch alone, `f(y·Dᵀ + d)·Uᵀ + u`, for `y` of rows of `n` (MAD-X's coupling
    /// functions, see [`super::invertible`]).
    pub fn branch(&self, y: &[f32], n: usize) -> Vec<f32> {
        let rows = y.len() / n.max(1);
        let mut a = self.pre_activation(y, n);
        self.activation.apply(&mut a);
        let mut out = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            out.extend_from_slice(&self.up_bias);
        }
        matmul_f32_bt(&a, &self.up, &mut out, rows, self.m, n, true);
        out
    }

    /// `y += f(y·Dᵀ + d)·Uᵀ + u`, in place, for `y` of rows of `n`.
    pub fn forward_in_place(&self, y: &mut [f32], n: usize) {
        let rows = y.len() / n.max(1);
        let mut a = self.pre_activation(y, n);
        self.activation.apply(&mut a);
        for row in y.chunks_exact_mut(n) {
            row.iter_mut().zip(&self.up_bias).for_each(|(v, b)| *v += b);
        }
        matmul_f32_bt(&a, &self.up, y, rows, self.m, n, true);
    }
}

/// The non-LoRA parts of a patched `Linear`; every part is optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinearPatch {
    /// (IA)3 input scale `s_in`, `[k]`.
    pub scale_in: Option<Vec<f32>>,
    /// (IA)3 output scale `s_out`, `[n]`.
    pub scale_out: Option<Vec<f32>>,
    /// A bottleneck adapter on the output.
    pub adapter: Option<BottleneckAdapter>,
    /// A second adapter on top of the first: MAD-X's task adapter over its language adapter
    /// (`y ← A_task(A_lang(y))`, each with its own residual).
    pub stacked: Option<BottleneckAdapter>,
}

/// Multiplies every row of `x` (rows of `row.len()`) by `row`, elementwise, in place.
pub fn scale_rows(x: &mut [f32], row: &[f32]) {
    for r in x.chunks_exact_mut(row.len().max(1)) {
        r.iter_mut().zip(row).for_each(|(v, s)| *v *= s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_with_zero_up_projection_is_the_identity() {
        let (n, m) = (3, 2);
        let a = BottleneckAdapter { m, down: vec![0.5; m * n], down_bias: vec![0.1; m], up: vec![0.0; n * m], up_bias: vec![0.0; n], activation: AdapterActivation::Gelu };
        let mut y = vec![1.0, -2.0, 3.0, 0.5, 0.25, -1.0];
        let before = y.clone();
        a.forward_in_place(&mut y, n);
        assert_eq!(y, before);
    }

    #[test]
    fn adapter_matches_a_hand_computed_relu_bottleneck() {
        // n = 2, m = 1: z = y·D + d = 1·1 + 2·(−1) + 0.5 = −0.5 → relu 0; second row z = 3 → 3.
        let a = BottleneckAdapter { m: 1, down: vec![1.0, -1.0], down_bias: vec![0.5], up: vec![2.0, -1.0], up_bias: vec![0.1, 0.2], activation: AdapterActivation::Relu };
        let mut y = vec![1.0, 2.0, 3.0, 0.5];
        a.forward_in_place(&mut y, 2);
        assert_eq!(y, vec![1.1, 2.2, 3.0 + 0.1 + 6.0, 0.5 + 0.2 - 3.0]);
    }
}
