//! Row normalizations: LayerNorm, residual-add + LayerNorm, RMSNorm.
//!
//! LayerNorm's statistics follow ONNX Runtime's CPU kernels to the bit (they feed int8
//! quantization on int8 models): plain LayerNorm uses sequential f32 sums of x and x²
//! (var = E[x²] − mean²); the residual form uses Welford's update in order. Both chains are
//! serial within a row, so a block of 16 rows runs side by side, one row per vector lane:
//! each lane keeps its own row's exact order while the block hides the latency.

use super::simd::multiversion;

/// Rows normalized side by side.
const LANES: usize = 16;

/// One block of up to 16 rows' (mean, std) from `row(l, h)`, with `welford` choosing the
/// residual kernel's update.
#[inline(always)]
fn stats<F: Fn(usize, usize) -> f32>(rows: usize, d: usize, eps: f32, welford: bool, row: F) -> ([f32; LANES], [f32; LANES]) {
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    let n = d as f32;
    for h in 0..d {
        let cnt = (h + 1) as f32;
        for l in 0..LANES {
            let v = if l < rows { row(l, h) } else { 0.0 };
            if welford {
                let delta = v - a[l];
                a[l] += delta / cnt;
                b[l] += delta * (v - a[l]);
            } else {
                a[l] += v;
                b[l] += v * v;
            }
        }
    }
    let mut mean = [0f32; LANES];
    let mut std = [0f32; LANES];
    for l in 0..LANES {
        if welford {
            mean[l] = a[l];
            std[l] = (b[l] / n + eps).sqrt();
        } else {
            mean[l] = a[l] / n;
            std[l] = (b[l] / n - mean[l] * mean[l] + eps).sqrt();
        }
    }
    (mean, std)
}

multiversion! {
    /// LayerNorm of up to 16 rows of `d` features: (x − mean) / std · γ (+ β).
    pub fn layer_norm_block(x: &[f32], d: usize, g: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
        let rows = x.len() / d;
        debug_assert!(rows <= LANES && out.len() == x.len());
        let (mean, std) = stats(rows, d, eps, false, |l, h| x[l * d + h]);
        for l in 0..rows {
            finish(&x[l * d..(l + 1) * d], None, mean[l], std[l], g, b, &mut out[l * d..(l + 1) * d]);
        }
    }
}

multiversion! {
    /// LayerNorm(x + skip) of up to 16 rows of `d` features, with Welford statistics.
    pub fn add_layer_norm_block(x: &[f32], skip: &[f32], d: usize, g: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
        let rows = x.len() / d;
        debug_assert!(rows <= LANES && out.len() == x.len() && skip.len() == x.len());
        let (mean, std) = stats(rows, d, eps, true, |l, h| x[l * d + h] + skip[l * d + h]);
        for l in 0..rows {
            let r = l * d..(l + 1) * d;
            finish(&x[r.clone()], Some(&skip[r.clone()]), mean[l], std[l], g, b, &mut out[r]);
        }
    }
}

/// y = ((x [+ skip]) − mean) / std · γ (+ β), in that order (divide, not multiply by 1/std).
#[inline(always)]
fn finish(x: &[f32], skip: Option<&[f32]>, mean: f32, std: f32, g: &[f32], b: Option<&[f32]>, out: &mut [f32]) {
    match skip {
        Some(s) => {
            for h in 0..x.len() {
                out[h] = (x[h] + s[h] - mean) / std * g[h];
            }
        }
        None => {
            for h in 0..x.len() {
                out[h] = (x[h] - mean) / std * g[h];
            }
        }
    }
    if let Some(b) = b {
        for h in 0..x.len() {
            out[h] += b[h];
        }
    }
}

multiversion! {
    /// RMSNorm of rows of `d` features: w · (x · 1/sqrt(mean(x²) + eps)).
    pub fn rms_norm_rows(x: &[f32], d: usize, w: &[f32], eps: f32, out: &mut [f32]) {
        for (o, x) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let ms = x.iter().map(|&v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for i in 0..d {
                o[i] = w[i] * (x[i] * inv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-row definitions the blocks must reproduce bit for bit.
    fn plain_row(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
        let n = x.len() as f32;
        let (mut s, mut sq) = (0f32, 0f32);
        for &v in x {
            s += v;
            sq += v * v;
        }
        let mean = s / n;
        let std = (sq / n - mean * mean + eps).sqrt();
        x.iter().zip(g).map(|(&v, &g)| (v - mean) / std * g).collect()
    }

    fn welford_row(x: &[f32], skip: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
        let (mut mean, mut m2) = (0f32, 0f32);
        for h in 0..x.len() {
            let v = x[h] + skip[h];
            let d = v - mean;
            mean += d / (h + 1) as f32;
            m2 += d * (v - mean);
        }
        let std = (m2 / x.len() as f32 + eps).sqrt();
        (0..x.len()).map(|h| (x[h] + skip[h] - mean) / std * g[h]).collect()
    }

    #[test]
    fn blocks_match_the_row_definitions_bit_for_bit() {
        for &(rows, d) in &[(1usize, 1usize), (3, 7), (16, 384), (11, 33)] {
            let x: Vec<f32> = (0..rows * d).map(|i| ((i * 7919 % 1013) as f32 / 101.0 - 5.0) * 1.7).collect();
            let s: Vec<f32> = (0..rows * d).map(|i| (i * 31 % 97) as f32 / 13.0 - 3.0).collect();
            let g: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / d as f32).collect();
            let mut out = vec![0f32; rows * d];
            layer_norm_block(&x, d, &g, None, 1e-12, &mut out);
            for r in 0..rows {
                assert_eq!(out[r * d..(r + 1) * d], plain_row(&x[r * d..(r + 1) * d], &g, 1e-12)[..], "plain {rows}x{d} row {r}");
            }
            add_layer_norm_block(&x, &s, d, &g, None, 1e-12, &mut out);
            for r in 0..rows {
                let want = welford_row(&x[r * d..(r + 1) * d], &s[r * d..(r + 1) * d], &g, 1e-12);
                assert_eq!(out[r * d..(r + 1) * d], want[..], "welford {rows}x{d} row {r}");
            }
        }
    }
}
