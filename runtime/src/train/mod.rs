//! On-device training: gradients of the forward ops with respect to the trainable parameters
//! (LoRA A/B, BitFit biases, heads) and to the activations that flow through the frozen base.
//!
//! [`backward`] holds pure functions, one per forward op, each given the forward inputs (and
//! outputs where they are cheaper than recomputing) and the gradient of the loss with respect to
//! the op's output. [`tape`] chains them over the fused graph. The tasks put their loss on top:
//! [`classify`] and [`regress`] a pooled linear head ([`head`]), [`causal_lm`] next-token
//! cross-entropy through the model's own LM head. [`trainer`] runs the steps, [`guard`] keeps
//! bad steps out of the delta, and [`evaluate`] scores a delta, in training or from a saved file.
//!
//! Frozen weights (f32 or int8) never receive a gradient: only the input gradient flows through
//! them, as in candle and burn. Through an int8 weight it is the dequantized weight's gradient,
//! computed on AMX-BF16 or AVX-512 BF16 from the integers themselves where the CPU has either
//! ([`backward::linear::frozen_input_grad`]).

pub mod backward;
pub mod batch;
pub mod causal_lm;
pub mod checkpoint;
pub mod classify;
mod diff;
pub mod evaluate;
pub mod guard;
pub mod head;
pub mod mlm;
pub mod optim;
pub(crate) mod params;
pub mod prefix_mlp;
pub mod regress;
pub mod rng;
pub mod saved;
pub mod tape;
pub mod trainer;
