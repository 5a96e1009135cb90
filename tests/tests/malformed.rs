//! Malformed input, class by class: every reader (delta, ONNX with its external data, GGUF,
//! safetensors, PEFT adapters, `config.json`) refuses each kind of bad file with its own typed
//! error, never a panic and never a vague one. Each test matches the error enum itself.
//!
//! The table of classes, variants and tests is in `docs/robustness.md` ("Malformed input").
//! Run with `cargo test -p kilotune-tests --test malformed`.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use kilotune::delta::peft_interop::{export_peft_adapter, import_peft_adapter, PeftInteropError};
use kilotune::delta::{self, Delta, DeltaError, LoadLimits, NamedTensor, Precision, TensorData};
use kilotune::import::gguf::{self, GgufError};
use kilotune::import::{hf, ImportError};
use kilotune::{Base, Error, LoadOptions};
use kilotune_tests::{fixtures, trained_tiny_bert_lora, TempDir};

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

// A minimal protobuf writer, enough to build hostile ONNX models by hand.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(n: u32, b: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(n << 3 | 2), out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

fn int_field(n: u32, v: i64, out: &mut Vec<u8>) {
    varint(u64::from(n << 3), out);
    varint(v as u64, out);
}

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

// ---------------------------------------------------------------------------------------
// Delta: framing

#[test]
fn delta_every_truncation_of_a_real_delta_is_truncated() {
    let (_, bytes) = real_delta_bytes();
    assert!(bytes.len() > 1000, "a real delta, not a toy: {} bytes", bytes.len());
    for n in 0..bytes.len() {
        match decode(&bytes[..n]) {
            Err(DeltaError::Truncated { found, .. }) => assert_eq!(found, n as u64),
            other => panic!("cut at {n} of {}: {other:?}", bytes.len()),
        }
    }
}

#[test]
fn delta_every_single_bit_flip_of_a_real_delta_is_rejected() {
    let (_, bytes) = real_delta_bytes();
    let body_len = bytes.len() as u64 - 24;
    let mut flipped = bytes.clone();
    let (mut magic, mut version, mut length, mut checksum) = (0, 0, 0, 0);
    for bit in 0..bytes.len() * 8 {
        let (at, mask) = (bit / 8, 1u8 << (bit % 8));
        flipped[at] ^= mask;
        // The CRC32C covers the header too and catches every flip by itself (a single-bit
        // error never leaves a CRC unchanged); the reader reports the first check that fails.
        let (covered, trailer) = flipped.split_at(flipped.len() - 4);
        assert_ne!(crc32c::crc32c(covered).to_le_bytes(), trailer, "bit {bit} slips past the CRC");
        match (at, decode(&flipped)) {
            (0..8, Err(DeltaError::BadMagic { .. })) => magic += 1,
            (8..12, Err(DeltaError::UnsupportedVersion { .. })) => version += 1,
            (12..20, Err(DeltaError::Truncated { .. })) => length += 1,
            (12..20, Err(DeltaError::TrailingBytes { extra })) => {
                let declared = u64::from_le_bytes(flipped[12..20].try_into().expect("8 bytes"));
                assert_eq!(extra, body_len - declared);
                length += 1;
            }
            (20.., Err(DeltaError::Checksum { .. })) => checksum += 1,
            (_, other) => panic!("bit {bit} (byte {at}) of {}: {other:?}", bytes.len()),
        }
        flipped[at] ^= mask;
    }
    assert_eq!(flipped, bytes);
    // Every flip rejected: the header's by its structural checks (which run before the CRC),
    // all the others by the CRC.
    assert_eq!(magic + version + length + checksum, bytes.len() * 8);
    assert_eq!((magic, version, length), (64, 32, 64));
    assert_eq!(checksum, (bytes.len() - 20) * 8);
    eprintln!("{} single-bit flips of a {}-byte delta: {magic} BadMagic, {version} UnsupportedVersion, {length} Truncated/TrailingBytes, {checksum} Checksum", bytes.len() * 8, bytes.len());
}

