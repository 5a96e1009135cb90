//! MAD-X (Pfeiffer et al. 2020): language (or domain) adapters trained by masked-language
//! modelling on unlabelled text, task adapters stacked on a frozen language adapter, and
//! invertible adapters on the embedding output.
//!
//! In each transformer block, after the FFN's output projection (Pfeiffer placement, before
//! the residual and the norm), the language adapter runs and the task adapter runs on its
//! output: `y ← A_task(A_lang(y))`, each `v + f(v·Dᵀ + d)·Uᵀ + u`. The invertible adapter
//! ([`crate::ops::invertible`]) sits on the embedding output (after BERT's embedding
//! LayerNorm; on a model without one, on the word embeddings), and its inverse runs before the
//! tied output embedding when the language adapter is trained.
//!
//! The masked-LM head: our ONNX encoders carry no MLM head (BERT's dense + GELU + LayerNorm
//! transform is not exported), so the language adapter trains through the tied output
//! embedding alone: `logits = inverse(h)·Eᵀ + b`, with `E` the frozen word-embedding table and
//! a trainable output bias `b` (`mlm.bias`, `[vocab]`). The adapters and the invertible
//! adapter absorb what the transform would have done.
//!
//! Files: a language delta (`MadxLanguage`) holds `<module>.lang_adapter.{down, down_bias,
//! up, up_bias}`, `invertible.{f,g}.{down, down_bias, up, up_bias}` and `mlm.bias`. A task
//! delta (`MadxTask`) holds its task adapters (`<module>.adapter.*`) and head, and a copy of
//! the language adapter it was trained with (the `lang_adapter` and `invertible` tensors;
//! not `mlm.bias`), so that it runs on its own. [`with_language`] swaps that copy for another
//! language delta's adapter: the zero-shot transfer MAD-X is built for.

use serde::{Deserialize, Serialize};

use crate::delta::{Delta, NamedTensor};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node};
use crate::ops::invertible::InvertibleAdapter;
use crate::ops::linear_patch::{AdapterActivation, BottleneckAdapter};
use crate::ops::Op;

/// The suffix of a language adapter's tensors: `<module>.lang_adapter.down`, ...
pub const LANG_ADAPTER: &str = "lang_adapter";
/// The prefix of the invertible adapter's tensors: `invertible.f.down`, ...
pub const INVERTIBLE_PREFIX: &str = "invertible.";
/// The masked-LM output bias, `[vocab]`; only a language delta holds it.
pub const MLM_BIAS: &str = "mlm.bias";
/// The parts of one bottleneck, in the order the adapters' tensor names use.
pub const PARTS: [&str; 4] = ["down", "down_bias", "up", "up_bias"];

/// A MAD-X language (or domain) adapter: trained by masked-language modelling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MadxLanguageConfig {
    /// The language adapter's bottleneck size; at least 1.
    pub bottleneck: u32,
    /// The hidden width of the invertible adapter's `F` and `G`; at least 1.
    pub invertible_bottleneck: u32,
    /// The nonlinearity of every adapter (the language's, the invertible one's and the task's
    /// stacked on it).
    pub activation: AdapterActivation,
}

impl Default for MadxLanguageConfig {
    fn default() -> Self {
        MadxLanguageConfig { bottleneck: 64, invertible_bottleneck: 32, activation: AdapterActivation::Relu }
    }
}

impl MadxLanguageConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if self.bottleneck == 0 || self.invertible_bottleneck == 0 {
            return Err(Error::Config("MAD-X adapters need bottleneck sizes of at least 1".into()));
        }
        Ok(())
    }
}

/// A MAD-X task adapter, stacked on a frozen language adapter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MadxTaskConfig {
    /// The language adapter it runs on (the one the delta holds).
    pub language: MadxLanguageConfig,
    /// The task adapter's bottleneck size; at least 1.
    pub bottleneck: u32,
}

impl Default for MadxTaskConfig {
    fn default() -> Self {
        MadxTaskConfig { language: MadxLanguageConfig::default(), bottleneck: 64 }
    }
}

impl MadxTaskConfig {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        self.language.validate()?;
        if self.bottleneck == 0 {
            return Err(Error::Config("a MAD-X task adapter needs a bottleneck size of at least 1".into()));
        }
        Ok(())
    }
}

/// Whether a MAD-X adapter follows `module`: the FFN's output projection (Pfeiffer placement).
pub fn follows(module: &str) -> bool {
    super::AdapterConfig { placement: super::AdapterPlacement::Pfeiffer, ..Default::default() }.follows(module)
}

/// Whether `name` is one of a language adapter's tensors a task delta carries.
pub fn is_language_tensor(name: &str) -> bool {
    name.starts_with(INVERTIBLE_PREFIX) || PARTS.iter().any(|p| name.ends_with(&format!(".{LANG_ADAPTER}.{p}")))
}

/// The invertible adapter's tensor names for branch `which` (`f` or `g`), in [`PARTS`] order.
pub fn invertible_names(which: char) -> [String; 4] {
    PARTS.map(|p| format!("{INVERTIBLE_PREFIX}{which}.{p}"))
}

