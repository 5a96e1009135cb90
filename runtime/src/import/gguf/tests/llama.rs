//! The Llama mapping and the tokenizer on a tiny Llama written as llama.cpp's converter writes
//! one: Hugging Face weights, Q and K rows permuted with the converter's `permute`, shapes
//! listed innermost first.

use std::collections::BTreeMap;

use super::{Gguf, TensorSpec};
use crate::error::Error;
use crate::import::gguf::{llama::unpermute_rows, read_bytes, Array, GgmlType, GgufError, Value};
use crate::import::{Architecture, ImportError, LlamaConfig};

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const FFN: usize = 12;
const LAYERS: usize = 2;
const TOKENS: [&str; 10] = ["<|endoftext|>", "<|im_start|>", "a", "b", "Ġ", "ab", "Ġa", "Ġab", "1", "2"];

/// `convert_hf_to_gguf.py`'s `permute`, spelled as its numpy:
/// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
fn permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let half = rows / n_head / 2;
    let mut out = Vec::with_capacity(w.len());
    // Output axes (h, i, j) read input axes (h, j, i).
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let row = (h * 2 + j) * half + i;
                out.extend_from_slice(&w[row * cols..(row + 1) * cols]);
            }
        }
    }
    out
}

/// The Hugging Face weights (PyTorch shape, values) of the tiny Llama, distinct within each
/// tensor (13 is odd, so `e * 13 % 256` repeats only after 256 elements).
pub fn hf_weights() -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let kv = KV_HEADS * HIDDEN / HEADS;
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![TOKENS.len(), HIDDEN]), ("model.norm.weight".into(), vec![HIDDEN])];
    for l in 0..LAYERS {
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.k_proj.weight", vec![kv, HIDDEN]),
            ("self_attn.v_proj.weight", vec![kv, HIDDEN]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HIDDEN]),
            ("mlp.gate_proj.weight", vec![FFN, HIDDEN]),
            ("mlp.up_proj.weight", vec![FFN, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, FFN]),
            ("input_layernorm.weight", vec![HIDDEN]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
        ] {
            shapes.push((format!("model.layers.{l}.{n}"), s));
        }
    }
    shapes
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            // Exact in f16 too (multiples of 1/64 below 16), so the norms can be written as F16.
            let values = (0..n).map(|e| ((k * 97 + e * 13) % 256) as f32 / 64.0 - 2.0).collect();
            (name, (shape, values))
        })
        .collect()
}

fn gguf_name(hf: &str) -> String {
    let table = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("post_attention_layernorm", "ffn_norm"),
        ("input_layernorm", "attn_norm"),
        ("model.layers.", "blk."),
    ];
    table.iter().fold(hf.to_string(), |s, (a, b)| s.replace(a, b))
}

/// The tensor as the converter writes it: Q/K permuted, dims reversed, norms as F16.
fn spec(hf: &str, shape: &[usize], values: &[f32]) -> TensorSpec {
    let values = if hf.contains("q_proj") {
        permute(values, shape[0], shape[1], HEADS)
    } else if hf.contains("k_proj") {
        permute(values, shape[0], shape[1], KV_HEADS)
    } else {
        values.to_vec()
    };
    let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
    if hf.contains("norm") {
        let bytes = values.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect();
        TensorSpec::raw(&gguf_name(hf), &dims, GgmlType::F16, bytes)
    } else {
        TensorSpec::f32(&gguf_name(hf), &dims, &values)
    }
}

