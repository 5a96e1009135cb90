//! u8 × i8 → f32 GEMM: what ONNX Runtime computes for
//! `DynamicQuantizeLinear → MatMulInteger → Cast → Mul(x_scale·w_scale) → Add(bias)`.
//!
//! Structure:
//! - `pack`: the one packed weight layout every kernel reads;
//! - `reference`: the plain-Rust truth (`gemm_ref_i32`) and the portable
//!   kernel;
//! - `amx`: the AMX-INT8 micro-kernel (tile matrix multiply, Linux);
//! - `x86`: AVX-512 VNNI, AVX-VNNI and AVX2 micro-kernels;
//! - `neon`: aarch64 `sdot` (dotprod) and plain NEON micro-kernels;
//! - this file: the public API, run-time kernel selection and the blocked,
//!   rayon-parallel driver that is shared by all kernels.
//!
//! Integer arithmetic is exact: dot products accumulate in i32 without
//! saturation and the zero-point corrections are applied in i32 with
//! wrapping arithmetic, so the result equals the mathematical sum whenever
//! that fits in i32 — always for K ≤ 33 000 (K ≤ 65 000 when the weight zero
//! point is 0), as with ONNX Runtime's own i32 accumulators. The f32 output
//! was checked bit for bit against ONNX Runtime 1.32 (both the unfused graph
//! and its fused `DynamicQuantizeMatMul`) on MiniLM shapes.

mod pack;
mod reference;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod backward;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use self::pack::{Block, Geometry, GROUP, PANEL};
use crate::kernels::disjoint::DisjointOut;

/// An int8 weight prepacked once at load time for the SIMD kernels.
///
/// The packed layout is the same for every kernel (see `pack.rs`), so a
/// weight packed on one machine state works with whichever kernel runs.
#[derive(Clone)]
pub struct PackedI8 {
    geo: Geometry,
    blocks: Vec<Block>,
    /// `Σₖ w[k][j]` for the activation zero-point correction.
    colsum: Vec<i32>,
    scales: Vec<f32>,
    zero_point: i8,
}

impl std::fmt::Debug for PackedI8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedI8")
            .field("k", &self.geo.k)
            .field("n", &self.geo.n)
            .field("zero_point", &self.zero_point)
            .finish_non_exhaustive()
    }
}

impl PackedI8 {
    /// Packs `w_kn`, the int8 weight K×N as ONNX stores it (the
    /// `MatMulInteger` B input). `scales` has one entry per output column
    /// (broadcast a per-tensor scale); `zero_point` is the weight zero point
    /// (0 for ONNX Runtime's QInt8 weights, but any value is supported).
    pub fn new(w_kn: &[i8], k: usize, n: usize, scales: &[f32], zero_point: i8) -> PackedI8 {
        assert_eq!(w_kn.len(), k * n, "w_kn must be k×n");
        assert_eq!(scales.len(), n, "one scale per output column");
        let geo = Geometry::new(k, n);
        let (blocks, colsum) = pack::pack(w_kn, geo);
        PackedI8 { geo, blocks, colsum, scales: scales.to_vec(), zero_point }
    }

    /// Depth K (rows of the ONNX weight).
    pub fn k(&self) -> usize {
        self.geo.k
    }

    /// Output columns N.
    pub fn n(&self) -> usize {
        self.geo.n
    }

    /// Per-output-column scales (length N).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The weight zero point.
    pub fn zero_point(&self) -> i8 {
        self.zero_point
    }

    /// The weight back as f32, K×N: `(w - zero_point) · scale[n]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let zp = i32::from(self.zero_point);
        let n = self.geo.n;
        let mut w: Vec<f32> = self.weights_kn().into_iter().map(|v| (i32::from(v) - zp) as f32).collect();
        for row in w.chunks_exact_mut(n.max(1)) {
            for (v, &s) in row.iter_mut().zip(&self.scales) {
                *v *= s;
            }
        }
        w
    }

    /// The weight back as i8, K×N (for writing ONNX).
    pub fn weights_kn(&self) -> Vec<i8> {
        pack::unpack(&self.blocks, self.geo)
    }
}

