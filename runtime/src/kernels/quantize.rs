//! Quantization of activations (ONNX `DynamicQuantizeLinear`, u8) and of
//! weights (symmetric per-output-channel i8).
//!
//! `quantize_dynamic_u8` runs on every activation that feeds an int8 GEMM, so
//! it is two vectorized passes, split over the rayon pool for large tensors:
//! a min/max pass (portable code that LLVM vectorizes, compiled for AVX2 and
//! AVX-512 as well and picked at run time) and a quantize pass (explicit
//! AVX-512 / AVX2 / NEON code, portable fallback). The quantize pass must be
//! bit-exact with a *division* by the scale; see `TIE_BAND` for how it gets
//! away with a multiplication almost always.

/// `1.5 · 2²³`: adding and subtracting it rounds any `|v| < 2²²` to an integer
/// with the FPU's round-half-to-even, without needing SSE4.1 `roundps`
/// (absent from the x86-64 baseline) or a libm call per element.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Round half to even for `|v| < 2²²` (callers clamp first).
#[inline(always)]
fn round_even_small(v: f32) -> f32 {
    (v + ROUND_MAGIC) - ROUND_MAGIC
}

/// Lanes of independent min/max accumulators: enough to fill two AVX-512
/// registers so the reduction loop is not bound by the compare latency.
const LANES: usize = 32;

#[inline(always)]
fn min_max_body(x: &[f32]) -> (f32, f32) {
    let mut mn = [f32::INFINITY; LANES];
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            // `a < b ? a : b` is exactly MINPS/MAXPS (and FMIN on NEON with
            // the same NaN-skipping choice), so this loop vectorizes; NaNs in
            // the input are ignored rather than poisoning the range.
            mn[i] = if c[i] < mn[i] { c[i] } else { mn[i] };
            mx[i] = if c[i] > mx[i] { c[i] } else { mx[i] };
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        mn[i] = if v < mn[i] { v } else { mn[i] };
        mx[i] = if v > mx[i] { v } else { mx[i] };
    }
    let lo = mn.iter().fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
    let hi = mx.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    (lo, hi)
}

/// How close to a rounding tie (`k + 0.5`) the multiply-by-reciprocal
/// quotient may be before the SIMD paths redo the chunk with a true
/// division. Quotients lie in [-255, 255] (the scale comes from the data's
/// own range), where `x·fl(1/s)` and `fl(x/s)` differ by at most ~3 ulp, i.e.
/// < 2⁻¹⁴; outside this band of 2⁻¹² both round to the same integer, and the
/// integer clamp bounds commute with rounding.
const TIE_BAND: f32 = 1.0 / 4096.0;

/// Clamp, round and shift one quotient. Clamping in the float domain to
/// [0 - zp, 255 - zp] before rounding is what ONNX Runtime's MLAS does; the
/// bounds are integers, so it equals saturating after rounding, and it keeps
/// the value small enough for the magic-number rounding.
#[inline(always)]
fn finish(q: f32, lo: f32, hi: f32, zpf: f32) -> u8 {
    // `q > lo ? q : lo` maps NaN to `lo` (output 0), like MAXPS in MLAS.
    let q = if q > lo { q } else { lo };
    let q = if q < hi { q } else { hi };
    let r = round_even_small(q) + zpf;
    // SAFETY: `r` is an integer in [0, 255] (clamped above, NaN mapped to
    // `lo`), so it is representable in i32 and the unchecked cast is exact.
    (unsafe { r.to_int_unchecked::<i32>() }) as u8
}

/// The exact path: divide like the spec. Never inlined so that LLVM cannot
/// if-convert its rare use in the SIMD paths into an unconditional division.
#[inline(never)]
fn divide_chunk(x: &[f32], out: &mut [u8], scale: f32, lo: f32, hi: f32, zpf: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = finish(v / scale, lo, hi, zpf);
    }
}

