//! Tests of the ONNX encoder and rewriter: fixtures survive decode → encode → decode, a model
//! built from structs loads and runs, and a rewrite changes exactly what its edit names.

use std::path::{Path, PathBuf};

use super::*;
use crate::{Base, LoadOptions, Session, SessionConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

const FIXTURES: [&str; 4] = ["tiny-bert.dynamo.onnx", "tiny-bert.legacy.onnx", "tiny-llama.dynamo.onnx", "tiny-llama.legacy.onnx"];

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

/// The fixture's reference inputs.
fn inputs(model: &str) -> Vec<(&'static str, Tensor)> {
    let (dir, names): (&str, &[&'static str]) = if model.starts_with("tiny-bert") {
        ("tiny-bert.reference", &["input_ids", "attention_mask", "token_type_ids"])
    } else {
        ("tiny-llama.reference", &["input_ids", "attention_mask"])
    };
    names.iter().map(|&n| (n, crate::npy::read(fixtures().join(dir).join(format!("{n}.npy"))).unwrap())).collect()
}

fn run(bytes: &[u8], feeds: &[(&str, Tensor)]) -> Vec<f32> {
    let base = Base::from_bytes(bytes, LoadOptions::default()).unwrap();
    let s = Session::new(base, SessionConfig { threads: 1 }).unwrap();
    s.run(feeds).unwrap().0.remove(0).1.to_f32_vec()
}

#[test]
fn encoder_writes_the_wire_format() {
    let mut e = Encoder::new();
    e.uint(1, 150);
    e.string(2, "hi");
    e.float(3, 1.0);
    e.int(4, -1);
    let b = e.into_bytes();
    let mut want = vec![0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d, 0x00, 0x00, 0x80, 0x3f, 0x20];
    want.extend([0xff; 9]);
    want.push(0x01);
    assert_eq!(b, want);
    // And the reader agrees, including the ten-byte negative.
    let mut r = Reader::new(&b);
    assert_eq!(r.next_field().unwrap().unwrap().1.int("x").unwrap(), 150);
    r.next_field().unwrap();
    r.next_field().unwrap();
    assert_eq!(r.next_field().unwrap().unwrap().1.int("x").unwrap(), -1);
}

#[test]
fn fixtures_round_trip_through_the_struct_encoder() {
    for name in FIXTURES {
        let original = read(name);
        let decoded = ModelProto::decode(&original).unwrap();
        let encoded = encode_model(&decoded).unwrap();
        let again = ModelProto::decode(&encoded).unwrap();
        // The structs have no PartialEq; their Debug form lists every field they hold.
        assert_eq!(format!("{decoded:?}"), format!("{again:?}"), "{name}");
        assert!(!decoded.graph.initializer.is_empty() && !decoded.graph.node.is_empty(), "{name}");
        // The re-encoded model computes the same thing, bit for bit.
        let feeds = inputs(name);
        assert_eq!(run(&original, &feeds), run(&encoded, &feeds), "{name}");
    }
}

#[test]
fn an_empty_edit_reproduces_the_file_byte_for_byte() {
    for name in FIXTURES {
        let original = read(name);
        assert!(rewrite_model(&original, &ModelEdit::default()).unwrap() == original, "{name}");
    }
}

fn value_info(name: &str, elem_type: i32, dims: Vec<DimProto>) -> ValueInfoProto {
    ValueInfoProto { name: name.into(), elem_type, dims }
}

fn f32_init(name: &str, dims: &[usize], v: Vec<f32>) -> TensorProto {
    tensor_to_proto(name, &Tensor::new(dims, v).unwrap())
}

/// y = Relu(x·W + b) with W [3×2] and b [2], plus a Transpose with an INTS attribute.
fn hand_built() -> ModelProto {
    let w = vec![1.0, -2.0, 0.5, 0.25, -1.0, 3.0];
    let node = |op: &str, ins: &[&str], out: &str| NodeProto {
        input: ins.iter().map(|s| (*s).to_owned()).collect(),
        output: vec![out.to_owned()],
        name: format!("{op}_0"),
        op_type: op.into(),
        ..Default::default()
    };
    let mut transpose = node("Transpose", &["y"], "yt");
    transpose.attribute.push(AttributeProto { name: "perm".into(), kind: attr_kind::INTS, ints: vec![1, 0], ..Default::default() });
    ModelProto {
        ir_version: 8,
        opset_import: vec![(String::new(), 17)],
        producer_name: "kilotune-test".into(),
        graph: GraphProto {
            name: "hand".into(),
            node: vec![node("MatMul", &["x", "W"], "xw"), node("Add", &["xw", "b"], "z"), node("Relu", &["z"], "y"), transpose],
            initializer: vec![f32_init("W", &[3, 2], w), f32_init("b", &[2], vec![0.5, -0.5])],
            input: vec![value_info("x", 1, vec![DimProto::Param("batch".into()), DimProto::Value(3)])],
            output: vec![value_info("y", 1, vec![DimProto::Param("batch".into()), DimProto::Value(2)]), value_info("yt", 1, vec![])],
        },
        metadata_props: vec![("note".into(), "hand-built".into())],
    }
}

#[test]
fn a_hand_built_model_loads_and_runs() {
    let bytes = encode_model(&hand_built()).unwrap();
    let base = Base::from_bytes(&bytes, LoadOptions::default()).unwrap();
    assert_eq!(base.input_names(), ["x"]);
    assert_eq!(base.output_names(), ["y", "yt"]);
    let s = Session::new(base, SessionConfig { threads: 1 }).unwrap();
    let x = Tensor::new(&[2, 3], vec![1.0f32, 2.0, 3.0, -1.0, 0.0, 1.0]).unwrap();
    let out = s.run(&[("x", x)]).unwrap();
    // Row 0: [1 + 1 - 3, -2 + 0.5 + 9] + b = [-0.5, 7.0] → Relu [0, 7]; row 1: [-2, 5] + b → [0, 4.5].
    assert_eq!(out.get("y").unwrap().to_f32_vec(), [0.0, 7.0, 0.0, 4.5]);
    assert_eq!(out.get("yt").unwrap().to_f32_vec(), [0.0, 0.0, 7.0, 4.5]);
    let back = ModelProto::decode(&bytes).unwrap();
    assert_eq!(back.metadata_props, [("note".to_owned(), "hand-built".to_owned())]);
    assert_eq!(back.graph.node[3].attribute[0].ints, [1, 0]);
}

#[test]
fn a_rewrite_changes_only_what_it_names() {
    let original = encode_model(&hand_built()).unwrap();
    let edit = ModelEdit {
        // W becomes the identity-like [[1,0],[0,1],[0,0]]: y = Relu(x[:, :2] + b).
        replace_initializers: vec![f32_init("W", &[3, 2], vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0])],
        // A second path: y2 = z + c, written right after the Add.
        add_initializers: vec![f32_init("c", &[2], vec![10.0, 20.0])],
        insert_after: vec![(1, NodeProto { input: vec!["z".into(), "c".into()], output: vec!["y2".into()], op_type: "Add".into(), ..Default::default() })],
        add_outputs: vec![value_info("y2", 1, vec![DimProto::Param("batch".into()), DimProto::Value(2)])],
        set_metadata: vec![("note".into(), "rewritten".into()), ("extra".into(), "1".into())],
        ..Default::default()
    };
    let bytes = rewrite_model(&original, &edit).unwrap();
    let m = ModelProto::decode(&bytes).unwrap();
    let ops: Vec<&str> = m.graph.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(ops, ["MatMul", "Add", "Add", "Relu", "Transpose"]);
    assert_eq!(m.metadata_props, [("note".to_owned(), "rewritten".to_owned()), ("extra".to_owned(), "1".to_owned())]);
    assert_eq!(m.producer_name, "kilotune-test");
    let s = Session::new(Base::from_bytes(&bytes, LoadOptions::default()).unwrap(), SessionConfig { threads: 1 }).unwrap();
    let x = Tensor::new(&[1, 3], vec![1.0f32, -2.0, 3.0]).unwrap();
    let out = s.run(&[("x", x)]).unwrap();
    assert_eq!(out.get("y").unwrap().to_f32_vec(), [1.5, 0.0]);
    assert_eq!(out.get("y2").unwrap().to_f32_vec(), [11.5, 17.5]);

    // Renaming: feed the Relu from `xw` instead of `z`, and rename the Relu's output.
    let edit = ModelEdit {
        rename_inputs: vec![(2, 0, "xw".into())],
        rename_outputs: vec![(2, 0, "relu_out".into())],
        insert_after: vec![(2, NodeProto { input: vec!["relu_out".into()], output: vec!["y".into()], op_type: "Neg".into(), ..Default::default() })],
        ..Default::default()
    };
    let bytes = rewrite_model(&original, &edit).unwrap();
    let m = ModelProto::decode(&bytes).unwrap();
    assert_eq!(m.graph.node[2].input, ["xw"]);
    assert_eq!(m.graph.node[2].output, ["relu_out"]);
    assert_eq!(m.graph.node[2].name, "Relu_0", "untouched fields are kept");
    let s = Session::new(Base::from_bytes(&bytes, LoadOptions::default()).unwrap(), SessionConfig { threads: 1 }).unwrap();
    let x = Tensor::new(&[1, 3], vec![1.0f32, 2.0, 3.0]).unwrap();
    // x·W = [-1, 7.5] (the bias is skipped now); Relu → [0, 7.5]; Neg → [-0, -7.5].
    let y = s.run(&[("x", x)]).unwrap().get("y").unwrap().to_f32_vec();
    assert_eq!(y, [0.0, -7.5]);
}

#[test]
fn a_rewrite_refuses_what_the_model_lacks() {
    let original = encode_model(&hand_built()).unwrap();
    let missing = ModelEdit { replace_initializers: vec![f32_init("nope", &[1], vec![0.0])], ..Default::default() };
    let e = rewrite_model(&original, &missing).unwrap_err();
    assert!(matches!(&e, Error::InvalidModel(m) if m.contains("`nope`")), "{e}");
    let node = ModelEdit { rename_inputs: vec![(9, 0, "x".into())], ..Default::default() };
    assert!(matches!(rewrite_model(&original, &node).unwrap_err(), Error::InvalidModel(m) if m.contains("node index 9")));
    let slot = ModelEdit { rename_inputs: vec![(0, 5, "x".into())], ..Default::default() };
    assert!(matches!(rewrite_model(&original, &slot).unwrap_err(), Error::InvalidModel(m) if m.contains("no input slot 5")));
    assert!(matches!(rewrite_model(&original[..original.len() - 3], &ModelEdit::default()).unwrap_err(), Error::Protobuf(_)));
}

#[test]
fn attributes_of_every_written_type_round_trip() {
    let t = f32_init("", &[2], vec![1.5, -2.5]);
    let attrs = vec![
        AttributeProto { name: "f".into(), kind: attr_kind::FLOAT, f: 0.0, ..Default::default() },
        AttributeProto { name: "i".into(), kind: attr_kind::INT, i: -7, ..Default::default() },
        AttributeProto { name: "s".into(), kind: attr_kind::STRING, s: b"tanh".to_vec(), ..Default::default() },
        AttributeProto { name: "t".into(), kind: attr_kind::TENSOR, t: Some(t), ..Default::default() },
        AttributeProto { name: "fs".into(), kind: attr_kind::FLOATS, floats: vec![0.5, 2.0], ..Default::default() },
        AttributeProto { name: "is".into(), kind: attr_kind::INTS, ints: vec![-1, 0, 3], ..Default::default() },
    ];
    let node = NodeProto { op_type: "Custom".into(), domain: "test".into(), attribute: attrs, ..Default::default() };
    let mut e = Encoder::new();
    encode_node(&mut e, &node).unwrap();
    let bytes = e.into_bytes();
    // A node does not decode alone; wrap it in a graph in a model.
    let mut m = Encoder::new();
    m.message(7, |g| {
        g.bytes(1, &bytes);
        Ok(())
    })
    .unwrap();
    let back = ModelProto::decode(&m.into_bytes()).unwrap();
    assert_eq!(format!("{:?}", back.graph.node[0]), format!("{node:?}"));
    let graph_attr = AttributeProto { name: "g".into(), kind: 5, has_graph: true, ..Default::default() };
    let e = encode_attribute(&mut Encoder::new(), &graph_attr, "n").unwrap_err();
    assert!(matches!(&e, Error::InvalidModel(m) if m.contains("type 5")), "{e}");
}
