//! MAD-X's invertible adapter (Pfeiffer et al. 2020, §2.3): an additive coupling layer
//! (NICE, Dinh et al. 2015) on the embedding output, whose exact inverse runs before the tied
//! output embedding when the model predicts tokens.
//!
//! ```text
//! forward:  [h1 | h2] = x        (the two halves of the features)
//!           o1 = h1 + F(h2)
//!           o2 = h2 + G(o1)      out = [o1 | o2]
//! inverse:  h2 = o2 − G(o1)
//!           h1 = o1 − F(h2)
//! ```
//!
//! `F` and `G` are bottleneck MLPs `f(v·Dᵀ + d)·Uᵀ + u` from half the features to half the
//! features ([`BottleneckAdapter::branch`]). The paper's coupling is the affine one of RealNVP;
//! the additive one used here is its special case with unit scales, exactly invertible and
//! with a unit Jacobian determinant. The inverse computes `G(o1)` and `F(h2)` from the same
//! values the forward computed them from, so it recovers `x` up to the rounding of one add
//! and one subtract per element.

use super::linear_patch::BottleneckAdapter;
use super::shape_err;
use crate::error::Result;
use crate::tensor::Tensor;

/// An invertible adapter over `2 · half` features.
#[derive(Clone, Debug, PartialEq)]
pub struct InvertibleAdapter {
    /// Half the feature count.
    pub half: usize,
    /// `F`, applied to the second half, added to the first.
    pub f: BottleneckAdapter,
    /// `G`, applied to the new first half, added to the second.
    pub g: BottleneckAdapter,
}

impl InvertibleAdapter {
    /// The feature count.
    pub fn width(&self) -> usize {
        2 * self.half
    }

    fn split(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let rows = x.len() / self.width().max(1);
        let (mut a, mut b) = (Vec::with_capacity(rows * self.half), Vec::with_capacity(rows * self.half));
        for r in x.chunks_exact(self.width()) {
            a.extend_from_slice(&r[..self.half]);
            b.extend_from_slice(&r[self.half..]);
        }
        (a, b)
    }

    fn join(&self, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(a.len() * 2);
        for (x, y) in a.chunks_exact(self.half).zip(b.chunks_exact(self.half)) {
            out.extend_from_slice(x);
            out.extend_from_slice(y);
        }
        out
    }

    /// The coupling, over rows of [`Self::width`] features.
    pub fn forward_rows(&self, x: &[f32]) -> Vec<f32> {
        let (h1, h2) = self.split(x);
        let o1: Vec<f32> = h1.iter().zip(self.f.branch(&h2, self.half)).map(|(a, b)| a + b).collect();
        let o2: Vec<f32> = h2.iter().zip(self.g.branch(&o1, self.half)).map(|(a, b)| a + b).collect();
        self.join(&o1, &o2)
    }

    /// The exact inverse of [`Self::forward_rows`].
    pub fn inverse_rows(&self, o: &[f32]) -> Vec<f32> {
        let (o1, o2) = self.split(o);
        let h2: Vec<f32> = o2.iter().zip(self.g.branch(&o1, self.half)).map(|(a, b)| a - b).collect();
        let h1: Vec<f32> = o1.iter().zip(self.f.branch(&h2, self.half)).map(|(a, b)| a - b).collect();
        self.join(&h1, &h2)
    }

    /// The forward pass on a tensor whose last axis holds the features.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.shape().last() != Some(&self.width()) {
            return Err(shape_err(format!("an invertible adapter over {} features got {:?}", self.width(), x.shape())));
        }
        Tensor::new(x.shape(), self.forward_rows(x.typed::<f32>("invertible adapter input")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::linear_patch::AdapterActivation;
    use crate::train::rng::Rng;

    pub(crate) fn random(half: usize, m: usize, seed: u64) -> InvertibleAdapter {
        let mut rng = Rng::new(seed);
        let mut mlp = |act| BottleneckAdapter { m, down: rng.uniform_vec(m * half, 0.8), down_bias: rng.uniform_vec(m, 0.3), up: rng.uniform_vec(half * m, 0.8), up_bias: rng.uniform_vec(half, 0.3), activation: act };
        InvertibleAdapter { half, f: mlp(AdapterActivation::Relu), g: mlp(AdapterActivation::Gelu) }
    }

    #[test]
    fn the_inverse_undoes_the_forward_to_1e_5() {
        let a = random(16, 8, 3);
        let x = Rng::new(4).uniform_vec(5 * 32, 2.0);
        let y = a.forward_rows(&x);
        let moved = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(moved > 0.1, "the coupling must not be the identity here ({moved})");
        let back = a.inverse_rows(&y);
        let err = x.iter().zip(&back).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        // One add and one subtract of the same f32 per element: a few ulps of |x| ≤ 2 + |F|.
        assert!(err <= 1e-5, "inverse(forward(x)) is off by {err:e}");
        let fwd_again = a.forward_rows(&a.inverse_rows(&x));
        let err = x.iter().zip(&fwd_again).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(err <= 1e-5, "forward(inverse(x)) is off by {err:e}");
    }
}
