//! Storage precision: converting a delta's tensors to f16 or int8 for saving, and back to f32.

use half::f16;

use super::error::DeltaError;
use super::format::{Delta, NamedTensor, TensorData};

/// How a delta's tensors are stored in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats: lossless.
    #[default]
    F32,
    /// IEEE binary16, rounded to nearest (even on ties): half the size, about 3 significant
    /// digits; values beyond ±65504 do not fit.
    F16,
    /// Symmetric int8 with one scale per row (first dimension), scale = max|row| / 127: a
    /// quarter of the size, each value within scale / 2 of the original.
    Int8,
}

impl NamedTensor {
    /// The precision the tensor is stored in.
    pub fn precision(&self) -> Precision {
        match self.data {
            TensorData::F32(_) => Precision::F32,
            TensorData::F16(_) => Precision::F16,
            TensorData::I8 { .. } => Precision::Int8,
        }
    }

    /// The number of rows int8 scales cover: the first dimension of a matrix (or higher rank);
    /// a vector (a bias) or a scalar is one row, so it carries one scale rather than a 4-byte
    /// scale for every 1-byte value.
    pub(crate) fn rows(&self) -> u64 {
        if self.shape.len() < 2 {
            return 1;
        }
        self.shape.first().map_or(1, |&d| u64::from(d))
    }

    /// The values as f32, dequantized if need be.
    ///
    /// Fails with [`DeltaError::Malformed`] only for an int8 tensor whose scales do not match
    /// its rows, which a loaded or validated delta never has.
    pub fn to_f32(&self) -> Result<Vec<f32>, DeltaError> {
        match &self.data {
            TensorData::F32(v) => Ok(v.clone()),
            TensorData::F16(bits) => Ok(bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect()),
            TensorData::I8 { values, scales } => {
                let rows = self.rows();
                if scales.len() as u64 != rows {
                    return Err(DeltaError::Malformed(format!(
                        "tensor `{}` has {} int8 scales for {rows} rows",
                        self.name,
                        scales.len()
                    )));
                }
                if values.is_empty() {
                    return Ok(Vec::new());
                }
                if scales.is_empty() || values.len() % scales.len() != 0 {
                    return Err(DeltaError::Malformed(format!(
                        "tensor `{}`: {} int8 values do not split into {rows} rows",
                        self.name,
                        values.len()
                    )));
                }
                let row_len = values.len() / scales.len();
                Ok(values
                    .chunks(row_len)
                    .zip(scales)
                    .flat_map(|(row, &s)| row.iter().map(move |&q| f32::from(q) * s))
                    .collect())
            }
        }
    }

    /// The tensor stored in `precision`; a tensor already in it is returned unchanged (int8 is
    /// never quantized twice).
    ///
    /// Fails with [`DeltaError::NonFinite`] if a value is NaN or infinite, or overflows f16.
    pub fn with_precision(&self, precision: Precision) -> Result<NamedTensor, DeltaError> {
        if self.precision() == precision {
            return Ok(self.clone());
        }
        let values = self.to_f32()?;
        let non_finite = || DeltaError::NonFinite { tensor: self.name.clone() };
        if !values.iter().all(|v| v.is_finite()) {
            return Err(non_finite());
        }
        let data = match precision {
            Precision::F32 => TensorData::F32(values),
            Precision::F16 => {
                let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                if !halves.iter().all(|h| h.is_finite()) {
                    return Err(non_finite());
                }
                TensorData::F16(halves.into_iter().map(f16::to_bits).collect())
            }
            Precision::Int8 => {
                let rows = usize::try_from(self.rows()).map_err(|_| DeltaError::Malformed("too many rows".into()))?;
                if rows == 0 {
                    TensorData::I8 { values: Vec::new(), scales: Vec::new() }
                } else if values.len() % rows != 0 {
                    return Err(DeltaError::Malformed(format!(
                        "tensor `{}`: {} values do not split into {rows} rows",
                        self.name,
                        values.len()
                    )));
                } else {
                    quantize_rows(&values, rows)
                }
            }
        };
        Ok(NamedTensor { name: self.name.clone(), shape: self.shape.clone(), data })
    }
}

/// Symmetric per-row int8; `values.len()` is a multiple of `rows` (> 0).
fn quantize_rows(values: &[f32], rows: usize) -> TensorData {
    let row_len = values.len() / rows;
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &values[r * row_len..(r + 1) * row_len];
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // An all-zero row, or one so small that max/127 underflows to 0, gets scale 1 and
        // quantizes to zeros: every value is then within 1/2 of the original.
        let scale = match max / 127.0 {
            s if s > 0.0 => s,
            _ => 1.0,
        };
        scales.push(scale);
        q.extend(row.iter().map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8));
    }
    TensorData::I8 { values: q, scales }
}

