//! The exported C functions and types. Each function converts its arguments through
//! [`crate::boundary`], calls [`crate::core`], and writes its out-parameters last.

pub mod base;
pub mod delta;
pub mod session;
pub mod trainer;

use std::ffi::c_char;

use crate::boundary::{call_infallible, last_error_ptr};
use crate::status::{kt_status, Status};

/// Quantize nothing: weights stay as the model ships them (f32 stays f32, ONNX Runtime int8
/// stays int8).
pub const KT_WEIGHTS_AS_SHIPPED: u32 = 0;
/// Quantize the model's f32 `Linear` weights to int8 at load (symmetric, per output channel).
pub const KT_WEIGHTS_INT8: u32 = 1;

/// Delta precision: 32-bit floats, lossless.
pub const KT_PRECISION_F32: u32 = 0;
/// Delta precision: IEEE half floats, about 3 significant digits, half the size.
pub const KT_PRECISION_F16: u32 = 1;
/// Delta precision: int8 with one scale per row, a quarter of the size.
pub const KT_PRECISION_INT8: u32 = 2;

/// The version of this library, e.g. `"0.1.0"`: a static string, never freed, safe from any
/// thread.
#[no_mangle]
pub extern "C" fn kt_version() -> *const c_char {
    // The fallback is "" rather than NULL: callers pass the result straight to strlen/printf.
    call_infallible(c"".as_ptr(), || concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast())
}

/// Why the last failed kilotune call on this thread failed, as a NUL-terminated UTF-8 string
/// (at most 511 bytes; "" after a successful call).
///
/// Ownership: the library's. Lifetime: valid until the next kilotune call on the same thread,
/// or the thread's end; copy it to keep it. Thread safety: each thread has its own message.
/// Never NULL.
#[no_mangle]
pub extern "C" fn kt_last_error_message() -> *const c_char {
    call_infallible(c"".as_ptr(), last_error_ptr)
}

/// The name of a status code, e.g. `"KT_ERR_IO"`, or `"KT_UNKNOWN_STATUS"` for a number that
/// is not one. A static string, never freed, safe from any thread; never NULL.
#[no_mangle]
pub extern "C" fn kt_status_name(status: kt_status) -> *const c_char {
    call_infallible(c"KT_UNKNOWN_STATUS".as_ptr(), || {
        Status::from_code(status).map_or(c"KT_UNKNOWN_STATUS".as_ptr(), |s| s.name().as_ptr().cast())
    })
}
