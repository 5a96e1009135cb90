//! The input gradient of an int8 `Linear`, `dx = dy · Wᵀ`, on AMX-BF16 or AVX-512 BF16.
//!
//! A frozen int8 weight sends the gradient on through its dequantized value
//! `W[k][n] = (q[k][n] - zp) · s[n]`, so `dx[m][k] = Σₙ (dy[m][n] · s[n]) · (q[k][n] - zp)`.
//! The integers `q - zp` lie in [-255, 255] and are exact in bf16, so the
//! weight loses nothing; only `dy · s` is rounded to bf16 (8 significant
//! bits, round to nearest even), and the products are summed in f32 by
//! `tdpbf16ps` (AMX) or `vdpbf16ps` (AVX-512 BF16: Zen 4 and later, Cooper
//! Lake). That is the rounding PyTorch's bf16 autocast applies to the same
//! product, on a weight that is itself exact.
//!
//! Layout, per call (nothing is cached, so a step holds no second copy of the
//! weights):
//! - A: `dy · s` as bf16, row-major, rows padded to 32 and depth (N) to 32;
//! - B: `(q - zp)ᵀ` in panels of 16 output columns (k); inside a panel, row
//!   `r` of the tile holds, for each of the 16 columns, depth `2r` and
//!   `2r + 1` (the pairs `tdpbf16ps` multiplies, and one `vdpbf16ps` operand);
//! - C: 32 × 32 blocks (2 × 2 tiles, or four 8 × 32 zmm micro-tiles) written
//!   straight into `dx`, or into a padded buffer when the shape is not a
//!   multiple of 32.
//!
//! Rows are split across the current rayon pool in blocks of 32; every output
//! element is one tile's (or accumulator's) sum in a fixed order, so the result
//! does not depend on the thread count. Against the dequantized f32 weight
//! times `dy` on faer, the AVX-512 BF16 path made MiniLM's int8 LoRA step 30%
//! faster on a 2-core Zen machine (no f32 copy of each weight per call, and
//! about 10% more GFLOP/s): `cargo bench -p kilotune-bench --bench train`.

use std::arch::asm;

use rayon::prelude::*;

use super::amx::{amx_bf16_available, CONFIG};
use super::pack::{GROUP, PANEL};
use super::PackedI8;

/// Rows and columns of one micro-tile (2 × 2 tiles of 16).
const BLOCK: usize = 32;
/// bf16 values of depth per tile step (64 bytes of one A tile row).
const STEP: usize = 32;

/// Which instructions multiply the bf16 operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// AMX tiles (`tdpbf16ps`), 32 × 32 blocks.
    Amx,
    /// AVX-512 BF16 (`vdpbf16ps`): 8 rows × 32 columns of zmm accumulators (Zen 4 and later,
    /// Cooper Lake, and Sapphire Rapids without AMX permission).
    Avx512Bf16,
}

impl Path {
    /// The best path this CPU (and process) can use.
    pub(crate) fn best() -> Option<Path> {
        if amx_bf16_available() {
            Some(Path::Amx)
        } else if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512bf16") {
            Some(Path::Avx512Bf16)
        } else {
            None
        }
    }
}

/// `dx[m × k] = dy[m × n] · Wᵀ` for the int8 weight `w` (K × N), or `None`
/// when this CPU has neither AMX-BF16 nor AVX-512 BF16 (the caller then uses the
/// dequantized f32 weight).
pub(crate) fn input_grad(w: &PackedI8, dy: &[f32], m: usize) -> Option<Vec<f32>> {
    Path::best().and_then(|p| input_grad_with(p, w, dy, m))
}

