//! x86-64 AMX-INT8 micro-kernel (Sapphire Rapids and later).
//!
//! `tdpbusd` multiplies a 16-row × 64-byte u8 tile by a 16-row × 64-byte s8
//! tile whose row g holds, for 16 columns, 4 consecutive k each, and adds
//! into a 16×16 i32 tile, exactly (i32 accumulation, no saturation). That B
//! tile row is precisely one [`Block`](super::pack::Block) of the shared
//! packed layout, so 16 consecutive blocks of a panel are one B tile and the
//! weights need no AMX-specific packing; A tiles are read straight from the
//! row-major activations with their row stride.
//!
//! The micro-tile is 32 rows × 2 panels (2 A tiles, 2 B tiles, 4 C tiles of
//! the 8) over whole steps of 16 k-groups; the k remainder, and tiles with
//! fewer rows or panels, go through the AVX-512 VNNI kernel (every AMX CPU
//! has it) on the same accumulators.
//!
//! Rust's AMX intrinsics are unstable, so the instructions are emitted with
//! inline assembly. The compiler never allocates tile registers itself, so
//! tile state can be carried between `asm!` statements inside one function.
//! Linux only hands out AMX state to processes that ask for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which [`amx_available`] does once.

use std::arch::asm;
use std::sync::OnceLock;

use super::pack::{GROUP, PANEL};
use super::x86::Avx512Vnni;
use super::{Epilogue, Kernel, Tile};

/// k-groups per AMX step: one 64-byte A tile row is 16 groups of 4 k.
const STEP: usize = 16;

/// Whether the CPU has AMX-TILE and AMX-INT8, the OS enables tile state, and
/// this process obtained permission to use it. Checked once.
pub(crate) fn amx_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

/// Whether AMX-BF16 is usable too: [`amx_available`] (tile state and the
/// process's permission) and the CPU's `amx_bf16` bit. Every CPU with
/// AMX-INT8 so far has it. Checked once.
pub(crate) fn amx_bf16_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // SAFETY: CPUID leaf 7 exists when `amx_available` holds (it checked the
        // maximum leaf). (Newer compilers consider the intrinsic safe.)
        #[allow(unused_unsafe)]
        let bf16 = || (unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx >> 22) & 1 == 1;
        amx_available() && bf16()
    })
}

#[cfg(target_os = "linux")]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    if !(std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("xsave"))
    {
        return false;
    }
    // SAFETY: CPUID is available on every x86-64 CPU. (Newer compilers
    // consider these intrinsics safe, hence the allow.)
    #[allow(unused_unsafe)]
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    // SAFETY: leaf 7 exists (checked just above).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    let (amx_tile, amx_int8) = ((leaf7.edx >> 24) & 1 == 1, (leaf7.edx >> 25) & 1 == 1);
    if !(amx_tile && amx_int8) {
        return false;
    }
    // SAFETY: XSAVE was detected above, so XGETBV is available; with the
    // OSXSAVE bit, which std's detection of AVX already required.
    let xcr0 = unsafe { _xgetbv(0) };
    if (xcr0 >> 17) & 0b11 != 0b11 {
        return false; // XTILECFG / XTILEDATA state not enabled by the OS
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call only updates this process's
    // permission to use extended state; it touches no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn detect() -> bool {
    false
}

/// 32 rows × 2 panels on AMX, everything else on AVX-512 VNNI.
pub(crate) struct Amx;

impl Kernel for Amx {
    const MR: usize = 32;
    const NRP: usize = 2;
    const X_OFFSET: i32 = 0;

    unsafe fn tile(rows: usize, panels: usize, mut t: Tile<'_>) {
        t.check(rows, panels);
        assert!(rows <= Self::MR && panels <= Self::NRP);
        let main = if rows == Self::MR && panels == Self::NRP { t.groups / STEP * STEP } else { 0 };
        if main > 0 {
            // SAFETY: `check` with rows = 32, panels = 2 bounds every tile
            // load and store (see `amx_32x32`); the caller guarantees AMX
            // (which `amx_available` made usable for this process).
            unsafe { amx_32x32(&mut t, main / STEP) };
        }
        if main < t.groups {
            // The k remainder (accumulating onto the AMX result if there is
            // one), or the whole micro-tile when it is not a full 32 × 32.
            let accumulate = t.accumulate || main > 0;
            for r in (0..rows).step_by(Avx512Vnni::MR) {
                let sub = Tile {
                    x: &t.x[r * t.ldx + main * GROUP..],
                    ldx: t.ldx,
                    groups: t.groups - main,
                    w: &t.w[main..],
                    wstride: t.wstride,
                    acc: &mut t.acc[r * t.ldacc..],
                    ldacc: t.ldacc,
                    accumulate,
                };
                // SAFETY: AMX CPUs have AVX-512 VNNI (checked by
                // `amx_available`); `tile` checks the sub-tile's bounds.
                unsafe { Avx512Vnni::tile(Avx512Vnni::MR.min(rows - r), panels, sub) };
            }
        }
    }

