//! Linear layers: the frozen `y = x·W (+ b)`, its BitFit bias, and the LoRA side path
//! `y = x·W + s·(x·Aᵀ)·Bᵀ`.

use crate::kernels::gemm_f32::{matmul_f32, matmul_f32_at, matmul_f32_bt};
use crate::kernels::gemm_i8::input_grad_bf16;
use crate::ops::linear::{Linear, LinearWeight};

/// Input gradient of a frozen linear layer `y[m×n] = x[m×k]·W[k×n] (+ b)`.
///
/// `∂yᵢⱼ/∂xᵢₚ = Wₚⱼ`, so `dx = dy·Wᵀ` (`dx[m×k]`). `w_kn` is the weight as the forward stores it
/// (K×N row-major, ONNX `MatMul` layout); for int8 layers pass the dequantized f32 weight
/// ([`crate::ops::linear::Linear::weight_f32`]): the int8 forward is piecewise constant in `x`
/// (it re-quantizes activations), so the straight-through gradient of the dequantized weight is
/// the useful one. `m` is `dy.len() / n`. No weight gradient: the weight is frozen.
///
/// Panics if `w_kn` is not `k·n` long or `dy` is not a whole number of rows of `n`.
pub fn linear_backward(w_kn: &[f32], k: usize, n: usize, dy: &[f32]) -> Vec<f32> {
    assert_eq!(w_kn.len(), k * n, "linear_backward: weight is not k×n");
    assert!(n > 0 && dy.len().is_multiple_of(n), "linear_backward: dy is not rows of {n}");
    let m = dy.len() / n;
    let mut dx = vec![0f32; m * k];
    // dx[m×k] = dy[m×n] · (W[k×n])ᵀ: W is exactly the transposed operand `bt[k×n]`.
    matmul_f32_bt(dy, w_kn, &mut dx, m, n, k, false);
    dx
}

/// Input gradient of a frozen `Linear` as its weight is stored. An f32 weight goes through
/// [`linear_backward`]. An int8 weight, where the CPU has AMX-BF16 or AVX-512 BF16, multiplies its integers
/// (exact in bf16) by `dy · scale` rounded to bf16, with f32 sums: the weight loses nothing,
/// `dy` keeps 8 significant bits (PyTorch's bf16 autocast rounds the same product), and no
/// f32 copy of the weight is made. Elsewhere it goes through the dequantized f32 weight.
pub fn frozen_input_grad(l: &Linear, dy: &[f32]) -> Vec<f32> {
    if let LinearWeight::I8(w) = &l.weight {
        if let Some(dx) = input_grad_bf16(w, dy, dy.len() / l.n.max(1)) {
            return dx;
        }
    }
    linear_backward(&l.weight_f32(), l.k, l.n, dy)
}

/// Gradient of a (BitFit-trainable) bias `y = x·W + b`, b of `n` values.
///
/// `∂yᵢⱼ/∂bⱼ = 1` for every row i, so `db = Σᵢ dyᵢ` (the sum over rows, in f64).
///
/// Panics if `dy` is not a whole number of rows of `n`.
pub fn linear_bias_grad(dy: &[f32], n: usize) -> Vec<f32> {
    assert!(n > 0 && dy.len().is_multiple_of(n), "linear_bias_grad: dy is not rows of {n}");
    let mut acc = vec![0f64; n];
    for row in dy.chunks_exact(n) {
        acc.iter_mut().zip(row).for_each(|(a, &g)| *a += f64::from(g));
    }
    acc.into_iter().map(|a| a as f32).collect()
}

/// Sizes of a LoRA side path: `x[rows×k]`, `A[rank×k]`, `B[n×rank]` (PEFT's `lora_A.weight` and
/// `lora_B.weight` layouts, i.e. PyTorch `Linear` weights, out×in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraShape {
    /// Input rows (tokens).
    pub rows: usize,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// LoRA rank r.
    pub rank: usize,
}

impl LoraShape {
    fn check(&self, x: &[f32], a: &[f32], b: &[f32], what: &str) {
        assert_eq!(x.len(), self.rows * self.k, "{what}: x is not rows×k");
        assert_eq!(a.len(), self.rank * self.k, "{what}: A is not rank×k");
        assert_eq!(b.len(), self.n * self.rank, "{what}: B is not n×rank");
    }
}

