//! Masked-language modelling through the tied word embeddings, for MAD-X's language adapters
//! (see [`crate::peft::madx`]): BERT's masking rule, and the loss
//! `CE(inverse(h)·Eᵀ + b, token)` at the masked positions, where `h` is the encoder's last
//! hidden state, `inverse` the invertible adapter's inverse, `E` the frozen word-embedding
//! table and `b` the trainable output bias (`mlm.bias`).

use super::backward::cross_entropy;
use super::backward::invertible::{inverse_backward, CouplingGrads};
use super::head::{batch_rows, StepResult};
use super::rng::Rng;
use super::tape::Trainables;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::kernels::gemm_f32::{matmul_f32, matmul_f32_bt};
use crate::ops::invertible::InvertibleAdapter;
use crate::ops::Op;
use crate::session::Session;
use crate::tensor::Tensor;

/// A position that is not scored in [`mask_tokens`]'s labels.
pub const NOT_MASKED: i64 = -100;

/// BERT's masking settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskingConfig {
    /// The share of real tokens chosen for prediction (BERT: 0.15).
    pub probability: f32,
    /// The `[MASK]` token's id.
    pub mask_id: i64,
    /// Ids never chosen (`[CLS]`, `[SEP]`, padding).
    pub special_ids: Vec<i64>,
    /// The vocabulary size; random replacements are drawn below it.
    pub vocab: usize,
}

/// BERT's masking: each unpadded, non-special token is chosen with `probability`; a chosen
/// token becomes `[MASK]` with probability 0.8, a random token with 0.1, and stays itself with
/// 0.1. Returns the new ids and the labels (the original id where chosen, [`NOT_MASKED`]
/// elsewhere). At least one token per batch is chosen when any can be. The same seed gives the
/// same masks.
pub fn mask_tokens(ids: &[i64], attention: &[i64], c: &MaskingConfig, seed: u64) -> Result<(Vec<i64>, Vec<i64>)> {
    if !(c.probability > 0.0 && c.probability <= 1.0) || c.vocab == 0 || attention.len() != ids.len() {
        return Err(Error::Config(format!("masking needs a probability in (0, 1] (not {}), a vocabulary, and one mask value per id", c.probability)));
    }
    let mut rng = Rng::new(seed ^ 0x6D61_736B);
    let (mut out, mut labels) = (ids.to_vec(), vec![NOT_MASKED; ids.len()]);
    let eligible = |i: usize| attention[i] != 0 && !c.special_ids.contains(&ids[i]);
    let uniform = |rng: &mut Rng| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
    let mut chosen: Vec<usize> = (0..ids.len()).filter(|&i| eligible(i) && uniform(&mut rng) < c.probability).collect();
    if chosen.is_empty() {
        if let Some(i) = (0..ids.len()).find(|&i| eligible(i)) {
            chosen.push(i);
        }
    }
    for i in chosen {
        labels[i] = ids[i];
        let r = uniform(&mut rng);
        if r < 0.8 {
            out[i] = c.mask_id;
        } else if r < 0.9 {
            out[i] = (rng.next_u64() % c.vocab as u64) as i64;
        }
    }
    Ok((out, labels))
}

/// The frozen word-embedding table `E` `[vocab, hidden]` as f32 (borrowed unless it is stored
/// quantized).
pub(crate) fn output_embedding(g: &Graph) -> Result<std::borrow::Cow<'_, [f32]>> {
    let at = crate::peft::prompt::word_embedding(g).ok_or_else(|| Error::Config("masked-LM training needs the word-embedding lookup of `input_ids`".into()))?;
    let n = &g.nodes[at];
    let (Op::Embedding { dequant, .. }, Some(table)) = (&n.op, g.input_constant(n, 0)) else {
        return Err(Error::Config("masked-LM training needs a constant word-embedding table".into()));
    };
    match dequant {
        None => Ok(std::borrow::Cow::Borrowed(table.typed::<f32>("word embeddings")?)),
        Some(_) => {
            let vocab = table.shape().first().copied().unwrap_or(0);
            let all = Tensor::new(&[vocab], (0..vocab as i64).collect())?;
            Ok(std::borrow::Cow::Owned(crate::ops::gather::embedding(table, &all, *dequant)?.to_f32_vec()))
        }
    }
}

