//! Symbolic shapes: the exporters compute reshape targets, masks' sizes and position ranges
//! with chains of `Shape`/`Gather`/`Unsqueeze`/`Concat`/arithmetic. This pass infers every
//! value's shape in terms of the graph inputs' dims (batch, sequence), evaluates those chains
//! symbolically, and replaces each one by a single [`Op::SymShape`] node that reads the input
//! dims at run time (or by a constant when nothing in it varies). Batch size and sequence
//! length stay free; the shape plumbing collapses to one tiny node per distinct target.

use std::collections::HashMap;

use super::fold::infer_dtypes;
use super::{Dim, Graph, Node, Patch, ValueId};
use crate::ops::{BinaryOp, Op, UnaryOp};
use crate::tensor::{DType, Tensor};

/// One dimension, as known at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SymDim {
    /// A fixed size (or, inside a shape tensor, a fixed value).
    Known(i64),
    /// Dimension `axis` of graph input number `input`, fixed only per run.
    Input {
        /// Index into [`Graph::inputs`].
        input: usize,
        /// The axis.
        axis: usize,
    },
}

/// Shape tensors longer than this are not tracked element by element.
const MAX_TRACKED: usize = 16;

#[derive(Clone, Default)]
struct Facts {
    /// The value's shape, per dimension.
    shape: Option<Vec<SymDim>>,
    /// For small integer tensors: the elements.
    content: Option<Vec<SymDim>>,
}

fn known(v: i64) -> SymDim {
    SymDim::Known(v)
}

fn bcast(a: &[SymDim], b: &[SymDim]) -> Option<Vec<SymDim>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r { a[i + a.len() - r] } else { known(1) };
            let y = if i + b.len() >= r { b[i + b.len() - r] } else { known(1) };
            match (x, y) {
                (x, y) if x == y => Some(x),
                (SymDim::Known(1), y) => Some(y),
                (x, SymDim::Known(1)) => Some(x),
                (SymDim::Known(k), SymDim::Input { .. }) | (SymDim::Input { .. }, SymDim::Known(k)) => Some(known(k)),
                _ => None,
            }
        })
        .collect()
}

/// Whether `p` holds each of `0..rank` exactly once.
fn is_permutation(p: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    p.len() == rank && p.iter().all(|&i| i < rank && !std::mem::replace(&mut seen[i], true))
}

fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let a = if a < 0 { a + rank as i64 } else { a };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

