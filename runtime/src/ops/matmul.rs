//! `MatMul` (NumPy semantics, batched with broadcasting) and reference `MatMulInteger`.

use rayon::prelude::*;

use super::{broadcast, shape_err};
use crate::error::Result;
use crate::kernels::gemm_f32::matmul_f32;
use crate::tensor::{shape_of, Tensor, MAX_RANK};

/// How two operands multiply: batch shapes, m, k, n, and which side was a vector.
type MatMulPlan = (Vec<usize>, Vec<usize>, usize, usize, usize, bool, bool);

/// Splits two operands into (batch shapes, m, k, n) following NumPy's matmul rules.
fn plan(a: &[usize], b: &[usize]) -> Result<MatMulPlan> {
    if a.is_empty() || b.is_empty() {
        return Err(shape_err("MatMul of a scalar"));
    }
    let (a_vec, b_vec) = (a.len() == 1, b.len() == 1);
    let (m, k) = if a_vec { (1, a[0]) } else { (a[a.len() - 2], a[a.len() - 1]) };
    let (k2, n) = if b_vec { (b[0], 1) } else { (b[b.len() - 2], b[b.len() - 1]) };
    if k != k2 {
        return Err(shape_err(format!("MatMul: {a:?} · {b:?}")));
    }
    let ab = if a_vec { vec![] } else { a[..a.len() - 2].to_vec() };
    let bb = if b_vec { vec![] } else { b[..b.len() - 2].to_vec() };
    Ok((ab, bb, m, k, n, a_vec, b_vec))
}

/// `MatMul(a, b)` in f32.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ab, bb, m, k, n, a_vec, b_vec) = plan(a.shape(), b.shape())?;
    let x = a.typed::<f32>("MatMul A")?;
    let y = b.typed::<f32>("MatMul B")?;
    let batch = broadcast::broadcast_shapes(&ab, &bb).ok_or_else(|| shape_err(format!("MatMul batch {ab:?} vs {bb:?}")))?;
    let nb: usize = batch.iter().product();
    let mut out = vec![0f32; super::budget::check(&[nb, m, n], "MatMul")?];
    // Offsets of each batch's matrices, with broadcasting.
    let sa = broadcast::broadcast_strides(&ab, &batch);
    let sb = broadcast::broadcast_strides(&bb, &batch);
    let mut offs = Vec::with_capacity(nb);
    if batch.is_empty() {
        offs.push((0, 0));
    } else {
        broadcast::for_each_offset(&batch, [sa, sb], |_, [ia, ib]| offs.push((ia * m * k, ib * k * n)));
    }
    if nb > 1 && m * n * k < 1 << 16 {
        // Many small products (per-head attention): parallel over the batch.
        out.par_chunks_mut(m * n).zip(offs.par_iter()).for_each(|(c, &(oa, ob))| {
            matmul_f32(&x[oa..oa + m * k], &y[ob..ob + k * n], c, m, k, n, false);
        });
    } else {
        for (c, &(oa, ob)) in out.chunks_mut(m * n).zip(&offs) {
            matmul_f32(&x[oa..oa + m * k], &y[ob..ob + k * n], c, m, k, n, false);
        }
    }
    let mut shape: Vec<usize> = batch.to_vec();
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    debug_assert!(shape.len() <= MAX_RANK);
    Ok(Tensor::from_parts(shape_of(&shape)?, out))
}

fn as_i32(t: &Tensor, what: &str) -> Result<Vec<i32>> {
    Ok(t.to_i64_vec(what)?.into_iter().map(|v| v as i32).collect())
}

/// `MatMulInteger(a, b, a_zero_point?, b_zero_point?)` → i32, exact (reference path; constant
/// weights are fused into an int8 `Linear` and never come here).
pub fn matmul_integer(a: &Tensor, b: &Tensor, azp: Option<&Tensor>, bzp: Option<&Tensor>) -> Result<Tensor> {
    let (ab, bb, m, k, n, a_vec, b_vec) = plan(a.shape(), b.shape())?;
    if !bb.is_empty() || b_vec {
        return Err(shape_err("MatMulInteger: only a 2-D B is supported"));
    }
    let x = as_i32(a, "MatMulInteger A")?;
    let y = as_i32(b, "MatMulInteger B")?;
    let za = azp.map(|t| as_i32(t, "a_zero_point")).transpose()?.and_then(|v| v.first().copied()).unwrap_or(0);
    let zb = match bzp {
        Some(t) => as_i32(t, "b_zero_point")?,
        None => vec![0],
    };
    if zb.len() != 1 && zb.len() != n {
        return Err(shape_err("MatMulInteger: b_zero_point must be scalar or per column"));
    }
    let nb: usize = ab.iter().product();
    let mut out = vec![0i32; super::budget::check(&[nb, m, n], "MatMulInteger")?];
    for bi in 0..nb {
        for i in 0..m {
            for j in 0..n {
                let z = if zb.len() == 1 { zb[0] } else { zb[j] };
                let mut acc = 0i32;
                for p in 0..k {
                    acc = acc.wrapping_add((x[(bi * m + i) * k + p] - za).wrapping_mul(y[p * n + j] - z));
                }
                out[(bi * m + i) * n + j] = acc;
            }
        }
    }
    let mut shape = ab;
    if !a_vec {
        shape.push(m);
    }
    shape.push(n);
    Ok(Tensor::from_parts(shape_of(&shape)?, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_matmul_broadcasts_b() {
        // a: [2, 1, 2], b: [2, 2] → [2, 1, 2]
        let a = Tensor::new(&[2, 1, 2], vec![1f32, 2., 3., 4.]).unwrap();
        let b = Tensor::new(&[2, 2], vec![1f32, 0., 0., 2.]).unwrap();
        let c = matmul(&a, &b).unwrap();
        assert_eq!(c.shape(), &[2, 1, 2]);
        assert_eq!(c.as_slice::<f32>().unwrap(), &[1., 4., 3., 8.]);
        let bad = Tensor::new(&[3, 2], vec![0f32; 6]).unwrap();
        assert!(matmul(&a, &bad).is_err());
    }

    #[test]
    fn matmul_integer_subtracts_zero_points() {
        let a = Tensor::new(&[1, 2], vec![130u8, 120]).unwrap();
        let b = Tensor::new(&[2, 1], vec![2i8, -3]).unwrap();
        let c = matmul_integer(&a, &b, Some(&Tensor::scalar(128u8)), None).unwrap();
        // (130-128)*2 + (120-128)*(-3) = 4 + 24
        assert_eq!(c.as_slice::<i32>().unwrap(), &[28]);
    }
}
