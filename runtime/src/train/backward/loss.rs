//! Training heads: pooling (masked mean, first token) and the losses (cross-entropy,
//! next-token cross-entropy, mean squared error).

/// Masked mean over positions: `pooled[b,h] = Σₛ m[b,s]·x[b,s,h] / max(Σₛ m[b,s], 1e-9)`
/// (sentence-transformers' pooling, clamp included), `hidden` `[batch, seq, d]`, `mask`
/// `[batch, seq]` of 0/1 weights, `pooled` `[batch, d]`. Sums in f64.
///
/// Panics if the lengths do not fit `batch`.
pub fn mean_pool(hidden: &[f32], mask: &[f32], batch: usize) -> Vec<f32> {
    let (seq, d) = pool_dims(hidden.len(), mask.len(), batch, "mean_pool");
    let mut out = vec![0f32; batch * d];
    for b in 0..batch {
        let m = &mask[b * seq..(b + 1) * seq];
        let denom = pool_denominator(m);
        for h in 0..d {
            let s: f64 = (0..seq).map(|s| f64::from(m[s]) * f64::from(hidden[(b * seq + s) * d + h])).sum();
            out[b * d + h] = (s / denom) as f32;
        }
    }
    out
}

fn pool_dims(hidden: usize, mask: usize, batch: usize, what: &str) -> (usize, usize) {
    assert!(batch > 0 && mask.is_multiple_of(batch), "{what}: mask is not {batch} rows");
    let seq = mask / batch;
    assert!(seq > 0 && hidden.is_multiple_of(batch * seq), "{what}: hidden is not [{batch}, {seq}, d]");
    (seq, hidden / (batch * seq))
}

fn pool_denominator(m: &[f32]) -> f64 {
    m.iter().map(|&v| f64::from(v)).sum::<f64>().max(1e-9)
}

/// Gradient of [`mean_pool`] with respect to the hidden states.
///
/// Pooling is linear in x: `∂pooled[b,h]/∂x[b,s,h] = m[b,s] / max(Σₛ m[b,s], 1e-9)`, so
/// `dx[b,s,h] = m[b,s]·dpooled[b,h] / max(Σₛ m[b,s], 1e-9)`; masked positions get zero.
/// The mask is an input, not a parameter, and gets no gradient. Returns `[batch, seq, d]`.
pub fn mean_pool_backward(mask: &[f32], batch: usize, dpooled: &[f32]) -> Vec<f32> {
    assert!(batch > 0 && mask.len().is_multiple_of(batch) && dpooled.len().is_multiple_of(batch), "mean_pool_backward: sizes do not fit batch {batch}");
    let (seq, d) = (mask.len() / batch, dpooled.len() / batch);
    let mut dx = vec![0f32; batch * seq * d];
    for b in 0..batch {
        let m = &mask[b * seq..(b + 1) * seq];
        let denom = pool_denominator(m);
        for s in 0..seq {
            let w = f64::from(m[s]) / denom;
            for h in 0..d {
                dx[(b * seq + s) * d + h] = (w * f64::from(dpooled[b * d + h])) as f32;
            }
        }
    }
    dx
}

/// The first position's hidden state per row (BERT's `[CLS]` token): `pooled[b,h] = x[b,0,h]`,
/// `hidden` `[batch, seq, d]`, `pooled` `[batch, d]`.
///
/// Panics if `hidden` is not `batch × seq` rows.
pub fn cls_pool(hidden: &[f32], batch: usize, seq: usize) -> Vec<f32> {
    assert!(batch > 0 && seq > 0 && hidden.len().is_multiple_of(batch * seq), "cls_pool: hidden is not [{batch}, {seq}, d]");
    let d = hidden.len() / (batch * seq);
    hidden.chunks_exact(seq * d).flat_map(|row| row[..d].iter().copied()).collect()
}

