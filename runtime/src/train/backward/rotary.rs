//! Rotary position embeddings, `y = x⊙cos + rot(x)⊙sin` with `rot(x) = concat(−x[hi], x[lo])`
//! along the last axis (the fused [`crate::ops::rotary`] op).
//!
//! The forward takes the two slices' bounds as inputs (the legacy exporter computes the split
//! from the tensor's shape at run time), so the backward does not assume where they are: it
//! slices a tensor of element indices with the same bounds and learns from it which element of
//! x each sliced value came from. That makes the rule exact for any slice the forward accepts.

use crate::error::{Error, Result};
use crate::ops::broadcast::broadcast_shapes;
use crate::ops::gather::slice;
use crate::ops::shape::expand;
use crate::tensor::Tensor;

/// Input gradient of `y = x⊙cos + rot(x)⊙sin`, where `rot(x)` is `−x[hi]` followed by `x[lo]`
/// along the last axis of `d = dy.len() / rows` values, `rows` = rows of that axis.
///
/// `cos` and `sin` are broadcast to y's shape (= x's shape); `hi` (`rows × d_hi`) and `lo`
/// (`rows × d_lo`, `d_hi + d_lo = d`) hold, row-major, the flat index into x of each sliced
/// element. y is linear in x, so
/// `dx[i] = dy[i]·cos[i] − Σ_{hi[r,j] = i} dy[r,j]·sin[r,j] + Σ_{lo[r,j] = i} dy[r,d_hi+j]·sin[r,d_hi+j]`.
///
/// Panics if the lengths do not fit each other or an index is out of range.
pub fn rotary_backward(dy: &[f32], cos: &[f32], sin: &[f32], hi: &[usize], lo: &[usize], d: usize) -> Vec<f32> {
    assert!(d > 0 && dy.len().is_multiple_of(d), "rotary_backward: dy is not rows of {d}");
    assert!(cos.len() == dy.len() && sin.len() == dy.len(), "rotary_backward: cos/sin are not broadcast to dy");
    let rows = dy.len() / d;
    assert!(rows > 0 && hi.len().is_multiple_of(rows) && lo.len().is_multiple_of(rows), "rotary_backward: slices are not {rows} rows");
    let (dh, dl) = (hi.len() / rows, lo.len() / rows);
    assert_eq!(dh + dl, d, "rotary_backward: the slices' widths {dh} + {dl} are not {d}");
    let mut dx: Vec<f32> = dy.iter().zip(cos).map(|(g, c)| g * c).collect();
    for r in 0..rows {
        let (g, s) = (&dy[r * d..(r + 1) * d], &sin[r * d..(r + 1) * d]);
        for j in 0..dh {
            dx[hi[r * dh + j]] -= g[j] * s[j];
        }
        for j in 0..dl {
            dx[lo[r * dl + j]] += g[dh + j] * s[dh + j];
        }
    }
    dx
}

/// Flat indices into a tensor of `shape` of the elements a `Slice` with these bounds takes,
/// in the order the slice lists them.
pub fn slice_indices(shape: &[usize], starts: &Tensor, ends: &Tensor, axes: Option<&Tensor>, steps: Option<&Tensor>) -> Result<Vec<usize>> {
    let n = shape.iter().product::<usize>();
    let iota = Tensor::new(shape, (0..n as i64).collect::<Vec<i64>>())?;
    let picked = slice(&iota, starts, ends, axes, steps)?;
    // The values are indices below `n` made just above, so they are non-negative.
    Ok(picked.to_i64_vec("slice indices")?.into_iter().map(|i| i as usize).collect())
}

