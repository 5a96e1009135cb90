//! A bounded GGUF reader: header, metadata, tensor infos and the data section, with every
//! length, count, offset and shape checked against the bytes actually present before anything
//! is reserved or indexed.
//!
//! Layout (little-endian; v2 and v3 share it, v3 only adds big-endian files, which this reader
//! refuses through their byte-swapped version):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, value_type u32, value)
//! tensor_count × (name: string, n_dims u32, ne: n_dims × u64, ggml_type u32, offset u64)
//! padding to general.alignment (default 32)
//! data section: each tensor at its offset, a multiple of the alignment
//! string = len u64 + UTF-8 bytes; array = elem_type u32 + count u64 + count × value
//! ```

use std::collections::{BTreeMap, HashSet};

use super::error::GgufError;
use super::quant::{self, GgmlType};

/// The default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// How deep arrays of arrays may nest (GGUF files in practice never nest at all).
pub const MAX_NESTING: usize = 8;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7 (a byte, 0 or 1).
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 9.
    Array(Array),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

/// A metadata array, stored by element type so a long array of small values costs what the
/// file spends on it and no more.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// `string` elements.
    String(Vec<String>),
    /// Nested arrays.
    Array(Vec<Array>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f64` elements.
    F64(Vec<f64>),
}

impl Array {
    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF name of the element type (`"string"`).
    pub fn elem_type_name(&self) -> &'static str {
        TYPE_NAMES[match self {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::U16(_) => 2,
            Array::I16(_) => 3,
            Array::U32(_) => 4,
            Array::I32(_) => 5,
            Array::F32(_) => 6,
            Array::Bool(_) => 7,
            Array::String(_) => 8,
            Array::Array(_) => 9,
            Array::U64(_) => 10,
            Array::I64(_) => 11,
            Array::F64(_) => 12,
        }]
    }
}

/// GGUF's value type names, by type id.
const TYPE_NAMES: [&str; 13] = ["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"];

/// The fewest bytes an element of each type takes in the file (a string: its length; an array:
/// its element type and count), used to bound counts before reserving.
const MIN_SIZES: [u64; 13] = [1, 1, 2, 2, 4, 4, 4, 1, 8, 12, 8, 8, 8];

impl Value {
    /// The GGUF type id of the value (`4` for u32, `9` for an array), as the file writes it.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The GGUF name of the value's type (`"u32"`, `"array"`).
    pub fn type_name(&self) -> &'static str {
        TYPE_NAMES[self.type_id() as usize]
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as f32, if it is a float (f64 is rounded to f32).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }
}

/// One tensor's entry in the tensor-info table, checked against the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions as ggml lists them, innermost first: `dims[0]` is the row length (for a
    /// `Linear` weight, the input features).
    pub dims: Vec<u64>,
    /// The element type.
    pub ggml_type: GgmlType,
    /// Where the tensor starts in the data section.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// The number of elements.
    pub fn n_elements(&self) -> u64 {
        // Bounded by `i64::MAX` when the info was read.
        self.dims.iter().product()
    }
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Clone, Debug)]
pub struct GgufFile<'a> {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or the default 32.
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_start: u64,
    data: &'a [u8],
}

/// A cursor over the file that refuses to read past its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn take(&mut self, n: usize, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        let rest = &self.bytes[self.pos..];
        let Some(out) = rest.get(..n) else {
            return Err(GgufError::Truncated { what: what(), offset: self.offset(), needed: n as u64, available: rest.len() as u64 });
        };
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N], GgufError> {
        let b = self.take(N, what)?;
        Ok(b.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string: its length is checked against the bytes left before it is read.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(|| format!("{} (length)", what()))?;
        let offset = self.offset();
        let available = self.remaining();
        if len > available {
            return Err(GgufError::StringPastEnd { what: what(), offset, length: len, available });
        }
        let bytes = self.take(len as usize, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::NonUtf8 { what: what(), offset }),
        }
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in the rest of the file,
    /// and returns the count as a `usize` that is safe to reserve.
    fn count(&mut self, count: u64, min_size: u64, what: impl FnOnce() -> String) -> Result<usize, GgufError> {
        let min_bytes = count.saturating_mul(min_size);
        let available = self.remaining();
        if min_bytes > available {
            return Err(GgufError::CountPastEnd { what: what(), offset: self.offset(), count, min_bytes, available });
        }
        // `count ≤ remaining ≤ usize::MAX` since every item takes at least one byte.
        Ok(count as usize)
    }
}

impl<'a> GgufFile<'a> {
    /// Parses a GGUF file, checking every structure against the bytes present. Tensor data is
    /// only bounded and checked here, not read.
    pub fn parse(bytes: &'a [u8]) -> Result<GgufFile<'a>, GgufError> {
        let mut c = Cursor { bytes, pos: 0 };
        if bytes.get(..4) != Some(b"GGUF") {
            return Err(GgufError::BadMagic { found: bytes[..bytes.len().min(4)].to_vec() });
        }
        c.pos = 4;
        let version = c.u32(|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count = c.u64(|| "tensor count".into())?;
        let kv_count = c.u64(|| "metadata count".into())?;

        // A metadata entry is at least a key length, a type id and one byte.
        let kv_count = c.count(kv_count, 8 + 4 + 1, || "metadata entries".into())?;
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let type_offset = c.offset();
            let type_id = c.u32(|| format!("metadata `{key}` type"))?;
            let value = read_value(&mut c, &key, type_id, type_offset, 0)?;
            if metadata.contains_key(&key) {
                return Err(GgufError::DuplicateKey { key });
            }
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) => u64::from(*a),
            Some(v) => return Err(GgufError::MetadataType { key: "general.alignment".into(), expected: "u32", found: v.type_name() }),
        };
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment { alignment });
        }

        // A tensor info is at least a name length, n_dims, a type and an offset.
        let tensor_count = c.count(tensor_count, 8 + 4 + 4 + 8, || "tensor infos".into())?;
        let mut tensors = Vec::with_capacity(tensor_count);
        let mut names = HashSet::with_capacity(tensor_count);
        for i in 0..tensor_count {
            let name = c.string(&|| format!("tensor name #{i}"))?;
            let n_dims = c.u32(|| format!("tensor `{name}` rank"))?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::TooManyDims { tensor: name, n_dims, max: MAX_DIMS });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(|| format!("tensor `{name}` dimension {d}"))?);
            }
            let type_id = c.u32(|| format!("tensor `{name}` type"))?;
            let offset = c.u64(|| format!("tensor `{name}` offset"))?;
            let Some(ggml_type) = GgmlType::from_id(type_id) else {
                return Err(GgufError::BadTensorType { tensor: name, type_id });
            };
            let size = tensor_size(&name, &dims, ggml_type)?;
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor { name });
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset, size });
        }

        // The data section starts at the next multiple of the alignment. A file without tensors
        // may end before it.
        let data_start = c.offset().div_ceil(alignment).saturating_mul(alignment);
        let data = bytes.get(data_start.min(bytes.len() as u64) as usize..).unwrap_or(&[]);
        let data_len = data.len() as u64;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor { tensor: t.name.clone(), offset: t.offset, alignment });
            }
            if t.offset.checked_add(t.size).is_none_or(|end| end > data_len) {
                return Err(GgufError::TensorOutOfBounds { tensor: t.name.clone(), offset: t.offset, size: t.size, data_len });
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            // In bounds, so the sum cannot overflow. Empty tensors overlap nothing.
            if w[0].size > 0 && w[1].size > 0 && w[0].offset + w[0].size > w[1].offset {
                return Err(GgufError::OverlappingTensors { first: w[0].name.clone(), second: w[1].name.clone() });
            }
        }
        Ok(GgufFile { version, metadata, tensors, alignment, data_start, data })
    }

    /// A tensor's info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's raw bytes (checked in bounds by [`GgufFile::parse`]).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &'a [u8] {
        let start = info.offset as usize;
        &self.data[start..start + info.size as usize]
    }

    /// A tensor's elements as f32, in ggml order (innermost dimension fastest).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        quant::dequantize(info.ggml_type, self.tensor_bytes(info))
            .ok_or_else(|| GgufError::UnsupportedTensorType { tensor: info.name.clone(), ggml_type: info.ggml_type.name() })
    }

    /// A metadata value, or [`GgufError::MissingKey`].
    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            v => Err(GgufError::MetadataType { key: key.into(), expected: "string", found: v.type_name() }),
        }
    }

    /// A non-negative integer value of any width, as `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        let v = self.get(key)?;
        let n = v.as_u64().ok_or(GgufError::MetadataType { key: key.into(), expected: "a non-negative integer", found: v.type_name() })?;
        usize::try_from(n).map_err(|_| GgufError::BadConfig { key: key.into(), reason: format!("{n} does not fit in usize") })
    }

    /// A float value (f32 or f64).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.get(key)?;
        v.as_f32().ok_or(GgufError::MetadataType { key: key.into(), expected: "f32", found: v.type_name() })
    }
}

