//! Applying a user's delta to a base: the patches LoRA and BitFit make on the fused graph.
//!
//! The base is never modified: a session gets its own copy of the graph (weights stay shared
//! through `Arc`) with LoRA side paths attached to the targeted `Linear`s and bias deltas
//! added to the biases they name.
//!
//! Tensor names in a delta: `<module>.lora_A` [r × k] and `<module>.lora_B` [n × r] for LoRA
//! (PEFT's layouts), `<module>.bias` [n] for a `Linear`'s bias delta, and the name of any other
//! constant (e.g. a LayerNorm's `...LayerNorm.bias`) for a delta added to it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::delta::{Delta, DeltaError};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::{LoraPatch, Op};
use crate::peft::PeftMethod;
use crate::tensor::Tensor;

/// Delta tensors named with this prefix belong to the task head (`head.weight`, `head.bias`),
/// not to the base.
pub const HEAD_PREFIX: &str = "head.";

fn bad(name: &str, reason: impl Into<String>) -> Error {
    Error::Config(format!("delta tensor `{name}`: {}", reason.into()))
}

/// Returns a copy of `graph` with `delta` applied. The delta must already be checked against
/// the base's fingerprint.
pub fn apply_delta(graph: &Graph, delta: &Delta) -> Result<Graph> {
    let mut g = graph.clone();
    let mut values: HashMap<&str, (Vec<f32>, &[u32])> = HashMap::new();
    for t in &delta.tensors {
        values.insert(t.name.as_str(), (t.to_f32().map_err(Error::from)?, t.shape.as_slice()));
    }
    let mut used = vec![false; delta.tensors.len()];
    let mark = |used: &mut Vec<bool>, name: &str| {
        if let Some(i) = delta.tensors.iter().position(|t| t.name == name) {
            used[i] = true;
        }
    };
    let lora_cfg = match &delta.method {
        PeftMethod::Lora(c) => Some(c),
        _ => None,
    };
    for n in &mut g.nodes {
        let Op::Linear(l) = &mut n.op else { continue };
        let (a_name, b_name, bias_name) = (format!("{}.lora_A", l.module), format!("{}.lora_B", l.module), format!("{}.bias", l.module));
        match (values.get(a_name.as_str()), values.get(b_name.as_str())) {
            (Some((a, ash)), Some((b, bsh))) => {
                let cfg = lora_cfg.ok_or_else(|| bad(&a_name, "LoRA tensors in a delta whose method is not LoRA"))?;
                let r = *ash.first().ok_or_else(|| bad(&a_name, "scalar"))? as usize;
                if ash != &[r as u32, l.k as u32] || bsh != &[l.n as u32, r as u32] || r == 0 {
                    return Err(bad(&a_name, format!("A {ash:?} / B {bsh:?} do not fit a {}×{} Linear", l.k, l.n)));
                }
                let scale = cfg.alpha / cfg.rank_for(&l.module).max(1) as f32;
                l.lora = Some(Arc::new(LoraPatch { r, a: a.clone(), b: b.clone(), scale, dropout: None }));
                mark(&mut used, &a_name);
                mark(&mut used, &b_name);
            }
            (None, None) => {}
            _ => return Err(bad(&a_name, "lora_A and lora_B must come together")),
        }
        if let Some((db, sh)) = values.get(bias_name.as_str()) {
            if sh != &[l.n as u32] {
                return Err(bad(&bias_name, format!("shape {sh:?}, the bias has {}", l.n)));
            }
            let base = l.bias.as_deref().cloned().unwrap_or_else(|| vec![0.0; l.n]);
            l.bias = Some(Arc::new(base.iter().zip(db).map(|(b, d)| b + d).collect()));
            mark(&mut used, &bias_name);
        }
    }
    // Deltas on other named constants (LayerNorm biases, ...).
    for val in &mut g.values {
        let Some(c) = &val.constant else { continue };
        if let Some((d, sh)) = values.get(val.name.as_str()) {
            let cur = c.as_slice::<f32>().ok_or_else(|| bad(&val.name, "targets a non-f32 constant"))?;
            if sh.iter().map(|&x| x as usize).collect::<Vec<_>>() != c.shape() {
                return Err(bad(&val.name, format!("shape {sh:?}, the constant has {:?}", c.shape())));
            }
            val.constant = Some(Tensor::new(c.shape(), cur.iter().zip(d).map(|(a, b)| a + b).collect())?);
            mark(&mut used, &val.name);
        }
    }
    // The task head's tensors live in the delta too but act after the base.
    for (i, t) in delta.tensors.iter().enumerate() {
        if t.name.starts_with(HEAD_PREFIX) {
            used[i] = true;
        }
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(bad(&delta.tensors[i].name, "matches nothing in this base"));
    }
    Ok(g)
}

/// Checks that `delta` was made for the base with `fingerprint`.
pub fn check_base(delta: &Delta, fingerprint: &[u8; 32]) -> Result<()> {
    if &delta.base_fingerprint != fingerprint {
        return Err(DeltaError::WrongBase { expected: crate::delta::hex(fingerprint), found: crate::delta::hex(&delta.base_fingerprint) }.into());
    }
    Ok(())
}