/// [`input_grad`] on `path`, which must be available on this CPU.
pub(crate) fn input_grad_with(path: Path, w: &PackedI8, dy: &[f32], m: usize) -> Option<Vec<f32>> {
    let (k, n) = (w.k(), w.n());
    if m == 0 || k == 0 || n == 0 {
        return None;
    }
    assert_eq!(dy.len(), m * n, "dy must be m×n");
    let (mp, np, kp) = (m.next_multiple_of(BLOCK), n.next_multiple_of(STEP), k.next_multiple_of(BLOCK));
    let a = pack_a(dy, m, n, w.scales(), mp, np);
    let b = pack_b(w, np, kp);
    let direct = mp == m && kp == k;
    let len = if direct { m * k } else { mp * kp };
    // Every element is written by a tile store (whole 32 × 32 blocks of the padded
    // shape), so the buffer is not zeroed first.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(BLOCK * kp).zip(a.par_chunks(BLOCK * np)).for_each(|(c, a)| {
        let c_ptr = c.as_mut_ptr().cast::<f32>();
        match path {
            // SAFETY: `Path::best` found AMX-BF16 usable by this process (tile data
            // permission granted); the buffers have the padded shapes `rows_32` reads and
            // writes (see its contract); `c` is only written.
            Path::Amx => unsafe { rows_32(a, np, &b, kp, c_ptr, c.len()) },
            // SAFETY: `Path::best` found AVX-512F/BW/BF16; the same shapes as above.
            Path::Avx512Bf16 => unsafe { rows_32_dp(a, np, &b, kp, c_ptr, c.len()) },
        }
    });
    // SAFETY: the blocks above wrote all `len` elements (`len` is a whole number
    // of 32-row blocks, each written across all `kp` columns).
    unsafe { out.set_len(len) };
    if direct {
        return Some(out);
    }
    let mut dx = vec![0f32; m * k];
    for (d, s) in dx.chunks_exact_mut(k).zip(out.chunks_exact(kp)) {
        d.copy_from_slice(&s[..k]);
    }
    Some(dx)
}

/// f32 → bf16, rounding to nearest even; a NaN stays a (quiet) NaN. Written
/// without a branch, so the row loop below vectorizes.
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) as u16) | 0x0040;
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }
}

crate::kernels::simd::multiversion! {
    /// `dst[j] = bf16(src[j] · scales[j])`.
    fn scaled_row(src: &[f32], scales: &[f32], dst: &mut [u16]) {
        for ((d, &g), &s) in dst.iter_mut().zip(src).zip(scales) {
            *d = bf16(g * s);
        }
    }
}

/// `dy · s` as bf16, `mp × np`, zero-padded.
fn pack_a(dy: &[f32], m: usize, n: usize, scales: &[f32], mp: usize, np: usize) -> Vec<u16> {
    let mut a = vec![0u16; mp * np];
    a.par_chunks_mut(BLOCK * np).enumerate().for_each(|(blk, rows)| {
        for (r, dst) in rows.chunks_exact_mut(np).enumerate() {
            let row = blk * BLOCK + r;
            if row >= m {
                break;
            }
            scaled_row(&dy[row * n..(row + 1) * n], scales, dst);
        }
    });
    a
}

/// `(q - zp)ᵀ` as bf16 pairs: `kp / 16` panels of `np / 2` tile rows of 64
/// bytes (32 bf16: 16 columns × 2 depths), zero-padded.
///
/// Read block by block from the forward packing: block (n-panel `pn`, k-group
/// `g`) holds `q[4g + l][16pn + c]` at byte `4c + l`, which goes to column
/// `(4g + l) mod 16` of k-panel `g / 4`, tile row `(16pn + c) / 2`, half
/// `c mod 2`. Padding k and n hold `q = 0`; their products are discarded or
/// multiply zeros of A.
fn pack_b(w: &PackedI8, np: usize, kp: usize) -> Vec<u16> {
    let (geo, zp) = (w.geo, i32::from(w.zero_point));
    // bf16 of q - zp for every byte q: |q - zp| ≤ 255, exact.
    let table: [u16; 256] = std::array::from_fn(|i| bf16((i32::from(i as u8 as i8) - zp) as f32));
    let wide = std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw");
    let panel_len = np * PANEL;
    let mut b = vec![0u16; kp / PANEL * panel_len];
    b.par_chunks_mut(panel_len).enumerate().for_each(|(kpanel, panel)| {
        for gi in 0..PANEL / GROUP {
            let g = kpanel * (PANEL / GROUP) + gi;
            if g >= geo.groups {
                break;
            }
            for pn in 0..geo.panels {
                let block = &w.blocks[geo.block(pn, g)].0;
                let rows = &mut panel[pn * (PANEL / 2) * 2 * PANEL..][..(PANEL / 2) * 2 * PANEL];
                if wide {
                    // SAFETY: AVX-512F and BW were detected above; `rows` has the 8 tile rows
                    // of 32 bf16 the function writes.
                    unsafe { block_rows_avx512(block, zp, rows, gi) };
                } else {
                    block_rows(block, &table, rows, gi);
                }
            }
        }
    });
    b
}

