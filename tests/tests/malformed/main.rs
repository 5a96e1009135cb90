//! Malformed input, class by class: every reader (delta, ONNX with its external data, GGUF,
//! safetensors, PEFT adapters, `config.json`) refuses each kind of bad file with its own typed
//! error, never a panic and never a vague one. Each test matches the error enum itself.
//!
//! The table of classes, variants and tests is in `docs/robustness.md` ("Malformed input").
//! Run with `cargo test -p kilotune-tests --test malformed`. The helpers are here; the tests
//! are in one module per kind of input: `delta.rs`, `onnx.rs` (with external data),
//! `imports.rs` (GGUF, safetensors, `config.json`, PEFT adapters) and `other.rs` (`.npy`,
//! run-time shapes, merges).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use kilotune::delta::peft_interop::{export_peft_adapter, import_peft_adapter, PeftInteropError};
use kilotune::delta::{self, Delta, DeltaError, LoadLimits, NamedTensor, Precision, TensorData};
use kilotune::import::gguf::{self, GgufError};
use kilotune::import::{hf, ImportError};
use kilotune::{Base, Error, LoadOptions};
use kilotune_tests::{fixtures, trained_tiny_bert_lora, TempDir};

mod ktd;
mod imports;
mod onnx;
mod other;

// ---------------------------------------------------------------------------------------
// Helpers

/// The bytes of a real delta: trained on the tiny BERT, saved by `delta::save`, read back.
fn real_delta_bytes() -> (Delta, Vec<u8>) {
    let (_, delta) = trained();
    let dir = TempDir::new("malformed-delta");
    let path = dir.path().join("user.ktd");
    delta::save(&delta, &path, Precision::F32).expect("a trained delta saves");
    (delta, std::fs::read(&path).expect("just written"))
}

fn decode(bytes: &[u8]) -> Result<Delta, DeltaError> {
    delta::from_bytes(bytes, None, &LoadLimits::default())
}

/// Frames a postcard body as a version-1 delta with a correct CRC: what a buggy or hostile
/// writer could produce, so the body reaches the decoder and the semantic checks.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = b"KTDELTA\0".to_vec();
    out.extend(1u32.to_le_bytes());
    out.extend((body.len() as u64).to_le_bytes());
    out.extend(body);
    out.extend(crc32c::crc32c(&out).to_le_bytes());
    out
}

/// `delta` encoded without the writer's validation, framed with a correct checksum.
fn unchecked(delta: &Delta) -> Vec<u8> {
    frame(&postcard::to_allocvec(delta).expect("any delta serializes"))
}

/// The trained base and delta, made once for the whole file.
fn trained() -> (Arc<Base>, Delta) {
    static TRAINED: OnceLock<(Arc<Base>, Delta)> = OnceLock::new();
    TRAINED.get_or_init(trained_tiny_bert_lora).clone()
}

fn small_delta() -> Delta {
    trained().1
}

// Hostile ONNX models are built by hand with the tests crate's protobuf writer.
use kilotune_tests::pb::{bytes_field, int_field, varint};

fn value_info(name: &str) -> Vec<u8> {
    let mut dim = Vec::new();
    int_field(1, 4, &mut dim);
    let mut shape = Vec::new();
    bytes_field(1, &dim, &mut shape);
    let mut tensor = Vec::new();
    int_field(1, 1, &mut tensor); // FLOAT
    bytes_field(2, &shape, &mut tensor);
    let mut ty = Vec::new();
    bytes_field(1, &tensor, &mut ty);
    let mut v = Vec::new();
    bytes_field(1, name.as_bytes(), &mut v);
    bytes_field(2, &ty, &mut v);
    v
}

