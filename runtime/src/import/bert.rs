//! The BERT encoder (`BertModel`) as an ONNX graph: inputs `input_ids`, `attention_mask`,
//! `token_type_ids` (int64 `[batch, seq]`), output `last_hidden_state` `[batch, seq, hidden]`,
//! the interface of a `torch.onnx` export of `BertModel`.
//!
//! The ops are the ones the fusion passes know from the legacy exporter: `Gather` embeddings,
//! `LayerNormalization`, `MatMul` + bias `Add`, a per-head `Reshape`/`Transpose`, scaled
//! `MatMul`, additive mask, `Softmax`, and GELU's erf form.

use super::builder::{attr_float, attr_int, attr_ints, value_info, Builder, Dim};
use super::{BertConfig, Weights};
use crate::error::Result;
use crate::onnx::proto::ModelProto;
use crate::tensor::DType;

/// The additive mask value of a padded key: `torch.finfo(float32).min`, as `transformers` uses.
pub(super) const MASKED: f32 = f32::MIN;

/// Writes the graph of `cfg` from `w` into `b`.
pub(super) fn build(cfg: &BertConfig, w: &Weights<'_>, mut b: Builder) -> Result<ModelProto> {
    let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
    let head_dim = h / heads;
    let eps = cfg.layer_norm_eps;

    // Embeddings: word + token type + absolute position (0..seq), then LayerNorm.
    let e = "embeddings";
    let word = w.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
    let pos = w.get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
    let typ = w.get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
    let word = b.init("embeddings.word_embeddings.weight", word);
    let pos = b.init("embeddings.position_embeddings.weight", pos);
    let typ = b.init("embeddings.token_type_embeddings.weight", typ);
    let x_word = b.node("embeddings.word_embeddings", "Gather", &[&word, "input_ids"], vec![]);
    let x_typ = b.node("embeddings.token_type_embeddings", "Gather", &[&typ, "token_type_ids"], vec![]);
    let shape = b.node(e, "Shape", &["input_ids"], vec![]);
    let one = b.int_scalar(1);
    let seq = b.node(e, "Gather", &[&shape, &one], vec![attr_int("axis", 0)]);
    let zero = b.int_scalar(0);
    let positions = b.node(e, "Range", &[&zero, &seq, &one], vec![]);
    let axis0 = b.ints(&[0]);
    let positions = b.node(e, "Unsqueeze", &[&positions, &axis0], vec![]);
    let x_pos = b.node("embeddings.position_embeddings", "Gather", &[&pos, &positions], vec![]);
    let sum = b.node(e, "Add", &[&x_word, &x_typ], vec![]);
    let sum = b.node(e, "Add", &[&sum, &x_pos], vec![]);
    let mut x = layer_norm(&mut b, w, "embeddings.LayerNorm", &sum, h, eps)?;

    // The padding mask, added to every head's scores: 0 where attended, MASKED where padded.
    let m = "extended_attention_mask";
    let axes12 = b.ints(&[1, 2]);
    let mask = b.node(m, "Unsqueeze", &["attention_mask", &axes12], vec![]);
    let mask = b.node(m, "Cast", &[&mask], vec![attr_int("to", i64::from(DType::F32.onnx_code()))]);
    let one_f = b.float_scalar(1.0);
    let inverted = b.node(m, "Sub", &[&one_f, &mask], vec![]);
    let masked = b.float_scalar(MASKED);
    let mask = b.node(m, "Mul", &[&inverted, &masked], vec![]);

    let per_head = b.ints(&[0, 0, heads as i64, head_dim as i64]);
    let merged = b.ints(&[0, 0, h as i64]);
    let scale = b.float_scalar((head_dim as f64).powf(-0.5) as f32);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        let s = format!("{p}.attention.self");
        let lin = |b: &mut Builder, module: &str, x: &str, out: usize, inp: usize| -> Result<String> {
            let weight = w.get(&format!("{module}.weight"), &[out, inp])?;
            let bias = w.get(&format!("{module}.bias"), &[out])?;
            b.linear(module, x, weight, Some(bias))
        };
        let q = lin(&mut b, &format!("{s}.query"), &x, h, h)?;
        let k = lin(&mut b, &format!("{s}.key"), &x, h, h)?;
        let v = lin(&mut b, &format!("{s}.value"), &x, h, h)?;
        let q = b.node(&s, "Reshape", &[&q, &per_head], vec![]);
        let q = b.node(&s, "Transpose", &[&q], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let k = b.node(&s, "Reshape", &[&k, &per_head], vec![]);
        let kt = b.node(&s, "Transpose", &[&k], vec![attr_ints("perm", &[0, 2, 3, 1])]);
        let v = b.node(&s, "Reshape", &[&v, &per_head], vec![]);
        let v = b.node(&s, "Transpose", &[&v], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let ctx = b.attention(&s, &q, &kt, &v, &scale, &mask, &merged);

        let o = format!("{p}.attention.output");
        let y = lin(&mut b, &format!("{o}.dense"), &ctx, h, h)?;
        let y = b.node(&o, "Add", &[&y, &x], vec![]);
        let x1 = layer_norm(&mut b, w, &format!("{o}.LayerNorm"), &y, h, eps)?;

        let inter = lin(&mut b, &format!("{p}.intermediate.dense"), &x1, cfg.intermediate_size, h)?;
        let inter = gelu(&mut b, &format!("{p}.intermediate.intermediate_act_fn"), &inter);
        let o = format!("{p}.output");
        let y = lin(&mut b, &format!("{o}.dense"), &inter, h, cfg.intermediate_size)?;
        let y = b.node(&o, "Add", &[&y, &x1], vec![]);
        x = layer_norm(&mut b, w, &format!("{o}.LayerNorm"), &y, h, eps)?;
    }
    let out = b.rename_output(&x, "last_hidden_state")?;

    let ids = |name: &str| value_info(name, DType::I64, &[Dim::Named("batch"), Dim::Named("seq")]);
    let inputs = vec![ids("input_ids"), ids("attention_mask"), ids("token_type_ids")];
    let outputs = vec![value_info(&out, DType::F32, &[Dim::Named("batch"), Dim::Named("seq"), Dim::Fixed(h)])];
    Ok(b.finish(inputs, outputs, vec![("architecture".into(), "BertModel".into())]))
}

/// `LayerNormalization` over the last axis with `<module>.weight` and `<module>.bias`.
fn layer_norm(b: &mut Builder, w: &Weights<'_>, module: &str, x: &str, h: usize, eps: f32) -> Result<String> {
    let gamma = b.init(&format!("{module}.weight"), w.get(&format!("{module}.weight"), &[h])?);
    let beta = b.init(&format!("{module}.bias"), w.get(&format!("{module}.bias"), &[h])?);
    Ok(b.node(module, "LayerNormalization", &[x, &gamma, &beta], vec![attr_int("axis", -1), attr_float("epsilon", eps)]))
}

/// GELU, erf form: x · 0.5 · (1 + erf(x / √2)), written as the legacy exporter writes it.
fn gelu(b: &mut Builder, module: &str, x: &str) -> String {
    let sqrt2 = b.float_scalar(std::f32::consts::SQRT_2);
    let (one, half) = (b.float_scalar(1.0), b.float_scalar(0.5));
    let d = b.node(module, "Div", &[x, &sqrt2], vec![]);
    let e = b.node(module, "Erf", &[&d], vec![]);
    let e = b.node(module, "Add", &[&e, &one], vec![]);
    let y = b.node(module, "Mul", &[x, &e], vec![]);
    b.node(module, "Mul", &[&y, &half], vec![])
}
