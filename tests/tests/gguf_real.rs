//! The GGUF importer on the real SmolLM2-135M-Instruct (llama.cpp Q4_1 file) against PyTorch:
//! `transformers` loading the same file (`from_pretrained(dir, gguf_file=...)`), whose
//! dequantized tensors, tokenizer ids and next-token logits `scripts/gguf-reference.py` saved in
//! `fixtures/smollm2-reference/`. Needs the model (`bash scripts/get-models.sh`); run with
//! `cargo test -p kilotune-tests --features real-models --test gguf_real`.
#![cfg(feature = "real-models")]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kilotune::import::gguf::{self, GgufImport};
use kilotune::import::{Architecture, LlamaConfig};
use kilotune_tests::fixtures;

fn model_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/get-models.sh", p.display());
    p
}

/// The import, read once for all tests (it is 135 M f32 values).
fn import() -> &'static GgufImport {
    static IMPORT: OnceLock<GgufImport> = OnceLock::new();
    IMPORT.get_or_init(|| gguf::read_file(&model_path()).expect("import SmolLM2"))
}

fn reference(file: &str) -> serde_json::Value {
    let p = fixtures().join("smollm2-reference").join(file);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

#[test]
fn smollm2_config_is_the_hugging_face_one() {
    // SmolLM2-135M-Instruct's config.json.
    let want = LlamaConfig {
        vocab_size: 49152,
        hidden_size: 576,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: 3,
        intermediate_size: 1536,
        max_position_embeddings: 8192,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        tie_word_embeddings: true,
    };
    let c = &import().checkpoint;
    assert_eq!(c.arch, Architecture::Llama(want));
    // Embedding, final norm, and 9 per block; no lm_head (tied).
    assert_eq!(c.tensors.len(), 2 + 30 * 9);
    assert!(!c.tensors.contains_key("lm_head.weight"));
}

/// Q8_0 (embedding), Q4_1 (every projection, Q and K un-permuted) and F32 (norms) tensors
/// against transformers' dequantization of the same file: the sampled values bit for bit, the
/// sums to f64 rounding.
#[test]
fn smollm2_tensors_match_transformers_dequantization() {
    let r = reference("tensors.json");
    let tensors = r["tensors"].as_array().expect("tensors");
    assert!(tensors.len() >= 7);
    for t in tensors {
        let name = t["hf"].as_str().expect("hf name");
        let got = import().checkpoint.tensors.get(name).unwrap_or_else(|| panic!("no {name}"));
        let shape: Vec<usize> = t["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
        assert_eq!(got.shape(), shape.as_slice(), "{name}");
        let v = got.as_slice::<f32>().expect("f32");
        let idx = t["indices"].as_array().expect("indices");
        for (i, want) in idx.iter().zip(t["values"].as_array().expect("values")) {
            let i = i.as_u64().expect("index") as usize;
            let want = want.as_f64().expect("value") as f32;
            assert_eq!(v[i].to_bits(), want.to_bits(), "{name}[{i}]: {} vs {want}", v[i]);
        }
        for (i, want) in t["first"].as_array().expect("first").iter().enumerate() {
            assert_eq!(v[i], want.as_f64().expect("value") as f32, "{name}[{i}]");
        }
        let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
        let abs_sum: f64 = v.iter().map(|&x| f64::from(x).abs()).sum();
        let (want_sum, want_abs) = (t["sum"].as_f64().expect("sum"), t["abs_sum"].as_f64().expect("abs_sum"));
        println!("{name}: sum {sum} (reference {want_sum}), sum |x| {abs_sum} (reference {want_abs})");
        // Both sums add the same f32 values in f64, in different orders: they agree to f64
        // rounding, far below one f32 ulp of any element.
        assert!((sum - want_sum).abs() <= 1e-9 * want_abs, "{name}: sum {sum} vs {want_sum}");
        assert!((abs_sum - want_abs).abs() <= 1e-9 * want_abs, "{name}: sum |x| {abs_sum} vs {want_abs}");
    }
}

/// The generated tokenizer.json, loaded by the `tokenizers` crate the CLI uses, gives the ids
/// transformers' GGUF tokenizer gives (ASCII, accents, emoji with joiners, code, CR/LF runs,
/// digits, contractions, CJK, chat control tokens), and decodes back to the text.
#[test]
fn smollm2_tokenizer_encodes_like_transformers() {
    let json = import().tokenizer_json.as_deref().expect("SmolLM2's GGUF has a tokenizer");
    let tok: tokenizers::Tokenizer = json.parse().expect("tokenizers loads the generated tokenizer.json");
    assert_eq!(tok.get_vocab_size(true), 49152);
    let r = reference("tokens.json");
    let cases = r["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"].as_array().expect("ids").iter().map(|i| i.as_u64().expect("id") as u32).collect();
        let enc = tok.encode(text, true).expect("encode");
        assert_eq!(enc.get_ids(), want.as_slice(), "{text:?}");
        assert_eq!(tok.decode(&want, false).expect("decode"), text, "decoding {text:?}");
    }
}

/// End to end: the imported checkpoint as ONNX, run by kilotune, against PyTorch's logits.
mod end_to_end {
    use kilotune::import::{to_onnx, ImportPrecision};
    use kilotune::{Base, LoadOptions, Session, SessionConfig, Tensor};
    use kilotune_tests::{fixtures, load_npy};

    use super::import;

    #[test]
    fn smollm2_logits_match_pytorch() {
        let onnx = to_onnx(&import().checkpoint, ImportPrecision::F32).expect("to_onnx");
        let base = Base::from_bytes(&onnx, LoadOptions::default()).expect("load the imported model");
        let session = Session::new(base, SessionConfig { threads: 2 }).expect("session");
        let dir = fixtures().join("smollm2-reference");
        for p in 0..2 {
            let ids = load_npy(dir.join(format!("prompt{p}.input_ids.npy")));
            let want = load_npy(dir.join(format!("prompt{p}.logits.npy"))).to_f32_vec();
            let seq = ids.shape()[1];
            let mask = Tensor::new(&[1, seq], vec![1i64; seq]).expect("mask");
            let out = session.run(&[("input_ids", ids), ("attention_mask", mask)]).expect("run");
            let logits = out.get("logits").expect("logits output").to_f32_vec();
            let vocab = want.len();
            let last = &logits[(seq - 1) * vocab..seq * vocab];
            let scale = want.iter().fold(0f32, |m, &x| m.max(x.abs()));
            let worst = last.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let argmax = |v: &[f32]| v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best });
            println!("prompt {p}: max |Δ| = {worst:e}, logit scale {scale}, argmax {} vs {}", argmax(last), argmax(&want));
            // f32 throughout on both sides; only the summation order differs (30 blocks).
            // Measured on x86-64: 5.4e-5 and 7.2e-5 against scales of 19.8 and 25.2.
            assert!(worst <= 1e-3 * scale, "prompt {p}: max |Δ| {worst} vs scale {scale}");
            assert_eq!(argmax(last), argmax(&want), "prompt {p}: next token");
        }
    }
}
