//! Translates a decoded ONNX model into a [`Graph`]: names into ops, attributes checked at
//! load time, so an unsupported op or attribute is an error before anything runs.

use std::collections::HashMap;
use std::path::Path;

use super::proto::{AttributeProto, DimProto, ModelProto, NodeProto};
use super::tensor_from_proto;
use crate::error::{Error, Result};
use crate::graph::{Dim, Graph, InputInfo, Node};
use crate::ops::{BinaryOp, Op, UnaryOp};
use crate::tensor::{DType, Tensor};

/// The opsets of the default domain kilotune reads.
pub const SUPPORTED_OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// Metadata key the dynamo exporter uses for the module path of each node.
pub const NAME_SCOPES_KEY: &str = "pkg.torch.onnx.name_scopes";

/// Extra facts about nodes kept beside the graph (module scopes for naming `Linear`s).
#[derive(Default, Debug, Clone)]
pub struct ImportInfo {
    /// The dynamo exporter's module path per node name (`m.encoder.layer.0.attention.self.query`).
    pub scopes: HashMap<String, String>,
    /// The default-domain opset.
    pub opset: i64,
    /// The producer.
    pub producer: String,
}

struct Attrs<'a> {
    node: &'a NodeProto,
    map: HashMap<&'a str, &'a AttributeProto>,
}

