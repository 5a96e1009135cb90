//! Training settings as plain numbers (what `kt_train_config` and Java's `TrainConfig` hold),
//! validated and turned into the runtime's method, head and optimizer configurations.

use kilotune::peft::{BitFitConfig, BitFitVariant, LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::train::optim::{Decay, OptimizerConfig, OptimizerKind, Schedule};

use crate::status::Failure;

/// Everything a trainer is configured with, as the bindings pass it. Codes are the public
/// `KT_METHOD_*`, `KT_BITFIT_*`, `KT_POOLING_*`, `KT_OPTIMIZER_*` and `KT_DECAY_*` constants.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `KT_METHOD_LORA` (0) or `KT_METHOD_BITFIT` (1).
    pub method: u32,
    /// LoRA rank.
    pub lora_rank: u32,
    /// LoRA alpha.
    pub lora_alpha: f32,
    /// LoRA target modules; empty for the default (`query`, `value`).
    pub lora_targets: Vec<String>,
    /// `KT_BITFIT_ALL` (0) or `KT_BITFIT_QUERY_AND_MLP` (1).
    pub bitfit_variant: u32,
    /// Whether BitFit trains LayerNorm biases too.
    pub bitfit_layer_norm: bool,
    /// Classes of the classification head.
    pub classes: u32,
    /// `KT_POOLING_MEAN` (0) or `KT_POOLING_CLS` (1).
    pub pooling: u32,
    /// Initialization seed.
    pub seed: u64,
    /// Worker threads (0: one per core).
    pub threads: u32,
    /// `KT_OPTIMIZER_ADAMW` (0) or `KT_OPTIMIZER_SGD` (1).
    pub optimizer: u32,
    /// Base learning rate.
    pub learning_rate: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// SGD momentum (ignored by AdamW).
    pub momentum: f32,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// Steps at which a decaying rate reaches 0.
    pub total_steps: u64,
    /// `KT_DECAY_CONSTANT` (0), `KT_DECAY_LINEAR` (1) or `KT_DECAY_COSINE` (2).
    pub decay: u32,
    /// Global gradient-norm clip; 0 or less disables clipping.
    pub max_grad_norm: f32,
}

impl Default for Settings {
    /// The runtime's own defaults: LoRA r=8, α=16 on query and value; a two-class head with
    /// mean pooling; AdamW at 1e-3 with weight decay 0.01, constant rate, clipping at 1.0.
    fn default() -> Settings {
        let lora = LoraConfig::default();
        let bitfit = BitFitConfig::default();
        let opt = OptimizerConfig::default();
        Settings {
            method: 0,
            lora_rank: lora.r,
            lora_alpha: lora.alpha,
            lora_targets: Vec::new(),
            bitfit_variant: 0,
            bitfit_layer_norm: bitfit.include_layer_norm,
            classes: 2,
            pooling: 0,
            seed: 0,
            threads: 0,
            optimizer: 0,
            learning_rate: opt.lr,
            weight_decay: opt.weight_decay,
            momentum: 0.0,
            warmup_steps: 0,
            total_steps: 0,
            decay: 0,
            max_grad_norm: opt.max_grad_norm.unwrap_or(0.0),
        }
    }
}

fn code<T: Copy>(name: &str, value: u32, choices: &[T]) -> Result<T, Failure> {
    choices.get(value as usize).copied().ok_or_else(|| Failure::invalid(name, format!("{value} is not one of the {} known values", choices.len())))
}

impl Settings {
    /// The PEFT method.
    pub fn method(&self) -> Result<PeftMethod, Failure> {
        match self.method {
            0 => {
                let mut c = LoraConfig { r: self.lora_rank, alpha: self.lora_alpha, ..LoraConfig::default() };
                if !self.lora_targets.is_empty() {
                    c.target_modules = self.lora_targets.clone();
                }
                c.validate()?;
                Ok(PeftMethod::Lora(c))
            }
            1 => {
                let variant = code("bitfit_variant", self.bitfit_variant, &[BitFitVariant::All, BitFitVariant::QueryAndMlp])?;
                Ok(PeftMethod::BitFit(BitFitConfig { variant, include_layer_norm: self.bitfit_layer_norm }))
            }
            other => Err(Failure::invalid("method", format!("{other} is not a KT_METHOD_* value"))),
        }
    }

    /// The classification head.
    pub fn head(&self) -> Result<TaskHead, Failure> {
        let pooling = code("pooling", self.pooling, &[Pooling::Mean, Pooling::Cls])?;
        let head = TaskHead::Classification { classes: self.classes, pooling };
        head.validate()?;
        Ok(head)
    }

    /// The optimizer, schedule and clipping.
    pub fn optimizer(&self) -> Result<OptimizerConfig, Failure> {
        let kind = match self.optimizer {
            0 => OptimizerKind::default(),
            1 => OptimizerKind::Sgd { momentum: self.momentum },
            other => return Err(Failure::invalid("optimizer", format!("{other} is not a KT_OPTIMIZER_* value"))),
        };
        let decay = code("decay", self.decay, &[Decay::Constant, Decay::Linear, Decay::Cosine])?;
        let c = OptimizerConfig {
            kind,
            lr: self.learning_rate,
            weight_decay: self.weight_decay,
            schedule: Schedule { warmup_steps: self.warmup_steps, total_steps: self.total_steps, decay },
            // NaN compares false, so it also means "no clipping"... refuse it instead.
            max_grad_norm: if self.max_grad_norm.is_nan() {
                return Err(Failure::invalid("max_grad_norm", "NaN"));
            } else if self.max_grad_norm > 0.0 {
                Some(self.max_grad_norm)
            } else {
                None
            },
        };
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;

    #[test]
    fn defaults_are_the_runtimes() {
        let s = Settings::default();
        assert_eq!(s.method().expect("valid"), PeftMethod::Lora(LoraConfig::default()));
        assert_eq!(s.head().expect("valid"), TaskHead::Classification { classes: 2, pooling: Pooling::Mean });
        assert_eq!(s.optimizer().expect("valid"), OptimizerConfig::default());
    }

    #[test]
    fn unknown_codes_and_bad_values_are_refused_with_their_kind() {
        let bad = |s: Settings| s.method().and(s.head()).and(s.optimizer()).err().map(|e| e.status);
        let invalid = Some(Status::InvalidArgument);
        let config = Some(Status::Config);
        assert_eq!(bad(Settings { method: 7, ..Settings::default() }), invalid);
        assert_eq!(bad(Settings { method: 1, bitfit_variant: 2, ..Settings::default() }), invalid);
        assert_eq!(bad(Settings { pooling: 2, ..Settings::default() }), invalid);
        assert_eq!(bad(Settings { decay: 3, ..Settings::default() }), invalid);
        assert_eq!(bad(Settings { max_grad_norm: f32::NAN, ..Settings::default() }), invalid);
        assert_eq!(bad(Settings { lora_rank: 0, ..Settings::default() }), config);
        assert_eq!(bad(Settings { classes: 1, ..Settings::default() }), config);
        assert_eq!(bad(Settings { learning_rate: -1.0, ..Settings::default() }), config);
    }
}
