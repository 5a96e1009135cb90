//! The subset of ONNX's protobuf messages kilotune reads, decoded with [`super::wire`].
//!
//! Field numbers follow `onnx.proto` (IR version 10). Unknown fields are skipped, as protobuf
//! requires. Nested graphs (control flow) are decoded only to bound their nesting
//! ([`MAX_DEPTH`]) and then refused by the importer, since no supported op carries one.

use super::wire::Reader;
use crate::error::{Error, Result};

/// `ModelProto`.
#[derive(Debug, Default)]
pub struct ModelProto {
    /// The IR version.
    pub ir_version: i64,
    /// `(domain, version)` pairs.
    pub opset_import: Vec<(String, i64)>,
    /// The producer's name (e.g. `pytorch`, `onnx.quantize`).
    pub producer_name: String,
    /// The main graph.
    pub graph: GraphProto,
    /// Model-level metadata.
    pub metadata_props: Vec<(String, String)>,
}

/// `GraphProto`.
#[derive(Debug, Default)]
pub struct GraphProto {
    /// The graph's name.
    pub name: String,
    /// Nodes in topological order.
    pub node: Vec<NodeProto>,
    /// Constant tensors.
    pub initializer: Vec<TensorProto>,
    /// Declared inputs (may include initializers in old IR versions).
    pub input: Vec<ValueInfoProto>,
    /// Declared outputs.
    pub output: Vec<ValueInfoProto>,
}

/// `NodeProto`.
#[derive(Debug, Default)]
pub struct NodeProto {
    /// Input value names; an empty name is an omitted optional input.
    pub input: Vec<String>,
    /// Output value names.
    pub output: Vec<String>,
    /// The node's name.
    pub name: String,
    /// The operator.
    pub op_type: String,
    /// The operator's domain (empty = `ai.onnx`).
    pub domain: String,
    /// Attributes.
    pub attribute: Vec<AttributeProto>,
    /// Per-node metadata (the dynamo exporter writes `pkg.torch.onnx.name_scopes` here).
    pub metadata_props: Vec<(String, String)>,
}

/// `AttributeProto` (graph-valued attributes are refused).
#[derive(Debug, Default, Clone)]
pub struct AttributeProto {
    /// The attribute's name.
    pub name: String,
    /// `AttributeType` code.
    pub kind: i64,
    /// FLOAT.
    pub f: f32,
    /// INT.
    pub i: i64,
    /// STRING.
    pub s: Vec<u8>,
    /// TENSOR.
    pub t: Option<TensorProto>,
    /// FLOATS.
    pub floats: Vec<f32>,
    /// INTS.
    pub ints: Vec<i64>,
    /// Whether the attribute holds a graph (unsupported).
    pub has_graph: bool,
}

/// `TensorProto`.
#[derive(Debug, Default, Clone)]
pub struct TensorProto {
    /// The tensor's name.
    pub name: String,
    /// Dimensions.
    pub dims: Vec<i64>,
    /// `DataType` code.
    pub data_type: i32,
    /// Little-endian packed elements.
    pub raw_data: Vec<u8>,
    /// FLOAT elements when not raw.
    pub float_data: Vec<f32>,
    /// INT32/INT8/UINT8/BOOL/... elements when not raw.
    pub int32_data: Vec<i64>,
    /// INT64 elements when not raw.
    pub int64_data: Vec<i64>,
    /// DOUBLE elements when not raw.
    pub double_data: Vec<f64>,
    /// `external_data` key/value pairs.
    pub external_data: Vec<(String, String)>,
    /// 1 = EXTERNAL.
    pub data_location: i64,
}