/// `task` with its language adapter replaced by `language`'s: the same task adapters and
/// head, run on another language's (or domain's) adapter.
pub fn with_language(task: &Delta, language: &Delta) -> Result<Delta> {
    let crate::peft::PeftMethod::MadxTask(tc) = &task.method else {
        return Err(Error::Config(format!("only a MAD-X task delta takes a language adapter, not a {} delta", task.method.describe())));
    };
    let crate::peft::PeftMethod::MadxLanguage(lc) = &language.method else {
        return Err(Error::Config(format!("the language adapter must be a MAD-X language delta, not a {} delta", language.method.describe())));
    };
    if task.base_fingerprint != language.base_fingerprint {
        return Err(Error::Config("the language adapter was trained on another base than the task delta".into()));
    }
    let mut out = task.clone();
    out.tensors.retain(|t| !is_language_tensor(&t.name));
    out.tensors.extend(language.tensors.iter().filter(|t| is_language_tensor(&t.name)).cloned());
    out.method = crate::peft::PeftMethod::MadxTask(MadxTaskConfig { language: lc.clone(), bottleneck: tc.bottleneck });
    Ok(out)
}

/// The language tensors of a language delta, as a task trainer carries them (frozen).
pub fn language_tensors(language: &Delta) -> Result<(MadxLanguageConfig, Vec<NamedTensor>)> {
    let crate::peft::PeftMethod::MadxLanguage(c) = &language.method else {
        return Err(Error::Config(format!("a MAD-X task adapter stacks on a MAD-X language delta, not a {} delta", language.method.describe())));
    };
    Ok((c.clone(), language.tensors.iter().filter(|t| is_language_tensor(&t.name)).cloned().collect()))
}

/// The node whose output is "the embedding output": BERT's embedding LayerNorm (the first
/// LayerNorm before the first attention), else the word-embedding lookup.
pub fn embedding_output(g: &Graph) -> Option<usize> {
    let word = super::prompt::word_embedding(g)?;
    let first_attention = g.nodes.iter().position(|n| matches!(n.op, Op::Attention(_))).unwrap_or(g.nodes.len());
    let norm = (word + 1..first_attention).find(|&i| matches!(g.nodes[i].op, Op::LayerNorm { .. } | Op::AddLayerNorm { .. }));
    Some(norm.unwrap_or(word))
}

/// The graph's invertible-adapter node, if a delta inserted one.
pub fn invertible_node(g: &Graph) -> Option<usize> {
    g.nodes.iter().position(|n| matches!(n.op, Op::Invertible(_)))
}

/// Inserts `a` after the embedding output: every reader of that value reads the adapter's.
pub fn insert_invertible(g: &mut Graph, a: InvertibleAdapter) -> Result<()> {
    let at = embedding_output(g).ok_or_else(|| Error::Config("an invertible adapter needs the word-embedding lookup of `input_ids`".into()))?;
    let old = *g.nodes[at].outputs.first().ok_or_else(|| Error::InvalidModel("the embedding node has no output".into()))?;
    if g.outputs.contains(&old) {
        return Err(Error::Config("the embedding output is a model output: nothing follows it to adapt".into()));
    }
    let new = g.add_value(format!("{}.invertible", g.values[old].name), None);
    for n in g.nodes.iter_mut().skip(at + 1) {
        for v in n.inputs.iter_mut().flatten() {
            if *v == old {
                *v = new;
            }
        }
    }
    let node = Node { name: format!("{}.invertible_adapter", g.nodes[at].name), op: Op::Invertible(std::sync::Arc::new(a)), inputs: vec![Some(old)], outputs: vec![new] };
    g.nodes.insert(at + 1, node);
    Ok(())
}

/// A bottleneck from named parts `[down, down_bias, up, up_bias]` over `n` features; `get`
/// returns a tensor's values and shape.
pub(crate) fn bottleneck<'a>(names: &[String; 4], n: usize, activation: AdapterActivation, get: impl Fn(&str) -> Option<(&'a [f32], &'a [u32])>) -> Result<Option<BottleneckAdapter>> {
    let parts: Vec<_> = names.iter().map(|name| get(name)).collect();
    if parts.iter().all(Option::is_none) {
        return Ok(None);
    }
    let bad = |why: String| Error::Config(format!("delta tensor `{}`: {why}", names[0]));
    let [Some(d), Some(db), Some(u), Some(ub)] = [parts[0], parts[1], parts[2], parts[3]] else {
        return Err(bad("a bottleneck needs down, down_bias, up and up_bias".into()));
    };
    let m = d.1.first().copied().unwrap_or(0) as usize;
    let want = |sh: &[u32], w: &[usize]| sh.iter().map(|&x| x as usize).eq(w.iter().copied());
    if m == 0 || !want(d.1, &[m, n]) || !want(db.1, &[m]) || !want(u.1, &[n, m]) || !want(ub.1, &[n]) {
        return Err(bad(format!("shapes {:?} {:?} {:?} {:?} do not make an {n}-feature bottleneck", d.1, db.1, u.1, ub.1)));
    }
    Ok(Some(BottleneckAdapter { m, down: d.0.to_vec(), down_bias: db.0.to_vec(), up: u.0.to_vec(), up_bias: ub.0.to_vec(), activation }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tensors_are_told_apart_from_task_ones() {
        assert!(is_language_tensor("m.encoder.layer.0.output.dense.lang_adapter.up_bias"));
        assert!(is_language_tensor("invertible.f.down"));
        assert!(!is_language_tensor("m.encoder.layer.0.output.dense.adapter.up"));
        assert!(!is_language_tensor(MLM_BIAS));
        assert!(!is_language_tensor("head.weight"));
        assert!(follows("encoder.layer.3.output.dense") && !follows("encoder.layer.3.attention.output.dense"));
        assert!(MadxTaskConfig { bottleneck: 0, ..Default::default() }.validate().is_err());
        assert!(MadxLanguageConfig { invertible_bottleneck: 0, ..Default::default() }.validate().is_err());
    }
}