#[test]
fn delta_u64_max_body_length_is_truncated_without_allocating() {
    let (_, mut bytes) = real_delta_bytes();
    bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    match decode(&bytes) {
        Err(DeltaError::Truncated { expected, found }) => assert_eq!((expected, found), (u64::MAX, bytes.len() as u64)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn delta_wrong_magic_is_bad_magic() {
    let (_, mut bytes) = real_delta_bytes();
    bytes[..8].copy_from_slice(b"GGUF\x03\0\0\0");
    assert!(matches!(decode(&bytes), Err(DeltaError::BadMagic { found }) if &found == b"GGUF\x03\0\0\0"));
}

#[test]
fn delta_unknown_version_is_unsupported() {
    for v in [0u32, 3, u32::MAX] {
        let (_, mut bytes) = real_delta_bytes();
        bytes[8..12].copy_from_slice(&v.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(DeltaError::UnsupportedVersion { found, supported: 2 }) if found == v), "version {v}");
    }
}

#[test]
fn delta_for_another_base_is_wrong_base() {
    let (base, delta) = trained();
    let dir = TempDir::new("malformed-base");
    let path = dir.path().join("user.ktd");
    delta::save(&delta, &path, Precision::F32).expect("saves");
    let mut other = base.fingerprint();
    assert!(delta::load(&path, Some(&other), &LoadLimits::default()).is_ok());
    other[0] ^= 0x80;
    assert!(matches!(delta::load(&path, Some(&other), &LoadLimits::default()), Err(DeltaError::WrongBase { .. })));
}

#[test]
fn delta_empty_file_is_truncated() {
    let dir = TempDir::new("malformed-empty");
    let path = dir.path().join("empty.ktd");
    std::fs::write(&path, b"").expect("writable");
    assert!(matches!(delta::load(&path, None, &LoadLimits::default()), Err(DeltaError::Truncated { expected: 24, found: 0 })));
}

#[test]
fn delta_oversized_file_is_too_large_before_it_is_read() {
    let dir = TempDir::new("malformed-large");
    let path = dir.path().join("big.ktd");
    std::fs::write(&path, vec![0u8; 4096]).expect("writable");
    let limits = LoadLimits { max_bytes: 1000 };
    assert!(matches!(delta::load(&path, None, &limits), Err(DeltaError::TooLarge { size: 1001, limit: 1000 })));
}

#[test]
fn delta_bytes_after_the_declared_end_are_trailing() {
    let (_, mut bytes) = real_delta_bytes();
    bytes.extend([0u8; 3]);
    assert!(matches!(decode(&bytes), Err(DeltaError::TrailingBytes { extra: 3 })));
}

#[test]
fn delta_missing_file_is_io() {
    let dir = TempDir::new("malformed-missing");
    let err = delta::load(dir.path().join("none.ktd"), None, &LoadLimits::default()).unwrap_err();
    assert!(matches!(&err, DeltaError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Delta: the body (checksummed, so only a writer could have made it)

#[test]
fn delta_varint_overflow_in_the_body_is_malformed() {
    let body = postcard::to_allocvec(&small_delta()).expect("serializes");
    // After the 32-byte fingerprint comes the method's variant index, a u32 varint: make it a
    // 6-byte varint that overflows u32, then the rest as it was.
    let mut bad = body[..32].to_vec();
    bad.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    bad.extend(&body[33..]);
    assert!(matches!(decode(&frame(&bad)), Err(DeltaError::Malformed(m)) if m.contains("decode")));
}

#[test]
fn delta_shape_product_overflow_is_malformed() {
    let mut d = small_delta();
    d.tensors[0].shape = vec![u32::MAX, u32::MAX, u32::MAX];
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(m)) if m.contains("64 bits")));
    // 2^64 wraps to 0 in unchecked arithmetic; an empty tensor must not pass for it.
    d.tensors[0] = NamedTensor::f32("wrap", &[1 << 16, 1 << 16, 1 << 16, 1 << 16], vec![]);
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(_))));
}

#[test]
fn delta_shape_data_mismatch_is_malformed() {
    let mut d = small_delta();
    let n = d.tensors[0].shape[0];
    d.tensors[0].shape[0] = n + 1;
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(m)) if m.contains("values, found")));
    // An int8 tensor with a scale count that is not one per row.
    let mut d = small_delta();
    let rows = d.tensors[0].shape[0] as usize;
    let len = d.tensors[0].shape.iter().product::<u32>() as usize;
    d.tensors[0].data = TensorData::I8 { values: vec![1; len], scales: vec![1.0; rows + 1] };
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(m)) if m.contains("scales")));
}

#[test]
fn delta_nan_and_infinite_tensors_are_non_finite() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut d = small_delta();
        let name = d.tensors[1].name.clone();
        let TensorData::F32(v) = &mut d.tensors[1].data else { panic!("a trained delta is f32") };
        v[0] = bad;
        assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::NonFinite { tensor }) if tensor == name), "{bad}");
        // And the writer refuses to save it in any precision.
        for p in [Precision::F32, Precision::F16, Precision::Int8] {
            assert!(matches!(delta::to_bytes(&d, p), Err(DeltaError::NonFinite { .. })), "{bad} as {p:?}");
        }
    }
}

#[test]
fn delta_duplicate_tensor_names_are_refused() {
    let mut d = small_delta();
    d.tensors[2].name = d.tensors[0].name.clone();
    let want = d.tensors[0].name.clone();
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::DuplicateName { name }) if name == want));
}

#[test]
fn delta_empty_or_nul_containing_names_are_bad_names() {
    for bad in ["", "encoder.layer.0\0.query.lora_A", "\0"] {
        let mut d = small_delta();
        d.tensors[0].name = bad.into();
        assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::BadName { name }) if name == bad), "{bad:?}");
    }
}

#[test]
fn delta_method_that_does_not_fit_the_version_is_malformed() {
    // A version-1 frame around a (version-2) adapter method.
    let mut d = small_delta();
    d.method = kilotune::peft::PeftMethod::HeadOnly;
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(m)) if m.contains("version 1")));
}

// ---------------------------------------------------------------------------------------
// ONNX: the file and its protobuf