/// One call of a micro-kernel: `rows ≤ MR` activation rows against
/// `panels ≤ NRP` weight panels over `groups` k-groups.
pub(crate) struct Tile<'a> {
    /// Activations from row 0, group 0 of the tile; row `r` starts at `r·ldx`.
    pub(crate) x: &'a [u8],
    pub(crate) ldx: usize,
    pub(crate) groups: usize,
    /// Blocks from panel 0, group 0 of the tile; panel `q` starts at `q·wstride`.
    pub(crate) w: &'a [Block],
    pub(crate) wstride: usize,
    /// i32 accumulators from row 0, column 0 of the tile; row stride `ldacc`.
    pub(crate) acc: &'a mut [i32],
    pub(crate) ldacc: usize,
    /// Add to `acc` (later k-blocks) instead of overwriting it (first one).
    pub(crate) accumulate: bool,
}

impl Tile<'_> {
    /// The bounds every micro-kernel relies on for its unchecked loads and
    /// stores. Checked once per micro-tile, which costs nothing measurable.
    #[inline(always)]
    pub(crate) fn check(&self, rows: usize, panels: usize) {
        assert!(rows >= 1 && panels >= 1);
        assert!(self.ldx >= self.groups * GROUP);
        assert!(self.x.len() >= (rows - 1) * self.ldx + self.groups * GROUP);
        assert!(self.wstride >= self.groups);
        assert!(self.w.len() >= (panels - 1) * self.wstride + self.groups);
        assert!(self.ldacc >= panels * PANEL);
        assert!(self.acc.len() >= (rows - 1) * self.ldacc + panels * PANEL);
    }
}

/// What differs between kernels. The blocking, threading and corrections are
/// shared in [`run`].
pub(crate) trait Kernel {
    /// Rows of activations per micro-tile.
    const MR: usize;
    /// Panels (16 columns each) per micro-tile.
    const NRP: usize;
    /// The kernel computes Σ (x + X_OFFSET)·w instead of Σ x·w. NEON `sdot`
    /// multiplies signed bytes only, so it feeds `x ^ 0x80 = x - 128`
    /// (X_OFFSET = -128); the others use 0.
    const X_OFFSET: i32;

    /// Raw (uncorrected) dot products of one micro-tile into `t.acc`.
    ///
    /// # Safety
    /// The CPU must support the kernel's target features.
    unsafe fn tile(rows: usize, panels: usize, t: Tile<'_>);

    /// Finishes one micro-tile: `out = ((acc + col_corr + row_corr) as f32
    /// · cs) (+ bias)`, see [`epilogue_body`].
    ///
    /// # Safety
    /// The CPU must support the kernel's target features, and no other
    /// thread may access the micro-tile's output region concurrently.
    unsafe fn epilogue(e: Epilogue<'_>);

    /// Called on the worker thread before a task's first micro-tile (AMX
    /// loads its tile configuration here).
    ///
    /// # Safety
    /// The CPU must support the kernel; must be paired with `end_task`.
    unsafe fn begin_task() {}

    /// Called after a task's last micro-tile.
    ///
    /// # Safety
    /// Only after `begin_task` on the same thread.
    unsafe fn end_task() {}
}

/// The output region of one micro-tile and what is needed to finish it.
pub(crate) struct Epilogue<'a> {
    /// i32 results for the region's row 0, column 0; row stride `ldacc`.
    pub(crate) acc: &'a [i32],
    pub(crate) ldacc: usize,
    /// First output row and number of rows.
    pub(crate) row0: usize,
    pub(crate) rows: usize,
    /// First output column and number of (valid, < n) columns.
    pub(crate) col0: usize,
    pub(crate) cols: usize,
    pub(crate) ctx: &'a Prepared<'a>,
    /// Written, never read: it may start uninitialized (see [`gemm_u8i8_new`]).
    pub(crate) out: &'a DisjointOut<'a, MaybeUninit<f32>>,
}

/// The shared epilogue, compiled by each kernel under its target features.
/// Order of operations mirrors ONNX Runtime: the i32 result is converted,
/// multiplied by the *precomputed* `x_scale · w_scale`, then the bias is
/// added (two roundings, never fused into an FMA). Without a bias nothing is
/// added, so a `-0.0` survives exactly as it would without an Add node.
///
/// # Safety
/// No other thread may access the output region `e` describes.
#[inline(always)]
pub(crate) unsafe fn epilogue_body(e: Epilogue<'_>) {
    let p = e.ctx;
    let (c0, n) = (e.col0, e.cols);
    let (col_corr, cs) = (&p.col_corr[c0..c0 + n], &p.cs[c0..c0 + n]);
    let bias = p.bias.map(|b| &b[c0..c0 + n]);
    for r in 0..e.rows {
        let acc = &e.acc[r * e.ldacc..][..n];
        let row_corr = p.row_corr[e.row0 + r];
        // SAFETY: the caller owns this region exclusively; `range` checks
        // that it lies inside the output.
        let out = unsafe { e.out.range((e.row0 + r) * p.geo.n + c0, n) };
        match bias {
            Some(b) => {
                for j in 0..n {
                    let v = acc[j].wrapping_add(col_corr[j]).wrapping_add(row_corr);
                    out[j].write(v as f32 * cs[j] + b[j]);
                }
            }
            None => {
                for j in 0..n {
                    let v = acc[j].wrapping_add(col_corr[j]).wrapping_add(row_corr);
                    out[j].write(v as f32 * cs[j]);
                }
            }
        }
    }
}

/// The kernels this crate has, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelKind {
    Amx,
    Avx512Vnni,
    AvxVnni,
    Avx2,
    NeonDotprod,
    Neon,
    Portable,
}

