//! `Linear`: y = x·W (+ b) with a constant weight, f32 or int8 (per-output-channel scales).
//!
//! It is the fusion of `MatMul` (+ `Add`) on f32 models, and of ONNX Runtime's
//! `DynamicQuantizeLinear` → `MatMulInteger` → `Cast` → `Mul` (+ `Add`) on int8 ones. Its name
//! is the PyTorch module it came from (`encoder.layer.0.attention.self.query`), which is what
//! PEFT's `target_modules` match.

use std::sync::Arc;

use super::linear_patch::{scale_rows, LinearPatch};
use super::shape_err;
use crate::error::Result;
use crate::kernels::gemm_f32::{matmul_f32, matmul_f32_bt};
use crate::kernels::gemm_i8::{gemm_u8i8_new, PackedI8};
use crate::kernels::quantize::quantize_dynamic_u8;
use crate::tensor::{shape_of, Tensor};

/// The frozen weight of a [`Linear`].
#[derive(Clone, Debug)]
pub enum LinearWeight {
    /// f32, K×N row-major (ONNX `MatMul` layout).
    F32(Arc<Vec<f32>>),
    /// int8, prepacked for the selected kernel; activations are quantized per run, per tensor,
    /// exactly as ONNX Runtime's `DynamicQuantizeLinear` does.
    I8(Arc<PackedI8>),
}

/// A fused linear layer.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The PyTorch module path (`encoder.layer.0.attention.self.query`), or the node name when
    /// the model carries none.
    pub module: String,
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// The weight.
    pub weight: LinearWeight,
    /// The bias, N values.
    pub bias: Option<Arc<Vec<f32>>>,
    /// A user's LoRA side path, when a delta is applied (the frozen weight is untouched).
    pub lora: Option<Arc<LoraPatch>>,
    /// A user's (IA)3 scales and bottleneck adapter, when a delta has them.
    pub patch: Option<Arc<LinearPatch>>,
}

/// The LoRA side path of one `Linear`: y += scale · (x·Aᵀ)·Bᵀ.
#[derive(Clone, Debug)]
pub struct LoraPatch {
    /// Rank.
    pub r: usize,
    /// A, [r × k] (PEFT's `lora_A.weight` layout).
    pub a: Vec<f32>,
    /// B, [n × r] (PEFT's `lora_B.weight` layout).
    pub b: Vec<f32>,
    /// alpha / r.
    pub scale: f32,
    /// Dropout on the side path's input (PEFT's `lora_dropout`): set by the trainer for one
    /// step at a time, `None` whenever the model runs for inference.
    pub dropout: Option<LoraDropout>,
}

/// Inverted dropout with a mask drawn from a counter-based generator: element `i` is kept
/// (and scaled by 1/(1−p)) iff `hash(seed, i)` falls at or above `p`. The mask is a function of
/// `(seed, i)` alone, so the backward pass (and a checkpointed recompute) draws the same mask
/// without storing it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraDropout {
    /// Probability of dropping an element, in `[0, 1)`.
    pub p: f32,
    /// The mask's seed (the trainer mixes its seed, the step and the layer).
    pub seed: u64,
}

impl LoraDropout {
    /// Whether element `i` is kept.
    fn keeps(&self, i: usize) -> bool {
        let mut z = self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // 24 random bits as a fraction in [0, 1): exact in f32.
        ((z >> 40) as f32) * (1.0 / (1u64 << 24) as f32) >= self.p
    }

    /// `x ⊙ mask / (1 − p)`. Also the input gradient's rule: the same mask and scale.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let s = 1.0 / (1.0 - self.p);
        x.iter().enumerate().map(|(i, &v)| if self.keeps(i) { v * s } else { 0.0 }).collect()
    }
}

impl Linear {
    /// Whether the weight is int8.
    pub fn is_int8(&self) -> bool {
        matches!(self.weight, LinearWeight::I8(_))
    }

    /// Parameters held (weights + bias).
    pub fn parameter_count(&self) -> usize {
        self.k * self.n + self.bias.as_ref().map_or(0, |b| b.len())
    }