/// Infers facts for every value.
fn infer(g: &Graph) -> Vec<Facts> {
    let mut f = vec![Facts::default(); g.values.len()];
    for (v, val) in g.values.iter().enumerate() {
        if let Some(t) = &val.constant {
            f[v].shape = Some(t.shape().iter().map(|&d| known(d as i64)).collect());
            if t.len() <= MAX_TRACKED && t.rank() <= 1 {
                if let Ok(ints) = t.to_i64_vec("") {
                    f[v].content = Some(ints.into_iter().map(known).collect());
                }
            }
        }
    }
    // Inputs: dims with the same name are the same symbol.
    let mut names: HashMap<String, SymDim> = HashMap::new();
    for (i, info) in g.inputs.iter().enumerate() {
        let dims = info
            .dims
            .iter()
            .enumerate()
            .map(|(axis, d)| match d {
                Dim::Fixed(n) => known(*n as i64),
                Dim::Symbol(s) if s != "?" => *names.entry(s.clone()).or_insert(SymDim::Input { input: i, axis }),
                Dim::Symbol(_) => SymDim::Input { input: i, axis },
            })
            .collect();
        f[info.value].shape = Some(dims);
    }
    for n in &g.nodes {
        let inp = |k: usize| n.inputs.get(k).copied().flatten();
        let sh = |k: usize| inp(k).and_then(|v| f[v].shape.clone());
        let ct = |k: usize| inp(k).and_then(|v| f[v].content.clone());
        let (shape, content): (Option<Vec<SymDim>>, Option<Vec<SymDim>>) = match &n.op {
            Op::Shape { start, end } => match sh(0) {
                Some(s) => {
                    let r = s.len() as i64;
                    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                    let (a, b) = (clamp(*start), clamp(end.unwrap_or(r)));
                    let c: Vec<SymDim> = s[a..b.max(a)].to_vec();
                    (Some(vec![known(c.len() as i64)]), Some(c))
                }
                None => (None, None),
            },
            Op::Gather(axis) => {
                let idx = inp(1).and_then(|v| g.constant(v)).and_then(|t| t.to_i64_vec("").ok().map(|i| (i, t.shape().to_vec())));
                match (sh(0), idx) {
                    (Some(ds), Some((ids, ishape))) => {
                        let ax = norm_axis(*axis, ds.len());
                        let shape = ax.map(|ax| {
                            let mut s = ds[..ax].to_vec();
                            s.extend(ishape.iter().map(|&d| known(d as i64)));
                            s.extend_from_slice(&ds[ax + 1..]);
                            s
                        });
                        let content = (ds.len() == 1).then(|| ct(0)).flatten().and_then(|c| {
                            ids.iter().map(|&i| norm_axis(i, c.len()).map(|i| c[i])).collect::<Option<Vec<_>>>()
                        });
                        (shape, content)
                    }
                    _ => (None, None),
                }
            }
            Op::Unsqueeze(_) | Op::Squeeze(_) => {
                let axes = match &n.op {
                    Op::Unsqueeze(Some(a)) | Op::Squeeze(Some(a)) => Some(a.clone()),
                    _ => inp(1).and_then(|v| g.constant(v)).and_then(|t| t.to_i64_vec("").ok()),
                };
                let shape = match (sh(0), axes) {
                    (Some(s), Some(axes)) if matches!(n.op, Op::Unsqueeze(_)) => {
                        let r = s.len() + axes.len();
                        let ins: Option<Vec<usize>> = axes.iter().map(|&a| norm_axis(a, r)).collect();
                        ins.map(|ins| {
                            let mut it = s.iter();
                            (0..r).map(|i| if ins.contains(&i) { known(1) } else { *it.next().unwrap_or(&known(1)) }).collect()
                        })
                    }
                    (Some(s), Some(axes)) => {
                        let drop: Option<Vec<usize>> = axes.iter().map(|&a| norm_axis(a, s.len())).collect();
                        drop.map(|d| s.iter().enumerate().filter(|(i, _)| !d.contains(i)).map(|(_, &x)| x).collect())
                    }
                    _ => None,
                };
                (shape, ct(0))
            }
            Op::Concat(axis) => {
                let shapes: Option<Vec<Vec<SymDim>>> = (0..n.inputs.len()).map(sh).collect();
                let shape = shapes.and_then(|ss| {
                    let first = ss.first()?.clone();
                    let ax = norm_axis(*axis, first.len())?;
                    let mut total = 0i64;
                    for s in &ss {
                        match s.get(ax)? {
                            SymDim::Known(k) => total += k,
                            _ => return None,
                        }
                    }
                    let mut out = first;
                    out[ax] = known(total);
                    Some(out)
                });
                let content = (0..n.inputs.len()).map(ct).collect::<Option<Vec<_>>>().map(|c| c.concat());
                (shape, content)
            }
            Op::Cast(to) if *to != DType::F32 && *to != DType::Bool => (sh(0), ct(0)),
            Op::Identity => (sh(0), ct(0)),
            Op::Binary(b) => {
                let shape = match (sh(0), sh(1)) {
                    (Some(a), Some(c)) => bcast(&a, &c),
                    _ => None,
                };
                let content = match (ct(0), ct(1)) {
                    (Some(a), Some(c)) if a.len() == c.len() || a.len() == 1 || c.len() == 1 => {
                        let len = a.len().max(c.len());
                        (0..len)
                            .map(|i| {
                                let x = a[if a.len() == 1 { 0 } else { i }];
                                let y = c[if c.len() == 1 { 0 } else { i }];
                                arith(*b, x, y)
                            })
                            .collect()
                    }
                    _ => None,
                };
                (shape, content)
            }
            Op::Where => {
                let shape = match (sh(0), sh(1), sh(2)) {
                    (Some(a), Some(b), Some(c)) => bcast(&a, &b).and_then(|ab| bcast(&ab, &c)),
                    _ => None,
                };
                let content = match (ct(0), ct(1), ct(2)) {
                    (Some(c), Some(x), Some(y)) if c.len() == x.len() && x.len() == y.len() => c
                        .iter()
                        .zip(x.iter().zip(&y))
                        .map(|(c, (x, y))| match c {
                            SymDim::Known(0) => Some(*y),
                            SymDim::Known(_) => Some(*x),
                            _ => None,
                        })
                        .collect(),
                    _ => None,
                };
                (shape, content)
            }
            Op::Unary(u) if !matches!(u, UnaryOp::Neg) => (sh(0), None),
            Op::Unary(_) => (sh(0), ct(0).and_then(|c| c.iter().map(|d| match d { SymDim::Known(k) => Some(known(-k)), _ => None }).collect())),
            Op::Cast(_) | Op::Softmax(_) | Op::Gelu { .. } | Op::Silu | Op::LayerNorm { .. } | Op::AddLayerNorm { .. } | Op::RmsNorm { .. } | Op::DequantizeLinear(_) => (sh(0), None),
            Op::Rotary => (sh(0), None),
            Op::SymShape { dims, scalar, .. } => {
                let content: Option<Vec<SymDim>> = dims
                    .iter()
                    .map(|d| match *d {
                        crate::ops::SymShapeDim::Fixed(k) => Some(known(k)),
                        crate::ops::SymShapeDim::Dim { slot, axis } => sh(slot).and_then(|s| s.get(axis).copied()),
                    })
                    .collect();
                (Some(if *scalar { vec![] } else { vec![known(dims.len() as i64)] }), content)
            }
            Op::Range => {
                let len = match (ct(0), ct(1), ct(2)) {
                    (Some(a), Some(l), Some(d)) if a.len() == 1 && l.len() == 1 && d.len() == 1 => match (a[0], l[0], d[0]) {
                        (SymDim::Known(0), lim, SymDim::Known(1)) => Some(lim),
                        (SymDim::Known(a), SymDim::Known(l), SymDim::Known(d)) if d != 0 => Some(known(((l - a) as f64 / d as f64).ceil().max(0.0) as i64)),
                        _ => None,
                    },
                    _ => None,
                };
                (len.map(|l| vec![l]), None)
            }
            Op::ConstantOfShape(v) => (ct(0), match ct(0) {
                Some(c) if c.len() == 1 && v.len() == 1 => v.to_i64_vec("").ok().map(|x| vec![known(x[0]); 1]).filter(|_| c[0] == known(1)),
                _ => None,
            }),
            Op::Flatten(axis) => (sh(0).and_then(|s| {
                let a = if *axis < 0 { *axis + s.len() as i64 } else { *axis } as usize;
                let prod = |d: &[SymDim]| -> Option<SymDim> {
                    match d {
                        [] => Some(known(1)),
                        [x] => Some(*x),
                        _ => d.iter().try_fold(1i64, |acc, x| if let SymDim::Known(k) = x { acc.checked_mul(*k) } else { None }).map(known),
                    }
                };
                Some(vec![prod(&s[..a.min(s.len())])?, prod(&s[a.min(s.len())..])?])
            }), None),
            Op::GatherNd(_) => (match (sh(0), sh(1)) {
                (Some(d), Some(i)) => match i.last() {
                    Some(SymDim::Known(r)) if (*r as usize) <= d.len() => {
                        let mut out = i[..i.len() - 1].to_vec();
                        out.extend_from_slice(&d[*r as usize..]);
                        Some(out)
                    }
                    _ => None,
                },
                _ => None,
            }, None),
            Op::Variadic(_) => (match (sh(0), sh(1)) {
                (Some(a), Some(b)) if n.inputs.len() == 2 => bcast(&a, &b),
                (Some(a), None) if n.inputs.len() == 1 => Some(a),
                _ => None,
            }, None),
            Op::Slice => {
                // Bounds known symbolically; an end past a fixed dim clamps to it, and a
                // symbolic end is taken as is (a run where it exceeds the dim fails loudly
                // in the ops that consume the result, never silently).
                let rule = || -> Option<Vec<SymDim>> {
                    let mut s = sh(0)?;
                    let (starts, ends) = (ct(1)?, ct(2)?);
                    let axes = match inp(3) {
                        Some(_) => ct(3)?,
                        None => (0..starts.len() as i64).map(known).collect(),
                    };
                    let steps = match inp(4) {
                        Some(_) => ct(4)?,
                        None => vec![known(1); starts.len()],
                    };
                    // A malformed model may give lists of different lengths: no fact then (the op
                    // refuses it when it runs).
                    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
                        return None;
                    }
                    for k in 0..starts.len() {
                        let SymDim::Known(a) = axes[k] else { return None };
                        let ax = norm_axis(a, s.len())?;
                        if steps[k] != known(1) {
                            return None;
                        }
                        s[ax] = match (s[ax], starts[k], ends[k]) {
                            // (A negative size is a malformed model's: no fact.)
                            (SymDim::Known(d), SymDim::Known(b), SymDim::Known(e)) if d >= 0 => {
                                let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v }.clamp(0, d);
                                known((fix(e) - fix(b)).max(0))
                            }
                            (SymDim::Known(_), SymDim::Known(0), sym @ SymDim::Input { .. }) => sym,
                            (dim, SymDim::Known(0), SymDim::Known(e)) if e >= i64::from(i32::MAX) => dim,
                            _ => return None,
                        };
                    }
                    Some(s)
                };
                (rule(), None)
            }
            Op::Linear(l) => (sh(0).map(|mut s| {
                if let Some(last) = s.last_mut() {
                    *last = known(l.n as i64);
                }
                s
            }), None),
            Op::Embedding { .. } => (match (sh(0), sh(1)) {
                (Some(t), Some(mut i)) if t.len() == 2 => {
                    i.push(t[1]);
                    Some(i)
                }
                _ => None,
            }, None),
            // Only a true permutation of the axes: the op itself refuses any other at run time.
            Op::Transpose(Some(p)) => (sh(0).and_then(|s| is_permutation(p, s.len()).then(|| p.iter().map(|&i| s[i]).collect())), None),
            Op::Reshape { allowzero } => (match (sh(0), ct(1)) {
                (Some(s), Some(t)) => reshape(&s, &t, *allowzero),
                _ => None,
            }, None),
            Op::Expand => (match (sh(0), ct(1)) {
                (Some(s), Some(t)) => bcast(&s, &t),
                _ => None,
            }, None),
            Op::Attention(a) => (match sh(0) {
                Some(q) if q.len() == 4 => {
                    let (b, h, s, d) = match a.q_layout {
                        crate::ops::attention::Layout::Bhsd => (q[0], q[1], q[2], q[3]),
                        crate::ops::attention::Layout::Bshd => (q[0], q[2], q[1], q[3]),
                    };
                    Some(if a.out_bshd { vec![b, s, h, d] } else { vec![b, h, s, d] })
                }
                _ => None,
            }, None),
            _ => (None, None),
        };
        if let Some(&o) = n.outputs.first() {
            if g.values[o].constant.is_none() {
                f[o].shape = shape;
                f[o].content = content.filter(|c| c.len() <= MAX_TRACKED);
            }
        }
    }
    f
}