impl<'a> Attrs<'a> {
    fn new(node: &'a NodeProto) -> Result<Self> {
        let mut map = HashMap::new();
        for a in &node.attribute {
            if a.has_graph {
                return Err(Error::UnsupportedAttribute {
                    op: node.op_type.clone(),
                    node: node.name.clone(),
                    attribute: a.name.clone(),
                    value: "a subgraph".into(),
                });
            }
            map.insert(a.name.as_str(), a);
        }
        Ok(Attrs { node, map })
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.map.get(name).map_or(default, |a| a.i)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.map.get(name).map_or(default, |a| a.f)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.map.get(name).map(|a| a.ints.clone())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.map.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    fn unsupported(&self, attribute: &str, value: impl ToString) -> Error {
        Error::UnsupportedAttribute {
            op: self.node.op_type.clone(),
            node: self.node.name.clone(),
            attribute: attribute.into(),
            value: value.to_string(),
        }
    }
    /// Refuses attributes the op does not understand, so nothing is silently ignored.
    fn only(&self, known: &[&str]) -> Result<()> {
        for a in self.map.keys() {
            if !known.contains(a) {
                return Err(self.unsupported(a, "(not understood)"));
            }
        }
        Ok(())
    }
}

fn dtype_attr(a: &Attrs<'_>, name: &str) -> Result<DType> {
    let code = a.int(name, 1);
    DType::from_onnx(code as i32).ok_or_else(|| a.unsupported(name, code))
}

/// How many inputs an imported op needs (each present, not the empty name) and how many it
/// may have, as ONNX defines them.
fn arity(op: &Op) -> (usize, usize) {
    match op {
        Op::Binary(_) | Op::Expand | Op::Reshape { .. } | Op::Gather(_) | Op::GatherNd(_) | Op::MatMul => (2, 2),
        Op::Where | Op::Range => (3, 3),
        Op::Slice => (3, 5),
        Op::MatMulInteger => (2, 4),
        Op::DequantizeLinear(_) => (2, 3),
        Op::LayerNorm { .. } => (2, 3),
        Op::Squeeze(_) | Op::Unsqueeze(_) | Op::ReduceMean { .. } => (1, 2),
        Op::Variadic(_) | Op::Concat(_) => (1, usize::MAX),
        _ => (1, 1),
    }
}

/// Refuses a node whose inputs or outputs do not fit its op: the graph passes may then read
/// an op's required inputs and its first output without checking each time.
fn check_arity(op: &Op, node: &NodeProto) -> Result<()> {
    let (need, most) = arity(op);
    let given = node.input.len();
    let missing = node.input.iter().take(need).any(String::is_empty);
    if given < need || given > most || missing || node.output.first().is_none_or(String::is_empty) {
        let range = if most == usize::MAX { format!("at least {need}") } else if need == most { need.to_string() } else { format!("{need} to {most}") };
        return Err(Error::InvalidModel(format!(
            "node `{}` ({}) has {given} inputs ({range} needed, the first {need} named) and {} outputs (at least 1 named)",
            node.name,
            node.op_type,
            node.output.len()
        )));
    }
    Ok(())
}

/// Translates one node into an op, or an error naming the op, node and opset.
fn translate(node: &NodeProto, opset: i64, dir: Option<&Path>) -> Result<Op> {
    let a = Attrs::new(node)?;
    let unsupported = || Error::UnsupportedOp {
        op: if node.domain.is_empty() { node.op_type.clone() } else { format!("{}::{}", node.domain, node.op_type) },
        node: node.name.clone(),
        opset,
    };
    if !(node.domain.is_empty() || node.domain == "ai.onnx") {
        return Err(unsupported());
    }
    let bin = |op| -> Result<Op> {
        a.only(&[])?;
        Ok(Op::Binary(op))
    };
    let un = |op| -> Result<Op> {
        a.only(&[])?;
        Ok(Op::Unary(op))
    };
    Ok(match node.op_type.as_str() {
        "Add" => bin(BinaryOp::Add)?,
        "Sub" => bin(BinaryOp::Sub)?,
        "Mul" => bin(BinaryOp::Mul)?,
        "Div" => bin(BinaryOp::Div)?,
        "Pow" => bin(BinaryOp::Pow)?,
        "And" => bin(BinaryOp::And)?,
        "Or" => bin(BinaryOp::Or)?,
        "Equal" => bin(BinaryOp::Equal)?,
        "Less" => bin(BinaryOp::Less)?,
        "LessOrEqual" => bin(BinaryOp::LessOrEqual)?,
        "Greater" => bin(BinaryOp::Greater)?,
        "GreaterOrEqual" => bin(BinaryOp::GreaterOrEqual)?,
        "Max" => {
            a.only(&[])?;
            Op::Variadic(BinaryOp::Max)
        }
        "Min" => {
            a.only(&[])?;
            Op::Variadic(BinaryOp::Min)
        }
        "Neg" => un(UnaryOp::Neg)?,
        "Sqrt" => un(UnaryOp::Sqrt)?,
        "Reciprocal" => un(UnaryOp::Reciprocal)?,
        "Erf" => un(UnaryOp::Erf)?,
        "Sigmoid" => un(UnaryOp::Sigmoid)?,
        "Sin" => un(UnaryOp::Sin)?,
        "Cos" => un(UnaryOp::Cos)?,
        "Exp" => un(UnaryOp::Exp)?,
        "Log" => un(UnaryOp::Log)?,
        "Tanh" => un(UnaryOp::Tanh)?,
        "Relu" => un(UnaryOp::Relu)?,
        "Abs" => un(UnaryOp::Abs)?,
        "IsNaN" => un(UnaryOp::IsNaN)?,
        "Not" => un(UnaryOp::Not)?,
        "Where" => {
            a.only(&[])?;
            Op::Where
        }
        "Identity" => {
            a.only(&[])?;
            Op::Identity
        }
        "Cast" => {
            a.only(&["to", "saturate", "round_mode"])?;
            Op::Cast(dtype_attr(&a, "to")?)
        }
        "Shape" => {
            a.only(&["start", "end"])?;
            Op::Shape { start: a.int("start", 0), end: a.map.get("end").map(|x| x.i) }
        }
        "Reshape" => {
            a.only(&["allowzero"])?;
            Op::Reshape { allowzero: a.int("allowzero", 0) != 0 }
        }
        "Squeeze" => {
            a.only(&["axes"])?;
            Op::Squeeze(a.ints("axes"))
        }
        "Unsqueeze" => {
            a.only(&["axes"])?;
            Op::Unsqueeze(a.ints("axes"))
        }
        "Flatten" => {
            a.only(&["axis"])?;
            Op::Flatten(a.int("axis", 1))
        }
        "Concat" => {
            a.only(&["axis"])?;
            Op::Concat(a.int("axis", 0))
        }
        "Transpose" => {
            a.only(&["perm"])?;
            let perm = a
                .ints("perm")
                .map(|p| p.iter().map(|&x| usize::try_from(x).map_err(|_| a.unsupported("perm", x))).collect::<Result<Vec<_>>>())
                .transpose()?;
            Op::Transpose(perm)
        }
        "Expand" => {
            a.only(&[])?;
            Op::Expand
        }
        "Range" => {
            a.only(&[])?;
            Op::Range
        }
        "ConstantOfShape" => {
            a.only(&["value"])?;
            let v = match a.map.get("value").and_then(|x| x.t.as_ref()) {
                Some(t) => tensor_from_proto(t, dir)?,
                None => Tensor::scalar(0f32),
            };
            if v.len() != 1 {
                return Err(a.unsupported("value", "a tensor of more than one element"));
            }
            Op::ConstantOfShape(v)
        }
        "Slice" => {
            a.only(&[])?;
            Op::Slice
        }
        "Gather" => {
            a.only(&["axis"])?;
            Op::Gather(a.int("axis", 0))
        }
        "GatherND" => {
            a.only(&["batch_dims"])?;
            let b = a.int("batch_dims", 0);
            if b != 0 {
                return Err(a.unsupported("batch_dims", b));
            }
            Op::GatherNd(0)
        }
        "MatMul" => {
            a.only(&[])?;
            Op::MatMul
        }
        "MatMulInteger" => {
            a.only(&[])?;
            Op::MatMulInteger
        }
        "Softmax" => {
            a.only(&["axis"])?;
            Op::Softmax(a.int("axis", -1))
        }
        "ReduceMean" => {
            a.only(&["axes", "keepdims", "noop_with_empty_axes"])?;
            Op::ReduceMean {
                axes: a.ints("axes"),
                keepdims: a.int("keepdims", 1) != 0,
                noop_with_empty_axes: a.int("noop_with_empty_axes", 0) != 0,
            }
        }
        "LayerNormalization" => {
            a.only(&["axis", "epsilon", "stash_type"])?;
            let stash = a.int("stash_type", 1);
            if stash != 1 {
                return Err(a.unsupported("stash_type", stash));
            }
            if node.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err(a.unsupported("outputs", "Mean/InvStdDev outputs"));
            }
            Op::LayerNorm { axis: a.int("axis", -1), epsilon: a.float("epsilon", 1e-5) }
        }
        "Gelu" => {
            a.only(&["approximate"])?;
            let tanh = match a.string("approximate").as_deref() {
                None | Some("none") => false,
                Some("tanh") => true,
                Some(other) => return Err(a.unsupported("approximate", other)),
            };
            Op::Gelu { tanh }
        }
        "DynamicQuantizeLinear" => {
            a.only(&[])?;
            Op::DynamicQuantizeLinear
        }
        "DequantizeLinear" => {
            a.only(&["axis", "block_size", "output_dtype"])?;
            if a.int("block_size", 0) != 0 {
                return Err(a.unsupported("block_size", a.int("block_size", 0)));
            }
            Op::DequantizeLinear(a.int("axis", 1))
        }
        _ => return Err(unsupported()),
    })
}