#[test]
fn onnx_empty_file_is_a_protobuf_error() {
    assert!(matches!(load_bytes(b""), Err(Error::Protobuf(m)) if m.contains("no graph")));
    let dir = TempDir::new("malformed-onnx-empty");
    assert!(matches!(load_in(dir.path(), b""), Err(Error::Protobuf(_))));
}

#[test]
fn onnx_oversized_file_is_too_large_before_parsing() {
    let dir = TempDir::new("malformed-onnx-large");
    let path = dir.path().join("model.onnx");
    // Not even protobuf: the size is refused before a byte is parsed.
    std::fs::write(&path, vec![0xffu8; 5000]).expect("writable");
    let options = LoadOptions { max_file_bytes: 4096, ..Default::default() };
    assert!(matches!(Base::load(&path, options.clone()), Err(Error::TooLarge { size: 5000, limit: 4096 })));
    assert!(matches!(Base::from_bytes(&[0xff; 5000], options), Err(Error::TooLarge { size: 5000, limit: 4096 })));
}

#[test]
fn onnx_truncations_of_a_real_model_are_protobuf_or_invalid_model_errors() {
    let bytes = std::fs::read(fixtures().join("tiny-bert.legacy.onnx")).expect("fixture");
    let (mut protobuf, mut invalid) = (0, 0);
    // 400 cuts spread over the file, plus the last 64 (the opset and metadata at the end).
    let cuts = (0..400).map(|i| i * bytes.len() / 400).chain(bytes.len() - 64..bytes.len());
    for cut in cuts {
        match load_bytes(&bytes[..cut]) {
            Err(Error::Protobuf(_)) => protobuf += 1,
            // A cut between two top-level fields leaves well-formed protobuf without its opset.
            Err(Error::InvalidModel(m)) if m.contains("opset") => invalid += 1,
            other => panic!("cut at {cut} of {}: {:?}", bytes.len(), other.map(|_| "a base")),
        }
    }
    assert!(protobuf > 400, "{protobuf} protobuf errors, {invalid} invalid models");
}

#[test]
fn onnx_u64_max_length_is_a_protobuf_error() {
    let mut m = Vec::new();
    varint(7 << 3 | 2, &mut m); // graph, length-delimited
    varint(u64::MAX, &mut m);
    m.extend([0u8; 16]);
    assert!(matches!(load_bytes(&m), Err(Error::Protobuf(msg)) if msg.contains("past the end")));
}

#[test]
fn onnx_varint_overflow_is_a_protobuf_error() {
    let mut m = vec![1 << 3]; // ir_version, a varint
    m.extend([0xff; 9]);
    m.push(0x7f); // the tenth byte carries more than the 64th bit
    assert!(matches!(load_bytes(&m), Err(Error::Protobuf(msg)) if msg.contains("overflows")));
    let mut m = vec![1 << 3];
    m.extend([0x80; 10]);
    assert!(matches!(load_bytes(&m), Err(Error::Protobuf(msg)) if msg.contains("varint")));
}

/// A graph attribute (`If`'s `then_branch`) whose graph holds another `If`, `depth` times.
fn nested_if(depth: usize) -> Vec<u8> {
    let mut g = graph(&[node("Relu", &["x"], &["y"], &[])], &[]);
    for _ in 0..depth {
        let mut a = Vec::new();
        bytes_field(1, b"then_branch", &mut a);
        bytes_field(6, &g, &mut a);
        int_field(20, 5, &mut a); // GRAPH
        g = graph(&[node("If", &["x"], &["y"], &[a])], &[]);
    }
    model_with(&g, 17)
}

#[test]
fn onnx_nesting_beyond_the_bound_is_a_protobuf_error() {
    assert_eq!(kilotune::onnx::proto::MAX_DEPTH, 32);
    // One level of subgraph decodes and is refused as unsupported, as control flow is.
    assert!(matches!(load_bytes(&nested_if(1)), Err(Error::UnsupportedAttribute { op, value, .. }) if op == "If" && value == "a subgraph"));
    // Each subgraph level nests three messages (graph → node → attribute).
    assert!(matches!(load_bytes(&nested_if(9)), Err(Error::UnsupportedAttribute { .. })));
    assert!(matches!(load_bytes(&nested_if(11)), Err(Error::Protobuf(m)) if m.contains("nest deeper than 32")));
    // Two thousand levels: refused at the bound, without recursing two thousand times.
    assert!(matches!(load_bytes(&nested_if(2_000)), Err(Error::Protobuf(m)) if m.contains("nest deeper")));
}

#[test]
fn onnx_unsupported_op_names_the_op_and_node() {
    let m = model_with(&graph(&[node("NonMaxSuppression", &["x"], &["y"], &[])], &[]), 17);
    assert!(matches!(load_bytes(&m), Err(Error::UnsupportedOp { op, node, opset: 17 }) if op == "NonMaxSuppression" && node == "NonMaxSuppression_node"));
    let mut custom = node("Relu", &["x"], &["y"], &[]);
    bytes_field(7, b"com.microsoft", &mut custom);
    let m = model_with(&graph(&[custom], &[]), 17);
    assert!(matches!(load_bytes(&m), Err(Error::UnsupportedOp { op, .. }) if op == "com.microsoft::Relu"));
}

