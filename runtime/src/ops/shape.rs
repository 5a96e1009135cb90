//! Shape ops: `Shape`, `Reshape`, `Squeeze`, `Unsqueeze`, `Flatten`, `Concat`, `Transpose`,
//! `Expand`, `Range`, `ConstantOfShape`. Metadata-only ones share the input's storage.

use super::{broadcast, norm_axis, shape_err};
use crate::error::Result;
use crate::tensor::{numel, shape_of, Data, Element, Shape, Tensor, MAX_RANK};

/// `Shape(x)[start:end]` as i64.
pub fn shape(x: &Tensor, start: i64, end: Option<i64>) -> Tensor {
    let r = x.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (clamp(start), clamp(end.unwrap_or(r)));
    let dims: Vec<i64> = x.shape()[s..e.max(s)].iter().map(|&d| d as i64).collect();
    let n = dims.len();
    Tensor::from_parts(shape_of(&[n]).expect("rank 1"), dims)
}

/// `Reshape` with ONNX's 0 ("copy") and -1 ("infer") entries.
pub fn reshape(x: &Tensor, target: &Tensor, allowzero: bool) -> Result<Tensor> {
    let t = target.to_i64_vec("Reshape shape")?;
    let mut out: Vec<usize> = Vec::with_capacity(t.len());
    let mut infer = None;
    for (i, &d) in t.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(*x.shape().get(i).ok_or_else(|| shape_err("Reshape: 0 past the input's rank"))?),
            d if d >= 0 => out.push(d as usize),
            _ => return Err(shape_err(format!("Reshape: bad target {t:?}"))),
        }
    }
    if let Some(i) = infer {
        let known = out.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(0);
        if known == 0 || !x.len().is_multiple_of(known) {
            return Err(shape_err(format!("Reshape: cannot infer -1 in {t:?} for {:?}", x.shape())));
        }
        out[i] = x.len() / known;
    }
    if out.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(x.len()) {
        return Err(shape_err(format!("Reshape: {:?} cannot become {t:?}", x.shape())));
    }
    x.reshaped(shape_of(&out)?)
}

fn axes_from(attr: Option<&[i64]>, input: Option<&Tensor>) -> Result<Option<Vec<i64>>> {
    match (attr, input) {
        (Some(a), _) => Ok(Some(a.to_vec())),
        (None, Some(t)) => Ok(Some(t.to_i64_vec("axes")?)),
        (None, None) => Ok(None),
    }
}

/// `Squeeze`: drop the given size-1 axes (all size-1 axes if none given).
pub fn squeeze(x: &Tensor, attr: Option<&[i64]>, input: Option<&Tensor>) -> Result<Tensor> {
    let axes = axes_from(attr, input)?;
    let mut drop = [false; MAX_RANK];
    match axes {
        Some(axes) => {
            for a in axes {
                let a = norm_axis(a, x.rank())?;
                if x.shape()[a] != 1 {
                    return Err(shape_err(format!("Squeeze: axis {a} of {:?} is not 1", x.shape())));
                }
                drop[a] = true;
            }
        }
        None => {
            for (i, &d) in x.shape().iter().enumerate() {
                drop[i] = d == 1;
            }
        }
    }
    let out: Vec<usize> = x.shape().iter().enumerate().filter(|(i, _)| !drop[*i]).map(|(_, &d)| d).collect();
    x.reshaped(shape_of(&out)?)
}

/// `Unsqueeze`: insert size-1 axes at the given output positions.
pub fn unsqueeze(x: &Tensor, attr: Option<&[i64]>, input: Option<&Tensor>) -> Result<Tensor> {
    let axes = axes_from(attr, input)?.ok_or_else(|| shape_err("Unsqueeze needs axes"))?;
    let rank = x.rank() + axes.len();
    let mut ins = [false; MAX_RANK];
    for a in axes {
        let a = norm_axis(a, rank)?;
        if ins[a] {
            return Err(shape_err("Unsqueeze: repeated axis"));
        }
        ins[a] = true;
    }
    let mut it = x.shape().iter();
    let out: Vec<usize> = (0..rank).map(|i| if ins[i] { 1 } else { *it.next().unwrap_or(&1) }).collect();
    x.reshaped(shape_of(&out)?)
}

/// `Flatten` to 2-D at `axis`.
pub fn flatten(x: &Tensor, axis: i64) -> Result<Tensor> {
    let r = x.rank() as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..=r).contains(&a) {
        return Err(shape_err(format!("Flatten: axis {axis} for rank {r}")));
    }
    let (outer, inner) = x.shape().split_at(a as usize);
    x.reshaped(shape_of(&[numel(outer), numel(inner)])?)
}

fn concat_typed<T: Element>(ts: &[&Tensor], axis: usize, out_shape: Shape) -> Result<Tensor> {
    let outer: usize = out_shape[..axis].iter().product();
    let parts: Vec<(&[T], usize)> = ts
        .iter()
        .map(|t| Ok((t.typed::<T>("Concat input")?, t.shape()[axis..].iter().product::<usize>())))
        .collect::<Result<_>>()?;
    let mut v = Vec::with_capacity(numel(&out_shape));
    for o in 0..outer {
        for (data, chunk) in &parts {
            v.extend_from_slice(&data[o * chunk..(o + 1) * chunk]);
        }
    }
    Ok(Tensor::from_parts(out_shape, v))
}

