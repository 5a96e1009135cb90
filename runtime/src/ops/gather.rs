//! Indexing ops: `Gather` (also the embedding lookup), `GatherND`, `Slice`.

use super::{norm_axis, shape_err};
use crate::error::Result;
use crate::tensor::{numel, shape_of, Data, Element, Shape, Tensor};

fn resolve(i: i64, dim: usize) -> Result<usize> {
    let j = if i < 0 { i + dim as i64 } else { i };
    if j < 0 || j >= dim as i64 {
        return Err(shape_err(format!("index {i} out of range for a dimension of {dim}")));
    }
    Ok(j as usize)
}

fn gather_typed<T: Element>(x: &[T], shape: &[usize], idx: &[i64], axis: usize, out: Shape) -> Result<Tensor> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let dim = shape[axis];
    let mut v = Vec::with_capacity(numel(&out));
    for o in 0..outer {
        for &i in idx {
            let j = resolve(i, dim)?;
            let start = (o * dim + j) * inner;
            v.extend_from_slice(&x[start..start + inner]);
        }
    }
    Ok(Tensor::from_parts(out, v))
}

/// `Gather(data, indices)` along `axis`.
pub fn gather(x: &Tensor, indices: &Tensor, axis: i64) -> Result<Tensor> {
    let axis = norm_axis(axis, x.rank())?;
    let idx = indices.to_i64_vec("Gather indices")?;
    let mut out: Vec<usize> = x.shape()[..axis].to_vec();
    out.extend_from_slice(indices.shape());
    out.extend_from_slice(&x.shape()[axis + 1..]);
    super::budget::check(&out, "Gather")?;
    let out = shape_of(&out)?;
    let sh = x.shape();
    match x.data() {
        Data::F32(v) => gather_typed(v, sh, &idx, axis, out),
        Data::I64(v) => gather_typed(v, sh, &idx, axis, out),
        Data::I32(v) => gather_typed(v, sh, &idx, axis, out),
        Data::I8(v) => gather_typed(v, sh, &idx, axis, out),
        Data::U8(v) => gather_typed(v, sh, &idx, axis, out),
        Data::Bool(v) => gather_typed(v, sh, &idx, axis, out),
    }
}

/// `Embedding`: rows of a 2-D table for each id, dequantized on the way when the table is
/// int8/uint8 with a per-tensor (scale, zero point), as ONNX Runtime's `DequantizeLinear`
/// computes it: (q − zp) · scale.
pub fn embedding(table: &Tensor, ids: &Tensor, dequant: Option<(f32, i64)>) -> Result<Tensor> {
    let (rows, dim) = match table.shape() {
        [r, d] => (*r, *d),
        s => return Err(shape_err(format!("Embedding table must be 2-D, got {s:?}"))),
    };
    let idx = ids.to_i64_vec("Embedding ids")?;
    let mut shape: Vec<usize> = ids.shape().to_vec();
    shape.push(dim);
    let shape = shape_of(&shape)?;
    let row_of = |i: i64| resolve(i, rows);
    let mut out = Vec::with_capacity(idx.len() * dim);
    match (table.data(), dequant) {
        (Data::F32(t), None) => {
            for &i in &idx {
                let r = row_of(i)?;
                out.extend_from_slice(&t[r * dim..(r + 1) * dim]);
            }
        }
        (Data::U8(t), Some((scale, zp))) => {
            for &i in &idx {
                let r = row_of(i)?;
                out.extend(t[r * dim..(r + 1) * dim].iter().map(|&q| (i32::from(q) - zp as i32) as f32 * scale));
            }
        }
        (Data::I8(t), Some((scale, zp))) => {
            for &i in &idx {
                let r = row_of(i)?;
                out.extend(t[r * dim..(r + 1) * dim].iter().map(|&q| (i32::from(q) - zp as i32) as f32 * scale));
            }
        }
        _ => return Err(shape_err(format!("Embedding of a {:?} table", table.dtype()))),
    }
    Ok(Tensor::from_parts(shape, out))
}

