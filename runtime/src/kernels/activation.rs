//! Activations: GELU (exact, erf-based) with the erf polynomial of ONNX Runtime's x86-64
//! kernels, so int8 models, which quantize the GELU output, round exactly as there; SiLU and
//! its input gradient, branch-free and in parallel.

use rayon::prelude::*;

use super::simd::multiversion;

const INV_SQRT2: f32 = f32::from_bits(0x3F35_04F3);
const UPPER_ABS: f32 = f32::from_bits(0x407B_3333); // 3.925: erf is 1 in f32 beyond
const SPLIT: f32 = f32::from_bits(0x3F6C_0000); // 0.921875: small-|x| polynomial below
const S0: f32 = f32::from_bits(0xBA1D_0D41);
const S1: f32 = f32::from_bits(0x3BA3_9FA4);
const S2: f32 = f32::from_bits(0xBCDB_45E9);
const S3: f32 = f32::from_bits(0x3DE7_0D23);
const S4: f32 = f32::from_bits(0xBEC0_9370);
const S5: f32 = f32::from_bits(0x3E03_75D3);
const B0: f32 = f32::from_bits(0x3791_1480);
const B1: f32 = f32::from_bits(0xB9C8_E966);
const B2: f32 = f32::from_bits(0x3B7E_899B);
const B3: f32 = f32::from_bits(0xBCC6_B180);
const B4: f32 = f32::from_bits(0x3DDA_AE58);
const B5: f32 = f32::from_bits(0x3F22_8550);
const B6: f32 = f32::from_bits(0x3E03_CE86);
const E0: f32 = f32::from_bits(0x3AB5_4C6D);
const E1: f32 = f32::from_bits(0x3C09_3965);
const E2: f32 = f32::from_bits(0x3D2A_AD10);
const E3: f32 = f32::from_bits(0x3E2A_AA17);
const E4: f32 = f32::from_bits(0x3EFF_FFFB);
const LOG2E: f32 = f32::from_bits(0x3FB8_AA3B);
const LN2_HI: f32 = f32::from_bits(0xBF31_7200);
const LN2_LO: f32 = f32::from_bits(0xB5BF_BE8E);
const ROUNDING_BIAS: f32 = 12_582_912.0;
const EXP_LOWER: f32 = f32::from_bits(0xC2B0_C0A5);

/// erf(x): an odd polynomial for |x| ≤ 0.921875, 1 − exp(−q(|x|)) above, 1 past 3.925.
/// Maximum error about 1 ulp. Branch-free so it vectorizes.
#[inline(always)]
pub fn erf(v: f32) -> f32 {
    let a = v.abs().min(UPPER_ABS);
    let sq = a * a;
    let mut r = S0;
    r = r.mul_add(sq, S1);
    r = r.mul_add(sq, S2);
    r = r.mul_add(sq, S3);
    r = r.mul_add(sq, S4);
    r = r.mul_add(sq, S5);
    let small = r.mul_add(a, a);
    let mut q = B0;
    q = q.mul_add(a, B1);
    q = q.mul_add(a, B2);
    q = q.mul_add(a, B3);
    q = q.mul_add(a, B4);
    q = q.mul_add(a, B5);
    q = q.mul_add(a, B6);
    q = q.mul_add(a, a);
    let t = (-q).max(EXP_LOWER);
    let biased = LOG2E.mul_add(t, ROUNDING_BIAS);
    let m = biased - ROUNDING_BIAS;
    // m as an integer from the mantissa bits (see `softmax::exp_shifted`).
    let mi = (biased.to_bits() as i32).wrapping_sub(ROUNDING_BIAS.to_bits() as i32);
    let mut f = m.mul_add(LN2_HI, t);
    f = m.mul_add(LN2_LO, f);
    let mut y = E0;
    y = y.mul_add(f, E1);
    y = y.mul_add(f, E2);
    y = y.mul_add(f, E3);
    y = y.mul_add(f, E4);
    y = y.mul_add(f, 1.0);
    y = y.mul_add(f, 1.0);
    // m is in [−23, −1] here: scaling by 2^m is exact.
    y *= f32::from_bits((mi.wrapping_add(127) as u32) << 23);
    let big = 1.0 - y;
    let res = if a > SPLIT { big } else { small };
    f32::from_bits(res.to_bits() | (v.to_bits() & 0x8000_0000))
}

multiversion! {
    fn gelu_chunk(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (0.5 * v) * (erf(v * INV_SQRT2) + 1.0);
        }
    }
}

/// Exact GELU, x · Φ(x) = (0.5·x)·(1 + erf(x/√2)), over a slice, in parallel.
pub fn gelu(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu: input and output differ in length");
    const CHUNK: usize = 4096;
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| gelu_chunk(x, o));
}