impl KernelKind {
    const ALL: [KernelKind; 7] = [
        KernelKind::Amx,
        KernelKind::Avx512Vnni,
        KernelKind::AvxVnni,
        KernelKind::Avx2,
        KernelKind::NeonDotprod,
        KernelKind::Neon,
        KernelKind::Portable,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            KernelKind::Amx => "amx",
            KernelKind::Avx512Vnni => "avx512vnni",
            KernelKind::AvxVnni => "avxvnni",
            KernelKind::Avx2 => "avx2",
            KernelKind::NeonDotprod => "neon-dotprod",
            KernelKind::Neon => "neon",
            KernelKind::Portable => "portable",
        }
    }

    /// Whether this kernel is compiled for this target and the CPU has the
    /// features it needs.
    pub(crate) fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            KernelKind::Amx => amx::amx_available(),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512Vnni => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            KernelKind::AvxVnni => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "aarch64")]
            KernelKind::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "aarch64")]
            KernelKind::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            KernelKind::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every kernel usable on this machine, best first.
    pub(crate) fn available() -> Vec<KernelKind> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }
}

/// The best kernel for this CPU, detected once.
fn selected() -> KernelKind {
    static SELECTED: OnceLock<KernelKind> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        KernelKind::available().into_iter().next().expect("the portable kernel is always available")
    })
}

/// Which int8 kernel was selected at run time: "amx", "avx512vnni",
/// "avxvnni", "avx2", "neon-dotprod", "neon" or "portable".
pub fn selected_kernel() -> &'static str {
    selected().name()
}

/// The input gradient `dx[m×k] = dy[m×n] · Wᵀ` of the dequantized weight, with
/// the integer weight used as it is (exact in bf16) and `dy · scale` rounded to
/// bf16, on AMX-BF16 or AVX-512 BF16 (`backward.rs`). `None` where the CPU has
/// neither: the caller then multiplies by the dequantized f32 weight.
pub(crate) fn input_grad_bf16(w: &PackedI8, dy: &[f32], m: usize) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    return backward::input_grad(w, dy, m);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, dy, m);
        None
    }
}

/// `y[m×n] = ((xq - x_zp) · (W - w_zp)) · (x_scale · scale[n]) (+ bias[n])`,
/// row-major, exactly as ONNX Runtime evaluates
/// `DynamicQuantizeLinear → MatMulInteger → Cast → Mul → Add`: exact i32
/// accumulation, then `(acc as f32) · (x_scale · scale[n])`, then `+ bias`.
///
/// `xq` is m×K (K = `w.k()`), `out` is m×N. Runs on the current rayon pool
/// when the problem is large enough.
pub fn gemm_u8i8(xq: &[u8], m: usize, x_scale: f32, x_zp: u8, w: &PackedI8, bias: Option<&[f32]>, out: &mut [f32]) {
    gemm_u8i8_with(selected(), xq, m, x_scale, x_zp, w, bias, out);
}

