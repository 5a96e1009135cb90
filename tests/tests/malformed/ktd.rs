//! Malformed input: the `.ktd` delta, its framing and its body.

use super::*;

// ---------------------------------------------------------------------------------------
// Delta: framing

#[test]
fn delta_every_truncation_of_a_real_delta_is_truncated() {
    let (_, bytes) = real_delta_bytes();
    assert!(bytes.len() > 1000, "a real delta, not a toy: {} bytes", bytes.len());
    for n in 0..bytes.len() {
        match decode(&bytes[..n]) {
            Err(DeltaError::Truncated { found, .. }) => assert_eq!(found, n as u64),
            other => panic!("cut at {n} of {}: {other:?}", bytes.len()),
        }
    }
}

#[test]
fn delta_every_single_bit_flip_of_a_real_delta_is_rejected() {
    let (_, bytes) = real_delta_bytes();
    let body_len = bytes.len() as u64 - 24;
    let mut flipped = bytes.clone();
    let (mut magic, mut version, mut length, mut checksum) = (0, 0, 0, 0);
    for bit in 0..bytes.len() * 8 {
        let (at, mask) = (bit / 8, 1u8 << (bit % 8));
        flipped[at] ^= mask;
        // The CRC32C covers the header too and catches every flip by itself (a single-bit
        // error never leaves a CRC unchanged); the reader reports the first check that fails.
        let (covered, trailer) = flipped.split_at(flipped.len() - 4);
        assert_ne!(crc32c::crc32c(covered).to_le_bytes(), trailer, "bit {bit} slips past the CRC");
        match (at, decode(&flipped)) {
            (0..8, Err(DeltaError::BadMagic { .. })) => magic += 1,
            (8..12, Err(DeltaError::UnsupportedVersion { .. })) => version += 1,
            (12..20, Err(DeltaError::Truncated { .. })) => length += 1,
            (12..20, Err(DeltaError::TrailingBytes { extra })) => {
                let declared = u64::from_le_bytes(flipped[12..20].try_into().expect("8 bytes"));
                assert_eq!(extra, body_len - declared);
                length += 1;
            }
            (20.., Err(DeltaError::Checksum { .. })) => checksum += 1,
            (_, other) => panic!("bit {bit} (byte {at}) of {}: {other:?}", bytes.len()),
        }
        flipped[at] ^= mask;
    }
    assert_eq!(flipped, bytes);
    // Every flip rejected: the header's by its structural checks (which run before the CRC),
    // all the others by the CRC.
    assert_eq!(magic + version + length + checksum, bytes.len() * 8);
    assert_eq!((magic, version, length), (64, 32, 64));
    assert_eq!(checksum, (bytes.len() - 20) * 8);
    eprintln!("{} single-bit flips of a {}-byte delta: {magic} BadMagic, {version} UnsupportedVersion, {length} Truncated/TrailingBytes, {checksum} Checksum", bytes.len() * 8, bytes.len());
}

