//! `Softmax` along one axis (opset 13 semantics).

use rayon::prelude::*;

use super::norm_axis;
use crate::error::Result;
use crate::kernels::softmax::softmax_row;
use crate::tensor::Tensor;

/// `Softmax(x, axis)`.
pub fn softmax(x: &Tensor, axis: i64) -> Result<Tensor> {
    let a = norm_axis(axis, x.rank())?;
    let src = x.typed::<f32>("Softmax input")?;
    let dim = x.shape()[a];
    let inner: usize = x.shape()[a + 1..].iter().product();
    let mut v = src.to_vec();
    if dim == 0 {
        return Ok(Tensor::from_parts(x.dims().clone(), v));
    }
    if inner == 1 {
        v.par_chunks_mut(dim.max(1) * 64).for_each(|c| c.chunks_mut(dim).for_each(softmax_row));
    } else {
        let mut row = vec![0f32; dim];
        for block in v.chunks_mut(dim * inner) {
            for j in 0..inner {
                for i in 0..dim {
                    row[i] = block[i * inner + j];
                }
                softmax_row(&mut row);
                for i in 0..dim {
                    block[i * inner + j] = row[i];
                }
            }
        }
    }
    Ok(Tensor::from_parts(x.dims().clone(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_on_any_axis() {
        let x = Tensor::new(&[2, 3], vec![1f32, 2., 3., 1000., 1000., -1000.]).unwrap();
        let s = softmax(&x, -1).unwrap();
        let v = s.as_slice::<f32>().unwrap();
        // softmax(1,2,3) = (0.0900306, 0.2447285, 0.6652410)
        assert!((v[0] - 0.090_030_6).abs() < 1e-6 && (v[2] - 0.665_241).abs() < 1e-6);
        assert!((v[3] - 0.5).abs() < 1e-6 && v[5] == 0.0);
        let s0 = softmax(&x, 0).unwrap();
        let v0 = s0.as_slice::<f32>().unwrap();
        assert!((v0[0] + v0[3] - 1.0).abs() < 1e-6);
    }
}