/// The graph's invertible adapter, if its delta has one.
fn invertible(g: &Graph) -> Option<(usize, &InvertibleAdapter)> {
    let i = crate::peft::madx::invertible_node(g)?;
    match &g.nodes[i].op {
        Op::Invertible(a) => Some((i, a)),
        _ => None,
    }
}

/// The masked positions' loss and what the backward needs, from hidden states `[rows, seq,
/// hidden]`.
struct Scored {
    loss: f32,
    count: usize,
    /// Per masked position, its flat position index.
    at: Vec<usize>,
    /// d loss / d hidden at the masked positions, `[count × hidden]`.
    dhidden: Vec<f32>,
    /// The inverse's share of the invertible adapter's gradients.
    inverse: Option<CouplingGrads>,
    /// d loss / d output bias.
    dbias: Vec<f32>,
}

fn score(g: &Graph, hidden: &[f32], width: usize, labels: &[i64], table: &[f32], bias: &[f32]) -> Result<Scored> {
    let vocab = bias.len();
    if width == 0 || table.len() != vocab * width || hidden.len() != labels.len() * width {
        return Err(Error::Config(format!("masked-LM: {} hidden values, {} labels, a {}-value table and a {vocab}-value bias do not fit", hidden.len(), labels.len(), table.len())));
    }
    let at: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] != NOT_MASKED).collect();
    if let Some(&i) = at.iter().find(|&&i| usize::try_from(labels[i]).map_or(true, |l| l >= vocab)) {
        return Err(Error::BadInput { name: "labels".into(), reason: format!("token {} is outside the {vocab}-token vocabulary", labels[i]) });
    }
    if at.is_empty() {
        return Err(Error::BadInput { name: "labels".into(), reason: "no masked token to predict".into() });
    }
    let rows: Vec<f32> = at.iter().flat_map(|&i| hidden[i * width..(i + 1) * width].iter().copied()).collect();
    let inv = invertible(g).map(|(_, a)| a);
    let x = match inv {
        Some(a) => a.inverse_rows(&rows),
        None => rows.clone(),
    };
    let n = at.len();
    let mut logits = Vec::with_capacity(n * vocab);
    for _ in 0..n {
        logits.extend_from_slice(bias);
    }
    matmul_f32_bt(&x, table, &mut logits, n, width, vocab, true);
    let targets: Vec<usize> = at.iter().map(|&i| labels[i] as usize).collect();
    let (loss, dlogits) = cross_entropy(&logits, &targets);
    let mut dbias = vec![0f32; vocab];
    for row in dlogits.chunks_exact(vocab) {
        dbias.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    let mut dx = vec![0f32; n * width];
    matmul_f32(&dlogits, table, &mut dx, n, vocab, width, false);
    let (dhidden, inverse) = match inv {
        Some(a) => {
            let (d, gr) = inverse_backward(a, &rows, &dx);
            (d, Some(gr))
        }
        None => (dx, None),
    };
    Ok(Scored { loss, count: n, at, dhidden, inverse, dbias })
}

/// The masked positions' mean cross-entropy and their count, without gradients.
pub(crate) fn evaluate(session: &Session, inputs: &[(&str, Tensor)], labels: &[i64], bias: &[f32]) -> Result<(f32, usize)> {
    let out = session.run(inputs)?;
    let hidden = out.0.first().map(|(_, t)| t).ok_or_else(|| Error::InvalidModel("no output".into()))?;
    let width = hidden.shape().last().copied().unwrap_or(0);
    let table = output_embedding(session.graph())?;
    let s = score(session.graph(), hidden.typed::<f32>("hidden state")?, width, labels, &table, bias)?;
    Ok((s.loss, s.count))
}