#[test]
fn delta_u64_max_body_length_is_truncated_without_allocating() {
    let (_, mut bytes) = real_delta_bytes();
    bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    match decode(&bytes) {
        Err(DeltaError::Truncated { expected, found }) => assert_eq!((expected, found), (u64::MAX, bytes.len() as u64)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn delta_wrong_magic_is_bad_magic() {
    let (_, mut bytes) = real_delta_bytes();
    bytes[..8].copy_from_slice(b"GGUF\x03\0\0\0");
    assert!(matches!(decode(&bytes), Err(DeltaError::BadMagic { found }) if &found == b"GGUF\x03\0\0\0"));
}

#[test]
fn delta_unknown_version_is_unsupported() {
    for v in [0u32, 3, u32::MAX] {
        let (_, mut bytes) = real_delta_bytes();
        bytes[8..12].copy_from_slice(&v.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(DeltaError::UnsupportedVersion { found, supported: 2 }) if found == v), "version {v}");
    }
}

#[test]
fn delta_for_another_base_is_wrong_base() {
    let (base, delta) = trained();
    let dir = TempDir::new("malformed-base");
    let path = dir.path().join("user.ktd");
    delta::save(&delta, &path, Precision::F32).expect("saves");
    let mut other = base.fingerprint();
    assert!(delta::load(&path, Some(&other), &LoadLimits::default()).is_ok());
    other[0] ^= 0x80;
    assert!(matches!(delta::load(&path, Some(&other), &LoadLimits::default()), Err(DeltaError::WrongBase { .. })));
}

#[test]
fn delta_empty_file_is_truncated() {
    let dir = TempDir::new("malformed-empty");
    let path = dir.path().join("empty.ktd");
    std::fs::write(&path, b"").expect("writable");
    assert!(matches!(delta::load(&path, None, &LoadLimits::default()), Err(DeltaError::Truncated { expected: 24, found: 0 })));
}

#[test]
fn delta_oversized_file_is_too_large_before_it_is_read() {
    let dir = TempDir::new("malformed-large");
    let path = dir.path().join("big.ktd");
    std::fs::write(&path, vec![0u8; 4096]).expect("writable");
    let limits = LoadLimits { max_bytes: 1000 };
    assert!(matches!(delta::load(&path, None, &limits), Err(DeltaError::TooLarge { size: 1001, limit: 1000 })));
}

#[test]
fn delta_bytes_after_the_declared_end_are_trailing() {
    let (_, mut bytes) = real_delta_bytes();
    bytes.extend([0u8; 3]);
    assert!(matches!(decode(&bytes), Err(DeltaError::TrailingBytes { extra: 3 })));
}

#[test]
fn delta_missing_file_is_io() {
    let dir = TempDir::new("malformed-missing");
    let err = delta::load(dir.path().join("none.ktd"), None, &LoadLimits::default()).unwrap_err();
    assert!(matches!(&err, DeltaError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// Delta: the body (checksummed, so only a writer could have made it)

#[test]
fn delta_varint_overflow_in_the_body_is_malformed() {
    let body = postcard::to_allocvec(&small_delta()).expect("serializes");
    // After the 32-byte fingerprint comes the method's variant index, a u32 varint: make it a
    // 6-byte varint that overflows u32, then the rest as it was.
    let mut bad = body[..32].to_vec();
    bad.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    bad.extend(&body[33..]);
    assert!(matches!(decode(&frame(&bad)), Err(DeltaError::Malformed(m)) if m.contains("decode")));
}

#[test]
fn delta_shape_product_overflow_is_malformed() {
    let mut d = small_delta();
    d.tensors[0].shape = vec![u32::MAX, u32::MAX, u32::MAX];
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(m)) if m.contains("64 bits")));
    // 2^64 wraps to 0 in unchecked arithmetic; an empty tensor must not pass for it.
    d.tensors[0] = NamedTensor::f32("wrap", &[1 << 16, 1 << 16, 1 << 16, 1 << 16], vec![]);
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(_))));
}

#[test]
fn delta_shape_data_mismatch_is_malformed() {
    let mut d = small_delta();
    let n = d.tensors[0].shape[0];
    d.tensors[0].shape[0] = n + 1;
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(m)) if m.contains("values, found")));
    // An int8 tensor with a scale count that is not one per row.
    let mut d = small_delta();
    let rows = d.tensors[0].shape[0] as usize;
    let len = d.tensors[0].shape.iter().product::<u32>() as usize;
    d.tensors[0].data = TensorData::I8 { values: vec![1; len], scales: vec![1.0; rows + 1] };
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(m)) if m.contains("scales")));
}

#[test]
fn delta_nan_and_infinite_tensors_are_non_finite() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut d = small_delta();
        let name = d.tensors[1].name.clone();
        let TensorData::F32(v) = &mut d.tensors[1].data else { panic!("a trained delta is f32") };
        v[0] = bad;
        assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::NonFinite { tensor }) if tensor == name), "{bad}");
        // And the writer refuses to save it in any precision.
        for p in [Precision::F32, Precision::F16, Precision::Int8] {
            assert!(matches!(delta::to_bytes(&d, p), Err(DeltaError::NonFinite { .. })), "{bad} as {p:?}");
        }
    }
}

#[test]
fn delta_duplicate_tensor_names_are_refused() {
    let mut d = small_delta();
    d.tensors[2].name = d.tensors[0].name.clone();
    let want = d.tensors[0].name.clone();
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::DuplicateName { name }) if name == want));
}

#[test]
fn delta_empty_or_nul_containing_names_are_bad_names() {
    for bad in ["", "encoder.layer.0\0.query.lora_A", "\0"] {
        let mut d = small_delta();
        d.tensors[0].name = bad.into();
        assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::BadName { name }) if name == bad), "{bad:?}");
    }
}

#[test]
fn delta_method_that_does_not_fit_the_version_is_malformed() {
    // A version-1 frame around a (version-2) adapter method.
    let mut d = small_delta();
    d.method = kilotune::peft::PeftMethod::HeadOnly;
    assert!(matches!(decode(&unchecked(&d)), Err(DeltaError::Malformed(m)) if m.contains("version 1")));
}
