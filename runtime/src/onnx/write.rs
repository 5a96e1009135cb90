//! Writing ONNX: a protobuf encoder for the messages in [`super::proto`], and a field-by-field
//! rewriter for editing a shipped model.
//!
//! Two ways to produce a model, for two jobs:
//!
//! - [`encode_model`] writes a [`ModelProto`] built from structs: for models kilotune creates
//!   itself (tests, importers of other formats). The structs hold only what the reader needs,
//!   so fields they drop (doc strings, `value_info`, producer version, functions, ...) are not
//!   written.
//! - [`rewrite_model`] copies a serialized model field by field and changes only what a
//!   [`ModelEdit`] names: a few initializers, node inputs and outputs, inserted nodes, outputs,
//!   metadata. Every field it does not touch is copied as the file had it, including the ones
//!   [`super::proto`] never decodes (doc strings, `value_info`, quantization annotations,
//!   functions, training info, fields of future IR versions). Rewriting a shipped model this
//!   way cannot lose anything we do not understand, which decoding to structs and encoding
//!   again would; that is why merged models are written through it.
//!
//! Field numbers are those of `onnx.proto` (IR version 10), the same the reader uses. onnx.proto
//! is proto2: `TensorProto`'s data arrays are declared `[packed = true]` and are written
//! packed; `dims` and `AttributeProto`'s `ints`/`floats` are not, and are written one field per
//! element, as protobuf's own serializer does.

use std::collections::{HashMap, HashSet};

