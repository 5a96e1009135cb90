//! Parameter-efficient fine-tuning: which parameters a user's training touches.
//!
//! For now this module holds only the methods' configurations ([`config`]); each method's
//! graph patch will live in its own file beside it.

pub mod config;

pub use config::{BitFitConfig, BitFitVariant, LoraConfig, PeftMethod, Pooling, TaskHead};
