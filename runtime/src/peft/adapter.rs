//! Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): `h ← h + f(h·W_down)·W_up`
//! inserted after a sublayer's output projection, before the residual and the norm.
//!
//! Houlsby places one after the attention sublayer and one after the FFN; Pfeiffer only after
//! the FFN. `W_up` and both biases start at zero and `W_down` Kaiming-uniform, so a fresh
//! adapter is exactly the identity and training moves it away from it (the near-identity
//! initialization the papers ask for). Tensors: `<module>.adapter.down` `[m, n]`,
//! `.adapter.down_bias` `[m]`, `.adapter.up` `[n, m]`, `.adapter.up_bias` `[n]`, where
//! `<module>` is the output projection the adapter follows. An adapter is an extra layer: it
//! has no merge.

use serde::{Deserialize, Serialize};

pub use crate::ops::linear_patch::AdapterActivation;
use crate::error::{Error, Result};

/// Where the adapters go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdapterPlacement {
    /// After the attention output projection and after the FFN (Houlsby et al.).
    #[default]
    Houlsby,
    /// After the FFN only (Pfeiffer et al.).
    Pfeiffer,
}

/// A bottleneck adapter configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Houlsby or Pfeiffer placement.
    pub placement: AdapterPlacement,
    /// Bottleneck size m; at least 1.
    pub bottleneck: u32,
    /// The nonlinearity f.
    pub activation: AdapterActivation,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig { placement: AdapterPlacement::Houlsby, bottleneck: 64, activation: AdapterActivation::Relu }
    }
}

impl AdapterConfig {
    /// Checks the bottleneck size.
    pub fn validate(&self) -> Result<()> {
        if self.bottleneck == 0 {
            return Err(Error::Config("an adapter's bottleneck size m must be at least 1".into()));
        }
        Ok(())
    }

    /// Whether an adapter follows `module`: the FFN output projection (BERT's
    /// `<block>.output.dense`, Llama's `down_proj`) always, the attention output projection
    /// (`attention.output.dense`, `o_proj`) for Houlsby.
    pub fn follows(&self, module: &str) -> bool {
        let attention = module.ends_with("attention.output.dense") || module.ends_with("o_proj");
        let ffn = (module.ends_with("output.dense") && !attention) || module.ends_with("down_proj");
        ffn || (attention && self.placement == AdapterPlacement::Houlsby)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn houlsby_adds_the_attention_adapter_pfeiffer_does_not() {
        let h = AdapterConfig::default();
        let p = AdapterConfig { placement: AdapterPlacement::Pfeiffer, ..h.clone() };
        for (m, hh, pp) in [
            ("encoder.layer.0.attention.output.dense", true, false),
            ("encoder.layer.0.output.dense", true, true),
            ("encoder.layer.0.intermediate.dense", false, false),
            ("model.layers.1.self_attn.o_proj", true, false),
            ("model.layers.1.mlp.down_proj", true, true),
        ] {
            assert_eq!((h.follows(m), p.follows(m)), (hh, pp), "{m}");
        }
        assert!(AdapterConfig { bottleneck: 0, ..h }.validate().is_err());
    }
}
