//! Prefix tuning (Li & Liang 2021): trainable keys and values put in front of every
//! attention layer's own (see [`crate::ops::attention_prefix`]), with the attention mask
//! extended to match.
//!
//! Training goes through the paper's reparameterization `P = MLP(P')`: a small matrix `P'`
//! (`[len, hidden]`) and a two-layer tanh MLP produce every layer's keys and values at once,
//! which trains more stably than `P` directly. The MLP is dropped when the delta is made: the
//! delta stores only `P`, as `prefix.<layer>.key` and `prefix.<layer>.value`
//! (`[len, kv_heads · head_dim]`, layers counted in graph order).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A prefix-tuning configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixConfig {
    /// Virtual tokens per layer; at least 1.
    pub len: u32,
    /// The reparameterization MLP's hidden width (Li & Liang use 512 for the larger models);
    /// 0 trains `P` directly, without the MLP.
    pub mlp_hidden: u32,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        PrefixConfig { len: 10, mlp_hidden: 128 }
    }
}

impl PrefixConfig {
    /// Checks the prefix length.
    pub fn validate(&self) -> Result<()> {
        if self.len == 0 {
            return Err(Error::Config("prefix tuning needs at least 1 virtual token".into()));
        }
        Ok(())
    }
}

/// The delta tensor names of attention layer `layer`'s prefix keys and values.
pub fn tensor_names(layer: usize) -> (String, String) {
    (format!("prefix.{layer}.key"), format!("prefix.{layer}.value"))
}
