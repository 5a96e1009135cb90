//! The `vulkan` backend: kilotune's fused graph with its heavy ops on Vulkan compute shaders.
//!
//! The graph is the one the `cpu` backend runs (the base, or its copy with a user's delta
//! applied: LoRA side paths and bias deltas), walked in the same order. These ops run on the
//! device; every other op (shape arithmetic, gathers, small elementwise ops with broadcasting)
//! runs on the CPU as in the `cpu` backend:
//!
//! | op | shader | matches `cpu` |
//! |---|---|---|
//! | `Linear` f32 (+ bias, + LoRA side path) | `gemm_f32.comp`, 16×16 tiles | to f32 rounding (summation order differs) |
//! | `Linear` int8 (+ bias, + LoRA) | `gemm_u8i8.comp`, exact int32 accumulation | bit for bit without LoRA |
//! | `LayerNorm`, `AddLayerNorm` | `layer_norm.comp` | same order of operations |
//! | `Gelu` (erf) | `gelu.comp` | same polynomials |
//! | `Add` of equal shapes | `add.comp` | exact |
//! | `Attention` (padding or causal mask, grouped KV heads) | `attention.comp` | to f32 rounding (its own `exp`) |
//!
//! In training ([`VulkanOffload`]) the backward pass adds `attention_backward.comp`,
//! `layer_norm_backward.comp`, GELU's backward mode and the GEMM for frozen layers' input
//! gradients.
//!
//! The SPIR-V is compiled from `shaders/*.comp` by build.rs with glslangValidator. It is
//! tested on Mesa's lavapipe (a CPU implementation of Vulkan); no GPU was at hand.

mod device;
mod kernels;

use std::sync::{Arc, Mutex};

use super::cpu::Offload;
use crate::kernels::attention::{AttentionDims, MaskView};
use crate::train::backward::attention::AttentionGrads;
use crate::train::backward::norm::LayerNormGrads;
use crate::base::Base;
use crate::delta::Delta;
use crate::error::{Error, Result};
use crate::graph::{Dim, Graph, Node};
use crate::ops::{BinaryOp, Op};
use crate::session::Outputs;
use crate::tensor::Tensor;

use device::Gpu;
use kernels::WeightCache;

/// A base (and optionally a user's delta) run with Vulkan compute shaders.
pub struct VulkanSession {
    base: Arc<Base>,
    graph: Arc<Graph>,
    plan: super::cpu::Plan,
    gpu: Arc<Gpu>,
    cache: WeightCache,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for VulkanSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanSession").field("device", &self.gpu.name).finish()
    }
}

impl VulkanSession {
    /// A session over `base` on the process's Vulkan device; `threads` sizes the pool the
    /// ops left on the CPU use (0: one per core).
    pub fn new(base: Arc<Base>, threads: usize) -> Result<VulkanSession> {
        let gpu = Gpu::get()?;
        let graph = base.shared_graph();
        let plan = super::cpu::Plan::new(&graph);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kilotune-vk-{i}"))
            .build()
            .map_err(|e| Error::Config(format!("thread pool: {e}")))?;
        Ok(VulkanSession { base, graph, plan, gpu, cache: WeightCache::default(), pool })
    }

    /// The Vulkan device's name (`llvmpipe (LLVM ...)` on lavapipe).
    pub fn device_name(&self) -> &str {
        &self.gpu.name
    }

    /// Runs `delta` from now on (`None`: the base); the device keeps the base's weights.
    pub fn set_delta(&mut self, delta: Option<&Delta>) -> Result<()> {
        self.graph = match delta {
            Some(d) => {
                crate::peft::apply::check_base(d, &self.base.fingerprint())?;
                let g = crate::peft::apply::apply_delta(self.base.graph(), d)?;
                // A soft prompt needs the CPU session's widened inputs (`peft::prompt`).
                if crate::peft::prompt::prompt_len(&g) > 0 {
                    return Err(Error::Backend { backend: "vulkan", reason: "prompt-tuning deltas run on the cpu backend only".into() });
                }
                Arc::new(g)
            }
            None => self.base.shared_graph(),
        };
        self.plan = super::cpu::Plan::new(&self.graph);
        self.cache.prune();
        Ok(())
    }

