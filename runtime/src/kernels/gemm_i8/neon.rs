//! aarch64 micro-kernels: `sdot` (dotprod extension) and plain NEON.
//!
//! Both multiply *signed* bytes only, so activations are fed as
//! `x ^ 0x80 = x - 128` (exact in i8) and the driver adds `128 · Σw` back
//! through the column correction (`X_OFFSET = -128`). `usdot` (u8×s8, i8mm)
//! would avoid that, but its intrinsics are not stable yet and the
//! correction costs nothing per element.
//!
//! The dot-product intrinsics (`vdotq_laneq_s32`) are also still unstable in
//! Rust, so `sdot` is emitted with inline assembly; the plain kernel uses
//! only stable NEON intrinsics.

use std::arch::aarch64::*;
use std::arch::asm;

use super::pack::{GROUP, PANEL};
use super::{epilogue_body, Epilogue, Kernel, Tile};

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

/// [`epilogue_body`] compiled for this extension.
///
/// # Safety
/// The CPU must support it; the output region must be the caller's alone.
#[target_feature(enable = "neon")]
unsafe fn epilogue_neon(e: Epilogue<'_>) {
    // SAFETY: the caller owns the output region (this fn's contract).
    unsafe { epilogue_body(e) }
}

/// Stores (or adds into) 4 i32 accumulators.
///
/// # Safety
/// `p..p+4` must be valid for reads and writes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store_acc(p: *mut i32, v: int32x4_t, accumulate: bool) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let v = if accumulate { vaddq_s32(v, vld1q_s32(p)) } else { v };
        vst1q_s32(p, v);
    }
}

// ------------------------------------------------------------------- dotprod

/// `acc[i] += Σ_b a[4i+b] · b[4·L+b]` (SDOT by element).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot_lane<const L: i32>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only arithmetic; the dotprod feature is enabled on
    // this function, so the instruction exists.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.4b[{l}]",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            l = const L,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// `acc[i] += Σ_b a[4i+b] · b[4i+b]` (SDOT by vector).
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: as in `sdot_lane`.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// 4 rows × 1 panel: 16 accumulators + 4 weight + 4 activation registers of
/// the 32. Each activation register holds 4 groups (16 bytes) of one row and
/// feeds `sdot` by element, so activations are loaded once per 4 groups.
pub(crate) struct NeonDotprod;

impl Kernel for NeonDotprod {
    const MR: usize = 4;
    const NRP: usize = 1;
    const X_OFFSET: i32 = -128;

    unsafe fn tile(rows: usize, panels: usize, t: Tile<'_>) {
        t.check(rows, panels);
        assert!(rows <= Self::MR && panels <= Self::NRP);
        // SAFETY: bounds checked just above; the caller guarantees dotprod.
        unsafe { by_rows!(tile_dot, rows, 1, t, [1, 2, 3, 4]) }
    }

    unsafe fn epilogue(e: Epilogue<'_>) {
        // SAFETY: NEON is part of every aarch64 target; the output region
        // is the caller's alone (trait contract).
        unsafe { epilogue_neon(e) }
    }
}

/// # Safety
/// `t.check(MR, NRP)` must hold and the CPU must support dotprod.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_dot<const MR: usize, const NRP: usize>(t: Tile<'_>) {
    let (x, w, acc) = (t.x.as_ptr(), t.w.as_ptr(), t.acc.as_mut_ptr());
    let flip = vdupq_n_u8(0x80);
    for q in 0..NRP {
        let mut c = [[vdupq_n_s32(0); 4]; MR];
        let mut g = 0;
        while g + 4 <= t.groups {
            // SAFETY: `check` guarantees blocks q·wstride + g' for g' <
            // groups, and bytes r·ldx + 4g' .. +4 for r < MR, g' < groups, are
            // in bounds; the 16-byte activation loads at group g read groups
            // g..g+4 only, and g + 4 <= groups here.
            unsafe {
                let mut xr = [vdupq_n_s8(0); MR];
                for (r, xv) in xr.iter_mut().enumerate() {
                    *xv = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(x.add(r * t.ldx + g * GROUP)), flip));
                }
                macro_rules! step {
                    ($l:literal) => {{
                        let wb = w.add(q * t.wstride + g + $l).cast::<i8>();
                        let b = [vld1q_s8(wb), vld1q_s8(wb.add(16)), vld1q_s8(wb.add(32)), vld1q_s8(wb.add(48))];
                        for (cr, xv) in c.iter_mut().zip(&xr) {
                            for (ci, bi) in cr.iter_mut().zip(&b) {
                                *ci = sdot_lane::<$l>(*ci, *bi, *xv);
                            }
                        }
                    }};
                }
                step!(0);
                step!(1);
                step!(2);
                step!(3);
            }
            g += 4;
        }
        while g < t.groups {
            // SAFETY: as above, for the single group g < groups.
            unsafe {
                let wb = w.add(q * t.wstride + g).cast::<i8>();
                let b = [vld1q_s8(wb), vld1q_s8(wb.add(16)), vld1q_s8(wb.add(32)), vld1q_s8(wb.add(48))];
                for (r, cr) in c.iter_mut().enumerate() {
                    let x4 = x.add(r * t.ldx + g * GROUP).cast::<u32>().read_unaligned() ^ 0x8080_8080;
                    let xv = vreinterpretq_s8_u32(vdupq_n_u32(x4));
                    for (ci, bi) in cr.iter_mut().zip(&b) {
                        *ci = sdot(*ci, *bi, xv);
                    }
                }
            }
            g += 1;
        }
        for (r, cr) in c.iter().enumerate() {
            for (i, ci) in cr.iter().enumerate() {
                // SAFETY: `check` guarantees r·ldacc + q·16 + 16 ≤ acc.len().
                unsafe { store_acc(acc.add(r * t.ldacc + q * PANEL + 4 * i), *ci, t.accumulate) };
            }
        }
    }
}