    /// y[..., N] = x[..., K] · W + b, with the delta's LoRA path and patch (see
    /// [`super::linear_patch`]) when it has them.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let v = x.typed::<f32>("Linear input")?;
        let k = *x.shape().last().ok_or_else(|| shape_err("Linear of a scalar"))?;
        if k != self.k {
            return Err(shape_err(format!("Linear `{}`: input has {k} features, weight expects {}", self.module, self.k)));
        }
        let out = match self.patch.as_deref() {
            None => self.core(v),
            Some(p) => {
                let mut out = self.pre_adapter(v, p);
                if let Some(a) = &p.adapter {
                    a.forward_in_place(&mut out, self.n);
                }
                if let Some(a) = &p.stacked {
                    a.forward_in_place(&mut out, self.n);
                }
                out
            }
        };
        let mut shape = x.dims().clone();
        let last = shape.len() - 1;
        shape[last] = self.n;
        Ok(Tensor::from_parts(shape_of(&shape)?, out))
    }

    /// `y1 = ((x ⊙ s_in)·W + b + LoRA) ⊙ s_out`: the patched layer's output before its adapter.
    pub fn pre_adapter(&self, v: &[f32], p: &LinearPatch) -> Vec<f32> {
        let mut out = match &p.scale_in {
            Some(s) => {
                let mut xs = v.to_vec();
                scale_rows(&mut xs, s);
                self.core(&xs)
            }
            None => self.core(v),
        };
        if let Some(s) = &p.scale_out {
            scale_rows(&mut out, s);
        }
        out
    }

    /// `x·W + b (+ LoRA)` over rows of `k`, without the patch.
    pub fn core(&self, v: &[f32]) -> Vec<f32> {
        let k = self.k;
        let m = v.len() / k.max(1);
        let mut out = match &self.weight {
            LinearWeight::F32(w) => {
                let mut out = vec![0f32; m * self.n];
                if let Some(b) = &self.bias {
                    // Seed the output with the bias and accumulate: saves a pass over it.
                    for row in out.chunks_exact_mut(self.n) {
                        row.copy_from_slice(b);
                    }
                    matmul_f32(v, w, &mut out, m, k, self.n, true);
                } else {
                    matmul_f32(v, w, &mut out, m, k, self.n, false);
                }
                out
            }
            LinearWeight::I8(w) => {
                let mut q = vec![0u8; v.len()];
                let (scale, zp) = quantize_dynamic_u8(v, &mut q);
                gemm_u8i8_new(&q, m, scale, zp, w, self.bias.as_deref().map(|b| b.as_slice()))
            }
        };
        if let Some(lora) = &self.lora {
            // Side path: t = (x·Aᵀ)·scale, then y += t·Bᵀ. Scaling the rank-r intermediate is
            // the cheapest place for it.
            let dropped = lora.dropout.map(|d| d.apply(v));
            let v = dropped.as_deref().unwrap_or(v);
            let mut t = vec![0f32; m * lora.r];
            matmul_f32_bt(v, &lora.a, &mut t, m, k, lora.r, false);
            t.iter_mut().for_each(|x| *x *= lora.scale);
            matmul_f32_bt(&t, &lora.b, &mut out, m, lora.r, self.n, true);
        }
        out
    }

    /// The weight as f32 K×N: borrowed for f32 layers, dequantized into a new buffer for int8
    /// ones (the backward pass needs it once per step; caching it would undo the int8 saving).
    pub fn weight_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        match &self.weight {
            LinearWeight::F32(w) => std::borrow::Cow::Borrowed(w.as_slice()),
            LinearWeight::I8(w) => std::borrow::Cow::Owned(w.dequantize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quantize::quantize_weight_per_channel;

    #[test]
    fn f32_and_int8_linear_agree_within_quantization_error() {
        let (k, n, m) = (16, 8, 3);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 37 % 23) as f32 - 11.0) / 10.0).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0).collect();
        let lin = Linear { module: "l".into(), k, n, weight: LinearWeight::F32(Arc::new(w.clone())), bias: Some(Arc::new(b.clone())), lora: None, patch: None };
        let xt = Tensor::new(&[m, k], x.clone()).unwrap();
        let y = lin.forward(&xt).unwrap();
        // exact reference
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..k).map(|p| x[i * k + p] * w[p * n + j]).sum::<f32>() + b[j];
                assert!((y.as_slice::<f32>().unwrap()[i * n + j] - r).abs() < 1e-4);
            }
        }
        let (q, s) = quantize_weight_per_channel(&w, k, n);
        let q8 = Linear { weight: LinearWeight::I8(Arc::new(PackedI8::new(&q, k, n, &s, 0))), ..lin.clone() };
        let y8 = q8.forward(&xt).unwrap();
        // int8 error bound: |x|max·|w|max·k/127 per output is generous; here outputs are O(10).
        for (a, b) in y8.as_slice::<f32>().unwrap().iter().zip(y.as_slice::<f32>().unwrap()) {
            assert!((a - b).abs() < 0.2, "{a} vs {b}");
        }
        assert!(lin.forward(&Tensor::new(&[2, 3], vec![0f32; 6]).unwrap()).is_err());
    }
}