    /// Runs the model on named inputs (every declared input, with its declared type).
    pub fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Outputs> {
        let g = self.graph.clone();
        let mut slots: Vec<Option<Tensor>> = vec![None; g.values.len()];
        for info in &g.inputs {
            let name = &g.values[info.value].name;
            let t = inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::BadInput { name: name.clone(), reason: "missing".into() })?;
            if t.dtype() != info.dtype || t.rank() != info.dims.len() {
                return Err(Error::BadInput { name: name.clone(), reason: format!("expected {:?} of rank {}", info.dtype, info.dims.len()) });
            }
            for (d, (&got, want)) in t.shape().iter().zip(&info.dims).enumerate() {
                if matches!(want, Dim::Fixed(w) if *w != got) {
                    return Err(Error::BadInput { name: name.clone(), reason: format!("dim {d} is {got}, the model fixes it") });
                }
            }
            slots[info.value] = Some(t.clone());
        }
        let free = self.plan.free_lists();
        let (gpu, cache, pool) = (&*self.gpu, &mut self.cache, &self.pool);
        for (i, node) in g.nodes.iter().enumerate() {
            let outs = {
                let ins: Vec<Option<&Tensor>> =
                    node.inputs.iter().map(|v| v.and_then(|v| slots[v].as_ref().or(g.values[v].constant.as_ref()))).collect();
                match on_device(gpu, cache, node, &ins)? {
                    Some(t) => vec![t],
                    None => pool.install(|| node.op.eval(&ins, &node.name))?,
                }
            };
            for (&v, t) in node.outputs.iter().zip(outs) {
                slots[v] = Some(t);
            }
            for &v in &free[i] {
                slots[v] = None;
            }
        }
        g.outputs
            .iter()
            .map(|&o| {
                let t = slots[o].take().or_else(|| g.values[o].constant.clone());
                t.map(|t| (g.values[o].name.clone(), t))
                    .ok_or_else(|| Error::InvalidModel(format!("output `{}` was not computed", g.values[o].name)))
            })
            .collect::<Result<_>>()
            .map(Outputs)
    }

}

/// The Vulkan device as an [`Offload`] of the `cpu` backend's walk: a trainer (or a task
/// session) on `vulkan` runs the forward ops the shaders cover and the backward pass's
/// frozen-`Linear` input gradients, attention, LayerNorm and GELU gradients here; the rest of
/// the step (LoRA and patch gradients, RMSNorm, SiLU, rotary, the head, the optimizer) on the
/// CPU.
pub(crate) struct VulkanOffload {
    gpu: Arc<Gpu>,
    cache: Mutex<WeightCache>,
}

