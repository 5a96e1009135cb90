//! Malformed input: ONNX models, their protobuf and their external data.

use super::*;

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

/// Loads the fuzzer's input `name` (in `tests/fixtures/fuzz/`): a base, or one of the typed
/// errors a malformed model may get; never a panic.
fn loads_without_panic(name: &str) {
    let bytes = std::fs::read(fixtures().join("fuzz").join(name)).expect("fixture");
    let loaded = std::panic::catch_unwind(|| Base::from_bytes(&bytes, LoadOptions::default())).expect("loading the fuzzer's input panicked");
    if let Err(e) = loaded {
        assert!(matches!(e, Error::InvalidModel(_) | Error::Shape { .. } | Error::UnsupportedOp { .. } | Error::UnsupportedAttribute { .. } | Error::Protobuf(_)), "{e:?}");
    }
}

/// Found by the `onnx` fuzz target: a `Transpose` whose `perm` names an axis past its input's
/// rank made shape folding index out of bounds (a panic) before the op could refuse it. Shape
/// folding now leaves such a node alone; the load either succeeds (the op refuses the perm
/// when it runs) or is a typed error, never a panic.
#[test]
fn onnx_transpose_perm_past_the_rank_found_by_fuzzing_is_no_panic() {
    let bytes = std::fs::read(fixtures().join("fuzz/onnx-transpose-perm-out-of-range.bin")).expect("fixture");
    let r = std::panic::catch_unwind(|| Base::from_bytes(&bytes, LoadOptions::default()));
    let loaded = r.expect("loading the fuzzer's input panicked");
    match loaded {
        Ok(base) => {
            let perms: Vec<Vec<usize>> = base.graph().nodes.iter().filter_map(|n| match &n.op { kilotune::ops::Op::Transpose(Some(p)) => Some(p.clone()), _ => None }).collect();
            assert!(perms.iter().any(|p| p.iter().any(|&i| i >= p.len())), "the fixture still holds its bad perm: {perms:?}");
        }
        Err(e) => assert!(matches!(e, Error::InvalidModel(_) | Error::Shape { .. } | Error::UnsupportedOp { .. } | Error::UnsupportedAttribute { .. }), "{e:?}"),
    }
}

/// Found by the `onnx` fuzz target (after 199 k executions): a `Reshape` target whose sizes
/// multiply past `i64` made shape folding overflow (a panic with overflow checks, a wrong
/// shape without). Shape arithmetic is checked now, and negative sizes give no fact.
#[test]
fn onnx_reshape_sizes_overflowing_i64_found_by_fuzzing_are_no_panic() {
    loads_without_panic("onnx-reshape-size-overflow.bin");
}

/// Found by the `onnx` fuzz target (after 602 k executions): a `Slice` of a dimension folded to
/// a negative size clamped its bounds to `0..negative` (a panic). Such a size gives no fact now.
#[test]
fn onnx_slice_of_a_negative_size_found_by_fuzzing_is_no_panic() {
    loads_without_panic("onnx-slice-negative-dim.bin");
}

/// Found by the `onnx` fuzz target (after 211 k executions, in the run after the `Slice` fix):
/// the `Reshape` op itself, run by constant folding, multiplied the known sizes of a target with
/// a `-1` without an overflow check (a panic with debug assertions). It is checked now, and an
/// op whose output size comes from its inputs' values asks a per-op element budget first
/// (`ops::budget`).
#[test]
fn onnx_reshape_inferring_a_size_past_usize_found_by_fuzzing_is_no_panic() {
    loads_without_panic("onnx-reshape-infer-overflow.bin");
}

/// Two small constants that broadcast to a large one: folding leaves the op to a run, so
/// loading a file of a few kilobytes never allocates what its constants could make (here
/// 2^24 elements, 64 MiB, from 32 KiB of weights).
#[test]
fn onnx_constants_that_broadcast_to_a_huge_tensor_are_not_folded_at_load() {
    let a = tensor("a", &[4096, 1], Some(&f32_bytes(&[1.0; 4096])), &[]);
    let b = tensor("b", &[1, 4096], Some(&f32_bytes(&[2.0; 4096])), &[]);
    let nodes = [node("Add", &["a", "b"], &["ab"], &[]), node("Mul", &["x", "ab"], &["y"], &[])];
    let base = load_bytes(&model_with(&graph(&nodes, &[a, b]), 17)).expect("loads");
    let largest = base.graph().values.iter().filter_map(|v| v.constant.as_ref()).map(|t| t.len()).max();
    assert_eq!(largest, Some(4096), "the broadcast was folded at load");
    // The same op with a small result is still folded.
    let a = tensor("a", &[8, 1], Some(&f32_bytes(&[1.0; 8])), &[]);
    let b = tensor("b", &[1, 8], Some(&f32_bytes(&[2.0; 8])), &[]);
    let base = load_bytes(&model_with(&graph(&nodes, &[a, b]), 17)).expect("loads");
    let largest = base.graph().values.iter().filter_map(|v| v.constant.as_ref()).map(|t| t.len()).max();
    assert_eq!(largest, Some(64));
}

/// Found by the `onnx` fuzz target (after 3.7 M executions, the first finding on this build): a
/// `Mul` with one input reached the SiLU fusion, which read its second input (a panic). Every
/// imported node's inputs and outputs are now checked against its op at import.
#[test]
fn onnx_mul_with_one_input_found_by_fuzzing_is_no_panic() {
    loads_without_panic("onnx-mul-with-one-input.bin");
}

/// Found by the `onnx` fuzz target (722 k executions into the run on the build with the arity
/// check): constant folding evaluated `Not` of a float tensor, which reached an `unreachable!`
/// in the unary ops (a panic). `Not` of anything but booleans is now an invalid model.
#[test]
fn onnx_not_of_a_float_found_by_fuzzing_is_no_panic() {
    loads_without_panic("onnx-not-of-float.bin");
}

/// A node with too few inputs, too many, an empty name in a required slot, or no output is an
/// invalid model at import, naming the node.
#[test]
fn onnx_node_arity_is_checked_at_import() {
    let cases: [(&str, &[&str], &[&str]); 5] = [
        ("Mul", &["x"], &["y"]),
        ("Mul", &["x", "x", "x"], &["y"]),
        ("Mul", &["x", ""], &["y"]),
        ("Where", &["x", "x"], &["y"]),
        ("Relu", &["x"], &[]),
    ];
    for (op, inputs, outputs) in cases {
        let m = model_with(&graph(&[node(op, inputs, outputs, &[])], &[]), 17);
        let r = load_bytes(&m);
        assert!(matches!(&r, Err(Error::InvalidModel(msg)) if msg.contains(&format!("{op}_node")) && msg.contains("inputs")), "{op} {inputs:?} {outputs:?}: {:?}", r.map(|_| ()));
    }
    // The well-formed twin loads.
    assert!(load_bytes(&model_with(&graph(&[node("Mul", &["x", "x"], &["y"], &[])], &[]), 17)).is_ok());
}