fn module_scope(node: &NodeProto) -> Option<String> {
    let (_, v) = node.metadata_props.iter().find(|(k, _)| k == NAME_SCOPES_KEY)?;
    // A Python list literal: ['', 'm', 'm.encoder', ..., 'm.encoder.layer.0.attention.self.query', 'linear']
    let items: Vec<&str> = v
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|s| s.trim().trim_matches('\'').trim_matches('"'))
        .collect();
    // The last entry is the op's own name; the one before is the innermost module.
    items.len().checked_sub(2).map(|i| items[i].to_owned()).filter(|s| !s.is_empty())
}

/// Builds the graph of a decoded model. `dir` resolves external data (None: refuse it).
pub fn import_model(model: &ModelProto, dir: Option<&Path>) -> Result<(Graph, ImportInfo)> {
    let tensors = model.graph.initializer.iter().map(|t| Ok((t.name.clone(), tensor_from_proto(t, dir)?))).collect::<Result<Vec<_>>>()?;
    import_with(model, tensors, dir)
}

/// [`import_model`], taking the decoded model by value so each initializer's bytes are freed as
/// soon as it is converted: peak memory during import stays near one copy of the weights
/// instead of two.
pub fn import_model_owned(mut model: ModelProto, dir: Option<&Path>) -> Result<(Graph, ImportInfo)> {
    let initializers = std::mem::take(&mut model.graph.initializer);
    let mut tensors = Vec::with_capacity(initializers.len());
    for t in initializers {
        let tensor = tensor_from_proto(&t, dir)?;
        tensors.push((t.name, tensor));
    }
    import_with(&model, tensors, dir)
}

