//! Backward rules of the PEFT parts around a `Linear` ([`crate::ops::linear_patch`]): the
//! bottleneck adapter, the (IA)3 scales, and the full weight gradient of a trained weight
//! (top-layer fine-tuning).

use crate::kernels::gemm_f32::{matmul_f32, matmul_f32_at};
use crate::ops::linear_patch::{AdapterActivation, BottleneckAdapter};

use super::activation::gelu_backward;
use super::linear::linear_bias_grad;

/// Gradients of a bottleneck adapter's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterGrads {
    /// d/dD, `[m × n]`.
    pub down: Vec<f32>,
    /// d/dd, `[m]`.
    pub down_bias: Vec<f32>,
    /// d/dU, `[n × m]`.
    pub up: Vec<f32>,
    /// d/du, `[n]`.
    pub up_bias: Vec<f32>,
}

/// Backward of `out = y + f(z)·Uᵀ + u` with `z = y·Dᵀ + d`, given the adapter's input `y`
/// (rows of `n`) and `dy = ∂L/∂out`.
///
/// `dU = dyᵀ·f(z)`, `du = Σ_rows dy`, `dz = (dy·U) ⊙ f'(z)`, `dD = dzᵀ·y`, `dd = Σ_rows dz`,
/// and the input gradient is `dy + dz·D` (the residual plus the bottleneck path). Returns the
/// input gradient and the parameter gradients.
pub fn adapter_backward(a: &BottleneckAdapter, y: &[f32], n: usize, dy: &[f32]) -> (Vec<f32>, AdapterGrads) {
    bottleneck_backward(a, y, n, dy, true)
}

/// [`adapter_backward`] of the branch alone, `out = f(z)·Uᵀ + u`: the input gradient is
/// `dz·D`, without the residual's `dy` unless `residual`.
pub fn bottleneck_backward(a: &BottleneckAdapter, y: &[f32], n: usize, dy: &[f32], residual: bool) -> (Vec<f32>, AdapterGrads) {
    assert_eq!(y.len(), dy.len(), "adapter_backward: y and dy differ in length");
    let (m, rows) = (a.m, y.len() / n.max(1));
    let z = a.pre_activation(y, n);
    let mut act = z.clone();
    a.activation.apply(&mut act);
    let mut up = vec![0f32; n * m];
    matmul_f32_at(dy, &act, &mut up, n, rows, m, false);
    let mut dact = vec![0f32; rows * m];
    matmul_f32(dy, &a.up, &mut dact, rows, n, m, false);
    let dz = match a.activation {
        AdapterActivation::Relu => dact.iter().zip(&z).map(|(&g, &z)| if z > 0.0 { g } else { 0.0 }).collect(),
        AdapterActivation::Gelu => gelu_backward(&z, &dact),
    };
    let mut down = vec![0f32; m * n];
    matmul_f32_at(&dz, y, &mut down, m, rows, n, false);
    let mut dx = if residual { dy.to_vec() } else { vec![0f32; dy.len()] };
    matmul_f32(&dz, &a.down, &mut dx, rows, m, n, true);
    (dx, AdapterGrads { down, down_bias: linear_bias_grad(&dz, m), up, up_bias: linear_bias_grad(dy, n) })
}

/// Gradient of a per-feature scale `y = x ⊙ s` (every row of `x` times `s`) with respect to
/// `s`: `ds = Σ_rows dy ⊙ x`, in f64.
pub fn scale_grad(x: &[f32], dy: &[f32], width: usize) -> Vec<f32> {
    assert_eq!(x.len(), dy.len(), "scale_grad: x and dy differ in length");
    let mut acc = vec![0f64; width];
    for (xr, gr) in x.chunks_exact(width).zip(dy.chunks_exact(width)) {
        for ((a, &x), &g) in acc.iter_mut().zip(xr).zip(gr) {
            *a += f64::from(x) * f64::from(g);
        }
    }
    acc.into_iter().map(|a| a as f32).collect()
}