/// Checks a tensor's shape (each dimension, the element count and the byte size stay within
/// `i64::MAX`, as ggml requires) and returns its size in bytes.
fn tensor_size(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let overflow = || GgufError::ShapeOverflow { tensor: name.into(), dims: dims.to_vec() };
    let limit = i64::MAX as u64;
    let mut n: u64 = 1;
    for &d in dims {
        n = n.checked_mul(d).filter(|&n| n <= limit && d <= limit).ok_or_else(overflow)?;
    }
    let (per_block, block_bytes) = ty.block();
    let row = dims.first().copied().unwrap_or(1);
    if row % per_block != 0 {
        return Err(GgufError::BlockMisfit { tensor: name.into(), ggml_type: ty.name(), block: per_block, row });
    }
    (n / per_block).checked_mul(block_bytes).filter(|&s| s <= limit).ok_or_else(overflow)
}

fn read_value(c: &mut Cursor<'_>, key: &str, type_id: u32, type_offset: u64, depth: usize) -> Result<Value, GgufError> {
    let what = || format!("metadata `{key}`");
    Ok(match type_id {
        0 => Value::U8(c.array::<1>(what)?[0]),
        1 => Value::I8(c.array::<1>(what)?[0] as i8),
        2 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        3 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        4 => Value::U32(u32::from_le_bytes(c.array(what)?)),
        5 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        6 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        7 => Value::Bool(read_bool(c, key)?),
        8 => Value::String(c.string(&what)?),
        9 => Value::Array(read_array(c, key, depth + 1)?),
        10 => Value::U64(u64::from_le_bytes(c.array(what)?)),
        11 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        12 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        _ => return Err(GgufError::BadValueType { key: key.into(), type_id, offset: type_offset }),
    })
}

