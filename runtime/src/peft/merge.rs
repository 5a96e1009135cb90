//! Merging a user's delta into the base's weights, and taking it out again.
//!
//! A merged model runs at the base's own speed and needs no delta at run time, at the price of
//! a full copy of every weight the delta touches. What merging does per method:
//!
//! - **LoRA on an f32 `Linear`**: `W' = W + (alpha/r)·(B·A)ᵀ`. The `Linear` stores W as K×N
//!   (ONNX `MatMul` layout, y = x·W) while PEFT's B·A is N×K, hence the transpose. Exact up
//!   to f32 rounding; [`unmerge_graph`] subtracts the same update again.
//! - **LoRA on an int8 `Linear`**: by default the side path stays (the frozen int8 weight is
//!   untouched and the update runs beside it in f32), which is exact. Only when
//!   [`MergeOptions::requantize_int8`] asks for it is the update folded in: dequantize, add,
//!   requantize with the base's own scheme (symmetric, per tensor or per output channel, as
//!   the base has it). That is lossy, and the [`MergeReport`] says by how much.
//! - **BitFit** (and any delta on a named constant such as a LayerNorm β): added into the bias
//!   or constant it names, exactly as a session applies it.
//!
//! [`merge_onnx`] writes the merged model as an ONNX file by rewriting the shipped one: only
//! the initializers that changed are re-encoded, everything else is copied as it was.

mod to_onnx;
mod adapter_ready;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::base::Base;
use crate::delta::{Delta, NamedTensor};
use crate::error::Result;
use crate::graph::Graph;
use crate::kernels::gemm_i8::PackedI8;
use crate::kernels::quantize::quantize_weight_per_channel;
use crate::ops::{Linear, LinearWeight, LoraPatch, Op};
use crate::peft::apply::{apply_delta, check_base, HEAD_PREFIX};
use crate::peft::PeftMethod;

pub use adapter_ready::{adapter_ready_onnx, AdapterInput, AdapterInputKind, AdapterReady, AdapterReadyConfig};
pub use to_onnx::{merge_onnx, MergedOnnx, HEAD_OUTPUT, REGRESSION_OUTPUT};

/// Why a delta could not be merged or unmerged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// An int8 weight with a non-zero zero point: only symmetric int8 (ONNX Runtime's `QInt8`
    /// weights, kilotune's own quantization) is requantized.
    #[error("`{module}`: int8 weight with zero point {zero_point}; only symmetric int8 weights can be requantized")]
    AsymmetricInt8 {
        /// The `Linear`'s module path.
        module: String,
        /// Its weight zero point.
        zero_point: i8,
    },
    /// The layer's LoRA update was requantized into its int8 weight, which cannot be undone
    /// exactly (the rounding lost the information).
    #[error("`{module}`: LoRA was requantized into the int8 weight; that cannot be undone exactly")]
    Irreversible {
        /// The `Linear`'s module path.
        module: String,
    },
    /// The ONNX file does not hold the pattern the fused layer came from, so the merged weights
    /// have nowhere to go (the file is not the one the base was loaded from, or was loaded with
    /// options other than the defaults).
    #[error("ONNX layout of `{module}`: {reason}")]
    OnnxLayout {
        /// The module or value concerned.
        module: String,
        /// What was expected and not found.
        reason: String,
    },
    /// The delta's task head cannot be written into the ONNX graph.
    #[error("task head: {0}")]
    Head(String),
}

/// How to merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeOptions {
    /// On an int8 base, fold LoRA into the int8 weights (dequantize, add, requantize with the
    /// base's scheme) instead of keeping the exact f32 side path. Lossy: see [`MergeReport`].
    /// Off by default.
    pub requantize_int8: bool,
    /// When writing ONNX ([`merge_onnx`]): add the delta's classification or regression head as
    /// an extra output ([`HEAD_OUTPUT`], [`REGRESSION_OUTPUT`]). On by default; ignored by the
    /// in-memory merge.
    pub write_head: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions { requantize_int8: false, write_head: true }
    }
}

/// What happened to one LoRA-adapted `Linear`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerAction {
    /// Folded into the f32 weight (exact up to f32 rounding).
    MergedF32,
    /// int8 base: the f32 side path is kept beside the untouched int8 weight (exact).
    SidePath,
    /// int8 base: folded into the weight and requantized (lossy; see the error fields).
    Requantized(Int8Scheme),
}

/// How an int8 weight is quantized: symmetric, zero point 0, `scale = max|w| / 127`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Scheme {
    /// One scale for the whole weight (ONNX Runtime's `quantize_dynamic` default).
    PerTensor,
    /// One scale per output channel (kilotune's quantization at load).
    PerChannel,
}

