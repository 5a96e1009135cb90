//! Top-layer fine-tuning: the last N transformer blocks' weights are trained outright, and
//! full fine-tuning is the same with every block. Head-only training is the method with no
//! block at all ([`super::PeftMethod::HeadOnly`]).
//!
//! The trained weights are stored whole in the delta (`<module>.weight`, `[k, n]` as the
//! `Linear` stores it) and replace the base's; biases and LayerNorm γ/β of those blocks are
//! stored as additive deltas, as BitFit's are. Such a delta is as large as the blocks it
//! covers: on MiniLM a single block is about 7 MB in f32, hundreds of times a LoRA delta.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which blocks top-layer fine-tuning trains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopLayersConfig {
    /// How many of the last blocks are trained; at least 1. A number at or above the model's
    /// block count trains every block: full fine-tuning (the embeddings stay frozen).
    pub layers: u32,
}

impl Default for TopLayersConfig {
    fn default() -> Self {
        TopLayersConfig { layers: 2 }
    }
}

impl TopLayersConfig {
    /// Checks that at least one block is trained.
    pub fn validate(&self) -> Result<()> {
        if self.layers == 0 {
            return Err(Error::Config("top-layer fine-tuning needs at least 1 layer (use head-only training for none)".into()));
        }
        Ok(())
    }

    /// Whether the block with index `block` of `blocks` is trained.
    pub fn trains(&self, block: usize, blocks: usize) -> bool {
        block + (self.layers as usize) >= blocks
    }
}

/// The transformer block a module or tensor name belongs to: the number after a `layer` or
/// `layers` path component (`encoder.layer.5.attention.self.query` → 5,
/// `model.layers.11.mlp.up_proj` → 11), or `None` outside the blocks (embeddings, pooler).
///
/// ```
/// use kilotune::peft::top_layers::block_of;
/// assert_eq!(block_of("encoder.layer.5.output.LayerNorm.bias"), Some(5));
/// assert_eq!(block_of("model.layers.11.mlp.up_proj"), Some(11));
/// assert_eq!(block_of("embeddings.LayerNorm.weight"), None);
/// ```
pub fn block_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split(['.', '/']).collect();
    parts.windows(2).find(|w| w[0] == "layer" || w[0] == "layers" || w[0] == "h" || w[0] == "blocks").and_then(|w| w[1].parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_n_blocks_are_trained() {
        let c = TopLayersConfig { layers: 2 };
        assert_eq!((0..6).filter(|&b| c.trains(b, 6)).collect::<Vec<_>>(), vec![4, 5]);
        let all = TopLayersConfig { layers: 100 };
        assert!((0..6).all(|b| all.trains(b, 6)));
        assert!(TopLayersConfig { layers: 0 }.validate().is_err());
    }

    #[test]
    fn block_numbers_come_from_the_layer_component_only() {
        assert_eq!(block_of("encoder.layer.10.attention.output.dense"), Some(10));
        assert_eq!(block_of("layer_norm.layer"), None);
        assert_eq!(block_of("/encoder/layer.3/Add"), Some(3));
        assert_eq!(block_of("encoder.layer.x.dense"), None);
    }
}
