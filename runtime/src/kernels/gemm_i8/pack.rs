//! The packed int8 weight layout shared by every kernel.
//!
//! The weight (K×N, row-major as ONNX stores it) is cut into *panels* of
//! [`PANEL`] = 16 output columns. Inside a panel, K is cut into *groups* of
//! [`GROUP`] = 4 consecutive k, and one group of one panel is a 64-byte
//! [`Block`]: column `c`'s four weights `w[4g..4g+4][c]` sit at bytes
//! `4c..4c+4`. Blocks are stored panel-major (all groups of panel 0, then
//! panel 1, ...). Padding columns and padding k are zero.
//!
//! Why this shape: one block is exactly what `vpdpbusd zmm` (AVX-512 VNNI)
//! consumes against a broadcast 4-byte group of one activation row; it is two
//! `ymm` for AVX-VNNI, and four `int8x16` registers for NEON `sdot`, each of
//! whose 32-bit lanes again holds one column's 4 k. So a single layout serves
//! all kernels, and a `PackedI8` never has to be repacked when a different
//! kernel is selected (tests run every kernel on the same packing).

/// Output columns per panel.
pub(crate) const PANEL: usize = 16;
/// Consecutive k per group (the depth of one dot-product instruction).
pub(crate) const GROUP: usize = 4;

/// One group of one panel: 16 columns × 4 k, 64-byte aligned so that every
/// SIMD load of a block (or of a 16/32-byte part of it) is aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Block(pub(crate) [i8; PANEL * GROUP]);

impl Block {
    pub(crate) const ZERO: Block = Block([0; PANEL * GROUP]);
}

/// Geometry of a packed weight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub(crate) k: usize,
    pub(crate) n: usize,
    /// `ceil(k / GROUP)`.
    pub(crate) groups: usize,
    /// `ceil(n / PANEL)`.
    pub(crate) panels: usize,
}

impl Geometry {
    pub(crate) fn new(k: usize, n: usize) -> Self {
        Geometry { k, n, groups: k.div_ceil(GROUP), panels: n.div_ceil(PANEL) }
    }

    /// Index of the block holding group `g` of panel `p`.
    #[inline(always)]
    pub(crate) fn block(&self, p: usize, g: usize) -> usize {
        p * self.groups + g
    }
}

/// Packs a K×N row-major weight; returns the blocks and the exact per-column
/// sums `Σₖ w[k][j]` (used for the activation zero-point correction).
pub(crate) fn pack(w_kn: &[i8], geo: Geometry) -> (Vec<Block>, Vec<i32>) {
    let mut blocks = vec![Block::ZERO; geo.panels * geo.groups];
    let mut colsum = vec![0i32; geo.n];
    for (kk, row) in w_kn.chunks_exact(geo.n.max(1)).take(geo.k).enumerate() {
        let (g, b) = (kk / GROUP, kk % GROUP);
        for (j, &v) in row.iter().enumerate() {
            let (p, c) = (j / PANEL, j % PANEL);
            blocks[geo.block(p, g)].0[c * GROUP + b] = v;
            colsum[j] += i32::from(v);
        }
    }
    (blocks, colsum)
}

/// Inverse of [`pack`]: the K×N row-major weight.
pub(crate) fn unpack(blocks: &[Block], geo: Geometry) -> Vec<i8> {
    let mut w = vec![0i8; geo.k * geo.n];
    for kk in 0..geo.k {
        let (g, b) = (kk / GROUP, kk % GROUP);
        for j in 0..geo.n {
            let (p, c) = (j / PANEL, j % PANEL);
            w[kk * geo.n + j] = blocks[geo.block(p, g)].0[c * GROUP + b];
        }
    }
    w
}
