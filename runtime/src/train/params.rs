//! The trainable parameters each PEFT method starts from, and which graph node each one
//! belongs to (the tape reports gradients per node).

use std::collections::HashMap;

use super::prefix_mlp::PrefixMlp;
use super::rng::Rng;
use super::tape::{Grads, Trainables};
use crate::base::Base;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::Op;
use crate::peft::top_layers::block_of;
use crate::peft::{BitFitVariant, PeftMethod};

/// The gates' initial `log α`.
pub(crate) const DIFF_LOG_ALPHA_INIT: f32 = 3.0;

/// A trainable parameter tensor of the delta (or, for prefix tuning's MLP, of training only).
#[derive(Clone, Debug)]
pub(crate) struct Param {
    pub name: String,
    pub shape: Vec<u32>,
    pub values: Vec<f32>,
    /// Weight decay applies (not to biases, scales or norms).
    pub decay: bool,
}

impl Param {
    fn new(name: String, shape: &[usize], values: Vec<f32>, decay: bool) -> Param {
        Param { name, shape: shape.iter().map(|&d| d as u32).collect(), values, decay }
    }
}

/// The parameter suffixes that live on a `Linear`, and what the tape calls them.
const LINEAR_PARTS: [&str; 11] = ["lora_A", "lora_B", "bias", "weight", "ia3_in", "ia3_out", "adapter.down", "adapter.down_bias", "adapter.up", "diff", "diff_log_alpha"];
const UP_BIAS: &str = "adapter.up_bias";
/// MAD-X's language adapter parts (`<module>.lang_adapter.down`, ...).
const LANG_PARTS: [&str; 4] = ["lang_adapter.down", "lang_adapter.down_bias", "lang_adapter.up", "lang_adapter.up_bias"];

/// (module, part) when `name` is a `Linear`'s parameter.
fn linear_part(name: &str) -> Option<(&str, &str)> {
    LINEAR_PARTS.iter().chain([&UP_BIAS]).chain(LANG_PARTS.iter()).filter_map(|p| name.strip_suffix(p).and_then(|m| m.strip_suffix('.')).map(|m| (m, *p))).next()
}

/// The LayerNorm γ and β constants of the graph, as (node, γ value, β value).
fn layer_norms(g: &Graph) -> Vec<(Option<usize>, Option<usize>)> {
    g.nodes
        .iter()
        .filter_map(|n| match n.op {
            Op::LayerNorm { .. } => Some((n.inputs.get(1).copied().flatten(), n.inputs.get(2).copied().flatten())),
            Op::AddLayerNorm { .. } => Some((n.inputs.get(2).copied().flatten(), n.inputs.get(3).copied().flatten())),
            _ => None,
        })
        .collect()
}

/// A zero additive delta on each named constant in `values`.
fn constant_deltas(g: &Graph, values: impl Iterator<Item = usize>, out: &mut Vec<Param>) {
    for v in values {
        if let Some(t) = g.constant(v) {
            out.push(Param::new(g.values[v].name.clone(), t.shape(), vec![0.0; t.len()], false));
        }
    }
}

