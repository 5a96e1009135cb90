//! Softmax of one row, with the exponential and summation order of ONNX Runtime's x86-64
//! kernels.
//!
//! Why not a plain `exp` and a running sum: on int8 models each attention output is
//! re-quantized to u8, and a one-ulp difference that crosses a rounding boundary flips a
//! quantized value and spreads through every later layer. Computing the same polynomial, in
//! the same order, as the runtime users compare us with keeps both engines on the same side of
//! every boundary. The polynomial is an accurate expf in its own right (max error ~1 ulp).

use super::simd::multiversion;

// exp(t) = 2^m · p(r), m = round(t·log2 e), r = t − m·ln 2 (ln 2 split in two for accuracy).
const LOWER_RANGE: f32 = -103.972_084; // below this exp underflows to 0 even as a subnormal
const ROUNDING_BIAS: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
const LOG2E: f32 = f32::from_bits(0x3FB8_AA3B);
const LN2_HI: f32 = f32::from_bits(0xBF31_7200); // −ln 2, high part
const LN2_LO: f32 = f32::from_bits(0xB5BF_BE8E); // −ln 2, low part
const P0: f32 = f32::from_bits(0x3AB4_A000);
const P1: f32 = f32::from_bits(0x3C09_2F6E);
const P2: f32 = f32::from_bits(0x3D2A_ADAD);
const P3: f32 = f32::from_bits(0x3E2A_AA28);
const P4: f32 = f32::from_bits(0x3EFF_FFFB);

/// exp(x + neg_max) for x ≤ max, as a polynomial with exact power-of-two scaling.
#[inline(always)]
pub fn exp_shifted(x: f32, neg_max: f32) -> f32 {
    let mut t = x + neg_max;
    t = if LOWER_RANGE > t { LOWER_RANGE } else { t };
    let biased = LOG2E.mul_add(t, ROUNDING_BIAS);
    let m = biased - ROUNDING_BIAS;
    // m as an integer, read from the low mantissa bits of `biased` (exact for |m| < 2^22);
    // a float→int `as` cast would saturate and keep the loop from vectorizing.
    let mi = (biased.to_bits() as i32).wrapping_sub(ROUNDING_BIAS.to_bits() as i32);
    t = m.mul_add(LN2_HI, t);
    t = m.mul_add(LN2_LO, t);
    let mut p = P0;
    p = p.mul_add(t, P1);
    p = p.mul_add(t, P2);
    p = p.mul_add(t, P3);
    p = p.mul_add(t, P4);
    p = p.mul_add(t, 1.0);
    p = p.mul_add(t, 1.0);
    // 2^m for m in [−150, 0] is exact in f64; one rounding back to f32 (subnormals included).
    let scale = f64::from_bits(((i64::from(mi) + 1023) as u64) << 52);
    (f64::from(p) * scale) as f32
}

multiversion! {
    /// Softmax of `row` in place. A row whose maximum is −∞ (fully masked) becomes NaN, as in
    /// ONNX Runtime; callers that guard against it (attention) turn that into zeros.
    pub fn softmax_row(row: &mut [f32]) {
        if row.is_empty() {
            return;
        }
        // Work in 16-lane blocks: lane l accumulates elements l, l+16, l+32, ... (the sum
        // order that must be kept), and fixed-width blocks are what the vectorizer wants.
        let mut mx = [f32::MIN; 16];
        let mut blocks = row.chunks_exact(16);
        for b in &mut blocks {
            for l in 0..16 {
                mx[l] = if b[l] > mx[l] { b[l] } else { mx[l] };
            }
        }
        let mut max = mx.iter().fold(f32::MIN, |a, &b| if b > a { b } else { a });
        for &v in blocks.remainder() {
            max = if v > max { v } else { max };
        }
        let neg_max = -max;
        let mut acc = [0f32; 16];
        let mut blocks = row.chunks_exact_mut(16);
        for b in &mut blocks {
            for l in 0..16 {
                let e = exp_shifted(b[l], neg_max);
                b[l] = e;
                acc[l] += e;
            }
        }
        for (l, v) in blocks.into_remainder().iter_mut().enumerate() {
            *v = exp_shifted(*v, neg_max);
            acc[l] += *v;
        }
        let s: [f32; 8] = std::array::from_fn(|l| acc[l + 8] + acc[l]);
        let sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        let scale = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        // Against f64 exp: within 2 ulp (relative 2.4e-7) for normal results.
        let mut worst = 0f64;
        for i in 0..20_000 {
            let x = -87.0 + i as f32 * 0.00435;
            let got = f64::from(exp_shifted(x, 0.0));
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp_shifted(-1000.0, 0.0), 0.0);
        assert_eq!(exp_shifted(0.0, 0.0), 1.0);
    }

    #[test]
    fn softmax_sums_to_one_and_handles_masks() {
        for n in [1usize, 5, 15, 16, 17, 47, 48, 49, 129] {
            let mut row: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).sin() * 5.0).collect();
            if n > 2 {
                row[1] = f32::NEG_INFINITY;
            }
            softmax_row(&mut row);
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "n={n} sum={s}");
            if n > 2 {
                assert_eq!(row[1], 0.0);
            }
        }
        let mut masked = vec![f32::NEG_INFINITY; 4];
        softmax_row(&mut masked);
        assert!(masked.iter().all(|v| v.is_nan()));
    }
}
