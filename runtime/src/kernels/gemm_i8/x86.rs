//! x86-64 micro-kernels: AVX-512 VNNI, AVX-VNNI (256-bit) and AVX2 (AMX is
//! in `amx.rs`).
//!
//! All three read the shared block layout (16 columns × 4 k per 64-byte
//! block) against a broadcast 4-byte group of one activation row.
//!
//! `vpdpbusd` multiplies u8 by s8 and adds each lane's four products into
//! its i32 accumulator without intermediate saturation (4·255·128 ≪ 2³¹), so
//! it is exact. AVX2's `vpmaddubsw` would saturate pairwise sums to i16
//! (2·255·127 > 32 767) and is deliberately not used: the AVX2 kernel widens
//! both operands to i16 and uses `vpmaddwd`, whose i16·i16 pair sums are
//! exact in i32.

use std::arch::x86_64::*;

use super::pack::{GROUP, PANEL};
use super::{epilogue_body, Epilogue, Kernel, Tile, KC};

/// Expands to a `match` over the run-time row count `rows` (1..=MR) that
/// calls the const-generic micro-kernel `$f::<rows, $np>(t)`.
macro_rules! by_rows {
    ($f:ident, $rows:expr, $np:literal, $t:expr, [$($mr:literal),*]) => {
        match $rows {
            $($mr => $f::<$mr, $np>($t),)*
            _ => unreachable!("rows is checked to be in 1..=MR"),
        }
    };
}

// ---------------------------------------------------------------- AVX-512 VNNI

/// 8 rows × 3 panels (48 columns): 24 zmm accumulators, 3 weight registers
/// and 1 broadcast of the 32 registers; per k-group 11 loads feed 24
/// `vpdpbusd`, which keeps both FMA ports busy.
pub(crate) struct Avx512Vnni;

impl Kernel for Avx512Vnni {
    const MR: usize = 8;
    const NRP: usize = 3;
    const X_OFFSET: i32 = 0;

    unsafe fn tile(rows: usize, panels: usize, t: Tile<'_>) {
        t.check(rows, panels);
        assert!(rows <= Self::MR && panels <= Self::NRP);
        // SAFETY: bounds checked just above; the caller guarantees the CPU
        // supports AVX-512F/BW/VNNI.
        unsafe {
            match panels {
                3 => by_rows!(tile_512, rows, 3, t, [1, 2, 3, 4, 5, 6, 7, 8]),
                2 => by_rows!(tile_512, rows, 2, t, [1, 2, 3, 4, 5, 6, 7, 8]),
                _ => by_rows!(tile_512, rows, 1, t, [1, 2, 3, 4, 5, 6, 7, 8]),
            }
        }
    }

    unsafe fn epilogue(e: Epilogue<'_>) {
        // SAFETY: the caller guarantees AVX-512F and an exclusive output
        // region (trait contract).
        unsafe { epilogue_avx512(e) }
    }
}

/// [`epilogue_body`] compiled for this extension.
///
/// # Safety
/// The CPU must support it; the output region must be the caller's alone.
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_avx512(e: Epilogue<'_>) {
    // SAFETY: the caller owns the output region (this fn's contract).
    unsafe { epilogue_body(e) }
}

/// # Safety
/// `t.check(MR, NRP)` must hold and the CPU must support AVX-512F/BW/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_512<const MR: usize, const NRP: usize>(t: Tile<'_>) {
    let (x, w, acc) = (t.x.as_ptr(), t.w.as_ptr(), t.acc.as_mut_ptr());
    let mut c = [[_mm512_setzero_si512(); NRP]; MR];
    for g in 0..t.groups {
        // SAFETY: `check` guarantees block q·wstride + g (< (NRP-1)·wstride
        // + groups) and bytes r·ldx + 4g .. +4 (< (MR-1)·ldx + 4·groups) are
        // in bounds; blocks are 64-byte aligned, as the aligned load needs.
        unsafe {
            let mut b = [_mm512_setzero_si512(); NRP];
            for (q, bq) in b.iter_mut().enumerate() {
                *bq = _mm512_load_si512(w.add(q * t.wstride + g).cast());
            }
            for (r, cr) in c.iter_mut().enumerate() {
                let a = _mm512_set1_epi32(x.add(r * t.ldx + g * GROUP).cast::<i32>().read_unaligned());
                for (cq, bq) in cr.iter_mut().zip(&b) {
                    *cq = _mm512_dpbusd_epi32(*cq, a, *bq);
                }
            }
        }
    }
    for (r, cr) in c.iter().enumerate() {
        for (q, cq) in cr.iter().enumerate() {
            // SAFETY: `check` guarantees r·ldacc + q·16 + 16 ≤ acc.len().
            unsafe {
                let p = acc.add(r * t.ldacc + q * PANEL);
                let v = if t.accumulate { _mm512_add_epi32(*cq, _mm512_loadu_si512(p.cast())) } else { *cq };
                _mm512_storeu_si512(p.cast(), v);
            }
        }
    }
}

