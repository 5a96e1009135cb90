//! Semantic checks on a decoded delta: what the checksum cannot vouch for, because a buggy or
//! hostile writer can checksum anything.

use std::collections::HashSet;

use half::f16;

use super::error::DeltaError;
use super::format::{hex, Delta, NamedTensor, TensorData};

impl Delta {
    /// Checks everything a reader requires, except the base (see [`Delta::check_base`]): the
    /// method and head configurations, then each tensor in order ([`NamedTensor::validate`])
    /// and the uniqueness of names.
    pub fn validate(&self) -> Result<(), DeltaError> {
        self.method.validate().map_err(|e| DeltaError::Malformed(format!("method: {e}")))?;
        if let Some(head) = &self.head {
            head.validate().map_err(|e| DeltaError::Malformed(format!("head: {e}")))?;
        }
        let mut seen = HashSet::with_capacity(self.tensors.len());
        for t in &self.tensors {
            t.validate()?;
            if !seen.insert(t.name.as_str()) {
                return Err(DeltaError::DuplicateName { name: t.name.clone() });
            }
        }
        Ok(())
    }

    /// Fails with [`DeltaError::WrongBase`] unless the delta was trained on `expected`.
    pub fn check_base(&self, expected: &[u8; 32]) -> Result<(), DeltaError> {
        if &self.base_fingerprint != expected {
            return Err(DeltaError::WrongBase { expected: hex(expected), found: hex(&self.base_fingerprint) });
        }
        Ok(())
    }
}

impl NamedTensor {
    /// Checks, in this order: the element count equals the product of the shape (computed
    /// without overflow), int8 scales number one per row, no value or scale is NaN or
    /// infinite, int8 scales are positive, and the name is non-empty and free of NUL.
    pub fn validate(&self) -> Result<(), DeltaError> {
        let malformed = |what: String| DeltaError::Malformed(format!("tensor `{}`: {what}", self.name));
        let expected = self
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(u64::from(d)))
            .ok_or_else(|| malformed(format!("shape {:?} has more elements than fit in 64 bits", self.shape)))?;
        let found = match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::I8 { values, .. } => values.len(),
        } as u64;
        if found != expected {
            return Err(malformed(format!("shape {:?} needs {expected} values, found {found}", self.shape)));
        }
        let finite = match &self.data {
            TensorData::F32(v) => v.iter().all(|x| x.is_finite()),
            TensorData::F16(v) => v.iter().all(|&b| f16::from_bits(b).is_finite()),
            TensorData::I8 { scales, .. } => {
                if scales.len() as u64 != self.rows() {
                    return Err(malformed(format!("{} int8 scales for {} rows", scales.len(), self.rows())));
                }
                let finite = scales.iter().all(|s| s.is_finite());
                if let Some(s) = scales.iter().find(|&&s| finite && s <= 0.0) {
                    return Err(malformed(format!("int8 scale {s} is not positive")));
                }
                finite
            }
        };
        if !finite {
            return Err(DeltaError::NonFinite { tensor: self.name.clone() });
        }
        if self.name.is_empty() || self.name.contains('\0') {
            return Err(DeltaError::BadName { name: self.name.clone() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[u32], data: TensorData) -> NamedTensor {
        NamedTensor { name: "t".into(), shape: shape.to_vec(), data }
    }

    #[test]
    fn delta_tensor_checks_each_defect() {
        assert!(t(&[2, 2], TensorData::F32(vec![0.0; 4])).validate().is_ok());
        assert!(t(&[], TensorData::F32(vec![1.0])).validate().is_ok());
        let malformed = |x: NamedTensor| matches!(x.validate(), Err(DeltaError::Malformed(_)));
        assert!(malformed(t(&[2, 2], TensorData::F32(vec![0.0; 3]))));
        assert!(malformed(t(&[u32::MAX, u32::MAX, u32::MAX], TensorData::F32(vec![]))));
        assert!(malformed(t(&[2, 1], TensorData::I8 { values: vec![1, 2], scales: vec![1.0] })));
        assert!(malformed(t(&[1, 2], TensorData::I8 { values: vec![1, 2], scales: vec![0.0] })));
        assert!(malformed(t(&[1, 2], TensorData::I8 { values: vec![1, 2], scales: vec![-1.0] })));
        let non_finite = |x: NamedTensor| matches!(x.validate(), Err(DeltaError::NonFinite { .. }));
        assert!(non_finite(t(&[1], TensorData::F32(vec![f32::NEG_INFINITY]))));
        assert!(non_finite(t(&[1], TensorData::F16(vec![0x7C00]))));
        assert!(non_finite(t(&[1], TensorData::F16(vec![0xFE00]))));
        assert!(non_finite(t(&[1, 1], TensorData::I8 { values: vec![1], scales: vec![f32::NAN] })));
        let mut named = t(&[1], TensorData::F32(vec![0.0]));
        named.name = "a\0b".into();
        assert!(matches!(named.validate(), Err(DeltaError::BadName { .. })));
    }
}