fn arith(op: BinaryOp, x: SymDim, y: SymDim) -> Option<SymDim> {
    use SymDim::Known as K;
    Some(match (op, x, y) {
        (BinaryOp::Add, K(a), K(b)) => K(a.checked_add(b)?),
        (BinaryOp::Sub, K(a), K(b)) => K(a.checked_sub(b)?),
        (BinaryOp::Mul, K(a), K(b)) => K(a.checked_mul(b)?),
        (BinaryOp::Div, K(a), K(b)) => K(a.checked_div(b)?),
        (BinaryOp::Add, s, K(0)) | (BinaryOp::Add, K(0), s) | (BinaryOp::Sub, s, K(0)) => s,
        (BinaryOp::Mul, s, K(1)) | (BinaryOp::Mul, K(1), s) | (BinaryOp::Div, s, K(1)) => s,
        (BinaryOp::Max, K(a), K(b)) => K(a.max(b)),
        (BinaryOp::Equal, K(a), K(b)) => K(i64::from(a == b)),
        // A dimension is never negative: it differs from any negative constant.
        (BinaryOp::Equal, SymDim::Input { .. }, K(k)) | (BinaryOp::Equal, K(k), SymDim::Input { .. }) if k < 0 => K(0),
        (BinaryOp::Equal, a, b) if a == b => K(1),
        _ => return None,
    })
}

