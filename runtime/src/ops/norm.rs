//! Normalizations: `LayerNorm` (ONNX `LayerNormalization` and its decomposed form),
//! `AddLayerNorm` (residual add + LayerNorm) and `RmsNorm` (Llama), over the trailing axes,
//! blocks of rows in parallel. The arithmetic lives in [`crate::kernels::norm`].

use rayon::prelude::*;

use super::{norm_axis, shape_err};
use crate::error::Result;
use crate::kernels::norm as kernels;
use crate::tensor::Tensor;

/// Rows per parallel task: one block of the kernels' 16 lanes.
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
    out.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(v.par_chunks(d * ROWS_PER_TASK))
        .for_each(|(o, x)| kernels::layer_norm_block(x, d, g, b, eps, o));
    Ok(Tensor::from_parts(x.dims().clone(), out))
}

/// Residual add fused with LayerNorm: y = LayerNorm(x + skip) over the last axis.
pub fn add_layer_norm(x: &Tensor, skip: &Tensor, gamma: &Tensor, beta: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    if x.shape() != skip.shape() {
        // Only equal shapes are fused; anything else is a graph the pass should not have matched.
        return Err(shape_err(format!("AddLayerNorm: {:?} + {:?}", x.shape(), skip.shape())));
    }
    let d = *x.shape().last().ok_or_else(|| shape_err("AddLayerNorm of a scalar"))?;
    let (a, s) = (x.typed::<f32>("AddLayerNorm input")?, skip.typed::<f32>("AddLayerNorm skip")?);
    let g = gamma.typed::<f32>("AddLayerNorm scale")?;
    let b = beta.map(|b| b.typed::<f32>("AddLayerNorm bias")).transpose()?;
    if d == 0 || g.len() != d || b.is_some_and(|b| b.len() != d) {
        return Err(shape_err(format!("AddLayerNorm: scale/bias do not match {d} features")));
    }
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(a.par_chunks(d * ROWS_PER_TASK).zip(s.par_chunks(d * ROWS_PER_TASK)))
        .for_each(|(o, (a, s))| kernels::add_layer_norm_block(a, s, d, g, b, eps, o));
    Ok(Tensor::from_parts(x.dims().clone(), out))
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
    out.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(v.par_chunks(d * ROWS_PER_TASK))
        .for_each(|(o, x)| kernels::rms_norm_rows(x, d, w, eps, o));
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
    fn add_layer_norm_equals_add_then_layer_norm() {
        let x = Tensor::new(&[2, 5], (0..10).map(|i| (i as f32 * 0.37).sin() * 3.0).collect()).unwrap();
        let s = Tensor::new(&[2, 5], (0..10).map(|i| (i as f32 * 0.11).cos()).collect()).unwrap();
        let g = Tensor::new(&[5], vec![1.0f32, 0.5, 2.0, -1.0, 1.5]).unwrap();
        let b = Tensor::new(&[5], vec![0.1f32; 5]).unwrap();
        let sum = crate::ops::elementwise::binary(crate::ops::BinaryOp::Add, &x, &s).unwrap();
        let want = layer_norm(&sum, &g, Some(&b), -1, 1e-5).unwrap();
        let got = add_layer_norm(&x, &s, &g, Some(&b), 1e-5).unwrap();
        // Welford vs. E[x²]−mean²: the same statistics, different rounding.
        for (a, b) in got.as_slice::<f32>().unwrap().iter().zip(want.as_slice::<f32>().unwrap()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(add_layer_norm(&x, &b, &g, None, 1e-5).is_err());
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