/// One LoRA-adapted layer in a [`MergeReport`]. The error fields compare the merged weight,
/// dequantized, with the exact f32 merge `dequantize(W) + ΔW`; they are zero for
/// [`LayerAction::MergedF32`] and [`LayerAction::SidePath`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// The `Linear`'s module path.
    pub module: String,
    /// What was done.
    pub action: LayerAction,
    /// `max |W_merged − W_exact|` over the weight's elements.
    pub max_abs_dw: f32,
    /// `‖W_merged − W_exact‖_F`.
    pub err_frobenius: f64,
    /// `‖W_exact‖_F`.
    pub exact_frobenius: f64,
    /// `max |x·W_merged − x·W_exact|` over the layer's outputs for the probe input
    /// [`probe_input`] (`PROBE_ROWS` rows): what the error does to a layer's activations.
    pub probe_max_abs_dy: f32,
}

impl LayerReport {
    /// `‖W_merged − W_exact‖_F / ‖W_exact‖_F` (0 for an all-zero weight).
    pub fn rel_frobenius(&self) -> f64 {
        if self.exact_frobenius > 0.0 {
            self.err_frobenius / self.exact_frobenius
        } else {
            0.0
        }
    }
}

/// What a merge did, and the error a requantizing merge introduced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeReport {
    /// Every LoRA-adapted `Linear`, in execution order.
    pub layers: Vec<LayerReport>,
    /// `Linear` biases that took a bias delta.
    pub biases: usize,
    /// Other constants (LayerNorm β, ...) that took a delta.
    pub constants: usize,
}

impl MergeReport {
    /// The largest `max_abs_dw` of any layer (0 when nothing was requantized).
    pub fn max_abs_dw(&self) -> f32 {
        self.layers.iter().map(|l| l.max_abs_dw).fold(0.0, f32::max)
    }

    /// The relative Frobenius error over all layers together:
    /// `sqrt(Σ ‖W_merged − W_exact‖²) / sqrt(Σ ‖W_exact‖²)`.
    pub fn rel_frobenius(&self) -> f64 {
        let err: f64 = self.layers.iter().map(|l| l.err_frobenius * l.err_frobenius).sum();
        let exact: f64 = self.layers.iter().map(|l| l.exact_frobenius * l.exact_frobenius).sum();
        if exact > 0.0 {
            (err / exact).sqrt()
        } else {
            0.0
        }
    }

    /// The largest `probe_max_abs_dy` of any layer.
    pub fn probe_max_abs_dy(&self) -> f32 {
        self.layers.iter().map(|l| l.probe_max_abs_dy).fold(0.0, f32::max)
    }

    /// How many layers took each action: `(merged f32, side path, requantized)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |f: fn(&LayerAction) -> bool| self.layers.iter().filter(|l| f(&l.action)).count();
        (
            count(|a| *a == LayerAction::MergedF32),
            count(|a| *a == LayerAction::SidePath),
            count(|a| matches!(a, LayerAction::Requantized(_))),
        )
    }
}

/// Rows of [`probe_input`].
pub const PROBE_ROWS: usize = 8;

