//! The `.ktd` file: the delta's types and their framing into bytes (header, postcard body,
//! CRC32C trailer). `SPEC.md` beside this file is the byte layout; keep the two in step.
//!
//! The structs below are serialized field by field in declaration order, and enums by
//! variant index: reordering fields or variants changes the format and needs a new
//! [`FORMAT_VERSION`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::error::DeltaError;
use crate::peft::{PeftMethod, TaskHead};

/// The first 8 bytes of every delta file.
pub const MAGIC: [u8; 8] = *b"KTDELTA\0";

/// The newest format version: this build reads versions 1 and 2 and writes a delta in the
/// oldest version that can hold its method (version 1 for LoRA and BitFit, so older builds
/// keep reading those; version 2 adds the other PEFT methods).
pub const FORMAT_VERSION: u32 = 2;

/// The version a delta of `method` is written in.
pub fn version_for(method: &PeftMethod) -> u32 {
    if method.in_format_v1() { 1 } else { FORMAT_VERSION }
}

/// Bytes before the body: magic (8), version (4), body length (8).
pub const HEADER_LEN: usize = 20;

/// Bytes after the body: the CRC32C (4).
pub const TRAILER_LEN: usize = 4;

/// The default for [`LoadLimits::max_bytes`]: 64 MiB, far above any delta worth the name.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// A user's delta: everything training learned, bound to one base model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The SHA-256 fingerprint of the base model the delta was trained on.
    pub base_fingerprint: [u8; 32],
    /// The PEFT method and its configuration.
    pub method: PeftMethod,
    /// The task head the delta trains, if any; its weights are among `tensors`.
    pub head: Option<TaskHead>,
    /// The trained parameters, with unique names.
    pub tensors: Vec<NamedTensor>,
    /// How the delta came to be.
    pub summary: TrainingSummary,
}

/// One trained parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    /// Its name, e.g. `encoder.layer.0.attention.self.query.lora_A`; non-empty, without NUL.
    pub name: String,
    /// Its dimensions, row-major; the product must equal the number of elements.
    pub shape: Vec<u32>,
    /// Its values, in the precision they are stored in.
    pub data: TensorData,
}

/// A tensor's values in one of the storage precisions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// IEEE binary16 values, as their bit patterns.
    F16(#[serde(with = "f16_bits")] Vec<u16>),
    /// Symmetric int8: element `i` of row `r` (rows along the first dimension) is
    /// `values[i] as f32 * scales[r]`.
    I8 {
        /// The quantized values.
        values: Vec<i8>,
        /// One positive scale per row; a rank-0 tensor has one row.
        scales: Vec<f32>,
    },
}

/// What training produced the delta; informational, it does not change how the delta runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Optimizer steps taken.
    pub steps: u64,
    /// Passes over the user's data.
    pub epochs: u32,
    /// The last training loss, if one was computed.
    pub final_loss: Option<f32>,
    /// An evaluation metric and its value, e.g. `("accuracy", 0.91)`.
    pub eval_metric: Option<(String, f32)>,
    /// When the delta was made, in seconds since the Unix epoch (0 if unknown).
    pub created_unix: u64,
    /// The kilotune version that trained it.
    pub kilotune_version: String,
}

impl Default for TrainingSummary {
    /// An empty summary stamped with this crate's version.
    fn default() -> Self {
        TrainingSummary {
            steps: 0,
            epochs: 0,
            final_loss: None,
            eval_metric: None,
            created_unix: 0,
            kilotune_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

impl NamedTensor {
    /// A tensor of f32 values (not validated; saving does that).
    pub fn f32(name: impl Into<String>, shape: &[u32], values: Vec<f32>) -> NamedTensor {
        NamedTensor { name: name.into(), shape: shape.to_vec(), data: TensorData::F32(values) }
    }
}

impl Delta {
    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The base fingerprint in lowercase hex.
    pub fn base_hex(&self) -> String {
        hex(&self.base_fingerprint)
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}"); // writing to a String cannot fail
        s
    })
}

/// What a reader accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadLimits {
    /// The largest file accepted, in bytes (header and trailer included). It bounds what a
    /// hostile or corrupt file can make the reader allocate.
    pub max_bytes: u64,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits { max_bytes: DEFAULT_MAX_BYTES }
    }
}