/// Prompt tuning: `x` (`[batch, seq, dim]`, looked-up embeddings) with the first `len` rows of
/// every sequence replaced by `prompt` (`[len × dim]`). The session put `len` placeholder ids
/// there (see [`crate::peft::prompt`]).
pub fn overwrite_prompt(x: &Tensor, prompt: &[f32]) -> Result<Tensor> {
    let [b, s, d] = *x.shape() else {
        return Err(shape_err(format!("a soft prompt needs [batch, seq, dim] embeddings, got {:?}", x.shape())));
    };
    if d == 0 || !prompt.len().is_multiple_of(d) || prompt.len() / d > s {
        return Err(shape_err(format!("a soft prompt of {} values does not fit [{b}, {s}, {d}] embeddings", prompt.len())));
    }
    let mut v = x.typed::<f32>("Embedding output")?.to_vec();
    for row in v.chunks_exact_mut(s * d) {
        row[..prompt.len()].copy_from_slice(prompt);
    }
    Tensor::new(x.shape(), v)
}

fn gather_nd_typed<T: Element>(x: &[T], shape: &[usize], idx: &[i64], r: usize, out: Shape) -> Result<Tensor> {
    let inner: usize = shape[r..].iter().product();
    let mut v = Vec::with_capacity(numel(&out));
    for tuple in idx.chunks_exact(r.max(1)) {
        let mut off = 0;
        for (k, &i) in tuple.iter().enumerate().take(r) {
            off = off * shape[k] + resolve(i, shape[k])?;
        }
        v.extend_from_slice(&x[off * inner..(off + 1) * inner]);
    }
    Ok(Tensor::from_parts(out, v))
}

/// `GatherND` (only `batch_dims = 0`, which is what the exporters emit).
pub fn gather_nd(x: &Tensor, indices: &Tensor, batch_dims: usize) -> Result<Tensor> {
    if batch_dims != 0 {
        return Err(shape_err("GatherND: batch_dims > 0 is not supported"));
    }
    let ish = indices.shape();
    let r = *ish.last().ok_or_else(|| shape_err("GatherND: scalar indices"))?;
    if r == 0 || r > x.rank() {
        return Err(shape_err(format!("GatherND: index tuples of {r} for rank {}", x.rank())));
    }
    let idx = indices.to_i64_vec("GatherND indices")?;
    let mut out: Vec<usize> = ish[..ish.len() - 1].to_vec();
    out.extend_from_slice(&x.shape()[r..]);
    super::budget::check(&out, "GatherND")?;
    let out = shape_of(&out)?;
    let sh = x.shape();
    match x.data() {
        Data::F32(v) => gather_nd_typed(v, sh, &idx, r, out),
        Data::I64(v) => gather_nd_typed(v, sh, &idx, r, out),
        Data::I32(v) => gather_nd_typed(v, sh, &idx, r, out),
        Data::I8(v) => gather_nd_typed(v, sh, &idx, r, out),
        Data::U8(v) => gather_nd_typed(v, sh, &idx, r, out),
        Data::Bool(v) => gather_nd_typed(v, sh, &idx, r, out),
    }
}