fn read_bool(c: &mut Cursor<'_>, key: &str) -> Result<bool, GgufError> {
    let offset = c.offset();
    match c.array::<1>(|| format!("metadata `{key}`"))?[0] {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(GgufError::BadBool { key: key.into(), byte, offset }),
    }
}

fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Array, GgufError> {
    if depth > MAX_NESTING {
        return Err(GgufError::NestingTooDeep { key: key.into(), max: MAX_NESTING });
    }
    let type_offset = c.offset();
    let elem = c.u32(|| format!("metadata `{key}` array type"))?;
    let count = c.u64(|| format!("metadata `{key}` array length"))?;
    let Some(&min_size) = MIN_SIZES.get(elem as usize) else {
        return Err(GgufError::BadValueType { key: key.into(), type_id: elem, offset: type_offset });
    };
    let n = c.count(count, min_size, || format!("metadata `{key}` array"))?;
    let what = || format!("metadata `{key}` array");
    /// Reads `n` fixed-size little-endian elements (in bounds: `count` checked them).
    macro_rules! fixed {
        ($variant:ident, $t:ty) => {{
            let size = std::mem::size_of::<$t>();
            let bytes = c.take(n * size, what)?;
            Array::$variant(bytes.chunks_exact(size).map(|b| <$t>::from_le_bytes(b.try_into().expect("chunk of the size"))).collect())
        }};
    }
    Ok(match elem {
        0 => fixed!(U8, u8),
        1 => fixed!(I8, i8),
        2 => fixed!(U16, u16),
        3 => fixed!(I16, i16),
        4 => fixed!(U32, u32),
        5 => fixed!(I32, i32),
        6 => fixed!(F32, f32),
        7 => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_bool(c, key)?);
            }
            Array::Bool(v)
        }
        8 => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(&|| format!("metadata `{key}` element {i}"))?);
            }
            Array::String(v)
        }
        9 => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(v)
        }
        10 => fixed!(U64, u64),
        11 => fixed!(I64, i64),
        _ => fixed!(F64, f64),
    })
}
