//! The `.ktd` delta file from the outside: every class of bad input fails with its own error,
//! round trips keep what they promise, and a failed save never harms the delta on disk.
//!
//! The tests live in a module named `delta` so that `cargo test -p kilotune delta` selects them;
//! it is marked `cfg(test)` (always true here) so clippy treats its helpers as test code.

#[cfg(test)]
mod delta {
    use std::cell::Cell;
    use std::io;
    use std::path::{Path, PathBuf};

    use kilotune::delta::{
        from_bytes, load, load_with, save, save_with, to_bytes, Delta, DeltaError, FsStorage, LoadLimits, NamedTensor,
        Precision, Storage, TensorData, TrainingSummary, DEFAULT_MAX_BYTES,
    };
    use kilotune::peft::{BitFitConfig, BitFitVariant, LoraConfig, PeftMethod, Pooling, TaskHead};

    const BASE: [u8; 32] = {
        let mut b = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            b[i] = (i as u8).wrapping_mul(37).wrapping_add(11);
            i += 1;
        }
        b
    };

    /// SplitMix64: a deterministic generator, so every run tests the same bytes.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        /// Uniform in [-1, 1).
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// A small LoRA-like delta: r = 2 on query and value of one layer (hidden 4, input 6), and
    /// a 3-class head.
    fn sample() -> Delta {
        let mut rng = Rng(42);
        let mut t = |name: &str, shape: &[u32]| {
            let n = shape.iter().product::<u32>() as usize;
            NamedTensor::f32(name, shape, (0..n).map(|_| rng.unit() * 0.5).collect())
        };
        let tensors = vec![
            t("encoder.layer.0.attention.self.query.lora_A", &[2, 6]),
            t("encoder.layer.0.attention.self.query.lora_B", &[4, 2]),
            t("encoder.layer.0.attention.self.value.lora_A", &[2, 6]),
            t("encoder.layer.0.attention.self.value.lora_B", &[4, 2]),
            t("classifier.weight", &[3, 4]),
            t("classifier.bias", &[3]),
        ];
        Delta {
            base_fingerprint: BASE,
            method: PeftMethod::Lora(LoraConfig { r: 2, alpha: 4.0, ..Default::default() }),
            head: Some(TaskHead::Classification { classes: 3, pooling: Pooling::Cls }),
            tensors,
            summary: TrainingSummary {
                steps: 120,
                epochs: 3,
                final_loss: Some(0.31),
                eval_metric: Some(("accuracy".into(), 0.875)),
                created_unix: 1_750_000_000,
                kilotune_version: "0.1.0".into(),
            },
        }
    }

    fn sample_bytes() -> Vec<u8> {
        to_bytes(&sample(), Precision::F32).unwrap()
    }

    fn decode(bytes: &[u8]) -> Result<Delta, DeltaError> {
        from_bytes(bytes, None, &LoadLimits::default())
    }

    /// Frames `body` as SPEC.md says, written independently of the crate's encoder.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = b"KTDELTA\0".to_vec();
        out.extend(1u32.to_le_bytes());
        out.extend((body.len() as u64).to_le_bytes());
        out.extend(body);
        out.extend(crc32c::crc32c(&out).to_le_bytes());
        out
    }

    /// Encodes `delta` without any validation, with a correct checksum: what a buggy or
    /// hostile writer could produce.
    fn encode_unchecked(delta: &Delta) -> Vec<u8> {
        frame(&postcard::to_allocvec(delta).unwrap())
    }

    /// Recomputes the trailer after a test edited the bytes before it.
    fn fix_crc(bytes: &mut [u8]) {
        let n = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
    }

    // ---------------------------------------------------------------- the layout

    /// LEB128, as postcard writes every integer wider than a byte.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        varint(s.len() as u64, out);
        out.extend(s.as_bytes());
    }

    #[test]
    fn encoding_matches_the_spec_byte_for_byte() {
        let delta = Delta {
            base_fingerprint: [0xab; 32],
            method: PeftMethod::Lora(LoraConfig::default()),
            head: Some(TaskHead::Regression { outputs: 300 }),
            tensors: vec![
                NamedTensor::f32("a", &[2], vec![1.0, -2.0]),
                NamedTensor { name: "h".into(), shape: vec![1], data: TensorData::F16(vec![0x3c00]) },
                NamedTensor {
                    name: "q".into(),
                    shape: vec![1, 2],
                    data: TensorData::I8 { values: vec![-1, 127], scales: vec![0.5] },
                },
            ],
            summary: TrainingSummary {
                steps: 3,
                epochs: 1,
                final_loss: Some(0.5),
                eval_metric: None,
                created_unix: 1_700_000_000,
                kilotune_version: "0.1.0".into(),
            },
        };
        // The body, field by field, as SPEC.md lays it out.
        let mut body = vec![0xab; 32]; // base_fingerprint
        body.push(0); // method: Lora
        varint(8, &mut body); // r
        body.extend(16f32.to_le_bytes()); // alpha
        body.extend(0f32.to_le_bytes()); // dropout
        varint(2, &mut body); // target_modules
        string("query", &mut body);
        string("value", &mut body);
        varint(0, &mut body); // rank_pattern
        body.extend([1, 2]); // head: Some(Regression
        varint(300, &mut body); // { outputs: 300 })
        varint(3, &mut body); // tensors
        string("a", &mut body);
        body.extend([1, 2]); // shape [2]
        body.extend([0, 2]); // F32, 2 values
        body.extend(1f32.to_le_bytes());
        body.extend((-2f32).to_le_bytes());
        string("h", &mut body);
        body.extend([1, 1]); // shape [1]
        body.extend([1, 2, 0x00, 0x3c]); // F16, 2 bytes, 1.0
        string("q", &mut body);
        body.extend([2, 1, 2]); // shape [1, 2]
        body.extend([2, 2, 0xff, 0x7f]); // I8, 2 values: -1, 127
        body.push(1); // 1 scale
        body.extend(0.5f32.to_le_bytes());
        varint(3, &mut body); // steps
        varint(1, &mut body); // epochs
        body.push(1); // final_loss: Some
        body.extend(0.5f32.to_le_bytes());
        body.push(0); // eval_metric: None
        varint(1_700_000_000, &mut body); // created_unix
        string("0.1.0", &mut body);

        // The serde layout is the spec's...
        let expected = frame(&body);
        assert_eq!(encode_unchecked(&delta), expected);
        assert_eq!(decode(&expected).unwrap(), delta);
        // ...and the crate frames it as the spec's frame does. Saving converts every tensor to
        // the one precision asked for, so frame an all-f32 copy.
        let all_f32 = delta.with_precision(Precision::F32).unwrap();
        assert_eq!(all_f32.tensor("h").unwrap().data, TensorData::F32(vec![1.0]));
        assert_eq!(all_f32.tensor("q").unwrap().data, TensorData::F32(vec![-0.5, 63.5]));
        let bytes = to_bytes(&delta, Precision::F32).unwrap();
        assert_eq!(bytes, encode_unchecked(&all_f32));
        assert_eq!(decode(&bytes).unwrap(), all_f32);
    }

    #[test]
    fn the_spec_example_is_what_the_encoder_writes() {
        let spec = include_str!("../src/delta/SPEC.md");
        let block = spec.split("<!-- example-bytes").nth(1).expect("SPEC.md has the example block");
        let block = block.split("```").nth(1).expect("the example is fenced");
        let mut expected = Vec::new();
        for line in block.lines().filter(|l| !l.trim().is_empty()) {
            let (offset, hex) = line.split_once("  ").expect("offset, two spaces, bytes");
            assert_eq!(usize::from_str_radix(offset, 16).unwrap(), expected.len(), "offset of {line:?}");
            expected.extend(hex.split(' ').map(|b| u8::from_str_radix(b, 16).unwrap()));
        }
        let delta = Delta {
            base_fingerprint: [0xab; 32],
            method: PeftMethod::BitFit(BitFitConfig { variant: BitFitVariant::QueryAndMlp, include_layer_norm: false }),
            head: None,
            tensors: vec![NamedTensor::f32("b", &[2], vec![1.0, -2.0])],
            summary: TrainingSummary {
                steps: 300,
                epochs: 1,
                final_loss: None,
                eval_metric: None,
                created_unix: 0,
                kilotune_version: "0.1.0".into(),
            },
        };
        assert_eq!(expected.len(), 87);
        assert_eq!(to_bytes(&delta, Precision::F32).unwrap(), expected);
        assert_eq!(decode(&expected).unwrap(), delta);
    }

    // ---------------------------------------------------------------- round trips

    #[test]
    fn f32_round_trip_is_exact() {
        let d = sample();
        assert_eq!(decode(&to_bytes(&d, Precision::F32).unwrap()).unwrap(), d);
        let dir = TempDir::new("f32");
        let path = dir.path().join("user.ktd");
        save(&d, &path, Precision::F32).unwrap();
        assert_eq!(load(&path, Some(&BASE), &LoadLimits::default()).unwrap(), d);
        assert_eq!(dir.names(), ["user.ktd"]);
    }

    #[test]
    fn f16_round_trip_is_within_f16_rounding() {
        let d = sample();
        let bytes = to_bytes(&d, Precision::F16).unwrap();
        assert!(bytes.len() < to_bytes(&d, Precision::F32).unwrap().len());
        let back = decode(&bytes).unwrap();
        assert_eq!(back.summary, d.summary);
        for (a, b) in d.tensors.iter().zip(&back.tensors) {
            assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
            assert_eq!(b.precision(), Precision::F16);
            for (x, y) in a.to_f32().unwrap().into_iter().zip(b.to_f32().unwrap()) {
                // Exactly what round-to-nearest gives, and so within half an f16 ulp: 2^-11
                // relative for normal values, 2^-25 absolute below them.
                assert_eq!(y, half::f16::from_f32(x).to_f32());
                assert!((x - y).abs() <= x.abs() * 2f32.powi(-11) + 2f32.powi(-25), "{x} -> {y}");
            }
        }
    }

    #[test]
    fn int8_round_trip_is_within_half_a_scale() {
        let mut d = sample();
        d.tensors.push(NamedTensor::f32("zeros", &[2, 3], vec![0.0; 6]));
        let bytes = to_bytes(&d, Precision::Int8).unwrap();
        let back = decode(&bytes).unwrap();
        for (a, b) in d.tensors.iter().zip(&back.tensors) {
            let TensorData::I8 { scales, .. } = &b.data else { panic!("{} is not int8", b.name) };
            let orig = a.to_f32().unwrap();
            // Vectors (biases) are one row; matrices one row per first-dimension index.
            let rows = if a.shape.len() < 2 { 1 } else { a.shape[0] as usize };
            let row_len = orig.len() / rows;
            let dec = b.to_f32().unwrap();
            for (r, (row, drow)) in orig.chunks(row_len).zip(dec.chunks(row_len)).enumerate() {
                let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = if max == 0.0 { 1.0 } else { max / 127.0 };
                assert_eq!(scales[r], scale, "{} row {r}", a.name);
                for (x, y) in row.iter().zip(drow) {
                    // Rounding to the nearest step is off by at most half a step; the float
                    // division and product add a few ulps on top.
                    assert!((x - y).abs() <= scale * 0.5 * (1.0 + 1e-5), "{}: {x} -> {y} (scale {scale})", a.name);
                }
            }
        }
        assert_eq!(back.tensor("zeros").unwrap().to_f32().unwrap(), [0.0; 6]);
    }

    // ---------------------------------------------------------------- the base

    #[test]
    fn wrong_base_is_refused_with_both_fingerprints() {
        let bytes = sample_bytes();
        let mut other = BASE;
        other[31] ^= 1;
        let err = from_bytes(&bytes, Some(&other), &LoadLimits::default()).unwrap_err();
        let DeltaError::WrongBase { expected, found } = err else { panic!("expected WrongBase, got {err:?}") };
        assert_eq!(found, BASE.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert_eq!(expected, other.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert_eq!(from_bytes(&bytes, Some(&BASE), &LoadLimits::default()).unwrap(), sample());

        let dir = TempDir::new("base");
        let path = dir.path().join("user.ktd");
        save(&sample(), &path, Precision::F32).unwrap();
        assert!(matches!(load(&path, Some(&other), &LoadLimits::default()), Err(DeltaError::WrongBase { .. })));
    }

    // ---------------------------------------------------------------- framing

    #[test]
    fn truncation_at_every_byte_is_truncated() {
        let bytes = sample_bytes();
        for n in 0..bytes.len() {
            match decode(&bytes[..n]) {
                Err(DeltaError::Truncated { found, .. }) => assert_eq!(found, n as u64),
                other => panic!("cut at {n} of {}: {other:?}", bytes.len()),
            }
        }
    }

    #[test]
    fn every_single_bit_flip_is_caught_by_its_own_check() {
        let bytes = sample_bytes();
        let body_len = bytes.len() as u64 - 24;
        let mut flipped = bytes.clone();
        for bit in 0..bytes.len() * 8 {
            let (at, mask) = (bit / 8, 1u8 << (bit % 8));
            flipped[at] ^= mask;
            let result = decode(&flipped);
            let ok = match at {
                0..8 => matches!(result, Err(DeltaError::BadMagic { .. })),
                8..12 => matches!(result, Err(DeltaError::UnsupportedVersion { supported: 2, .. })),
                12..20 => {
                    let declared = u64::from_le_bytes(flipped[12..20].try_into().unwrap());
                    if declared > body_len {
                        matches!(result, Err(DeltaError::Truncated { .. }))
                    } else {
                        matches!(result, Err(DeltaError::TrailingBytes { extra }) if extra == body_len - declared)
                    }
                }
                _ => matches!(result, Err(DeltaError::Checksum { .. })),
            };
            assert!(ok, "bit {bit} (byte {at}): {result:?}");
            flipped[at] ^= mask;
        }
        assert_eq!(flipped, bytes);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for extra in [1usize, 4, 100] {
            let mut bytes = sample_bytes();
            bytes.extend(vec![0u8; extra]);
            match decode(&bytes) {
                Err(DeltaError::TrailingBytes { extra: e }) => assert_eq!(e, extra as u64),
                other => panic!("{extra} extra bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_versions_are_unsupported() {
        for version in [0u32, 3, u32::MAX] {
            let mut bytes = sample_bytes();
            bytes[8..12].copy_from_slice(&version.to_le_bytes());
            fix_crc(&mut bytes);
            match decode(&bytes) {
                Err(DeltaError::UnsupportedVersion { found, supported: 2 }) => assert_eq!(found, version),
                other => panic!("version {version}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_huge_declared_length_is_truncated_not_allocated() {
        let mut bytes = sample_bytes();
        bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        fix_crc(&mut bytes);
        match decode(&bytes) {
            Err(DeltaError::Truncated { expected, found }) => {
                assert_eq!(expected, u64::MAX); // saturated, not wrapped
                assert_eq!(found, bytes.len() as u64);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn files_over_the_limit_are_too_large() {
        assert_eq!(LoadLimits::default().max_bytes, 64 << 20);
        assert_eq!(DEFAULT_MAX_BYTES, 64 << 20);
        let bytes = sample_bytes();
        let len = bytes.len() as u64;
        let tight = LoadLimits { max_bytes: len - 1 };
        assert!(
            matches!(from_bytes(&bytes, None, &tight), Err(DeltaError::TooLarge { size, limit }) if size == len && limit == len - 1)
        );
        assert!(from_bytes(&bytes, None, &LoadLimits { max_bytes: len }).is_ok());

        // From a file, reading stops one byte past the limit.
        let dir = TempDir::new("large");
        let path = dir.path().join("big.ktd");
        std::fs::write(&path, vec![0u8; 10_000]).unwrap();
        let err = load(&path, None, &LoadLimits { max_bytes: 100 }).unwrap_err();
        assert!(matches!(err, DeltaError::TooLarge { size: 101, limit: 100 }), "{err:?}");
    }

    #[test]
    fn a_body_that_does_not_decode_is_malformed() {
        // Checksummed garbage, an empty body, and a good body with a byte too many inside it.
        let mut good_body = postcard::to_allocvec(&sample()).unwrap();
        let cases = [frame(&[0xff; 40]), frame(&[]), frame(&good_body[..good_body.len() - 1]), {
            good_body.push(0);
            frame(&good_body)
        }];
        for (i, bytes) in cases.iter().enumerate() {
            assert!(matches!(decode(bytes), Err(DeltaError::Malformed(_))), "case {i}: {:?}", decode(bytes));
        }
    }

    // ---------------------------------------------------------------- semantics

    /// `d` refused by the reader with an error `check` accepts, and refused by the writer too.
    fn refused(d: &Delta, check: impl Fn(&DeltaError) -> bool) {
        let err = decode(&encode_unchecked(d)).unwrap_err();
        assert!(check(&err), "reader: {err:?}");
        let err = to_bytes(d, Precision::F32).unwrap_err();
        assert!(check(&err), "writer: {err:?}");
    }

    #[test]
    fn nan_and_infinite_values_are_refused() {
        let bad = [
            TensorData::F32(vec![0.0, f32::NAN]),
            TensorData::F32(vec![f32::INFINITY, 0.0]),
            TensorData::F32(vec![0.0, f32::NEG_INFINITY]),
            TensorData::F16(vec![0, 0x7e00]), // NaN
            TensorData::F16(vec![0xfc00, 0]), // -inf
            TensorData::I8 { values: vec![1, 2], scales: vec![f32::NAN] },
            TensorData::I8 { values: vec![1, 2], scales: vec![f32::INFINITY] },
        ];
        for data in bad {
            let mut d = sample();
            d.tensors.push(NamedTensor { name: "bad".into(), shape: vec![1, 2], data: data.clone() });
            let err = decode(&encode_unchecked(&d)).unwrap_err();
            assert!(matches!(&err, DeltaError::NonFinite { tensor } if tensor == "bad"), "{data:?}: {err:?}");
            // The writer refuses it too, whatever the precision it would store.
            for p in [Precision::F32, Precision::F16, Precision::Int8] {
                assert!(matches!(to_bytes(&d, p), Err(DeltaError::NonFinite { .. })), "{data:?} as {p:?}");
            }
        }
    }

    #[test]
    fn names_must_be_unique_non_empty_and_nul_free() {
        let mut dup = sample();
        dup.tensors[3].name = dup.tensors[0].name.clone();
        refused(&dup, |e| matches!(e, DeltaError::DuplicateName { name } if name.ends_with("query.lora_A")));
        for name in ["", "a\0b", "\0"] {
            let mut d = sample();
            d.tensors[1].name = name.into();
            refused(&d, |e| matches!(e, DeltaError::BadName { name: n } if n == name));
        }
    }

    #[test]
    fn shapes_must_match_the_data() {
        let mut short = sample();
        short.tensors[0].shape = vec![2, 7];
        refused(&short, |e| matches!(e, DeltaError::Malformed(m) if m.contains("needs 14 values, found 12")));
        let mut overflow = sample();
        overflow.tensors[0].shape = vec![u32::MAX, u32::MAX, u32::MAX];
        refused(&overflow, |e| matches!(e, DeltaError::Malformed(m) if m.contains("64 bits")));
        // Product 2^64 wraps to 0 in unchecked arithmetic; with no data it must still fail.
        let mut wrap = sample();
        wrap.tensors[0] = NamedTensor::f32("wrap", &[1 << 16, 1 << 16, 1 << 16, 1 << 16], vec![]);
        refused(&wrap, |e| matches!(e, DeltaError::Malformed(_)));
        let mut scales = sample();
        scales.tensors[0].data = TensorData::I8 { values: vec![0; 12], scales: vec![1.0; 3] };
        let err = decode(&encode_unchecked(&scales)).unwrap_err();
        assert!(matches!(&err, DeltaError::Malformed(m) if m.contains("3 int8 scales for 2 rows")), "{err:?}");
    }

    #[test]
    fn an_invalid_method_config_is_malformed() {
        let mut d = sample();
        d.method = PeftMethod::Lora(LoraConfig { r: 0, ..Default::default() });
        refused(&d, |e| matches!(e, DeltaError::Malformed(m) if m.contains("rank")));
        let mut d = sample();
        d.head = Some(TaskHead::Classification { classes: 0, pooling: Pooling::Mean });
        refused(&d, |e| matches!(e, DeltaError::Malformed(m) if m.contains("head")));
    }

    // ---------------------------------------------------------------- fuzz

    #[test]
    fn ten_thousand_random_mutations_never_panic() {
        let good = sample_bytes();
        let int8 = to_bytes(&sample(), Precision::Int8).unwrap();
        let f16 = to_bytes(&sample(), Precision::F16).unwrap();
        let mut rng = Rng(7);
        let (mut accepted, mut malformed) = (0, 0);
        for i in 0..10_000 {
            let mut b = [&good, &int8, &f16][i % 3].clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(6) {
                    0 if !b.is_empty() => {
                        let at = rng.below(b.len());
                        b[at] ^= 1 << rng.below(8);
                    }
                    1 if !b.is_empty() => {
                        let at = rng.below(b.len());
                        b[at] = rng.next() as u8;
                    }
                    2 => b.truncate(rng.below(b.len() + 1)),
                    3 => {
                        let at = rng.below(b.len() + 1);
                        b.insert(at, rng.next() as u8);
                    }
                    4 if !b.is_empty() => {
                        b.remove(rng.below(b.len()));
                    }
                    _ => {
                        let at = rng.below(b.len() + 1);
                        b.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0x0f]); // a huge varint
                    }
                }
            }
            // Half the time, make the header and checksum right again so the mutation reaches
            // the body decoder and the semantic checks instead of stopping at the CRC.
            if i % 2 == 0 && b.len() >= 24 {
                let body_len = (b.len() - 24) as u64;
                b[..8].copy_from_slice(b"KTDELTA\0");
                b[8..12].copy_from_slice(&1u32.to_le_bytes());
                b[12..20].copy_from_slice(&body_len.to_le_bytes());
                fix_crc(&mut b);
            }
            match decode(&b) {
                Ok(d) => {
                    accepted += 1;
                    d.validate().unwrap();
                }
                Err(DeltaError::Malformed(_)) => malformed += 1,
                Err(_) => {}
            }
        }
        // The fuzzing must reach the decoder, or it tests only the checksum.
        assert!(malformed > 1000, "only {malformed} mutations reached the body decoder");
        eprintln!("{accepted} mutated files still decoded to valid deltas, {malformed} were malformed");
    }

    // ---------------------------------------------------------------- atomic save

    /// A scratch folder, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("kilotune-delta-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
        fn path(&self) -> &Path {
            &self.0
        }
        /// The names in the folder, sorted.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fault {
        /// The folder is read-only: creating the temporary file is refused.
        ReadOnlyDir,
        /// The disk fills up halfway through the write (the partial file stays behind).
        DiskFull,
        /// Flushing the file fails.
        Sync,
        /// The rename fails.
        Rename,
        /// Flushing the folder fails (after the rename).
        SyncDir,
        /// The first temporary name is taken.
        NameTaken,
    }

    /// The real filesystem with one fault injected.
    struct Faulty {
        fault: Fault,
        writes: Cell<u32>,
    }

    impl Faulty {
        fn new(fault: Fault) -> Faulty {
            Faulty { fault, writes: Cell::new(0) }
        }
        fn fail(&self, f: Fault) -> io::Result<()> {
            if self.fault == f {
                Err(io::Error::other(format!("injected {f:?}")))
            } else {
                Ok(())
            }
        }
    }

    impl Storage for Faulty {
        fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            self.writes.set(self.writes.get() + 1);
            match self.fault {
                Fault::ReadOnlyDir => Err(io::Error::from(io::ErrorKind::PermissionDenied)),
                Fault::DiskFull => {
                    FsStorage.write_new(path, &bytes[..bytes.len() / 2])?;
                    Err(io::Error::other("no space left on device"))
                }
                Fault::NameTaken if self.writes.get() == 1 => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
                _ => FsStorage.write_new(path, bytes),
            }
        }
        fn sync(&self, path: &Path) -> io::Result<()> {
            self.fail(Fault::Sync)?;
            FsStorage.sync(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.fail(Fault::Rename)?;
            FsStorage.rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.fail(Fault::SyncDir)?;
            FsStorage.sync_dir(dir)
        }
        fn read(&self, path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
            FsStorage.read(path, max_bytes)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            FsStorage.remove(path)
        }
    }

    fn newer() -> Delta {
        let mut d = sample();
        d.summary.steps += 1000;
        d.tensors[0] = NamedTensor::f32(d.tensors[0].name.clone(), &[2, 6], vec![0.25; 12]);
        d
    }

    #[test]
    fn a_failed_save_leaves_the_old_delta_and_no_temporary_file() {
        for fault in [Fault::ReadOnlyDir, Fault::DiskFull, Fault::Sync, Fault::Rename] {
            let dir = TempDir::new("fault");
            let path = dir.path().join("user.ktd");
            save(&sample(), &path, Precision::F32).unwrap();
            let old = std::fs::read(&path).unwrap();
            let err = save_with(&Faulty::new(fault), &newer(), &path, Precision::F32).unwrap_err();
            assert!(matches!(err, DeltaError::Io { .. }), "{fault:?}: {err:?}");
            assert_eq!(std::fs::read(&path).unwrap(), old, "{fault:?} changed the old delta");
            assert_eq!(dir.names(), ["user.ktd"], "{fault:?} left files behind");
            assert_eq!(load(&path, Some(&BASE), &LoadLimits::default()).unwrap(), sample());
        }
    }

    #[test]
    fn a_failed_folder_flush_is_reported_after_the_new_delta_is_in_place() {
        let dir = TempDir::new("syncdir");
        let path = dir.path().join("user.ktd");
        save(&sample(), &path, Precision::F32).unwrap();
        let err = save_with(&Faulty::new(Fault::SyncDir), &newer(), &path, Precision::F32).unwrap_err();
        assert!(matches!(&err, DeltaError::Io { path: p, .. } if p == dir.path()), "{err:?}");
        assert_eq!(load(&path, None, &LoadLimits::default()).unwrap(), newer());
        assert_eq!(dir.names(), ["user.ktd"]);
    }

    #[test]
    fn a_taken_temporary_name_is_skipped() {
        let dir = TempDir::new("taken");
        let path = dir.path().join("user.ktd");
        let storage = Faulty::new(Fault::NameTaken);
        save_with(&storage, &sample(), &path, Precision::F16).unwrap();
        assert_eq!(storage.writes.get(), 2);
        assert_eq!(dir.names(), ["user.ktd"]);
        assert_eq!(
            load_with(&storage, &path, None, &LoadLimits::default()).unwrap().tensors[0].precision(),
            Precision::F16
        );
    }

    #[test]
    fn a_save_replaces_the_old_delta() {
        let dir = TempDir::new("replace");
        let path = dir.path().join("user.ktd");
        save(&sample(), &path, Precision::F32).unwrap();
        save(&newer(), &path, Precision::F32).unwrap();
        assert_eq!(load(&path, Some(&BASE), &LoadLimits::default()).unwrap(), newer());
        assert_eq!(dir.names(), ["user.ktd"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "a delta is private to its user");
        }
    }

    #[test]
    fn a_real_rename_failure_leaves_the_target_and_no_temporary_file() {
        // Renaming a file over a non-empty folder fails on every platform, even for root.
        let dir = TempDir::new("rename");
        let path = dir.path().join("user.ktd");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"x").unwrap();
        let err = save(&sample(), &path, Precision::F32).unwrap_err();
        assert!(matches!(&err, DeltaError::Io { path: p, .. } if p == &path), "{err:?}");
        assert_eq!(std::fs::read(path.join("keep")).unwrap(), b"x");
        assert_eq!(dir.names(), ["user.ktd"]);
    }

    #[test]
    fn saving_into_a_missing_folder_creates_nothing() {
        let dir = TempDir::new("missing");
        let path = dir.path().join("no-such-folder").join("user.ktd");
        assert!(matches!(save(&sample(), &path, Precision::F32), Err(DeltaError::Io { .. })));
        assert!(dir.names().is_empty());
        assert!(matches!(load(&path, None, &LoadLimits::default()), Err(DeltaError::Io { action: "read", .. })));
    }

    #[test]
    fn an_invalid_delta_is_never_written() {
        let dir = TempDir::new("invalid");
        let path = dir.path().join("user.ktd");
        save(&sample(), &path, Precision::F32).unwrap();
        let old = std::fs::read(&path).unwrap();
        let mut bad = newer();
        bad.tensors[2].name = String::new();
        assert!(matches!(save(&bad, &path, Precision::F32), Err(DeltaError::BadName { .. })));
        let mut big = newer();
        big.tensors[2] = NamedTensor::f32("big", &[1], vec![1e6]); // beyond f16's range
        assert!(matches!(save(&big, &path, Precision::F16), Err(DeltaError::NonFinite { tensor }) if tensor == "big"));
        assert_eq!(std::fs::read(&path).unwrap(), old);
        assert_eq!(dir.names(), ["user.ktd"]);
    }
}
