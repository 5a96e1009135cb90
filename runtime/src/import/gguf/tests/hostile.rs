//! The reader against well-formed files (they read back as written) and malformed ones (each
//! defect is refused with its own error, never a panic or an allocation the file did not pay
//! for).

use super::{put_str, Gguf, TensorSpec};
use crate::import::gguf::{read_bytes, Array, GgmlType, GgufError, GgufFile, Value};

fn parse_err(bytes: &[u8]) -> GgufError {
    match GgufFile::parse(bytes) {
        Ok(_) => panic!("a malformed file parsed"),
        Err(e) => e,
    }
}

fn patch_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn patch_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Every value type, nested arrays included, and three tensors of different types.
fn sample() -> Gguf {
    let q8: Vec<u8> = {
        let mut b = half::f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
        b.extend((0..32).map(|i| i as u8));
        b
    };
    Gguf::default()
        .with("u8", Value::U8(200))
        .with("i8", Value::I8(-100))
        .with("u16", Value::U16(60000))
        .with("i16", Value::I16(-30000))
        .with("u32", Value::U32(4_000_000_000))
        .with("i32", Value::I32(-2_000_000_000))
        .with("f32", Value::F32(1.25))
        .with("bool", Value::Bool(true))
        .with("string", Value::String("héllo ✓".into()))
        .with("u64", Value::U64(u64::MAX))
        .with("i64", Value::I64(i64::MIN))
        .with("f64", Value::F64(-0.1))
        .with("strings", Value::Array(Array::String(vec!["a".into(), String::new(), "Ġt".into()])))
        .with("bools", Value::Array(Array::Bool(vec![true, false])))
        .with("i32s", Value::Array(Array::I32(vec![1, -2, 3])))
        .with("empty", Value::Array(Array::F64(vec![])))
        .with(
            "nested",
            Value::Array(Array::Array(vec![Array::U8(vec![1, 2]), Array::Array(vec![Array::String(vec!["x".into()])]), Array::I64(vec![])])),
        )
        .tensor(TensorSpec::f32("a", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
        .tensor(TensorSpec::raw("b", &[32], GgmlType::Q8_0, q8))
        .tensor(TensorSpec::raw("c", &[2], GgmlType::F16, vec![0x00, 0x3C, 0x00, 0xC0]))
}

#[test]
fn a_written_file_reads_back_as_written() {
    let g = sample();
    let (bytes, layout) = g.write();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.data_start, layout.data as u64);
    assert_eq!(f.metadata.len(), g.kv.len());
    for (k, v) in &g.kv {
        assert_eq!(f.metadata.get(k), Some(v), "{k}");
    }
    let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let a = f.tensor("a").unwrap();
    assert_eq!((a.dims.as_slice(), a.ggml_type, a.offset, a.size), (&[3u64, 2][..], GgmlType::F32, 0, 24));
    assert_eq!(f.dequantize(a).unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = f.tensor("b").unwrap();
    assert_eq!((b.offset, b.size), (32, 34));
    assert_eq!(f.dequantize(b).unwrap(), (0..32).map(|i| i as f32 * 0.5).collect::<Vec<_>>());
    assert_eq!(f.dequantize(f.tensor("c").unwrap()).unwrap(), [1.0, -2.0]);
}

#[test]
fn version_2_and_a_declared_alignment_read() {
    let mut g = sample().with("general.alignment", Value::U32(64));
    g.version = 2;
    g.alignment = 64;
    let (bytes, layout) = g.write();
    let f = GgufFile::parse(&bytes).unwrap();
    assert_eq!((f.version, f.alignment, f.data_start), (2, 64, layout.data as u64));
    assert_eq!(layout.data % 64, 0);
    assert_eq!(f.tensor("b").unwrap().offset, 64);
    assert_eq!(f.dequantize(f.tensor("c").unwrap()).unwrap(), [1.0, -2.0]);
}

#[test]
fn every_truncation_is_a_typed_error() {
    let (bytes, _) = sample().write();
    for len in 0..bytes.len() {
        let e = parse_err(&bytes[..len]);
        // A cut inside the data section leaves the infos intact: the tensors then run past it.
        assert!(!e.to_string().is_empty());
    }
    // And through the whole importer, on a complete tiny Llama.
    let bytes = super::llama::tiny_llama().bytes();
    read_bytes(&bytes).expect("the untruncated file imports");
    for len in 0..bytes.len() {
        assert!(read_bytes(&bytes[..len]).is_err(), "truncated at {len} of {}", bytes.len());
    }
}

#[test]
// 3,000 seeded corruptions of a whole tiny model. Once suspected of making the reader's memory
// grow past several GiB (a memory stall while it ran beside other suites); run alone it peaks
// at 7 MB resident and passes under `ulimit -v 1000000`, so it runs with the suite.
fn random_corruption_never_panics() {
    let bytes = super::llama::tiny_llama().bytes();
    // A fixed linear congruential sequence: the same corruptions on every run.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let mut refused = 0;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let at = next() % b.len();
            b[at] = next() as u8;
        }
        refused += usize::from(read_bytes(&b).is_err());
    }
    // Most flips land in tensor data and merely change a weight; many must hit structure.
    assert!(refused > 100, "only {refused} corruptions refused");
}

