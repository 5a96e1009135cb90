//! `ReduceMean`.

use super::{norm_axis, shape_err};
use crate::error::Result;
use crate::tensor::{shape_of, Tensor, MAX_RANK};

/// `ReduceMean(x, axes)`.
pub fn reduce_mean(x: &Tensor, attr: Option<&[i64]>, input: Option<&Tensor>, keepdims: bool, noop_empty: bool) -> Result<Tensor> {
    let v = x.typed::<f32>("ReduceMean input")?;
    let rank = x.rank();
    let axes: Vec<i64> = match (attr, input) {
        (Some(a), _) => a.to_vec(),
        (None, Some(t)) => t.to_i64_vec("ReduceMean axes")?,
        (None, None) => vec![],
    };
    let mut red = [false; MAX_RANK];
    if axes.is_empty() {
        if noop_empty {
            return Ok(x.clone());
        }
        red[..rank].fill(true);
    }
    for a in axes {
        red[norm_axis(a, rank)?] = true;
    }
    let sh = x.shape();
    let out_full: Vec<usize> = (0..rank).map(|i| if red[i] { 1 } else { sh[i] }).collect();
    let count: usize = (0..rank).filter(|&i| red[i]).map(|i| sh[i]).product();
    if count == 0 {
        return Err(shape_err("ReduceMean over an empty axis"));
    }
    let n_out: usize = out_full.iter().product();
    let mut out = vec![0f32; n_out];
    // Trailing reduced block: contiguous rows.
    let first_red = (0..rank).find(|&i| red[i]).unwrap_or(rank);
    if (first_red..rank).all(|i| red[i]) {
        for (o, row) in out.iter_mut().zip(v.chunks_exact(count)) {
            *o = row.iter().sum::<f32>() / count as f32;
        }
    } else {
        let mut out_strides = [0usize; MAX_RANK];
        let mut s = 1;
        for i in (0..rank).rev() {
            out_strides[i] = if red[i] { 0 } else { s };
            s *= out_full[i];
        }
        let mut idx = [0usize; MAX_RANK];
        for &val in v {
            let o: usize = (0..rank).map(|i| idx[i] * out_strides[i]).sum();
            out[o] += val;
            for i in (0..rank).rev() {
                idx[i] += 1;
                if idx[i] < sh[i] {
                    break;
                }
                idx[i] = 0;
            }
        }
        out.iter_mut().for_each(|o| *o /= count as f32);
    }
    let shape: Vec<usize> = if keepdims { out_full } else { (0..rank).filter(|&i| !red[i]).map(|i| sh[i]).collect() };
    Ok(Tensor::from_parts(shape_of(&shape)?, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_over_inner_and_outer_axes() {
        let x = Tensor::new(&[2, 3], vec![1f32, 2., 3., 4., 5., 6.]).unwrap();
        let r = reduce_mean(&x, Some(&[-1]), None, true, false).unwrap();
        assert_eq!((r.shape(), r.as_slice::<f32>().unwrap()), (&[2usize, 1][..], &[2f32, 5.][..]));
        let r = reduce_mean(&x, Some(&[0]), None, false, false).unwrap();
        assert_eq!(r.as_slice::<f32>().unwrap(), &[2.5, 3.5, 4.5]);
    }
}
