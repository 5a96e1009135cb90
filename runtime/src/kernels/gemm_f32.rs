//! Single-precision GEMM on row-major slices, backed by `faer`.
//!
//! faer's packed micro-kernels already run close to the FMA peak on every
//! target we care about, so these wrappers only translate the ONNX layouts
//! (row-major, optionally transposed operands) into faer views and decide
//! whether a problem is big enough to be worth the rayon fork/join.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// Below this many multiply-adds a GEMM finishes in a few microseconds on one
/// core, which is the same order as waking rayon workers; stay sequential.
const PAR_THRESHOLD_MACS: usize = 1 << 18;

/// Picks faer's parallelism for an `m×k·k×n` product from the *current* rayon
/// pool, so the engine controls the thread count by installing its own pool.
pub(crate) fn par_for(m: usize, k: usize, n: usize) -> Par {
    let threads = rayon::current_num_threads();
    if threads <= 1 || m.saturating_mul(k).saturating_mul(n) < PAR_THRESHOLD_MACS {
        Par::Seq
    } else {
        Par::rayon(threads)
    }
}

/// Rows (or columns) of `c` are split in multiples of this, so every part keeps
/// whole micro-kernel tiles.
const SPLIT_ALIGN: usize = 16;

/// `c = a·b (+ c)` on the current rayon pool. Large products are cut into one
/// block of rows of `c` per thread (of columns, when `c` is wider than tall),
/// each block runs faer's sequential kernel, and the threads meet once, at the
/// end. faer's own parallel GEMM synchronizes its threads at every packed
/// panel; on the engine's shapes (1024 × 384 × 384 and × 1536) it reached about
/// 200 GFLOP/s on two cores against 330 for this split (`print_gflops`).
/// Every element is computed by one sequential call, so a given thread count
/// always gives the same bits.
fn gemm(c: MatMut<'_, f32>, acc: Accum, a: MatRef<'_, f32>, b: MatRef<'_, f32>) {
    let (m, k, n) = (c.nrows(), a.ncols(), c.ncols());
    match par_for(m, k, n) {
        Par::Seq => matmul(c, acc, a, b, 1.0f32, Par::Seq),
        _ => split_gemm(c, acc, a, b, rayon::current_num_threads()),
    }
}

fn split_gemm(c: MatMut<'_, f32>, acc: Accum, a: MatRef<'_, f32>, b: MatRef<'_, f32>, threads: usize) {
    let (m, n) = (c.nrows(), c.ncols());
    let left = threads / 2;
    let cut = |len: usize| (len * left / threads).next_multiple_of(SPLIT_ALIGN).min(len);
    if threads <= 1 || m.max(n) < 2 * SPLIT_ALIGN {
        return matmul(c, acc, a, b, 1.0f32, Par::Seq);
    }
    if m >= n {
        let at = cut(m);
        let (c0, c1) = c.split_at_row_mut(at);
        let (a0, a1) = a.split_at_row(at);
        rayon::join(|| split_gemm(c0, acc, a0, b, left), || split_gemm(c1, acc, a1, b, threads - left));
    } else {
        let at = cut(n);
        let (c0, c1) = c.split_at_col_mut(at);
        let (b0, b1) = b.split_at_col(at);
        rayon::join(|| split_gemm(c0, acc, a, b0, left), || split_gemm(c1, acc, a, b1, threads - left));
    }
}

/// Handles the degenerate shapes faer either rejects or that need no product:
/// returns `true` when the caller must not run the GEMM.
fn handle_empty(c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) -> bool {
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        // An empty sum is zero: c = 0 (+ c).
        if !accumulate {
            c.fill(0.0);
        }
        return true;
    }
    false
}

fn accum(accumulate: bool) -> Accum {
    if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    }
}

