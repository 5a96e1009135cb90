//! The Llama decoder (`LlamaForCausalLM`) as an ONNX graph: inputs `input_ids` and
//! `attention_mask` (int64 `[batch, seq]`), output `logits` `[batch, seq, vocab]`, the interface
//! of a `torch.onnx` export of the model without a cache.
//!
//! As in `transformers`: positions are 0..seq (left padding does not shift them), RMSNorm
//! computes `w · x / sqrt(mean(x²) + eps)`, rotary embeddings rotate halves
//! (`rotate_half`), grouped KV heads are repeated (`repeat_kv`), the mask is causal and
//! padding together, the MLP is `down(silu(gate(x)) · up(x))`, and the LM head may reuse the
//! token embeddings (`tie_word_embeddings`).

use super::bert::MASKED;
use super::builder::{attr_int, attr_ints, value_info, Builder, Dim};
use super::{LlamaConfig, Weights};
use crate::error::Result;
use crate::onnx::proto::ModelProto;
use crate::tensor::{DType, Tensor};

/// `inv_freq` of rotary embeddings with base `theta` over `head_dim`:
/// 1 / theta^(2i / head_dim), i < head_dim / 2, in f32 as `transformers` computes it.
pub(super) fn inv_freq(theta: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// Writes the graph of `cfg` from `w` into `b`.
pub(super) fn build(cfg: &LlamaConfig, w: &Weights<'_>, mut b: Builder) -> Result<ModelProto> {
    let (h, heads, kv_heads) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads);
    let head_dim = h / heads;
    let (vocab, eps) = (cfg.vocab_size, cfg.rms_norm_eps);

    let embed_w = w.get("model.embed_tokens.weight", &[vocab, h])?;
    let embed = b.init("model.embed_tokens.weight", embed_w);
    let mut x = b.node("model.embed_tokens", "Gather", &[&embed, "input_ids"], vec![]);

    // Positions 0..seq, shared by the rotary tables and the causal mask.
    let m = "model";
    let shape = b.node(m, "Shape", &["input_ids"], vec![]);
    let (zero, one) = (b.int_scalar(0), b.int_scalar(1));
    let seq = b.node(m, "Gather", &[&shape, &one], vec![attr_int("axis", 0)]);
    let positions = b.node(m, "Range", &[&zero, &seq, &one], vec![]);

    // cos and sin [seq, head_dim]: freqs = positions ⊗ inv_freq, emb = concat(freqs, freqs).
    let r = "model.rotary_emb";
    let inv = b.init("model.rotary_emb.inv_freq", &Tensor::new(&[head_dim / 2], inv_freq(cfg.rope_theta, head_dim))?);
    let pos_f = b.node(r, "Cast", &[&positions], vec![attr_int("to", i64::from(DType::F32.onnx_code()))]);
    let axis1 = b.ints(&[1]);
    let pos_f = b.node(r, "Unsqueeze", &[&pos_f, &axis1], vec![]);
    let freqs = b.node(r, "Mul", &[&pos_f, &inv], vec![]);
    let emb = b.node(r, "Concat", &[&freqs, &freqs], vec![attr_int("axis", -1)]);
    let cos = b.node(r, "Cos", &[&emb], vec![]);
    let sin = b.node(r, "Sin", &[&emb], vec![]);

    // The mask [batch, 1, seq, seq]: key j is seen from query i when j ≤ i and j is not padding.
    let axis0 = b.ints(&[0]);
    let keys = b.node(m, "Unsqueeze", &[&positions, &axis0], vec![]);
    let queries = b.node(m, "Unsqueeze", &[&positions, &axis1], vec![]);
    let causal = b.node(m, "LessOrEqual", &[&keys, &queries], vec![]);
    let axes12 = b.ints(&[1, 2]);
    let pad = b.node(m, "Unsqueeze", &["attention_mask", &axes12], vec![]);
    let pad = b.node(m, "Cast", &[&pad], vec![attr_int("to", i64::from(DType::Bool.onnx_code()))]);
    let seen = b.node(m, "And", &[&causal, &pad], vec![]);
    let (zero_f, masked) = (b.float_scalar(0.0), b.float_scalar(MASKED));
    let mask = b.node(m, "Where", &[&seen, &zero_f, &masked], vec![]);

    let q_heads = b.ints(&[0, 0, heads as i64, head_dim as i64]);
    let kv_shape = b.ints(&[0, 0, kv_heads as i64, head_dim as i64]);
    let merged = b.ints(&[0, 0, h as i64]);
    let scale = b.float_scalar((head_dim as f64).powf(-0.5) as f32);
    let half = b.ints(&[(head_dim / 2) as i64]);
    let (start, end, last, step) = (b.ints(&[0]), b.ints(&[i64::MAX]), b.ints(&[-1]), b.ints(&[1]));
    let rope = |b: &mut Builder, s: &str, t: &str| {
        // t·cos + rotate_half(t)·sin, rotate_half(t) = concat(−t[.., d/2..], t[.., ..d/2]).
        let upper = b.node(s, "Slice", &[t, &half, &end, &last, &step], vec![]);
        let lower = b.node(s, "Slice", &[t, &start, &half, &last, &step], vec![]);
        let neg = b.node(s, "Neg", &[&upper], vec![]);
        let rot = b.node(s, "Concat", &[&neg, &lower], vec![attr_int("axis", -1)]);
        let a = b.node(s, "Mul", &[t, &cos], vec![]);
        let c = b.node(s, "Mul", &[&rot, &sin], vec![]);
        b.node(s, "Add", &[&a, &c], vec![])
    };
    let groups = heads / kv_heads;
    let repeat = b.ints(&[1, 1, groups as i64, 1, 1]);
    let repeated = b.ints(&[0, heads as i64, -1, head_dim as i64]);
    let axis2 = b.ints(&[2]);
    let repeat_kv = |b: &mut Builder, s: &str, t: String| {
        if groups == 1 {
            return t;
        }
        let u = b.node(s, "Unsqueeze", &[&t, &axis2], vec![]);
        let e = b.node(s, "Expand", &[&u, &repeat], vec![]);
        b.node(s, "Reshape", &[&e, &repeated], vec![])
    };
    let lin = |b: &mut Builder, module: &str, x: &str, out: usize, inp: usize| -> Result<String> {
        let weight = w.get(&format!("{module}.weight"), &[out, inp])?;
        let bias = w.opt(&format!("{module}.bias"), &[out])?;
        b.linear(module, x, weight, bias)
    };

    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let s = format!("{p}.self_attn");
        let y = rms_norm(&mut b, w, &format!("{p}.input_layernorm"), &x, h, eps)?;
        let q = lin(&mut b, &format!("{s}.q_proj"), &y, heads * head_dim, h)?;
        let k = lin(&mut b, &format!("{s}.k_proj"), &y, kv_heads * head_dim, h)?;
        let v = lin(&mut b, &format!("{s}.v_proj"), &y, kv_heads * head_dim, h)?;
        let q = b.node(&s, "Reshape", &[&q, &q_heads], vec![]);
        let q = b.node(&s, "Transpose", &[&q], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let k = b.node(&s, "Reshape", &[&k, &kv_shape], vec![]);
        let k = b.node(&s, "Transpose", &[&k], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let v = b.node(&s, "Reshape", &[&v, &kv_shape], vec![]);
        let v = b.node(&s, "Transpose", &[&v], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let q = rope(&mut b, &s, &q);
        let k = rope(&mut b, &s, &k);
        let k = repeat_kv(&mut b, &s, k);
        let v = repeat_kv(&mut b, &s, v);
        let kt = b.node(&s, "Transpose", &[&k], vec![attr_ints("perm", &[0, 1, 3, 2])]);
        let ctx = b.attention(&s, &q, &kt, &v, &scale, &mask, &merged);
        let o = lin(&mut b, &format!("{s}.o_proj"), &ctx, h, heads * head_dim)?;
        x = b.node(&p, "Add", &[&x, &o], vec![]);

        let mlp = format!("{p}.mlp");
        let y = rms_norm(&mut b, w, &format!("{p}.post_attention_layernorm"), &x, h, eps)?;
        // In `transformers`' order: gate, its activation, then up.
        let gate = lin(&mut b, &format!("{mlp}.gate_proj"), &y, cfg.intermediate_size, h)?;
        let act = format!("{mlp}.act_fn");
        let sig = b.node(&act, "Sigmoid", &[&gate], vec![]);
        let gate = b.node(&act, "Mul", &[&gate, &sig], vec![]);
        let up = lin(&mut b, &format!("{mlp}.up_proj"), &y, cfg.intermediate_size, h)?;
        let y = b.node(&mlp, "Mul", &[&gate, &up], vec![]);
        let down = lin(&mut b, &format!("{mlp}.down_proj"), &y, h, cfg.intermediate_size)?;
        x = b.node(&p, "Add", &[&x, &down], vec![]);
    }
    let y = rms_norm(&mut b, w, "model.norm", &x, h, eps)?;
    let head = if cfg.tie_word_embeddings { embed_w } else { w.get("lm_head.weight", &[vocab, h])? };
    let logits = b.linear("lm_head", &y, head, None)?;
    let logits = b.rename_output(&logits, "logits")?;

    let ids = |name: &str| value_info(name, DType::I64, &[Dim::Named("batch"), Dim::Named("seq")]);
    let inputs = vec![ids("input_ids"), ids("attention_mask")];
    let outputs = vec![value_info(&logits, DType::F32, &[Dim::Named("batch"), Dim::Named("seq"), Dim::Fixed(vocab)])];
    Ok(b.finish(inputs, outputs, vec![("architecture".into(), "LlamaForCausalLM".into())]))
}

/// RMSNorm as `transformers` computes it: `w · (x · 1/sqrt(mean(x²) + eps))`.
fn rms_norm(b: &mut Builder, w: &Weights<'_>, module: &str, x: &str, h: usize, eps: f32) -> Result<String> {
    let weight = b.init(&format!("{module}.weight"), w.get(&format!("{module}.weight"), &[h])?);
    let (two, eps) = (b.float_scalar(2.0), b.float_scalar(eps));
    let sq = b.node(module, "Pow", &[x, &two], vec![]);
    // Opset 17 still takes ReduceMean's axes as an attribute.
    let var = b.node(module, "ReduceMean", &[&sq], vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)]);
    let var = b.node(module, "Add", &[&var, &eps], vec![]);
    let rms = b.node(module, "Sqrt", &[&var], vec![]);
    let inv = b.node(module, "Reciprocal", &[&rms], vec![]);
    let y = b.node(module, "Mul", &[x, &inv], vec![]);
    Ok(b.node(module, "Mul", &[&weight, &y], vec![]))
}
