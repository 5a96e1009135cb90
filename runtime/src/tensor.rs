//! Dense tensors as the engine moves them between ops: a shape and shared, typed storage.
//!
//! Storage is reference-counted so constants (weights) and metadata-only ops (`Reshape`,
//! `Squeeze`, ...) never copy data.

use std::sync::Arc;

use crate::error::{Error, Result};

/// The largest rank kilotune handles; ONNX transformer exports stay well below it.
pub const MAX_RANK: usize = 8;

/// A tensor's dimensions, inline and allocation-free.
pub type Shape = heapless::Vec<usize, MAX_RANK>;

/// Builds a [`Shape`] from a slice, failing when the rank exceeds [`MAX_RANK`].
pub fn shape_of(dims: &[usize]) -> Result<Shape> {
    Shape::from_slice(dims)
        .map_err(|_| Error::InvalidModel(format!("rank {} exceeds the maximum of {MAX_RANK}", dims.len())))
}

/// Element types the engine computes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit signed integer (token ids, shapes, indices).
    I64,
    /// 32-bit signed integer (integer matmul accumulators).
    I32,
    /// 8-bit signed integer (quantized weights).
    I8,
    /// 8-bit unsigned integer (quantized activations).
    U8,
    /// Boolean masks.
    Bool,
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        })
    }
}

impl DType {
    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Bool => 9,
        }
    }

    /// The dtype for an ONNX `TensorProto.DataType` code, if kilotune computes with it.
    pub fn from_onnx(code: i32) -> Option<DType> {
        Some(match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            6 => DType::I32,
            7 => DType::I64,
            9 => DType::Bool,
            _ => return None,
        })
    }
}

/// Typed, shared storage.
#[derive(Clone, Debug)]
pub enum Data {
    /// f32 elements.
    F32(Arc<Vec<f32>>),
    /// i64 elements.
    I64(Arc<Vec<i64>>),
    /// i32 elements.
    I32(Arc<Vec<i32>>),
    /// i8 elements.
    I8(Arc<Vec<i8>>),
    /// u8 elements.
    U8(Arc<Vec<u8>>),
    /// bool elements.
    Bool(Arc<Vec<bool>>),
}

/// A dense, row-major tensor.
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Shape,
    data: Data,
}

/// Element types that can live in a [`Tensor`].
pub trait Element: Copy + Send + Sync + 'static + std::fmt::Debug + PartialEq {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Wraps a vector into [`Data`].
    fn wrap(v: Vec<Self>) -> Data;
    /// Borrows the elements if `data` holds this type.
    fn view(data: &Data) -> Option<&[Self]>;
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap(v: Vec<Self>) -> Data {
                Data::$variant(Arc::new(v))
            }
            fn view(data: &Data) -> Option<&[Self]> {
                match data {
                    Data::$variant(v) => Some(v.as_slice()),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, F32);
element!(i64, I64);
element!(i32, I32);
element!(i8, I8);
element!(u8, U8);
element!(bool, Bool);

impl Tensor {
    /// A tensor from a shape and matching elements.
    pub fn new<T: Element>(shape: &[usize], data: Vec<T>) -> Result<Tensor> {
        let shape = shape_of(shape)?;
        let n = numel(&shape);
        if n != data.len() {
            return Err(Error::InvalidModel(format!(
                "shape {:?} holds {n} elements but {} were given",
                shape.as_slice(),
                data.len()
            )));
        }
        Ok(Tensor { shape, data: T::wrap(data) })
    }

    /// A tensor from a shape already checked against the data's length (internal fast path).
    pub(crate) fn from_parts<T: Element>(shape: Shape, data: Vec<T>) -> Tensor {
        debug_assert_eq!(numel(&shape), data.len());
        Tensor { shape, data: T::wrap(data) }
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(v: T) -> Tensor {
        Tensor { shape: Shape::new(), data: T::wrap(vec![v]) }
    }

    /// The same data under another shape of the same element count (no copy).
    pub fn reshaped(&self, shape: Shape) -> Result<Tensor> {
        if numel(&shape) != self.len() {
            return Err(Error::InvalidModel(format!(
                "cannot view {:?} as {:?}",
                self.shape.as_slice(),
                shape.as_slice()
            )));
        }
        Ok(Tensor { shape, data: self.data.clone() })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The dimensions as an inline [`Shape`].
    pub fn dims(&self) -> &Shape {
        &self.shape
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The element count.
    pub fn len(&self) -> usize {
        numel(&self.shape)
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.data {
            Data::F32(_) => DType::F32,
            Data::I64(_) => DType::I64,
            Data::I32(_) => DType::I32,
            Data::I8(_) => DType::I8,
            Data::U8(_) => DType::U8,
            Data::Bool(_) => DType::Bool,
        }
    }

    /// The storage.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The elements, if they are of type `T`.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        T::view(&self.data)
    }

    /// The elements as `T`, or a typed error naming what was expected.
    pub fn typed<T: Element>(&self, what: &str) -> Result<&[T]> {
        T::view(&self.data).ok_or_else(|| {
            Error::InvalidModel(format!("{what}: expected {:?}, found {:?}", T::DTYPE, self.dtype()))
        })
    }

    /// Integer elements widened to i64 (shape and index tensors come as i64 or i32).
    pub fn to_i64_vec(&self, what: &str) -> Result<Vec<i64>> {
        match &self.data {
            Data::I64(v) => Ok(v.to_vec()),
            Data::I32(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            Data::U8(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            Data::I8(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            Data::Bool(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            Data::F32(_) => Err(Error::InvalidModel(format!("{what}: expected an integer tensor, found F32"))),
        }
    }

    /// Elements converted to f32 (for comparisons and tests).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.to_vec(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::I32(v) => v.iter().map(|&x| x as f32).collect(),
            Data::I8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Data::U8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Data::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }

    /// Converts to an `ndarray` array (the public API's currency).
    pub fn to_ndarray<T: Element>(&self) -> Result<ndarray::ArrayD<T>> {
        let v = self.typed::<T>("output")?.to_vec();
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(self.shape()), v)
            .map_err(|e| Error::InvalidModel(format!("output shape: {e}")))
    }

    /// Builds a tensor from any `ndarray` array view.
    pub fn from_ndarray<T: Element, D: ndarray::Dimension>(a: ndarray::ArrayView<'_, T, D>) -> Result<Tensor> {
        let shape = a.shape().to_vec();
        Tensor::new(&shape, a.iter().copied().collect())
    }
}

/// The element count of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}