#[test]
fn bad_magic_and_versions() {
    assert_eq!(parse_err(b"GGML\x03\0\0\0"), GgufError::BadMagic { found: b"GGML".to_vec() });
    assert_eq!(parse_err(b"GG"), GgufError::BadMagic { found: b"GG".to_vec() });
    let mut bytes = sample().bytes();
    for v in [0, 1, 4, 0x0300_0000] {
        patch_u32(&mut bytes, 4, v);
        assert_eq!(parse_err(&bytes), GgufError::UnsupportedVersion { version: v });
    }
}

#[test]
fn huge_counts_are_refused_before_reserving() {
    let mut bytes = sample().bytes();
    patch_u64(&mut bytes, 16, u64::MAX);
    assert!(matches!(parse_err(&bytes), GgufError::CountPastEnd { count: u64::MAX, min_bytes: u64::MAX, .. }), "kv count");
    let mut bytes = sample().bytes();
    patch_u64(&mut bytes, 8, u64::MAX);
    assert!(matches!(parse_err(&bytes), GgufError::CountPastEnd { count: u64::MAX, .. }), "tensor count");
}

#[test]
fn huge_string_and_array_lengths_are_refused() {
    let g = Gguf::default().with("s", Value::String("abc".into())).with("arr", Value::Array(Array::U32(vec![1, 2])));
    let (bytes, layout) = g.write();
    // The key's length.
    let mut b = bytes.clone();
    patch_u64(&mut b, layout.kv[0], u64::MAX);
    assert!(matches!(parse_err(&b), GgufError::StringPastEnd { length: u64::MAX, .. }));
    // The value's length: after key length (8), key "s" (1), type (4).
    let mut b = bytes.clone();
    patch_u64(&mut b, layout.kv[0] + 13, 1 << 40);
    assert!(matches!(parse_err(&b), GgufError::StringPastEnd { length: 0x100_0000_0000, .. }));
    // The array's count: after key length, "arr", type, element type.
    let mut b = bytes.clone();
    patch_u64(&mut b, layout.kv[1] + 8 + 3 + 4 + 4, u64::MAX);
    assert!(matches!(parse_err(&b), GgufError::CountPastEnd { count: u64::MAX, .. }));
    // A count that would fit as 1-byte elements is still refused for u32s.
    let at = layout.kv[1] + 8 + 3 + 4 + 4;
    let available = (bytes.len() - at - 8) as u64;
    let count = available / 4 + 1;
    let mut b = bytes;
    patch_u64(&mut b, at, count);
    assert_eq!(parse_err(&b), GgufError::CountPastEnd { what: "metadata `arr` array".into(), offset: at as u64 + 8, count, min_bytes: count * 4, available });
}