/// Portable quantize pass: the spec's division for every element.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
#[inline(always)]
fn quantize_body(x: &[f32], out: &mut [u8], scale: f32, zp: u8) {
    let zpf = f32::from(zp);
    divide_chunk(x, out, scale, -zpf, 255.0 - zpf, zpf);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{divide_chunk, ROUND_MAGIC, TIE_BAND};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn min_max_avx512(x: &[f32]) -> (f32, f32) {
        super::min_max_body(x)
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn min_max_avx2(x: &[f32]) -> (f32, f32) {
        super::min_max_body(x)
    }

    // The spec divides, and a vector division costs several multiplies, so
    // the SIMD paths multiply by the reciprocal and redo with a division only
    // the (rare) chunks where some quotient lies so close to a rounding tie
    // that the two could round differently. A non-finite reciprocal
    // (subnormal scale) always divides. MAXPS/MINPS return their second
    // operand when the first is NaN, so NaN clamps to `lo` (output 0).

    /// # Safety
    /// The CPU must support AVX-512F and AVX-512BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_avx512(x: &[f32], out: &mut [u8], scale: f32, zp: u8) {
        assert_eq!(x.len(), out.len());
        let zpf = f32::from(zp);
        let (lo, hi) = (-zpf, 255.0 - zpf);
        let inv = 1.0 / scale;
        if !inv.is_finite() {
            return divide_chunk(x, out, scale, lo, hi, zpf);
        }
        let vinv = _mm512_set1_ps(inv);
        let vzp = _mm512_set1_epi16(i16::from(zp));
        let band = _mm512_set1_ps(0.5 - TIE_BAND);
        // 64 elements per step: four vectors are rounded, packed to bytes
        // with two saturating packs and stored as one 64-byte line (a
        // per-vector `vpmovdb` store costs more than the arithmetic).
        let full = x.len() / 64 * 64;
        // After packs within 128-bit lanes, dword j of the result holds
        // bytes of vector j % 4, lane j / 4; this permutation restores order.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let mut i = 0;
        while i < full {
            // SAFETY: i + 64 <= full <= x.len() == out.len() (asserted), so
            // the four 16-lane loads and the 64-byte store stay in bounds.
            unsafe {
                let p = x.as_ptr().add(i);
                let mut t = [_mm512_setzero_si512(); 4];
                let mut near = 0u16;
                for (j, tj) in t.iter_mut().enumerate() {
                    let q = _mm512_mul_ps(_mm512_loadu_ps(p.add(16 * j)), vinv);
                    // Round half to even (the default MXCSR mode) to int, and
                    // back to measure the distance to the rounding tie.
                    *tj = _mm512_cvtps_epi32(q);
                    let d = _mm512_abs_ps(_mm512_sub_ps(q, _mm512_cvtepi32_ps(*tj)));
                    near |= _mm512_cmp_ps_mask::<_CMP_GT_OQ>(d, band);
                }
                if near != 0 {
                    divide_chunk(&x[i..i + 64], &mut out[i..i + 64], scale, lo, hi, zpf);
                } else {
                    // The saturating packs and add do the clamping: clamping
                    // the rounded value equals rounding the clamped one
                    // (integer bounds). NaN converts to i32::MIN and ends at
                    // 0, like MLAS's MAXPS clamp.
                    let w01 = _mm512_adds_epi16(_mm512_packs_epi32(t[0], t[1]), vzp);
                    let w23 = _mm512_adds_epi16(_mm512_packs_epi32(t[2], t[3]), vzp);
                    let b = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(w01, w23));
                    _mm512_storeu_si512(out.as_mut_ptr().add(i).cast(), b);
                }
            }
            i += 64;
        }
        divide_chunk(&x[full..], &mut out[full..], scale, lo, hi, zpf);
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_avx2(x: &[f32], out: &mut [u8], scale: f32, zp: u8) {
        assert_eq!(x.len(), out.len());
        let zpf = f32::from(zp);
        let (lo, hi) = (-zpf, 255.0 - zpf);
        let inv = 1.0 / scale;
        if !inv.is_finite() {
            return divide_chunk(x, out, scale, lo, hi, zpf);
        }
        let (vinv, vlo, vhi, vzp) = (_mm256_set1_ps(inv), _mm256_set1_ps(lo), _mm256_set1_ps(hi), _mm256_set1_ps(zpf));
        let magic = _mm256_set1_ps(ROUND_MAGIC);
        let band = _mm256_set1_ps(0.5 - TIE_BAND);
        let absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let full = x.len() / 8 * 8;
        let mut i = 0;
        while i < full {
            // SAFETY: i + 8 <= full <= x.len() == out.len() (asserted), so the 8-lane
            // load and the 8-byte store stay inside the slices.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                let q = _mm256_mul_ps(v, vinv);
                let r = _mm256_sub_ps(_mm256_add_ps(q, magic), magic);
                let d = _mm256_and_ps(_mm256_sub_ps(q, r), absmask);
                if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(d, band)) != 0 {
                    divide_chunk(&x[i..i + 8], &mut out[i..i + 8], scale, lo, hi, zpf);
                } else {
                    let q = _mm256_min_ps(_mm256_max_ps(q, vlo), vhi);
                    let r = _mm256_add_ps(_mm256_sub_ps(_mm256_add_ps(q, magic), magic), vzp);
                    let w = _mm256_cvttps_epi32(r);
                    let h = _mm_packs_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
                    _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), _mm_packus_epi16(h, h));
                }
            }
            i += 8;
        }
        divide_chunk(&x[full..], &mut out[full..], scale, lo, hi, zpf);
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{divide_chunk, TIE_BAND};
    use std::arch::aarch64::*;

    /// The multiply-then-check path of the x86 kernels, for NEON (baseline
    /// on aarch64). `fmaxnm` is used for the clamp because plain `fmax`
    /// propagates NaN, while MLAS (and the spec paths here) map NaN to 0.
    ///
    /// # Safety
    /// None beyond NEON, which every aarch64 target has.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn quantize_neon(x: &[f32], out: &mut [u8], scale: f32, zp: u8) {
        assert_eq!(x.len(), out.len());
        let zpf = f32::from(zp);
        let (lo, hi) = (-zpf, 255.0 - zpf);
        let inv = 1.0 / scale;
        if !inv.is_finite() {
            return divide_chunk(x, out, scale, lo, hi, zpf);
        }
        let (vinv, vlo, vhi) = (vdupq_n_f32(inv), vdupq_n_f32(lo), vdupq_n_f32(hi));
        let vzp = vdupq_n_s32(i32::from(zp));
        let band = vdupq_n_f32(0.5 - TIE_BAND);
        let full = x.len() / 16 * 16;
        let mut i = 0;
        while i < full {
            // SAFETY: i + 16 <= full <= x.len() == out.len() (asserted), so the four
            // 4-lane loads and the 16-byte store stay inside the slices.
            unsafe {
                let p = x.as_ptr().add(i);
                let v = [vld1q_f32(p), vld1q_f32(p.add(4)), vld1q_f32(p.add(8)), vld1q_f32(p.add(12))];
                let q = v.map(|v| vmulq_f32(v, vinv));
                let r = q.map(|q| vrndnq_f32(q));
                let mut near = vdupq_n_u32(0);
                for (qi, ri) in q.iter().zip(&r) {
                    near = vorrq_u32(near, vcgtq_f32(vabdq_f32(*qi, *ri), band));
                }
                if vmaxvq_u32(near) != 0 {
                    divide_chunk(&x[i..i + 16], &mut out[i..i + 16], scale, lo, hi, zpf);
                } else {
                    // Clamping the rounded value equals rounding the clamped
                    // one (integer bounds); `fmaxnm` sends NaN to `lo`.
                    let w = r.map(|r| vaddq_s32(vcvtnq_s32_f32(vminnmq_f32(vmaxnmq_f32(r, vlo), vhi)), vzp));
                    let h0 = vcombine_u16(vqmovun_s32(w[0]), vqmovun_s32(w[1]));
                    let h1 = vcombine_u16(vqmovun_s32(w[2]), vqmovun_s32(w[3]));
                    vst1q_u8(out.as_mut_ptr().add(i), vcombine_u8(vqmovn_u16(h0), vqmovn_u16(h1)));
                }
            }
            i += 16;
        }
        divide_chunk(&x[full..], &mut out[full..], scale, lo, hi, zpf);
    }
}