/// Encodes `delta` in `precision` as the bytes of a `.ktd` file.
///
/// The delta is converted first ([`Delta::with_precision`]) and validated after conversion,
/// so what is written can always be read back.
pub fn to_bytes(delta: &Delta, precision: super::Precision) -> Result<Vec<u8>, DeltaError> {
    let delta = if delta.tensors.iter().all(|t| t.precision() == precision || t.name.ends_with(".diff_index")) {
        Cow::Borrowed(delta)
    } else {
        Cow::Owned(delta.with_precision(precision)?)
    };
    delta.validate()?;
    encode(&delta)
}

/// Frames an already valid delta: header, postcard body, CRC32C.
fn encode(delta: &Delta) -> Result<Vec<u8>, DeltaError> {
    let mut out = Vec::with_capacity(HEADER_LEN + 256);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version_for(&delta.method).to_le_bytes());
    out.extend_from_slice(&[0; 8]); // the body length, patched below
    let mut out =
        postcard::to_extend(delta, out).map_err(|e| DeltaError::Malformed(format!("cannot encode the body: {e}")))?;
    let body_len = (out.len() - HEADER_LEN) as u64;
    out[12..HEADER_LEN].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes and validates the bytes of a `.ktd` file.
///
/// The checks run in the order `SPEC.md` gives, each with its own error, and nothing is
/// allocated in proportion to a size the file claims before the checksum has passed (and
/// then only within `limits.max_bytes`). With `expected_base`, a delta trained on another
/// base is refused with [`DeltaError::WrongBase`].
pub fn from_bytes(bytes: &[u8], expected_base: Option<&[u8; 32]>, limits: &LoadLimits) -> Result<Delta, DeltaError> {
    let (version, body) = check_frame(bytes, limits)?;
    let (delta, rest) = postcard::take_from_bytes::<Delta>(body)
        .map_err(|e| DeltaError::Malformed(format!("the body does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(DeltaError::Malformed(format!("{} unused bytes at the end of the body", rest.len())));
    }
    if version < version_for(&delta.method) {
        return Err(DeltaError::Malformed(format!("a version {version} file cannot hold a {} delta", delta.method.describe())));
    }
    delta.validate()?;
    if let Some(expected) = expected_base {
        delta.check_base(expected)?;
    }
    Ok(delta)
}

/// Checks the header and trailer and returns the body.
fn check_frame<'a>(bytes: &'a [u8], limits: &LoadLimits) -> Result<(u32, &'a [u8]), DeltaError> {
    let len = bytes.len() as u64;
    if len > limits.max_bytes {
        return Err(DeltaError::TooLarge { size: len, limit: limits.max_bytes });
    }
    let min = (HEADER_LEN + TRAILER_LEN) as u64;
    if len < min {
        return Err(DeltaError::Truncated { expected: min, found: len });
    }
    let field = |at: usize, n: usize| &bytes[at..at + n];
    let magic: [u8; 8] = field(0, 8).try_into().expect("8-byte slice");
    if magic != MAGIC {
        return Err(DeltaError::BadMagic { found: magic });
    }
    let version = u32::from_le_bytes(field(8, 4).try_into().expect("4-byte slice"));
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(DeltaError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    let declared = u64::from_le_bytes(field(12, 8).try_into().expect("8-byte slice"));
    let actual = len - min;
    if declared > actual {
        return Err(DeltaError::Truncated { expected: declared.saturating_add(min), found: len });
    }
    if declared < actual {
        return Err(DeltaError::TrailingBytes { extra: actual - declared });
    }
    let (covered, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let stored = u32::from_le_bytes(trailer.try_into().expect("4-byte trailer"));
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(DeltaError::Checksum { stored, computed });
    }
    Ok((version, &covered[HEADER_LEN..]))
}

/// f16 data travels as one byte string (2 bytes per value, little-endian) rather than as a
/// sequence of varints, which would cost up to 3 bytes per value.
mod f16_bits {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bits: &[u16], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
        d.deserialize_bytes(BitsVisitor)
    }

    struct BitsVisitor;

    impl<'de> Visitor<'de> for BitsVisitor {
        type Value = Vec<u16>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an even number of bytes of little-endian f16 bit patterns")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u16>, E> {
            if !v.len().is_multiple_of(2) {
                return Err(E::invalid_length(v.len(), &self));
            }
            Ok(v.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
        }

        // Formats without a byte-string type (JSON, ...) hand the bytes over one by one.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u16>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            self.visit_bytes(&bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Precision;

    fn tiny() -> Delta {
        Delta {
            base_fingerprint: [7; 32],
            method: PeftMethod::default(),
            head: None,
            tensors: vec![NamedTensor::f32("a", &[2], vec![1.0, -2.0])],
            summary: TrainingSummary::default(),
        }
    }

    #[test]
    #[ignore = "writes fuzz/seeds/delta: cargo test --workspace --lib -- --ignored fuzz_seed"]
    fn fuzz_seed_delta() {
        let mut d = tiny();
        d.tensors.push(NamedTensor::f32("layer.0.lora_B", &[2, 3], vec![0.5, -0.25, 0.0, 1e-3, 7.0, -7.0]));
        for (p, name) in [(Precision::F32, "f32.ktd"), (Precision::F16, "f16.ktd"), (Precision::Int8, "int8.ktd")] {
            crate::fuzz_seed::write("delta", name, &to_bytes(&d, p).unwrap());
        }
    }

    #[test]
    fn a_nan_final_loss_round_trips_byte_for_byte() {
        // Found by the delta fuzz target: a summary's loss may be NaN (a run whose last step was
        // skipped), which `==` never matches; the file must still re-encode to the same bytes.
        let mut d = tiny();
        d.summary.final_loss = Some(f32::NAN);
        let bytes = to_bytes(&d, Precision::F32).unwrap();
        let back = from_bytes(&bytes, None, &LoadLimits::default()).unwrap();
        assert!(back.summary.final_loss.is_some_and(f32::is_nan));
        assert_eq!(to_bytes(&back, Precision::F32).unwrap(), bytes);
    }

    #[test]
    fn delta_frame_fields_sit_where_the_spec_says() {
        let bytes = to_bytes(&tiny(), Precision::F32).unwrap();
        assert_eq!(&bytes[..8], b"KTDELTA\0");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        let body_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap());
        assert_eq!(body_len as usize, bytes.len() - 24);
        let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&bytes[..bytes.len() - 4]));
        // The body starts with the fingerprint, raw.
        assert_eq!(bytes[20..52], [7; 32]);
    }

    #[test]
    fn delta_checks_size_before_magic() {
        // Too short to hold a header: Truncated even though the magic is wrong too.
        let err = from_bytes(b"NOTADELTA", None, &LoadLimits::default()).unwrap_err();
        assert!(matches!(err, DeltaError::Truncated { expected: 24, found: 9 }), "{err:?}");
        // Over the limit: TooLarge before anything else is looked at.
        let err = from_bytes(&[0; 100], None, &LoadLimits { max_bytes: 99 }).unwrap_err();
        assert!(matches!(err, DeltaError::TooLarge { size: 100, limit: 99 }), "{err:?}");
    }

    #[test]
    fn delta_f16_bits_travel_as_two_bytes_each() {
        let mut d = tiny();
        d.tensors[0].data = TensorData::F16(vec![0x3C00, 0xC000]); // 1.0, -2.0
        let bytes = to_bytes(&d, Precision::F16).unwrap();
        let body = &bytes[HEADER_LEN..bytes.len() - TRAILER_LEN];
        // ... name "a", shape [2], variant 1 (F16), 4 bytes, then the summary.
        let needle = [1, b'a', 1, 2, 1, 4, 0x00, 0x3C, 0x00, 0xC0];
        assert!(body.windows(needle.len()).any(|w| w == needle), "{body:02x?}");
        assert_eq!(from_bytes(&bytes, None, &LoadLimits::default()).unwrap(), d);
    }

    #[test]
    fn delta_odd_f16_byte_count_is_malformed() {
        let mut d = tiny();
        d.tensors[0].data = TensorData::F16(vec![0x3C00, 0xC000]);
        let mut body = postcard::to_allocvec(&d).unwrap();
        // Find the byte-string length (4) just before the f16 bytes and make it 3.
        let at = body.windows(3).position(|w| w == [4, 0x00, 0x3C]).unwrap();
        body[at] = 3;
        body.remove(at + 1);
        let mut bytes = MAGIC.to_vec();
        bytes.extend(FORMAT_VERSION.to_le_bytes());
        bytes.extend((body.len() as u64).to_le_bytes());
        bytes.extend(&body);
        bytes.extend(crc32c::crc32c(&bytes).to_le_bytes());
        let err = from_bytes(&bytes, None, &LoadLimits::default()).unwrap_err();
        assert!(matches!(err, DeltaError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn delta_hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab]), "000fab");
        assert_eq!(tiny().base_hex(), "07".repeat(32));
    }
}
