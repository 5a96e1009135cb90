//! Placeholder reference kernels (replaced by the optimized kernel set).
pub mod attention;
pub mod gemm_f32;
pub mod gemm_i8;
pub mod quantize;