    unsafe fn epilogue(e: Epilogue<'_>) {
        // SAFETY: AMX CPUs have AVX-512F (checked by `amx_available`); the
        // output region is the caller's alone (trait contract).
        unsafe { Avx512Vnni::epilogue(e) }
    }

    unsafe fn begin_task() {
        // SAFETY: a valid palette-1 configuration; AMX is usable (caller).
        // Compiled code never touches tile registers, so the configuration
        // stays in force for the task's micro-tiles.
        unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
    }

    unsafe fn end_task() {
        // SAFETY: returns the tile state to its initial configuration.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// Tile configuration (palette 1): tmm0–3 are the C tiles (16 rows × 64
/// bytes of i32), tmm4–5 the A tiles, tmm6–7 the B tiles, all 16 × 64 bytes.
#[repr(C, align(64))]
pub(super) struct TileConfig(pub(super) [u8; 64]);

impl TileConfig {
    const fn full() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        let mut i = 0;
        while i < 8 {
            c[16 + 2 * i] = 64; // bytes per row (u16, little endian)
            c[48 + i] = 16; // rows
            i += 1;
        }
        TileConfig(c)
    }
}

pub(super) static CONFIG: TileConfig = TileConfig::full();

/// The first `steps · 16` groups of a full 32-row × 2-panel micro-tile.
///
/// # Safety
/// `t.check(32, 2)` must hold, `steps · 16 <= t.groups`, AMX must be usable
/// by this process and `Amx::begin_task` must have configured the tiles.
unsafe fn amx_32x32(t: &mut Tile<'_>, steps: usize) {
    let (x, w, acc) = (t.x.as_ptr(), t.w.as_ptr().cast::<u8>(), t.acc.as_mut_ptr());
    let ldx = t.ldx;
    let lda = t.ldacc * 4; // C tile row stride in bytes
    let blk = 64usize; // B tile row stride: one block
    let pstride = t.wstride * 64; // bytes between panels
    let c1 = PANEL; // second panel's columns
    let c2 = 16 * t.ldacc; // rows 16..32
    // SAFETY (all asm below): the tiles are configured (caller). With
    // check(32, 2): A tiles read rows r < 32 at bytes
    // [64s, 64s + 64) ⊂ [0, 4·groups) of x; B tiles read blocks
    // q·wstride + 16s + (0..16) < (2-1)·wstride + groups; C tiles touch
    // rows < 32 × columns < 32 of acc, within (32-1)·ldacc + 32 ≤ acc.len().
    // Tile registers are not used by compiled code, so their state carries
    // between the statements.
    unsafe {
        if t.accumulate {
            asm!(
                "tileloadd tmm0, [{a} + {s}*1]",
                "tileloadd tmm1, [{b} + {s}*1]",
                "tileloadd tmm2, [{c} + {s}*1]",
                "tileloadd tmm3, [{d} + {s}*1]",
                a = in(reg) acc,
                b = in(reg) acc.add(c1),
                c = in(reg) acc.add(c2),
                d = in(reg) acc.add(c2 + c1),
                s = in(reg) lda,
                options(nostack, readonly),
            );
        } else {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        }
        for s in 0..steps {
            let xa = x.add(s * STEP * GROUP);
            let wb = w.add(s * STEP * 64);
            asm!(
                "tileloadd tmm4, [{a0} + {lx}*1]",
                "tileloadd tmm6, [{b0} + {lb}*1]",
                "tdpbusd tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {lb}*1]",
                "tdpbusd tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {lx}*1]",
                "tdpbusd tmm2, tmm5, tmm6",
                "tdpbusd tmm3, tmm5, tmm7",
                a0 = in(reg) xa,
                a1 = in(reg) xa.add(16 * ldx),
                b0 = in(reg) wb,
                b1 = in(reg) wb.add(pstride),
                lx = in(reg) ldx,
                lb = in(reg) blk,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{a} + {s}*1], tmm0",
            "tilestored [{b} + {s}*1], tmm1",
            "tilestored [{c} + {s}*1], tmm2",
            "tilestored [{d} + {s}*1], tmm3",
            a = in(reg) acc,
            b = in(reg) acc.add(c1),
            c = in(reg) acc.add(c2),
            d = in(reg) acc.add(c2 + c1),
            s = in(reg) lda,
            options(nostack),
        );
    }
}