/// Gradients of a LoRA side path.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraGrads {
    /// The side path's contribution to the input gradient, `rows×k`; add the frozen path's
    /// [`linear_backward`] to get the layer's full input gradient.
    pub dx: Vec<f32>,
    /// Gradient of A, `rank×k`.
    pub da: Vec<f32>,
    /// Gradient of B, `n×rank`.
    pub db: Vec<f32>,
}

/// The LoRA side path alone, `y_side = s·(x·Aᵀ)·Bᵀ` (`rows×n`); the layer adds it to `x·W (+ b)`.
pub fn lora_forward(x: &[f32], a: &[f32], b: &[f32], scale: f32, shape: LoraShape) -> Vec<f32> {
    shape.check(x, a, b, "lora_forward");
    let LoraShape { rows, k, n, rank } = shape;
    let mut h = vec![0f32; rows * rank];
    matmul_f32_bt(x, a, &mut h, rows, k, rank, false);
    h.iter_mut().for_each(|v| *v *= scale);
    let mut y = vec![0f32; rows * n];
    matmul_f32_bt(&h, b, &mut y, rows, rank, n, false);
    y
}

/// Gradients of the LoRA side path `y_side = s·(x·Aᵀ)·Bᵀ`.
///
/// With `h = x·Aᵀ` (`rows×rank`) and `g = s·dy`:
/// `dB = gᵀ·h` (`n×rank`), `dh = g·B` (`rows×rank`), `dA = dhᵀ·x` (`rank×k`) and
/// `dx_side = dh·A` (`rows×k`). At PEFT's initialization (B = 0) `dA` and `dx_side` are zero
/// and only `dB` moves, as expected.
pub fn lora_backward(x: &[f32], a: &[f32], b: &[f32], scale: f32, shape: LoraShape, dy: &[f32]) -> LoraGrads {
    shape.check(x, a, b, "lora_backward");
    let LoraShape { rows, k, n, rank } = shape;
    assert_eq!(dy.len(), rows * n, "lora_backward: dy is not rows×n");
    let g: Vec<f32> = dy.iter().map(|&v| v * scale).collect();
    let mut h = vec![0f32; rows * rank];
    matmul_f32_bt(x, a, &mut h, rows, k, rank, false);
    let mut db = vec![0f32; n * rank];
    matmul_f32_at(&g, &h, &mut db, n, rows, rank, false);
    let mut dh = vec![0f32; rows * rank];
    matmul_f32(&g, b, &mut dh, rows, n, rank, false);
    let mut da = vec![0f32; rank * k];
    matmul_f32_at(&dh, x, &mut da, rank, rows, k, false);
    let mut dx = vec![0f32; rows * k];
    matmul_f32(&dh, a, &mut dx, rows, rank, k, false);
    LoraGrads { dx, da, db }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ops::linear::{Linear, LinearWeight};
    use crate::tensor::Tensor;
    use crate::train::backward::gradcheck::{check, dot, Rng};

    // The forwards here are linear in the perturbed argument, so central differences have no
    // truncation error and the step can be large (h = 0.25); what remains is f32 rounding of the
    // forward, ~1e-7 relative per output over a few terms, divided by 2h → tol 1e-4.
    const H: f32 = 0.25;
    const TOL: f64 = 1e-4;

    fn linear(w: &[f32], b: &[f32], k: usize, n: usize) -> Linear {
        Linear { module: "l".into(), k, n, weight: LinearWeight::F32(Arc::new(w.to_vec())), bias: Some(Arc::new(b.to_vec())), lora: None, patch: None }
    }

    #[test]
    fn linear_input_and_bias_gradients_match_finite_differences_of_linear_forward() {
        let (m, k, n) = (3, 5, 4);
        let mut rng = Rng::new(1);
        let (x, w, b, dy) = (rng.f32s(m * k, -1.0, 1.0), rng.f32s(k * n, -1.0, 1.0), rng.f32s(n, -1.0, 1.0), rng.f32s(m * n, -1.0, 1.0));
        let fwd = |x: &[f32], b: &[f32]| {
            let y = linear(&w, b, k, n).forward(&Tensor::new(&[m, k], x.to_vec()).expect("m×k")).expect("forward");
            dot(&dy, y.as_slice::<f32>().expect("f32 output"))
        };
        check("dx", &x, &linear_backward(&w, k, n, &dy), H, TOL, |x| fwd(x, &b));
        check("db", &b, &linear_bias_grad(&dy, n), H, TOL, |b| fwd(&x, b));
    }

    #[test]
    fn lora_gradients_match_finite_differences_of_lora_forward() {
        // Odd sizes, rank 2; B nonzero so every gradient is.
        let shape = LoraShape { rows: 3, k: 5, n: 4, rank: 2 };
        let s = 1.5;
        let mut rng = Rng::new(2);
        let x = rng.f32s(shape.rows * shape.k, -1.0, 1.0);
        let a = rng.f32s(shape.rank * shape.k, -1.0, 1.0);
        let b = rng.f32s(shape.n * shape.rank, -1.0, 1.0);
        let dy = rng.f32s(shape.rows * shape.n, -1.0, 1.0);
        let g = lora_backward(&x, &a, &b, s, shape, &dy);
        check("dx_side", &x, &g.dx, H, TOL, |x| dot(&dy, &lora_forward(x, &a, &b, s, shape)));
        check("dA", &a, &g.da, H, TOL, |a| dot(&dy, &lora_forward(&x, a, &b, s, shape)));
        check("dB", &b, &g.db, H, TOL, |b| dot(&dy, &lora_forward(&x, &a, b, s, shape)));
    }

    #[test]
    fn lora_at_init_only_moves_b() {
        let shape = LoraShape { rows: 2, k: 3, n: 2, rank: 1 };
        let g = lora_backward(&[1.0; 6], &[0.5; 3], &[0.0; 2], 2.0, shape, &[1.0; 4]);
        assert_eq!(g.da, vec![0.0; 3]);
        assert_eq!(g.dx, vec![0.0; 6]);
        // dB[j] = Σ_rows s·dy·h = 2 rows · 2 · 1 · (3·0.5) = 6.
        assert_eq!(g.db, vec![6.0; 2]);
    }
}