/// `ValueInfoProto`, reduced to a tensor's element type and dims.
#[derive(Debug, Default, Clone)]
pub struct ValueInfoProto {
    /// The value's name.
    pub name: String,
    /// `DataType` code, 0 if unknown.
    pub elem_type: i32,
    /// Dims: a fixed size or a symbolic name.
    pub dims: Vec<DimProto>,
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimProto {
    /// A fixed size.
    Value(i64),
    /// A named, run-time size (e.g. `batch`).
    Param(String),
    /// Unknown.
    Unknown,
}

/// How deep sub-messages may nest; ONNX models without control flow need under 10, and each
/// level of subgraph (an `If` inside a `Loop` body...) adds 3.
pub const MAX_DEPTH: usize = 32;

fn deeper(depth: usize) -> Result<usize> {
    if depth >= MAX_DEPTH {
        return Err(Error::Protobuf(format!("messages nest deeper than {MAX_DEPTH}")));
    }
    Ok(depth + 1)
}

fn string_pair(b: &[u8]) -> Result<(String, String)> {
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

impl ModelProto {
    /// Decodes a serialized `ModelProto`.
    pub fn decode(buf: &[u8]) -> Result<ModelProto> {
        let mut m = ModelProto::default();
        let mut r = Reader::new(buf);
        let mut saw_graph = false;
        while let Some((n, f)) = r.next_field()? {
            match n {
                1 => m.ir_version = f.int("ir_version")?,
                2 => m.producer_name = f.string("producer_name")?,
                7 => {
                    m.graph = GraphProto::decode(f.bytes("graph")?, 1)?;
                    saw_graph = true;
                }
                8 => {
                    let mut r = Reader::new(f.bytes("opset_import")?);
                    let (mut d, mut v) = (String::new(), 0);
                    while let Some((n, f)) = r.next_field()? {
                        match n {
                            1 => d = f.string("domain")?,
                            2 => v = f.int("version")?,
                            _ => {}
                        }
                    }
                    m.opset_import.push((d, v));
                }
                14 => m.metadata_props.push(string_pair(f.bytes("metadata_props")?)?),
                _ => {}
            }
        }
        if !saw_graph {
            return Err(Error::Protobuf("ModelProto has no graph".into()));
        }
        Ok(m)
    }
}

impl GraphProto {
    fn decode(buf: &[u8], depth: usize) -> Result<GraphProto> {
        let depth = deeper(depth)?;
        let mut g = GraphProto::default();
        let mut r = Reader::new(buf);
        while let Some((n, f)) = r.next_field()? {
            match n {
                1 => g.node.push(NodeProto::decode(f.bytes("node")?, depth)?),
                2 => g.name = f.string("name")?,
                5 => g.initializer.push(TensorProto::decode(f.bytes("initializer")?, depth)?),
                11 => g.input.push(ValueInfoProto::decode(f.bytes("input")?, depth)?),
                12 => g.output.push(ValueInfoProto::decode(f.bytes("output")?, depth)?),
                15 => return Err(Error::Protobuf("sparse initializers are not supported".into())),
                _ => {}
            }
        }
        Ok(g)
    }
}

impl NodeProto {
    fn decode(buf: &[u8], depth: usize) -> Result<NodeProto> {
        let depth = deeper(depth)?;
        let mut node = NodeProto::default();
        let mut r = Reader::new(buf);
        while let Some((n, f)) = r.next_field()? {
            match n {
                1 => node.input.push(f.string("input")?),
                2 => node.output.push(f.string("output")?),
                3 => node.name = f.string("name")?,
                4 => node.op_type = f.string("op_type")?,
                5 => node.attribute.push(AttributeProto::decode(f.bytes("attribute")?, depth)?),
                7 => node.domain = f.string("domain")?,
                9 => node.metadata_props.push(string_pair(f.bytes("metadata_props")?)?),
                _ => {}
            }
        }
        Ok(node)
    }
}

impl AttributeProto {
    fn decode(buf: &[u8], depth: usize) -> Result<AttributeProto> {
        let depth = deeper(depth)?;
        let mut a = AttributeProto::default();
        let mut r = Reader::new(buf);
        while let Some((n, f)) = r.next_field()? {
            match n {
                1 => a.name = f.string("attribute name")?,
                2 => a.f = f.float("f")?,
                3 => a.i = f.int("i")?,
                4 => a.s = f.bytes("s")?.to_vec(),
                5 => a.t = Some(TensorProto::decode(f.bytes("t")?, depth)?),
                // Subgraphs (`If`, `Loop`, `Scan` bodies) are refused by the importer, but
                // decoded here first so that their nesting is bounded like everything else's
                // and a malformed one is reported as such.
                6 | 11 => {
                    GraphProto::decode(f.bytes("graph attribute")?, depth)?;
                    a.has_graph = true;
                }
                7 => f.push_floats(&mut a.floats, "floats")?,
                8 => f.push_ints(&mut a.ints, "ints")?,
                20 => a.kind = f.int("type")?,
                _ => {}
            }
        }
        Ok(a)
    }
}

impl TensorProto {
    fn decode(buf: &[u8], depth: usize) -> Result<TensorProto> {
        deeper(depth)?;
        let mut t = TensorProto::default();
        let mut r = Reader::new(buf);
        while let Some((n, f)) = r.next_field()? {
            match n {
                1 => f.push_ints(&mut t.dims, "dims")?,
                2 => t.data_type = i32::try_from(f.int("data_type")?).unwrap_or(-1),
                4 => f.push_floats(&mut t.float_data, "float_data")?,
                5 => f.push_ints(&mut t.int32_data, "int32_data")?,
                7 => f.push_ints(&mut t.int64_data, "int64_data")?,
                8 => t.name = f.string("tensor name")?,
                9 => t.raw_data = f.bytes("raw_data")?.to_vec(),
                10 => f.push_doubles(&mut t.double_data, "double_data")?,
                13 => t.external_data.push(string_pair(f.bytes("external_data")?)?),
                14 => t.data_location = f.int("data_location")?,
                _ => {}
            }
        }
        Ok(t)
    }
}

impl ValueInfoProto {
    fn decode(buf: &[u8], depth: usize) -> Result<ValueInfoProto> {
        let depth = deeper(depth)?;
        let mut v = ValueInfoProto::default();
        let mut r = Reader::new(buf);
        while let Some((n, f)) = r.next_field()? {
            match n {
                1 => v.name = f.string("value name")?,
                2 => decode_type(f.bytes("type")?, &mut v, depth)?,
                _ => {}
            }
        }
        Ok(v)
    }
}

fn decode_type(buf: &[u8], v: &mut ValueInfoProto, depth: usize) -> Result<()> {
    let depth = deeper(depth)?;
    let mut r = Reader::new(buf);
    while let Some((n, f)) = r.next_field()? {
        if n != 1 {
            continue; // sequence/map/optional types: not used by supported models
        }
        let mut tr = Reader::new(f.bytes("tensor_type")?);
        while let Some((n, f)) = tr.next_field()? {
            match n {
                1 => v.elem_type = i32::try_from(f.int("elem_type")?).unwrap_or(-1),
                2 => {
                    deeper(depth)?;
                    let mut sr = Reader::new(f.bytes("shape")?);
                    while let Some((n, f)) = sr.next_field()? {
                        if n != 1 {
                            continue;
                        }
                        let mut dr = Reader::new(f.bytes("dim")?);
                        let mut dim = DimProto::Unknown;
                        while let Some((n, f)) = dr.next_field()? {
                            match n {
                                1 => dim = DimProto::Value(f.int("dim_value")?),
                                2 => dim = DimProto::Param(f.string("dim_param")?),
                                _ => {}
                            }
                        }
                        v.dims.push(dim);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

