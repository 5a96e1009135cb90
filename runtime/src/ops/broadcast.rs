//! NumPy-style broadcasting shared by the elementwise ops.

use crate::error::{Error, Result};
use crate::tensor::{Shape, MAX_RANK};

/// The broadcast of two shapes, or `None` if they are incompatible.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Shape> {
    let rank = a.len().max(b.len());
    let mut out = Shape::new();
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        let d = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
        out.push(d).ok()?;
    }
    Some(out)
}

/// Element strides of `shape` seen through the broadcast `out` shape (0 along broadcast axes).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> [usize; MAX_RANK] {
    let mut strides = [0usize; MAX_RANK];
    let off = out.len() - shape.len();
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        strides[i + off] = if shape[i] == 1 { 0 } else { s };
        s *= shape[i];
    }
    strides
}

/// Visits every output position of `out` with the matching offsets into up to three inputs.
///
/// The innermost axis is walked in a tight loop so the common cases (contiguous rows, a
/// broadcast bias) stay fast without special-casing every layout.
pub fn for_each_offset<const N: usize>(out: &[usize], strides: [[usize; MAX_RANK]; N], mut f: impl FnMut(usize, [usize; N])) {
    let rank = out.len();
    let total: usize = out.iter().product();
    if total == 0 {
        return;
    }
    if rank == 0 {
        f(0, [0; N]);
        return;
    }
    let inner = out[rank - 1];
    let inner_strides: [usize; N] = std::array::from_fn(|k| strides[k][rank - 1]);
    let mut idx = [0usize; MAX_RANK];
    let mut base = [0usize; N];
    let mut o = 0;
    loop {
        for j in 0..inner {
            f(o + j, std::array::from_fn(|k| base[k] + j * inner_strides[k]));
        }
        o += inner;
        if o >= total {
            return;
        }
        // advance the multi-index over the outer axes
        let mut ax = rank - 1;
        loop {
            ax -= 1;
            idx[ax] += 1;
            for k in 0..N {
                base[k] += strides[k][ax];
            }
            if idx[ax] < out[ax] {
                break;
            }
            for k in 0..N {
                base[k] -= strides[k][ax] * out[ax];
            }
            idx[ax] = 0;
        }
    }
}

/// Applies `f` elementwise over two broadcast inputs.
pub fn binary<A: Copy, B: Copy, O>(a: &[A], ash: &[usize], b: &[B], bsh: &[usize], f: impl Fn(A, B) -> O) -> Result<(Shape, Vec<O>)> {
    let out = broadcast_shapes(ash, bsh).ok_or_else(|| {
        Error::InvalidModel(format!("shapes {ash:?} and {bsh:?} do not broadcast"))
    })?;
    let n = super::budget::check(&out, "broadcast")?;
    // Fast paths: same shape, scalar operand, trailing-row broadcast.
    if ash == bsh {
        return Ok((out, a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()));
    }
    if b.len() == 1 && a.len() == n {
        let y = b[0];
        return Ok((out, a.iter().map(|&x| f(x, y)).collect()));
    }
    if a.len() == 1 && b.len() == n {
        let x = a[0];
        return Ok((out, b.iter().map(|&y| f(x, y)).collect()));
    }
    if a.len() == n && !b.is_empty() && bsh.len() <= ash.len() && ash.ends_with(bsh) {
        let mut v = Vec::with_capacity(n);
        for row in a.chunks_exact(b.len()) {
            v.extend(row.iter().zip(b).map(|(&x, &y)| f(x, y)));
        }
        return Ok((out, v));
    }
    let sa = broadcast_strides(ash, &out);
    let sb = broadcast_strides(bsh, &out);
    let mut v = Vec::with_capacity(n);
    for_each_offset(&out, [sa, sb], |_, [ia, ib]| v.push(f(a[ia], b[ib])));
    Ok((out, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_like_numpy() {
        assert_eq!(broadcast_shapes(&[2, 1, 3], &[4, 1]).unwrap().as_slice(), &[2, 4, 3]);
        assert!(broadcast_shapes(&[2, 3], &[4]).is_none());
        let (s, v) = binary(&[1, 2, 3, 4, 5, 6], &[2, 1, 3], &[10, 20], &[2, 1], |x, y| x + y).unwrap();
        assert_eq!(s.as_slice(), &[2, 2, 3]);
        assert_eq!(v, vec![11, 12, 13, 21, 22, 23, 14, 15, 16, 24, 25, 26]);
        let (_, v) = binary(&[1, 2], &[2, 1], &[10, 20, 30], &[3], |x, y| x * y).unwrap();
        assert_eq!(v, vec![10, 20, 30, 20, 40, 60]);
    }
}
