//! (IA)3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
//! than In-Context Learning"): learned vectors that rescale the keys, the values and the FFN's
//! intermediate activation, each initialized to 1 so the first forward equals the base.
//!
//! Keys and values are scaled at their projections' outputs (`<module>.ia3_out`, `[n]`); the
//! FFN's intermediate activation is scaled where it enters the down projection
//! (`<module>.ia3_in`, `[k]`), as PEFT does for its `feedforward_modules`. Both merge into the
//! weights: an output scale multiplies W's columns and the bias, an input scale W's rows.

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ops::linear::{Linear, LinearWeight};
use crate::ops::linear_patch::LinearPatch;

/// Which `Linear`s (IA)3 scales, by PEFT's module-suffix rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ia3Config {
    /// Modules whose output is scaled (keys and values).
    pub output_modules: Vec<String>,
    /// Modules whose input is scaled (the FFN's down projection: its input is the
    /// intermediate activation).
    pub input_modules: Vec<String>,
}

impl Default for Ia3Config {
    /// BERT's names; a Llama uses `k_proj`, `v_proj` and `down_proj`.
    fn default() -> Self {
        Ia3Config { output_modules: vec!["key".into(), "value".into()], input_modules: vec!["output.dense".into()] }
    }
}

impl Ia3Config {
    /// The defaults for a Llama-family model.
    pub fn llama() -> Self {
        Ia3Config { output_modules: vec!["k_proj".into(), "v_proj".into()], input_modules: vec!["down_proj".into()] }
    }

    /// Checks that something is targeted and that no name is empty.
    pub fn validate(&self) -> Result<()> {
        if self.output_modules.is_empty() && self.input_modules.is_empty() {
            return Err(Error::Config("(IA)3 needs at least one target module".into()));
        }
        if let Some(t) = self.output_modules.iter().chain(&self.input_modules).find(|t| t.is_empty() || t.contains('\0')) {
            return Err(Error::Config(format!("(IA)3 target module {t:?} is empty or contains NUL")));
        }
        Ok(())
    }

    /// Whether `module`'s output is scaled.
    pub fn scales_output(&self, module: &str) -> bool {
        self.output_modules.iter().any(|t| super::config::module_matches(module, t))
    }

    /// Whether `module`'s input is scaled. BERT's attention output projection
    /// (`attention.output.dense`) also ends in the FFN's `output.dense`, and is left out.
    pub fn scales_input(&self, module: &str) -> bool {
        self.input_modules.iter().any(|t| super::config::module_matches(module, t) && !module.ends_with(&format!("attention.{t}")))
    }
}

/// Folds a `Linear`'s (IA)3 scales into its f32 weight and bias:
/// `((x ⊙ s)·W + b) ⊙ t = x·W' + b'` with `W'[p][j] = s[p]·W[p][j]·t[j]` and `b' = b ⊙ t`.
/// An int8 weight would have to be requantized, and an adapter cannot fold: both are
/// [`Error::Config`].
pub fn fold(l: &mut Linear, p: &LinearPatch) -> Result<()> {
    if p.adapter.is_some() {
        return Err(Error::Config(format!("`{}` has an adapter, which has no merge", l.module)));
    }
    let LinearWeight::F32(w) = &l.weight else {
        return Err(Error::Config(format!("(IA)3 merges into f32 weights; `{}` is int8", l.module)));
    };
    let (k, n) = (l.k, l.n);
    let mut w = w.as_ref().clone();
    for (pi, row) in w.chunks_exact_mut(n).enumerate().take(k) {
        let s = p.scale_in.as_ref().map_or(1.0, |s| s[pi]);
        for (j, v) in row.iter_mut().enumerate() {
            *v *= s * p.scale_out.as_ref().map_or(1.0, |t| t[j]);
        }
    }
    l.weight = LinearWeight::F32(Arc::new(w));
    if let (Some(b), Some(t)) = (&l.bias, &p.scale_out) {
        l.bias = Some(Arc::new(b.iter().zip(t).map(|(b, t)| b * t).collect()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffn_down_projection_matches_but_attention_output_does_not() {
        let c = Ia3Config::default();
        assert!(c.scales_input("encoder.layer.3.output.dense"));
        assert!(!c.scales_input("encoder.layer.3.attention.output.dense"));
        assert!(c.scales_output("encoder.layer.3.attention.self.key"));
        assert!(!c.scales_output("encoder.layer.3.attention.self.query"));
        let l = Ia3Config::llama();
        assert!(l.scales_input("model.layers.0.mlp.down_proj"));
        assert!(l.scales_output("model.layers.0.self_attn.v_proj"));
        assert!(Ia3Config { output_modules: vec![], input_modules: vec![] }.validate().is_err());
    }
}