// ------------------------------------------------------------------- AVX-VNNI

/// 6 rows × 1 panel: a panel is two ymm, so 12 accumulators + 2 weights + 1
/// broadcast fit the 16 ymm registers that AVX-VNNI CPUs without AVX-512
/// have.
pub(crate) struct AvxVnni;

impl Kernel for AvxVnni {
    const MR: usize = 6;
    const NRP: usize = 1;
    const X_OFFSET: i32 = 0;

    unsafe fn tile(rows: usize, panels: usize, t: Tile<'_>) {
        t.check(rows, panels);
        assert!(rows <= Self::MR && panels <= Self::NRP);
        // SAFETY: bounds checked just above; the caller guarantees the CPU
        // supports AVX2 and AVX-VNNI.
        unsafe { by_rows!(tile_vnni256, rows, 1, t, [1, 2, 3, 4, 5, 6]) }
    }

    unsafe fn epilogue(e: Epilogue<'_>) {
        // SAFETY: the caller guarantees AVX2 and an exclusive output region
        // (trait contract).
        unsafe { epilogue_avx2(e) }
    }
}

/// [`epilogue_body`] compiled for this extension.
///
/// # Safety
/// The CPU must support it; the output region must be the caller's alone.
#[target_feature(enable = "avx2")]
unsafe fn epilogue_avx2(e: Epilogue<'_>) {
    // SAFETY: the caller owns the output region (this fn's contract).
    unsafe { epilogue_body(e) }
}

/// # Safety
/// `t.check(MR, NRP)` must hold and the CPU must support AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile_vnni256<const MR: usize, const NRP: usize>(t: Tile<'_>) {
    let (x, w, acc) = (t.x.as_ptr(), t.w.as_ptr(), t.acc.as_mut_ptr());
    let mut c = [[[_mm256_setzero_si256(); 2]; NRP]; MR];
    for g in 0..t.groups {
        // SAFETY: as in `tile_512`; the two 32-byte halves of a 64-byte
        // aligned block are 32-byte aligned.
        unsafe {
            let mut b = [[_mm256_setzero_si256(); 2]; NRP];
            for (q, bq) in b.iter_mut().enumerate() {
                let p = w.add(q * t.wstride + g).cast::<__m256i>();
                *bq = [_mm256_load_si256(p), _mm256_load_si256(p.add(1))];
            }
            for (r, cr) in c.iter_mut().enumerate() {
                let a = _mm256_set1_epi32(x.add(r * t.ldx + g * GROUP).cast::<i32>().read_unaligned());
                for (cq, bq) in cr.iter_mut().zip(&b) {
                    cq[0] = _mm256_dpbusd_avx_epi32(cq[0], a, bq[0]);
                    cq[1] = _mm256_dpbusd_avx_epi32(cq[1], a, bq[1]);
                }
            }
        }
    }
    for (r, cr) in c.iter().enumerate() {
        for (q, cq) in cr.iter().enumerate() {
            for (h, ch) in cq.iter().enumerate() {
                // SAFETY: `check` guarantees r·ldacc + q·16 + 16 ≤ acc.len().
                unsafe { store_acc256(acc.add(r * t.ldacc + q * PANEL + h * 8), *ch, t.accumulate) };
            }
        }
    }
}

/// Stores (or adds into) 8 i32 accumulators.
///
/// # Safety
/// `p..p+8` must be valid for reads and writes; the CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_acc256(p: *mut i32, v: __m256i, accumulate: bool) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let v = if accumulate { _mm256_add_epi32(v, _mm256_loadu_si256(p.cast())) } else { v };
        _mm256_storeu_si256(p.cast(), v);
    }
}

