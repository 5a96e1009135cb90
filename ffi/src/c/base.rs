//! `kt_base`: a loaded, frozen model.

use std::ffi::c_char;
use std::sync::Arc;

use kilotune::Base;

use super::{KT_WEIGHTS_AS_SHIPPED, KT_WEIGHTS_INT8};
use crate::boundary::{arg_ref, arg_slice, arg_str, call, call_infallible, free_handle, into_handle, Out};
use crate::core;
use crate::status::{kt_status, Failure};

/// A loaded base model: immutable, shared by every trainer and session made from it.
///
/// Ownership: made by `kt_base_load*`, freed by `kt_base_free`. Trainers and sessions keep
/// their own reference to the model, so the handle may be freed while they live.
/// Thread safety: every function that takes a `const kt_base *` may be called from any number
/// of threads at once.
pub struct kt_base {
    pub(crate) base: Arc<Base>,
}

fn int8(weights: u32) -> Result<bool, Failure> {
    match weights {
        KT_WEIGHTS_AS_SHIPPED => Ok(false),
        KT_WEIGHTS_INT8 => Ok(true),
        other => Err(Failure::invalid("weights", format!("{other} is not a KT_WEIGHTS_* value"))),
    }
}

/// Loads the ONNX model at `path` (NUL-terminated UTF-8). `weights` is `KT_WEIGHTS_AS_SHIPPED`
/// or `KT_WEIGHTS_INT8`. External data is read only from the model's own folder.
///
/// On success `*out` is a new base the caller owns (free it with `kt_base_free`); on failure
/// `*out` is left untouched. Thread safety: any thread.
///
/// # Safety
/// `path` must be a NUL-terminated string; `out` must be valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn kt_base_load(path: *const c_char, weights: u32, out: *mut *mut kt_base) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (path, out) = unsafe { (arg_str(path, "path")?, Out::new(out, "out")?) };
        let base = core::load_base(path, int8(weights)?)?;
        out.write(into_handle(kt_base { base }));
        Ok(())
    })
}

/// Loads a model from the `len` bytes of an ONNX file at `bytes` (an app asset, say); the
/// bytes are copied, so the caller may release them on return. A model with external data
/// cannot be loaded this way. `*out` as for `kt_base_load`.
///
/// # Safety
/// `bytes` must point to `len` readable bytes; `out` must be valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn kt_base_load_bytes(bytes: *const u8, len: usize, weights: u32, out: *mut *mut kt_base) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL, alignment and size.
        let (bytes, out) = unsafe { (arg_slice(bytes, len, "bytes")?, Out::new(out, "out")?) };
        let base = core::load_base_bytes(bytes, int8(weights)?)?;
        out.write(into_handle(kt_base { base }));
        Ok(())
    })
}

/// Writes the base's 32-byte SHA-256 fingerprint (what binds deltas to it) into `out`.
///
/// # Safety
/// `base` must be a live base; `out` must be valid for writing 32 bytes.
#[no_mangle]
pub unsafe extern "C" fn kt_base_fingerprint(base: *const kt_base, out: *mut u8) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (base, out) = unsafe { (arg_ref(base, "base")?, Out::<[u8; 32]>::new(out.cast(), "out")?) };
        out.write(base.base.fingerprint());
        Ok(())
    })
}

/// Frees a base made by `kt_base_load*`. NULL is a no-op. Trainers and sessions made from it
/// stay valid. Call once per base, from any thread, when no other thread is using this handle.
///
/// # Safety
/// `base` must be NULL or a live base not freed before.
#[no_mangle]
pub unsafe extern "C" fn kt_base_free(base: *mut kt_base) {
    // SAFETY: the caller promises `base` is NULL or a live handle from `into_handle`.
    call_infallible((), || unsafe { free_handle(base) })
}
