//! Applying a user's delta to a base: the patches LoRA and BitFit make on the fused graph.
//!
//! The base is never modified: a session gets its own copy of the graph (weights stay shared
//! through `Arc`) with LoRA side paths attached to the targeted `Linear`s and bias deltas
//! added to the biases they name.
//!
//! Tensor names in a delta: `<module>.lora_A` [r × k] and `<module>.lora_B` [n × r] for LoRA
//! (PEFT's layouts), `<module>.bias` [n] for a `Linear`'s bias delta, and the name of any other
//! constant (e.g. a LayerNorm's `...LayerNorm.bias`) for a delta added to it. The other
//! methods' names: `<module>.weight` `[k, n]` replaces a `Linear`'s weight (top-layer
//! fine-tuning), `<module>.ia3_in` `[k]` / `.ia3_out` `[n]` scale its input / output ((IA)3),
//! `<module>.adapter.{down, down_bias, up, up_bias}` add a bottleneck adapter after it, and
//! `prefix.<i>.key` / `.value` `[len, kv_heads·head_dim]` give the i-th `Attention` node a
//! prefix, and `prompt.embeddings` `[len, hidden]` gives the word-embedding lookup a soft prompt.

use std::collections::HashMap;
use std::sync::Arc;

use crate::delta::{Delta, DeltaError};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::attention_prefix::PrefixKv;
use crate::ops::linear::LinearWeight;
use crate::ops::linear_patch::{BottleneckAdapter, LinearPatch};
use crate::ops::{Linear, LoraPatch, Op};
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
        patch_linear(l, &values, &delta.method, &mut |name| mark(&mut used, name))?;
        if let Some((db, sh)) = values.get(bias_name.as_str()) {
            if sh != &[l.n as u32] {
                return Err(bad(&bias_name, format!("shape {sh:?}, the bias has {}", l.n)));
            }
            let base = l.bias.as_deref().cloned().unwrap_or_else(|| vec![0.0; l.n]);
            l.bias = Some(Arc::new(base.iter().zip(db).map(|(b, d)| b + d).collect()));
            mark(&mut used, &bias_name);
        }
    }
    patch_attention(&mut g, &values, &mut |name| mark(&mut used, name))?;
    patch_prompt(&mut g, &values, &mut |name| mark(&mut used, name))?;
    patch_invertible(&mut g, &values, &delta.method, &mut |name| mark(&mut used, name))?;
    // Deltas on other named constants (LayerNorm biases, ...), unless a Linear took the name.
    for val in &mut g.values {
        let Some(c) = &val.constant else { continue };
        let taken = delta.tensors.iter().position(|t| t.name == val.name).is_some_and(|i| used[i]);
        if taken {
            continue;
        }
        if let Some((d, sh)) = values.get(val.name.as_str()) {
            let cur = c.as_slice::<f32>().ok_or_else(|| bad(&val.name, "targets a non-f32 constant"))?;
            if sh.iter().map(|&x| x as usize).collect::<Vec<_>>() != c.shape() {
                return Err(bad(&val.name, format!("shape {sh:?}, the constant has {:?}", c.shape())));
            }
            val.constant = Some(Tensor::new(c.shape(), cur.iter().zip(d).map(|(a, b)| a + b).collect())?);
            mark(&mut used, &val.name);
        }
    }
    // The task head's tensors (and a masked-LM output bias) live in the delta too but act
    // after the base.
    for (i, t) in delta.tensors.iter().enumerate() {
        if t.name.starts_with(HEAD_PREFIX) || t.name == crate::peft::madx::MLM_BIAS {
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

type Values<'a> = HashMap<&'a str, (Vec<f32>, &'a [u32])>;

/// Applies the non-LoRA parts of a delta to one `Linear`: a replaced weight, (IA)3 scales and
/// an adapter. `take` marks a tensor as used.
fn patch_linear(l: &mut Linear, values: &Values<'_>, method: &PeftMethod, take: &mut dyn FnMut(&str)) -> Result<()> {
    let get = |suffix: &str, want: &[usize]| -> Result<Option<(String, Vec<f32>)>> {
        let name = format!("{}.{suffix}", l.module);
        match values.get(name.as_str()) {
            None => Ok(None),
            Some((v, sh)) => {
                let sh: Vec<usize> = sh.iter().map(|&d| d as usize).collect();
                if sh != want {
                    return Err(bad(&name, format!("shape {sh:?}, expected {want:?} for this {}×{} Linear", l.k, l.n)));
                }
                Ok(Some((name, v.clone())))
            }
        }
    };
    if let Some((name, w)) = get("weight", &[l.k, l.n])? {
        l.weight = LinearWeight::F32(Arc::new(w));
        take(&name);
    }
    let (iname, vname) = crate::peft::diff_pruning::tensor_names(&l.module);
    if let (Some((idx, ish)), Some((val, vsh))) = (values.get(iname.as_str()), values.get(vname.as_str())) {
        if ish.len() != 1 || ish != vsh {
            return Err(bad(&iname, format!("indices {ish:?} and values {vsh:?} must be vectors of one length")));
        }
        let mut w = l.weight_f32().into_owned();
        for (&i, &v) in idx.iter().zip(val) {
            // Indices travel as f32 integers (exact below 2^24, which bounds the weight's size).
            if i.fract() != 0.0 || i < 0.0 || i as usize >= w.len() {
                return Err(bad(&iname, format!("index {i} is not a whole number below {}", w.len())));
            }
            w[i as usize] += v;
        }
        l.weight = LinearWeight::F32(Arc::new(w));
        take(&iname);
        take(&vname);
    }
    let mut patch = LinearPatch::default();
    if let Some((name, s)) = get("ia3_in", &[l.k])? {
        patch.scale_in = Some(s);
        take(&name);
    }
    if let Some((name, s)) = get("ia3_out", &[l.n])? {
        patch.scale_out = Some(s);
        take(&name);
    }
    let activation = match method {
        PeftMethod::Adapter(c) => Some(c.activation),
        PeftMethod::MadxLanguage(c) => Some(c.activation),
        PeftMethod::MadxTask(c) => Some(c.language.activation),
        _ => None,
    };
    // MAD-X's language adapter comes first; a task adapter stacks on it.
    let lang = crate::peft::madx::PARTS.map(|p| format!("{}.{}.{p}", l.module, crate::peft::madx::LANG_ADAPTER));
    if lang.iter().any(|n| values.contains_key(n.as_str())) {
        let act = match method {
            PeftMethod::MadxLanguage(_) | PeftMethod::MadxTask(_) => activation.unwrap_or_default(),
            _ => return Err(bad(&lang[0], "a language adapter in a delta whose method is not MAD-X")),
        };
        patch.adapter = crate::peft::madx::bottleneck(&lang, l.n, act, |n| values.get(n).map(|(v, sh)| (v.as_slice(), *sh)))?;
        lang.iter().for_each(|n| take(n));
    }
    let down_name = format!("{}.adapter.down", l.module);
    if let Some((_, sh)) = values.get(down_name.as_str()) {
        let (PeftMethod::Adapter(_) | PeftMethod::MadxTask(_), Some(activation)) = (method, activation) else {
            return Err(bad(&down_name, "adapter tensors in a delta whose method is not an adapter"));
        };
        let m = *sh.first().ok_or_else(|| bad(&down_name, "scalar"))? as usize;
        let parts = (get("adapter.down", &[m, l.n])?, get("adapter.down_bias", &[m])?, get("adapter.up", &[l.n, m])?, get("adapter.up_bias", &[l.n])?);
        let (Some(down), Some(down_bias), Some(up), Some(up_bias)) = parts else {
            return Err(bad(&down_name, "an adapter needs down, down_bias, up and up_bias"));
        };
        for n in [&down.0, &down_bias.0, &up.0, &up_bias.0] {
            take(n);
        }
        let a = BottleneckAdapter { m, down: down.1, down_bias: down_bias.1, up: up.1, up_bias: up_bias.1, activation };
        if patch.adapter.is_some() {
            patch.stacked = Some(a);
        } else {
            patch.adapter = Some(a);
        }
    }
    if patch != LinearPatch::default() {
        l.patch = Some(Arc::new(patch));
    }
    Ok(())
}

/// Gives the word-embedding lookup the delta's soft prompt, if any.
fn patch_prompt(g: &mut Graph, values: &Values<'_>, take: &mut dyn FnMut(&str)) -> Result<()> {
    let name = crate::peft::prompt::TENSOR_NAME;
    let Some((p, sh)) = values.get(name) else { return Ok(()) };
    let at = crate::peft::prompt::word_embedding(g).ok_or_else(|| bad(name, "this base has no word-embedding lookup of `input_ids` to prepend a prompt to"))?;
    let dim = g.input_constant(&g.nodes[at], 0).and_then(|t| t.shape().get(1).copied()).unwrap_or(0);
    if sh.len() != 2 || sh[0] == 0 || sh[1] as usize != dim {
        return Err(bad(name, format!("shape {sh:?}, expected [len, {dim}]")));
    }
    if let Op::Embedding { prompt, .. } = &mut g.nodes[at].op {
        *prompt = Some(Arc::new(p.clone()));
    }
    take(name);
    Ok(())
}

/// Inserts the delta's invertible adapter (MAD-X) after the embedding output, if it has one.
fn patch_invertible(g: &mut Graph, values: &Values<'_>, method: &PeftMethod, take: &mut dyn FnMut(&str)) -> Result<()> {
    let (f, gn) = (crate::peft::madx::invertible_names('f'), crate::peft::madx::invertible_names('g'));
    if !f.iter().chain(&gn).any(|n| values.contains_key(n.as_str())) {
        return Ok(());
    }
    let activation = match method {
        PeftMethod::MadxLanguage(c) => c.activation,
        PeftMethod::MadxTask(c) => c.language.activation,
        _ => return Err(bad(&f[0], "an invertible adapter in a delta whose method is not MAD-X")),
    };
    let half = values.get(f[0].as_str()).and_then(|(_, sh)| sh.get(1).copied()).unwrap_or(0) as usize;
    let width = crate::peft::madx::embedding_output(g).and_then(|at| embedding_width(g, at)).unwrap_or(0);
    if half == 0 || width != 2 * half {
        return Err(bad(&f[0], format!("an invertible adapter over 2×{half} features does not fit this base's {width}-feature embeddings")));
    }
    let get = |n: &str| values.get(n).map(|(v, sh)| (v.as_slice(), *sh));
    let (Some(fa), Some(ga)) = (crate::peft::madx::bottleneck(&f, half, activation, get)?, crate::peft::madx::bottleneck(&gn, half, activation, get)?) else {
        return Err(bad(&f[0], "an invertible adapter needs both F and G"));
    };
    crate::peft::madx::insert_invertible(g, crate::ops::invertible::InvertibleAdapter { half, f: fa, g: ga })?;
    f.iter().chain(&gn).for_each(|n| take(n));
    Ok(())
}

/// The feature width of the embedding output made by node `at`: the word-embedding table's
/// width (the embedding norm keeps it).
fn embedding_width(g: &Graph, at: usize) -> Option<usize> {
    let word = crate::peft::prompt::word_embedding(g)?;
    debug_assert!(at >= word);
    g.input_constant(&g.nodes[word], 0).and_then(|t| t.shape().get(1).copied())
}

/// Gives each `Attention` node the prefix its delta holds, if any.
fn patch_attention(g: &mut Graph, values: &Values<'_>, take: &mut dyn FnMut(&str)) -> Result<()> {
    let mut layer = 0;
    for n in &mut g.nodes {
        let Op::Attention(a) = &mut n.op else { continue };
        let (kn, vn) = crate::peft::prefix::tensor_names(layer);
        layer += 1;
        match (values.get(kn.as_str()), values.get(vn.as_str())) {
            (None, None) => {}
            (Some((k, ks)), Some((v, vs))) => {
                if ks.len() != 2 || ks != vs || ks[0] == 0 {
                    return Err(bad(&kn, format!("prefix keys {ks:?} and values {vs:?} must both be [len, kv_heads·head_dim]")));
                }
                a.prefix = Some(Arc::new(PrefixKv { len: ks[0] as usize, k: k.clone(), v: v.clone() }));
                take(&kn);
                take(&vn);
            }
            _ => return Err(bad(&kn, "prefix keys and values must come together")),
        }
    }
    Ok(())
}