#[test]
fn onnx_unsupported_attribute_is_refused() {
    let mut a = Vec::new();
    bytes_field(1, b"alpha", &mut a);
    int_field(3, 3, &mut a);
    let m = model_with(&graph(&[node("Relu", &["x"], &["y"], &[a])], &[]), 17);
    assert!(matches!(load_bytes(&m), Err(Error::UnsupportedAttribute { attribute, .. }) if attribute == "alpha"));
}

#[test]
fn onnx_unsupported_opset_is_an_invalid_model() {
    for opset in [12, 22] {
        let m = model_with(&graph(&[node("Relu", &["x"], &["y"], &[])], &[]), opset);
        assert!(matches!(load_bytes(&m), Err(Error::InvalidModel(msg)) if msg.contains("opset")), "opset {opset}");
    }
}

#[test]
fn onnx_tensor_shape_overflow_is_an_invalid_model() {
    let m = add_model(tensor("w", &[1 << 40, 1 << 40], Some(&f32_bytes(&[1.0; 4])), &[]));
    assert!(matches!(load_bytes(&m), Err(Error::InvalidModel(msg)) if msg.contains("overflows")));
    let m = add_model(tensor("w", &[-4], Some(&f32_bytes(&[1.0; 4])), &[]));
    assert!(matches!(load_bytes(&m), Err(Error::InvalidModel(msg)) if msg.contains("negative")));
}

#[test]
fn onnx_tensor_shape_data_mismatch_is_an_invalid_model() {
    let m = add_model(tensor("w", &[4], Some(&f32_bytes(&[1.0; 3])), &[]));
    assert!(matches!(load_bytes(&m), Err(Error::InvalidModel(msg)) if msg.contains("12 bytes of data for 4 elements")));
    // The well-formed twin loads, so the refusal is about the mismatch.
    assert!(load_bytes(&add_model(tensor("w", &[4], Some(&f32_bytes(&[1.0; 4])), &[]))).is_ok());
}

#[test]
fn onnx_duplicate_value_names_are_an_invalid_model() {
    let w = tensor("w", &[4], Some(&f32_bytes(&[1.0; 4])), &[]);
    let m = model_with(&graph(&[node("Add", &["x", "w"], &["y"], &[])], &[w.clone(), w.clone()]), 17);
    assert!(matches!(load_bytes(&m), Err(Error::InvalidModel(msg)) if msg.contains("`w` is defined more than once")));
    // A node that redefines an initializer would shadow a weight.
    let nodes = [node("Relu", &["x"], &["w"], &[]), node("Add", &["x", "w"], &["y"], &[])];
    let m = model_with(&graph(&nodes, &[w]), 17);
    assert!(matches!(load_bytes(&m), Err(Error::InvalidModel(msg)) if msg.contains("defined more than once")));
}

#[test]
fn onnx_dangling_input_is_an_invalid_model() {
    let m = model_with(&graph(&[node("Add", &["x", "nowhere"], &["y"], &[])], &[]), 17);
    assert!(matches!(load_bytes(&m), Err(Error::InvalidModel(msg)) if msg.contains("nothing defines")));
}

