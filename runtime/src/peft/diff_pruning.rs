//! Diff pruning (Guo et al. 2021): `θ = θ_base + δ` with a sparse δ, learned through the
//! hard-concrete relaxation of the L0 norm (Louizos et al. 2018).
//!
//! While training, each targeted weight has a dense δ and a gate parameter `log α` per
//! element. A step samples `u ~ U(0, 1)` and uses `δ ⊙ z` with
//!
//! ```text
//! s = σ((log u − log(1 − u) + log α) / β),   z = min(1, max(0, s·(ζ − γ) + γ))
//! ```
//!
//! (β = 2/3, γ = −0.1, ζ = 1.1), and the loss adds `λ·E[‖z‖₀]/N`, the expected share of open
//! gates, `P(z ≠ 0) = σ(log α − β·log(−γ/ζ))`. When the delta is made, the gates are set to
//! their deterministic value `min(1, max(0, σ(log α)·(ζ − γ) + γ))` and only the `density·N`
//! largest `|δ ⊙ z|` are kept (Guo et al.'s projection onto the L0 ball), stored sparse:
//! `<module>.diff_index` (flat indices into the `[k, n]` weight, as f32 integers, exact below
//! 2^24 and never converted to a lossy precision) and `<module>.diff_value`. The session adds
//! them to the weight; merging is that same addition.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The hard-concrete temperature β.
pub const BETA: f32 = 2.0 / 3.0;
/// The stretch interval's lower end γ.
pub const GAMMA: f32 = -0.1;
/// The stretch interval's upper end ζ.
pub const ZETA: f32 = 1.1;

/// A diff-pruning configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiffPruningConfig {
    /// The share of the targeted weights' elements kept in the delta, in (0, 1].
    pub density: f32,
    /// λ, the weight of the expected-density penalty; finite, at least 0.
    pub l0_lambda: f32,
    /// The `Linear`s whose weights get a δ, by PEFT's module-suffix rule; empty: every one.
    pub target_modules: Vec<String>,
}

impl Default for DiffPruningConfig {
    fn default() -> Self {
        DiffPruningConfig { density: 0.005, l0_lambda: 1.0, target_modules: Vec::new() }
    }
}

impl DiffPruningConfig {
    /// Checks the density and λ.
    pub fn validate(&self) -> Result<()> {
        if !(self.density > 0.0 && self.density <= 1.0) {
            return Err(Error::Config(format!("diff pruning's density must be in (0, 1], not {}", self.density)));
        }
        if !(self.l0_lambda.is_finite() && self.l0_lambda >= 0.0) {
            return Err(Error::Config(format!("diff pruning's L0 weight must be finite and at least 0, not {}", self.l0_lambda)));
        }
        Ok(())
    }

    /// Whether `module`'s weight gets a δ.
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.is_empty() || self.target_modules.iter().any(|t| super::config::module_matches(module, t))
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The sampled gate `z` for noise `u` in (0, 1), and `dz / d log α`.
///
/// `dz/d log α = (ζ − γ)·s·(1 − s)/β` where the clamp is inactive, else 0.
pub fn gate(log_alpha: f32, u: f32) -> (f32, f32) {
    let s = sigmoid(((u / (1.0 - u)).ln() + log_alpha) / BETA);
    let stretched = s * (ZETA - GAMMA) + GAMMA;
    if (0.0..=1.0).contains(&stretched) {
        (stretched, (ZETA - GAMMA) * s * (1.0 - s) / BETA)
    } else {
        (stretched.clamp(0.0, 1.0), 0.0)
    }
}

/// The gate at evaluation: `min(1, max(0, σ(log α)·(ζ − γ) + γ))`.
pub fn gate_eval(log_alpha: f32) -> f32 {
    (sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
}

/// `P(z ≠ 0) = σ(log α − β·log(−γ/ζ))` and its derivative with respect to `log α`.
pub fn open_probability(log_alpha: f32) -> (f32, f32) {
    let p = sigmoid(log_alpha - BETA * (-GAMMA / ZETA).ln());
    (p, p * (1.0 - p))
}

/// The score threshold that keeps the `keep` largest of `scores` (ties may keep a few more).
pub fn top_k_threshold(scores: &[f32], keep: usize) -> f32 {
    if keep == 0 || scores.is_empty() {
        return f32::INFINITY;
    }
    if keep >= scores.len() {
        return f32::NEG_INFINITY;
    }
    let mut v = scores.to_vec();
    let (_, kth, _) = v.select_nth_unstable_by(keep - 1, |a, b| b.total_cmp(a));
    *kth
}

/// The delta tensor names of `module`'s sparse δ.
pub fn tensor_names(module: &str) -> (String, String) {
    (format!("{module}.diff_index"), format!("{module}.diff_value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_derivative_matches_finite_differences_and_clamps() {
        for (la, u) in [(0.3f32, 0.4f32), (-1.0, 0.7), (2.0, 0.2)] {
            let (z, dz) = gate(la, u);
            let h = 1e-3;
            let num = (gate(la + h, u).0 - gate(la - h, u).0) / (2.0 * h);
            if z > 0.0 && z < 1.0 {
                assert!((dz - num).abs() <= 1e-2 * num.abs().max(1e-2), "{la} {u}: {dz} vs {num}");
            }
        }
        // Far open or far closed, the clamp holds the gate and stops the gradient.
        assert_eq!(gate(20.0, 0.5), (1.0, 0.0));
        assert_eq!(gate(-20.0, 0.5), (0.0, 0.0));
        assert_eq!(gate_eval(20.0), 1.0);
        assert_eq!(gate_eval(-20.0), 0.0);
        let (p, dp) = open_probability(0.0);
        let num = (open_probability(1e-3).0 - open_probability(-1e-3).0) / 2e-3;
        assert!(p > 0.5 && (dp - num).abs() < 1e-3);
    }

    #[test]
    fn threshold_keeps_the_k_largest() {
        let s = [0.1, 5.0, 0.3, 2.0, 0.0];
        assert_eq!(top_k_threshold(&s, 2), 2.0);
        assert_eq!(s.iter().filter(|&&x| x >= top_k_threshold(&s, 3)).count(), 3);
        assert_eq!(top_k_threshold(&s, 0), f32::INFINITY);
        assert!(DiffPruningConfig { density: 0.0, ..Default::default() }.validate().is_err());
        assert!(DiffPruningConfig { l0_lambda: f32::NAN, ..Default::default() }.validate().is_err());
    }
}