/// Gradient of [`cls_pool`]: `dx[b,0,h] = dpooled[b,h]`, zero at every other position.
/// Returns `[batch, seq, d]`.
pub fn cls_pool_backward(dpooled: &[f32], batch: usize, seq: usize) -> Vec<f32> {
    assert!(batch > 0 && dpooled.len().is_multiple_of(batch), "cls_pool_backward: dpooled is not {batch} rows");
    let d = dpooled.len() / batch;
    let mut dx = vec![0f32; batch * seq * d];
    for (b, row) in dpooled.chunks_exact(d).enumerate() {
        dx[b * seq * d..b * seq * d + d].copy_from_slice(row);
    }
    dx
}

/// The positions a causal LM is scored on: `(b·seq + t, ids[b, t+1])` for every `t` where
/// `mask[b, t]` and `mask[b, t+1]` are both non-zero. Padding on either side, and a row's last
/// token (it has no next one), count for nothing.
fn next_token_positions(ids: &[i64], mask: &[f32], batch: usize) -> Vec<(usize, i64)> {
    assert!(batch > 0 && ids.len() == mask.len() && ids.len().is_multiple_of(batch), "next-token loss: ids and mask are not the same [{batch}, seq]");
    let seq = ids.len() / batch;
    let mut out = Vec::new();
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let (p, q) = (b * seq + t, b * seq + t + 1);
            if mask[p] != 0.0 && mask[q] != 0.0 {
                out.push((p, ids[q]));
            }
        }
    }
    out
}

/// `(log Σ exp z, z[y])` in f64, shifted by the maximum so large logits do not overflow.
fn log_sum_exp_and_target(z: &[f32], y: i64) -> (f64, f64) {
    let y = usize::try_from(y).ok().filter(|&y| y < z.len());
    let y = y.unwrap_or_else(|| panic!("next-token loss: a target id is outside the {} logits", z.len()));
    let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let sum: f64 = z.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    (max + sum.ln(), f64::from(z[y]))
}

/// Next-token cross-entropy of a causal LM: `logits` `[batch, seq, vocab]`, `ids` and `mask`
/// `[batch, seq]`. Position `t` predicts `ids[b, t+1]` and counts when `mask[b, t]` and
/// `mask[b, t+1]` are both non-zero; with `N` counted positions,
/// `L = (1/N)·Σ −log softmax(z_{b,t})[ids[b, t+1]]`.
///
/// Returns `(L, dlogits, N)`, or `None` when no position counts. `∂L/∂z_{b,t,v} =
/// (softmax(z_{b,t})_v − [v = ids[b,t+1]]) / N` at counted positions and exactly zero elsewhere,
/// so masked positions contribute nothing. Sums in f64, as [`cross_entropy`].
///
/// Panics if the lengths do not fit `batch` or a counted target is not below `vocab`.
pub fn next_token_cross_entropy(logits: &[f32], ids: &[i64], mask: &[f32], batch: usize) -> Option<(f32, Vec<f32>, usize)> {
    let at = next_token_positions(ids, mask, batch);
    if at.is_empty() {
        return None;
    }
    assert!(logits.len().is_multiple_of(ids.len()), "next_token_cross_entropy: logits are not [{batch}, seq, vocab]");
    let vocab = logits.len() / ids.len();
    let n = at.len() as f64;
    let mut dz = vec![0f32; logits.len()];
    let mut loss = 0f64;
    for &(p, y) in &at {
        let z = &logits[p * vocab..(p + 1) * vocab];
        let (lse, zy) = log_sum_exp_and_target(z, y);
        loss += lse - zy;
        for (v, (g, &zv)) in dz[p * vocab..(p + 1) * vocab].iter_mut().zip(z).enumerate() {
            let onehot = if v as i64 == y { 1.0 } else { 0.0 };
            *g = (((f64::from(zv) - lse).exp() - onehot) / n) as f32;
        }
    }
    Some(((loss / n) as f32, dz, at.len()))
}

/// The summed next-token negative log-likelihood and the number of counted positions, for
/// evaluation: what [`next_token_cross_entropy`] averages, without its gradient.
pub fn next_token_nll(logits: &[f32], ids: &[i64], mask: &[f32], batch: usize) -> (f64, usize) {
    let at = next_token_positions(ids, mask, batch);
    if at.is_empty() {
        return (0.0, 0);
    }
    assert!(logits.len().is_multiple_of(ids.len()), "next_token_nll: logits are not [{batch}, seq, vocab]");
    let vocab = logits.len() / ids.len();
    let nll = at
        .iter()
        .map(|&(p, y)| {
            let (lse, zy) = log_sum_exp_and_target(&logits[p * vocab..(p + 1) * vocab], y);
            lse - zy
        })
        .sum();
    (nll, at.len())
}