fn import_with(model: &ModelProto, initializers: Vec<(String, Tensor)>, dir: Option<&Path>) -> Result<(Graph, ImportInfo)> {
    let opset = model
        .opset_import
        .iter()
        .find(|(d, _)| d.is_empty() || d == "ai.onnx")
        .map(|(_, v)| *v)
        .ok_or_else(|| Error::InvalidModel("the model imports no default-domain opset".into()))?;
    if !SUPPORTED_OPSETS.contains(&opset) {
        return Err(Error::InvalidModel(format!(
            "opset {opset} is not supported (supported: {}–{})",
            SUPPORTED_OPSETS.start(),
            SUPPORTED_OPSETS.end()
        )));
    }
    let mut g = Graph::default();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut info = ImportInfo { opset, producer: model.producer_name.clone(), ..Default::default() };
    // ONNX graphs are in SSA form: a second definition of a name would silently shadow the
    // first (a hostile file could swap a weight this way), so it is refused.
    let defined_twice = |name: &str| Error::InvalidModel(format!("value `{name}` is defined more than once"));
    for (name, tensor) in initializers {
        let id = g.add_value(name.clone(), Some(tensor));
        if ids.insert(name.clone(), id).is_some() {
            return Err(defined_twice(&name));
        }
    }
    for i in &model.graph.input {
        if ids.contains_key(&i.name) {
            continue; // an initializer listed as input (old IR): it stays a constant
        }
        let dtype = DType::from_onnx(i.elem_type)
            .ok_or_else(|| Error::InvalidModel(format!("input `{}` has unsupported type {}", i.name, i.elem_type)))?;
        let dims = i
            .dims
            .iter()
            .map(|d| match d {
                DimProto::Value(v) if *v >= 0 => Dim::Fixed(*v as usize),
                DimProto::Param(p) => Dim::Symbol(p.clone()),
                _ => Dim::Symbol("?".into()),
            })
            .collect();
        let id = g.add_value(i.name.clone(), None);
        ids.insert(i.name.clone(), id);
        g.inputs.push(InputInfo { value: id, dtype, dims });
    }
    for node in &model.graph.node {
        let name = if node.name.is_empty() { format!("{}_{}", node.op_type, g.nodes.len()) } else { node.name.clone() };
        if node.op_type == "Constant" && (node.domain.is_empty() || node.domain == "ai.onnx") {
            let a = Attrs::new(node)?;
            a.only(&["value", "value_float", "value_int", "value_floats", "value_ints"])?;
            let t = if let Some(t) = a.map.get("value").and_then(|x| x.t.as_ref()) {
                tensor_from_proto(t, dir)?
            } else if let Some(x) = a.map.get("value_float") {
                Tensor::scalar(x.f)
            } else if let Some(x) = a.map.get("value_int") {
                Tensor::scalar(x.i)
            } else if let Some(x) = a.map.get("value_floats") {
                Tensor::new(&[x.floats.len()], x.floats.clone())?
            } else if let Some(x) = a.map.get("value_ints") {
                Tensor::new(&[x.ints.len()], x.ints.clone())?
            } else {
                return Err(a.unsupported("value", "missing"));
            };
            let out = node.output.first().ok_or_else(|| Error::InvalidModel(format!("Constant `{name}` has no output")))?;
            let id = g.add_value(out.clone(), Some(t));
            if ids.insert(out.clone(), id).is_some() {
                return Err(defined_twice(out));
            }
            continue;
        }
        let op = translate(node, opset, dir)?;
        check_arity(&op, node)?;
        let mut inputs = Vec::with_capacity(node.input.len());
        for i in &node.input {
            if i.is_empty() {
                inputs.push(None);
                continue;
            }
            let id = *ids
                .get(i)
                .ok_or_else(|| Error::InvalidModel(format!("node `{name}` reads `{i}`, which nothing defines before it")))?;
            inputs.push(Some(id));
        }
        let mut outputs = Vec::with_capacity(node.output.len());
        for o in &node.output {
            let id = g.add_value(o.clone(), None);
            if !o.is_empty() && ids.insert(o.clone(), id).is_some() {
                return Err(defined_twice(o));
            }
            outputs.push(id);
        }
        if let Some(scope) = module_scope(node) {
            info.scopes.insert(name.clone(), scope);
        }
        g.nodes.push(Node { name, op, inputs, outputs });
    }
    for o in &model.graph.output {
        let id = *ids.get(&o.name).ok_or_else(|| Error::InvalidModel(format!("output `{}` is never computed", o.name)))?;
        g.outputs.push(id);
    }
    if g.outputs.is_empty() {
        return Err(Error::InvalidModel("the graph has no outputs".into()));
    }
    Ok((g, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal protobuf writer, enough to build hostile or unusual models by hand.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field_bytes(n: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(n << 3 | 2), out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn field_int(n: u32, v: i64, out: &mut Vec<u8>) {
        varint(u64::from(n << 3), out);
        varint(v as u64, out);
    }
    fn value_info(name: &str) -> Vec<u8> {
        let mut dim = Vec::new();
        field_bytes(2, b"n", &mut dim);
        let mut shape = Vec::new();
        field_bytes(1, &dim, &mut shape);
        let mut tensor = Vec::new();
        field_int(1, 1, &mut tensor);
        field_bytes(2, &shape, &mut tensor);
        let mut ty = Vec::new();
        field_bytes(1, &tensor, &mut ty);
        let mut v = Vec::new();
        field_bytes(1, name.as_bytes(), &mut v);
        field_bytes(2, &ty, &mut v);
        v
    }
    /// A one-node model `y = OP(x)` with optional int attribute.
    fn model(op: &str, opset: i64, attr: Option<(&str, i64)>) -> Vec<u8> {
        let mut node = Vec::new();
        field_bytes(1, b"x", &mut node);
        field_bytes(2, b"y", &mut node);
        field_bytes(3, b"the_node", &mut node);
        field_bytes(4, op.as_bytes(), &mut node);
        if let Some((name, v)) = attr {
            let mut a = Vec::new();
            field_bytes(1, name.as_bytes(), &mut a);
            field_int(3, v, &mut a);
            field_int(20, 2, &mut a);
            field_bytes(5, &a, &mut node);
        }
        let mut graph = Vec::new();
        field_bytes(1, &node, &mut graph);
        field_bytes(11, &value_info("x"), &mut graph);
        field_bytes(12, &value_info("y"), &mut graph);
        let mut opset_id = Vec::new();
        field_int(2, opset, &mut opset_id);
        let mut m = Vec::new();
        field_int(1, 9, &mut m);
        field_bytes(7, &graph, &mut m);
        field_bytes(8, &opset_id, &mut m);
        m
    }

    fn import(bytes: &[u8]) -> Result<Graph> {
        import_model(&ModelProto::decode(bytes)?, None).map(|(g, _)| g)
    }

    #[test]
    fn a_supported_one_node_model_imports() {
        let g = import(&model("Relu", 17, None)).unwrap();
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.inputs.len(), 1);
        assert_eq!(g.inputs[0].dims, vec![Dim::Symbol("n".into())]);
    }

    #[test]
    fn unsupported_op_names_op_node_and_opset() {
        match import(&model("NonMaxSuppression", 17, None)) {
            Err(Error::UnsupportedOp { op, node, opset }) => {
                assert_eq!((op.as_str(), node.as_str(), opset), ("NonMaxSuppression", "the_node", 17));
            }
            other => panic!("expected UnsupportedOp, got {other:?}"),
        }
    }

    #[test]
    fn unknown_attribute_is_refused_at_load() {
        match import(&model("Relu", 17, Some(("alpha", 3)))) {
            Err(Error::UnsupportedAttribute { op, attribute, .. }) => assert_eq!((op.as_str(), attribute.as_str()), ("Relu", "alpha")),
            other => panic!("expected UnsupportedAttribute, got {other:?}"),
        }
        match import(&model("GatherND", 17, Some(("batch_dims", 1)))) {
            Err(Error::UnsupportedAttribute { attribute, value, .. }) => assert_eq!((attribute.as_str(), value.as_str()), ("batch_dims", "1")),
            other => panic!("expected UnsupportedAttribute, got {other:?}"),
        }
    }

    #[test]
    fn opsets_outside_13_to_21_are_refused() {
        for opset in [12, 22] {
            assert!(matches!(import(&model("Relu", opset, None)), Err(Error::InvalidModel(m)) if m.contains("opset")));
        }
    }

    #[test]
    fn garbage_and_truncation_are_protobuf_errors() {
        let m = model("Relu", 17, None);
        for cut in [1, m.len() / 2, m.len() - 1] {
            assert!(import(&m[..cut]).is_err(), "truncated at {cut}");
        }
        assert!(matches!(import(b"\xff\xff\xff"), Err(Error::Protobuf(_))));
    }
}
