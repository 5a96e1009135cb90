//! The finite-difference harness every backward test uses.
//!
//! Gradients are checked as vector-Jacobian products: for a forward `y = f(x)` and a fixed
//! random `dy`, the scalar `L(x) = Σ dy·f(x)` has `∂L/∂x = (∂y/∂x)ᵀ·dy`, which is exactly what
//! a backward function returns. `L` is differentiated by central differences,
//! `(L(x + h·eᵢ) − L(x − h·eᵢ)) / 2h`, with a truncation error of O(h²·L''').

/// splitmix64, so test data is deterministic without a dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Uniform in `[lo, hi)`.
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// `len` uniform values in `[lo, hi)`.
    pub fn f32s(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.f32(lo, hi)).collect()
    }
}

/// Σ a·b in f64: the scalar loss `L = Σ dy·y` of a forward output `y`.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    a.iter().zip(b).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

/// Central differences of `loss` at `x`, coordinate by coordinate, with step `h`.
///
/// `x ± h` is rounded to f32 before the forward sees it, so the divisor is the step actually
/// taken, `(x+h) − (x−h)` in f64, not `2h`: that removes the representation error of the step.
pub fn numeric_grad(x: &[f32], h: f32, loss: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            let (hi, lo) = (x0 + h, x0 - h);
            xp[i] = hi;
            let lp = loss(&xp);
            xp[i] = lo;
            let lm = loss(&xp);
            xp[i] = x0;
            (lp - lm) / (f64::from(hi) - f64::from(lo))
        })
        .collect()
}

/// Asserts `|analytic − numeric| ≤ tol · max|numeric|` componentwise: an error relative to
/// the gradient's scale, so tiny components are not held to a relative bound they cannot meet.
/// Also asserts the gradient is not identically (near) zero, which would make the check vacuous.
#[track_caller]
pub fn assert_grad(what: &str, analytic: &[f32], numeric: &[f64], tol: f64) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: gradient lengths differ");
    let scale = numeric.iter().fold(0f64, |m, &v| m.max(v.abs()));
    assert!(scale > 1e-3, "{what}: numeric gradient is ~0 (max {scale:e}); the test data checks nothing");
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let err = (f64::from(a) - n).abs();
        assert!(err <= tol * scale, "{what}[{i}]: analytic {a} vs numeric {n} (err {err:e}, bound {:e})", tol * scale);
    }
}

/// [`numeric_grad`] then [`assert_grad`].
#[track_caller]
pub fn check(what: &str, x: &[f32], analytic: &[f32], h: f32, tol: f64, loss: impl Fn(&[f32]) -> f64) {
    let numeric = numeric_grad(x, h, loss);
    assert_grad(what, analytic, &numeric, tol);
}
