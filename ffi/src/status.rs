//! The public error kinds: a small, explicitly numbered set a caller can act on, and the one
//! place where the runtime's rich errors are mapped onto it.
//!
//! The numbers are part of the ABI. Never renumber or reuse one; add new kinds at the end.
//! Java's `KilotuneException.status()` and Swift's `KilotuneError.status` carry the same
//! numbers.

use kilotune::delta::DeltaError;
use kilotune::Error;

/// The result of every fallible kilotune call: `KT_OK` (0) or an error kind, after which
/// `kt_last_error_message()` says what happened. A plain `int32_t`, so every language reads it
/// the same way; the numbering never changes.
pub type kt_status = i32;

/// Success.
pub const KT_OK: kt_status = 0;
/// A required pointer argument was NULL (or misaligned).
pub const KT_ERR_NULL_ARGUMENT: kt_status = 1;
/// An argument is out of range: a constant the library does not know, a size that overflows,
/// an index past the end, a string that is not UTF-8.
pub const KT_ERR_INVALID_ARGUMENT: kt_status = 2;
/// A configuration value is invalid (rank 0, a negative learning rate, a method that selects
/// no parameter of this base, ...).
pub const KT_ERR_CONFIG: kt_status = 3;
/// A file could not be read or written.
pub const KT_ERR_IO: kt_status = 4;
/// The model file is not one kilotune can load (malformed, unsupported op or attribute,
/// external data outside its folder, ...).
pub const KT_ERR_MODEL: kt_status = 5;
/// The inputs do not fit the model (missing input, wrong rank or size, label out of range).
pub const KT_ERR_INPUT: kt_status = 6;
/// A delta file is corrupt: bad magic, checksum, truncation, malformed body, NaN values.
pub const KT_ERR_DELTA_CORRUPT: kt_status = 7;
/// A delta file has a format version this build cannot read.
pub const KT_ERR_DELTA_VERSION: kt_status = 8;
/// A delta was trained on another base model.
pub const KT_ERR_DELTA_WRONG_BASE: kt_status = 9;
/// The library panicked. The message says where; free the handle that was involved.
pub const KT_ERR_PANIC: kt_status = 10;
/// An error the library could not classify (a bug: please report the message).
pub const KT_ERR_INTERNAL: kt_status = 11;

/// The status codes as a Rust enum, for matching; each variant's value is its `KT_*` code.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `KT_OK`.
    Ok = KT_OK,
    /// `KT_ERR_NULL_ARGUMENT`.
    NullArgument = KT_ERR_NULL_ARGUMENT,
    /// `KT_ERR_INVALID_ARGUMENT`.
    InvalidArgument = KT_ERR_INVALID_ARGUMENT,
    /// `KT_ERR_CONFIG`.
    Config = KT_ERR_CONFIG,
    /// `KT_ERR_IO`.
    Io = KT_ERR_IO,
    /// `KT_ERR_MODEL`.
    Model = KT_ERR_MODEL,
    /// `KT_ERR_INPUT`.
    Input = KT_ERR_INPUT,
    /// `KT_ERR_DELTA_CORRUPT`.
    DeltaCorrupt = KT_ERR_DELTA_CORRUPT,
    /// `KT_ERR_DELTA_VERSION`.
    DeltaVersion = KT_ERR_DELTA_VERSION,
    /// `KT_ERR_DELTA_WRONG_BASE`.
    DeltaWrongBase = KT_ERR_DELTA_WRONG_BASE,
    /// `KT_ERR_PANIC`.
    Panic = KT_ERR_PANIC,
    /// `KT_ERR_INTERNAL`.
    Internal = KT_ERR_INTERNAL,
}

impl Status {
    /// Every status, in numeric order.
    pub(crate) const ALL: [Status; 12] = [
        Status::Ok,
        Status::NullArgument,
        Status::InvalidArgument,
        Status::Config,
        Status::Io,
        Status::Model,
        Status::Input,
        Status::DeltaCorrupt,
        Status::DeltaVersion,
        Status::DeltaWrongBase,
        Status::Panic,
        Status::Internal,
    ];

    /// The constant's name, NUL-terminated, e.g. `"KT_ERR_IO\0"`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "KT_OK\0",
            Status::NullArgument => "KT_ERR_NULL_ARGUMENT\0",
            Status::InvalidArgument => "KT_ERR_INVALID_ARGUMENT\0",
            Status::Config => "KT_ERR_CONFIG\0",
            Status::Io => "KT_ERR_IO\0",
            Status::Model => "KT_ERR_MODEL\0",
            Status::Input => "KT_ERR_INPUT\0",
            Status::DeltaCorrupt => "KT_ERR_DELTA_CORRUPT\0",
            Status::DeltaVersion => "KT_ERR_DELTA_VERSION\0",
            Status::DeltaWrongBase => "KT_ERR_DELTA_WRONG_BASE\0",
            Status::Panic => "KT_ERR_PANIC\0",
            Status::Internal => "KT_ERR_INTERNAL\0",
        }
    }

    /// The status with this number, if there is one.
    pub fn from_code(code: kt_status) -> Option<Status> {
        Status::ALL.get(usize::try_from(code).ok()?).copied()
    }
}