/// One forward block (16 columns n × 4 depths k of group `gi` in its k-panel) into the 8
/// tile rows it feeds: `rows[(c / 2) · 32 + (4·gi + l) · 2 + c mod 2] = bf16(q[4c + l] - zp)`,
/// by table lookup.
#[inline(always)]
fn block_rows(block: &[i8; PANEL * GROUP], table: &[u16; 256], rows: &mut [u16], gi: usize) {
    for c in 0..PANEL {
        let row = &mut rows[(c / 2) * 2 * PANEL..][..2 * PANEL];
        for l in 0..GROUP {
            row[(gi * GROUP + l) * 2 + c % 2] = table[block[c * GROUP + l] as u8 as usize];
        }
    }
}

/// [`block_rows`] with AVX-512: the bytes of each column pair are interleaved by depth with
/// one shuffle (row `c / 2` wants `q[4c + l]`, `q[4c + 4 + l]` for l = 0..4, that is bytes
/// 0, 4, 1, 5, 2, 6, 3, 7 of each 8), then widened to i32, shifted by the zero point and
/// converted to f32. `q - zp` has at most 8 significant bits, so the f32's low 16 bits are
/// zero and its high half is the exact bf16 (what the table holds).
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW; `rows` must hold at least 8 rows of 32.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn block_rows_avx512(block: &[i8; PANEL * GROUP], zp: i32, rows: &mut [u16], gi: usize) {
    use std::arch::x86_64::*;
    assert!(rows.len() >= (PANEL / 2) * 2 * PANEL && gi < PANEL / GROUP);
    // Per 128-bit lane (two column pairs): bytes 0,4,1,5,2,6,3,7 of each half.
    const LANE: [i8; 16] = [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15];
    let perm: [i8; 64] = std::array::from_fn(|i| LANE[i % 16]);
    // SAFETY: both reads are of 64 bytes from 64-byte arrays.
    let (v, p) = unsafe { (_mm512_loadu_si512(block.as_ptr().cast()), _mm512_loadu_si512(perm.as_ptr().cast())) };
    let v = _mm512_shuffle_epi8(v, p);
    let zpv = _mm512_set1_epi32(zp);
    let lanes = [_mm512_castsi512_si128(v), _mm512_extracti32x4_epi32::<1>(v), _mm512_extracti32x4_epi32::<2>(v), _mm512_extracti32x4_epi32::<3>(v)];
    for (j, lane) in lanes.into_iter().enumerate() {
        let f = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepi8_epi32(lane), zpv));
        let h = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(f)));
        let at = |row: usize| row * 2 * PANEL + gi * 2 * GROUP;
        // SAFETY: rows 2j and 2j + 1 < 8, and each store writes 8 u16 at `gi · 8 ≤ 24` of a
        // 32-entry row: inside `rows` (asserted above).
        unsafe {
            _mm_storeu_si128(rows.as_mut_ptr().add(at(2 * j)).cast(), _mm256_castsi256_si128(h));
            _mm_storeu_si128(rows.as_mut_ptr().add(at(2 * j + 1)).cast(), _mm256_extracti128_si256::<1>(h));
        }
    }
}