/// Minimum and maximum of `x`, ignoring NaNs; `(+inf, -inf)` when empty.
fn min_max(x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected on this CPU just above.
            return unsafe { x86::min_max_avx512(x) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected on this CPU just above.
            return unsafe { x86::min_max_avx2(x) };
        }
    }
    min_max_body(x)
}

/// `out = saturate_u8(round_half_even(x / scale) + zp)`, element-wise.
fn quantize_u8(x: &[f32], out: &mut [u8], scale: f32, zp: u8) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: AVX-512F and BW were detected on this CPU just above.
            return unsafe { x86::quantize_avx512(x, out, scale, zp) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was detected on this CPU just above.
            return unsafe { x86::quantize_avx2(x, out, scale, zp) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is baseline on aarch64.
        unsafe { neon::quantize_neon(x, out, scale, zp) }
    }
    #[cfg(not(target_arch = "aarch64"))]
    quantize_body(x, out, scale, zp)
}

/// Below this many elements both passes take a few microseconds and are not
/// worth a rayon fork/join.
const PAR_MIN_ELEMS: usize = 1 << 16;

/// Chunk length splitting `len` elements over the current pool, rounded to a
/// whole number of SIMD chunks; `None` when it should run on this thread.
fn par_chunk_len(len: usize) -> Option<usize> {
    let threads = rayon::current_num_threads();
    if threads <= 1 || len < PAR_MIN_ELEMS {
        return None;
    }
    Some(len.div_ceil(threads * 2).next_multiple_of(64))
}