fn slice_typed<T: Element>(x: &[T], shape: &[usize], start: &[i64], step: &[i64], out: Shape) -> Tensor {
    let rank = shape.len();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let n = numel(&out);
    let mut v = Vec::with_capacity(n);
    if n > 0 {
        let mut idx = vec![0usize; rank];
        for _ in 0..n {
            let mut off = 0i64;
            for a in 0..rank {
                off += (start[a] + idx[a] as i64 * step[a]) * strides[a] as i64;
            }
            v.push(x[off as usize]);
            for a in (0..rank).rev() {
                idx[a] += 1;
                if idx[a] < out[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
    }
    Tensor::from_parts(out, v)
}

/// `Slice(data, starts, ends, axes?, steps?)` with ONNX's clamping rules.
pub fn slice(x: &Tensor, starts: &Tensor, ends: &Tensor, axes: Option<&Tensor>, steps: Option<&Tensor>) -> Result<Tensor> {
    let rank = x.rank();
    let starts = starts.to_i64_vec("Slice starts")?;
    let ends = ends.to_i64_vec("Slice ends")?;
    let axes = match axes {
        Some(a) => a.to_i64_vec("Slice axes")?,
        None => (0..starts.len() as i64).collect(),
    };
    let steps = match steps {
        Some(s) => s.to_i64_vec("Slice steps")?,
        None => vec![1; starts.len()],
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(shape_err("Slice: starts/ends/axes/steps differ in length"));
    }
    let mut start = vec![0i64; rank];
    let mut step = vec![1i64; rank];
    let mut out: Vec<usize> = x.shape().to_vec();
    for k in 0..starts.len() {
        let a = norm_axis(axes[k], rank)?;
        let dim = x.shape()[a] as i64;
        let s = steps[k];
        if s == 0 {
            return Err(shape_err("Slice: step 0"));
        }
        let fix = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (b, e) = if s > 0 {
            (fix(starts[k]).clamp(0, dim), fix(ends[k]).clamp(0, dim))
        } else {
            (fix(starts[k]).clamp(0, dim - 1), fix(ends[k]).clamp(-1, dim - 1))
        };
        let len = if s > 0 { (e - b + s - 1).div_euclid(s) } else { (b - e + (-s) - 1).div_euclid(-s) };
        out[a] = len.max(0) as usize;
        start[a] = b;
        step[a] = s;
    }
    let out = shape_of(&out)?;
    let sh = x.shape();
    Ok(match x.data() {
        Data::F32(v) => slice_typed(v, sh, &start, &step, out),
        Data::I64(v) => slice_typed(v, sh, &start, &step, out),
        Data::I32(v) => slice_typed(v, sh, &start, &step, out),
        Data::I8(v) => slice_typed(v, sh, &start, &step, out),
        Data::U8(v) => slice_typed(v, sh, &start, &step, out),
        Data::Bool(v) => slice_typed(v, sh, &start, &step, out),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: Vec<i64>) -> Tensor {
        Tensor::new(shape, v).unwrap()
    }

    #[test]
    fn gather_rows_and_negative_indices() {
        let x = Tensor::new(&[3, 2], vec![1f32, 2., 3., 4., 5., 6.]).unwrap();
        let g = gather(&x, &t(&[2], vec![2, -3]), 0).unwrap();
        assert_eq!(g.as_slice::<f32>().unwrap(), &[5., 6., 1., 2.]);
        assert!(gather(&x, &t(&[1], vec![3]), 0).is_err());
    }

    #[test]
    fn slice_clamps_and_steps_backwards() {
        let x = t(&[5], vec![0, 1, 2, 3, 4]);
        let s = slice(&x, &t(&[1], vec![1]), &t(&[1], vec![i64::MAX]), None, None).unwrap();
        assert_eq!(s.as_slice::<i64>().unwrap(), &[1, 2, 3, 4]);
        let s = slice(&x, &t(&[1], vec![-1]), &t(&[1], vec![i64::MIN]), None, Some(&t(&[1], vec![-2]))).unwrap();
        assert_eq!(s.as_slice::<i64>().unwrap(), &[4, 2, 0]);
    }

    #[test]
    fn gather_nd_picks_tuples() {
        let x = t(&[2, 2], vec![1, 2, 3, 4]);
        let g = gather_nd(&x, &t(&[2, 2], vec![0, 1, 1, 0]), 0).unwrap();
        assert_eq!(g.as_slice::<i64>().unwrap(), &[2, 3]);
    }
}
