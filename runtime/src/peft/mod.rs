//! Parameter-efficient fine-tuning: which parameters a user's training touches.
//!
//! [`config`] holds the methods' configurations; [`apply`] patches a base's graph with a
//! user's delta (LoRA side paths, bias deltas) for a session; [`merge`] folds a delta into the
//! base's weights (and out again) and writes the merged model as ONNX.

pub mod apply;
pub mod config;
pub mod merge;

pub use config::{BitFitConfig, BitFitVariant, LoraConfig, PeftMethod, Pooling, TaskHead};