#[test]
fn onnx_missing_file_is_io() {
    let dir = TempDir::new("malformed-onnx-missing");
    let err = unwrap_err(Base::load(dir.path().join("none.onnx"), LoadOptions::default()));
    assert!(matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// ONNX: external data

#[test]
fn onnx_external_data_inside_the_folder_loads() {
    // The control for the refusals below: the same model with its data in its own folder.
    let (_root, dir) = model_folder("malformed-ext-ok");
    std::fs::write(dir.join("w.bin"), f32_bytes(&[1.0; 4])).expect("writable");
    load_in(&dir, &external_model("w.bin", &[])).expect("external data in the model's folder loads");
}

#[test]
fn onnx_external_data_absolute_path_is_refused() {
    let (root, dir) = model_folder("malformed-ext-abs");
    let secret = root.path().join("secret.bin");
    let location = secret.to_str().expect("UTF-8 temp path");
    let r = load_in(&dir, &external_model(location, &[]));
    assert!(matches!(&r, Err(Error::ExternalData { tensor, location: l, reason }) if tensor == "w" && l == location && reason.contains("absolute")), "{:?}", r.map(|_| ()));
}

#[test]
fn onnx_external_data_dot_dot_is_refused() {
    let (_root, dir) = model_folder("malformed-ext-dotdot");
    for location in ["../secret.bin", "sub/../../secret.bin", "./../secret.bin"] {
        let reason = external_reason(load_in(&dir, &external_model(location, &[])));
        assert!(reason.contains("`..`"), "{location}: {reason}");
    }
}

#[cfg(unix)]
#[test]
fn onnx_external_data_symlinked_out_is_refused() {
    let (root, dir) = model_folder("malformed-ext-symlink");
    std::os::unix::fs::symlink(root.path().join("secret.bin"), dir.join("w.bin")).expect("symlinks work here");
    let reason = external_reason(load_in(&dir, &external_model("w.bin", &[])));
    assert!(reason.contains("outside the model's folder"), "{reason}");
    // A symlinked folder too.
    std::os::unix::fs::symlink(root.path(), dir.join("up")).expect("symlinks work here");
    let reason = external_reason(load_in(&dir, &external_model("up/secret.bin", &[])));
    assert!(reason.contains("outside the model's folder"), "{reason}");
}

#[cfg(unix)]
#[test]
fn onnx_external_data_hardlinked_out_is_refused() {
    let (root, dir) = model_folder("malformed-ext-hardlink");
    std::fs::hard_link(root.path().join("secret.bin"), dir.join("w.bin")).expect("hard links work here");
    let reason = external_reason(load_in(&dir, &external_model("w.bin", &[])));
    assert!(reason.contains("hard links"), "{reason}");
}

#[test]
fn onnx_external_data_offset_or_length_past_the_end_is_refused() {
    let (_root, dir) = model_folder("malformed-ext-offset");
    std::fs::write(dir.join("w.bin"), f32_bytes(&[1.0; 4])).expect("writable");
    let max = u64::MAX.to_string();
    for extra in [
        vec![("offset", "4"), ("length", "16")],
        vec![("offset", "17")],
        vec![("offset", max.as_str()), ("length", "16")],
        vec![("length", max.as_str())],
    ] {
        let reason = external_reason(load_in(&dir, &external_model("w.bin", &extra)));
        assert!(reason.contains("past the end"), "{extra:?}: {reason}");
    }
    let reason = external_reason(load_in(&dir, &external_model("w.bin", &[("offset", "-1")])));
    assert!(reason.contains("bad offset"), "{reason}");
}

#[test]
fn onnx_external_data_from_bytes_or_without_location_is_refused() {
    let reason = external_reason(load_bytes(&external_model("w.bin", &[])));
    assert!(reason.contains("from bytes"), "{reason}");
    let (_root, dir) = model_folder("malformed-ext-noloc");
    let reason = external_reason(load_in(&dir, &add_model(tensor("w", &[4], None, &[("offset", "0")]))));
    assert!(reason.contains("no location"), "{reason}");
}

// ---------------------------------------------------------------------------------------
// GGUF

fn gguf_header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

fn gguf_err(bytes: &[u8]) -> GgufError {
    match gguf::read_bytes(bytes) {
        Err(Error::Import(ImportError::Gguf(e))) => e,
        Err(e) => panic!("expected a GgufError, got {e:?}"),
        Ok(_) => panic!("expected a GgufError, got an import"),
    }
}

#[test]
fn gguf_wrong_magic_or_empty_file_is_bad_magic() {
    // Through the importer's whole error chain once; the other GGUF tests unwrap it.
    let r = gguf::read_bytes(b"");
    assert!(matches!(r, Err(Error::Import(ImportError::Gguf(GgufError::BadMagic { .. })))), "{:?}", r.map(|_| ()));
    assert_eq!(gguf_err(b""), GgufError::BadMagic { found: vec![] });
    let (_, delta_bytes) = real_delta_bytes();
    assert_eq!(gguf_err(&delta_bytes), GgufError::BadMagic { found: b"KTDE".to_vec() });
}

#[test]
fn gguf_unknown_version_is_unsupported() {
    for v in [1u32, 4, 0x0300_0000] {
        assert_eq!(gguf_err(&gguf_header(v, 0, 0)), GgufError::UnsupportedVersion { version: v });
    }
}

#[test]
fn gguf_truncated_header_is_truncated() {
    let h = gguf_header(3, 0, 0);
    for cut in 8..h.len() {
        assert!(matches!(gguf_err(&h[..cut]), GgufError::Truncated { .. }), "cut at {cut}");
    }
}

#[test]
fn gguf_u64_max_counts_and_lengths_are_refused_before_reserving() {
    assert!(matches!(gguf_err(&gguf_header(3, 0, u64::MAX)), GgufError::CountPastEnd { count: u64::MAX, .. }));
    assert!(matches!(gguf_err(&gguf_header(3, u64::MAX, 0)), GgufError::CountPastEnd { count: u64::MAX, .. }));
    let mut b = gguf_header(3, 0, 1);
    b.extend(u64::MAX.to_le_bytes()); // the key's length
    b.extend(b"key");
    b.extend([0u8; 32]); // room for the entry, so the count passes and the length fails
    assert!(matches!(gguf_err(&b), GgufError::StringPastEnd { length: u64::MAX, .. }));
}

// ---------------------------------------------------------------------------------------
// safetensors (Hugging Face checkpoints) and config.json

fn safetensors_err(bytes: &[u8]) -> String {
    let mut out = std::collections::BTreeMap::new();
    match hf::read_safetensors(bytes, None, &mut out) {
        Err(Error::Import(ImportError::Safetensors(m))) => m,
        Err(e) => panic!("expected ImportError::Safetensors, got {e:?}"),
        Ok(()) => panic!("expected ImportError::Safetensors, got tensors"),
    }
}

/// A safetensors file with one F32 tensor `w` of `shape` and `data_bytes` bytes of data.
fn safetensors_file(shape: &[usize], data_bytes: usize) -> Vec<u8> {
    let header = format!(r#"{{"w":{{"dtype":"F32","shape":{shape:?},"data_offsets":[0,{data_bytes}]}}}}"#);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(vec![0u8; data_bytes]);
    b
}

#[test]
fn safetensors_u64_max_header_length_is_refused() {
    let mut b = u64::MAX.to_le_bytes().to_vec();
    b.extend(b"{}");
    let mut out = std::collections::BTreeMap::new();
    let r = hf::read_safetensors(&b, None, &mut out);
    assert!(matches!(&r, Err(Error::Import(ImportError::Safetensors(m))) if m.contains("header too large")), "{r:?}");
}

#[test]
fn safetensors_shape_data_mismatch_and_shape_overflow_are_refused() {
    assert!(hf::read_safetensors(&safetensors_file(&[2, 2], 16), None, &mut Default::default()).is_ok());
    safetensors_err(&safetensors_file(&[2, 3], 16));
    safetensors_err(&safetensors_file(&[usize::MAX, 2], 16));
}

#[test]
fn safetensors_every_truncation_is_refused() {
    let good = safetensors_file(&[2, 2], 16);
    for cut in 0..good.len() {
        safetensors_err(&good[..cut]);
    }
}

#[test]
fn config_json_malformed_out_of_range_or_unknown_is_refused() {
    let config = |extra: &str| {
        format!(
            r#"{{"architectures":["BertModel"],"vocab_size":100,"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":64,"max_position_embeddings":64,"type_vocab_size":2,"layer_norm_eps":1e-12{extra}}}"#
        )
    };
    assert!(hf::parse_config(&config("")).is_ok());
    let is_config = |r: Result<_, Error>| matches!(r, Err(Error::Import(ImportError::Config(_))));
    assert!(is_config(hf::parse_config("{not json")));
    assert!(is_config(hf::parse_config("[1, 2]")));
    // A later key overrides the earlier one in serde_json: hidden size 0, then an overflowing one.
    assert!(is_config(hf::parse_config(&config(r#","hidden_size":0"#))));
    assert!(is_config(hf::parse_config(&config(r#","hidden_size":18446744073709551615"#))));
    assert!(is_config(hf::parse_config(&config(r#","hidden_size":30"#))), "heads must divide hidden");
    let unknown = hf::parse_config(r#"{"architectures":["GPT2LMHeadModel"],"model_type":"gpt2"}"#);
    assert!(matches!(unknown, Err(Error::Import(ImportError::UnsupportedArchitecture(a))) if a.contains("GPT2")));
}

// ---------------------------------------------------------------------------------------
// PEFT adapters (adapter_config.json + adapter_model.safetensors)

/// A real adapter: the trained LoRA delta exported by `export_peft_adapter`, and its base.
fn real_adapter(tag: &str) -> (std::sync::Arc<Base>, TempDir) {
    let (base, delta) = trained();
    let mut lora_only = delta.clone();
    lora_only.head = None;
    lora_only.tensors.retain(|t| t.name.ends_with(".lora_A") || t.name.ends_with(".lora_B"));
    let dir = TempDir::new(tag);
    let first = &lora_only.tensors[0].name;
    let prefix = &first[..first.find("encoder.").expect("a BERT module path")];
    export_peft_adapter(&lora_only, dir.path(), prefix).expect("exports");
    import_peft_adapter(dir.path(), &base, [0; 32]).expect("the exported adapter imports");
    (base, dir)
}

fn weights_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("adapter_model.safetensors")
}

#[test]
fn peft_adapter_every_truncation_of_its_weights_is_a_safetensors_error() {
    let (base, dir) = real_adapter("malformed-peft-cut");
    let good = std::fs::read(weights_path(&dir)).expect("exported");
    // Every cut of the header, then every 97th cut of the data.
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    for cut in (0..header_end + 8).chain((header_end + 8..good.len()).step_by(97)) {
        std::fs::write(weights_path(&dir), &good[..cut]).expect("writable");
        let r = import_peft_adapter(dir.path(), &base, [0; 32]);
        assert!(matches!(r, Err(PeftInteropError::Safetensors { .. })), "cut at {cut} of {}: {r:?}", good.len());
    }
}

#[test]
fn peft_adapter_u64_max_header_length_is_a_safetensors_error() {
    let (base, dir) = real_adapter("malformed-peft-huge");
    let mut bytes = std::fs::read(weights_path(&dir)).expect("exported");
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(weights_path(&dir), &bytes).expect("writable");
    assert!(matches!(import_peft_adapter(dir.path(), &base, [0; 32]), Err(PeftInteropError::Safetensors { .. })));
}

#[test]
fn peft_adapter_bad_json_config_is_json() {
    let (base, dir) = real_adapter("malformed-peft-json");
    std::fs::write(dir.path().join("adapter_config.json"), b"{\"peft_type\": \"LORA\", ").expect("writable");
    assert!(matches!(import_peft_adapter(dir.path(), &base, [0; 32]), Err(PeftInteropError::Json { .. })));
}

#[test]
fn peft_adapter_unsupported_feature_is_unsupported() {
    let (base, dir) = real_adapter("malformed-peft-dora");
    let path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&path).expect("exported").replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(&path, text).expect("writable");
    assert!(matches!(import_peft_adapter(dir.path(), &base, [0; 32]), Err(PeftInteropError::Unsupported { field, .. }) if field == "use_dora"));
}

#[test]
fn peft_adapter_nan_weight_is_a_non_finite_delta() {
    let (base, dir) = real_adapter("malformed-peft-nan");
    let mut bytes = std::fs::read(weights_path(&dir)).expect("exported");
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    bytes[header_end..header_end + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(weights_path(&dir), &bytes).expect("writable");
    let r = import_peft_adapter(dir.path(), &base, [0; 32]);
    assert!(matches!(r, Err(PeftInteropError::Delta(DeltaError::NonFinite { .. }))), "{r:?}");
}

#[test]
fn peft_adapter_out_of_range_config_is_invalid_config() {
    let (base, dir) = real_adapter("malformed-peft-dropout");
    let path = dir.path().join("adapter_config.json");
    let text = std::fs::read_to_string(&path).expect("exported").replace("\"lora_dropout\": 0.0", "\"lora_dropout\": 1.5");
    assert!(text.contains("1.5"), "{text}");
    std::fs::write(&path, text).expect("writable");
    let r = import_peft_adapter(dir.path(), &base, [0; 32]);
    assert!(matches!(&r, Err(PeftInteropError::InvalidConfig(m)) if m.contains("dropout")), "{r:?}");
}

#[test]
fn peft_adapter_oversized_files_are_too_large_before_they_are_read() {
    use kilotune::delta::peft_interop::{MAX_CONFIG_BYTES, MAX_WEIGHTS_BYTES};
    let (base, dir) = real_adapter("malformed-peft-large");
    // A sparse file one byte over the limit: refused from its size, never read.
    let weights = std::fs::OpenOptions::new().write(true).open(weights_path(&dir)).expect("exported");
    weights.set_len(MAX_WEIGHTS_BYTES + 1).expect("a sparse file");
    drop(weights);
    let r = import_peft_adapter(dir.path(), &base, [0; 32]);
    assert!(matches!(&r, Err(PeftInteropError::TooLarge { size, limit, .. }) if *size == MAX_WEIGHTS_BYTES + 1 && *limit == MAX_WEIGHTS_BYTES), "{r:?}");
    std::fs::write(dir.path().join("adapter_config.json"), vec![b' '; MAX_CONFIG_BYTES as usize + 1]).expect("writable");
    let r = import_peft_adapter(dir.path(), &base, [0; 32]);
    assert!(matches!(&r, Err(PeftInteropError::TooLarge { limit, .. }) if *limit == MAX_CONFIG_BYTES), "{r:?}");
}

#[test]
fn peft_adapter_missing_files_are_io() {
    let (base, dir) = real_adapter("malformed-peft-missing");
    std::fs::remove_file(weights_path(&dir)).expect("exported");
    assert!(matches!(import_peft_adapter(dir.path(), &base, [0; 32]), Err(PeftInteropError::Io { .. })));
}

// ---------------------------------------------------------------------------------------
// Other inputs: .npy files, run-time shapes, merges

#[test]
fn npy_malformed_header_is_npy() {
    let good = kilotune::npy::to_bytes(&kilotune::Tensor::new(&[2], vec![1.0f32, 2.0]).expect("fits"));
    assert!(kilotune::npy::from_bytes(&good).is_ok());
    for cut in 0..good.len() {
        let r = kilotune::npy::from_bytes(&good[..cut]);
        assert!(matches!(r, Err(Error::Npy(_))), "cut at {cut}: {r:?}");
    }
    let mut wrong_magic = good.clone();
    wrong_magic[0] = b'x';
    assert!(matches!(kilotune::npy::from_bytes(&wrong_magic), Err(Error::Npy(_))));
}

#[test]
fn run_time_shape_mismatch_is_a_shape_error() {
    // `y = x + w` with `x` of symbolic length: a length that does not broadcast against `w`
    // passes the input checks and fails in the op, naming the node.
    let mut g = graph(&[node("Add", &["x", "w"], &["y"], &[])], &[tensor("w", &[4], Some(&f32_bytes(&[1.0; 4])), &[])]);
    let symbolic = {
        let mut dim = Vec::new();
        bytes_field(2, b"n", &mut dim);
        let mut shape = Vec::new();
        bytes_field(1, &dim, &mut shape);
        let mut t = Vec::new();
        int_field(1, 1, &mut t);
        bytes_field(2, &shape, &mut t);
        let mut ty = Vec::new();
        bytes_field(1, &t, &mut ty);
        let mut v = Vec::new();
        bytes_field(1, b"x", &mut v);
        bytes_field(2, &ty, &mut v);
        v
    };
    // Replace the fixed-size declaration of `x` with the symbolic one.
    let fixed = value_info("x");
    let at = g.windows(fixed.len()).position(|w| w == fixed.as_slice()).expect("x is declared");
    g.splice(at..at + fixed.len(), symbolic.iter().copied());
    g[at - 1] = symbolic.len() as u8;
    let base = load_bytes(&model_with(&g, 17)).expect("loads");
    let session = kilotune::Session::new(base, kilotune::SessionConfig::default()).expect("a session");
    let ok = session.run(&[("x", kilotune::Tensor::new(&[4], vec![0.0f32; 4]).expect("fits"))]);
    assert!(ok.is_ok(), "{:?}", ok.err());
    let r = session.run(&[("x", kilotune::Tensor::new(&[3], vec![0.0f32; 3]).expect("fits"))]);
    assert!(matches!(&r, Err(Error::Shape { node, .. }) if node == "Add_node"), "{:?}", r.err());
}

/// An ONNX Runtime–style int8 `Linear` (`DynamicQuantizeLinear` → `MatMulInteger` → scales)
/// whose weight zero point is `zero_point`.
fn int8_linear(zero_point: i8) -> Vec<u8> {
    use kilotune::onnx::proto::{AttributeProto, DimProto, GraphProto, ModelProto, NodeProto, ValueInfoProto};
    use kilotune::onnx::write::{attr_kind, encode_model, tensor_to_proto};
    use kilotune::Tensor;
    let (k, n) = (4usize, 3usize);
    let io = |name: &str, d: usize| ValueInfoProto { name: name.into(), elem_type: 1, dims: vec![DimProto::Param("batch".into()), DimProto::Value(d as i64)] };
    let node = |name: &str, op: &str, ins: &[&str], outs: &[&str]| NodeProto {
        input: ins.iter().map(|s| (*s).to_owned()).collect(),
        output: outs.iter().map(|s| (*s).to_owned()).collect(),
        name: name.into(),
        op_type: op.into(),
        ..Default::default()
    };
    let weights: Vec<i8> = (0..k * n).map(|i| (i as i8 * 7) % 50 - 25).collect();
    let mut cast = node("cast", "Cast", &["mm"], &["mm_f"]);
    cast.attribute.push(AttributeProto { name: "to".into(), kind: attr_kind::INT, i: 1, ..Default::default() });
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![(String::new(), 17)],
        producer_name: "onnx.quantize".into(),
        graph: GraphProto {
            name: "int8".into(),
            node: vec![
                node("dql", "DynamicQuantizeLinear", &["x"], &["xq", "xs", "xz"]),
                node("layer/MatMul_quant", "MatMulInteger", &["xq", "W_quantized", "xz", "W_zero_point"], &["mm"]),
                cast,
                node("scales", "Mul", &["xs", "W_scale"], &["s"]),
                node("mul", "Mul", &["mm_f", "s"], &["y"]),
            ],
            initializer: vec![
                tensor_to_proto("W_quantized", &Tensor::new(&[k, n], weights).expect("fits")),
                tensor_to_proto("W_scale", &Tensor::scalar(0.02f32)),
                tensor_to_proto("W_zero_point", &Tensor::scalar(zero_point)),
            ],
            input: vec![io("x", k)],
            output: vec![io("y", n)],
        },
        metadata_props: vec![],
    };
    encode_model(&model).expect("encodes")
}

fn lora_for(base: &Base) -> Delta {
    let l = &base.linears()[0];
    let (k, n) = (l.k as u32, l.n as u32);
    Delta {
        base_fingerprint: base.fingerprint(),
        method: kilotune::peft::PeftMethod::Lora(kilotune::peft::LoraConfig { r: 1, alpha: 1.0, target_modules: vec![l.module.clone()], ..Default::default() }),
        head: None,
        tensors: vec![
            NamedTensor::f32(format!("{}.lora_A", l.module), &[1, k], vec![0.1; k as usize]),
            NamedTensor::f32(format!("{}.lora_B", l.module), &[n, 1], vec![0.2; n as usize]),
        ],
        summary: Default::default(),
    }
}

#[test]
fn merge_requantizing_an_asymmetric_int8_weight_is_refused() {
    use kilotune::peft::merge::{merge, MergeError, MergeOptions};
    let requantize = MergeOptions { requantize_int8: true, ..Default::default() };
    // The symmetric twin requantizes, so the refusal below is about the zero point.
    let symmetric = load_bytes(&int8_linear(0)).expect("loads");
    merge(&symmetric, &lora_for(&symmetric), &requantize).expect("a symmetric int8 weight requantizes");
    let base = load_bytes(&int8_linear(3)).expect("loads");
    assert!(base.linears()[0].is_int8());
    let r = merge(&base, &lora_for(&base), &requantize);
    assert!(matches!(&r, Err(Error::Merge(MergeError::AsymmetricInt8 { zero_point: 3, .. }))), "{:?}", r.err());
}

#[test]
fn merge_head_without_its_tensors_is_a_head_error() {
    use kilotune::peft::merge::{merge_onnx, MergeError, MergeOptions};
    use kilotune::peft::{Pooling, TaskHead};
    let bytes = std::fs::read(fixtures().join("tiny-bert.dynamo.onnx")).expect("fixture");
    let base = load_bytes(&bytes).expect("loads");
    let mut d = lora_for(&base);
    d.head = Some(TaskHead::Classification { classes: 2, pooling: Pooling::Mean });
    let r = merge_onnx(&bytes, &base, &d, &MergeOptions::default());
    assert!(matches!(&r, Err(Error::Merge(MergeError::Head(m))) if m.contains("head.weight")), "{:?}", r.err());
}
