//! Pointwise activations (exact GELU, SiLU) and row softmax.

/// 1/√(2π), the standard normal density's constant.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Input gradient of exact GELU, `y = x·Φ(x)`, Φ the standard normal CDF.
///
/// `dy/dx = Φ(x) + x·φ(x)` with `Φ(x) = ½(1 + erf(x/√2))` and `φ(x) = e^{−x²/2}/√(2π)`;
/// evaluated in f32 with the forward's erf polynomial and exponential (both within ~1 ulp), in
/// vectorized chunks.
///
/// Panics if `x` and `dy` differ in length.
pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut out = dy.to_vec();
    gelu_backward_in_place(x, &mut out);
    out
}

/// [`gelu_backward`] into `dy`'s own buffer: the backward pass owns each gradient it sends on,
/// so the widest one of a block (the MLP's, 4× the hidden size) needs no second buffer.
///
/// Panics if `x` and `dy` differ in length.
pub fn gelu_backward_in_place(x: &[f32], dy: &mut [f32]) {
    assert_eq!(x.len(), dy.len(), "gelu_backward: x and dy differ in length");
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    dy.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(g, x)| gelu_backward_chunk(x, g));
}

crate::kernels::simd::multiversion! {
    fn gelu_backward_chunk(x: &[f32], dy: &mut [f32]) {
        for (g, &x) in dy.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + crate::kernels::activation::erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI as f32 * crate::kernels::softmax::exp_shifted(-0.5 * x * x, 0.0);
            *g *= cdf + x * pdf;
        }
    }
}

/// Input gradient of SiLU, `y = x·σ(x)`.
///
/// `dy/dx = σ(x) + x·σ(x)(1 − σ(x)) = σ(x)·(1 + x·(1 − σ(x)))`.
///
/// Panics if `x` and `dy` differ in length.
pub fn silu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), dy.len(), "silu_backward: x and dy differ in length");
    let mut dx = vec![0f32; x.len()];
    crate::kernels::activation::silu_backward(x, dy, &mut dx);
    dx
}

/// Input gradient of softmax over rows of `d` values, given the forward's output `y`.
///
/// `∂yᵢ/∂xⱼ = yᵢ(δᵢⱼ − yⱼ)`, so `dx = y ⊙ (dy − Σⱼ yⱼ·dyⱼ)` per row (the dot in f64).
/// A fully masked row (the forward's NaN row) gets a zero gradient, matching attention's guard.
///
/// Panics if `y` and `dy` differ in length or are not whole rows of `d`.
pub fn softmax_backward(y: &[f32], dy: &[f32], d: usize) -> Vec<f32> {
    assert!(d > 0 && y.len().is_multiple_of(d), "softmax_backward: y is not rows of {d}");
    assert_eq!(y.len(), dy.len(), "softmax_backward: y and dy differ in length");
    let mut dx = vec![0f32; y.len()];
    for ((yr, gr), dr) in y.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
        if yr.iter().any(|v| v.is_nan()) {
            continue;
        }
        let dot: f64 = yr.iter().zip(gr).map(|(&y, &g)| f64::from(y) * f64::from(g)).sum();
        for ((o, &y), &g) in dr.iter_mut().zip(yr).zip(gr) {
            *o = (f64::from(y) * (f64::from(g) - dot)) as f32;
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::activation::gelu;
    use crate::ops::elementwise::sigmoid;
    use crate::kernels::softmax::softmax_row;
    use crate::train::backward::gradcheck::{check, dot, Rng};

    // f32 forwards, h = 1e-2: truncation O(h²·|f'''|) ≤ ~1e-4 (|f'''| is O(1) for all three),
    // rounding ~6e-8·|y|/2h ≈ 1e-5 per coordinate (the loss of a pointwise op only changes in
    // one term) → tol 1e-3 of the gradient's scale. A wrong derivative is off by O(0.1).
    const H: f32 = 1e-2;
    const TOL: f64 = 1e-3;

    #[test]
    fn gelu_gradient_matches_finite_differences_of_the_gelu_kernel() {
        let mut rng = Rng::new(6);
        // Both tails and the middle, where Φ + xφ is far from the identity and from zero.
        let mut x = rng.f32s(15, -4.0, 4.0);
        x.extend([0.0, -1.0, 1.0, 3.9, -3.9]);
        let dy = rng.f32s(x.len(), -1.0, 1.0);
        let f = |x: &[f32]| {
            let mut y = vec![0f32; x.len()];
            gelu(x, &mut y);
            dot(&dy, &y)
        };
        check("gelu dx", &x, &gelu_backward(&x, &dy), H, TOL, f);
        // Known value: d/dx GELU at 1 = Φ(1) + φ(1) = 0.8413447 + 0.2419707.
        assert!((gelu_backward(&[1.0], &[1.0])[0] - 1.083_315_4).abs() < 1e-6);
    }

    #[test]
    fn silu_gradient_matches_finite_differences_of_silu() {
        let mut rng = Rng::new(7);
        let x = rng.f32s(15, -6.0, 6.0);
        let dy = rng.f32s(15, -1.0, 1.0);
        let f = |x: &[f32]| dot(&dy, &x.iter().map(|&x| x * sigmoid(x)).collect::<Vec<_>>());
        check("silu dx", &x, &silu_backward(&x, &dy), H, TOL, f);
    }

    #[test]
    fn softmax_gradient_matches_finite_differences_of_softmax_row() {
        let (m, d) = (3, 5);
        let mut rng = Rng::new(8);
        let x = rng.f32s(m * d, -3.0, 3.0);
        let dy = rng.f32s(m * d, -1.0, 1.0);
        let fwd = |x: &[f32]| {
            let mut y = x.to_vec();
            y.chunks_mut(d).for_each(softmax_row);
            y
        };
        check("softmax dx", &x, &softmax_backward(&fwd(&x), &dy, d), H, TOL, |x| dot(&dy, &fwd(x)));
        // A fully masked (NaN) row gets zeros, not NaN.
        assert_eq!(softmax_backward(&[f32::NAN; 3], &[1.0; 3], 3), vec![0.0; 3]);
    }
}