/// The most negative exponent the sigmoid takes: exp(−87) ≈ 1.6e−38 is still a normal f32.
/// Below it the libm `exp` and everything after it compute with subnormals, which x86 cores
/// handle in microcode at ~100× the cost (SmolLM2's gate projections reach −100 and beyond,
/// and that made SiLU 70% of its forward pass). Clamping changes σ(x) only where it is below
/// 1.6e−38, so SiLU's output moves by less than |x|·1.6e−38.
const SIGMOID_FLOOR: f32 = -87.0;

/// σ(x) = 1/(1 + e^−x), branch-free so a loop over it vectorizes: with e = exp(−|x|) ≤ 1 (no
/// overflow), σ(x) is 1/(1+e) for x ≥ 0 and e/(1+e) below.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = super::softmax::exp_shifted((-x.abs()).max(SIGMOID_FLOOR), 0.0);
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 {
        r
    } else {
        e * r
    }
}

const CHUNK: usize = 4096;

multiversion! {
    fn silu_chunk(x: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v * sigmoid(v);
        }
    }
}

multiversion! {
    fn silu_backward_chunk(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((d, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
            let s = sigmoid(v);
            *d = g * s * (1.0 + v * (1.0 - s));
        }
    }
}

/// SiLU, x · σ(x), over a slice, in parallel.
pub fn silu(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "silu: input and output differ in length");
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| silu_chunk(x, o));
}

/// SiLU's input gradient, `dx = dy · σ(x)·(1 + x·(1 − σ(x)))`, in parallel.
pub fn silu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dy.len() && x.len() == dx.len(), "silu_backward: x, dy and dx differ in length");
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(d, (x, g))| silu_backward_chunk(x, g, d));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_and_silu_match_f64_everywhere() {
        // Relative error against f64 within 4e-7 where σ is not clamped (x ≥ −87), and on the
        // far tails (σ underflows in f64 terms below −87) the output stays tiny and finite.
        let xs: Vec<f32> = (-120_000..=120_000).map(|i| i as f32 * 1e-3).collect();
        let mut out = vec![0.0; xs.len()];
        silu(&xs, &mut out);
        for (&x, &y) in xs.iter().zip(&out) {
            let want = f64::from(x) / (1.0 + (-f64::from(x)).exp());
            if x >= SIGMOID_FLOOR {
                let s = 1.0 / (1.0 + (-f64::from(x)).exp());
                assert!((f64::from(sigmoid(x)) - s).abs() <= 4e-7 * s, "sigmoid({x}) = {} vs {s}", sigmoid(x));
                assert!((f64::from(y) - want).abs() <= 4e-7 * want.abs() + 1e-37, "silu({x}) = {y} vs {want}");
            } else {
                assert!(y.is_finite() && y <= 0.0 && y > -1e-34 && y.is_normal(), "silu({x}) = {y}");
            }
        }
        assert_eq!(sigmoid(f32::INFINITY), 1.0);
        assert_eq!(silu_of(0.0), 0.0);
        assert!(silu_of(f32::NAN).is_nan());
    }

    fn silu_of(x: f32) -> f32 {
        let mut o = [0.0];
        silu(&[x], &mut o);
        o[0]
    }

    #[test]
    fn silu_backward_matches_its_formula_in_f64() {
        let xs: Vec<f32> = (-9000..=9000).map(|i| i as f32 * 1e-2).collect();
        let dy: Vec<f32> = xs.iter().map(|x| 1.0 + 0.25 * x.sin()).collect();
        let mut dx = vec![0.0; xs.len()];
        silu_backward(&xs, &dy, &mut dx);
        for ((&x, &g), &d) in xs.iter().zip(&dy).zip(&dx) {
            let s = 1.0 / (1.0 + (-f64::from(x)).exp());
            let want = f64::from(g) * s * (1.0 + f64::from(x) * (1.0 - s));
            // Relative to |dy| as well: near x ≈ −1.28 the factor 1 + x·(1 − σ) cancels to 0, and
            // its f32 rounding (~1e−7 of its unit-size terms) is what remains.
            assert!((f64::from(d) - want).abs() <= 2e-6 * want.abs() + 1e-6 * f64::from(g).abs(), "dsilu({x}) = {d} vs {want}");
        }
    }

    #[test]
    fn erf_is_accurate() {
        // Against the f64 reference from libm: within 4e-7 absolute everywhere.
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let d = (f64::from(erf(x)) - libm::erf(f64::from(x))).abs();
            worst = worst.max(d);
        }
        assert!(worst < 4e-7, "worst {worst:e}");
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn gelu_known_values() {
        let x = [1.0f32, -1.0, 0.0, 3.0];
        let mut y = [0f32; 4];
        gelu(&x, &mut y);
        // x·Φ(x): 0.8413447, −0.1586553, 0, 2.9959502
        let want = [0.841_344_7f32, -0.158_655_3, 0.0, 2.995_950_2];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
