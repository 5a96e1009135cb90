//! Quantization ops: `DynamicQuantizeLinear` and `DequantizeLinear`.

use super::{norm_axis, shape_err};
use crate::error::Result;
use crate::kernels::quantize::quantize_dynamic_u8;
use crate::tensor::{Data, Tensor};

/// `DynamicQuantizeLinear(x)` → (y: u8, scale: f32, zero_point: u8).
pub fn dynamic_quantize_linear(x: &Tensor) -> Result<Vec<Tensor>> {
    let v = x.typed::<f32>("DynamicQuantizeLinear input")?;
    let mut q = vec![0u8; v.len()];
    let (scale, zp) = quantize_dynamic_u8(v, &mut q);
    Ok(vec![Tensor::from_parts(x.dims().clone(), q), Tensor::scalar(scale), Tensor::scalar(zp)])
}

/// `DequantizeLinear(x, scale, zero_point?)`, per tensor or per `axis`.
pub fn dequantize_linear(x: &Tensor, scale: &Tensor, zp: Option<&Tensor>, axis: i64) -> Result<Tensor> {
    let s = scale.typed::<f32>("DequantizeLinear scale")?;
    let z: Vec<i64> = match zp {
        Some(z) => z.to_i64_vec("DequantizeLinear zero point")?,
        None => vec![0],
    };
    let vals: Vec<i64> = match x.data() {
        Data::I8(_) | Data::U8(_) | Data::I32(_) => x.to_i64_vec("DequantizeLinear input")?,
        _ => return Err(shape_err(format!("DequantizeLinear of {:?}", x.dtype()))),
    };
    let (per, inner) = if s.len() == 1 {
        (1, 1)
    } else {
        let a = norm_axis(axis, x.rank())?;
        if x.shape()[a] != s.len() {
            return Err(shape_err("DequantizeLinear: scale length does not match the axis"));
        }
        (s.len(), x.shape()[a + 1..].iter().product::<usize>())
    };
    if z.len() != 1 && z.len() != per {
        return Err(shape_err("DequantizeLinear: zero point length does not match the scale"));
    }
    let out = vals
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let c = (i / inner) % per;
            let zc = if z.len() == 1 { z[0] } else { z[c] };
            (q - zc) as f32 * s[c]
        })
        .collect();
    Ok(Tensor::from_parts(x.dims().clone(), out))
}