fn par_min_max(x: &[f32]) -> (f32, f32) {
    use rayon::prelude::*;
    match par_chunk_len(x.len()) {
        None => min_max(x),
        Some(chunk) => x.par_chunks(chunk).map(min_max).reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |a, b| (if b.0 < a.0 { b.0 } else { a.0 }, if b.1 > a.1 { b.1 } else { a.1 }),
        ),
    }
}

fn par_quantize_u8(x: &[f32], out: &mut [u8], scale: f32, zp: u8) {
    use rayon::prelude::*;
    match par_chunk_len(x.len()) {
        None => quantize_u8(x, out, scale, zp),
        Some(chunk) => {
            x.par_chunks(chunk).zip(out.par_chunks_mut(chunk)).for_each(|(xc, oc)| quantize_u8(xc, oc, scale, zp))
        }
    }
}

/// ONNX `DynamicQuantizeLinear` (u8), bit-exact with the spec and with ONNX
/// Runtime for finite inputs. Returns `(scale, zero_point)`.
///
/// - `scale = (max(0, max x) - min(0, min x)) / 255`
/// - `zero_point = saturate_u8(round_half_even(0 - min(0, min x) / scale))`
/// - `y = saturate_u8(round_half_even(x / scale) + zero_point)`
///
/// All-zero (or empty) input: the spec's formula would divide 0 by 0. ONNX
/// Runtime guards this with `scale = 1.0` when `max == min`, which gives
/// `zero_point = 0` and `y = 0`; we do exactly the same, so `scale` is never 0.
///
/// NaN inputs are ignored when finding the range and quantize to 0, like
/// MLAS's MAXPS-based clamp; infinite inputs make the scale infinite and the
/// result meaningless (as in ONNX Runtime).
pub fn quantize_dynamic_u8(x: &[f32], out: &mut [u8]) -> (f32, u8) {
    assert_eq!(x.len(), out.len(), "out must have one byte per input element");
    let (lo, hi) = par_min_max(x);
    // Make the range include zero so that 0.0 is exactly representable.
    let lo = lo.min(0.0);
    let hi = hi.max(0.0);
    let scale = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
    let initial_zp = 0.0 - lo / scale;
    let zp = initial_zp.clamp(0.0, 255.0).round_ties_even() as u8;
    par_quantize_u8(x, out, scale, zp);
    (scale, zp)
}