/// A `TensorProto` named `name` of float `dims`, with `raw` data or external-data entries.
fn tensor(name: &str, dims: &[i64], raw: Option<&[u8]>, external: &[(&str, &str)]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        int_field(1, d, &mut t);
    }
    int_field(2, 1, &mut t); // FLOAT
    bytes_field(8, name.as_bytes(), &mut t);
    if let Some(raw) = raw {
        bytes_field(9, raw, &mut t);
    }
    for (k, v) in external {
        let mut kv = Vec::new();
        bytes_field(1, k.as_bytes(), &mut kv);
        bytes_field(2, v.as_bytes(), &mut kv);
        bytes_field(13, &kv, &mut t);
    }
    if !external.is_empty() {
        int_field(14, 1, &mut t); // EXTERNAL
    }
    t
}

/// A `NodeProto` `op(inputs) -> outputs` with raw attribute messages.
fn node(op: &str, inputs: &[&str], outputs: &[&str], attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        bytes_field(1, i.as_bytes(), &mut n);
    }
    for o in outputs {
        bytes_field(2, o.as_bytes(), &mut n);
    }
    bytes_field(3, format!("{op}_node").as_bytes(), &mut n);
    bytes_field(4, op.as_bytes(), &mut n);
    for a in attributes {
        bytes_field(5, a, &mut n);
    }
    n
}

/// A `GraphProto` with input `x`, output `y`, and the given nodes and initializers.
fn graph(nodes: &[Vec<u8>], initializers: &[Vec<u8>]) -> Vec<u8> {
    let mut g = Vec::new();
    for n in nodes {
        bytes_field(1, n, &mut g);
    }
    bytes_field(2, b"g", &mut g);
    for t in initializers {
        bytes_field(5, t, &mut g);
    }
    bytes_field(11, &value_info("x"), &mut g);
    bytes_field(12, &value_info("y"), &mut g);
    g
}

/// A `ModelProto` around `graph` importing the default domain at `opset`.
fn model_with(graph: &[u8], opset: i64) -> Vec<u8> {
    let mut opset_id = Vec::new();
    int_field(2, opset, &mut opset_id);
    let mut m = Vec::new();
    int_field(1, 9, &mut m);
    bytes_field(7, graph, &mut m);
    bytes_field(8, &opset_id, &mut m);
    m
}

/// `y = x + w` with the initializer `w` as given.
fn add_model(w: Vec<u8>) -> Vec<u8> {
    model_with(&graph(&[node("Add", &["x", "w"], &["y"], &[])], &[w]), 17)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn load_bytes(bytes: &[u8]) -> Result<std::sync::Arc<Base>, Error> {
    Base::from_bytes(bytes, LoadOptions::default())
}

/// Writes `model` as `model.onnx` in `dir` and loads it from there (external data resolves in
/// `dir`).
fn load_in(dir: &Path, model: &[u8]) -> Result<std::sync::Arc<Base>, Error> {
    let path = dir.join("model.onnx");
    std::fs::write(&path, model).expect("the temporary folder is writable");
    Base::load(&path, LoadOptions::default())
}

/// The reason of an `ExternalData` error, or a panic naming what came instead.
fn external_reason(r: Result<std::sync::Arc<Base>, Error>) -> String {
    match r {
        Err(Error::ExternalData { tensor, reason, .. }) => {
            assert_eq!(tensor, "w");
            reason
        }
        other => panic!("expected Error::ExternalData, got {:?}", other.map(|_| "a base")),
    }
}

/// A model whose initializer `w` ([4] floats) lives in `location` with the given extra keys.
fn external_model(location: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut entries = vec![("location", location)];
    entries.extend_from_slice(extra);
    add_model(tensor("w", &[4], None, &entries))
}

/// A model folder `root/model` with a secret file `root/secret.bin` outside it.
fn model_folder(tag: &str) -> (TempDir, std::path::PathBuf) {
    let root = TempDir::new(tag);
    let dir = root.path().join("model");
    std::fs::create_dir_all(&dir).expect("writable");
    std::fs::write(root.path().join("secret.bin"), f32_bytes(&[9.0; 4])).expect("writable");
    (root, dir)
}

fn unwrap_err<T>(r: Result<T, Error>) -> Error {
    match r {
        Ok(_) => panic!("expected an error, got a success"),
        Err(e) => e,
    }
}
