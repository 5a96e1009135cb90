//! Backward rules of MAD-X's invertible adapter ([`crate::ops::invertible`]): through its
//! forward coupling (on the embedding output) and through its inverse (before the tied output
//! embedding). `F` and `G` are bottleneck branches, whose rule is
//! [`super::patch::bottleneck_backward`].

use super::patch::{bottleneck_backward, AdapterGrads};
use crate::ops::invertible::InvertibleAdapter;

/// Gradients of an invertible adapter's two branches.
#[derive(Clone, Debug, PartialEq)]
pub struct CouplingGrads {
    /// `F`'s parameters.
    pub f: AdapterGrads,
    /// `G`'s parameters.
    pub g: AdapterGrads,
}

impl CouplingGrads {
    /// Adds `other` into `self` (a parameter used by both the forward and the inverse).
    pub fn add(&mut self, other: &CouplingGrads) {
        for (a, b) in [(&mut self.f, &other.f), (&mut self.g, &other.g)] {
            for (x, y) in [(&mut a.down, &b.down), (&mut a.down_bias, &b.down_bias), (&mut a.up, &b.up), (&mut a.up_bias, &b.up_bias)] {
                x.iter_mut().zip(y).for_each(|(p, q)| *p += q);
            }
        }
    }
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Backward of the forward coupling `o1 = h1 + F(h2)`, `o2 = h2 + G(o1)`, given its input `x`
/// and `dout = ∂L/∂[o1 | o2]`:
///
/// `do1' = do1 + Gᵀ(do2)` (G's input gradient at `o1`), `dh1 = do1'`,
/// `dh2 = do2 + Fᵀ(do1')`; G's parameters see `do2`, F's see `do1'`.
pub fn coupling_backward(a: &InvertibleAdapter, x: &[f32], dout: &[f32]) -> (Vec<f32>, CouplingGrads) {
    let (h1, h2) = split(a, x);
    let (do1, do2) = split(a, dout);
    let o1 = add(&h1, &a.f.branch(&h2, a.half));
    let (dg_in, g) = bottleneck_backward(&a.g, &o1, a.half, &do2, false);
    let do1 = add(&do1, &dg_in);
    let (df_in, f) = bottleneck_backward(&a.f, &h2, a.half, &do1, false);
    let dh2 = add(&do2, &df_in);
    (join(a, &do1, &dh2), CouplingGrads { f, g })
}

/// Backward of the inverse `h2 = o2 − G(o1)`, `h1 = o1 − F(h2)`, given its input `o` and
/// `dh = ∂L/∂[h1 | h2]`:
///
/// `dh2' = dh2 − Fᵀ(dh1)`, `do2 = dh2'`, `do1 = dh1 − Gᵀ(dh2')`; F's parameters see `−dh1`,
/// G's see `−dh2'`.
pub fn inverse_backward(a: &InvertibleAdapter, o: &[f32], dh: &[f32]) -> (Vec<f32>, CouplingGrads) {
    let (o1, o2) = split(a, o);
    let (dh1, dh2) = split(a, dh);
    let h2: Vec<f32> = o2.iter().zip(a.g.branch(&o1, a.half)).map(|(p, q)| p - q).collect();
    let neg = |v: &[f32]| v.iter().map(|x| -x).collect::<Vec<f32>>();
    let (df_in, f) = bottleneck_backward(&a.f, &h2, a.half, &neg(&dh1), false);
    let dh2 = add(&dh2, &df_in);
    let (dg_in, g) = bottleneck_backward(&a.g, &o1, a.half, &neg(&dh2), false);
    let do1 = add(&dh1, &dg_in);
    (join(a, &do1, &dh2), CouplingGrads { f, g })
}

fn split(a: &InvertibleAdapter, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut p, mut q) = (Vec::with_capacity(x.len() / 2), Vec::with_capacity(x.len() / 2));
    for r in x.chunks_exact(a.width().max(1)) {
        p.extend_from_slice(&r[..a.half]);
        q.extend_from_slice(&r[a.half..]);
    }
    (p, q)
}

fn join(a: &InvertibleAdapter, p: &[f32], q: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(p.len() * 2);
    for (x, y) in p.chunks_exact(a.half.max(1)).zip(q.chunks_exact(a.half.max(1))) {
        out.extend_from_slice(x);
        out.extend_from_slice(y);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::linear_patch::{AdapterActivation, BottleneckAdapter};
    use crate::train::backward::gradcheck::{check, dot, Rng};

    fn adapter(rng: &mut Rng, half: usize, m: usize) -> InvertibleAdapter {
        // GELU in both branches: central differences across ReLU's kink would be off by its jump.
        let mut mlp = || BottleneckAdapter { m, down: rng.f32s(m * half, -0.8, 0.8), down_bias: rng.f32s(m, -0.3, 0.3), up: rng.f32s(half * m, -0.8, 0.8), up_bias: rng.f32s(half, -0.3, 0.3), activation: AdapterActivation::Gelu };
        InvertibleAdapter { half, f: mlp(), g: mlp() }
    }

    /// Every parameter of `F` and `G` as one flat vector, and back.
    fn flat(a: &InvertibleAdapter) -> Vec<f32> {
        [&a.f, &a.g].iter().flat_map(|b| [b.down.clone(), b.down_bias.clone(), b.up.clone(), b.up_bias.clone()].concat()).collect()
    }

    fn with_flat(a: &InvertibleAdapter, v: &[f32]) -> InvertibleAdapter {
        let mut out = a.clone();
        let mut at = 0;
        for b in [&mut out.f, &mut out.g] {
            for part in [&mut b.down, &mut b.down_bias, &mut b.up, &mut b.up_bias] {
                let n = part.len();
                part.copy_from_slice(&v[at..at + n]);
                at += n;
            }
        }
        out
    }

    fn flat_grads(g: &CouplingGrads) -> Vec<f32> {
        [&g.f, &g.g].iter().flat_map(|b| [b.down.clone(), b.down_bias.clone(), b.up.clone(), b.up_bias.clone()].concat()).collect()
    }

    #[test]
    fn coupling_and_inverse_gradients_match_finite_differences() {
        let mut rng = Rng::new(41);
        let (half, m, rows) = (3, 2, 4);
        let a = adapter(&mut rng, half, m);
        let x = rng.f32s(rows * 2 * half, -1.0, 1.0);
        let dout = rng.f32s(rows * 2 * half, -1.0, 1.0);
        // L = dout · forward(x): smooth (GELU) and O(1); h = 1e-2 truncation O(h²).
        let (dx, g) = coupling_backward(&a, &x, &dout);
        check("forward dx", &x, &dx, 1e-2, 2e-3, |x| dot(&dout, &a.forward_rows(x)));
        check("forward dθ", &flat(&a), &flat_grads(&g), 1e-2, 2e-3, |v| dot(&dout, &with_flat(&a, v).forward_rows(&x)));
        let (dx, g) = inverse_backward(&a, &x, &dout);
        check("inverse dx", &x, &dx, 1e-2, 2e-3, |x| dot(&dout, &a.inverse_rows(x)));
        check("inverse dθ", &flat(&a), &flat_grads(&g), 1e-2, 2e-3, |v| dot(&dout, &with_flat(&a, v).inverse_rows(&x)));
    }
}