impl VulkanOffload {
    /// The process's Vulkan device (an [`Error::Backend`] when there is none).
    pub(crate) fn new() -> Result<VulkanOffload> {
        Ok(VulkanOffload { gpu: Gpu::get()?, cache: Mutex::new(WeightCache::default()) })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, WeightCache> {
        // A poisoned cache is still consistent: each entry is inserted whole.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Offload for VulkanOffload {
    fn node(&self, node: &Node, ins: &[Option<&Tensor>]) -> Result<Option<Tensor>> {
        on_device(&self.gpu, &mut self.cache(), node, ins)
    }

    fn linear_input_grad(&self, l: &crate::ops::Linear, dy: &[f32]) -> Result<Option<Vec<f32>>> {
        kernels::linear_input_grad(&self.gpu, &mut self.cache(), l, dy)
            .map(Some)
            .map_err(|e| Error::Backend { backend: "vulkan", reason: format!("input gradient of `{}`: {e}", l.module) })
    }

    fn gelu_backward(&self, x: &[f32], dy: &[f32]) -> Result<Option<Vec<f32>>> {
        kernels::gelu_backward(&self.gpu, x, dy).map(Some)
    }

    fn layer_norm_backward(&self, x: &[f32], skip: Option<&[f32]>, gamma: &[f32], eps: f32, dy: &[f32]) -> Result<Option<LayerNormGrads>> {
        kernels::layer_norm_backward(&self.gpu, x, skip, gamma, eps, dy).map(Some)
    }

    fn attention_backward(&self, q: &[f32], k: &[f32], v: &[f32], mask: Option<&MaskView<'_>>, causal: bool, scale: f32, dims: &AttentionDims, dout: &[f32]) -> Result<Option<AttentionGrads>> {
        kernels::attention_backward(&self.gpu, q, k, v, mask, causal, scale, dims, dout).map(Some)
    }

    fn release_unused(&self) {
        self.cache().prune();
    }
}

/// Runs `node` on the device when a shader covers it; `None` leaves it to the CPU.
fn on_device(gpu: &Gpu, cache: &mut WeightCache, node: &Node, ins: &[Option<&Tensor>]) -> Result<Option<Tensor>> {
        let f32_in = |i: usize| ins.get(i).copied().flatten().filter(|t| t.as_slice::<f32>().is_some());
        let wrap = |e: Error| Error::Backend { backend: "vulkan", reason: format!("node `{}`: {e}", node.name) };
        let out = match &node.op {
            // (IA)3 scales and adapters are not in the shaders: such a layer runs on the CPU.
            Op::Linear(l) if l.patch.is_none() && l.lora.as_ref().is_none_or(|p| p.dropout.is_none()) => {
                let Some(x) = f32_in(0) else { return Ok(None) };
                if matches!(&l.weight, crate::ops::LinearWeight::I8(w) if w.zero_point() != 0) {
                    return Ok(None);
                }
                kernels::linear(gpu, cache, l, x)
            }
            Op::LayerNorm { axis, epsilon } => {
                let (Some(x), Some(g)) = (f32_in(0), f32_in(1)) else { return Ok(None) };
                let last = *axis == -1 || (*axis >= 0 && *axis as usize + 1 == x.rank());
                if !last || x.rank() == 0 {
                    return Ok(None);
                }
                let d = x.shape()[x.rank() - 1];
                kernels::layer_norm(gpu, x, None, g, f32_in(2), d, *epsilon)
            }
            Op::AddLayerNorm { epsilon } => {
                let (Some(x), Some(s), Some(g)) = (f32_in(0), f32_in(1), f32_in(2)) else { return Ok(None) };
                if x.shape() != s.shape() || x.rank() == 0 {
                    return Ok(None);
                }
                let d = x.shape()[x.rank() - 1];
                kernels::layer_norm(gpu, x, Some(s), g, f32_in(3), d, *epsilon)
            }
            Op::Gelu { tanh: false } => {
                let Some(x) = f32_in(0) else { return Ok(None) };
                kernels::gelu(gpu, x)
            }
            Op::Binary(BinaryOp::Add) => {
                let (Some(a), Some(b)) = (f32_in(0), f32_in(1)) else { return Ok(None) };
                if a.shape() != b.shape() || a.is_empty() {
                    return Ok(None);
                }
                kernels::add(gpu, a, b)
            }
            // Nor are prefix keys and values.
            Op::Attention(a) if a.prefix.is_none() => {
                let (Some(q), Some(k), Some(v)) = (f32_in(0), f32_in(1), f32_in(2)) else { return Ok(None) };
                let mask = ins.get(3).copied().flatten();
                if mask.is_some_and(|m| m.as_slice::<f32>().is_none()) || q.is_empty() || k.is_empty() {
                    return Ok(None);
                }
                kernels::attention(gpu, a, q, k, v, mask)
            }
            _ => return Ok(None),
        };
        out.map(Some).map_err(wrap)
    }