/// [`gemm_u8i8`] into a new m×N vector, which is not zeroed first: the
/// product writes every element (a pass over the output saved, 6 MB for
/// MiniLM's feed-forward layer at batch 16 × 64).
pub fn gemm_u8i8_new(xq: &[u8], m: usize, x_scale: f32, x_zp: u8, w: &PackedI8, bias: Option<&[f32]>) -> Vec<f32> {
    let len = m * w.n();
    let mut out: Vec<f32> = Vec::with_capacity(len);
    gemm_uninit(selected(), xq, m, x_scale, x_zp, w, bias, &mut out.spare_capacity_mut()[..len]);
    // SAFETY: `gemm_uninit` writes all m×N elements it is given (`run` covers every row
    // and column with an epilogue; m = 0 or N = 0 leaves nothing to write).
    unsafe { out.set_len(len) };
    out
}

/// An initialized slice seen as one that is only written: sound, since nothing can write an
/// uninitialized value through a `MaybeUninit<f32>` the kernels only `write`.
fn as_uninit(out: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same size and alignment; see above for why no uninitialized value gets in.
    unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// [`gemm_u8i8`] with an explicit kernel (tests and benchmarks).
///
/// Panics if `kernel` is not available on this CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_u8i8_with(
    kernel: KernelKind,
    xq: &[u8],
    m: usize,
    x_scale: f32,
    x_zp: u8,
    w: &PackedI8,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    gemm_uninit(kernel, xq, m, x_scale, x_zp, w, bias, as_uninit(out));
}

/// The product into `out`, every element of which it writes.
#[allow(clippy::too_many_arguments)]
fn gemm_uninit(
    kernel: KernelKind,
    xq: &[u8],
    m: usize,
    x_scale: f32,
    x_zp: u8,
    w: &PackedI8,
    bias: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
) {
    assert_eq!(xq.len(), m * w.k(), "xq must be m×k");
    assert_eq!(out.len(), m * w.n(), "out must be m×n");
    if let Some(b) = bias {
        assert_eq!(b.len(), w.n(), "bias must have n entries");
    }
    assert!(kernel.is_available(), "int8 kernel {} is not available on this CPU", kernel.name());
    if m == 0 || w.n() == 0 {
        return;
    }
    let p = Problem { xq, m, x_scale, x_zp, w, bias };
    match kernel {
        #[cfg(target_arch = "x86_64")]
        KernelKind::Amx => run::<amx::Amx>(p, out),
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx512Vnni => run::<x86::Avx512Vnni>(p, out),
        #[cfg(target_arch = "x86_64")]
        KernelKind::AvxVnni => run::<x86::AvxVnni>(p, out),
        #[cfg(target_arch = "x86_64")]
        KernelKind::Avx2 => run::<x86::Avx2>(p, out),
        #[cfg(target_arch = "aarch64")]
        KernelKind::NeonDotprod => run::<neon::NeonDotprod>(p, out),
        #[cfg(target_arch = "aarch64")]
        KernelKind::Neon => run::<neon::Neon>(p, out),
        _ => run::<reference::Portable>(p, out),
    }
}

struct Problem<'a> {
    xq: &'a [u8],
    m: usize,
    x_scale: f32,
    x_zp: u8,
    w: &'a PackedI8,
    bias: Option<&'a [f32]>,
}

/// k-groups per cache block: 128 groups = 512 k, so one block of an
/// AVX-512 micro-tile's weights (3 panels) is 24 KiB and stays in L1 while
/// all the rows of a task stream past it.
pub(crate) const KC: usize = 128;
/// Rows of a task (upper bound): the task's activations for one k-block
/// (≤ 64 KiB) stay in L2 across its column panels.
const MC_MAX: usize = 128;
/// Panels of a task (upper bound): 192 columns, keeping the task's i32
/// accumulators (≤ 96 KiB) in L2.
const NC_MAX_PANELS: usize = 12;
/// Below this many multiply-adds the whole GEMM takes a few microseconds:
/// not worth waking other threads.
const PAR_THRESHOLD_MACS: usize = 1 << 20;

