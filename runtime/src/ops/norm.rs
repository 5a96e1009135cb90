//! Normalizations: `LayerNorm` (ONNX `LayerNormalization` and its decomposed form) and
//! `RmsNorm` (Llama), both over the trailing axes, rows in parallel.

use rayon::prelude::*;

use super::{norm_axis, shape_err};
use crate::error::Result;
use crate::tensor::Tensor;

/// Rows per parallel task: enough work to amortize scheduling.
const ROWS_PER_TASK: usize = 16;

/// y = (x - mean) / sqrt(var + eps) · gamma + beta over axes `axis..`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, axis: i64, eps: f32) -> Result<Tensor> {
    let a = norm_axis(axis, x.rank())?;
    let d: usize = x.shape()[a..].iter().product();
    let v = x.typed::<f32>("LayerNorm input")?;
    let g = gamma.typed::<f32>("LayerNorm scale")?;
    let b = beta.map(|b| b.typed::<f32>("LayerNorm bias")).transpose()?;
    if d == 0 || g.len() != d || b.is_some_and(|b| b.len() != d) {
        return Err(shape_err(format!("LayerNorm: scale/bias do not match {d} features")));
    }
    let mut out = vec![0f32; v.len()];
    out.par_chunks_mut(d * ROWS_PER_TASK).zip(v.par_chunks(d * ROWS_PER_TASK)).for_each(|(o, x)| {
        for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            layer_norm_row(x, g, b, eps, o);
        }
    });
    Ok(Tensor::from_parts(x.dims().clone(), out))
}

/// One row of [`layer_norm`].
///
/// This is the single-pass form (sequential f32 sums of x and x², var = E[x²] − mean²,
/// divide by the standard deviation) that ONNX Runtime's CPU kernel uses. Matching its
/// rounding matters on int8 models: the next op quantizes this output, and a one-ulp
/// difference that crosses a rounding boundary flips a quantized value and then spreads
/// through every later layer.
pub fn layer_norm_row(x: &[f32], g: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let n = x.len() as f32;
    let (mut sum, mut sum_sq) = (0f32, 0f32);
    for &v in x {
        sum += v;
        sum_sq += v * v;
    }
    let mean = sum / n;
    let std = (sum_sq / n - mean * mean + eps).sqrt();
    match b {
        Some(b) => {
            for i in 0..x.len() {
                out[i] = (x[i] - mean) / std * g[i] + b[i];
            }
        }
        None => {
            for i in 0..x.len() {
                out[i] = (x[i] - mean) / std * g[i];
            }
        }
    }
}

/// y = x / sqrt(mean(x²) + eps) · w over the last axis.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let d = *x.shape().last().ok_or_else(|| shape_err("RmsNorm of a scalar"))?;
    let v = x.typed::<f32>("RmsNorm input")?;
    let w = w.typed::<f32>("RmsNorm weight")?;
    if d == 0 || w.len() != d {
        return Err(shape_err(format!("RmsNorm: weight of {} for {d} features", w.len())));
    }
    let mut out = vec![0f32; v.len()];
    out.par_chunks_mut(d * ROWS_PER_TASK).zip(v.par_chunks(d * ROWS_PER_TASK)).for_each(|(o, x)| {
        for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let ms = x.iter().map(|&v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for i in 0..d {
                o[i] = w[i] * (x[i] * inv);
            }
        }
    });
    Ok(Tensor::from_parts(x.dims().clone(), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_centres_and_scales() {
        let x = Tensor::new(&[1, 4], vec![1f32, 2., 3., 4.]).unwrap();
        let g = Tensor::new(&[4], vec![1f32; 4]).unwrap();
        let b = Tensor::new(&[4], vec![0.5f32; 4]).unwrap();
        let y = layer_norm(&x, &g, Some(&b), -1, 0.0).unwrap();
        // mean 2.5, var 1.25 → (x-2.5)/1.118034 + 0.5
        let want = [-1.341_640_8f32 + 0.5, -0.447_213_6 + 0.5, 0.447_213_6 + 0.5, 1.341_640_8 + 0.5];
        for (a, b) in y.as_slice::<f32>().unwrap().iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn rms_norm_divides_by_root_mean_square() {
        let x = Tensor::new(&[2], vec![3f32, 4.]).unwrap();
        let w = Tensor::new(&[2], vec![1f32, 2.]).unwrap();
        let y = rms_norm(&x, &w, 0.0).unwrap();
        // rms = sqrt(12.5) = 3.5355339
        let v = y.as_slice::<f32>().unwrap();
        assert!((v[0] - 0.848_528_1).abs() < 1e-6 && (v[1] - 2.262_741_7).abs() < 1e-6, "{v:?}");
    }
}