// ---------------------------------------------------------------- plain NEON

/// 2 rows × 1 panel without the dot-product extension: `smull` gives exact
/// i16 products (|(x-128)·w| ≤ 16 384) and `sadalp` folds pairs of them into
/// i32 lanes; two lanes per column are summed once per micro-tile.
pub(crate) struct Neon;

impl Kernel for Neon {
    const MR: usize = 2;
    const NRP: usize = 1;
    const X_OFFSET: i32 = -128;

    unsafe fn tile(rows: usize, panels: usize, t: Tile<'_>) {
        t.check(rows, panels);
        assert!(rows <= Self::MR && panels <= Self::NRP);
        // SAFETY: bounds checked just above; NEON is baseline on aarch64.
        unsafe { by_rows!(tile_neon, rows, 1, t, [1, 2]) }
    }

    unsafe fn epilogue(e: Epilogue<'_>) {
        // SAFETY: NEON is part of every aarch64 target; the output region
        // is the caller's alone (trait contract).
        unsafe { epilogue_neon(e) }
    }
}

/// # Safety
/// `t.check(MR, NRP)` must hold.
#[target_feature(enable = "neon")]
unsafe fn tile_neon<const MR: usize, const NRP: usize>(t: Tile<'_>) {
    let (x, w, acc) = (t.x.as_ptr(), t.w.as_ptr(), t.acc.as_mut_ptr());
    for q in 0..NRP {
        // c[r][i][0]: columns 4i, 4i+1 as [k01, k23, k01, k23];
        // c[r][i][1]: columns 4i+2, 4i+3.
        let mut c = [[[vdupq_n_s32(0); 2]; 4]; MR];
        for g in 0..t.groups {
            // SAFETY: `check` guarantees block q·wstride + g and bytes
            // r·ldx + 4g .. +4 (r < MR, g < groups) are in bounds.
            unsafe {
                let wb = w.add(q * t.wstride + g).cast::<i8>();
                let mut xr = [vdupq_n_s8(0); MR];
                for (r, xv) in xr.iter_mut().enumerate() {
                    let x4 = x.add(r * t.ldx + g * GROUP).cast::<u32>().read_unaligned() ^ 0x8080_8080;
                    *xv = vreinterpretq_s8_u32(vdupq_n_u32(x4));
                }
                for i in 0..4 {
                    let b = vld1q_s8(wb.add(16 * i));
                    for (cr, xv) in c.iter_mut().zip(&xr) {
                        let lo = vmull_s8(vget_low_s8(b), vget_low_s8(*xv));
                        let hi = vmull_high_s8(b, *xv);
                        cr[i][0] = vpadalq_s16(cr[i][0], lo);
                        cr[i][1] = vpadalq_s16(cr[i][1], hi);
                    }
                }
            }
        }
        for (r, cr) in c.iter().enumerate() {
            for (i, ci) in cr.iter().enumerate() {
                let s = vpaddq_s32(ci[0], ci[1]);
                // SAFETY: `check` guarantees r·ldacc + q·16 + 16 ≤ acc.len().
                unsafe { store_acc(acc.add(r * t.ldacc + q * PANEL + 4 * i), s, t.accumulate) };
            }
        }
    }
}