/// Loss and gradients for a masked batch: `labels` per position (`[rows, seq]`, flat;
/// [`NOT_MASKED`] where nothing is predicted), `bias` the output bias. The output bias's
/// gradient comes back in `head_bias`; the invertible adapter's (forward and inverse summed)
/// among the tape's.
pub fn step(session: &Session, inputs: &[(&str, Tensor)], labels: &[i64], bias: &[f32], trainables: &Trainables, checkpoint: Option<&super::checkpoint::Pieces>) -> Result<StepResult> {
    let rows = batch_rows(inputs)?;
    let g = session.graph();
    let out = *g.outputs.first().ok_or_else(|| Error::InvalidModel("no output".into()))?;
    let table = output_embedding(g)?;
    let (mut grads, s, usage) = super::checkpoint::forward_backward(session, inputs, trainables, checkpoint, |slots| {
        let hidden_t = slots[out].as_ref().ok_or_else(|| Error::InvalidModel("output not computed".into()))?;
        let width = match *hidden_t.shape() {
            [b, s, h] if b == rows && b * s == labels.len() => h,
            _ => return Err(Error::BadInput { name: "labels".into(), reason: format!("{} labels for hidden states {:?}", labels.len(), hidden_t.shape()) }),
        };
        let s = score(g, hidden_t.typed::<f32>("hidden state")?, width, labels, &table, bias)?;
        let mut seed = vec![0f32; hidden_t.len()];
        for (k, &i) in s.at.iter().enumerate() {
            seed[i * width..(i + 1) * width].copy_from_slice(&s.dhidden[k * width..(k + 1) * width]);
        }
        Ok(super::checkpoint::LossSeed { seed: vec![(out, seed)], extra: s })
    })?;
    if let (Some((i, _)), Some(inv)) = (invertible(g), &s.inverse) {
        if trainables.invertible.contains(&i) {
            match grads.invertible.get_mut(&i) {
                Some(acc) => acc.add(inv),
                None => {
                    grads.invertible.insert(i, inv.clone());
                }
            }
        }
    }
    Ok(StepResult { loss: s.loss, outputs: Vec::new(), count: s.count, grads, head_weight: Vec::new(), head_bias: s.dbias, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_follows_bert_and_repeats_with_its_seed() {
        let n = 20_000;
        let ids: Vec<i64> = (0..n as i64).map(|i| 10 + i % 50).collect();
        let mut attention = vec![1i64; n];
        attention[n - 100..].fill(0);
        let c = MaskingConfig { probability: 0.15, mask_id: 3, special_ids: vec![10], vocab: 60 };
        let (out, labels) = mask_tokens(&ids, &attention, &c, 7).unwrap();
        assert_eq!(mask_tokens(&ids, &attention, &c, 7).unwrap(), (out.clone(), labels.clone()));
        assert_ne!(mask_tokens(&ids, &attention, &c, 8).unwrap().1, labels);
        let chosen: Vec<usize> = (0..n).filter(|&i| labels[i] != NOT_MASKED).collect();
        assert!(chosen.iter().all(|&i| attention[i] == 1 && ids[i] != 10 && labels[i] == ids[i]));
        let eligible = (0..n).filter(|&i| attention[i] == 1 && ids[i] != 10).count() as f64;
        let share = chosen.len() as f64 / eligible;
        // Binomial(19 508, 0.15): standard deviation 0.0026, so ±0.01 is about 4σ.
        assert!((share - 0.15).abs() < 0.01, "chosen share {share}");
        let masked = chosen.iter().filter(|&&i| out[i] == 3).count() as f64 / chosen.len() as f64;
        let kept = chosen.iter().filter(|&&i| out[i] == ids[i]).count() as f64 / chosen.len() as f64;
        // 80% [MASK]; 10% kept plus the random draws that hit the same token (1/60 of 10%).
        assert!((masked - 0.8).abs() < 0.03 && (kept - 0.1).abs() < 0.03, "masked {masked}, kept {kept}");
        assert!((0..n).filter(|&i| labels[i] == NOT_MASKED).all(|i| out[i] == ids[i]));
    }
}