/// Everything a task needs, computed once per call.
pub(crate) struct Prepared<'a> {
    x: &'a [u8],
    ldx: usize,
    geo: Geometry,
    blocks: &'a [Block],
    row_corr: Vec<i32>,
    col_corr: Vec<i32>,
    cs: Vec<f32>,
    bias: Option<&'a [f32]>,
}

/// Writes every element of `out` (m×n).
fn run<K: Kernel>(p: Problem<'_>, out: &mut [MaybeUninit<f32>]) {
    let geo = p.w.geo;
    let (m, n, k) = (p.m, geo.n, geo.k);
    // Kernels read whole 4-byte groups; when K is not a multiple of 4 copy
    // the rows into a zero-padded buffer (the padded weights are zero, so
    // the padding contributes nothing). Real models never take this path.
    let kp = geo.groups * GROUP;
    let padded: Vec<u8>;
    let x: &[u8] = if kp == k {
        p.xq
    } else {
        let mut buf = vec![0u8; m * kp];
        for (dst, src) in buf.chunks_exact_mut(kp).zip(p.xq.chunks_exact(k.max(1))) {
            dst[..k].copy_from_slice(src);
        }
        padded = buf;
        &padded
    };

    // Σ (x - xz)(w - wz) = Σ x·w - xz·Σw - wz·Σx + K·xz·wz, and the kernel
    // computes Σ (x + X_OFFSET)·w = Σ x·w + X_OFFSET·Σw. All in wrapping i32:
    // every intermediate is then congruent mod 2³² to the exact value, so the
    // final sum is exact whenever it fits in i32. (`k as i32` wraps the same
    // way for absurd K.)
    let xz = i32::from(p.x_zp);
    let wz = i32::from(p.w.zero_point);
    let kz = (k as i32).wrapping_mul(xz).wrapping_mul(wz);
    let row_corr: Vec<i32> = if wz == 0 || k == 0 {
        vec![0; m]
    } else {
        p.xq.chunks_exact(k)
            .map(|row| {
                let s = row.iter().fold(0i32, |a, &v| a.wrapping_add(i32::from(v)));
                s.wrapping_mul(wz).wrapping_neg()
            })
            .collect()
    };
    let col_corr: Vec<i32> = p.w.colsum.iter().map(|&s| kz.wrapping_sub((xz + K::X_OFFSET).wrapping_mul(s))).collect();
    let cs: Vec<f32> = p.w.scales.iter().map(|&s| p.x_scale * s).collect();
    let prep = Prepared { x, ldx: kp, geo, blocks: &p.w.blocks, row_corr, col_corr, cs, bias: p.bias };

    // Task grid: tiles of whole micro-tiles, small enough to stay cache
    // resident, and (when threading) at least two tasks per thread so an
    // unlucky slow core does not hold everyone up.
    let threads = rayon::current_num_threads();
    let parallel = threads > 1 && m.saturating_mul(n).saturating_mul(k) >= PAR_THRESHOLD_MACS;
    let row_blocks = m.div_ceil(K::MR);
    let col_blocks = geo.panels.div_ceil(K::NRP);
    let mut mc = row_blocks.min((MC_MAX / K::MR).max(1));
    let mut nc = col_blocks.min((NC_MAX_PANELS / K::NRP).max(1));
    let count = |mc: usize, nc: usize| row_blocks.div_ceil(mc) * col_blocks.div_ceil(nc);
    if parallel {
        while count(mc, nc) < 2 * threads {
            if mc > 1 {
                mc = mc.div_ceil(2);
            } else if nc > 1 {
                nc = nc.div_ceil(2);
            } else {
                break;
            }
        }
    }
    let (row_tiles, col_tiles) = (row_blocks.div_ceil(mc), col_blocks.div_ceil(nc));
    let (rows_per_task, panels_per_task) = (mc * K::MR, nc * K::NRP);
    let outp = DisjointOut::new(out);
    // Each worker reuses one accumulator buffer across its tasks.
    let task = |acc: &mut Vec<i32>, t: usize| {
        let (ti, tj) = (t / col_tiles, t % col_tiles);
        let r0 = ti * rows_per_task;
        let r1 = (r0 + rows_per_task).min(m);
        let p0 = tj * panels_per_task;
        let p1 = (p0 + panels_per_task).min(geo.panels);
        // SAFETY: tasks partition the m×n output into disjoint row ranges ×
        // column ranges.
        unsafe { run_task::<K>(&prep, acc, r0, r1, p0, p1, &outp) };
    };
    let tasks = row_tiles * col_tiles;
    if parallel {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each_init(Vec::new, task);
    } else {
        let mut acc = Vec::new();
        (0..tasks).for_each(|t| task(&mut acc, t));
    }
}

