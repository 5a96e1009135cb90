//! Row normalizations: LayerNorm (plain and residual) and RMSNorm.
//!
//! Row statistics are recomputed in f64 with the two-pass formula, not taken from the forward:
//! the forward's f32 statistics (ONNX Runtime's E[x²] − mean², or Welford) differ from the exact
//! ones by a few ulp, far below the precision a gradient needs, and recomputing saves storing
//! them. The gradient is then the exact derivative of the exact function.

/// Gradients of a LayerNorm over the last axis.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormGrads {
    /// Input gradient, same shape as x. For the residual form it is also the skip's gradient.
    pub dx: Vec<f32>,
    /// Gradient of γ (`d` values), summed over rows.
    pub dgamma: Vec<f32>,
    /// Gradient of β (`d` values), summed over rows; BitFit trains it.
    pub dbeta: Vec<f32>,
}

/// `Σ f(a[i], b[i])` in f64 over eight interleaved partial sums, so the loop vectorizes; the
/// order is fixed, so the result is too.
#[inline(always)]
fn sum_f64(a: &[f32], b: &[f32], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(f64::from(x), f64::from(y))).sum();
    for (x, y) in ca.zip(cb) {
        for ((a, &xv), &yv) in acc.iter_mut().zip(x).zip(y) {
            *a += f(f64::from(xv), f64::from(yv));
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Per row: (mean, 1/sqrt(var + eps)) in f64, var the biased (1/d) variance.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f64, f64) {
    let d = x.len() as f64;
    let mean = sum_f64(x, x, |v, _| v) / d;
    let var = sum_f64(x, x, |v, _| (v - mean) * (v - mean)) / d;
    (mean, 1.0 / (var + f64::from(eps)).sqrt())
}

crate::kernels::simd::multiversion! {
    /// The rows of one block: their `dx`, and their sums of dγ and dβ added to `dgamma` and `dbeta`.
    #[allow(clippy::too_many_arguments)]
    fn ln_block(xb: &[f32], dyb: &[f32], dxb: &mut [f32], gamma: &[f32], eps: f32, dgamma: &mut [f64], dbeta: &mut [f64]) {
        let d = gamma.len();
        let mut xhat = vec![0f64; d];
        for ((xr, dyr), dxr) in xb.chunks_exact(d).zip(dyb.chunks_exact(d)).zip(dxb.chunks_exact_mut(d)) {
            let (mean, r) = row_stats(xr, eps);
            for (((xh, dg), db), (&xv, &dyv)) in xhat.iter_mut().zip(dgamma.iter_mut()).zip(dbeta.iter_mut()).zip(xr.iter().zip(dyr)) {
                *xh = (f64::from(xv) - mean) * r;
                *dg += f64::from(dyv) * *xh;
                *db += f64::from(dyv);
            }
            // mean(g) and mean(g ⊙ x̂), g = dy ⊙ γ, each over eight interleaved sums.
            let mg = sum_f64(dyr, gamma, |dy, ga| dy * ga) / d as f64;
            let mut acc = [0f64; 8];
            let (c_dy, c_ga, c_xh) = (dyr.chunks_exact(8), gamma.chunks_exact(8), xhat.chunks_exact(8));
            let tail: f64 = c_dy.remainder().iter().zip(c_ga.remainder()).zip(c_xh.remainder()).map(|((&dv, &gv), &xv)| f64::from(dv) * f64::from(gv) * xv).sum();
            for ((d8, g8), x8) in c_dy.zip(c_ga).zip(c_xh) {
                for (((a, &dv), &gv), &xv) in acc.iter_mut().zip(d8).zip(g8).zip(x8) {
                    *a += f64::from(dv) * f64::from(gv) * xv;
                }
            }
            let mgx = (acc.iter().sum::<f64>() + tail) / d as f64;
            for ((dxv, xh), (&dyv, &ga)) in dxr.iter_mut().zip(&xhat).zip(dyr.iter().zip(gamma)) {
                *dxv = (r * (f64::from(dyv) * f64::from(ga) - mg - xh * mgx)) as f32;
            }
        }
    }
}

/// Rows per parallel task. Fixed, and the tasks' partial sums of dγ and dβ are added in row
/// order, so the result does not depend on the thread count.
const ROWS_PER_TASK: usize = 32;

/// Gradients of `y = (x − μ)·r·γ + β` per row of `d = gamma.len()` features, with
/// `μ = mean(x)`, `r = 1/sqrt(var(x) + eps)` and `x̂ = (x − μ)·r`.
///
/// With `g = dy ⊙ γ`: `dx = r·(g − mean(g) − x̂·mean(g ⊙ x̂))` per row, `dγ = Σ_rows dy ⊙ x̂`,
/// `dβ = Σ_rows dy`. Statistics and the row means are computed in f64 (see the module docs).
/// Blocks of rows run in parallel on the current rayon pool.
///
/// Panics if `x` and `dy` differ in length or are not whole rows of `d`.
pub fn layer_norm_backward(x: &[f32], gamma: &[f32], eps: f32, dy: &[f32]) -> LayerNormGrads {
    use rayon::prelude::*;
    let d = gamma.len();
    assert!(d > 0 && x.len().is_multiple_of(d), "layer_norm_backward: x is not rows of {d}");
    assert_eq!(x.len(), dy.len(), "layer_norm_backward: x and dy differ in length");
    let mut dx = vec![0f32; x.len()];
    let block = d * ROWS_PER_TASK;
    let partials: Vec<(Vec<f64>, Vec<f64>)> = x
        .par_chunks(block)
        .zip(dy.par_chunks(block))
        .zip(dx.par_chunks_mut(block))
        .map(|((xb, dyb), dxb)| {
            let (mut dgamma, mut dbeta) = (vec![0f64; d], vec![0f64; d]);
            ln_block(xb, dyb, dxb, gamma, eps, &mut dgamma, &mut dbeta);
            (dgamma, dbeta)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0f64; d], vec![0f64; d]);
    for (pg, pb) in &partials {
        dgamma.iter_mut().zip(pg).for_each(|(a, b)| *a += b);
        dbeta.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    let to32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    LayerNormGrads { dx, dgamma: to32(dgamma), dbeta: to32(dbeta) }
}

/// Gradients of the residual form `y = LayerNorm(x + skip)` (`AddLayerNorm`).
///
/// `∂(x + skip)/∂x = ∂(x + skip)/∂skip = I`, so both inputs receive the same gradient,
/// [`LayerNormGrads::dx`], which is [`layer_norm_backward`] evaluated at `x + skip`.
pub fn add_layer_norm_backward(x: &[f32], skip: &[f32], gamma: &[f32], eps: f32, dy: &[f32]) -> LayerNormGrads {
    assert_eq!(x.len(), skip.len(), "add_layer_norm_backward: x and skip differ in length");
    let sum: Vec<f32> = x.iter().zip(skip).map(|(&a, &b)| a + b).collect();
    layer_norm_backward(&sum, gamma, eps, dy)
}

/// Input gradient of a frozen RMSNorm `y = w ⊙ x·r` per row of `d = w.len()` features, with
/// `r = 1/sqrt(mean(x²) + eps)`.
///
/// `∂r/∂xₖ = −r³·xₖ/d`, so with `g = dy ⊙ w`: `dx = r·g − x·r³·mean(g ⊙ x)`. `r` and the mean
/// are computed in f64. No weight gradient: Llama's norms are frozen here.
///
/// Panics if `x` and `dy` differ in length or are not whole rows of `d`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], eps: f32, dy: &[f32]) -> Vec<f32> {
    let d = w.len();
    assert!(d > 0 && x.len().is_multiple_of(d), "rms_norm_backward: x is not rows of {d}");
    assert_eq!(x.len(), dy.len(), "rms_norm_backward: x and dy differ in length");
    let mut dx = vec![0f32; x.len()];
    for ((xr, dyr), dxr) in x.chunks_exact(d).zip(dy.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + f64::from(eps)).sqrt();
        let mgx = (0..d).map(|h| f64::from(dyr[h]) * f64::from(w[h]) * f64::from(xr[h])).sum::<f64>() / d as f64;
        for h in 0..d {
            dxr[h] = (r * f64::from(dyr[h]) * f64::from(w[h]) - f64::from(xr[h]) * r.powi(3) * mgx) as f32;
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::norm::{add_layer_norm, layer_norm, rms_norm};
    use crate::tensor::Tensor;
    use crate::train::backward::gradcheck::{check, dot, Rng};

    // The forward is the crate's f32 kernel. h = 1e-2: truncation O(h²·|L'''|) ≈ 1e-4 for
    // O(1) inputs with unit-scale rows; rounding ~1e-7·Σ|dy·y| / 2h ≈ 1e-5. Relative to the
    // gradient's scale (O(1)) → tol 2e-3. A wrong term (e.g. a dropped mean) is O(0.1).
    const H: f32 = 1e-2;
    const TOL: f64 = 2e-3;
    const EPS: f32 = 1e-5;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::new(shape, v.to_vec()).expect("shape matches data")
    }

    fn out(y: crate::error::Result<Tensor>) -> Vec<f32> {
        y.expect("forward").as_slice::<f32>().expect("f32 output").to_vec()
    }

    #[test]
    fn layer_norm_gradients_match_finite_differences_of_layer_norm_forward() {
        let (m, d) = (3, 5);
        let mut rng = Rng::new(3);
        let (x, g, b, dy) = (rng.f32s(m * d, -2.0, 2.0), rng.f32s(d, 0.5, 1.5), rng.f32s(d, -1.0, 1.0), rng.f32s(m * d, -1.0, 1.0));
        let f = |x: &[f32], g: &[f32], b: &[f32]| dot(&dy, &out(layer_norm(&t(&[m, d], x), &t(&[d], g), Some(&t(&[d], b)), -1, EPS)));
        let gr = layer_norm_backward(&x, &g, EPS, &dy);
        check("dx", &x, &gr.dx, H, TOL, |x| f(x, &g, &b));
        check("dgamma", &g, &gr.dgamma, H, TOL, |g| f(&x, g, &b));
        check("dbeta", &b, &gr.dbeta, H, TOL, |b| f(&x, &g, b));
        // dx sums to zero per row: LayerNorm is invariant to shifting a row.
        for row in gr.dx.chunks(d) {
            assert!(row.iter().map(|&v| f64::from(v)).sum::<f64>().abs() < 1e-6);
        }
    }

    #[test]
    fn add_layer_norm_gives_x_and_skip_the_same_gradient() {
        let (m, d) = (2, 7);
        let mut rng = Rng::new(4);
        let (x, s, g, dy) = (rng.f32s(m * d, -1.0, 1.0), rng.f32s(m * d, -1.0, 1.0), rng.f32s(d, 0.5, 1.5), rng.f32s(m * d, -1.0, 1.0));
        let f = |x: &[f32], s: &[f32]| dot(&dy, &out(add_layer_norm(&t(&[m, d], x), &t(&[m, d], s), &t(&[d], &g), None, EPS)));
        let gr = add_layer_norm_backward(&x, &s, &g, EPS, &dy);
        check("dx", &x, &gr.dx, H, TOL, |x| f(x, &s));
        check("dskip", &s, &gr.dx, H, TOL, |s| f(&x, s));
    }

    #[test]
    fn rms_norm_input_gradient_matches_finite_differences_of_rms_norm_forward() {
        let (m, d) = (3, 5);
        let mut rng = Rng::new(5);
        let (x, w, dy) = (rng.f32s(m * d, -2.0, 2.0), rng.f32s(d, 0.5, 1.5), rng.f32s(m * d, -1.0, 1.0));
        let dx = rms_norm_backward(&x, &w, EPS, &dy);
        check("dx", &x, &dx, H, TOL, |x| dot(&dy, &out(rms_norm(&t(&[m, d], x), &t(&[d], &w), EPS))));
    }
}