/// The input gradient of a fused `Rotary` node from its 11 inputs (x, cos, sin, then the
/// negated slice's starts/ends/axes/steps, then the kept slice's) and `dy`.
pub fn rotary_input_grad(inputs: &[Option<&Tensor>; 11], dy: &[f32]) -> Result<Vec<f32>> {
    let req = |i: usize| inputs[i].ok_or_else(|| Error::Config(format!("Rotary backward: input {i} missing")));
    let (x, cos, sin) = (req(0)?, req(1)?, req(2)?);
    let shape = x.shape();
    let fits = |t: &Tensor| broadcast_shapes(shape, t.shape()).is_some_and(|s| s.as_slice() == shape);
    if !fits(cos) || !fits(sin) || dy.len() != x.len() {
        return Err(Error::Config(format!("Rotary backward: cos {:?} / sin {:?} do not broadcast to x {shape:?}", cos.shape(), sin.shape())));
    }
    let target = Tensor::new(&[shape.len()], shape.iter().map(|&d| d as i64).collect::<Vec<i64>>())?;
    let (cos, sin) = (expand(cos, &target)?, expand(sin, &target)?);
    let hi = slice_indices(shape, req(3)?, req(4)?, inputs[5], inputs[6])?;
    let lo = slice_indices(shape, req(7)?, req(8)?, inputs[9], inputs[10])?;
    let d = shape.last().copied().unwrap_or(0);
    let rows = x.len().checked_div(d).unwrap_or(0);
    if rows == 0 || hi.len() + lo.len() != x.len() {
        return Err(Error::Config(format!("Rotary backward: slices of {} and {} elements do not rebuild x {shape:?}", hi.len(), lo.len())));
    }
    Ok(rotary_backward(dy, cos.typed::<f32>("Rotary cos")?, sin.typed::<f32>("Rotary sin")?, &hi, &lo, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rotary::rotary;
    use crate::train::backward::gradcheck::{check, dot, Rng};

    fn t1(v: i64) -> Tensor {
        Tensor::new(&[1], vec![v]).unwrap()
    }

    /// Checks dx for x `[2, 3, 5, d]` against finite differences of the crate's forward, with
    /// cos and sin `[1, 1, 5, d]` broadcast over batch and heads, and the slices given by
    /// (hi start, hi end, lo start, lo end) on the last axis.
    fn check_case(d: usize, bounds: (i64, i64, i64, i64), seed: u64) {
        let shape = [2usize, 3, 5, d];
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(seed);
        let x = rng.f32s(n, -1.0, 1.0);
        let cos = Tensor::new(&[1, 1, 5, d], rng.f32s(5 * d, -1.0, 1.0)).unwrap();
        let sin = Tensor::new(&[1, 1, 5, d], rng.f32s(5 * d, -1.0, 1.0)).unwrap();
        let dy = rng.f32s(n, -1.0, 1.0);
        let (hs, he, ls, le, axis) = (t1(bounds.0), t1(bounds.1), t1(bounds.2), t1(bounds.3), t1(-1));
        let forward = |x: &[f32]| {
            let xt = Tensor::new(&shape, x.to_vec()).unwrap();
            rotary(&[Some(&xt), Some(&cos), Some(&sin), Some(&hs), Some(&he), Some(&axis), None, Some(&ls), Some(&le), Some(&axis), None]).unwrap().to_f32_vec()
        };
        let xt = Tensor::new(&shape, x.clone()).unwrap();
        let inputs = [Some(&xt), Some(&cos), Some(&sin), Some(&hs), Some(&he), Some(&axis), None, Some(&ls), Some(&le), Some(&axis), None];
        let dx = rotary_input_grad(&inputs, &dy).unwrap();
        // y is linear in x: central differences have no truncation error, and a step changes
        // only the two outputs that read x[i], whose f32 rounding (~1e-7 of O(1) values) over
        // 2h = 0.5 stays below 1e-6. A sign or index error is off by O(1).
        check("rotary dx", &x, &dx, 0.25, 1e-5, |x| dot(&dy, &forward(x)));
    }

    #[test]
    fn rotary_gradient_matches_finite_differences_for_the_exported_halves() {
        // The dynamo export's bounds: hi = [d/2, i64::MAX), lo = [0, d/2).
        check_case(6, (3, i64::MAX, 0, 3), 21);
    }

    #[test]
    fn rotary_gradient_matches_finite_differences_for_uneven_slices() {
        // Any slices whose widths add up to d: hi = [1, 5), lo = [-1, MAX) = [4, 5) on d = 5,
        // so one element (x[4]) is read by both slices and x[0] by neither.
        check_case(5, (1, i64::MAX, -1, i64::MAX), 22);
    }

    #[test]
    fn rotary_backward_by_hand() {
        // d = 2, hi = [1], lo = [0]: y0 = x0·c0 − x1·s0, y1 = x1·c1 + x0·s1, so
        // dx0 = dy0·c0 + dy1·s1 and dx1 = dy1·c1 − dy0·s0.
        let dx = rotary_backward(&[1.0, 10.0], &[2.0, 3.0], &[5.0, 7.0], &[1], &[0], 2);
        assert_eq!(dx, [2.0 + 70.0, 30.0 - 5.0]);
    }

    #[test]
    fn cos_that_does_not_broadcast_to_x_is_an_error() {
        let x = Tensor::new(&[1, 2], vec![1f32, 2.0]).unwrap();
        let wide = Tensor::new(&[2, 2], vec![1f32; 4]).unwrap();
        let (a, b) = (t1(1), t1(0));
        let e = rotary_input_grad(&[Some(&x), Some(&wide), Some(&wide), Some(&a), Some(&t1(2)), None, None, Some(&b), Some(&a), None, None], &[1.0, 1.0]);
        assert!(matches!(e, Err(Error::Config(m)) if m.contains("broadcast")));
    }
}