#[test]
fn bad_type_ids_and_bools() {
    let g = Gguf::default().with("v", Value::U8(1)).with("arr", Value::Array(Array::U8(vec![1])));
    let (bytes, layout) = g.write();
    let mut b = bytes.clone();
    patch_u32(&mut b, layout.kv[0] + 9, 13);
    assert_eq!(parse_err(&b), GgufError::BadValueType { key: "v".into(), type_id: 13, offset: layout.kv[0] as u64 + 9 });
    let mut b = bytes;
    patch_u32(&mut b, layout.kv[1] + 11 + 4, u32::MAX);
    assert!(matches!(parse_err(&b), GgufError::BadValueType { type_id: u32::MAX, .. }));

    let (mut b, layout) = Gguf::default().with("flag", Value::Bool(true)).write();
    b[layout.kv[0] + 12 + 4] = 2;
    assert!(matches!(parse_err(&b), GgufError::BadBool { byte: 2, .. }));
}

#[test]
fn nesting_is_bounded() {
    let mut a = Array::U8(vec![7]);
    for _ in 0..7 {
        a = Array::Array(vec![a]);
    }
    // Eight levels read back.
    let bytes = Gguf::default().with("deep", Value::Array(a.clone())).bytes();
    assert_eq!(GgufFile::parse(&bytes).unwrap().metadata["deep"], Value::Array(a.clone()));
    let bytes = Gguf::default().with("deep", Value::Array(Array::Array(vec![a]))).bytes();
    assert_eq!(parse_err(&bytes), GgufError::NestingTooDeep { key: "deep".into(), max: 8 });
    // A file claiming nesting far deeper than it could hold stops at the limit, not the stack's.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    put_str(&mut bytes, b"k");
    bytes.extend(9u32.to_le_bytes());
    for _ in 0..100_000 {
        bytes.extend(9u32.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
    }
    assert_eq!(parse_err(&bytes), GgufError::NestingTooDeep { key: "k".into(), max: 8 });
}

#[test]
fn non_utf8_strings() {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    put_str(&mut bytes, b"ke\xffy");
    bytes.extend(0u32.to_le_bytes());
    bytes.push(0);
    assert_eq!(parse_err(&bytes), GgufError::NonUtf8 { what: "metadata key #0".into(), offset: 32 });

    let (mut b, layout) = Gguf::default().with("s", Value::String("ab".into())).write();
    b[layout.kv[0] + 13 + 8] = 0xC0;
    assert!(matches!(parse_err(&b), GgufError::NonUtf8 { .. }));

    let (mut b, layout) = sample().write();
    b[layout.infos[1] + 8] = 0x80;
    assert_eq!(parse_err(&b), GgufError::NonUtf8 { what: "tensor name #1".into(), offset: layout.infos[1] as u64 + 8 });
}

#[test]
fn duplicate_keys_and_tensors() {
    let bytes = Gguf::default().with("k", Value::U8(1)).with("k", Value::U8(2)).bytes();
    assert_eq!(parse_err(&bytes), GgufError::DuplicateKey { key: "k".into() });
    let bytes = Gguf::default().tensor(TensorSpec::f32("t", &[1], &[1.0])).tensor(TensorSpec::f32("t", &[1], &[2.0])).bytes();
    assert_eq!(parse_err(&bytes), GgufError::DuplicateTensor { name: "t".into() });
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    for a in [0u32, 3, 48] {
        let bytes = Gguf::default().with("general.alignment", Value::U32(a)).bytes();
        assert_eq!(parse_err(&bytes), GgufError::BadAlignment { alignment: u64::from(a) });
    }
    let bytes = Gguf::default().with("general.alignment", Value::U64(32)).bytes();
    assert_eq!(parse_err(&bytes), GgufError::MetadataType { key: "general.alignment".into(), expected: "u32", found: "u64" });
}

#[test]
fn shapes_ranks_and_types() {
    let one = |t: TensorSpec| parse_err(&Gguf::default().tensor(t).bytes());
    assert_eq!(one(TensorSpec::f32("r5", &[1, 1, 1, 1, 1], &[1.0])), GgufError::TooManyDims { tensor: "r5".into(), n_dims: 5, max: 4 });
    assert_eq!(one(TensorSpec::f32("big", &[u64::MAX, 2], &[])), GgufError::ShapeOverflow { tensor: "big".into(), dims: vec![u64::MAX, 2] });
    assert_eq!(one(TensorSpec::f32("sq", &[1 << 32, 1 << 32], &[])), GgufError::ShapeOverflow { tensor: "sq".into(), dims: vec![1 << 32, 1 << 32] });
    // Elements fit in i64, bytes do not.
    assert_eq!(one(TensorSpec::f32("bytes", &[1 << 62], &[])), GgufError::ShapeOverflow { tensor: "bytes".into(), dims: vec![1 << 62] });
    // A zero dimension does not excuse an oversized one.
    assert_eq!(one(TensorSpec::f32("z", &[0, u64::MAX], &[])), GgufError::ShapeOverflow { tensor: "z".into(), dims: vec![0, u64::MAX] });
    for id in [4, 5, 31, 99, u32::MAX] {
        let t = TensorSpec { type_id: id, ..TensorSpec::f32("t", &[1], &[1.0]) };
        assert_eq!(one(t), GgufError::BadTensorType { tensor: "t".into(), type_id: id });
    }
    assert_eq!(
        one(TensorSpec::raw("q", &[16, 2], GgmlType::Q8_0, vec![0; 34])),
        GgufError::BlockMisfit { tensor: "q".into(), ggml_type: "Q8_0", block: 32, row: 16 }
    );
}

#[test]
fn offsets_outside_the_data_section_or_misaligned() {
    let at = |offset: u64| parse_err(&Gguf::default().tensor(TensorSpec { offset: Some(offset), ..TensorSpec::f32("t", &[2], &[1.0, 2.0]) }).bytes());
    assert_eq!(at(4), GgufError::MisalignedTensor { tensor: "t".into(), offset: 4, alignment: 32 });
    assert_eq!(at(32), GgufError::TensorOutOfBounds { tensor: "t".into(), offset: 32, size: 8, data_len: 8 });
    let huge = u64::MAX - 31;
    assert_eq!(at(huge), GgufError::TensorOutOfBounds { tensor: "t".into(), offset: huge, size: 8, data_len: 8 });
    // A file cut inside the data section.
    let bytes = Gguf::default().tensor(TensorSpec::f32("t", &[2], &[1.0, 2.0])).bytes();
    assert_eq!(parse_err(&bytes[..bytes.len() - 1]), GgufError::TensorOutOfBounds { tensor: "t".into(), offset: 0, size: 8, data_len: 7 });
    // Two tensors sharing bytes.
    let g = Gguf::default().tensor(TensorSpec::f32("a", &[16], &[0.0; 16])).tensor(TensorSpec { offset: Some(64), ..TensorSpec::f32("b", &[16], &[0.0; 16]) });
    GgufFile::parse(&g.bytes()).expect("adjacent, not overlapping");
    let g = Gguf::default().tensor(TensorSpec::f32("a", &[16], &[0.0; 16])).tensor(TensorSpec { offset: Some(32), ..TensorSpec::f32("b", &[16], &[0.0; 16]) });
    assert_eq!(parse_err(&g.bytes()), GgufError::OverlappingTensors { first: "a".into(), second: "b".into() });
}

#[test]
fn a_type_kilotune_does_not_dequantize_is_named() {
    let bytes = Gguf::default().tensor(TensorSpec::raw("k", &[256], GgmlType::Q6_K, vec![0; 210])).bytes();
    let f = GgufFile::parse(&bytes).expect("Q6_K is bounded like any type");
    let t = f.tensor("k").unwrap();
    assert_eq!(f.dequantize(t).unwrap_err(), GgufError::UnsupportedTensorType { tensor: "k".into(), ggml_type: "Q6_K" });
}