/// Why a boundary call failed: the public kind plus the message for `kt_last_error_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The public kind.
    pub status: Status,
    /// What happened, for a person.
    pub message: String,
}

impl Failure {
    /// A failure of kind `status`.
    pub fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }

    /// A required pointer (or Java reference) `name` was null.
    pub fn null(name: &str) -> Failure {
        Failure::new(Status::NullArgument, format!("`{name}` is NULL"))
    }

    /// Argument `name` is out of range.
    pub fn invalid(name: &str, why: impl std::fmt::Display) -> Failure {
        Failure::new(Status::InvalidArgument, format!("`{name}`: {why}"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(status_of(&e), e.to_string())
    }
}

impl From<DeltaError> for Failure {
    fn from(e: DeltaError) -> Failure {
        Failure::new(delta_status(&e), e.to_string())
    }
}

/// The public kind of a runtime error: the one mapping from the rich enum to the stable codes.
pub fn status_of(e: &Error) -> Status {
    match e {
        Error::Io { .. } => Status::Io,
        Error::TooLarge { .. }
        | Error::Protobuf(_)
        | Error::UnsupportedOp { .. }
        | Error::UnsupportedAttribute { .. }
        | Error::InvalidModel(_)
        | Error::ExternalData { .. }
        | Error::Npy(_) => Status::Model,
        Error::BadInput { .. } | Error::Shape { .. } => Status::Input,
        Error::Delta(d) => delta_status(d),
        Error::Config(_) => Status::Config,
        // `Error` is non-exhaustive: a kind added later is reported, not guessed at.
        _ => Status::Internal,
    }
}

fn delta_status(e: &DeltaError) -> Status {
    match e {
        DeltaError::Io { .. } => Status::Io,
        DeltaError::UnsupportedVersion { .. } => Status::DeltaVersion,
        DeltaError::WrongBase { .. } => Status::DeltaWrongBase,
        DeltaError::TooLarge { .. }
        | DeltaError::Truncated { .. }
        | DeltaError::TrailingBytes { .. }
        | DeltaError::BadMagic { .. }
        | DeltaError::Checksum { .. }
        | DeltaError::Malformed(_)
        | DeltaError::NonFinite { .. }
        | DeltaError::DuplicateName { .. }
        | DeltaError::BadName { .. } => Status::DeltaCorrupt,
        _ => Status::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_numbers() {
        // The numbering is ABI: this test changing means every binding's copy must too.
        let want = [
            ("KT_OK", 0),
            ("KT_ERR_NULL_ARGUMENT", 1),
            ("KT_ERR_INVALID_ARGUMENT", 2),
            ("KT_ERR_CONFIG", 3),
            ("KT_ERR_IO", 4),
            ("KT_ERR_MODEL", 5),
            ("KT_ERR_INPUT", 6),
            ("KT_ERR_DELTA_CORRUPT", 7),
            ("KT_ERR_DELTA_VERSION", 8),
            ("KT_ERR_DELTA_WRONG_BASE", 9),
            ("KT_ERR_PANIC", 10),
            ("KT_ERR_INTERNAL", 11),
        ];
        for (s, (name, code)) in Status::ALL.iter().zip(want) {
            assert_eq!(*s as i32, code);
            assert_eq!(s.name().trim_end_matches('\0'), name);
            assert_eq!(Status::from_code(code), Some(*s));
        }
        assert_eq!(Status::from_code(12), None);
        assert_eq!(Status::from_code(-1), None);
    }

    /// Where each status is returned by a real call and asserted: a test here, or a check in the
    /// C programs (`ffi/tests/c`, run by `tests/c_programs.rs`). Exhaustive, with no wildcard,
    /// so a new status does not compile until it names its test.
    fn asserted_in(s: Status) -> Option<(&'static str, &'static str)> {
        const JOURNEY: &str = "tests/c/journey.c";
        const HERE: &str = "the test below";
        const BOUNDARY: &str = "src/boundary.rs";
        match s {
            Status::Ok => Some((HERE, "Some(Status::Ok)")),
            Status::NullArgument => Some((JOURNEY, "== KT_ERR_NULL_ARGUMENT")),
            Status::InvalidArgument => Some((JOURNEY, "== KT_ERR_INVALID_ARGUMENT")),
            Status::Config => Some((JOURNEY, "== KT_ERR_CONFIG")),
            Status::Io => Some((HERE, "Some(Status::Io)")),
            Status::Model => Some((HERE, "Some(Status::Model)")),
            Status::Input => Some((JOURNEY, "== KT_ERR_INPUT")),
            Status::DeltaCorrupt => Some((HERE, "Some(Status::DeltaCorrupt)")),
            Status::DeltaVersion => Some((HERE, "Some(Status::DeltaVersion)")),
            Status::DeltaWrongBase => Some((HERE, "Some(Status::DeltaWrongBase)")),
            Status::Panic => Some((BOUNDARY, "assert_eq!(status, Status::Panic as kt_status)")),
            // Returned for runtime errors the C API cannot meet (merging, importing, optional
            // backends) and for broken internal invariants: no input reaches it.
            Status::Internal => None,
        }
    }

    #[test]
    fn every_status_is_returned_by_a_real_call_in_some_test() {
        let this = include_str!("status.rs");
        // The test below, not this table (which holds the same strings).
        let below = &this[this.rfind("fn loads_return_the_status_of_their_failure(").expect("defined below")..];
        let source = |name: &str| match name {
            "tests/c/journey.c" => include_str!("../tests/c/journey.c"),
            "src/boundary.rs" => include_str!("boundary.rs"),
            _ => below,
        };
        let unreached: Vec<Status> = Status::ALL.into_iter().filter(|&s| asserted_in(s).is_none()).collect();
        assert_eq!(unreached, [Status::Internal]);
        for s in Status::ALL {
            if let Some((file, needle)) = asserted_in(s) {
                assert!(source(file).contains(needle), "{s:?}: `{needle}` is not asserted in {file}");
            }
        }
    }

    #[test]
    fn loads_return_the_status_of_their_failure() {
        use std::ffi::CString;

        use kilotune::delta::{self, Delta, NamedTensor, Precision, TrainingSummary};

        use crate::c::base::{kt_base_free, kt_base_load, kt_base_load_bytes};
        use crate::c::delta::{kt_delta_free, kt_delta_load};
        use crate::c::KT_WEIGHTS_AS_SHIPPED;

        let dir = std::env::temp_dir().join(format!("kilotune-ffi-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("writable");
        let c = |p: &std::path::Path| CString::new(p.to_str().expect("UTF-8 path")).expect("no NUL");
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-bert.dynamo.onnx");
        let mut base = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path and a valid out-pointer.
        let ok = unsafe { kt_base_load(c(&fixture).as_ptr(), KT_WEIGHTS_AS_SHIPPED, &mut base) };
        assert_eq!(Status::from_code(ok), Some(Status::Ok));
        let mut none = std::ptr::null_mut();
        // SAFETY: as above; the file does not exist.
        let io = unsafe { kt_base_load(c(&dir.join("missing.onnx")).as_ptr(), KT_WEIGHTS_AS_SHIPPED, &mut none) };
        assert_eq!(Status::from_code(io), Some(Status::Io));
        let garbage = [0xffu8; 64];
        // SAFETY: 64 readable bytes and a valid out-pointer.
        let model = unsafe { kt_base_load_bytes(garbage.as_ptr(), garbage.len(), KT_WEIGHTS_AS_SHIPPED, &mut none) };
        assert_eq!(Status::from_code(model), Some(Status::Model));
        assert!(none.is_null(), "out-parameters are written only on success");

        // SAFETY: `base` was just loaded.
        let fingerprint = unsafe { &*base }.base.fingerprint();
        let d = Delta {
            base_fingerprint: fingerprint,
            method: Default::default(),
            head: None,
            tensors: vec![NamedTensor::f32("m.lora_A", &[1, 2], vec![0.5, -0.5])],
            summary: TrainingSummary::default(),
        };
        let good = delta::to_bytes(&d, Precision::F32).expect("encodes");
        let status_of_file = |bytes: &[u8]| {
            let path = dir.join("user.ktd");
            std::fs::write(&path, bytes).expect("writable");
            let mut out = std::ptr::null_mut();
            // SAFETY: a live base, a NUL-terminated path and a valid out-pointer.
            let s = unsafe { kt_delta_load(base, c(&path).as_ptr(), &mut out) };
            // SAFETY: `out` is NULL or the delta just loaded.
            unsafe { kt_delta_free(out) };
            Status::from_code(s)
        };
        assert_eq!(status_of_file(&good), Some(Status::Ok));
        let mut flipped = good.clone();
        flipped[30] ^= 1;
        assert_eq!(status_of_file(&flipped), Some(Status::DeltaCorrupt));
        let mut version = good.clone();
        version[8] = 9;
        assert_eq!(status_of_file(&version), Some(Status::DeltaVersion));
        let mut other = d.clone();
        other.base_fingerprint[0] ^= 1;
        assert_eq!(status_of_file(&delta::to_bytes(&other, Precision::F32).expect("encodes")), Some(Status::DeltaWrongBase));
        // SAFETY: `base` is live and freed once.
        unsafe { kt_base_free(base) };
        std::fs::remove_dir_all(&dir).expect("removable");
    }

    #[test]
    fn runtime_errors_map_to_their_kind() {
        let wrong = Error::Delta(DeltaError::WrongBase { expected: "a".into(), found: "b".into() });
        assert_eq!(status_of(&wrong), Status::DeltaWrongBase);
        let version = DeltaError::UnsupportedVersion { found: 9, supported: 1 };
        assert_eq!(Failure::from(version).status, Status::DeltaVersion);
        assert_eq!(status_of(&Error::Config("x".into())), Status::Config);
        let input = Error::BadInput { name: "input_ids".into(), reason: "missing".into() };
        assert_eq!(Failure::from(input).message, "input `input_ids`: missing");
        assert_eq!(status_of(&Error::Protobuf("x".into())), Status::Model);
    }
}