// ----------------------------------------------------------------------- AVX2

/// 4 rows × 3 panels, computed half a panel (8 columns) at a time so that
/// the accumulators fit the 16 ymm registers. Weights are sign-extended and
/// activations zero-extended to i16; `vpmaddwd` then yields, per column, two
/// i32 partial sums (k0k1 and k2k3) that are folded with `vphaddd` once per
/// micro-tile. The activations are widened once per micro-tile into a small
/// stack buffer, so the inner loop only broadcasts them from memory.
pub(crate) struct Avx2;

impl Kernel for Avx2 {
    const MR: usize = 4;
    const NRP: usize = 3;
    const X_OFFSET: i32 = 0;

    unsafe fn tile(rows: usize, panels: usize, t: Tile<'_>) {
        t.check(rows, panels);
        assert!(rows <= Self::MR && panels <= Self::NRP && t.groups <= KC);
        // SAFETY: bounds checked just above; the caller guarantees AVX2.
        unsafe {
            match panels {
                3 => by_rows!(tile_avx2, rows, 3, t, [1, 2, 3, 4]),
                2 => by_rows!(tile_avx2, rows, 2, t, [1, 2, 3, 4]),
                _ => by_rows!(tile_avx2, rows, 1, t, [1, 2, 3, 4]),
            }
        }
    }

    unsafe fn epilogue(e: Epilogue<'_>) {
        // SAFETY: the caller guarantees AVX2 and an exclusive output region
        // (trait contract).
        unsafe { epilogue_avx2(e) }
    }
}

/// # Safety
/// `t.check(MR, NRP)` and `t.groups <= KC` must hold and the CPU must
/// support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2<const MR: usize, const NRP: usize>(t: Tile<'_>) {
    let (x, w, acc) = (t.x.as_ptr(), t.w.as_ptr(), t.acc.as_mut_ptr());
    // xe[r][g] = [x0 x1 x2 x3] of row r, group g, as four u16 in one i64.
    let mut xe = [[0i64; KC]; MR];
    for (r, xr) in xe.iter_mut().enumerate() {
        for (g, xg) in xr.iter_mut().enumerate().take(t.groups) {
            // SAFETY: `check` guarantees bytes r·ldx + 4g .. +4 are in bounds.
            let x4 = unsafe { x.add(r * t.ldx + g * GROUP).cast::<i32>().read_unaligned() };
            *xg = _mm_cvtsi128_si64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(x4)));
        }
    }
    for q in 0..NRP {
        for h in 0..2 {
            // c[r][0]: columns 8h..8h+4, c[r][1]: 8h+4..8h+8, each as
            // [col0 k01, col0 k23, col1 k01, col1 k23 | col2 .., col3 ..].
            let mut c = [[_mm256_setzero_si256(); 2]; MR];
            for g in 0..t.groups {
                // SAFETY: `check` guarantees block q·wstride + g is in
                // bounds; bytes 32h..32h+32 of a 64-byte aligned block are two
                // aligned 16-byte halves.
                unsafe {
                    let p = w.add(q * t.wstride + g).cast::<__m128i>().add(2 * h);
                    let b0 = _mm256_cvtepi8_epi16(_mm_load_si128(p));
                    let b1 = _mm256_cvtepi8_epi16(_mm_load_si128(p.add(1)));
                    for (cr, xr) in c.iter_mut().zip(&xe) {
                        // [x0 x1 x2 x3] × 4 as i16.
                        let a = _mm256_set1_epi64x(xr[g]);
                        cr[0] = _mm256_add_epi32(cr[0], _mm256_madd_epi16(b0, a));
                        cr[1] = _mm256_add_epi32(cr[1], _mm256_madd_epi16(b1, a));
                    }
                }
            }
            for (r, cr) in c.iter().enumerate() {
                // hadd gives [c0 c1 c4 c5 | c2 c3 c6 c7]; the 64-bit permute
                // (0, 2, 1, 3) restores column order.
                let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(cr[0], cr[1]));
                // SAFETY: `check` guarantees r·ldacc + q·16 + 16 ≤ acc.len().
                unsafe { store_acc256(acc.add(r * t.ldacc + q * PANEL + h * 8), s, t.accumulate) };
            }
        }
    }
}