/// Gradient of a trained weight `y = x·W` (`W` `[k × n]` as the `Linear` stores it):
/// `dW = xᵀ·dy`.
pub fn weight_grad(x: &[f32], dy: &[f32], k: usize, n: usize) -> Vec<f32> {
    let rows = x.len() / k.max(1);
    let mut dw = vec![0f32; k * n];
    matmul_f32_at(x, dy, &mut dw, k, rows, n, false);
    dw
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backward::gradcheck::{check, dot, Rng};

    fn adapter(rng: &mut Rng, n: usize, m: usize, activation: AdapterActivation) -> BottleneckAdapter {
        BottleneckAdapter { m, down: rng.f32s(m * n, -1.0, 1.0), down_bias: rng.f32s(m, -0.5, 0.5), up: rng.f32s(n * m, -1.0, 1.0), up_bias: rng.f32s(n, -0.5, 0.5), activation }
    }

    fn forward(a: &BottleneckAdapter, y: &[f32], n: usize) -> Vec<f32> {
        let mut out = y.to_vec();
        a.forward_in_place(&mut out, n);
        out
    }

    // The adapter is smooth in every argument except at ReLU's kink (measure zero for random
    // data at h = 1e-3); GELU's curvature is O(1), so h = 1e-2 leaves a truncation error of
    // ~1e-4 relative, and f32 rounding over sums of a few terms another ~1e-5 / h: tol 2e-3.
    #[test]
    fn adapter_gradients_match_finite_differences_for_both_activations() {
        let (rows, n, m) = (3, 5, 2);
        for (act, h) in [(AdapterActivation::Gelu, 1e-2), (AdapterActivation::Relu, 1e-3)] {
            let mut rng = Rng::new(7);
            let a = adapter(&mut rng, n, m, act);
            let y = rng.f32s(rows * n, -1.0, 1.0);
            let dy = rng.f32s(rows * n, -1.0, 1.0);
            let (dx, g) = adapter_backward(&a, &y, n, &dy);
            check("dy_in", &y, &dx, h, 2e-3, |y| dot(&dy, &forward(&a, y, n)));
            check("dD", &a.down, &g.down, h, 2e-3, |d| dot(&dy, &forward(&BottleneckAdapter { down: d.to_vec(), ..a.clone() }, &y, n)));
            check("dd", &a.down_bias, &g.down_bias, h, 2e-3, |d| dot(&dy, &forward(&BottleneckAdapter { down_bias: d.to_vec(), ..a.clone() }, &y, n)));
            check("dU", &a.up, &g.up, h, 2e-3, |u| dot(&dy, &forward(&BottleneckAdapter { up: u.to_vec(), ..a.clone() }, &y, n)));
            check("du", &a.up_bias, &g.up_bias, h, 2e-3, |u| dot(&dy, &forward(&BottleneckAdapter { up_bias: u.to_vec(), ..a.clone() }, &y, n)));
        }
    }

    #[test]
    fn scale_and_weight_gradients_match_finite_differences() {
        // Both forwards are linear in the perturbed argument: exact differences, large step.
        let (rows, k, n) = (4, 3, 2);
        let mut rng = Rng::new(3);
        let (x, s, w, dy) = (rng.f32s(rows * k, -1.0, 1.0), rng.f32s(k, 0.5, 1.5), rng.f32s(k * n, -1.0, 1.0), rng.f32s(rows * n, -1.0, 1.0));
        let dys = rng.f32s(rows * k, -1.0, 1.0);
        let scaled = |s: &[f32]| x.chunks_exact(k).flat_map(|r| r.iter().zip(s).map(|(a, b)| a * b).collect::<Vec<_>>()).collect::<Vec<f32>>();
        check("ds", &s, &scale_grad(&x, &dys, k), 0.25, 1e-4, |s| dot(&dys, &scaled(s)));
        let mm = |w: &[f32]| {
            let mut y = vec![0f32; rows * n];
            matmul_f32(&x, w, &mut y, rows, k, n, false);
            y
        };
        check("dW", &w, &weight_grad(&x, &dy, k, n), 0.25, 1e-4, |w| dot(&dy, &mm(w)));
    }
}
