//! A small GGUF writer for the tests, written from the format description rather than from the
//! reader, and the tests that build files with it: well-formed ones that must read back as
//! written, and malformed ones that must be refused with the right error.

mod hostile;
mod llama;

use super::quant::GgmlType;
use super::reader::{Array, Value};

/// A GGUF file to write.
#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
    /// The alignment used to place tensors (write `general.alignment` in `kv` to declare it).
    pub alignment: u64,
}

/// A tensor to write: dims innermost first, raw bytes, and the offset its info states (`None`:
/// where its bytes are, the next aligned offset; the bytes go there either way).
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub bytes: Vec<u8>,
    pub offset: Option<u64>,
}

impl TensorSpec {
    pub fn f32(name: &str, dims: &[u64], values: &[f32]) -> TensorSpec {
        TensorSpec { name: name.into(), dims: dims.to_vec(), type_id: 0, bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(), offset: None }
    }

    pub fn raw(name: &str, dims: &[u64], ty: GgmlType, bytes: Vec<u8>) -> TensorSpec {
        TensorSpec { name: name.into(), dims: dims.to_vec(), type_id: ty.id(), bytes, offset: None }
    }
}

/// Where the writer put things, for tests that corrupt one field.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Start of each metadata entry (its key's length).
    pub kv: Vec<usize>,
    /// Start of each tensor info (its name's length).
    pub infos: Vec<usize>,
    /// Start of the data section.
    pub data: usize,
}

impl Default for Gguf {
    fn default() -> Gguf {
        Gguf { version: 3, kv: Vec::new(), tensors: Vec::new(), alignment: 32 }
    }
}

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s);
}

fn put_value_body(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s.as_bytes()),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// An array: element type, count, elements (each written as the scalar value would be).
fn put_array(out: &mut Vec<u8>, a: &Array) {
    fn all(out: &mut Vec<u8>, id: u32, items: Vec<Value>) {
        out.extend(id.to_le_bytes());
        out.extend((items.len() as u64).to_le_bytes());
        for v in &items {
            put_value_body(out, v);
        }
    }
    match a {
        Array::U8(v) => all(out, 0, v.iter().map(|&x| Value::U8(x)).collect()),
        Array::I8(v) => all(out, 1, v.iter().map(|&x| Value::I8(x)).collect()),
        Array::U16(v) => all(out, 2, v.iter().map(|&x| Value::U16(x)).collect()),
        Array::I16(v) => all(out, 3, v.iter().map(|&x| Value::I16(x)).collect()),
        Array::U32(v) => all(out, 4, v.iter().map(|&x| Value::U32(x)).collect()),
        Array::I32(v) => all(out, 5, v.iter().map(|&x| Value::I32(x)).collect()),
        Array::F32(v) => all(out, 6, v.iter().map(|&x| Value::F32(x)).collect()),
        Array::Bool(v) => all(out, 7, v.iter().map(|&x| Value::Bool(x)).collect()),
        Array::String(v) => all(out, 8, v.iter().map(|x| Value::String(x.clone())).collect()),
        Array::Array(v) => all(out, 9, v.iter().map(|x| Value::Array(x.clone())).collect()),
        Array::U64(v) => all(out, 10, v.iter().map(|&x| Value::U64(x)).collect()),
        Array::I64(v) => all(out, 11, v.iter().map(|&x| Value::I64(x)).collect()),
        Array::F64(v) => all(out, 12, v.iter().map(|&x| Value::F64(x)).collect()),
    }
}

impl Gguf {
    pub fn with(mut self, key: &str, v: Value) -> Gguf {
        self.kv.push((key.into(), v));
        self
    }

    pub fn tensor(mut self, t: TensorSpec) -> Gguf {
        self.tensors.push(t);
        self
    }

    /// The file's bytes and where its parts are.
    pub fn write(&self) -> (Vec<u8>, Layout) {
        let mut out = b"GGUF".to_vec();
        let mut layout = Layout::default();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            layout.kv.push(out.len());
            put_str(&mut out, k.as_bytes());
            out.extend(v.type_id().to_le_bytes());
            put_value_body(&mut out, v);
        }
        let align = |x: u64| x.div_ceil(self.alignment) * self.alignment;
        let mut next = 0u64;
        let mut placed = Vec::new();
        for t in &self.tensors {
            placed.push(next);
            let offset = t.offset.unwrap_or(next);
            next = align(next + t.bytes.len() as u64);
            layout.infos.push(out.len());
            put_str(&mut out, t.name.as_bytes());
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.type_id.to_le_bytes());
            out.extend(offset.to_le_bytes());
        }
        out.resize(align(out.len() as u64) as usize, 0);
        layout.data = out.len();
        for (t, &offset) in self.tensors.iter().zip(&placed) {
            out.resize(layout.data + offset as usize, 0);
            out.extend(&t.bytes);
        }
        (out, layout)
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.write().0
    }
}
