//! CPU compute kernels: f32 GEMM, int8 GEMM, activation/weight quantization
//! and fused attention.
//!
//! Everything here works on plain row-major slices with shapes passed
//! explicitly. The engine validates shapes before calling, so the public
//! kernels only `assert!` their slice-length contracts up front.
//!
//! Threading: every kernel runs on the *current* rayon pool (the engine
//! installs one sized by the user) and stays on the calling thread when a
//! problem is too small to be worth a fork/join.
//!
//! SIMD: x86-64 and aarch64 paths are chosen at run time from the CPU's
//! features; each has a portable fallback, and every SIMD path is tested
//! against a plain reference on the machine that runs the tests.
//!
//! - [`gemm_f32`]: `matmul_f32{,_bt,_at}` on top of `faer`.
//! - [`gemm_i8`]: `PackedI8` weights and `gemm_u8i8`, bit-exact with ONNX
//!   Runtime's `DynamicQuantizeLinear → MatMulInteger → Cast → Mul → Add`.
//! - [`quantize`]: `quantize_dynamic_u8` (ONNX `DynamicQuantizeLinear`) and
//!   `quantize_weight_per_channel`.
//! - [`attention`]: `attention_f32`, softmax(scale·QKᵀ + mask)·V with GQA, reading Q, K
//!   and V through strides.
//! - [`softmax`], [`activation`] and [`norm`]: softmax rows, exact GELU, LayerNorm (plain
//!   and residual) and RMSNorm.
//!
//! Numerics: where ONNX Runtime is the outside truth (int8 models, which re-quantize every
//! activation), the float kernels use its operation order and polynomials, so a one-ulp
//! difference never flips a quantized value. [`simd`] compiles such plain-Rust kernels once
//! per instruction set; every version computes the same bits.

pub mod activation;
pub mod attention;
pub mod gemm_f32;
pub mod gemm_i8;
pub mod norm;
pub mod quantize;
pub(crate) mod simd;
pub mod softmax;

mod disjoint;

#[cfg(test)]
pub(crate) mod testutil;
