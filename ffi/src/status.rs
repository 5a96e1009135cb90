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
        Error::Protobuf(_)
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
