//! Every public error variant is produced by a test that matches on it.
//!
//! One table per public error enum lists, for each variant, the test that makes real input
//! fail with it. Each table carries an exhaustive `match` without a wildcard (possible only
//! inside this crate, since the enums are `#[non_exhaustive]`), so a variant added to an enum
//! does not compile until it is listed here; and the test below reads each named test's source
//! to check that it exists, is a `#[test]`, and matches on that variant. A variant no input can
//! produce says why instead of naming a test.
//!
//! `cargo test --workspace --lib error_coverage -- --nocapture` prints the table that
//! `docs/robustness.md` shows.

use crate::delta::peft_interop::PeftInteropError;
use crate::delta::DeltaError;
use crate::import::gguf::GgufError;
use crate::import::ImportError;
use crate::peft::merge::MergeError;
use crate::Error;

/// What produces a variant.
enum By {
    /// A test: the file (from the workspace root) and the test function's name.
    Test(&'static str, &'static str),
    /// Nothing a caller's input can reach, and why.
    Nothing(&'static str),
}

struct Row {
    /// `Enum::Variant`.
    path: &'static str,
    by: By,
}

/// A test of `tests/tests/malformed/<module>.rs`.
fn malformed(module: &'static str, test: &'static str) -> By {
    let file = SOURCES.iter().map(|(f, _)| *f).find(|f| f.ends_with(&format!("/malformed/{module}.rs")));
    By::Test(file.unwrap_or_else(|| panic!("malformed/{module}.rs is not in SOURCES")), test)
}

/// The sources the tables name, read at compile time so the check needs no file system.
const SOURCES: &[(&str, &str)] = &[
    ("tests/tests/malformed/ktd.rs", include_str!("../../tests/tests/malformed/ktd.rs")),
    ("tests/tests/malformed/onnx.rs", include_str!("../../tests/tests/malformed/onnx.rs")),
    ("tests/tests/malformed/imports.rs", include_str!("../../tests/tests/malformed/imports.rs")),
    ("tests/tests/malformed/other.rs", include_str!("../../tests/tests/malformed/other.rs")),
    ("tests/tests/tasks.rs", include_str!("../../tests/tests/tasks.rs")),
    ("tests/tests/parity.rs", include_str!("../../tests/tests/parity.rs")),
    ("runtime/src/train/optim.rs", include_str!("train/optim.rs")),
    ("runtime/src/peft/merge/tests.rs", include_str!("peft/merge/tests.rs")),
    ("runtime/src/import/tests.rs", include_str!("import/tests.rs")),
    ("runtime/src/import/gguf/tests/hostile.rs", include_str!("import/gguf/tests/hostile.rs")),
    ("runtime/src/import/gguf/tests/llama.rs", include_str!("import/gguf/tests/llama.rs")),
    ("runtime/src/delta/peft_interop/tests.rs", include_str!("delta/peft_interop/tests.rs")),
];

/// Defines `$rows()`: the table of `$enum`, checked exhaustive at compile time.
macro_rules! table {
    ($rows:ident, $enum:ident { $($variant:ident $pat:tt => $by:expr,)+ }) => {
        fn $rows() -> Vec<Row> {
            // Never called: it exists so that a new variant fails to compile until listed.
            #[allow(dead_code)]
            fn listed(e: &$enum) {
                match e {
                    $($enum::$variant $pat => {})+
                }
            }
            vec![$(Row { path: concat!(stringify!($enum), "::", stringify!($variant)), by: $by }),+]
        }
    };
}

table!(error_rows, Error {
    Io { .. } => malformed("onnx", "onnx_missing_file_is_io"),
    TooLarge { .. } => malformed("onnx", "onnx_oversized_file_is_too_large_before_parsing"),
    Protobuf(..) => malformed("onnx", "onnx_u64_max_length_is_a_protobuf_error"),
    UnsupportedOp { .. } => malformed("onnx", "onnx_unsupported_op_names_the_op_and_node"),
    UnsupportedAttribute { .. } => malformed("onnx", "onnx_unsupported_attribute_is_refused"),
    InvalidModel(..) => malformed("onnx", "onnx_tensor_shape_data_mismatch_is_an_invalid_model"),
    ExternalData { .. } => malformed("onnx", "onnx_external_data_absolute_path_is_refused"),
    BadInput { .. } => By::Test("tests/tests/tasks.rs", "a_batch_for_another_task_is_refused"),
    Shape { .. } => malformed("other", "run_time_shape_mismatch_is_a_shape_error"),
    Npy(..) => malformed("other", "npy_malformed_header_is_npy"),
    Delta(..) => By::Test("runtime/src/peft/merge/tests.rs", "a_delta_for_another_base_is_refused"),
    Merge(..) => malformed("other", "merge_requantizing_an_asymmetric_int8_weight_is_refused"),
    Import(..) => malformed("imports", "config_json_malformed_out_of_range_or_unknown_is_refused"),
    Config(..) => By::Test("runtime/src/train/optim.rs", "invalid_configs_and_groups_are_refused"),
    BackendUnavailable(..) => By::Test("tests/tests/parity.rs", "backends_not_compiled_in_are_a_typed_error"),
    Backend { .. } => By::Nothing(
        "returned only by the optional ort, tract and vulkan backends (cargo features) for their own library's failures",
    ),
});

table!(delta_rows, DeltaError {
    Io { .. } => malformed("ktd", "delta_missing_file_is_io"),
    TooLarge { .. } => malformed("ktd", "delta_oversized_file_is_too_large_before_it_is_read"),
    Truncated { .. } => malformed("ktd", "delta_every_truncation_of_a_real_delta_is_truncated"),
    TrailingBytes { .. } => malformed("ktd", "delta_bytes_after_the_declared_end_are_trailing"),
    BadMagic { .. } => malformed("ktd", "delta_wrong_magic_is_bad_magic"),
    UnsupportedVersion { .. } => malformed("ktd", "delta_unknown_version_is_unsupported"),
    Checksum { .. } => malformed("ktd", "delta_every_single_bit_flip_of_a_real_delta_is_rejected"),
    Malformed(..) => malformed("ktd", "delta_shape_data_mismatch_is_malformed"),
    NonFinite { .. } => malformed("ktd", "delta_nan_and_infinite_tensors_are_non_finite"),
    DuplicateName { .. } => malformed("ktd", "delta_duplicate_tensor_names_are_refused"),
    BadName { .. } => malformed("ktd", "delta_empty_or_nul_containing_names_are_bad_names"),
    WrongBase { .. } => malformed("ktd", "delta_for_another_base_is_wrong_base"),
});

table!(import_rows, ImportError {
    Config(..) => malformed("imports", "config_json_malformed_out_of_range_or_unknown_is_refused"),
    UnsupportedArchitecture(..) => malformed("imports", "config_json_malformed_out_of_range_or_unknown_is_refused"),
    MissingTensor(..) => By::Test("runtime/src/import/tests.rs", "missing_and_misshapen_tensors_name_the_tensor"),
    TensorShape { .. } => By::Test("runtime/src/import/tests.rs", "missing_and_misshapen_tensors_name_the_tensor"),
    Safetensors(..) => malformed("imports", "safetensors_u64_max_header_length_is_refused"),
    Gguf(..) => malformed("imports", "gguf_wrong_magic_or_empty_file_is_bad_magic"),
});

table!(merge_rows, MergeError {
    AsymmetricInt8 { .. } => malformed("other", "merge_requantizing_an_asymmetric_int8_weight_is_refused"),
    Irreversible { .. } => By::Test("runtime/src/peft/merge/tests.rs", "requantizing_reports_its_error_correctly"),
    OnnxLayout { .. } => By::Test("runtime/src/peft/merge/tests.rs", "the_wrong_file_is_a_layout_error"),
    Head(..) => malformed("other", "merge_head_without_its_tensors_is_a_head_error"),
});

const PEFT_TESTS: &str = "runtime/src/delta/peft_interop/tests.rs";

table!(peft_rows, PeftInteropError {
    Io { .. } => malformed("imports", "peft_adapter_missing_files_are_io"),
    TooLarge { .. } => malformed("imports", "peft_adapter_oversized_files_are_too_large_before_they_are_read"),
    Json { .. } => malformed("imports", "peft_adapter_bad_json_config_is_json"),
    Safetensors { .. } => malformed("imports", "peft_adapter_u64_max_header_length_is_a_safetensors_error"),
    Unsupported { .. } => malformed("imports", "peft_adapter_unsupported_feature_is_unsupported"),
    UnexpectedTensor { .. } => By::Test(PEFT_TESTS, "peft_interop_refuses_unknown_ambiguous_and_stray_tensors"),
    UnknownModule { .. } => By::Test(PEFT_TESTS, "peft_interop_refuses_unknown_ambiguous_and_stray_tensors"),
    AmbiguousModule { .. } => By::Test(PEFT_TESTS, "peft_interop_refuses_unknown_ambiguous_and_stray_tensors"),
    Shape { .. } => By::Test(PEFT_TESTS, "peft_interop_refuses_bad_shapes_and_lone_factors"),
    MissingPair { .. } => By::Test(PEFT_TESTS, "peft_interop_refuses_bad_shapes_and_lone_factors"),
    InvalidConfig(..) => malformed("imports", "peft_adapter_out_of_range_config_is_invalid_config"),
    Delta(..) => malformed("imports", "peft_adapter_nan_weight_is_a_non_finite_delta"),
});

const HOSTILE: &str = "runtime/src/import/gguf/tests/hostile.rs";
const GGUF_LLAMA: &str = "runtime/src/import/gguf/tests/llama.rs";

table!(gguf_rows, GgufError {
    BadMagic { .. } => malformed("imports", "gguf_wrong_magic_or_empty_file_is_bad_magic"),
    UnsupportedVersion { .. } => malformed("imports", "gguf_unknown_version_is_unsupported"),
    Truncated { .. } => malformed("imports", "gguf_truncated_header_is_truncated"),
    StringPastEnd { .. } => malformed("imports", "gguf_u64_max_counts_and_lengths_are_refused_before_reserving"),
    CountPastEnd { .. } => malformed("imports", "gguf_u64_max_counts_and_lengths_are_refused_before_reserving"),
    NonUtf8 { .. } => By::Test(HOSTILE, "non_utf8_strings"),
    BadValueType { .. } => By::Test(HOSTILE, "bad_type_ids_and_bools"),
    BadBool { .. } => By::Test(HOSTILE, "bad_type_ids_and_bools"),
    NestingTooDeep { .. } => By::Test(HOSTILE, "nesting_is_bounded"),
    DuplicateKey { .. } => By::Test(HOSTILE, "duplicate_keys_and_tensors"),
    MetadataType { .. } => By::Test(HOSTILE, "alignment_must_be_a_u32_power_of_two"),
    MissingKey { .. } => By::Test(GGUF_LLAMA, "bad_hyper_parameters"),
    BadAlignment { .. } => By::Test(HOSTILE, "alignment_must_be_a_u32_power_of_two"),
    TooManyDims { .. } => By::Test(HOSTILE, "shapes_ranks_and_types"),
    ShapeOverflow { .. } => By::Test(HOSTILE, "shapes_ranks_and_types"),
    BadTensorType { .. } => By::Test(HOSTILE, "shapes_ranks_and_types"),
    BlockMisfit { .. } => By::Test(HOSTILE, "shapes_ranks_and_types"),
    DuplicateTensor { .. } => By::Test(HOSTILE, "duplicate_keys_and_tensors"),
    MisalignedTensor { .. } => By::Test(HOSTILE, "offsets_outside_the_data_section_or_misaligned"),
    TensorOutOfBounds { .. } => By::Test(HOSTILE, "offsets_outside_the_data_section_or_misaligned"),
    OverlappingTensors { .. } => By::Test(HOSTILE, "offsets_outside_the_data_section_or_misaligned"),
    UnsupportedTensorType { .. } => By::Test(HOSTILE, "a_type_kilotune_does_not_dequantize_is_named"),
    UnsupportedArchitecture { .. } => By::Test(GGUF_LLAMA, "other_architectures_are_refused"),
    BadConfig { .. } => By::Test(GGUF_LLAMA, "bad_hyper_parameters"),
    UnmappedTensor { .. } => By::Test(GGUF_LLAMA, "missing_unknown_and_misshapen_tensors"),
    UnsupportedTokenizer { .. } => By::Test(GGUF_LLAMA, "bad_or_unsupported_tokenizers"),
    BadTokenizer { .. } => By::Test(GGUF_LLAMA, "bad_or_unsupported_tokenizers"),
});

/// The body of `#[test] fn name` in `src`: from its signature to the closing brace at the
/// signature's indentation.
fn test_body<'a>(src: &'a str, name: &str) -> Option<&'a str> {
    let lines: Vec<&str> = src.split_inclusive('\n').collect();
    let text = |l: &str| l.trim_end_matches(['\n', '\r']).to_owned();
    let sig = format!("fn {name}(");
    let at = lines.iter().position(|l| l.trim_start().starts_with(&sig))?;
    if !lines[at.saturating_sub(4)..at].iter().any(|l| l.trim() == "#[test]") {
        return None;
    }
    let first = text(lines[at]);
    let close = format!("{}}}", &first[..first.len() - first.trim_start().len()]);
    let end = at + lines[at..].iter().position(|l| text(l) == close)?;
    let offset = |i: usize| lines[..i].iter().map(|l| l.len()).sum::<usize>();
    Some(&src[offset(at)..offset(end)])
}

