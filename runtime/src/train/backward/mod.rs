//! Backward kernels: for each forward op `y = f(x, θ)`, given `dy = ∂L/∂y`, the vector-Jacobian
//! products `dx = (∂y/∂x)ᵀ·dy` (and `dθ` for trainable θ).
//!
//! Conventions, shared by every function here:
//! - Plain row-major `f32` slices with sizes passed explicitly, like [`crate::kernels`]; the
//!   caller has validated shapes, so the functions only `assert!` their slice-length contracts
//!   (a mismatch is a bug in the caller, not a runtime condition).
//! - Sums whose length grows with the problem (row statistics, reductions over rows) are
//!   accumulated in f64; products of matrices use [`crate::kernels::gemm_f32`].
//! - Every function's doc comment states the derivative it computes, and its tests check it
//!   against central finite differences of the forward op (the crate's own forward kernel
//!   where one exists).

pub mod activation;
pub mod attention;
pub mod invertible;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod patch;
pub mod rotary;

#[cfg(test)]
pub(crate) mod gradcheck;

pub use activation::{gelu_backward, silu_backward, softmax_backward};
pub use attention::{attention_backward, AttentionGrads};
pub use linear::{linear_backward, linear_bias_grad, lora_backward, lora_forward, LoraGrads, LoraShape};
pub use loss::{cls_pool, cls_pool_backward, cross_entropy, mean_pool, mean_pool_backward, mse, next_token_cross_entropy, next_token_nll};
pub use norm::{add_layer_norm_backward, layer_norm_backward, rms_norm_backward, LayerNormGrads};
pub use rotary::{rotary_backward, rotary_input_grad};
