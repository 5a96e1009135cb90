//! One forward and reverse pass over a session's graph, optionally checkpointed.
//!
//! Without checkpointing, the forward pass keeps what the reverse pass reads
//! ([`super::saved::saved_values`]) and the reverse pass runs over it. With checkpointing, the
//! graph is cut into pieces where the fewest values cross (in a transformer, between blocks,
//! where only the residual stream and the mask do); the forward pass keeps only the values that
//! cross a cut, plus the last piece's saved values. The reverse pass then walks the pieces last
//! to first, recomputing each piece's forward from the values at its start, running its reverse,
//! and dropping it. The recomputed values are the same bits as the first forward's (the kernels
//! are deterministic for a given thread count), so the gradients are identical; the price is
//! one more forward pass, and the memory is one piece's activations instead of all of them.

use std::ops::Range;

use super::saved::saved_values;
use super::tape::{Grads, Reverse, Trainables};
use crate::error::{Error, Result};
use crate::graph::{Graph, ValueId};
use crate::ops::Op;
use crate::session::Session;
use crate::tensor::Tensor;

/// Where a graph is cut for checkpointing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pieces {
    /// Consecutive node ranges covering the graph.
    pub ranges: Vec<Range<usize>>,
    /// `crossing[v]`: value `v` is computed (or fed) before some cut and read after it.
    pub crossing: Vec<bool>,
    /// How many of the last pieces keep their saved values through the forward pass, as a
    /// plain step does (at least 1, at most all); the pieces before them are recomputed
    /// during the backward pass. [`pieces`] sets 1: the least memory.
    pub kept: usize,
}

/// Hands the heap's free pages back to the operating system: glibc's `malloc_trim(0)`, which
/// releases free memory at the top of each arena and the whole free pages inside it. A step
/// allocates and frees about a hundred buffers of 1–6 MiB; glibc raises its mmap threshold
/// after the first such free, so later ones come from arenas where freed blocks stay resident
/// and fragment. On MiniLM that adds 40–60 MiB to a step's peak RSS. Trimming after each step
/// costs the next step about 14 k page faults (5–20% of the step here), so the trainer does it
/// only when the caller set a memory budget. Elsewhere than glibc (bionic, Apple's libc, musl)
/// this does nothing. Blocks kept by [`crate::alloc::Global`], where that is the allocator,
/// are freed first, so they are trimmed too.
pub fn release_freed_heap() {
    crate::alloc::release();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: `malloc_trim` only returns free heap memory to the OS; it reads no pointer
        // of ours, and glibc's allocator is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Cuts `g` after each normalization (LayerNorm, AddLayerNorm, RmsNorm): a transformer block
/// has two, and what crosses there is the residual stream plus the few values every block reads
/// (the mask, rotary tables). Any cut is correct; these keep the crossing values few.
pub fn pieces(g: &Graph) -> Pieces {
    let n = g.nodes.len();
    let producer = g.producers();
    let mut last_read = vec![None; g.values.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in node.inputs.iter().flatten() {
            last_read[*v] = Some(i);
        }
    }
    let alive = |v: ValueId| g.values[v].constant.is_none();
    let cuts: Vec<usize> = (0..n.saturating_sub(1))
        .filter(|&i| matches!(g.nodes[i].op, Op::LayerNorm { .. } | Op::AddLayerNorm { .. } | Op::RmsNorm { .. }))
        .map(|i| i + 1)
        .collect();
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for c in cuts {
        ranges.push(start..c);
        start = c;
    }
    ranges.push(start..n);
    let mut crossing = vec![false; g.values.len()];
    for r in &ranges[..ranges.len() - 1] {
        for v in 0..g.values.len() {
            let born = producer[v].map_or(0, |p| p + 1);
            if alive(v) && born <= r.end && last_read[v].is_some_and(|l| l >= r.end) {
                crossing[v] = true;
            }
        }
    }
    Pieces { ranges, crossing, kept: 1 }
}

/// What the loss made of the forward outputs: the seed gradient of the reverse pass and
/// anything else the caller wants back (the loss itself, its head's gradients, ...).
pub struct LossSeed<R> {
    /// d(loss)/d(value) to start the reverse pass from.
    pub seed: Vec<(ValueId, Vec<f32>)>,
    /// The caller's own results.
    pub extra: R,
}

/// Activation memory of one step, in bytes (elements × 4: every saved value is f32 or a
/// small integer tensor).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// The most forward values held at once.
    pub peak: usize,
    /// What the step would hold without checkpointing (equal to `peak` without it).
    pub full: usize,
}

fn kept_bytes(slots: &[Option<Tensor>]) -> usize {
    slots.iter().flatten().map(|t| t.len() * 4).sum()
}

