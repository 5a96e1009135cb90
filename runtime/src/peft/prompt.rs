//! Prompt tuning (Lester et al. 2021): `len` trainable embeddings put in front of every
//! sequence's input embeddings; the base stays frozen.
//!
//! How the sequence grows without rewriting the graph's shape arithmetic: a session whose graph
//! holds a soft prompt widens its inputs by `len` positions at the front (placeholder token id
//! 0 in `input_ids`, 1 in `attention_mask`, 0 in `token_type_ids`), the word-embedding lookup
//! replaces those positions' rows by the prompt (`Op::Embedding`'s `prompt`), and every shape
//! the exported graph computes from the inputs (positions, masks, reshapes) follows the longer
//! sequence by itself. So the prompt takes positions `0..len` and the real tokens move to
//! `len..len + seq`, as in Hugging Face PEFT. The outputs lose the prompt's positions again
//! before anyone sees them: `[batch, seq, ...]` as without a prompt, so pooling (mean over the
//! real tokens, or the real `[CLS]`), heads and the causal-LM loss are unchanged. Every real
//! token attends to the prompt; on a causal model the prompt comes first, so it is visible to
//! every position.
//!
//! The delta holds one tensor, `prompt.embeddings` `[len, hidden]`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::Op;
use crate::tensor::{DType, Tensor};

/// The delta tensor holding the soft prompt, `[len, hidden]`.
pub const TENSOR_NAME: &str = "prompt.embeddings";

/// The inputs a session widens, and the value their prompt positions take.
const WIDENED: [(&str, i64); 3] = [("input_ids", 0), ("attention_mask", 1), ("token_type_ids", 0)];

/// A prompt-tuning configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptConfig {
    /// Soft-prompt tokens; at least 1.
    pub len: u32,
}

impl Default for PromptConfig {
    fn default() -> Self {
        PromptConfig { len: 10 }
    }
}

impl PromptConfig {
    /// Checks the prompt length.
    pub fn validate(&self) -> Result<()> {
        if self.len == 0 {
            return Err(Error::Config("prompt tuning needs at least 1 soft-prompt token".into()));
        }
        Ok(())
    }
}

/// The word-embedding lookup: the `Embedding` node whose ids are the graph input `input_ids`.
pub fn word_embedding(g: &Graph) -> Option<usize> {
    let ids = g.inputs.iter().map(|i| i.value).find(|&v| g.values[v].name == "input_ids")?;
    g.nodes.iter().position(|n| matches!(n.op, Op::Embedding { .. }) && n.inputs.get(1).copied().flatten() == Some(ids))
}

/// The soft prompt's length in `g` (0 without one).
pub fn prompt_len(g: &Graph) -> usize {
    let dim = |n: &crate::graph::Node| g.input_constant(n, 0).and_then(|t| t.shape().get(1).copied()).unwrap_or(0);
    g.nodes
        .iter()
        .find_map(|n| match &n.op {
            Op::Embedding { prompt: Some(p), .. } => Some(p.len() / dim(n).max(1)),
            _ => None,
        })
        .unwrap_or(0)
}

/// `inputs` with `len` prompt positions in front of each `[batch, seq]` input. An input the
/// prompt does not know how to widen is an error rather than a silently misaligned run.
pub fn widen(inputs: &[(&str, Tensor)], len: usize) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(inputs.len());
    for (name, t) in inputs {
        let bad = |reason: String| Error::BadInput { name: (*name).to_owned(), reason };
        let fill = WIDENED.iter().find(|(n, _)| n == name).map(|&(_, v)| v).ok_or_else(|| bad("a soft prompt widens only input_ids, attention_mask and token_type_ids".into()))?;
        let [b, s] = *t.shape() else { return Err(bad(format!("expected [batch, seq], got {:?}", t.shape()))) };
        let w = match t.dtype() {
            DType::I64 => {
                let x = t.typed::<i64>("prompt input")?;
                let mut v = Vec::with_capacity(b * (s + len));
                for row in x.chunks_exact(s.max(1)).take(b) {
                    v.extend(std::iter::repeat_n(fill, len));
                    v.extend_from_slice(row);
                }
                if s == 0 {
                    v = vec![fill; b * len];
                }
                Tensor::new(&[b, s + len], v)?
            }
            other => return Err(bad(format!("a soft prompt widens i64 inputs, not {other:?}"))),
        };
        out.push(((*name).to_owned(), w));
    }
    Ok(out)
}

/// An output `[batch, len + seq, ...]` without its first `len` positions; other shapes (no
/// sequence axis) pass through.
pub fn strip(t: &Tensor, len: usize, seq: usize) -> Result<Tensor> {
    match *t.shape() {
        [b, s, ..] if s == seq + len && t.dtype() == DType::F32 => {
            let inner: usize = t.shape()[2..].iter().product();
            let x = t.typed::<f32>("output")?;
            let mut v = Vec::with_capacity(b * seq * inner);
            for row in x.chunks_exact(s * inner) {
                v.extend_from_slice(&row[len * inner..]);
            }
            let mut shape = t.shape().to_vec();
            shape[1] = seq;
            Tensor::new(&shape, v)
        }
        _ => Ok(t.clone()),
    }
}

/// The gradient of a stripped output, `[batch, seq, inner]`, put back at full length with zeros
/// at the prompt's positions (nothing reads the prompt's own outputs).
pub fn pad_grad(d: &[f32], batch: usize, len: usize, seq: usize) -> Vec<f32> {
    let inner = d.len() / (batch * seq).max(1);
    let mut v = Vec::with_capacity(batch * (len + seq) * inner);
    for row in d.chunks_exact((seq * inner).max(1)) {
        v.extend(std::iter::repeat_n(0.0, len * inner));
        v.extend_from_slice(row);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_and_stripping_undo_each_other() {
        let ids = Tensor::new(&[2, 2], vec![5i64, 6, 7, 8]).unwrap();
        let mask = Tensor::new(&[2, 2], vec![1i64, 1, 1, 0]).unwrap();
        let w = widen(&[("input_ids", ids), ("attention_mask", mask)], 1).unwrap();
        assert_eq!(w[0].1.to_i64_vec("ids").unwrap(), [0, 5, 6, 0, 7, 8]);
        assert_eq!(w[1].1.to_i64_vec("mask").unwrap(), [1, 1, 1, 1, 1, 0]);
        let out = Tensor::new(&[2, 3, 1], vec![9.0f32, 1.0, 2.0, 9.0, 3.0, 4.0]).unwrap();
        assert_eq!(strip(&out, 1, 2).unwrap().to_f32_vec(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(pad_grad(&[1.0, 2.0, 3.0, 4.0], 2, 1, 2), [0.0, 1.0, 2.0, 0.0, 3.0, 4.0]);
        let pos = Tensor::new(&[1, 1], vec![0i64]).unwrap();
        assert!(matches!(widen(&[("position_ids", pos)], 1), Err(Error::BadInput { .. })));
        assert!(PromptConfig { len: 0 }.validate().is_err());
    }
}