/// `c[m×n] = a[m×k] · b[k×n]` (`+ c` when `accumulate`), all row-major and
/// contiguous (ONNX MatMul layout: `b` is the weight as stored, K×N).
///
/// Runs on the current rayon pool (sized by the caller) when the problem is
/// large enough. Panics if a slice length does not match its shape.
pub fn matmul_f32(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) {
    assert_eq!(a.len(), m * k, "a must be m×k");
    assert_eq!(b.len(), k * n, "b must be k×n");
    assert_eq!(c.len(), m * n, "c must be m×n");
    if handle_empty(c, m, k, n, accumulate) {
        return;
    }
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, k, n);
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    gemm(c, accum(accumulate), a, b);
}

/// Same as [`matmul_f32`] with `b` given transposed: `bt[n×k]` (Q·Kᵀ, and the
/// input gradient `dY·Wᵀ` of backward passes).
pub fn matmul_f32_bt(a: &[f32], bt: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) {
    assert_eq!(a.len(), m * k, "a must be m×k");
    assert_eq!(bt.len(), n * k, "bt must be n×k");
    assert_eq!(c.len(), m * n, "c must be m×n");
    if handle_empty(c, m, k, n, accumulate) {
        return;
    }
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(bt, n, k).transpose();
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    gemm(c, accum(accumulate), a, b);
}

/// Same as [`matmul_f32`] with `a` given transposed: `at[k×m]` (weight
/// gradients `Xᵀ·dY`).
pub fn matmul_f32_at(at: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) {
    assert_eq!(at.len(), k * m, "at must be k×m");
    assert_eq!(b.len(), k * n, "b must be k×n");
    assert_eq!(c.len(), m * n, "c must be m×n");
    if handle_empty(c, m, k, n, accumulate) {
        return;
    }
    let a = MatRef::from_row_major_slice(at, k, m).transpose();
    let b = MatRef::from_row_major_slice(b, k, n);
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    gemm(c, accum(accumulate), a, b);
}