/// Whether `text` names `path` (`Enum::Variant`) as a whole word: `Error::Io` is not in
/// `DeltaError::Io`, nor `Error::Shape` in `Error::ShapeX`.
fn names(text: &str, path: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(path).any(|(i, _)| {
        let before = text[..i].chars().next_back().is_none_or(|c| !ident(c));
        let after = text[i + path.len()..].chars().next().is_none_or(|c| !ident(c));
        before && after
    })
}

#[test]
fn every_public_error_variant_is_produced_by_a_named_test() {
    let tables = [error_rows(), delta_rows(), import_rows(), merge_rows(), peft_rows(), gguf_rows()];
    let mut unreachable = Vec::new();
    let mut count = 0;
    println!("| variant | produced by |\n|---|---|");
    for row in tables.iter().flatten() {
        count += 1;
        match row.by {
            By::Test(file, test) => {
                let src = SOURCES.iter().find(|(f, _)| *f == file).unwrap_or_else(|| panic!("{file} is not in SOURCES")).1;
                let body = test_body(src, test).unwrap_or_else(|| panic!("{}: no #[test] fn {test} in {file}", row.path));
                assert!(names(body, row.path), "{}: {file} `{test}` does not match on it", row.path);
                println!("| `{}` | `{file}`: `{test}` |", row.path);
            }
            By::Nothing(why) => {
                unreachable.push(row.path);
                println!("| `{}` | none: {why} |", row.path);
            }
        }
    }
    assert_eq!(unreachable, ["Error::Backend"]);
    assert_eq!(count, 16 + 12 + 6 + 4 + 12 + 27);
}

#[test]
fn error_coverage_checks_can_fail() {
    let src = "#[test]\nfn a() {\n    x(Error::Io { .. });\n}\n\nfn b() {\n    DeltaError::Io;\n}\n";
    assert!(names(test_body(src, "a").expect("a is a test"), "Error::Io"));
    assert!(test_body(src, "b").is_none(), "b is not a #[test]");
    assert!(!names("DeltaError::Io", "Error::Io"));
    assert!(!names("Error::Shapes", "Error::Shape"));
    assert!(test_body(src, "c").is_none());
}
