//! One shared correctness check run against every kernel available on the
//! machine, plus packing round-trips and a throughput printout.

use super::reference::{apply_scales_ref, gemm_ref_i32};
use super::*;
use crate::kernels::testutil::{bench_secs, Rng};

/// Runs `kernel` on random data (a quarter of it the extremes 0/255 and
/// -128/127) and demands bit-identical f32 output to the exact reference.
/// Since the kernel and the reference apply the very same f32 epilogue to
/// their i32 accumulators, any accumulator difference shows up in the bits
/// (and when |acc| < 2²⁴, which the small-K cases ensure, the f32 *is* the
/// integer).
#[allow(clippy::too_many_arguments)]
fn check_kernel(kernel: KernelKind, m: usize, k: usize, n: usize, x_zp: u8, w_zp: i8, with_bias: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = rng.u8s(m * k);
    let w = rng.i8s(k * n);
    let scales = rng.f32s(n, 1e-3, 0.1);
    let bias = rng.f32s(n, -1.0, 1.0);
    let bias = with_bias.then_some(&bias[..]);
    let x_scale = 0.037;
    let packed = PackedI8::new(&w, k, n, &scales, w_zp);
    let acc = gemm_ref_i32(&x, m, k, x_zp, &w, n, w_zp);
    let want = apply_scales_ref(&acc, n, x_scale, &scales, bias);
    let mut got = vec![f32::NAN; m * n];
    gemm_u8i8_with(kernel, &x, m, x_scale, x_zp, &packed, bias, &mut got);
    for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{}: m={m} k={k} n={n} x_zp={x_zp} w_zp={w_zp} bias={with_bias}: out[{},{}] = {g}, want {w} (exact acc {})",
            kernel.name(),
            idx / n,
            idx % n,
            acc[idx]
        );
    }
}

const ZPS: [(u8, i8); 5] = [(0, 0), (128, 0), (255, -128), (1, 127), (37, -5)];

fn check_all_shapes(kernel: KernelKind) {
    let dims = [1usize, 2, 3, 5, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127];
    let mut case = 0u64;
    for &m in &dims {
        for &k in dims.iter().chain(&[4, 384, 1536]) {
            // Every m×k pair meets a rotating handful of widths, including
            // exact panel / micro-tile multiples and their neighbours.
            let widths = [1usize, 2, 3, 5, 7, 15, 16, 17, 31, 33, 47, 48, 49, 63, 64, 65, 127, 384];
            for i in 0..4 {
                let n = widths[(case as usize * 3 + i * 5) % widths.len()];
                let (xz, wz) = ZPS[(case as usize + i) % ZPS.len()];
                check_kernel(kernel, m, k, n, xz, wz, (case + i as u64).is_multiple_of(2), case);
                case += 1;
            }
        }
    }
    // Model-sized shapes, which also take the threaded path and k-blocking.
    // The AMX kernel's edges: exact 32×32 tiles, a k remainder after whole
    // 64-k steps, several k-blocks accumulating through tile loads.
    let model = [(64usize, 384usize, 384usize), (65, 1536, 384), (127, 384, 1536), (9, 1536, 65), (32, 64, 32), (33, 68, 33), (96, 1540, 64)];
    for (i, &(m, k, n)) in model.iter().enumerate() {
        let (xz, wz) = ZPS[i % ZPS.len()];
        check_kernel(kernel, m, k, n, xz, wz, i % 2 == 1, 1000 + i as u64);
    }
}

#[test]
fn every_available_kernel_matches_reference() {
    let kernels = KernelKind::available();
    assert!(kernels.contains(&KernelKind::Portable));
    for kernel in kernels {
        check_all_shapes(kernel);
    }
}

#[test]
fn every_kernel_single_threaded_and_odd_pools() {
    for threads in [1usize, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        pool.install(|| {
            for kernel in KernelKind::available() {
                for (i, &(m, k, n)) in [(130usize, 520usize, 200usize), (1, 1536, 1000), (300, 64, 48)].iter().enumerate() {
                    let (xz, wz) = ZPS[(i + 2) % ZPS.len()];
                    check_kernel(kernel, m, k, n, xz, wz, i != 1, 77 + i as u64);
                }
            }
        });
    }
}

#[test]
fn extremes_saturate_nothing() {
    // The largest |products|: 255·(-128) in every position, and 0·127, with
    // zero points that maximise |(x - xz)(w - wz)|.
    for kernel in KernelKind::available() {
        for &(xv, wv, xz, wz) in &[(255u8, -128i8, 0u8, 0i8), (0, 127, 255, -128), (255, -128, 0, 127), (255, 127, 0, -128)] {
            let (m, k, n) = (3, 1539, 17);
            let x = vec![xv; m * k];
            let w = vec![wv; k * n];
            let packed = PackedI8::new(&w, k, n, &vec![1.0; n], wz);
            let mut got = vec![0.0; m * n];
            gemm_u8i8_with(kernel, &x, m, 1.0, xz, &packed, None, &mut got);
            let exact = (i64::from(xv) - i64::from(xz)) * (i64::from(wv) - i64::from(wz)) * k as i64;
            let want = exact as i32 as f32;
            assert!(got.iter().all(|&g| g == want), "{}: {} vs {want}", kernel.name(), got[0]);
        }
    }
}