/// Runs `session`'s graph forward on `inputs`, lets `loss` turn the outputs (read from the
/// slots by value id) into seed gradients, and runs the reverse pass for `t`. With
/// `checkpoint`, activations are recomputed piece by piece as described in the module docs.
/// Returns the gradients, the loss's extra results, and the step's activation memory.
pub fn forward_backward<R>(
    session: &Session,
    inputs: &[(&str, Tensor)],
    t: &Trainables,
    checkpoint: Option<&Pieces>,
    loss: impl FnOnce(&[Option<Tensor>]) -> Result<LossSeed<R>>,
) -> Result<(Grads, R, Usage)> {
    let g = session.graph();
    let saved = saved_values(g, t);
    let offload = session.offload().map(|o| &**o);
    // The device's copies of the last step's parameters: their tensors are gone by now.
    if let Some(o) = offload {
        o.release_unused();
    }
    // A soft prompt's positions are cut from the outputs the loss reads, and its seeds padded
    // back to the graph's length.
    let prompt = session.prompt_len();
    let rows = inputs.first().and_then(|(_, x)| x.shape().first().copied()).unwrap_or(0);
    let seq = inputs.first().and_then(|(_, x)| x.shape().get(1).copied()).unwrap_or(0);
    let loss = move |slots: &[Option<Tensor>]| -> Result<LossSeed<R>> {
        let mut s = if prompt > 0 { loss(&session.prompt_view(slots, inputs)?)? } else { loss(slots)? };
        if prompt > 0 {
            for (_, d) in &mut s.seed {
                *d = crate::peft::prompt::pad_grad(d, rows, prompt, seq);
            }
        }
        Ok(s)
    };
    let Some(p) = checkpoint else {
        let slots = session.run_saving(inputs, &saved)?;
        let peak = kept_bytes(&slots);
        let LossSeed { seed, extra } = loss(&slots)?;
        let mut r = Reverse::new(g, t).with_offload(offload);
        for (v, d) in seed {
            r.seed(v, d);
        }
        session.install(|| r.run(&slots, 0..g.nodes.len()))?;
        return Ok((r.finish(), extra, Usage { peak, full: peak }));
    };
    if p.crossing.len() != g.values.len() {
        return Err(Error::Config("checkpoint pieces were made for another graph".into()));
    }
    // The pieces from `tail` on keep their saved values; those before it are recomputed.
    let tail = p.ranges.len() - p.kept.clamp(1, p.ranges.len().max(1));
    let last = p.ranges.get(tail).map_or(0..g.nodes.len(), |r| r.start..g.nodes.len());
    let producer = g.producers();
    let in_range = |v: ValueId, r: &Range<usize>| producer[v].is_some_and(|i| r.contains(&i));
    // Forward: keep what crosses a cut, the outputs, and the kept pieces' saved values.
    // Graph inputs are kept too (token ids and masks: small) so the first piece can be rerun.
    let fed: Vec<bool> = {
        let mut f = vec![false; g.values.len()];
        g.inputs.iter().for_each(|i| f[i.value] = true);
        f
    };
    let keep: Vec<bool> = (0..g.values.len()).map(|v| fed[v] || p.crossing[v] || (saved[v] && in_range(v, &last))).collect();
    // A piece none of whose values leads to a trainable has no reverse work: it is not rerun.
    let reach = super::tape::reaching(g, t);
    let busy = |r: &Range<usize>| g.nodes[r.clone()].iter().any(|n| n.outputs.iter().any(|&o| reach[o]));
    let mut slots = session.run_saving(inputs, &keep)?;
    let mut peak = kept_bytes(&slots);
    let mut full = peak;
    let LossSeed { seed, extra } = loss(&slots)?;
    let mut r = Reverse::new(g, t).with_offload(offload);
    for (v, d) in seed {
        r.seed(v, d);
    }
    let resave: Vec<bool> = (0..g.values.len()).map(|v| fed[v] || saved[v] || p.crossing[v]).collect();
    for (k, range) in p.ranges.iter().enumerate().rev() {
        if !busy(range) {
            continue;
        }
        if k < tail {
            session.run_range(&mut slots, range.clone(), &resave)?;
            peak = peak.max(kept_bytes(&slots));
            full += slots.iter().enumerate().filter(|(v, s)| s.is_some() && saved[*v] && !p.crossing[*v] && in_range(*v, range)).map(|(_, s)| s.as_ref().map_or(0, |t| t.len() * 4)).sum::<usize>();
        }
        session.install(|| r.run(&slots, range.clone()))?;
        // This piece's values are no longer needed: the pieces after it are done.
        for (v, slot) in slots.iter_mut().enumerate() {
            if producer[v].is_some_and(|i| i >= range.start) {
                *slot = None;
            }
        }
    }
    Ok((r.finish(), extra, Usage { peak, full }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::{Base, LoadOptions};
    use crate::train::saved::tests::lora_session;

    fn fixture(name: &str) -> std::sync::Arc<Base> {
        let path = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        Base::load(path, LoadOptions::default()).expect("fixture loads")
    }

    #[test]
    fn the_tiny_bert_is_cut_between_its_blocks() {
        for name in ["tiny-bert.dynamo.onnx", "tiny-bert.legacy.onnx"] {
            let base = fixture(name);
            let g = base.graph();
            let p = pieces(g);
            // Two layers, two residual norms each: the cuts fall after norms, at least one
            // per block boundary, and the ranges tile the graph.
            assert!(p.ranges.len() >= 3, "{name}: {:?}", p.ranges);
            assert_eq!(p.ranges.first().map(|r| r.start), Some(0));
            assert_eq!(p.ranges.last().map(|r| r.end), Some(g.nodes.len()));
            assert!(p.ranges.windows(2).all(|w| w[0].end == w[1].start));
            for r in &p.ranges[..p.ranges.len() - 1] {
                let before = &g.nodes[r.end - 1].op;
                assert!(matches!(before, Op::AddLayerNorm { .. } | Op::LayerNorm { .. }), "{name}: cut after {}", before.name());
            }
        }
    }

    #[test]
    fn checkpointed_gradients_equal_the_plain_ones_bit_for_bit_with_less_memory() {
        let base = fixture("tiny-bert.dynamo.onnx");
        let s = lora_session(&base);
        let g = s.graph();
        let mut t = Trainables::default();
        for (i, n) in g.nodes.iter().enumerate() {
            if let Op::Linear(l) = &n.op {
                if l.lora.is_some() {
                    t.lora.insert(i);
                }
                t.linear_bias.insert(i);
            }
        }
        let (b, sq) = (3, 7);
        let ids: Vec<i64> = (0..(b * sq) as i64).map(|i| (i * 31 + 3) % 90 + 5).collect();
        let mut mask = vec![1i64; b * sq];
        mask[b * sq - 2..].fill(0);
        let inputs = [
            ("input_ids", Tensor::new(&[b, sq], ids).expect("shape")),
            ("attention_mask", Tensor::new(&[b, sq], mask).expect("shape")),
            ("token_type_ids", Tensor::new(&[b, sq], vec![0i64; b * sq]).expect("shape")),
        ];
        let out = g.outputs[0];
        let seed = |slots: &[Option<Tensor>]| -> Result<LossSeed<()>> {
            let n = slots[out].as_ref().map_or(0, |t| t.len());
            Ok(LossSeed { seed: vec![(out, (0..n).map(|i| ((i * 17 % 13) as f32 - 6.0) / 6.0).collect())], extra: () })
        };
        let p = pieces(g);
        let (plain, (), u0) = forward_backward(&s, &inputs, &t, None, seed).expect("plain step");
        let (ckpt, (), u1) = forward_backward(&s, &inputs, &t, Some(&p), seed).expect("checkpointed step");
        assert!(!plain.lora.is_empty() && plain.linear_bias.len() > 4);
        assert_eq!(plain.lora, ckpt.lora);
        assert_eq!(plain.linear_bias, ckpt.linear_bias);
        assert!(u1.peak < u0.peak, "checkpointed peak {} vs plain {}", u1.peak, u0.peak);
        // The estimate of a plain step's memory also counts the crossing values and the token
        // ids a checkpointed forward keeps: within a tenth, never under.
        assert!(u1.full >= u0.full && u1.full * 10 <= u0.full * 11, "estimate {} vs plain {}", u1.full, u0.full);
        // Keeping the last pieces whole and recomputing only the first: the same gradients,
        // and a peak that grows with the pieces kept. (Keeping all but the first can hold a
        // little more than a plain step: the crossing values stay too, and here the first
        // piece, the embeddings, saves nothing.)
        assert!(p.ranges.len() >= 4, "{} pieces", p.ranges.len());
        let mut last = u1.peak;
        for kept in 2..p.ranges.len() {
            let part = Pieces { kept, ..p.clone() };
            let (grads, (), u2) = forward_backward(&s, &inputs, &t, Some(&part), seed).expect("partly checkpointed step");
            assert_eq!(plain.lora, grads.lora, "{kept} pieces kept");
            assert_eq!(plain.linear_bias, grads.linear_bias, "{kept} pieces kept");
            assert!(u2.peak >= last, "{kept} kept: peak {} under {last}", u2.peak);
            if kept == 2 {
                assert!(u1.peak < u2.peak && u2.peak < u0.peak, "2 kept: peak {} not between {} and {}", u2.peak, u1.peak, u0.peak);
            }
            last = u2.peak;
        }
    }
}
