//! Parameter-efficient fine-tuning: which parameters a user's training touches.
//!
//! [`config`] holds the method enum and the LoRA and BitFit configurations, and one file per
//! other method its own ([`top_layers`], [`ia3`], [`adapter`], [`prefix`], [`diff_pruning`], [`prompt`], [`madx`]); [`apply`] patches a base's graph with a
//! user's delta (LoRA side paths, bias deltas) for a session; [`merge`] folds a delta into the
//! base's weights (and out again) and writes the merged model as ONNX.

pub mod adapter;
pub mod apply;
pub mod config;
pub mod diff_pruning;
pub mod ia3;
pub mod madx;
pub mod merge;
pub mod prefix;
pub mod prompt;
pub mod top_layers;

pub use adapter::{AdapterActivation, AdapterConfig, AdapterPlacement};
pub use diff_pruning::DiffPruningConfig;
pub use config::{BitFitConfig, BitFitVariant, LoraConfig, PeftMethod, Pooling, TaskHead};
pub use ia3::Ia3Config;
pub use madx::{MadxLanguageConfig, MadxTaskConfig};
pub use prefix::PrefixConfig;
pub use prompt::PromptConfig;
pub use top_layers::TopLayersConfig;
