//! Configurations of the PEFT methods and of the task head a delta may carry.
//!
//! These types are written into every delta file (`src/delta/SPEC.md`): the order of their
//! fields and of their enum variants is part of that format. Reordering fields or variants,
//! adding a field, or adding a variant changes the bytes and needs a new delta format
//! version.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use super::adapter::AdapterConfig;
pub use super::diff_pruning::DiffPruningConfig;
pub use super::ia3::Ia3Config;
pub use super::prefix::PrefixConfig;
pub use super::prompt::PromptConfig;
pub use super::madx::{MadxLanguageConfig, MadxTaskConfig};
pub use super::top_layers::TopLayersConfig;

fn bad(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// PEFT's `target_modules` rule: `module` matches `target` if it equals it or ends with
/// `"." + target`, so `query` matches `encoder.layer.0.attention.self.query` but not
/// `encoder.layer.0.attention.self.key_query`.
pub(crate) fn module_matches(module: &str, target: &str) -> bool {
    module.strip_suffix(target).is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

/// LoRA: a trainable low-rank update `(alpha / r) · B·A` beside each targeted `Linear`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// The rank of the update (A is r×k, B is d×r); at least 1.
    pub r: u32,
    /// The scaling numerator: the update is multiplied by `alpha / r`. Positive and finite.
    pub alpha: f32,
    /// Dropout probability on the LoRA path's input during training, in `[0, 1)`.
    pub dropout: f32,
    /// The `Linear` modules to adapt, matched by PEFT's rule (see [`LoraConfig::matches`]).
    /// Literal names, not regular expressions.
    pub target_modules: Vec<String>,
    /// Per-module rank overrides, PEFT's `rank_pattern`: `(module suffix, rank)`. A module takes
    /// the rank of the first entry that matches it by the same rule as `target_modules`, else
    /// [`LoraConfig::r`].
    pub rank_pattern: Vec<(String, u32)>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec!["query".to_owned(), "value".to_owned()],
            rank_pattern: Vec::new(),
        }
    }
}

impl LoraConfig {
    /// The factor applied to `B·A` for a module of rank `r`: `alpha / r`.
    ///
    /// ```
    /// use kilotune::peft::LoraConfig;
    /// assert_eq!(LoraConfig::default().scale(8), 2.0);
    /// ```
    pub fn scale(&self, r: u32) -> f32 {
        self.alpha / r as f32
    }

    /// Whether `module` (a PyTorch module path such as `encoder.layer.0.attention.self.query`)
    /// is one of the targets: it equals a target or ends with `"." + target`.
    ///
    /// ```
    /// use kilotune::peft::LoraConfig;
    /// let c = LoraConfig::default(); // targets `query` and `value`
    /// assert!(c.matches("encoder.layer.0.attention.self.query"));
    /// assert!(!c.matches("encoder.layer.0.attention.self.key"));
    /// ```
    pub fn matches(&self, module: &str) -> bool {
        self.target_modules.iter().any(|t| module_matches(module, t))
    }

    /// The rank `module` gets: its first matching `rank_pattern` entry's, else `r`.
    pub fn rank_for(&self, module: &str) -> u32 {
        self.rank_pattern.iter().find(|(key, _)| module_matches(module, key)).map_or(self.r, |&(_, r)| r)
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(bad("LoRA rank r must be at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(bad(format!("LoRA alpha must be positive and finite, not {}", self.alpha)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(bad(format!("LoRA dropout must be in [0, 1), not {}", self.dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(bad("LoRA needs at least one target module"));
        }
        if let Some(t) = self.target_modules.iter().find(|t| t.is_empty() || t.contains('\0')) {
            return Err(bad(format!("LoRA target module {t:?} is empty or contains NUL")));
        }
        for (key, r) in &self.rank_pattern {
            if key.is_empty() || key.contains('\0') {
                return Err(bad(format!("LoRA rank_pattern key {key:?} is empty or contains NUL")));
            }
            if *r == 0 {
                return Err(bad(format!("LoRA rank_pattern gives `{key}` rank 0; ranks start at 1")));
            }
        }
        Ok(())
    }
}

/// Which biases BitFit trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BitFitVariant {
    /// Every bias of every `Linear`.
    #[default]
    All,
    /// The seed paper's reduced variant: only the attention query bias and the bias of the
    /// MLP's middle (intermediate, up-projection) layer.
    QueryAndMlp,
}

/// BitFit: train bias terms only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitFitConfig {
    /// Which `Linear` biases are trained.
    pub variant: BitFitVariant,
    /// Whether LayerNorm biases (β) are trained too; full BitFit trains them.
    pub include_layer_norm: bool,
}