impl Delta {
    /// The delta with every tensor stored in `precision` (see [`NamedTensor::with_precision`]).
    pub fn with_precision(&self, precision: Precision) -> Result<Delta, DeltaError> {
        // Diff pruning's indices are integers: only f32 holds them exactly.
        let tensors = self.tensors.iter().map(|t| if t.name.ends_with(".diff_index") { Ok(t.clone()) } else { t.with_precision(precision) }).collect::<Result<_, _>>()?;
        Ok(Delta {
            base_fingerprint: self.base_fingerprint,
            method: self.method.clone(),
            head: self.head.clone(),
            tensors,
            summary: self.summary.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int8(t: &NamedTensor) -> (&[i8], &[f32]) {
        match &t.data {
            TensorData::I8 { values, scales } => (values, scales),
            other => panic!("expected int8, got {other:?}"),
        }
    }

    #[test]
    fn delta_int8_scale_is_row_max_over_127() {
        let t = NamedTensor::f32("w", &[2, 3], vec![0.5, -1.27, 0.0, 0.0, 0.0, 0.0]);
        let q = t.with_precision(Precision::Int8).unwrap();
        let (values, scales) = int8(&q);
        assert_eq!(scales, [1.27 / 127.0, 1.0]); // the all-zero row gets scale 1
        assert_eq!(values, [50, -127, 0, 0, 0, 0]);
        let back = q.to_f32().unwrap();
        assert!((back[0] - 0.5).abs() <= scales[0] / 2.0);
        assert_eq!(back[1], -127.0 * (1.27f32 / 127.0));
        assert_eq!(&back[2..], [0.0; 4]);
    }

    #[test]
    fn delta_int8_handles_scalars_empty_rows_and_underflow() {
        let scalar = NamedTensor::f32("s", &[], vec![-3.0]).with_precision(Precision::Int8).unwrap();
        assert_eq!(int8(&scalar), (&[-127i8][..], &[3.0f32 / 127.0][..]));
        let empty = NamedTensor::f32("e", &[0, 4], vec![]).with_precision(Precision::Int8).unwrap();
        assert_eq!(int8(&empty), (&[][..], &[][..]));
        let no_cols = NamedTensor::f32("c", &[2, 0], vec![]).with_precision(Precision::Int8).unwrap();
        assert_eq!(int8(&no_cols), (&[][..], &[1.0f32, 1.0][..]));
        assert_eq!(no_cols.to_f32().unwrap(), Vec::<f32>::new());
        // max/127 underflows to 0 for the smallest subnormal: scale 1, values 0.
        let tiny =
            NamedTensor::f32("t", &[1, 2], vec![f32::from_bits(1), 0.0]).with_precision(Precision::Int8).unwrap();
        assert_eq!(int8(&tiny), (&[0i8, 0][..], &[1.0f32][..]));
    }

    #[test]
    fn delta_int8_is_not_requantized() {
        let t = NamedTensor {
            name: "q".into(),
            shape: vec![1, 2],
            data: TensorData::I8 { values: vec![3, -1], scales: vec![0.25] },
        };
        assert_eq!(t.with_precision(Precision::Int8).unwrap(), t);
        assert_eq!(t.to_f32().unwrap(), [0.75, -0.25]);
    }

    #[test]
    fn delta_f16_overflow_and_nan_are_refused() {
        let big = NamedTensor::f32("big", &[1], vec![70000.0]);
        assert!(matches!(big.with_precision(Precision::F16), Err(DeltaError::NonFinite { tensor }) if tensor == "big"));
        // 65504 is f16's largest finite value.
        assert!(NamedTensor::f32("max", &[1], vec![65504.0]).with_precision(Precision::F16).is_ok());
        let nan = NamedTensor::f32("nan", &[1], vec![f32::NAN]);
        assert!(matches!(nan.with_precision(Precision::Int8), Err(DeltaError::NonFinite { .. })));
    }

    #[test]
    fn delta_int8_with_mismatched_scales_does_not_decode() {
        let t = NamedTensor {
            name: "q".into(),
            shape: vec![3, 1],
            data: TensorData::I8 { values: vec![1, 2, 3], scales: vec![1.0] },
        };
        assert!(matches!(t.to_f32(), Err(DeltaError::Malformed(_))));
    }
}
