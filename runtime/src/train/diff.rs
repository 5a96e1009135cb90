//! Diff pruning in the trainer (see [`crate::peft::diff_pruning`]): the weights a step trains
//! through (`W + z ⊙ δ` with sampled gates), the chain rule from `dL/dW` to `dδ` and
//! `d log α` (plus the L0 penalty's gradient), and the sparse delta that is saved.

use super::params::Param;
use crate::base::Base;
use crate::delta::NamedTensor;
use crate::error::{Error, Result};
use crate::peft::diff_pruning::{gate, gate_eval, open_probability, tensor_names, top_k_threshold, DiffPruningConfig};

/// The gate noise `u ∈ (0, 1)` of element `i` of parameter pair `pair` at `step`: a hash, so
/// the forward and the backward of a step draw the same value without storing it.
fn noise(seed: u64, step: u64, pair: usize, i: usize) -> f32 {
    let mut z = seed ^ step.wrapping_mul(0xA076_1D64_78BD_642F) ^ (pair as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB) ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // 24 bits, centred in their interval: never exactly 0 or 1.
    (((z >> 40) as f32) + 0.5) / (1u64 << 24) as f32
}

/// The (δ, log α) parameter pairs, as indices into `params` (`params::init` puts each δ just
/// before its gates), with their module names.
pub(crate) fn pairs(params: &[Param]) -> Vec<(usize, usize, &str)> {
    params
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let m = p.name.strip_suffix(".diff")?;
            params.get(i + 1).filter(|q| q.name.strip_suffix(".diff_log_alpha") == Some(m)).map(|_| (i, i + 1, m))
        })
        .collect()
}

/// The weights the next step runs with: `W + z ⊙ δ` with gates sampled for `step`, as
/// `<module>.weight` tensors.
pub(crate) fn training_weights(base: &Base, params: &[Param], seed: u64, step: u64) -> Result<Vec<NamedTensor>> {
    let linears = base.linears();
    let mut out = Vec::new();
    for (pair, (d, a, module)) in pairs(params).into_iter().enumerate() {
        let l = linears.iter().find(|l| l.module == module).ok_or_else(|| Error::Config(format!("no Linear `{module}` for its diff")))?;
        let mut w = l.weight_f32().into_owned();
        for (i, ((w, &delta), &la)) in w.iter_mut().zip(&params[d].values).zip(&params[a].values).enumerate() {
            *w += gate(la, noise(seed, step, pair, i)).0 * delta;
        }
        out.push(NamedTensor::f32(format!("{module}.weight"), &params[d].shape, w));
    }
    Ok(out)
}

/// Turns the weight gradients the tape gave both members of each pair into `dδ = dW ⊙ z` and
/// `d log α = dW ⊙ δ ⊙ dz/d log α + (λ/N)·dP(z ≠ 0)/d log α`, N the number of gates.
pub(crate) fn chain(c: &DiffPruningConfig, params: &[Param], grads: &mut [Vec<f32>], seed: u64, step: u64) {
    let ps = pairs(params);
    let n: usize = ps.iter().map(|&(d, _, _)| params[d].values.len()).sum();
    let penalty = c.l0_lambda / n.max(1) as f32;
    for (pair, &(d, a, _)) in ps.iter().enumerate() {
        let dw = std::mem::take(&mut grads[d]);
        let (delta, la) = (&params[d].values, &params[a].values);
        let mut dd = vec![0f32; dw.len()];
        let mut da = vec![0f32; dw.len()];
        for i in 0..dw.len().min(delta.len()) {
            let (z, dz) = gate(la[i], noise(seed, step, pair, i));
            dd[i] = dw[i] * z;
            da[i] = dw[i] * delta[i] * dz + penalty * open_probability(la[i]).1;
        }
        grads[d] = dd;
        grads[a] = da;
    }
}

/// Guo et al.'s second phase: the projection onto the L0 ball made once, halfway through a
/// scheduled run, so the remaining steps fine-tune the δ that will be saved rather than a
/// dense one that the final projection would cut. Each kept element's δ takes its gate's
/// evaluation value folded in and its gate is pinned open (`log α = +20`: every sampled and
/// evaluated gate is exactly 1, its gradient 0); every other element's δ is zeroed and its
/// gate pinned shut (`log α = −20`: every gate exactly 0, so its δ no longer reaches the
/// weights or gets a gradient). Returns the number of elements kept.
pub(crate) fn project(c: &DiffPruningConfig, params: &mut [Param]) -> usize {
    let ps: Vec<(usize, usize)> = pairs(params).into_iter().map(|(d, a, _)| (d, a)).collect();
    let scores: Vec<f32> = ps.iter().flat_map(|&(d, a)| params[d].values.iter().zip(&params[a].values).map(|(&x, &la)| (x * gate_eval(la)).abs()).collect::<Vec<_>>()).collect();
    let keep = (f64::from(c.density) * scores.len() as f64).ceil() as usize;
    let threshold = top_k_threshold(&scores, keep);
    let mut kept = 0;
    for (d, a) in ps {
        let (lo, hi) = params.split_at_mut(a);
        for (x, la) in lo[d].values.iter_mut().zip(hi[0].values.iter_mut()) {
            let v = *x * gate_eval(*la);
            if v.abs() >= threshold && v != 0.0 {
                (*x, *la) = (v, PINNED);
                kept += 1;
            } else {
                (*x, *la) = (0.0, -PINNED);
            }
        }
    }
    kept
}

/// The `log α` that pins a gate (open, or shut when negated): far past the hard-concrete's
/// stretch for any noise the 24-bit sampler draws.
const PINNED: f32 = 20.0;

/// The saved δ: gates at their evaluation value, then only the `density` share of largest
/// `|δ ⊙ z|` over every targeted weight, as `<module>.diff_index` / `.diff_value`.
pub(crate) fn sparse_delta(c: &DiffPruningConfig, params: &[Param]) -> Vec<NamedTensor> {
    let ps = pairs(params);
    let effective: Vec<Vec<f32>> = ps.iter().map(|&(d, a, _)| params[d].values.iter().zip(&params[a].values).map(|(&x, &la)| x * gate_eval(la)).collect()).collect();
    let scores: Vec<f32> = effective.iter().flatten().map(|v| v.abs()).collect();
    let keep = (f64::from(c.density) * scores.len() as f64).ceil() as usize;
    let threshold = top_k_threshold(&scores, keep);
    let mut out = Vec::new();
    for ((_, _, module), eff) in ps.iter().zip(&effective) {
        let (idx, val): (Vec<f32>, Vec<f32>) = eff.iter().enumerate().filter(|(_, v)| v.abs() >= threshold && **v != 0.0).map(|(i, &v)| (i as f32, v)).unzip();
        let (iname, vname) = tensor_names(module);
        let len = idx.len() as u32;
        out.push(NamedTensor::f32(iname, &[len], idx));
        out.push(NamedTensor::f32(vname, &[len], val));
    }
    out
}