/// Computes output rows `r0..r1` × panels `p0..p1`.
///
/// # Safety
/// No other task may write that part of the output concurrently, and the
/// kernel must be available on this CPU.
unsafe fn run_task<K: Kernel>(
    p: &Prepared<'_>,
    acc: &mut Vec<i32>,
    r0: usize,
    r1: usize,
    p0: usize,
    p1: usize,
    out: &DisjointOut<'_, MaybeUninit<f32>>,
) {
    let geo = p.geo;
    let ldacc = (p1 - p0) * PANEL;
    // The first k-block overwrites every accumulator of the task (its
    // micro-tiles cover all rows × panels), so stale values from the previous
    // task need no clearing, except when there is no k-block at all (K = 0).
    acc.resize((r1 - r0) * ldacc, 0);
    let acc = &mut acc[..(r1 - r0) * ldacc];
    if geo.groups == 0 {
        acc.fill(0);
    }
    // k-blocks outermost, then panel groups, then rows: one k-block of one
    // panel group's weights stays in L1 while every row block of the task
    // streams past it; the rows' activations for that k-block stay in L2.
    // In the last k-block each micro-tile is finished while its accumulators
    // are still in L1, but only after the *next* micro-tile ran: reading
    // data right after AMX tile stores stalls until they commit (measured
    // at several hundred cycles per micro-tile), and one micro-tile of
    // distance hides that for every kernel.
    let mut pending: Option<(usize, usize, usize, usize, usize)> = None;
    let finish = |acc: &[i32], (at, row0, rows, col0, cols): (usize, usize, usize, usize, usize)| {
        let e = Epilogue { acc: &acc[at..], ldacc, row0, rows, col0, cols, ctx: p, out };
        // SAFETY: the region lies inside this task's rows × columns, which
        // the caller guarantees are ours alone; the kernel is available.
        unsafe { K::epilogue(e) };
    };
    // SAFETY: the caller selected a kernel available on this CPU; paired
    // with `end_task` below.
    unsafe { K::begin_task() };
    for kb in (0..geo.groups).step_by(KC) {
        let groups = KC.min(geo.groups - kb);
        let last = kb + groups == geo.groups;
        for q in (p0..p1).step_by(K::NRP) {
            let panels = K::NRP.min(p1 - q);
            for r in (r0..r1).step_by(K::MR) {
                let rows = K::MR.min(r1 - r);
                let at = (r - r0) * ldacc + (q - p0) * PANEL;
                let t = Tile {
                    x: &p.x[r * p.ldx + kb * GROUP..],
                    ldx: p.ldx,
                    groups,
                    w: &p.blocks[geo.block(q, kb)..],
                    wstride: geo.groups,
                    acc: &mut acc[at..],
                    ldacc,
                    accumulate: kb > 0,
                };
                // SAFETY: the caller selected a kernel available on this CPU;
                // the slice bounds are checked by `Tile::check` inside.
                unsafe { K::tile(rows, panels, t) };
                if last {
                    if let Some(prev) = pending.take() {
                        finish(acc, prev);
                    }
                    let col0 = q * PANEL;
                    pending = Some((at, r, rows, col0, ((q + panels) * PANEL).min(geo.n) - col0));
                }
            }
        }
    }
    // SAFETY: pairs the `begin_task` above, on this thread.
    unsafe { K::end_task() };
    if let Some(prev) = pending {
        finish(acc, prev);
    }
    if geo.groups == 0 {
        // K = 0: no k-block ran, but the zeroed accumulators still go
        // through the epilogue (zero-point terms vanish, the bias remains).
        let (col0, cols) = (p0 * PANEL, (p1 * PANEL).min(geo.n) - p0 * PANEL);
        finish(acc, (0, r0, r1 - r0, col0, cols));
    }
}