/// One block of 32 rows: `c[32 × kp] = a[32 × np] · b`, all column blocks.
///
/// # Safety
/// AMX-BF16 must be usable by this process. `a` holds 32 rows of `np` bf16,
/// `b` is [`pack_b`]'s layout for `np × kp`, `c` points to `c_len ≥ 32 · kp`
/// writable f32 (32 rows of `kp`, all written, none read); `np` and `kp` are
/// multiples of 32.
unsafe fn rows_32(a: &[u16], np: usize, b: &[u16], kp: usize, c: *mut f32, c_len: usize) {
    assert!(np.is_multiple_of(STEP) && kp.is_multiple_of(BLOCK));
    assert!(a.len() >= BLOCK * np && c_len >= BLOCK * kp && b.len() >= kp / PANEL * np * PANEL);
    let (lda, ldc) = (np * 2, kp * 4); // row strides in bytes
    let panel = np * PANEL; // u16 per B panel
    let (a, b) = (a.as_ptr(), b.as_ptr());
    // SAFETY (all asm below): the configuration gives 8 tiles of 16 rows × 64
    // bytes. With the asserts above: A tiles read rows < 32 at bf16 offsets
    // [32s, 32s + 32) ⊂ [0, np); B tiles read 16 rows of 64 bytes from
    // offset (panel q) + 16·32s, inside panel q (np/2 rows); C tiles write
    // rows < 32, columns [32j, 32j + 32) ⊂ [0, kp). Compiled code never
    // touches tile registers, so tile state carries between the statements.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        for j in 0..kp / BLOCK {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            let (b0, b1) = (b.add(2 * j * panel), b.add((2 * j + 1) * panel));
            for s in 0..np / STEP {
                asm!(
                    "tileloadd tmm4, [{a0} + {la}*1]",
                    "tileloadd tmm6, [{b0} + {lb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {lb}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {la}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(s * STEP),
                    a1 = in(reg) a.add(16 * np + s * STEP),
                    b0 = in(reg) b0.add(s * STEP * PANEL),
                    b1 = in(reg) b1.add(s * STEP * PANEL),
                    la = in(reg) lda,
                    lb = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            let cj = c.add(j * BLOCK);
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{c2} + {s}*1], tmm2",
                "tilestored [{c3} + {s}*1], tmm3",
                c0 = in(reg) cj,
                c1 = in(reg) cj.add(PANEL),
                c2 = in(reg) cj.add(16 * kp),
                c3 = in(reg) cj.add(16 * kp + PANEL),
                s = in(reg) ldc,
                options(nostack),
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// Rows of one `vdpbf16ps` micro-tile (its 2 × 8 zmm accumulators and 2 B registers fit the
/// 32 zmm with room for the broadcasts).
const DP_ROWS: usize = 8;

/// [`rows_32`] with AVX-512 BF16: `c[32 × kp] = a[32 × np] · b`, in micro-tiles of 8 rows ×
/// 32 columns. A B tile row of [`pack_b`] (64 bytes: 16 columns × one depth pair) is exactly
/// a `vdpbf16ps` operand, and each A depth pair is broadcast as one 32-bit value; every output
/// element sums its depth pairs in order, in f32, so the result does not depend on threads.
///
/// # Safety
/// The CPU must have AVX-512F, BW and BF16. Shapes as in [`rows_32`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn rows_32_dp(a: &[u16], np: usize, b: &[u16], kp: usize, c: *mut f32, c_len: usize) {
    use std::arch::x86_64::*;
    assert!(np.is_multiple_of(STEP) && kp.is_multiple_of(BLOCK));
    assert!(a.len() >= BLOCK * np && c_len >= BLOCK * kp && b.len() >= kp / PANEL * np * PANEL);
    // 32 bf16 as the operand type `vdpbf16ps` takes (the same 64 bytes).
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are plain 64-byte vectors; every bit pattern is valid in each.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
    let panel = np * PANEL; // u16 per B panel
    let pairs = np / 2;
    for j in 0..kp / BLOCK {
        let (b0, b1) = (&b[2 * j * panel..][..panel], &b[(2 * j + 1) * panel..][..panel]);
        for r0 in (0..BLOCK).step_by(DP_ROWS) {
            let mut acc = [[_mm512_setzero_ps(); 2]; DP_ROWS];
            for p in 0..pairs {
                // SAFETY: `p < np / 2`, so the 32 u16 at `32p` lie inside each panel of
                // `np/2 · 32` u16.
                let (v0, v1) = unsafe { (_mm512_loadu_si512(b0.as_ptr().add(32 * p).cast()), _mm512_loadu_si512(b1.as_ptr().add(32 * p).cast())) };
                let (v0, v1) = (bh(v0), bh(v1));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let row = &a[(r0 + r) * np..][..np];
                    // SAFETY: the pair `2p, 2p + 1 < np` of row `r0 + r < 32`.
                    let pair = unsafe { row.as_ptr().add(2 * p).cast::<i32>().read_unaligned() };
                    let va = bh(_mm512_set1_epi32(pair));
                    acc[0] = _mm512_dpbf16_ps(acc[0], va, v0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], va, v1);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: row `r0 + r < 32`, columns `32j .. 32j + 32 ≤ kp`: inside the
                // `32 · kp` f32 of `c` (asserted above).
                unsafe {
                    let dst = c.add((r0 + r) * kp + j * BLOCK);
                    _mm512_storeu_ps(dst, acc[0]);
                    _mm512_storeu_ps(dst.add(PANEL), acc[1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm_f32::matmul_f32_bt;

    /// The paths this CPU can run: the best one, and AVX-512 BF16 beside AMX where both exist.
    fn available_paths() -> Vec<Path> {
        let bf16 = std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512bf16");
        let mut p: Vec<Path> = Path::best().into_iter().collect();
        if bf16 && p.first() == Some(&Path::Amx) {
            p.push(Path::Avx512Bf16);
        }
        p
    }

    fn weight(k: usize, n: usize, zp: i8) -> PackedI8 {
        let q: Vec<i8> = (0..k * n).map(|i| ((i * 7919 + 13) % 256) as u8 as i8).collect();
        let s: Vec<f32> = (0..n).map(|j| 0.001 + 0.0005 * (j % 7) as f32).collect();
        PackedI8::new(&q, k, n, &s, zp)
    }

    fn grad(m: usize, n: usize) -> Vec<f32> {
        (0..m * n).map(|i| ((i * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// The exact sum of what the kernel multiplies, bf16(dy · s) · (q - zp), in f64, and
    /// the sum of the products' magnitudes (what bounds f32 rounding).
    fn reference(w: &PackedI8, dy: &[f32], m: usize) -> Vec<(f64, f64)> {
        let (k, n) = (w.k(), w.n());
        let q = w.weights_kn();
        let zp = i32::from(w.zero_point());
        let mut dx = vec![(0f64, 0f64); m * k];
        for r in 0..m {
            for kk in 0..k {
                for nn in 0..n {
                    let a = f32::from_bits(u32::from(bf16(dy[r * n + nn] * w.scales()[nn])) << 16);
                    let p = f64::from(a) * f64::from(i32::from(q[kk * n + nn]) - zp);
                    dx[r * k + kk].0 += p;
                    dx[r * k + kk].1 += p.abs();
                }
            }
        }
        dx
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_specials() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties go to even (1.0).
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(f32::INFINITY), 0x7f80);
        assert_eq!(bf16(-0.0), 0x8000);
        assert!(f32::from_bits(u32::from(bf16(f32::NAN)) << 16).is_nan());
        for v in -255..=255 {
            assert_eq!(f32::from_bits(u32::from(bf16(v as f32)) << 16), v as f32, "{v} is not exact in bf16");
        }
    }

    #[test]
    fn input_grad_matches_the_exact_sum_of_its_bf16_products() {
        let paths = available_paths();
        if paths.is_empty() {
            eprintln!("neither AMX-BF16 nor AVX-512 BF16 on this CPU: input_grad returns None");
            assert!(input_grad(&weight(64, 64, 0), &grad(32, 64), 32).is_none());
            return;
        }
        // Aligned (written in place) and ragged (padded) shapes, zero points 0 and -3,
        // on 1 and 3 threads, on every path this CPU has.
        for &(m, k, n, zp) in &[(64, 64, 96, 0i8), (37, 45, 70, -3), (1, 16, 1, 0), (96, 384, 1536, 0)] {
            let (w, dy) = (weight(k, n, zp), grad(m, n));
            let want = reference(&w, &dy, m);
            let mut runs = Vec::new();
            for (path, threads) in paths.iter().flat_map(|&p| [(p, 1), (p, 3)]) {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let got = pool.install(|| input_grad_with(path, &w, &dy, m)).unwrap();
                assert_eq!(got.len(), m * k);
                for (i, (g, (e, mag))) in got.iter().zip(&want).enumerate() {
                    // An f32 sum of n exact products: within n·ε of the sum of magnitudes,
                    // and in practice far inside it.
                    let bound = 1e-5 * mag + 1e-30;
                    assert!((f64::from(*g) - e).abs() <= bound, "{m}×{k}×{n} zp {zp}: dx[{i}] {g} vs {e}");
                }
                runs.push(got);
            }
            for pair in runs.chunks_exact(2) {
                assert_eq!(pair[0], pair[1], "{m}×{k}×{n}: the thread count changed the bits");
            }
        }
    }

    #[test]
    fn the_avx512_block_packing_equals_the_table() {
        if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")) {
            eprintln!("no AVX-512BW on this CPU: pack_b uses the table only");
            return;
        }
        for zp in [0i8, -3, 127, -128] {
            let table: [u16; 256] = std::array::from_fn(|i| bf16((i32::from(i as u8 as i8) - i32::from(zp)) as f32));
            // Every byte value in every position, over four blocks.
            for start in (0..256).step_by(64) {
                let block: [i8; 64] = std::array::from_fn(|i| ((start + i * 37) % 256) as u8 as i8);
                for gi in 0..PANEL / GROUP {
                    let (mut want, mut got) = (vec![7u16; 256], vec![7u16; 256]);
                    block_rows(&block, &table, &mut want, gi);
                    // SAFETY: AVX-512F and BW were detected above; 256 = 8 rows of 32.
                    unsafe { block_rows_avx512(&block, i32::from(zp), &mut got, gi) };
                    assert_eq!(got, want, "zp {zp}, gi {gi}");
                }
            }
        }
    }

    #[test]
    fn input_grad_is_close_to_the_dequantized_f32_product() {
        let (m, k, n) = (64, 96, 160);
        let (w, dy) = (weight(k, n, 0), grad(m, n));
        let Some(got) = input_grad(&w, &dy, m) else { return };
        let mut want = vec![0f32; m * k];
        matmul_f32_bt(&dy, &w.dequantize(), &mut want, m, n, k, false);
        let num: f64 = got.iter().zip(&want).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let den: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
        // bf16 keeps 8 significant bits of dy · s: about 2^-9 relative error per product.
        assert!((num / den).sqrt() < 4e-3, "relative error {}", (num / den).sqrt());
    }

    /// Prints throughput on the MiniLM backward shapes beside the f32 product of the
    /// dequantized weight (what the int8 backward did before); never asserts on time.
    #[test]
    fn print_gflops() {
        use crate::kernels::testutil::bench_secs;
        for &(m, k, n) in &[(1024usize, 384usize, 384usize), (1024, 384, 1536), (1024, 1536, 384)] {
            let (w, dy) = (weight(k, n, 0), grad(m, n));
            if input_grad(&w, &dy, m).is_none() {
                return;
            }
            for (path, threads) in available_paths().into_iter().flat_map(|p| [(p, 1usize), (p, 2)]) {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
                let amx = pool.install(|| bench_secs(|| drop(input_grad_with(path, &w, &dy, m))));
                let f32_path = pool.install(|| {
                    bench_secs(|| {
                        let mut dx = vec![0f32; m * k];
                        matmul_f32_bt(&dy, &w.dequantize(), &mut dx, m, n, k, false);
                    })
                });
                let gf = |s: f64| 2.0 * (m * k * n) as f64 / s / 1e9;
                let (mp, np, kp) = (m.next_multiple_of(BLOCK), n.next_multiple_of(STEP), k.next_multiple_of(BLOCK));
                let pa = pool.install(|| bench_secs(|| drop(pack_a(&dy, m, n, w.scales(), mp, np))));
                let pb = pool.install(|| bench_secs(|| drop(pack_b(&w, np, kp))));
                println!("  pack_a {:.3} ms, pack_b {:.3} ms, all {:.3} ms", pa * 1e3, pb * 1e3, amx * 1e3);
                println!("dy·Wᵀ m={m} n={n} k={k} threads={threads}: {path:?} {:.0} GFLOP/s, dequantized f32 {:.0} GFLOP/s", gf(amx), gf(f32_path));
            }
        }
    }
}
