//! The plain-Rust truth every SIMD kernel is tested against, and the
//! portable kernel used where no SIMD kernel applies.

use super::pack::{GROUP, PANEL};
use super::{epilogue_body, Epilogue, Kernel, Tile};

/// `Σₖ (x[i][k] - x_zp)(w[k][j] - w_zp)` straight from the unpacked K×N
/// weight, in wrapping i32 (exact whenever the true sum fits in i32).
#[cfg(test)]
pub(crate) fn gemm_ref_i32(xq: &[u8], m: usize, k: usize, x_zp: u8, w_kn: &[i8], n: usize, w_zp: i8) -> Vec<i32> {
    let mut acc = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0i32;
            for p in 0..k {
                let a = i32::from(xq[i * k + p]) - i32::from(x_zp);
                let b = i32::from(w_kn[p * n + j]) - i32::from(w_zp);
                s = s.wrapping_add(a * b);
            }
            acc[i * n + j] = s;
        }
    }
    acc
}

/// The f32 result ONNX Runtime produces from exact accumulators: the Cast,
/// then the Mul by the precomputed scale product, then the Add.
#[cfg(test)]
pub(crate) fn apply_scales_ref(acc: &[i32], n: usize, x_scale: f32, scales: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    acc.iter()
        .enumerate()
        .map(|(idx, &a)| {
            let j = idx % n;
            let y = a as f32 * (x_scale * scales[j]);
            match bias {
                Some(b) => y + b[j],
                None => y,
            }
        })
        .collect()
}

/// Plain Rust over the packed layout; LLVM vectorizes the 16-column inner
/// loop for whatever the baseline target offers.
pub(crate) struct Portable;

impl Kernel for Portable {
    const MR: usize = 4;
    const NRP: usize = 1;
    const X_OFFSET: i32 = 0;

    unsafe fn tile(rows: usize, panels: usize, t: Tile<'_>) {
        t.check(rows, panels);
        for q in 0..panels {
            let w = &t.w[q * t.wstride..][..t.groups];
            for r in 0..rows {
                let x = &t.x[r * t.ldx..][..t.groups * GROUP];
                let mut c = [0i32; PANEL];
                for (blk, xg) in w.iter().zip(x.chunks_exact(GROUP)) {
                    for (col, wc) in c.iter_mut().zip(blk.0.chunks_exact(GROUP)) {
                        let mut s = 0i32;
                        for b in 0..GROUP {
                            // |u8·i8| ≤ 32 640, four of them fit easily.
                            s += i32::from(xg[b]) * i32::from(wc[b]);
                        }
                        *col = col.wrapping_add(s);
                    }
                }
                let dst = &mut t.acc[r * t.ldacc + q * PANEL..][..PANEL];
                for (d, v) in dst.iter_mut().zip(c) {
                    *d = if t.accumulate { d.wrapping_add(v) } else { v };
                }
            }
        }
    }

    unsafe fn epilogue(e: Epilogue<'_>) {
        // SAFETY: the caller owns the output region (trait contract).
        unsafe { epilogue_body(e) }
    }
}