/// Symmetric per-output-channel int8 quantization of a weight stored K×N
/// (ONNX MatMul layout). For each column `j`:
/// `scale[j] = max|w[:, j]| / 127` (1.0 for an all-zero column, so that
/// dequantization never divides by zero) and
/// `q = clamp(round_half_even(w / scale[j]), -127, 127)`.
///
/// -128 is never produced, keeping the range symmetric so that negating a
/// quantized weight (as gradients of transposed products do) cannot overflow.
pub fn quantize_weight_per_channel(w_kn: &[f32], k: usize, n: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w_kn.len(), k * n, "w_kn must be k×n");
    let mut amax = vec![0.0f32; n];
    for row in w_kn.chunks_exact(n.max(1)).take(k) {
        for (a, &v) in amax.iter_mut().zip(row) {
            // `f32::max` skips NaN, so a NaN weight cannot poison its column.
            *a = a.max(v.abs());
        }
    }
    let scales: Vec<f32> = amax.iter().map(|&a| if a == 0.0 { 1.0 } else { a / 127.0 }).collect();
    let mut q = vec![0i8; k * n];
    for (qrow, row) in q.chunks_exact_mut(n.max(1)).zip(w_kn.chunks_exact(n.max(1))) {
        for ((o, &v), &s) in qrow.iter_mut().zip(row).zip(&scales) {
            let r = (v / s).clamp(-127.0, 127.0);
            *o = round_even_small(r) as i8;
        }
    }
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{bench_secs, Rng};

    /// Literal transcription of the spec (with ORT's all-zero guard), using
    /// std's rounding rather than the magic-number trick.
    fn spec_dql(x: &[f32]) -> (Vec<u8>, f32, u8) {
        let lo = x.iter().fold(0.0f32, |a, &b| a.min(b));
        let hi = x.iter().fold(0.0f32, |a, &b| a.max(b));
        let scale = if hi == lo { 1.0 } else { (hi - lo) / 255.0 };
        let zp = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even() as u8;
        let y = x
            .iter()
            .map(|&v| ((v / scale).round_ties_even() + f32::from(zp)).clamp(0.0, 255.0) as u8)
            .collect();
        (y, scale, zp)
    }

    #[test]
    fn onnx_spec_examples() {
        // The three examples from the ONNX operator documentation.
        let cases: [(&[f32], f32, u8, &[u8]); 3] = [
            (&[0.0, 2.0, -3.0, -2.5, 1.34, 0.5], 0.019_607_844, 153, &[153, 255, 0, 26, 221, 179]),
            (&[-1.0, -2.1, -1.3, -2.5, -3.34, -4.0], 0.015_686_275, 255, &[191, 121, 172, 96, 42, 0]),
            (
                &[1.0, 2.1, 1.3, 2.5, 3.34, 4.0, 1.5, 2.6, 3.9, 4.0, 3.0, 2.345],
                0.015_686_275,
                0,
                &[64, 134, 83, 159, 213, 255, 96, 166, 249, 255, 191, 149],
            ),
        ];
        for (x, scale, zp, y) in cases {
            let mut out = vec![0u8; x.len()];
            let (s, z) = quantize_dynamic_u8(x, &mut out);
            assert_eq!(s, scale);
            assert_eq!(z, zp);
            assert_eq!(out, y);
        }
    }

    #[test]
    fn ties_round_to_even() {
        // Range [-1, 254] gives scale exactly 1.0 and zero point 1, so the
        // halves below hit the rounding tie exactly.
        let x = [-1.0, 254.0, 0.5, 1.5, 2.5, -0.5, 3.5, 252.5];
        let mut out = [0u8; 8];
        let (s, z) = quantize_dynamic_u8(&x, &mut out);
        assert_eq!((s, z), (1.0, 1));
        assert_eq!(out, [0, 255, 1, 3, 3, 1, 5, 253]);
    }

    #[test]
    fn all_zero_and_empty_follow_onnxruntime() {
        let x = [0.0f32; 37];
        let mut out = [7u8; 37];
        assert_eq!(quantize_dynamic_u8(&x, &mut out), (1.0, 0));
        assert!(out.iter().all(|&v| v == 0));
        assert_eq!(quantize_dynamic_u8(&[], &mut []), (1.0, 0));
    }

    #[test]
    fn matches_spec_on_random_data() {
        let mut rng = Rng::new(11);
        for len in (0..100).chain([1000, 10_007]) {
            for &(lo, hi) in &[(-1.0f32, 1.0f32), (-3.0, 0.5), (0.1, 7.0), (-9.0, -0.2), (-1e-3, 1e4)] {
                let x = rng.f32s(len, lo, hi);
                let (want, ws, wz) = spec_dql(&x);
                let mut got = vec![0u8; len];
                let (s, z) = quantize_dynamic_u8(&x, &mut got);
                assert_eq!((s, z), (ws, wz), "len {len} range {lo}..{hi}");
                assert_eq!(got, want, "len {len} range {lo}..{hi}");
            }
        }
    }

    /// Every implementation (not only the one this CPU dispatches to) against
    /// the spec, on data crowded around rounding ties where multiplying by
    /// the reciprocal and dividing can disagree.
    #[test]
    fn every_simd_path_matches_spec_near_ties() {
        let mut rng = Rng::new(13);
        for &(lo, hi) in &[(-0.3f32, 0.7f32), (-1.0, 254.0), (-5.1, 0.0), (0.0, 3.3)] {
            let mut x: Vec<f32> = vec![lo, hi];
            let scale = (hi.max(0.0) - lo.min(0.0)) / 255.0;
            for j in 0..2000 {
                let t = (j % 256) as f32 - 128.0 + 0.5;
                let jitter = [0.0, 1e-7, -1e-7, 3e-5][j % 4];
                x.push(((t + jitter) * scale).clamp(lo, hi));
            }
            x.extend(rng.f32s(333, lo, hi));
            // NaNs (ignored by the range, quantized to 0) at spots that land
            // in every path's vector body and in the tails.
            for i in [7usize, 100, 1001, x.len() - 1] {
                x[i] = f32::NAN;
            }
            let (want, ws, wz) = spec_dql(&x);
            let mut got = vec![0u8; x.len()];
            quantize_body(&x, &mut got, ws, wz);
            assert_eq!(got, want, "portable, range {lo}..{hi}");
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") {
                    got.fill(0);
                    // SAFETY: AVX2 detected just above.
                    unsafe { x86::quantize_avx2(&x, &mut got, ws, wz) };
                    assert_eq!(got, want, "avx2, range {lo}..{hi}");
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
                    got.fill(0);
                    // SAFETY: AVX-512F and BW detected just above.
                    unsafe { x86::quantize_avx512(&x, &mut got, ws, wz) };
                    assert_eq!(got, want, "avx512, range {lo}..{hi}");
                }
            }
            #[cfg(target_arch = "aarch64")]
            {
                got.fill(0);
                // SAFETY: NEON is baseline on aarch64.
                unsafe { neon::quantize_neon(&x, &mut got, ws, wz) };
                assert_eq!(got, want, "neon, range {lo}..{hi}");
            }
        }
    }

    #[test]
    fn nan_is_ignored_for_range_and_maps_to_zero() {
        let mut x = vec![0.25f32; 200];
        x[0] = 1.0;
        x[1] = -1.0;
        let (want, ws, wz) = spec_dql(&x);
        // NaNs in the 64-wide SIMD body, the 16/8-wide one and the tail.
        let nans = [5usize, 130, 199];
        for &i in &nans {
            x[i] = f32::NAN;
        }
        let mut out = vec![0u8; x.len()];
        let (s, z) = quantize_dynamic_u8(&x, &mut out);
        assert_eq!((s, z), (ws, wz));
        for &i in &nans {
            assert_eq!(out[i], 0);
            out[i] = want[i];
        }
        assert_eq!(out, want);
    }

    #[test]
    fn weight_per_channel() {
        let (k, n) = (5, 4);
        let mut rng = Rng::new(5);
        let mut w = rng.f32s(k * n, -2.0, 2.0);
        for r in 0..k {
            w[r * n + 2] = 0.0; // an all-zero column
        }
        w[3 * n + 1] = -3.0; // column 1's extreme is negative
        let (q, s) = quantize_weight_per_channel(&w, k, n);
        assert_eq!(s[2], 1.0);
        assert_eq!(s[1], 3.0 / 127.0);
        assert_eq!(q[3 * n + 1], -127);
        for j in 0..n {
            let amax = (0..k).map(|r| w[r * n + j].abs()).fold(0.0f32, f32::max);
            let want_s = if amax == 0.0 { 1.0 } else { amax / 127.0 };
            assert_eq!(s[j], want_s);
            for r in 0..k {
                let want = (w[r * n + j] / want_s).round_ties_even().clamp(-127.0, 127.0) as i8;
                assert_eq!(q[r * n + j], want);
                assert!((f32::from(q[r * n + j]) * s[j] - w[r * n + j]).abs() <= 0.5 * s[j] * 1.0001);
            }
        }
        let (q, s) = quantize_weight_per_channel(&[], 0, 3);
        assert!(q.is_empty());
        assert_eq!(s, vec![1.0; 3]);
    }

    #[test]
    fn print_throughput() {
        let mut rng = Rng::new(2);
        let x = rng.f32s(1024 * 384, -4.0, 4.0);
        let mut out = vec![0u8; x.len()];
        for threads in [1usize, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            let secs = pool.install(|| {
                bench_secs(|| {
                    quantize_dynamic_u8(&x, &mut out);
                })
            });
            println!("quantize_dynamic_u8 1024×384, {threads} thread(s): {:.1} µs", secs * 1e6);
        }
    }
}