/// The parameters `method` trains on `base`, at their initial values, and prefix tuning's MLP
/// when it has one.
pub(crate) fn init(base: &Base, method: &PeftMethod, rng: &mut Rng) -> Result<(Vec<Param>, Option<PrefixMlp>)> {
    let mut params = Vec::new();
    let g = base.graph();
    let mut mlp = None;
    match method {
        PeftMethod::Lora(c) => {
            c.validate()?;
            for l in base.linears() {
                if !c.matches(&l.module) {
                    continue;
                }
                let r = c.rank_for(&l.module) as usize;
                let bound = 1.0 / (l.k as f32).sqrt();
                params.push(Param::new(format!("{}.lora_A", l.module), &[r, l.k], rng.uniform_vec(r * l.k, bound), true));
                params.push(Param::new(format!("{}.lora_B", l.module), &[l.n, r], vec![0.0; l.n * r], true));
            }
        }
        PeftMethod::BitFit(c) => {
            for l in base.linears() {
                let pick = match c.variant {
                    BitFitVariant::All => true,
                    // The seed paper's variant: the query bias and the MLP's middle bias.
                    BitFitVariant::QueryAndMlp => l.module.ends_with("query") || l.module.ends_with("q_proj") || l.module.ends_with("intermediate.dense") || l.module.ends_with("up_proj"),
                };
                if pick && l.bias.is_some() {
                    params.push(Param::new(format!("{}.bias", l.module), &[l.n], vec![0.0; l.n], false));
                }
            }
            if c.include_layer_norm && c.variant == BitFitVariant::All {
                constant_deltas(g, layer_norms(g).into_iter().filter_map(|(_, beta)| beta), &mut params);
            }
        }
        PeftMethod::HeadOnly => {}
        PeftMethod::TopLayers(c) => {
            c.validate()?;
            let blocks = base.linears().iter().filter_map(|l| block_of(&l.module)).max().map_or(0, |b| b + 1);
            let trained = |name: &str| block_of(name).is_some_and(|b| c.trains(b, blocks));
            for l in base.linears() {
                if trained(&l.module) {
                    params.push(Param::new(format!("{}.weight", l.module), &[l.k, l.n], l.weight_f32().into_owned(), true));
                    if l.bias.is_some() {
                        params.push(Param::new(format!("{}.bias", l.module), &[l.n], vec![0.0; l.n], false));
                    }
                }
            }
            let norms = layer_norms(g).into_iter().flat_map(|(a, b)| [a, b]).flatten().filter(|&v| trained(&g.values[v].name));
            constant_deltas(g, norms, &mut params);
        }
        PeftMethod::Ia3(c) => {
            c.validate()?;
            for l in base.linears() {
                if c.scales_output(&l.module) {
                    params.push(Param::new(format!("{}.ia3_out", l.module), &[l.n], vec![1.0; l.n], false));
                }
                if c.scales_input(&l.module) {
                    params.push(Param::new(format!("{}.ia3_in", l.module), &[l.k], vec![1.0; l.k], false));
                }
            }
        }
        PeftMethod::Adapter(c) => {
            c.validate()?;
            let m = c.bottleneck as usize;
            for l in base.linears() {
                if c.follows(&l.module) {
                    let bound = 1.0 / (l.n as f32).sqrt();
                    params.push(Param::new(format!("{}.adapter.down", l.module), &[m, l.n], rng.uniform_vec(m * l.n, bound), true));
                    params.push(Param::new(format!("{}.adapter.down_bias", l.module), &[m], vec![0.0; m], false));
                    params.push(Param::new(format!("{}.adapter.up", l.module), &[l.n, m], vec![0.0; l.n * m], true));
                    params.push(Param::new(format!("{}.adapter.up_bias", l.module), &[l.n], vec![0.0; l.n], false));
                }
            }
        }
        PeftMethod::DiffPruning(c) => {
            c.validate()?;
            for l in base.linears() {
                if c.targets(&l.module) {
                    let n = l.k * l.n;
                    params.push(Param::new(format!("{}.diff", l.module), &[l.k, l.n], vec![0.0; n], false));
                    // Gates start mostly open (P(z = 1) ≈ 0.9): δ can move before the
                    // penalty closes what it does not need.
                    params.push(Param::new(format!("{}.diff_log_alpha", l.module), &[l.k, l.n], vec![DIFF_LOG_ALPHA_INIT; n], false));
                }
            }
        }
        PeftMethod::MadxLanguage(c) => {
            c.validate()?;
            bottlenecks(base, "lang_adapter", c.bottleneck as usize, rng, &mut params);
            let hidden = super::trainer::hidden_size(base)?;
            if hidden % 2 != 0 {
                return Err(Error::Config(format!("an invertible adapter splits the features in halves; this base has {hidden}")));
            }
            let (half, m) = (hidden / 2, c.invertible_bottleneck as usize);
            for which in ['f', 'g'] {
                // Down Kaiming-uniform, up zero: F = G = 0, so the coupling starts as the identity.
                let [d, db, u, ub] = crate::peft::madx::invertible_names(which);
                params.push(Param::new(d, &[m, half], rng.uniform_vec(m * half, 1.0 / (half as f32).sqrt()), true));
                params.push(Param::new(db, &[m], vec![0.0; m], false));
                params.push(Param::new(u, &[half, m], vec![0.0; half * m], true));
                params.push(Param::new(ub, &[half], vec![0.0; half], false));
            }
            let vocab = crate::train::mlm::output_embedding(g)?.len() / hidden;
            params.push(Param::new(crate::peft::madx::MLM_BIAS.into(), &[vocab], vec![0.0; vocab], false));
        }
        PeftMethod::MadxTask(c) => {
            c.validate()?;
            bottlenecks(base, "adapter", c.bottleneck as usize, rng, &mut params);
        }
        PeftMethod::Prompt(c) => {
            c.validate()?;
            // Lester et al.'s best initialization: the embeddings of tokens drawn from the
            // vocabulary (the table's rows, dequantized where it is stored in int8).
            let at = crate::peft::prompt::word_embedding(g).ok_or_else(|| Error::Config("prompt tuning needs the word-embedding lookup of `input_ids`".into()))?;
            let n = &g.nodes[at];
            let (Op::Embedding { dequant, .. }, Some(table)) = (&n.op, g.input_constant(n, 0)) else {
                return Err(Error::Config("prompt tuning needs a constant word-embedding table".into()));
            };
            let (vocab, dim) = match *table.shape() {
                [v, d] if v > 0 && d > 0 => (v, d),
                ref s => return Err(Error::Config(format!("a word-embedding table of shape {s:?}"))),
            };
            let len = c.len as usize;
            let ids: Vec<i64> = (0..len).map(|_| (rng.next_u64() % vocab as u64) as i64).collect();
            let rows = crate::ops::gather::embedding(table, &crate::tensor::Tensor::new(&[len], ids)?, *dequant)?;
            params.push(Param::new(crate::peft::prompt::TENSOR_NAME.into(), &[len, dim], rows.to_f32_vec(), false));
        }
        PeftMethod::Prefix(c) => {
            c.validate()?;
            let layers = g.nodes.iter().filter(|n| matches!(n.op, Op::Attention(_))).count();
            let d = base
                .linears()
                .iter()
                .find(|l| l.module.ends_with("key") || l.module.ends_with("k_proj"))
                .map(|l| l.n)
                .ok_or_else(|| Error::Config("prefix tuning needs the key projection (`key` or `k_proj`) to size the prefix".into()))?;
            let len = c.len as usize;
            if c.mlp_hidden == 0 {
                for l in 0..layers {
                    let (kn, vn) = crate::peft::prefix::tensor_names(l);
                    params.push(Param::new(kn, &[len, d], rng.uniform_vec(len * d, 0.5), false));
                    params.push(Param::new(vn, &[len, d], rng.uniform_vec(len * d, 0.5), false));
                }
            } else {
                let hidden = super::trainer::hidden_size(base)?;
                let m = PrefixMlp { len, e: hidden, mid: c.mlp_hidden as usize, layers, d };
                let bounds = [1.0, 1.0 / (m.e as f32).sqrt(), 0.0, 1.0 / (m.mid as f32).sqrt(), 0.0];
                for ((name, shape), bound) in PrefixMlp::NAMES.iter().zip(m.shapes()).zip(bounds) {
                    let n = shape.iter().product::<u32>() as usize;
                    params.push(Param { name: (*name).into(), shape, values: rng.uniform_vec(n, bound), decay: false });
                }
                mlp = Some(m);
            }
        }
    }
    Ok((params, mlp))
}