impl Default for BitFitConfig {
    fn default() -> Self {
        BitFitConfig { variant: BitFitVariant::All, include_layer_norm: true }
    }
}

impl BitFitConfig {
    /// Checks the configuration; every combination of fields is currently valid.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// How a classification head reduces a sequence to one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pooling {
    /// The mean of the non-padding tokens' hidden states.
    Mean,
    /// The first token's hidden state (BERT's `[CLS]`).
    #[default]
    Cls,
}

/// The trainable head a delta adds on top of the base, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskHead {
    /// A linear classifier over a pooled hidden state.
    Classification {
        /// The number of classes, at least 2.
        classes: u32,
        /// How the sequence is pooled.
        pooling: Pooling,
    },
    /// Next-token prediction with the base's own LM head.
    CausalLm,
    /// A linear regressor over the pooled hidden state.
    Regression {
        /// The number of outputs, at least 1.
        outputs: u32,
    },
    /// Masked-language modelling through the tied word embeddings (MAD-X language adapters):
    /// the delta's `mlm.bias` is the output bias.
    MaskedLm,
}

impl Default for TaskHead {
    fn default() -> Self {
        TaskHead::Classification { classes: 2, pooling: Pooling::Cls }
    }
}

impl TaskHead {
    /// Checks the head's sizes.
    pub fn validate(&self) -> Result<()> {
        match *self {
            TaskHead::Classification { classes, .. } if classes < 2 => {
                Err(bad(format!("a classification head needs at least 2 classes, not {classes}")))
            }
            TaskHead::Regression { outputs: 0 } => Err(bad("a regression head needs at least 1 output")),
            _ => Ok(()),
        }
    }
}

/// A PEFT method and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PeftMethod {
    /// Low-rank adaptation.
    Lora(LoraConfig),
    /// Bias-only fine-tuning.
    BitFit(BitFitConfig),
    /// Only the task head is trained; the base is untouched.
    HeadOnly,
    /// The last N blocks' weights (all of them: full fine-tuning).
    TopLayers(TopLayersConfig),
    /// (IA)3 scaling vectors.
    Ia3(Ia3Config),
    /// Bottleneck adapters (Houlsby or Pfeiffer).
    Adapter(AdapterConfig),
    /// Prefix tuning.
    Prefix(PrefixConfig),
    /// Diff pruning: a sparse additive δ on the weights.
    DiffPruning(DiffPruningConfig),
    /// Prompt tuning: trainable embeddings in front of the input.
    Prompt(PromptConfig),
    /// MAD-X language (or domain) adapter and invertible adapter, trained by masked-language
    /// modelling.
    MadxLanguage(MadxLanguageConfig),
    /// MAD-X task adapter, stacked on a frozen language adapter.
    MadxTask(MadxTaskConfig),
}

impl Default for PeftMethod {
    fn default() -> Self {
        PeftMethod::Lora(LoraConfig::default())
    }
}

impl PeftMethod {
    /// Checks the method's configuration.
    pub fn validate(&self) -> Result<()> {
        match self {
            PeftMethod::Lora(c) => c.validate(),
            PeftMethod::BitFit(c) => c.validate(),
            PeftMethod::HeadOnly => Ok(()),
            PeftMethod::TopLayers(c) => c.validate(),
            PeftMethod::Ia3(c) => c.validate(),
            PeftMethod::Adapter(c) => c.validate(),
            PeftMethod::Prefix(c) => c.validate(),
            PeftMethod::DiffPruning(c) => c.validate(),
            PeftMethod::Prompt(c) => c.validate(),
            PeftMethod::MadxLanguage(c) => c.validate(),
            PeftMethod::MadxTask(c) => c.validate(),
        }
    }

    /// Whether delta format version 1 can hold this method (LoRA and BitFit); the others
    /// arrived with version 2.
    pub fn in_format_v1(&self) -> bool {
        matches!(self, PeftMethod::Lora(_) | PeftMethod::BitFit(_))
    }