/// Softmax cross-entropy of `logits` `[batch, classes]` against class indices, averaged over
/// the batch: `L = −(1/B)·Σ_b log softmax(z_b)[y_b]`. Returns `(L, dlogits)`.
///
/// `∂L/∂z_{b,c} = (softmax(z_b)_c − [c = y_b]) / B`. Log-sum-exp and softmax in f64, shifted by
/// the row maximum so large logits do not overflow.
///
/// Panics if `logits` is not `labels.len()` rows or a label is out of range.
pub fn cross_entropy(logits: &[f32], labels: &[usize]) -> (f32, Vec<f32>) {
    let batch = labels.len();
    assert!(batch > 0 && logits.len().is_multiple_of(batch), "cross_entropy: logits are not {batch} rows");
    let classes = logits.len() / batch;
    let mut dz = vec![0f32; logits.len()];
    let mut loss = 0f64;
    for ((z, g), &y) in logits.chunks_exact(classes).zip(dz.chunks_exact_mut(classes)).zip(labels) {
        assert!(y < classes, "cross_entropy: label {y} of {classes} classes");
        let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let sum: f64 = z.iter().map(|&v| (f64::from(v) - max).exp()).sum();
        let lse = max + sum.ln();
        loss += lse - f64::from(z[y]);
        for (c, (g, &v)) in g.iter_mut().zip(z).enumerate() {
            let p = (f64::from(v) - lse).exp();
            *g = ((p - if c == y { 1.0 } else { 0.0 }) / batch as f64) as f32;
        }
    }
    ((loss / batch as f64) as f32, dz)
}