/// A fresh bottleneck adapter (`<module>.<kind>.{down, down_bias, up, up_bias}`, m hidden
/// units) after every FFN output projection (MAD-X's Pfeiffer placement): down
/// Kaiming-uniform, the rest zero, so it starts as the identity.
fn bottlenecks(base: &Base, kind: &str, m: usize, rng: &mut Rng, params: &mut Vec<Param>) {
    for l in base.linears() {
        if crate::peft::madx::follows(&l.module) {
            let bound = 1.0 / (l.n as f32).sqrt();
            params.push(Param::new(format!("{}.{kind}.down", l.module), &[m, l.n], rng.uniform_vec(m * l.n, bound), true));
            params.push(Param::new(format!("{}.{kind}.down_bias", l.module), &[m], vec![0.0; m], false));
            params.push(Param::new(format!("{}.{kind}.up", l.module), &[l.n, m], vec![0.0; l.n * m], true));
            params.push(Param::new(format!("{}.{kind}.up_bias", l.module), &[l.n], vec![0.0; l.n], false));
        }
    }
}

/// Where a parameter lives: on a node (its index in `Graph::nodes`), or as a delta on a
/// constant value. Kept apart because node and value indices overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    Node(usize),
    Value(usize),
}

/// Where each parameter's gradient comes from: the node (or constant value) it belongs to,
/// and the [`Trainables`] that make the tape compute it. Prefix MLP parameters map nowhere:
/// their gradients come through the MLP (see the trainer).
pub(crate) fn locate(g: &Graph, params: &[Param]) -> (Trainables, HashMap<usize, Loc>) {
    let mut t = Trainables::default();
    let mut at = HashMap::new();
    let mut by_module: HashMap<&str, usize> = HashMap::new();
    let mut attention = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        match &n.op {
            Op::Linear(l) => {
                by_module.insert(l.module.as_str(), i);
            }
            Op::Attention(_) => attention.push(i),
            _ => {}
        }
    }
    let prefix_layers = attention.len();
    if params.iter().any(|p| p.name.starts_with("prefix_mlp.")) {
        // The MLP's output is every layer's prefix.
        t.prefix.extend(attention.iter().copied());
    }
    for (pi, p) in params.iter().enumerate() {
        if let Some((node, part)) = linear_part(&p.name).and_then(|(m, part)| by_module.get(m).map(|&i| (i, part))) {
            match part {
                "lora_A" | "lora_B" => t.lora.insert(node),
                "bias" => t.linear_bias.insert(node),
                // Diff pruning's δ and gates reach the loss through the weight.
                "weight" | "diff" | "diff_log_alpha" => t.linear_weight.insert(node),
                _ => t.patch.insert(node),
            };
            at.insert(pi, Loc::Node(node));
        } else if let Some(l) = prefix_layer(&p.name).filter(|&l| l < prefix_layers) {
            t.prefix.insert(attention[l]);
            at.insert(pi, Loc::Node(attention[l]));
        } else if p.name.starts_with(crate::peft::madx::INVERTIBLE_PREFIX) {
            if let Some(node) = crate::peft::madx::invertible_node(g) {
                t.invertible.insert(node);
                at.insert(pi, Loc::Node(node));
            }
        } else if p.name == crate::peft::prompt::TENSOR_NAME {
            if let Some(at_node) = crate::peft::prompt::word_embedding(g) {
                t.prompt.insert(at_node);
                at.insert(pi, Loc::Node(at_node));
            }
        } else if let Some(v) = g.value_named(&p.name) {
            t.constants.insert(v);
            at.insert(pi, Loc::Value(v));
        }
    }
    (t, at)
}