/// `Concat` along `axis`.
pub fn concat(ts: &[&Tensor], axis: i64) -> Result<Tensor> {
    let first = ts.first().ok_or_else(|| shape_err("Concat of nothing"))?;
    let axis = norm_axis(axis, first.rank())?;
    let mut out = first.dims().clone();
    out[axis] = 0;
    for t in ts {
        if t.rank() != first.rank() || t.dtype() != first.dtype() {
            return Err(shape_err("Concat inputs differ in rank or dtype"));
        }
        for (i, (&a, &b)) in t.shape().iter().zip(first.shape()).enumerate() {
            if i != axis && a != b {
                return Err(shape_err(format!("Concat: {:?} vs {:?} on axis {i}", t.shape(), first.shape())));
            }
        }
        out[axis] += t.shape()[axis];
    }
    match first.data() {
        Data::F32(_) => concat_typed::<f32>(ts, axis, out),
        Data::I64(_) => concat_typed::<i64>(ts, axis, out),
        Data::I32(_) => concat_typed::<i32>(ts, axis, out),
        Data::I8(_) => concat_typed::<i8>(ts, axis, out),
        Data::U8(_) => concat_typed::<u8>(ts, axis, out),
        Data::Bool(_) => concat_typed::<bool>(ts, axis, out),
    }
}

/// Copies `x` (of `shape`) into the layout given by `perm`.
pub fn permute<T: Copy>(x: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let rank = shape.len();
    let mut in_strides = [0usize; MAX_RANK];
    let mut s = 1;
    for i in (0..rank).rev() {
        in_strides[i] = s;
        s *= shape[i];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let mut strides = [0usize; MAX_RANK];
    for (i, &p) in perm.iter().enumerate() {
        strides[i] = in_strides[p];
    }
    let mut v = Vec::with_capacity(x.len());
    if rank > 0 && perm[rank - 1] == rank - 1 {
        // The last axis stays innermost: copy whole rows.
        let row = shape[rank - 1];
        let outer = &out_shape[..rank - 1];
        let mut st = [[0usize; MAX_RANK]; 1];
        st[0][..rank - 1].copy_from_slice(&strides[..rank - 1]);
        if outer.is_empty() {
            return x.to_vec();
        }
        broadcast::for_each_offset(outer, st, |_, [o]| v.extend_from_slice(&x[o..o + row]));
    } else {
        broadcast::for_each_offset(&out_shape, [strides], |_, [o]| v.push(x[o]));
    }
    v
}

/// `Transpose`.
pub fn transpose(x: &Tensor, perm: Option<&[usize]>) -> Result<Tensor> {
    let rank = x.rank();
    let perm: Vec<usize> = perm.map(<[usize]>::to_vec).unwrap_or_else(|| (0..rank).rev().collect());
    let mut seen = [false; MAX_RANK];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return Err(shape_err(format!("Transpose: perm {perm:?} for rank {rank}")));
    }
    let out_shape = shape_of(&perm.iter().map(|&p| x.shape()[p]).collect::<Vec<_>>())?;
    Ok(match x.data() {
        Data::F32(v) => Tensor::from_parts(out_shape, permute(v, x.shape(), &perm)),
        Data::I64(v) => Tensor::from_parts(out_shape, permute(v, x.shape(), &perm)),
        Data::I32(v) => Tensor::from_parts(out_shape, permute(v, x.shape(), &perm)),
        Data::I8(v) => Tensor::from_parts(out_shape, permute(v, x.shape(), &perm)),
        Data::U8(v) => Tensor::from_parts(out_shape, permute(v, x.shape(), &perm)),
        Data::Bool(v) => Tensor::from_parts(out_shape, permute(v, x.shape(), &perm)),
    })
}

fn expand_typed<T: Element>(x: &[T], shape: &[usize], out: Shape) -> Tensor {
    let strides = broadcast::broadcast_strides(shape, &out);
    let mut v = Vec::with_capacity(numel(&out));
    broadcast::for_each_offset(&out, [strides], |_, [i]| v.push(x[i]));
    Tensor::from_parts(out, v)
}

/// `Expand` (bidirectional broadcast to a shape).
pub fn expand(x: &Tensor, target: &Tensor) -> Result<Tensor> {
    let t: Vec<usize> = target
        .to_i64_vec("Expand shape")?
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| shape_err(format!("Expand: negative dim {d}"))))
        .collect::<Result<_>>()?;
    let out = broadcast::broadcast_shapes(x.shape(), &t)
        .ok_or_else(|| shape_err(format!("Expand: {:?} to {t:?}", x.shape())))?;
    super::budget::check(&out, "Expand")?;
    if out.as_slice() == x.shape() {
        return Ok(x.clone());
    }
    Ok(match x.data() {
        Data::F32(v) => expand_typed(v, x.shape(), out),
        Data::I64(v) => expand_typed(v, x.shape(), out),
        Data::I32(v) => expand_typed(v, x.shape(), out),
        Data::I8(v) => expand_typed(v, x.shape(), out),
        Data::U8(v) => expand_typed(v, x.shape(), out),
        Data::Bool(v) => expand_typed(v, x.shape(), out),
    })
}