/// The fixed probe input `[PROBE_ROWS × k]` behind [`LayerReport::probe_max_abs_dy`]: values in
/// [-1, 1) from a 32-bit linear congruential generator (`s = s·1664525 + 1013904223`, seeded
/// with `k`, value = `(s >> 8) / 2²³ − 1`), so a caller can recompute the figure.
pub fn probe_input(k: usize) -> Vec<f32> {
    let mut s = k as u32;
    (0..PROBE_ROWS * k)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// The LoRA update in the `Linear`'s K×N layout: `ΔW[p][j] = scale · Σ_r B[j][r] · A[r][p]`.
pub fn lora_update_kn(lora: &LoraPatch, k: usize, n: usize) -> Vec<f32> {
    let r = lora.r;
    let mut dw = vec![0f32; k * n];
    for (p, row) in dw.chunks_exact_mut(n.max(1)).enumerate() {
        for (j, out) in row.iter_mut().enumerate() {
            let s: f32 = (0..r).map(|q| lora.b[j * r + q] * lora.a[q * k + p]).sum();
            *out = lora.scale * s;
        }
    }
    dw
}

/// Returns a copy of `graph` with `delta` merged in, and what was done. The delta must already
/// be checked against the base's fingerprint ([`merge`] does that).
pub fn merge_graph(graph: &Graph, delta: &Delta, options: &MergeOptions) -> Result<(Graph, MergeReport)> {
    // The session's patch (side paths, bias and constant deltas, with all its checks), then
    // fold the side paths in.
    if matches!(delta.method, PeftMethod::Adapter(_) | PeftMethod::Prefix(_) | PeftMethod::Prompt(_) | PeftMethod::MadxLanguage(_) | PeftMethod::MadxTask(_)) {
        return Err(crate::Error::Config(format!("a {} delta adds layers or keys to the model and has no merge: run it as a delta", delta.method.describe())));
    }
    let mut g = apply_delta(graph, delta)?;
    let mut report = count_vector_deltas(graph, delta);
    for n in &mut g.nodes {
        let Op::Linear(l) = &mut n.op else { continue };
        if let Some(p) = l.patch.take() {
            crate::peft::ia3::fold(l, &p)?;
            report.layers.push(exact_layer(&l.module, LayerAction::MergedF32));
        }
        let Some(lora) = l.lora.clone() else { continue };
        let layer = match &l.weight {
            LinearWeight::F32(w) => {
                let dw = lora_update_kn(&lora, l.k, l.n);
                l.weight = LinearWeight::F32(Arc::new(w.iter().zip(&dw).map(|(w, d)| w + d).collect()));
                l.lora = None;
                exact_layer(&l.module, LayerAction::MergedF32)
            }
            LinearWeight::I8(_) if !options.requantize_int8 => exact_layer(&l.module, LayerAction::SidePath),
            LinearWeight::I8(p) => {
                let (packed, layer) = requantize(l, p, &lora)?;
                l.weight = LinearWeight::I8(Arc::new(packed));
                l.lora = None;
                layer
            }
        };
        report.layers.push(layer);
    }
    Ok((g, report))
}

fn exact_layer(module: &str, action: LayerAction) -> LayerReport {
    LayerReport { module: module.to_owned(), action, max_abs_dw: 0.0, err_frobenius: 0.0, exact_frobenius: 0.0, probe_max_abs_dy: 0.0 }
}

/// Counts the delta's bias and constant tensors (those that are neither LoRA nor head).
fn count_vector_deltas(graph: &Graph, delta: &Delta) -> MergeReport {
    let linear_biases: std::collections::HashSet<String> =
        graph.nodes.iter().filter_map(|n| if let Op::Linear(l) = &n.op { Some(format!("{}.bias", l.module)) } else { None }).collect();
    let mut report = MergeReport::default();
    for t in delta.tensors.iter().filter(|t| !is_lora(&t.name) && !t.name.starts_with(HEAD_PREFIX)) {
        if linear_biases.contains(&t.name) {
            report.biases += 1;
        } else {
            report.constants += 1;
        }
    }
    report
}

fn is_lora(name: &str) -> bool {
    name.ends_with(".lora_A") || name.ends_with(".lora_B")
}

/// The base's scheme, read from its scales: ONNX Runtime's per-tensor scale reaches the
/// `Linear` copied into every column, so all-equal scales mean per tensor.
fn scheme_of(p: &PackedI8) -> Int8Scheme {
    let s = p.scales();
    if s.iter().all(|&x| x.to_bits() == s[0].to_bits()) {
        Int8Scheme::PerTensor
    } else {
        Int8Scheme::PerChannel
    }
}

/// Symmetric per-tensor int8: `scale = max|w| / 127` (1 for an all-zero weight),
/// `q = round_half_even(w / scale)` clamped to ±127 — ONNX Runtime's `QInt8` weight rule.
fn quantize_per_tensor(w: &[f32]) -> (Vec<i8>, f32) {
    // `f32::max` skips NaN, as the per-channel quantizer does.
    let amax = w.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let scale = if amax == 0.0 { 1.0 } else { amax / 127.0 };
    (w.iter().map(|&v| (v / scale).clamp(-127.0, 127.0).round_ties_even() as i8).collect(), scale)
}

/// Folds `lora` into the int8 weight `p` of `l`: dequantize, add, requantize in `p`'s scheme.
fn requantize(l: &Linear, p: &PackedI8, lora: &LoraPatch) -> Result<(PackedI8, LayerReport)> {
    if p.zero_point() != 0 {
        return Err(MergeError::AsymmetricInt8 { module: l.module.clone(), zero_point: p.zero_point() }.into());
    }
    let (k, n) = (l.k, l.n);
    let dw = lora_update_kn(lora, k, n);
    let exact: Vec<f32> = p.dequantize().iter().zip(&dw).map(|(w, d)| w + d).collect();
    let scheme = scheme_of(p);
    let (q, scales) = match scheme {
        Int8Scheme::PerChannel => quantize_weight_per_channel(&exact, k, n),
        Int8Scheme::PerTensor => {
            let (q, s) = quantize_per_tensor(&exact);
            (q, vec![s; n])
        }
    };
    let packed = PackedI8::new(&q, k, n, &scales, 0);
    let diff: Vec<f32> = packed.dequantize().iter().zip(&exact).map(|(m, e)| m - e).collect();
    let frob = |v: &[f32]| v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    let x = probe_input(k);
    let mut probe = 0f32;
    for row in x.chunks_exact(k.max(1)) {
        for j in 0..n {
            let dy: f32 = (0..k).map(|i| row[i] * diff[i * n + j]).sum();
            probe = probe.max(dy.abs());
        }
    }
    let layer = LayerReport {
        module: l.module.clone(),
        action: LayerAction::Requantized(scheme),
        max_abs_dw: diff.iter().fold(0f32, |a, &d| a.max(d.abs())),
        err_frobenius: frob(&diff),
        exact_frobenius: frob(&exact),
        probe_max_abs_dy: probe,
    };
    Ok((packed, layer))
}

/// Returns a copy of a merged `graph` with `delta` taken out again: LoRA updates subtracted
/// from f32 weights, int8 side paths dropped, bias and constant deltas subtracted. A layer whose
/// update was requantized into int8 is refused ([`MergeError::Irreversible`]).
pub fn unmerge_graph(graph: &Graph, delta: &Delta) -> Result<Graph> {
    if !delta.method.in_format_v1() {
        return Err(crate::Error::Config(format!("unmerge takes out LoRA and BitFit deltas, not {}", delta.method.describe())));
    }
    let mut g = graph.clone();
    let mut negated = delta.clone();
    negated.tensors.clear();
    let mut dropped_side_paths = std::collections::HashSet::new();
    for n in &mut g.nodes {
        let Op::Linear(l) = &mut n.op else { continue };
        if delta.tensor(&format!("{}.lora_A", l.module)).is_none() {
            continue;
        }
        if l.is_int8() {
            if l.lora.take().is_none() {
                return Err(MergeError::Irreversible { module: l.module.clone() }.into());
            }
            dropped_side_paths.insert(l.module.clone());
        }
    }
    for t in &delta.tensors {
        let module = t.name.strip_suffix(".lora_A").or_else(|| t.name.strip_suffix(".lora_B"));
        if module.is_some_and(|m| dropped_side_paths.contains(m)) {
            continue;
        }
        if t.name.starts_with(HEAD_PREFIX) || t.name.ends_with(".lora_A") {
            negated.tensors.push(t.clone());
            continue;
        }
        // −B gives −ΔW exactly (negation commutes with rounding); biases and constants negate.
        let v: Vec<f32> = t.to_f32().map_err(crate::Error::from)?.iter().map(|x| -x).collect();
        negated.tensors.push(NamedTensor::f32(t.name.clone(), &t.shape, v));
    }
    let (g, _) = merge_graph(&g, &negated, &MergeOptions::default())?;
    Ok(g)
}

/// Merges `delta` into `base` and returns the merged model as a new base (it has its own
/// fingerprint: its weights differ), with the report. The delta must have been made for
/// `base`.
///
/// ```no_run
/// use kilotune::peft::merge::{merge, MergeOptions};
/// use kilotune::{delta, Base, LoadOptions, Session, SessionConfig};
/// let base = Base::load("model.onnx", LoadOptions::default())?;
/// let user = delta::load("user.ktd", Some(&base.fingerprint()), &Default::default())?;
/// let (merged, report) = merge(&base, &user, &MergeOptions::default())?;
/// println!("{} layers merged", report.layers.len());
/// let session = Session::new(merged, SessionConfig { threads: 2 })?;
/// # Ok::<(), kilotune::Error>(())
/// ```
pub fn merge(base: &Base, delta: &Delta, options: &MergeOptions) -> Result<(Arc<Base>, MergeReport)> {
    check_base(delta, &base.fingerprint())?;
    let (g, report) = merge_graph(base.graph(), delta, options)?;
    Ok((base.with_graph(g), report))
}

/// Takes `delta` out of a base that [`merge`] made, as [`unmerge_graph`] does.
pub fn unmerge(merged: &Base, delta: &Delta) -> Result<Arc<Base>> {
    Ok(merged.with_graph(unmerge_graph(merged.graph(), delta)?))
}