/// The output shape of `Reshape(x: s, target: t)`, if it follows symbolically.
fn reshape(s: &[SymDim], t: &[SymDim], allowzero: bool) -> Option<Vec<SymDim>> {
    let mut out: Vec<SymDim> = t
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            SymDim::Known(0) if !allowzero => s.get(i).copied(),
            d => Some(d),
        })
        .collect::<Option<_>>()?;
    if let Some(pos) = out.iter().position(|&d| d == SymDim::Known(-1)) {
        // Cancel the symbols common to both sides; what remains must be fixed sizes.
        let mut rest: Vec<SymDim> = s.to_vec();
        let mut known_out = 1i64;
        for (i, d) in out.iter().enumerate() {
            if i == pos {
                continue;
            }
            // A malformed model's sizes may be negative or overflow: no fact then.
            match *d {
                SymDim::Known(k) if k >= 0 => known_out = known_out.checked_mul(k)?,
                SymDim::Known(_) => return None,
                sym => {
                    let j = rest.iter().position(|r| *r == sym)?;
                    rest.remove(j);
                }
            }
        }
        let mut known_in = 1i64;
        for r in rest {
            match r {
                SymDim::Known(k) if k >= 0 => known_in = known_in.checked_mul(k)?,
                _ => return None,
            }
        }
        if known_out == 0 || known_in % known_out != 0 {
            return None;
        }
        out[pos] = SymDim::Known(known_in / known_out);
    }
    Some(out)
}