/// `Range(start, limit, delta)`.
pub fn range(start: &Tensor, limit: &Tensor, delta: &Tensor) -> Result<Tensor> {
    match (start.data(), limit.data(), delta.data()) {
        (Data::F32(s), Data::F32(l), Data::F32(d)) => {
            let (s, l, d) = (s[0], l[0], d[0]);
            let n = ((l - s) / d).ceil().max(0.0) as usize;
            if d == 0.0 {
                return Err(shape_err("Range: delta 0"));
            }
            super::budget::check(&[n], "Range")?;
            Ok(Tensor::from_parts(shape_of(&[n])?, (0..n).map(|i| s + i as f32 * d).collect()))
        }
        _ => {
            let (s, l, d) = (
                start.to_i64_vec("Range start")?[0],
                limit.to_i64_vec("Range limit")?[0],
                delta.to_i64_vec("Range delta")?[0],
            );
            if d == 0 {
                return Err(shape_err("Range: delta 0"));
            }
            let span = l.saturating_sub(s);
            let n = if (span > 0) == (d > 0) && span != 0 { (span.unsigned_abs().div_ceil(d.unsigned_abs())) as usize } else { 0 };
            super::budget::check(&[n], "Range")?;
            let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
            let t = Tensor::from_parts(shape_of(&[n])?, v);
            Ok(if start.dtype() == crate::tensor::DType::I32 { super::elementwise::cast(&t, start.dtype()) } else { t })
        }
    }
}

/// `ConstantOfShape(shape)` filled with `value`.
pub fn constant_of_shape(shape: &Tensor, value: &Tensor) -> Result<Tensor> {
    let dims: Vec<usize> = shape
        .to_i64_vec("ConstantOfShape shape")?
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| shape_err("ConstantOfShape: negative dim")))
        .collect::<Result<_>>()?;
    let n = super::budget::check(&dims, "ConstantOfShape")?;
    let s = shape_of(&dims)?;
    Ok(match value.data() {
        Data::F32(v) => Tensor::from_parts(s, vec![v[0]; n]),
        Data::I64(v) => Tensor::from_parts(s, vec![v[0]; n]),
        Data::I32(v) => Tensor::from_parts(s, vec![v[0]; n]),
        Data::I8(v) => Tensor::from_parts(s, vec![v[0]; n]),
        Data::U8(v) => Tensor::from_parts(s, vec![v[0]; n]),
        Data::Bool(v) => Tensor::from_parts(s, vec![v[0]; n]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_elements_like_numpy() {
        let x = Tensor::new(&[2, 3, 2], (0..12).map(|v| v as f32).collect()).unwrap();
        let t = transpose(&x, Some(&[1, 0, 2])).unwrap();
        assert_eq!(t.shape(), &[3, 2, 2]);
        assert_eq!(t.as_slice::<f32>().unwrap(), &[0., 1., 6., 7., 2., 3., 8., 9., 4., 5., 10., 11.]);
        let t = transpose(&x, Some(&[2, 0, 1])).unwrap();
        assert_eq!(t.as_slice::<f32>().unwrap(), &[0., 2., 4., 6., 8., 10., 1., 3., 5., 7., 9., 11.]);
        assert!(transpose(&x, Some(&[0, 0, 1])).is_err());
    }

    #[test]
    fn reshape_copies_and_infers() {
        let x = Tensor::new(&[2, 3, 4], vec![0f32; 24]).unwrap();
        let t = Tensor::new(&[3], vec![0i64, -1, 2]).unwrap();
        assert_eq!(reshape(&x, &t, false).unwrap().shape(), &[2, 6, 2]);
        let bad = Tensor::new(&[2], vec![5i64, -1]).unwrap();
        assert!(reshape(&x, &bad, false).is_err());
    }

    #[test]
    fn range_counts_like_onnx() {
        let r = range(&Tensor::scalar(0i64), &Tensor::scalar(5i64), &Tensor::scalar(2i64)).unwrap();
        assert_eq!(r.as_slice::<i64>().unwrap(), &[0, 2, 4]);
        let r = range(&Tensor::scalar(5i64), &Tensor::scalar(0i64), &Tensor::scalar(1i64)).unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn concat_and_expand() {
        let a = Tensor::new(&[2, 1], vec![1i64, 2]).unwrap();
        let b = Tensor::new(&[2, 2], vec![3i64, 4, 5, 6]).unwrap();
        let c = concat(&[&a, &b], 1).unwrap();
        assert_eq!(c.as_slice::<i64>().unwrap(), &[1, 3, 4, 2, 5, 6]);
        let e = expand(&a, &Tensor::new(&[2], vec![2i64, 3]).unwrap()).unwrap();
        assert_eq!(e.as_slice::<i64>().unwrap(), &[1, 1, 1, 2, 2, 2]);
    }
}
