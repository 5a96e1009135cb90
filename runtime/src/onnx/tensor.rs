//! `TensorProto` → [`Tensor`].

use std::path::Path;

use super::external::read_external;
use super::proto::TensorProto;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Converts an ONNX tensor into an engine tensor, reading external data from `dir` if needed.
pub fn tensor_from_proto(t: &TensorProto, dir: Option<&Path>) -> Result<Tensor> {
    let bad = |reason: String| Error::InvalidModel(format!("tensor `{}`: {reason}", t.name));
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        dims.push(usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}")))?);
    }
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("element count overflows".into()))?;
    let external;
    let raw: &[u8] = if t.data_location == 1 {
        external = read_external(t, dir)?;
        &external
    } else {
        &t.raw_data
    };
    let dtype = DType::from_onnx(t.data_type);
    // f64 tensors appear as tiny constants in some exports; they are narrowed to f32.
    let is_f64 = t.data_type == 11;
    let elem = match dtype {
        Some(DType::F32) | Some(DType::I32) => 4,
        Some(DType::I64) => 8,
        Some(DType::I8) | Some(DType::U8) | Some(DType::Bool) => 1,
        None if is_f64 => 8,
        None => return Err(bad(format!("unsupported data type {}", t.data_type))),
    };
    let use_raw = !raw.is_empty() || t.data_location == 1;
    if use_raw && Some(raw.len()) != n.checked_mul(elem) {
        return Err(bad(format!("{} bytes of data for {n} elements", raw.len())));
    }
    let check = |len: usize| if len == n { Ok(()) } else { Err(bad(format!("{len} values for {n} elements"))) };
    let tensor = match (dtype, use_raw) {
        (Some(DType::F32), true) => Tensor::new(&dims, raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())?,
        (Some(DType::F32), false) => {
            check(t.float_data.len())?;
            Tensor::new(&dims, t.float_data.clone())?
        }
        (Some(DType::I64), true) => Tensor::new(&dims, raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunk"))).collect())?,
        (Some(DType::I64), false) => {
            check(t.int64_data.len())?;
            Tensor::new(&dims, t.int64_data.clone())?
        }
        (Some(DType::I32), true) => Tensor::new(&dims, raw.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())?,
        (Some(DType::I32), false) => {
            check(t.int32_data.len())?;
            Tensor::new(&dims, t.int32_data.iter().map(|&v| v as i32).collect())?
        }
        (Some(DType::I8), true) => Tensor::new(&dims, raw.iter().map(|&b| b as i8).collect())?,
        (Some(DType::I8), false) => {
            check(t.int32_data.len())?;
            Tensor::new(&dims, t.int32_data.iter().map(|&v| v as i8).collect())?
        }
        (Some(DType::U8), true) => Tensor::new(&dims, raw.to_vec())?,
        (Some(DType::U8), false) => {
            check(t.int32_data.len())?;
            Tensor::new(&dims, t.int32_data.iter().map(|&v| v as u8).collect())?
        }
        (Some(DType::Bool), true) => Tensor::new(&dims, raw.iter().map(|&b| b != 0).collect())?,
        (Some(DType::Bool), false) => {
            check(t.int32_data.len())?;
            Tensor::new(&dims, t.int32_data.iter().map(|&v| v != 0).collect())?
        }
        (None, true) => Tensor::new(&dims, raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32).collect())?,
        (None, false) => {
            check(t.double_data.len())?;
            Tensor::new(&dims, t.double_data.iter().map(|&v| v as f32).collect())?
        }
    };
    Ok(tensor)
}