/// Replaces each shape-computing chain by a constant or a single [`Op::SymShape`] node.
pub fn fold_shapes(g: &mut Graph) {
    // Each round can expose more (a folded chain gives its readers known shapes).
    for _ in 0..4 {
        let before = g.nodes.len();
        fold_round(g);
        if g.nodes.len() == before {
            break;
        }
    }
    dedupe(g);
}

/// Identical `SymShape` nodes (the same target computed for every layer) become one.
fn dedupe(g: &mut Graph) {
    let mut seen: Vec<(usize, ValueId)> = Vec::new();
    let mut patch = Patch::default();
    for (i, n) in g.nodes.iter().enumerate() {
        if !matches!(n.op, Op::SymShape { .. }) {
            continue;
        }
        let same = seen.iter().find(|(j, _)| {
            let m = &g.nodes[*j];
            m.inputs == n.inputs && format!("{:?}", m.op) == format!("{:?}", n.op)
        });
        match same {
            Some(&(_, v)) => patch.rewire(n.outputs[0], v),
            None => seen.push((i, n.outputs[0])),
        }
    }
    if !patch.is_empty() {
        patch.apply(g);
    }
}

fn fold_round(g: &mut Graph) {
    let facts = infer(g);
    let dtypes = infer_dtypes(g);
    let mut patch = Patch::default();
    for (i, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::SymShape { .. }) || n.outputs.len() != 1 {
            continue;
        }
        let o = n.outputs[0];
        let (Some(content), Some(shape)) = (&facts[o].content, &facts[o].shape) else { continue };
        let dtype = dtypes[o].unwrap_or(DType::I64);
        if !matches!(dtype, DType::I64 | DType::I32) || shape.len() > 1 {
            continue;
        }
        let scalar = shape.is_empty();
        if content.iter().all(|d| matches!(d, SymDim::Known(_))) {
            let vals: Vec<i64> = content.iter().map(|d| if let SymDim::Known(k) = d { *k } else { 0 }).collect();
            let dims: &[usize] = if scalar { &[] } else { &[vals.len()] };
            let t = match dtype {
                DType::I32 => Tensor::new(dims, vals.iter().map(|&v| v as i32).collect()),
                _ => Tensor::new(dims, vals),
            };
            let Ok(t) = t else { continue };
            patch.replace(i, Node { name: n.name.clone(), op: Op::Constant(t), inputs: vec![], outputs: vec![o] });
            continue;
        }
        // Read the input dims the content refers to.
        let mut inputs: Vec<usize> = Vec::new();
        let dims: Vec<crate::ops::SymShapeDim> = content
            .iter()
            .map(|d| match *d {
                SymDim::Known(k) => crate::ops::SymShapeDim::Fixed(k),
                SymDim::Input { input, axis } => {
                    let slot = inputs.iter().position(|&x| x == input).unwrap_or_else(|| {
                        inputs.push(input);
                        inputs.len() - 1
                    });
                    crate::ops::SymShapeDim::Dim { slot, axis }
                }
            })
            .collect();
        let node_inputs: Vec<Option<ValueId>> = inputs.iter().map(|&k| Some(g.inputs[k].value)).collect();
        patch.replace(
            i,
            Node { name: n.name.clone(), op: Op::SymShape { dims, scalar, int32: dtype == DType::I32 }, inputs: node_inputs, outputs: vec![o] },
        );
    }
    patch.apply(g);
}