/// Mean squared error over all elements: `L = (1/N)·Σ (p − t)²`. Returns `(L, dpred)` with
/// `∂L/∂p = 2(p − t)/N`. The sum is in f64.
///
/// Panics if `pred` and `target` differ in length or are empty.
pub fn mse(pred: &[f32], target: &[f32]) -> (f32, Vec<f32>) {
    assert!(!pred.is_empty() && pred.len() == target.len(), "mse: pred and target differ in length or are empty");
    let n = pred.len() as f64;
    let loss: f64 = pred.iter().zip(target).map(|(&p, &t)| (f64::from(p) - f64::from(t)).powi(2)).sum::<f64>() / n;
    let dp = pred.iter().zip(target).map(|(&p, &t)| (2.0 * (f64::from(p) - f64::from(t)) / n) as f32).collect();
    (loss as f32, dp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backward::gradcheck::{check, dot, Rng};

    #[test]
    fn mean_pool_gradient_matches_finite_differences_and_skips_masked_positions() {
        let (batch, seq, d) = (2, 5, 3);
        let mask = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let mut rng = Rng::new(9);
        let x = rng.f32s(batch * seq * d, -1.0, 1.0);
        let dp = rng.f32s(batch * d, -1.0, 1.0);
        let dx = mean_pool_backward(&mask, batch, &dp);
        // Linear in x: no truncation error, so a large step; f64 sums → rounding ~1e-7/2h.
        check("pool dx", &x, &dx, 0.25, 1e-5, |x| dot(&dp, &mean_pool(x, &mask, batch)));
        assert_eq!(dx[3 * d], 0.0, "masked position");
        assert!((dx[0] - dp[0] / 3.0).abs() < 1e-7);
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences_of_its_loss() {
        let (batch, classes) = (3, 5);
        let mut rng = Rng::new(10);
        let z = rng.f32s(batch * classes, -3.0, 3.0);
        let labels = [4, 0, 2];
        let (_, dz) = cross_entropy(&z, &labels);
        // The loss is computed in f64 but its result is rounded to f32 (~6e-8 relative of
        // L ≈ 2), /2h with h = 1e-2 → 1e-5; truncation O(h²) ≈ 1e-5 → tol 1e-3.
        check("dlogits", &z, &dz, 1e-2, 1e-3, |z| f64::from(cross_entropy(z, &labels).0));
        // Each row of dlogits sums to zero (softmax sums to one, one-hot to one).
        for row in dz.chunks(classes) {
            assert!(row.iter().sum::<f32>().abs() < 1e-7);
        }
        // Uniform logits over 5 classes: L = ln 5, whatever the labels.
        let (l, _) = cross_entropy(&[7.0; 10], &[1, 3]);
        assert!((l - 5f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn cls_pool_gradient_matches_finite_differences() {
        let (batch, seq, d) = (3, 4, 5);
        let mut rng = Rng::new(12);
        let x = rng.f32s(batch * seq * d, -1.0, 1.0);
        let dp = rng.f32s(batch * d, -1.0, 1.0);
        let dx = cls_pool_backward(&dp, batch, seq);
        // A selection: linear, exact in f32, so any step works; tol covers only the f64 sum.
        check("cls dx", &x, &dx, 0.25, 1e-6, |x| dot(&dp, &cls_pool(x, batch, seq)));
        assert_eq!(&cls_pool(&x, batch, seq)[d..2 * d], &x[seq * d..seq * d + d], "row 1 takes its position 0");
        assert!(dx[d..seq * d].iter().all(|&v| v == 0.0), "positions after the first get nothing");
    }

    #[test]
    fn next_token_gradient_matches_finite_differences_and_skips_padding() {
        // Row 0 is left-padded (two pads), row 1 right-padded (one pad): counted positions are
        // row 0's t = 2, 3 and row 1's t = 0, 1, 2.
        let (batch, seq, vocab) = (2, 5, 4);
        let mask = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let ids = [3, 3, 1, 0, 2, 2, 1, 3, 0, 3];
        let mut rng = Rng::new(13);
        let z = rng.f32s(batch * seq * vocab, -2.0, 2.0);
        let (loss, dz, n) = next_token_cross_entropy(&z, &ids, &mask, batch).unwrap();
        assert_eq!(n, 5);
        // As in cross_entropy: the f32 loss's rounding (~1e-7) / 2h plus O(h²) truncation.
        check("dlogits", &z, &dz, 1e-2, 1e-3, |z| f64::from(next_token_cross_entropy(z, &ids, &mask, batch).unwrap().0));
        // Positions that do not count have exactly zero gradient: a pad, the position before a
        // pad, and each row's last position.
        for p in [0, 1, 4, 8, 9] {
            assert!(dz[p * vocab..(p + 1) * vocab].iter().all(|&g| g == 0.0), "position {p}");
        }
        // The same mean the classification loss gives over the counted rows.
        let rows: Vec<f32> = [2usize, 3, 5, 6, 7].iter().flat_map(|&p| z[p * vocab..(p + 1) * vocab].to_vec()).collect();
        let (want, _) = cross_entropy(&rows, &[0, 2, 1, 3, 0]);
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        let (nll, count) = next_token_nll(&z, &ids, &mask, batch);
        assert_eq!(count, 5);
        assert!((nll / 5.0 - f64::from(loss)).abs() < 1e-6);
        // Nothing to predict: no loss rather than a division by zero.
        assert!(next_token_cross_entropy(&z[..vocab * 2], &[1, 2], &[1.0, 0.0], 1).is_none());
    }

    #[test]
    fn mse_gradient_matches_finite_differences_of_its_loss() {
        let mut rng = Rng::new(11);
        let p = rng.f32s(7, -1.0, 1.0);
        let t = rng.f32s(7, -1.0, 1.0);
        let (l, dp) = mse(&p, &t);
        // Quadratic: central differences are exact up to rounding of the f32 loss /2h.
        check("dpred", &p, &dp, 0.1, 1e-4, |p| f64::from(mse(p, &t).0));
        assert_eq!(mse(&[1.0, 3.0], &[0.0, 1.0]).0, 2.5);
        assert!(l > 0.0);
    }
}