#[test]
fn the_new_vector_product_equals_the_one_into_a_buffer() {
    let mut rng = Rng::new(11);
    for &(m, k, n) in &[(1usize, 4usize, 16usize), (37, 45, 70), (64, 384, 1536), (0, 8, 8), (3, 0, 5), (3, 8, 0)] {
        let (x, w) = (rng.u8s(m * k), rng.i8s(k * n));
        let packed = PackedI8::new(&w, k, n, &rng.f32s(n, 1e-3, 0.1), -2);
        let bias = rng.f32s(n, -1.0, 1.0);
        let mut want = vec![f32::NAN; m * n];
        gemm_u8i8(&x, m, 0.02, 9, &packed, Some(&bias), &mut want);
        let got = gemm_u8i8_new(&x, m, 0.02, 9, &packed, Some(&bias));
        assert_eq!(got.len(), m * n);
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{m}×{k}×{n}");
    }
}

#[test]
fn empty_shapes() {
    for kernel in KernelKind::available() {
        let p = PackedI8::new(&[], 0, 5, &[0.5; 5], 3);
        let mut out = vec![f32::NAN; 10];
        gemm_u8i8_with(kernel, &[], 2, 0.1, 7, &p, Some(&[1.0; 5]), &mut out);
        assert_eq!(out, vec![1.0; 10]);
        let p = PackedI8::new(&[], 4, 0, &[], 0);
        gemm_u8i8_with(kernel, &[1; 8], 2, 0.1, 7, &p, None, &mut []);
        let p = PackedI8::new(&[1; 12], 4, 3, &[1.0; 3], 0);
        gemm_u8i8_with(kernel, &[], 0, 0.1, 7, &p, None, &mut []);
    }
}

#[test]
fn packing_round_trips() {
    let mut rng = Rng::new(9);
    for &(k, n) in &[(1usize, 1usize), (3, 17), (17, 3), (64, 48), (65, 33)] {
        let w = rng.i8s(k * n);
        let scales = rng.f32s(n, 0.01, 1.0);
        let p = PackedI8::new(&w, k, n, &scales, -3);
        assert_eq!((p.k(), p.n(), p.zero_point()), (k, n, -3));
        assert_eq!(p.scales(), &scales[..]);
        assert_eq!(p.weights_kn(), w);
        let deq = p.dequantize();
        for (idx, (&d, &q)) in deq.iter().zip(&w).enumerate() {
            assert_eq!(d, (i32::from(q) + 3) as f32 * scales[idx % n]);
        }
    }
}

#[test]
fn selected_kernel_is_the_best_available() {
    let name = selected_kernel();
    println!("int8 kernels available: {:?}, selected {name}", KernelKind::available());
    assert_eq!(name, KernelKind::available()[0].name());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512bw") {
        assert!(name == "avx512vnni" || name == "amx", "{name}");
    }
}

/// Prints GOP/s (2 ops per multiply-add) per kernel for the MiniLM shapes
/// (batch×seq = 1024). Informational only: the machine is shared, so nothing
/// asserts on time. Run alone for meaningful numbers:
/// `cargo test --release print_gops -- --nocapture --test-threads=1`.
#[test]
fn print_gops() {
    for &(m, k, n) in &[(1024usize, 384usize, 384usize), (1024, 1536, 384)] {
        let mut rng = Rng::new(4);
        let x = rng.u8s(m * k);
        let w = rng.i8s(k * n);
        let packed = PackedI8::new(&w, k, n, &vec![0.01; n], 0);
        let bias = vec![0.5; n];
        let mut out = vec![0.0; m * n];
        for kernel in KernelKind::available() {
            // The portable kernel is two orders of magnitude slower; one
            // shape is enough to see it.
            if kernel == KernelKind::Portable && k > 384 {
                continue;
            }
            for threads in [1usize, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
                let secs = pool.install(|| {
                    bench_secs(|| gemm_u8i8_with(kernel, &x, m, 0.02, 3, &packed, Some(&bias), &mut out))
                });
                let gops = 2.0 * (m * k * n) as f64 / secs / 1e9;
                println!("gemm_u8i8 {:>12} m={m} k={k} n={n} threads={threads}: {gops:.0} GOP/s", kernel.name());
            }
        }
    }
}
