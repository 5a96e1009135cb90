//! `kt_delta`: a user's trained parameters.

use std::ffi::c_char;

use kilotune::delta::Delta;

use super::base::kt_base;
use crate::boundary::{arg_ref, arg_str, call, call_infallible, free_handle, into_handle, Out};
use crate::core;
use crate::status::kt_status;

/// A user's delta (LoRA or BitFit parameters and the task head), bound to the base it was
/// trained on. Immutable.
///
/// Ownership: made by `kt_trainer_delta` or `kt_delta_load`, freed by `kt_delta_free`. A
/// session copies what it needs from a delta, so the delta may be freed while the session
/// lives. Thread safety: every function that takes a `const kt_delta *` may be called from any
/// number of threads at once.
pub struct kt_delta {
    pub(crate) delta: Delta,
}

/// Saves `delta` at `path` (NUL-terminated UTF-8) with `precision` (`KT_PRECISION_F32`,
/// `_F16` or `_INT8`), atomically: a crash leaves the old file or the new one, never a mix.
///
/// # Safety
/// `delta` must be a live delta; `path` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kt_delta_save(delta: *const kt_delta, path: *const c_char, precision: u32) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (delta, path) = unsafe { (arg_ref(delta, "delta")?, arg_str(path, "path")?) };
        core::save_delta(&delta.delta, path, precision)
    })
}

/// Loads the delta at `path` (NUL-terminated UTF-8) for `base`. A delta trained on another
/// base fails with `KT_ERR_DELTA_WRONG_BASE`; a damaged file with `KT_ERR_DELTA_CORRUPT`; a
/// newer format with `KT_ERR_DELTA_VERSION`.
///
/// On success `*out` is a new delta the caller owns (free it with `kt_delta_free`); on failure
/// `*out` is left untouched. Thread safety: any thread.
///
/// # Safety
/// `base` must be a live base; `path` a NUL-terminated string; `out` valid for writing a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn kt_delta_load(base: *const kt_base, path: *const c_char, out: *mut *mut kt_delta) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (base, path, out) = unsafe { (arg_ref(base, "base")?, arg_str(path, "path")?, Out::new(out, "out")?) };
        let delta = core::load_delta(&base.base, path)?;
        out.write(into_handle(kt_delta { delta }));
        Ok(())
    })
}

/// Writes the number of training steps recorded in `delta` into `*out`.
///
/// # Safety
/// `delta` must be a live delta; `out` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn kt_delta_steps(delta: *const kt_delta, out: *mut u64) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (delta, out) = unsafe { (arg_ref(delta, "delta")?, Out::new(out, "out")?) };
        out.write(delta.delta.summary.steps);
        Ok(())
    })
}

/// Frees a delta. NULL is a no-op. Sessions that were given it stay valid. Call once, when no
/// other thread is using this handle.
///
/// # Safety
/// `delta` must be NULL or a live delta not freed before.
#[no_mangle]
pub unsafe extern "C" fn kt_delta_free(delta: *mut kt_delta) {
    // SAFETY: the caller promises `delta` is NULL or a live handle from `into_handle`.
    call_infallible((), || unsafe { free_handle(delta) })
}