pub fn tiny_llama() -> Gguf {
    let mut g = Gguf::default()
        .with("general.architecture", Value::String("llama".into()))
        .with("general.name", Value::String("tiny".into()))
        .with("llama.block_count", Value::U32(LAYERS as u32))
        .with("llama.context_length", Value::U32(64))
        .with("llama.embedding_length", Value::U32(HIDDEN as u32))
        .with("llama.feed_forward_length", Value::U32(FFN as u32))
        .with("llama.attention.head_count", Value::U32(HEADS as u32))
        .with("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32))
        .with("llama.rope.freq_base", Value::F32(100_000.0))
        .with("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .with("llama.rope.dimension_count", Value::U32((HIDDEN / HEADS) as u32))
        .with("tokenizer.ggml.model", Value::String("gpt2".into()))
        .with("tokenizer.ggml.pre", Value::String("smollm".into()))
        .with("tokenizer.ggml.tokens", Value::Array(Array::String(TOKENS.iter().map(|t| t.to_string()).collect())))
        .with("tokenizer.ggml.token_type", Value::Array(Array::I32(vec![3, 3, 1, 1, 1, 1, 1, 1, 1, 1])))
        .with("tokenizer.ggml.merges", Value::Array(Array::String(vec!["a b".into(), "Ġ a".into(), "Ġa b".into()])))
        .with("tokenizer.ggml.bos_token_id", Value::U32(1))
        .with("tokenizer.ggml.eos_token_id", Value::U32(0))
        .with("tokenizer.ggml.unknown_token_id", Value::U32(0))
        .with("tokenizer.ggml.padding_token_id", Value::U32(0))
        .with("tokenizer.ggml.add_bos_token", Value::Bool(false));
    for (hf, (shape, values)) in hf_weights() {
        g.tensors.push(spec(&hf, &shape, &values));
    }
    g
}

fn set(mut g: Gguf, key: &str, v: Value) -> Gguf {
    g.kv.retain(|(k, _)| k != key);
    g.kv.push((key.into(), v));
    g
}

fn unset(mut g: Gguf, key: &str) -> Gguf {
    g.kv.retain(|(k, _)| k != key);
    g
}

fn gguf_err(g: &Gguf) -> GgufError {
    match read_bytes(&g.bytes()) {
        Err(Error::Import(ImportError::Gguf(e))) => e,
        other => panic!("expected a GGUF error, got {other:?}"),
    }
}

fn import_err(g: &Gguf) -> ImportError {
    match read_bytes(&g.bytes()) {
        Err(Error::Import(e)) => e,
        other => panic!("expected an import error, got {other:?}"),
    }
}

#[test]
fn unpermute_undoes_the_converters_permute() {
    // One head of size 4: the converter writes HF rows 0, 2, 1, 3.
    let hf = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5];
    let gguf = [0.0, 0.5, 2.0, 2.5, 1.0, 1.5, 3.0, 3.5];
    assert_eq!(permute(&hf, 4, 2, 1), gguf);
    assert_eq!(unpermute_rows(&gguf, 4, 2, 1), hf);
    let w: Vec<f32> = (0..48).map(|v| v as f32).collect();
    for heads in [1, 2, 3] {
        assert_eq!(unpermute_rows(&permute(&w, 12, 4, heads), 12, 4, heads), w, "{heads} heads");
    }
}

#[test]
fn a_tiny_llama_imports_under_hugging_face_names() {
    let import = read_bytes(&tiny_llama().bytes()).unwrap();
    let Architecture::Llama(c) = &import.checkpoint.arch else { panic!("not a Llama") };
    assert_eq!(
        *c,
        LlamaConfig {
            vocab_size: TOKENS.len(),
            hidden_size: HIDDEN,
            num_hidden_layers: LAYERS,
            num_attention_heads: HEADS,
            num_key_value_heads: KV_HEADS,
            intermediate_size: FFN,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            tie_word_embeddings: true,
        }
    );
    let want = hf_weights();
    let got = &import.checkpoint.tensors;
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (name, (shape, values)) in &want {
        assert_eq!(got[name].shape(), shape.as_slice(), "{name}");
        assert_eq!(got[name].as_slice::<f32>().unwrap(), values.as_slice(), "{name}");
    }
}

#[test]
fn an_output_tensor_is_an_untied_lm_head() {
    let head: Vec<f32> = (0..TOKENS.len() * HIDDEN).map(|v| v as f32).collect();
    let g = tiny_llama().tensor(TensorSpec::f32("output.weight", &[HIDDEN as u64, TOKENS.len() as u64], &head));
    let import = read_bytes(&g.bytes()).unwrap();
    let Architecture::Llama(c) = &import.checkpoint.arch else { panic!("not a Llama") };
    assert!(!c.tie_word_embeddings);
    assert_eq!(import.checkpoint.tensors["lm_head.weight"].shape(), [TOKENS.len(), HIDDEN]);
    assert_eq!(import.checkpoint.tensors["lm_head.weight"].as_slice::<f32>().unwrap(), head.as_slice());
}

#[test]
fn other_architectures_are_refused() {
    let g = set(tiny_llama(), "general.architecture", Value::String("qwen2".into()));
    assert_eq!(gguf_err(&g), GgufError::UnsupportedArchitecture { architecture: "qwen2".into() });
}

#[test]
fn missing_unknown_and_misshapen_tensors() {
    let mut g = tiny_llama();
    g.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    assert!(matches!(import_err(&g), ImportError::MissingTensor(n) if n == "blk.1.ffn_up.weight"));

    for name in ["blk.0.attn_q.bias", "blk.2.attn_norm.weight", "blk.01.attn_norm.weight", "rope_freqs.weight", "blk.99999999999999999999.attn_norm.weight"] {
        let g = tiny_llama().tensor(TensorSpec::f32(name, &[HIDDEN as u64], &[0.0; HIDDEN]));
        assert_eq!(gguf_err(&g), GgufError::UnmappedTensor { name: name.into() });
    }

    let mut g = tiny_llama();
    let t = g.tensors.iter_mut().find(|t| t.name == "blk.0.attn_k.weight").unwrap();
    t.dims.reverse();
    assert!(matches!(import_err(&g), ImportError::TensorShape { name, got, expected } if name == "blk.0.attn_k.weight" && got == [8, 4] && expected == [4, 8]));
}

#[test]
fn bad_hyper_parameters() {
    let g = set(tiny_llama(), "llama.attention.head_count", Value::U32(3));
    assert!(matches!(gguf_err(&g), GgufError::BadConfig { key, .. } if key == "llama.attention.head_count"));
    let g = set(tiny_llama(), "llama.attention.head_count_kv", Value::U32(0));
    assert!(matches!(gguf_err(&g), GgufError::BadConfig { key, .. } if key == "llama.attention.head_count_kv"));
    let g = set(tiny_llama(), "llama.rope.dimension_count", Value::U32(2));
    assert!(matches!(gguf_err(&g), GgufError::BadConfig { key, .. } if key == "llama.rope.dimension_count"));
    let g = set(tiny_llama(), "llama.block_count", Value::String("2".into()));
    assert_eq!(gguf_err(&g), GgufError::MetadataType { key: "llama.block_count".into(), expected: "a non-negative integer", found: "string" });
    let g = set(tiny_llama(), "llama.block_count", Value::I32(-2));
    assert_eq!(gguf_err(&g), GgufError::MetadataType { key: "llama.block_count".into(), expected: "a non-negative integer", found: "i32" });
    let g = unset(tiny_llama(), "llama.feed_forward_length");
    assert_eq!(gguf_err(&g), GgufError::MissingKey { key: "llama.feed_forward_length".into() });
    let g = set(tiny_llama(), "llama.attention.layer_norm_rms_epsilon", Value::F32(f32::NAN));
    assert!(matches!(gguf_err(&g), GgufError::BadConfig { key, .. } if key == "llama.attention.layer_norm_rms_epsilon"));
    // A huge block count costs nothing: the first missing block is reported.
    let g = set(tiny_llama(), "llama.block_count", Value::U32(u32::MAX));
    assert!(matches!(import_err(&g), ImportError::MissingTensor(n) if n == "blk.2.attn_q.weight"));
    // freq_base defaults to 10000, and integers of any width read.
    let g = set(unset(tiny_llama(), "llama.rope.freq_base"), "llama.block_count", Value::U64(LAYERS as u64));
    let Architecture::Llama(c) = read_bytes(&g.bytes()).unwrap().checkpoint.arch else { panic!("not a Llama") };
    assert_eq!((c.rope_theta, c.num_hidden_layers), (10_000.0, LAYERS));
}

#[test]
fn the_tokenizer_json_carries_vocab_merges_and_control_tokens() {
    let json = read_bytes(&tiny_llama().bytes()).unwrap().tokenizer_json.expect("a tokenizer");
    let t: serde_json::Value = serde_json::from_str(&json).unwrap();
    let model = &t["model"];
    assert_eq!(model["type"], "BPE");
    assert_eq!(model["vocab"].as_object().unwrap().len(), TOKENS.len());
    for (i, tok) in TOKENS.iter().enumerate() {
        assert_eq!(model["vocab"][tok], i, "{tok}");
    }
    assert_eq!(model["merges"], serde_json::json!([["a", "b"], ["Ġ", "a"], ["Ġa", "b"]]));
    assert_eq!(model["unk_token"], "<|endoftext|>");
    let added = t["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 2);
    assert_eq!((added[1]["id"].as_u64(), added[1]["content"].as_str(), added[1]["special"].as_bool()), (Some(1), Some("<|im_start|>"), Some(true)));
    // `smollm` splits digits one by one before GPT-2's regex, as llama.cpp does.
    assert_eq!(t["pre_tokenizer"]["pretokenizers"][0], serde_json::json!({"type": "Digits", "individual_digits": true}));
    assert_eq!(t["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
    assert_eq!(t["post_processor"]["type"], "ByteLevel");

    // add_bos_token wraps the sequence in a template that adds BOS.
    let g = set(tiny_llama(), "tokenizer.ggml.add_bos_token", Value::Bool(true));
    let t: serde_json::Value = serde_json::from_str(&read_bytes(&g.bytes()).unwrap().tokenizer_json.unwrap()).unwrap();
    let template = &t["post_processor"]["processors"][1];
    assert_eq!(template["single"][0], serde_json::json!({"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}));
    assert_eq!(template["special_tokens"]["<|im_start|>"]["ids"], serde_json::json!([1]));

    let g = unset(unset(unset(tiny_llama(), "tokenizer.ggml.model"), "tokenizer.ggml.merges"), "tokenizer.ggml.pre");
    assert_eq!(read_bytes(&g.bytes()).unwrap().tokenizer_json, None);
}

#[test]
fn bad_or_unsupported_tokenizers() {
    let g = set(tiny_llama(), "tokenizer.ggml.model", Value::String("llama".into()));
    assert_eq!(gguf_err(&g), GgufError::UnsupportedTokenizer { model: "llama".into(), pre: "smollm".into() });
    let g = set(tiny_llama(), "tokenizer.ggml.pre", Value::String("qwen2".into()));
    assert_eq!(gguf_err(&g), GgufError::UnsupportedTokenizer { model: "gpt2".into(), pre: "qwen2".into() });
    for merges in [vec!["ab"], vec!["a b c"], vec!["a 3"], vec!["b a"]] {
        let g = set(tiny_llama(), "tokenizer.ggml.merges", Value::Array(Array::String(merges.iter().map(|m| m.to_string()).collect())));
        assert!(matches!(gguf_err(&g), GgufError::BadTokenizer { .. }), "{merges:?}");
    }
    let g = set(tiny_llama(), "tokenizer.ggml.bos_token_id", Value::U32(10));
    assert!(matches!(gguf_err(&g), GgufError::BadTokenizer { reason } if reason.contains("bos_token_id = 10")));
    let g = set(tiny_llama(), "tokenizer.ggml.token_type", Value::Array(Array::I32(vec![1; 9])));
    assert!(matches!(gguf_err(&g), GgufError::BadTokenizer { .. }));
    let g = set(tiny_llama(), "tokenizer.ggml.tokens", Value::Array(Array::U32(vec![0; 10])));
    assert!(matches!(gguf_err(&g), GgufError::MetadataType { key, .. } if key == "tokenizer.ggml.tokens"));
}

#[test]
#[ignore = "writes fuzz/seeds/gguf: cargo test --workspace --lib -- --ignored fuzz_seed"]
fn fuzz_seed_gguf() {
    crate::fuzz_seed::write("gguf", "tiny-llama.gguf", &tiny_llama().bytes());
}