    /// A short human-readable name with the main settings.
    pub fn describe(&self) -> String {
        match self {
            PeftMethod::Lora(c) => format!("LoRA r={} alpha={}", c.r, c.alpha),
            PeftMethod::BitFit(c) => format!("BitFit {:?}{}", c.variant, if c.include_layer_norm { " + LayerNorm" } else { "" }),
            PeftMethod::HeadOnly => "head only".into(),
            PeftMethod::TopLayers(c) if c.layers == u32::MAX => "full fine-tuning (every block)".into(),
            PeftMethod::TopLayers(c) => format!("top {} layers", c.layers),
            PeftMethod::Ia3(_) => "(IA)3".into(),
            PeftMethod::Adapter(c) => format!("{:?} adapter m={} {:?}", c.placement, c.bottleneck, c.activation),
            PeftMethod::Prefix(c) => format!("prefix tuning len={} (MLP {})", c.len, c.mlp_hidden),
            PeftMethod::DiffPruning(c) => format!("diff pruning density={}", c.density),
            PeftMethod::Prompt(c) => format!("prompt tuning len={}", c.len),
            PeftMethod::MadxLanguage(c) => format!("MAD-X language adapter m={} invertible m={} {:?}", c.bottleneck, c.invertible_bottleneck, c.activation),
            PeftMethod::MadxTask(c) => format!("MAD-X task adapter m={} on language adapter m={}", c.bottleneck, c.language.bottleneck),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(r: Result<()>) -> String {
        match r {
            Err(Error::Config(msg)) => msg,
            other => panic!("expected Error::Config, got {other:?}"),
        }
    }

    #[test]
    fn lora_defaults_match_peft() {
        let c = LoraConfig::default();
        assert_eq!((c.r, c.alpha, c.dropout), (8, 16.0, 0.0));
        assert_eq!(c.target_modules, ["query", "value"]);
        assert!(c.rank_pattern.is_empty());
        c.validate().unwrap();
        assert_eq!(c.scale(8), 2.0);
        assert_eq!(c.scale(4), 4.0);
    }

    #[test]
    fn lora_target_rule_is_exact_or_dot_suffix() {
        let c = LoraConfig { target_modules: vec!["query".into(), "self.value".into()], ..Default::default() };
        assert!(c.matches("query"));
        assert!(c.matches("encoder.layer.0.attention.self.query"));
        assert!(c.matches("encoder.layer.11.attention.self.value"));
        // A suffix that is not a whole path component does not match.
        assert!(!c.matches("encoder.layer.0.attention.self.key_query"));
        assert!(!c.matches("encoder.layer.0.attention.output.value"));
        assert!(!c.matches("value"));
        assert!(!c.matches("query.dense"));
        assert!(!c.matches(""));
    }

    #[test]
    fn rank_pattern_overrides_first_match() {
        let c = LoraConfig {
            r: 8,
            rank_pattern: vec![("layer.0.attention.self.query".into(), 2), ("query".into(), 4)],
            ..Default::default()
        };
        assert_eq!(c.rank_for("encoder.layer.0.attention.self.query"), 2);
        assert_eq!(c.rank_for("encoder.layer.1.attention.self.query"), 4);
        assert_eq!(c.rank_for("encoder.layer.0.attention.self.value"), 8);
        // `layer.10...` must not match the `layer.0...` key through a partial component.
        assert_eq!(c.rank_for("encoder.layer.10.attention.self.query"), 4);
    }

    #[test]
    fn lora_validation_rejects_each_bad_field() {
        let ok = LoraConfig::default();
        let cases = [
            (LoraConfig { r: 0, ..ok.clone() }, "rank"),
            (LoraConfig { alpha: 0.0, ..ok.clone() }, "alpha"),
            (LoraConfig { alpha: f32::NAN, ..ok.clone() }, "alpha"),
            (LoraConfig { alpha: f32::INFINITY, ..ok.clone() }, "alpha"),
            (LoraConfig { dropout: 1.0, ..ok.clone() }, "dropout"),
            (LoraConfig { dropout: -0.1, ..ok.clone() }, "dropout"),
            (LoraConfig { dropout: f32::NAN, ..ok.clone() }, "dropout"),
            (LoraConfig { target_modules: vec![], ..ok.clone() }, "at least one target"),
            (LoraConfig { target_modules: vec![String::new()], ..ok.clone() }, "target module"),
            (LoraConfig { rank_pattern: vec![("query".into(), 0)], ..ok.clone() }, "rank 0"),
            (LoraConfig { rank_pattern: vec![(String::new(), 4)], ..ok.clone() }, "key"),
        ];
        for (c, needle) in cases {
            let msg = config_error(c.validate());
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
    }

    #[test]
    fn heads_and_methods_validate() {
        TaskHead::default().validate().unwrap();
        TaskHead::CausalLm.validate().unwrap();
        TaskHead::Regression { outputs: 1 }.validate().unwrap();
        config_error(TaskHead::Classification { classes: 1, pooling: Pooling::Mean }.validate());
        config_error(TaskHead::Regression { outputs: 0 }.validate());
        PeftMethod::default().validate().unwrap();
        PeftMethod::BitFit(BitFitConfig::default()).validate().unwrap();
        config_error(PeftMethod::Lora(LoraConfig { r: 0, ..Default::default() }).validate());
        let b = BitFitConfig::default();
        assert_eq!((b.variant, b.include_layer_norm), (BitFitVariant::All, true));
    }
}