#[cfg(test)]
mod dropout_tests {
    use super::*;
    use crate::ops::linear::LoraDropout;
    use crate::train::backward::gradcheck::{check, dot, Rng};

    #[test]
    fn lora_gradients_through_a_dropout_mask_match_finite_differences() {
        // The mask is a fixed function of (seed, index), so the forward with dropout is a
        // linear map of x, A and B and central differences are exact up to rounding.
        let shape = LoraShape { rows: 4, k: 6, n: 3, rank: 2 };
        let d = LoraDropout { p: 0.4, seed: 11 };
        let mut rng = Rng::new(5);
        let x = rng.f32s(shape.rows * shape.k, -1.0, 1.0);
        let a = rng.f32s(shape.rank * shape.k, -1.0, 1.0);
        let b = rng.f32s(shape.n * shape.rank, -1.0, 1.0);
        let dy = rng.f32s(shape.rows * shape.n, -1.0, 1.0);
        let fwd = |x: &[f32], a: &[f32], b: &[f32]| dot(&dy, &lora_forward(&d.apply(x), a, b, 2.0, shape));
        let mut g = lora_backward(&d.apply(&x), &a, &b, 2.0, shape, &dy);
        g.dx = d.apply(&g.dx);
        check("dx", &x, &g.dx, 0.25, 1e-4, |x| fwd(x, &a, &b));
        check("dA", &a, &g.da, 0.25, 1e-4, |a| fwd(&x, a, &b));
        check("dB", &b, &g.db, 0.25, 1e-4, |b| fwd(&x, &a, b));
        // Some inputs were dropped and their gradient is exactly zero.
        let dropped = d.apply(&vec![1.0; x.len()]).iter().filter(|&&m| m == 0.0).count();
        assert!(dropped > 0 && dropped < x.len());
        assert_eq!(g.dx.iter().filter(|&&v| v == 0.0).count(), dropped);
    }

    #[test]
    fn dropout_keeps_one_minus_p_of_the_inputs_and_scales_them() {
        let n = 200_000;
        for p in [0.0f32, 0.1, 0.5] {
            let y = LoraDropout { p, seed: 3 }.apply(&vec![1.0; n]);
            let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            // Binomial standard deviation at n = 2e5 is ≤ 1.2e-3; allow 5 of them.
            assert!((kept - (1.0 - f64::from(p))).abs() < 6e-3, "p {p}: kept {kept}");
            assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / (1.0 - p)).abs() < 1e-6));
        }
        // Another seed gives another mask.
        let (a, b) = (LoraDropout { p: 0.5, seed: 1 }.apply(&[1.0; 64]), LoraDropout { p: 0.5, seed: 2 }.apply(&[1.0; 64]));
        assert_ne!(a, b);
    }
}
