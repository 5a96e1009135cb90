//! `Rotary`: rotary position embeddings on per-head queries or keys,
//! y = x·cos + rotate_half(x)·sin, where rotate_half(x) = concat(−x[h..], x[..h]).
//!
//! Both exporters write it as `Slice`/`Neg`/`Concat`/`Mul`/`Add`; the legacy one computes the
//! split point from the tensor's shape at run time, so the op takes the slices' bounds as
//! inputs and applies them exactly as the exported ops would.

use super::{elementwise, gather, shape};
use crate::error::Result;
use crate::ops::BinaryOp;
use crate::tensor::Tensor;

/// Inputs, in order: x, cos, sin, then (starts, ends, axes, steps) of the slice that is negated
/// (the second half), then the same four of the slice kept as is (the first half). Absent
/// `axes`/`steps` are `None`.
pub fn rotary(inputs: &[Option<&Tensor>; 11]) -> Result<Tensor> {
    let req = |i: usize| inputs[i].ok_or_else(|| super::shape_err(format!("Rotary: input {i} missing")));
    let x = req(0)?;
    let hi = gather::slice(x, req(3)?, req(4)?, inputs[5], inputs[6])?;
    let lo = gather::slice(x, req(7)?, req(8)?, inputs[9], inputs[10])?;
    let neg = elementwise::unary(elementwise::UnaryOp::Neg, &hi)?;
    let rot = shape::concat(&[&neg, &lo], -1)?;
    let a = elementwise::binary(BinaryOp::Mul, x, req(1)?)?;
    let b = elementwise::binary(BinaryOp::Mul, &rot, req(2)?)?;
    elementwise::binary(BinaryOp::Add, &a, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_halves() {
        // x = [1, 2, 3, 4]; rotate_half = [-3, -4, 1, 2]; cos = 1, sin = 1 → [-2, -2, 4, 6]
        let x = Tensor::new(&[1, 4], vec![1f32, 2., 3., 4.]).unwrap();
        let one = Tensor::new(&[1, 4], vec![1f32; 4]).unwrap();
        let t = |v: i64| Tensor::new(&[1], vec![v]).unwrap();
        let (two, end, zero, last) = (t(2), t(i64::MAX), t(0), t(-1));
        let y = rotary(&[Some(&x), Some(&one), Some(&one), Some(&two), Some(&end), Some(&last), None, Some(&zero), Some(&two), Some(&last), None]).unwrap();
        assert_eq!(y.as_slice::<f32>().unwrap(), &[-2., -2., 4., 6.]);
    }
}
