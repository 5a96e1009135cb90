//! On-device training: gradients of the forward ops with respect to the trainable parameters
//! (LoRA A/B, BitFit biases, heads) and to the activations that flow through the frozen base.
//!
//! [`backward`] holds pure functions, one per forward op, each given the forward inputs (and
//! outputs where they are cheaper than recomputing) and the gradient of the loss with respect to
//! the op's output. [`tape`] chains them over the fused graph; [`classify`] puts a pooled
//! classification head and its loss on top.
//!
//! Frozen weights (f32 or dequantized int8) never receive a gradient: only the input gradient
//! flows through them, as in candle and burn.

pub mod backward;
pub mod classify;
pub mod optim;
pub mod rng;
pub mod tape;
pub mod trainer;
