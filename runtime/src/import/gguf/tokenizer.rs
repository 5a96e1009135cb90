//! The tokenizer a GGUF file describes (`tokenizer.ggml.*`) → a Hugging Face `tokenizer.json`.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is converted. Its tokens and merges are
//! stored in GPT-2's byte alphabet already, so they pass through unchanged; what the file does
//! not spell out is how text is split before BPE. llama.cpp picks that from
//! `tokenizer.ggml.pre` (`llama-vocab.cpp`), and so does this module, for the pre-tokenizers it
//! knows:
//!
//! | `tokenizer.ggml.pre` | llama.cpp's split | `tokenizer.json` |
//! | --- | --- | --- |
//! | `gpt2` | GPT-2's regex | `ByteLevel` (its regex is GPT-2's) |
//! | `smollm`, `starcoder`, `refact` | each digit alone, then GPT-2's regex | `Digits` (individual) + `ByteLevel` |
//! | `llama-bpe`, `llama3` | Llama 3's regex, whole-word vocabulary hits first | `Split` + `ByteLevel` without regex; BPE `ignore_merges` |
//!
//! Tokens typed CONTROL (3) become special added tokens and USER_DEFINED (4) plain added tokens,
//! so both are matched whole, as llama.cpp does.

use std::collections::HashSet;

use serde_json::{json, Value as Json};

use super::error::GgufError;
use super::reader::{Array, GgufFile, Value};

/// Llama 3's split regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's token types.
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

fn bad(reason: impl Into<String>) -> GgufError {
    GgufError::BadTokenizer { reason: reason.into() }
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// An optional token id from the metadata, checked against the vocabulary.
fn token_id(file: &GgufFile<'_>, key: &str, vocab: usize) -> Result<Option<usize>, GgufError> {
    if !file.metadata.contains_key(key) {
        return Ok(None);
    }
    let id = file.get_usize(key)?;
    if id >= vocab {
        return Err(bad(format!("{key} = {id} is past the vocabulary of {vocab} tokens")));
    }
    Ok(Some(id))
}

fn flag(file: &GgufFile<'_>, key: &str, default: bool) -> Result<bool, GgufError> {
    match file.metadata.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(GgufError::MetadataType { key: key.into(), expected: "bool", found: v.type_name() }),
    }
}

fn string_array<'f>(file: &'f GgufFile<'_>, key: &str) -> Result<&'f [String], GgufError> {
    match file.get(key)? {
        Value::Array(Array::String(v)) => Ok(v),
        Value::Array(a) => Err(GgufError::MetadataType { key: key.into(), expected: "array of strings", found: a.elem_type_name() }),
        v => Err(GgufError::MetadataType { key: key.into(), expected: "array of strings", found: v.type_name() }),
    }
}

/// Builds the `tokenizer.json` text for the file's tokenizer; `None` when the file has no
/// `tokenizer.ggml.model`.
pub fn tokenizer_json(file: &GgufFile<'_>) -> Result<Option<String>, GgufError> {
    let model = match file.metadata.get("tokenizer.ggml.model") {
        None => return Ok(None),
        Some(_) => file.get_str("tokenizer.ggml.model")?,
    };
    let pre = match file.metadata.get("tokenizer.ggml.pre") {
        None => "",
        Some(_) => file.get_str("tokenizer.ggml.pre")?,
    };
    let unsupported = || GgufError::UnsupportedTokenizer { model: model.into(), pre: pre.into() };
    if model != "gpt2" {
        return Err(unsupported());
    }
    let (pre_tokenizer, ignore_merges, default_bos) = match pre {
        "gpt2" => (byte_level(true), false, false),
        "smollm" | "starcoder" | "refact" => (
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
            false,
        ),
        "llama-bpe" | "llama3" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            true,
            true,
        ),
        _ => return Err(unsupported()),
    };

    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types: Vec<i32> = match file.metadata.get("tokenizer.ggml.token_type") {
        None => vec![1; n],
        Some(Value::Array(Array::I32(t))) => t.clone(),
        Some(Value::Array(a)) => return Err(GgufError::MetadataType { key: "tokenizer.ggml.token_type".into(), expected: "array of i32", found: a.elem_type_name() }),
        Some(v) => return Err(GgufError::MetadataType { key: "tokenizer.ggml.token_type".into(), expected: "array of i32", found: v.type_name() }),
    };
    if types.len() != n {
        return Err(bad(format!("{} token types for {n} tokens", types.len())));
    }
    let merges = match file.metadata.get("tokenizer.ggml.merges") {
        None => &[][..],
        Some(_) => string_array(file, "tokenizer.ggml.merges")?,
    };

    let known: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let mut parts = m.split(' ');
        let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(format!("merge #{i} `{m}` is not two tokens separated by one space")));
        };
        if !known.contains(a) || !known.contains(b) || !known.contains(format!("{a}{b}").as_str()) {
            return Err(bad(format!("merge #{i} `{m}` uses or makes a token outside the vocabulary")));
        }
        pairs.push(json!([a, b]));
    }

    let vocab: serde_json::Map<String, Json> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == CONTROL || ty == USER_DEFINED)
        .map(|(id, (t, &ty))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": ty == CONTROL})
        })
        .collect();

    let bos = token_id(file, "tokenizer.ggml.bos_token_id", n)?;
    let eos = token_id(file, "tokenizer.ggml.eos_token_id", n)?;
    let unk = token_id(file, "tokenizer.ggml.unknown_token_id", n)?;
    // Checked for range only: padding is the caller's business.
    token_id(file, "tokenizer.ggml.padding_token_id", n)?;
    let add_bos = flag(file, "tokenizer.ggml.add_bos_token", default_bos)?;
    let add_eos = flag(file, "tokenizer.ggml.add_eos_token", false)?;

    let byte_level_post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let post_processor = if add_bos || add_eos {
        // [bos] A [eos], and for pairs [bos] A [eos] [bos] B [eos], as llama.cpp adds them.
        let mut ends = Vec::new();
        if add_bos {
            let id = bos.ok_or_else(|| bad("add_bos_token is set but there is no bos_token_id"))?;
            ends.push((true, tokens[id].clone(), id));
        }
        if add_eos {
            let id = eos.ok_or_else(|| bad("add_eos_token is set but there is no eos_token_id"))?;
            ends.push((false, tokens[id].clone(), id));
        }
        let template = |seq: &str, type_id: u32| -> Vec<Json> {
            let special = |t: &String| json!({"SpecialToken": {"id": t, "type_id": type_id}});
            let mut out: Vec<Json> = ends.iter().filter(|e| e.0).map(|e| special(&e.1)).collect();
            out.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
            out.extend(ends.iter().filter(|e| !e.0).map(|e| special(&e.1)));
            out
        };
        let single = template("A", 0);
        let mut pair = single.clone();
        pair.extend(template("B", 1));
        let specials: serde_json::Map<String, Json> =
            ends.iter().map(|(_, t, id)| (t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}))).collect();
        json!({"type": "Sequence", "processors": [
            byte_level_post,
            {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials},
        ]})
    } else {
        byte_level_post
    };

    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk.map(|id| tokens[id].clone()),
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": pairs,
        },
    });
    Ok(Some(doc.to_string()))
}