/// The layer of a `prefix.<l>.key` / `.value` tensor.
fn prefix_layer(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("prefix.")?;
    let (l, kind) = rest.split_once('.')?;
    matches!(kind, "key" | "value").then(|| l.parse().ok()).flatten()
}

/// The gradient of parameter `p`, located at `at` by [`locate`]; zeros when the tape sent none
/// (a parameter the loss does not depend on).
pub(crate) fn grad_of(p: &Param, at: Loc, grads: &Grads) -> Vec<f32> {
    let g = match at {
        Loc::Value(v) => grads.constants.get(&v).cloned(),
        Loc::Node(at) if p.name == crate::peft::prompt::TENSOR_NAME => grads.prompt.get(&at).cloned(),
        Loc::Node(at) if p.name.starts_with(crate::peft::madx::INVERTIBLE_PREFIX) => grads.invertible.get(&at).and_then(|c| {
            let rest = &p.name[crate::peft::madx::INVERTIBLE_PREFIX.len()..];
            let (which, part) = rest.split_once('.')?;
            let b = match which {
                "f" => &c.f,
                "g" => &c.g,
                _ => return None,
            };
            bottleneck_part(b, part)
        }),
        Loc::Node(at) if p.name.starts_with("prefix.") => grads.prefix.get(&at).map(|(k, v)| if p.name.ends_with(".key") { k.clone() } else { v.clone() }),
        Loc::Node(at) => {
            let patch = || grads.patch.get(&at);
            match linear_part(&p.name).map(|(_, part)| part) {
                Some("lora_A") => grads.lora.get(&at).map(|(a, _)| a.clone()),
                Some("lora_B") => grads.lora.get(&at).map(|(_, b)| b.clone()),
                Some("bias") => grads.linear_bias.get(&at).cloned(),
                // For diff pruning this is dL/dW; the trainer turns it into dδ and d log α.
                Some("weight" | "diff" | "diff_log_alpha") => grads.linear_weight.get(&at).cloned(),
                Some("ia3_in") => patch().and_then(|g| g.scale_in.clone()),
                Some("ia3_out") => patch().and_then(|g| g.scale_out.clone()),
                // A stacked adapter (MAD-X's task adapter) is the `adapter.*` one when present;
                // the language adapter under it is `lang_adapter.*`.
                Some(part @ ("adapter.down" | "adapter.down_bias" | "adapter.up" | "adapter.up_bias")) => {
                    patch().and_then(|g| g.stacked.as_ref().or(g.adapter.as_ref())).and_then(|a| bottleneck_part(a, &part["adapter.".len()..]))
                }
                Some(part) if part.starts_with("lang_adapter.") => patch().and_then(|g| g.adapter.as_ref()).and_then(|a| bottleneck_part(a, &part["lang_adapter.".len()..])),
                _ => None,
            }
        }
    };
    g.unwrap_or_else(|| vec![0.0; p.values.len()])
}

/// One part (`down`, `down_bias`, `up`, `up_bias`) of a bottleneck's gradients.
fn bottleneck_part(a: &super::backward::patch::AdapterGrads, part: &str) -> Option<Vec<f32>> {
    match part {
        "down" => Some(a.down.clone()),
        "down_bias" => Some(a.down_bias.clone()),
        "up" => Some(a.up.clone()),
        "up_bias" => Some(a.up_bias.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_split_into_module_and_part() {
        assert_eq!(linear_part("encoder.layer.0.output.dense.adapter.up_bias"), Some(("encoder.layer.0.output.dense", "adapter.up_bias")));
        assert_eq!(linear_part("encoder.layer.0.output.dense.adapter.up"), Some(("encoder.layer.0.output.dense", "adapter.up")));
        assert_eq!(linear_part("m.q.lora_A"), Some(("m.q", "lora_A")));
        assert_eq!(linear_part("m.q.ia3_out"), Some(("m.q", "ia3_out")));
        assert_eq!(prefix_layer("prefix.3.value"), Some(3));
        assert_eq!(prefix_layer("prefix.x.value"), None);
        assert_eq!(prefix_layer("prefix_mlp.w1"), None);
    }
}
