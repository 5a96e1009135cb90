//! f32 GEMM (reference).
pub fn matmul_f32(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) {
    for i in 0..m { for j in 0..n { let mut s = if accumulate { c[i*n+j] } else { 0.0 }; for p in 0..k { s += a[i*k+p]*b[p*n+j]; } c[i*n+j] = s; } }
}
pub fn matmul_f32_bt(a: &[f32], bt: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) {
    for i in 0..m { for j in 0..n { let mut s = if accumulate { c[i*n+j] } else { 0.0 }; for p in 0..k { s += a[i*k+p]*bt[j*k+p]; } c[i*n+j] = s; } }
}