/// Plain triple-loop reference for tests: `c = a·b (+ c)`, accumulating in
/// f64 so it is (much) more accurate than any blocked f32 kernel.
pub fn matmul_f32_ref(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, accumulate: bool) {
    assert_eq!(a.len(), m * k, "a must be m×k");
    assert_eq!(b.len(), k * n, "b must be k×n");
    assert_eq!(c.len(), m * n, "c must be m×n");
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += f64::from(a[i * k + p]) * f64::from(b[p * n + j]);
            }
            let prev = if accumulate { f64::from(c[i * n + j]) } else { 0.0 };
            c[i * n + j] = (prev + s) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{bench_secs, Rng};

    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; x.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = x[r * cols + c];
            }
        }
        t
    }

    /// Tolerance: f32 blocked summation vs an f64 reference differs by about
    /// `k · eps · Σ|a·b|`; we bound it with the absolute-product sum.
    fn check(got: &[f32], want: &[f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
        for i in 0..m {
            for j in 0..n {
                let mut mag = 0.0f64;
                for p in 0..k {
                    mag += f64::from(a[i * k + p].abs()) * f64::from(b[p * n + j].abs());
                }
                let tol = 1e-6 * (k as f64 + 1.0) * (mag + 1.0);
                let (g, w) = (f64::from(got[i * n + j]), f64::from(want[i * n + j]));
                assert!((g - w).abs() <= tol, "({i},{j}) m={m} k={k} n={n}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn all_layouts_match_reference() {
        let mut rng = Rng::new(7);
        let dims = [0usize, 1, 2, 3, 7, 16, 17, 33, 64, 65, 130];
        for &m in &dims {
            for &k in &dims {
                for &n in &[0usize, 1, 5, 16, 31, 64, 129] {
                    let a = rng.f32s(m * k, -1.0, 1.0);
                    let b = rng.f32s(k * n, -1.0, 1.0);
                    let c0 = rng.f32s(m * n, -1.0, 1.0);
                    for accumulate in [false, true] {
                        let mut want = c0.clone();
                        matmul_f32_ref(&a, &b, &mut want, m, k, n, accumulate);

                        let mut got = c0.clone();
                        matmul_f32(&a, &b, &mut got, m, k, n, accumulate);
                        check(&got, &want, &a, &b, m, k, n);

                        let mut got = c0.clone();
                        matmul_f32_bt(&a, &transpose(&b, k, n), &mut got, m, k, n, accumulate);
                        check(&got, &want, &a, &b, m, k, n);

                        let mut got = c0.clone();
                        matmul_f32_at(&transpose(&a, m, k), &b, &mut got, m, k, n, accumulate);
                        check(&got, &want, &a, &b, m, k, n);
                    }
                }
            }
        }
    }

    /// The parallel split (rows, or columns when `c` is wider), with 2 to 4 threads, on
    /// shapes past the threshold and with sizes that do not divide evenly; the same thread
    /// count gives the same bits twice.
    #[test]
    fn split_products_match_reference_and_repeat() {
        let mut rng = Rng::new(11);
        for &(m, k, n) in &[(300usize, 70usize, 45usize), (45, 70, 300), (129, 129, 129), (1000, 16, 33)] {
            assert!(m * k * n >= PAR_THRESHOLD_MACS);
            let a = rng.f32s(m * k, -1.0, 1.0);
            let b = rng.f32s(k * n, -1.0, 1.0);
            let c0 = rng.f32s(m * n, -1.0, 1.0);
            for threads in [2usize, 3, 4] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
                for accumulate in [false, true] {
                    let mut want = c0.clone();
                    matmul_f32_ref(&a, &b, &mut want, m, k, n, accumulate);
                    let run = |f: &(dyn Fn(&mut [f32]) + Sync)| {
                        let mut got = c0.clone();
                        pool.install(|| f(&mut got));
                        got
                    };
                    let plain = |c: &mut [f32]| matmul_f32(&a, &b, c, m, k, n, accumulate);
                    let bt = transpose(&b, k, n);
                    let with_bt = |c: &mut [f32]| matmul_f32_bt(&a, &bt, c, m, k, n, accumulate);
                    let at = transpose(&a, m, k);
                    let with_at = |c: &mut [f32]| matmul_f32_at(&at, &b, c, m, k, n, accumulate);
                    for f in [&plain as &(dyn Fn(&mut [f32]) + Sync), &with_bt, &with_at] {
                        let got = run(f);
                        check(&got, &want, &a, &b, m, k, n);
                        assert_eq!(got, run(f), "{m}×{k}×{n} on {threads} threads is not repeatable");
                    }
                }
            }
        }
    }

    #[test]
    fn replace_ignores_garbage_in_c() {
        let (m, k, n) = (9, 5, 11);
        let mut rng = Rng::new(3);
        let a = rng.f32s(m * k, -1.0, 1.0);
        let b = rng.f32s(k * n, -1.0, 1.0);
        let mut want = vec![0.0; m * n];
        matmul_f32_ref(&a, &b, &mut want, m, k, n, false);
        let mut got = vec![f32::NAN; m * n];
        matmul_f32(&a, &b, &mut got, m, k, n, false);
        check(&got, &want, &a, &b, m, k, n);
        let mut got = vec![f32::NAN; m * n];
        matmul_f32(&[], &[], &mut got, m, 0, n, false);
        assert!(got.iter().all(|&v| v == 0.0));
    }

    /// Prints throughput for the MiniLM shapes; never asserts on time (the
    /// machine is shared). Run alone for meaningful numbers.
    #[test]
    fn print_gflops() {
        for &(m, k, n) in &[(1024usize, 384usize, 384usize), (1024, 1536, 384)] {
            let mut rng = Rng::new(1);
            let a = rng.f32s(m * k, -1.0, 1.0);
            let b = rng.f32s(k * n, -1.0, 1.0);
            let mut c = vec![0.0; m * n];
            for threads in [1usize, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
                let secs = pool.install(|| bench_secs(|| matmul_f32(&a, &b, &mut c, m, k, n, false)));
                let gf = 2.0 * (m * k * n) as f64 / secs / 1e9;
                println!("matmul_f32 m={m} k={k} n={n} threads={threads}: {gf:.1} GFLOP/s");
            }
        }
    }
}