use super::proto::{AttributeProto, DimProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use super::wire::{Field, Reader};
use crate::error::{Error, Result};
use crate::tensor::{Data, Tensor};

/// `AttributeProto.AttributeType` codes the encoder writes.
pub mod attr_kind {
    /// One float (`f`).
    pub const FLOAT: i64 = 1;
    /// One integer (`i`).
    pub const INT: i64 = 2;
    /// Bytes (`s`).
    pub const STRING: i64 = 3;
    /// A tensor (`t`).
    pub const TENSOR: i64 = 4;
    /// Floats (`floats`).
    pub const FLOATS: i64 = 6;
    /// Integers (`ints`).
    pub const INTS: i64 = 7;
}

/// Appends protobuf fields to a byte buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    /// A varint field holding `v` as protobuf's `uint64`.
    pub fn uint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.varint(v);
    }

    /// A varint field holding `v` as protobuf's `int64`/`int32`: negative values take ten
    /// bytes (two's complement), as the wire format requires for those types.
    pub fn int(&mut self, field: u32, v: i64) {
        self.uint(field, v as u64);
    }

    /// A length-delimited field of raw bytes.
    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// A string field.
    pub fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// A `float` field (fixed32).
    pub fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A sub-message, written by `body` into its own buffer and then length-prefixed.
    pub fn message(&mut self, field: u32, body: impl FnOnce(&mut Encoder) -> Result<()>) -> Result<()> {
        let mut inner = Encoder::new();
        body(&mut inner)?;
        self.bytes(field, &inner.buf);
        Ok(())
    }

    /// A packed repeated varint field (nothing when `v` is empty).
    pub fn packed_ints(&mut self, field: u32, v: &[i64]) {
        if v.is_empty() {
            return;
        }
        let mut inner = Encoder::new();
        v.iter().for_each(|&x| inner.varint(x as u64));
        self.bytes(field, &inner.buf);
    }

    /// A packed repeated `float` field (nothing when `v` is empty).
    pub fn packed_floats(&mut self, field: u32, v: &[f32]) {
        if !v.is_empty() {
            self.bytes(field, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        }
    }

    /// A packed repeated `double` field (nothing when `v` is empty).
    pub fn packed_doubles(&mut self, field: u32, v: &[f64]) {
        if !v.is_empty() {
            self.bytes(field, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        }
    }

    /// Writes back a field as [`Reader::next_field`] returned it: the same number, wire type
    /// and value, so copying every field of a message reproduces it.
    pub fn field(&mut self, number: u32, field: Field<'_>) {
        match field {
            Field::Varint(v) => self.uint(number, v),
            Field::Fixed64(v) => {
                self.key(number, 1);
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
            Field::Len(b) => self.bytes(number, b),
            Field::Fixed32(v) => {
                self.key(number, 5);
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Structs → bytes

/// Serializes `model` as an ONNX `ModelProto`.
///
/// ```
/// use kilotune::onnx::proto::{GraphProto, ModelProto, NodeProto, ValueInfoProto, DimProto};
/// use kilotune::onnx::write::encode_model;
///
/// let io = |name: &str| ValueInfoProto {
///     name: name.into(),
///     elem_type: 1,
///     dims: vec![DimProto::Param("n".into())],
/// };
/// let model = ModelProto {
///     ir_version: 8,
///     opset_import: vec![(String::new(), 17)],
///     producer_name: "example".into(),
///     graph: GraphProto {
///         name: "g".into(),
///         node: vec![NodeProto {
///             input: vec!["x".into()],
///             output: vec!["y".into()],
///             op_type: "Relu".into(),
///             ..Default::default()
///         }],
///         input: vec![io("x")],
///         output: vec![io("y")],
///         ..Default::default()
///     },
///     metadata_props: vec![],
/// };
/// let bytes = encode_model(&model)?;
/// let back = ModelProto::decode(&bytes)?;
/// assert_eq!(back.graph.node[0].op_type, "Relu");
/// # Ok::<(), kilotune::Error>(())
/// ```
pub fn encode_model(model: &ModelProto) -> Result<Vec<u8>> {
    let mut e = Encoder::new();
    e.int(1, model.ir_version);
    if !model.producer_name.is_empty() {
        e.string(2, &model.producer_name);
    }
    e.message(7, |g| encode_graph(g, &model.graph))?;
    for (domain, version) in &model.opset_import {
        e.message(8, |o| {
            if !domain.is_empty() {
                o.string(1, domain);
            }
            o.int(2, *version);
            Ok(())
        })?;
    }
    for (k, v) in &model.metadata_props {
        string_pair(&mut e, 14, k, v)?;
    }
    Ok(e.into_bytes())
}

fn string_pair(e: &mut Encoder, field: u32, key: &str, value: &str) -> Result<()> {
    e.message(field, |p| {
        p.string(1, key);
        p.string(2, value);
        Ok(())
    })
}

/// Writes the fields of a `GraphProto` (without its own key and length).
pub fn encode_graph(e: &mut Encoder, g: &GraphProto) -> Result<()> {
    for n in &g.node {
        e.message(1, |m| encode_node(m, n))?;
    }
    if !g.name.is_empty() {
        e.string(2, &g.name);
    }
    for t in &g.initializer {
        e.message(5, |m| encode_tensor(m, t))?;
    }
    for v in &g.input {
        e.message(11, |m| encode_value_info(m, v))?;
    }
    for v in &g.output {
        e.message(12, |m| encode_value_info(m, v))?;
    }
    Ok(())
}

/// Writes the fields of a `NodeProto`.
pub fn encode_node(e: &mut Encoder, n: &NodeProto) -> Result<()> {
    // Empty input names are kept: they are positional (an omitted optional input).
    n.input.iter().for_each(|i| e.string(1, i));
    n.output.iter().for_each(|o| e.string(2, o));
    if !n.name.is_empty() {
        e.string(3, &n.name);
    }
    e.string(4, &n.op_type);
    for a in &n.attribute {
        e.message(5, |m| encode_attribute(m, a, &n.name))?;
    }
    if !n.domain.is_empty() {
        e.string(7, &n.domain);
    }
    for (k, v) in &n.metadata_props {
        string_pair(e, 9, k, v)?;
    }
    Ok(())
}

/// Writes the fields of an `AttributeProto`. Only the value field of the attribute's declared
/// type is written, and always (even a zero), because ONNX checkers require that field to be
/// present for the type.
pub fn encode_attribute(e: &mut Encoder, a: &AttributeProto, node: &str) -> Result<()> {
    e.string(1, &a.name);
    match a.kind {
        attr_kind::FLOAT => e.float(2, a.f),
        attr_kind::INT => e.int(3, a.i),
        attr_kind::STRING => e.bytes(4, &a.s),
        attr_kind::TENSOR => {
            let t = a.t.as_ref().ok_or_else(|| attr_error(a, node, "of type TENSOR has no tensor"))?;
            e.message(5, |m| encode_tensor(m, t))?;
        }
        // Not packed: onnx.proto declares them plain `repeated`.
        attr_kind::FLOATS => a.floats.iter().for_each(|&f| e.float(7, f)),
        attr_kind::INTS => a.ints.iter().for_each(|&i| e.int(8, i)),
        k => return Err(attr_error(a, node, &format!("has type {k}, which the encoder does not write"))),
    }
    e.int(20, a.kind);
    Ok(())
}

fn attr_error(a: &AttributeProto, node: &str, what: &str) -> Error {
    Error::InvalidModel(format!("attribute `{}` of node `{node}` {what}", a.name))
}

/// Writes the fields of a `TensorProto`.
pub fn encode_tensor(e: &mut Encoder, t: &TensorProto) -> Result<()> {
    t.dims.iter().for_each(|&d| e.int(1, d));
    e.int(2, i64::from(t.data_type));
    e.packed_floats(4, &t.float_data);
    e.packed_ints(5, &t.int32_data);
    e.packed_ints(7, &t.int64_data);
    if !t.name.is_empty() {
        e.string(8, &t.name);
    }
    if !t.raw_data.is_empty() {
        e.bytes(9, &t.raw_data);
    }
    e.packed_doubles(10, &t.double_data);
    for (k, v) in &t.external_data {
        string_pair(e, 13, k, v)?;
    }
    if t.data_location != 0 {
        e.int(14, t.data_location);
    }
    Ok(())
}

/// Writes the fields of a `ValueInfoProto`: a tensor type with its element type and dims.
///
/// [`ValueInfoProto`] cannot tell "rank unknown" from "rank 0", so empty `dims` write no shape
/// (rank unknown): never wrong, only less strict for a scalar.
pub fn encode_value_info(e: &mut Encoder, v: &ValueInfoProto) -> Result<()> {
    e.string(1, &v.name);
    if v.elem_type == 0 && v.dims.is_empty() {
        return Ok(());
    }
    e.message(2, |ty| {
        ty.message(1, |tt| {
            tt.int(1, i64::from(v.elem_type));
            if !v.dims.is_empty() {
                tt.message(2, |shape| {
                    for d in &v.dims {
                        shape.message(1, |dim| {
                            match d {
                                DimProto::Value(x) => dim.int(1, *x),
                                DimProto::Param(p) => dim.string(2, p),
                                DimProto::Unknown => {}
                            }
                            Ok(())
                        })?;
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })
    })
}

/// An engine tensor as an ONNX initializer: little-endian `raw_data`.
pub fn tensor_to_proto(name: impl Into<String>, t: &Tensor) -> TensorProto {
    let raw: Vec<u8> = match t.data() {
        Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I8(v) => v.iter().map(|&x| x as u8).collect(),
        Data::U8(v) => v.to_vec(),
        Data::Bool(v) => v.iter().map(|&x| u8::from(x)).collect(),
    };
    TensorProto {
        name: name.into(),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: t.dtype().onnx_code(),
        raw_data: raw,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Field-by-field rewriting

/// What [`rewrite_model`] changes in the main graph; everything else is copied as it was.
///
/// Nodes are named by their index in the graph's node list (as [`ModelProto::decode`] lists
/// them), because ONNX node names may be empty or repeated; value and initializer names are
/// unique by the format's rules.
#[derive(Debug, Default)]
pub struct ModelEdit {
    /// Initializers written in place of the existing initializer with the same name.
    pub replace_initializers: Vec<TensorProto>,
    /// New initializers, appended.
    pub add_initializers: Vec<TensorProto>,
    /// `(node index, input slot, new value name)`: rewires one input of one node.
    pub rename_inputs: Vec<(usize, usize, String)>,
    /// `(node index, output slot, new value name)`: renames one output of one node.
    pub rename_outputs: Vec<(usize, usize, String)>,
    /// `(node index, node)`: new nodes written right after that node, in the order given
    /// (which keeps the node list topologically sorted when they read its outputs).
    pub insert_after: Vec<(usize, NodeProto)>,
    /// New nodes appended after every existing one.
    pub append_nodes: Vec<NodeProto>,
    /// New nodes written before every existing one (they may read only graph inputs and
    /// initializers).
    pub prepend_nodes: Vec<NodeProto>,
    /// New graph outputs, after the existing ones.
    pub add_outputs: Vec<ValueInfoProto>,
    /// New graph inputs, after the existing ones (an input that shares its name with an
    /// initializer is optional: the initializer is its default).
    pub add_inputs: Vec<ValueInfoProto>,
    /// Model metadata (`metadata_props`) to set: an existing entry with the same key is
    /// dropped, since ONNX requires keys to be unique.
    pub set_metadata: Vec<(String, String)>,
}

/// Copies the serialized model `original`, applying `edit` to its main graph.
///
/// Fails with [`Error::InvalidModel`] if the edit names an initializer, node or slot the model
/// does not have, and with [`Error::Protobuf`] if `original` is not well-formed.
pub fn rewrite_model(original: &[u8], edit: &ModelEdit) -> Result<Vec<u8>> {
    let meta_keys: HashSet<&str> = edit.set_metadata.iter().map(|(k, _)| k.as_str()).collect();
    let mut e = Encoder::new();
    let mut r = Reader::new(original);
    let mut graphs = 0;
    while let Some((n, f)) = r.next_field()? {
        match n {
            7 => {
                graphs += 1;
                let g = f.bytes("graph")?;
                e.message(7, |out| rewrite_graph(out, g, edit))?;
            }
            14 => {
                let (k, _) = read_pair(f.bytes("metadata_props")?)?;
                if !meta_keys.contains(k.as_str()) {
                    e.field(n, f);
                }
            }
            _ => e.field(n, f),
        }
    }
    if graphs != 1 {
        return Err(Error::Protobuf(format!("a ModelProto has one graph, this one has {graphs}")));
    }
    for (k, v) in &edit.set_metadata {
        string_pair(&mut e, 14, k, v)?;
    }
    Ok(e.into_bytes())
}

fn read_pair(b: &[u8]) -> Result<(String, String)> {
    let mut r = Reader::new(b);
    let (mut k, mut v) = (String::new(), String::new());
    while let Some((n, f)) = r.next_field()? {
        match n {
            1 => k = f.string("key")?,
            2 => v = f.string("value")?,
            _ => {}
        }
    }
    Ok((k, v))
}

/// The `name` of a serialized `TensorProto`, without decoding its data.
fn tensor_name(b: &[u8]) -> Result<String> {
    let mut r = Reader::new(b);
    let mut name = String::new();
    while let Some((n, f)) = r.next_field()? {
        if n == 8 {
            name = f.string("tensor name")?;
        }
    }
    Ok(name)
}

/// `(slot, new name)` pairs for one node's inputs or outputs.
type Renames<'a> = Vec<(usize, &'a str)>;

fn rewrite_graph(e: &mut Encoder, graph: &[u8], edit: &ModelEdit) -> Result<()> {
    let mut replace: HashMap<&str, &TensorProto> = HashMap::new();
    for t in &edit.replace_initializers {
        if replace.insert(t.name.as_str(), t).is_some() {
            return Err(Error::InvalidModel(format!("initializer `{}` is replaced twice", t.name)));
        }
    }
    let mut node_edits: HashMap<usize, (Renames<'_>, Renames<'_>)> = HashMap::new();
    for (node, slot, name) in &edit.rename_inputs {
        node_edits.entry(*node).or_default().0.push((*slot, name));
    }
    for (node, slot, name) in &edit.rename_outputs {
        node_edits.entry(*node).or_default().1.push((*slot, name));
    }
    let mut replaced = HashSet::new();
    let mut node_index = 0usize;
    let mut r = Reader::new(graph);
    while let Some((n, f)) = r.next_field()? {
        match n {
            1 => {
                if node_index == 0 {
                    for node in &edit.prepend_nodes {
                        e.message(1, |m| encode_node(m, node))?;
                    }
                }
                match node_edits.get(&node_index) {
                    Some((ins, outs)) => {
                        let b = f.bytes("node")?;
                        e.message(1, |out| rewrite_node(out, b, ins, outs, node_index))?;
                    }
                    None => e.field(n, f),
                }
                for (_, node) in edit.insert_after.iter().filter(|(at, _)| *at == node_index) {
                    e.message(1, |m| encode_node(m, node))?;
                }
                node_index += 1;
            }
            5 => {
                let b = f.bytes("initializer")?;
                let name = tensor_name(b)?;
                match replace.get(name.as_str()) {
                    Some(t) => {
                        e.message(5, |m| encode_tensor(m, t))?;
                        replaced.insert(name);
                    }
                    None => e.field(n, f),
                }
            }
            _ => e.field(n, f),
        }
    }
    if let Some(t) = edit.replace_initializers.iter().find(|t| !replaced.contains(&t.name)) {
        return Err(Error::InvalidModel(format!("the graph has no initializer `{}` to replace", t.name)));
    }
    let bad_node = node_edits.keys().chain(edit.insert_after.iter().map(|(i, _)| i)).find(|&&i| i >= node_index);
    if let Some(i) = bad_node {
        return Err(Error::InvalidModel(format!("node index {i} is out of range: the graph has {node_index} nodes")));
    }
    for t in &edit.add_initializers {
        e.message(5, |m| encode_tensor(m, t))?;
    }
    let prepend_late = if node_index == 0 { edit.prepend_nodes.as_slice() } else { &[] };
    for node in prepend_late.iter().chain(&edit.append_nodes) {
        e.message(1, |m| encode_node(m, node))?;
    }
    for v in &edit.add_inputs {
        e.message(11, |m| encode_value_info(m, v))?;
    }
    for v in &edit.add_outputs {
        e.message(12, |m| encode_value_info(m, v))?;
    }
    Ok(())
}

fn rewrite_node(e: &mut Encoder, node: &[u8], ins: &[(usize, &str)], outs: &[(usize, &str)], index: usize) -> Result<()> {
    let (mut i, mut o) = (0usize, 0usize);
    let mut r = Reader::new(node);
    while let Some((n, f)) = r.next_field()? {
        match n {
            1 => {
                match ins.iter().find(|(slot, _)| *slot == i) {
                    Some((_, name)) => e.string(1, name),
                    None => e.field(n, f),
                }
                i += 1;
            }
            2 => {
                match outs.iter().find(|(slot, _)| *slot == o) {
                    Some((_, name)) => e.string(2, name),
                    None => e.field(n, f),
                }
                o += 1;
            }
            _ => e.field(n, f),
        }
    }
    if let Some((slot, _)) = ins.iter().find(|(s, _)| *s >= i) {
        return Err(Error::InvalidModel(format!("node {index} has {i} inputs, no input slot {slot}")));
    }
    if let Some((slot, _)) = outs.iter().find(|(s, _)| *s >= o) {
        return Err(Error::InvalidModel(format!("node {index} has {o} outputs, no output slot {slot}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
