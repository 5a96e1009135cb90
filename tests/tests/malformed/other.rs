//! Malformed input: `.npy` files, run-time shapes and merges.

use super::*;

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
