//! `kt_session`: runs a base, with or without a user's delta; `kt_tokens` and `kt_outputs`,
//! what goes in and what comes out.

use std::ffi::c_char;

use kilotune::Session;

use super::base::kt_base;
use super::delta::kt_delta;
use crate::boundary::{arg_mut, arg_opt, arg_ref, arg_slice, call, call_infallible, free_handle, into_handle, Out};
use crate::core::{self, OutputSet, Tokens};
use crate::status::{kt_status, Failure};

/// Runs a base with zero or one delta.
///
/// Ownership: made by `kt_session_new`, freed by `kt_session_free`; it keeps its own
/// reference to the base and its own copy of the delta's parameters.
/// Thread safety: not for concurrent use. Call its functions from one thread at a time (it may
/// move between threads); give each thread its own session. Many sessions may share one base.
pub struct kt_session {
    pub(crate) session: Session,
}

/// The outputs of one run, in the model's declared order, each converted to f32.
///
/// Ownership: made by `kt_session_run`, freed by `kt_outputs_free`; independent of the session.
/// Thread safety: immutable; any number of threads may read it at once.
pub struct kt_outputs {
    pub(crate) set: OutputSet,
}

/// A batch of tokenized text as plain row-major arrays, each `rows * seq_len` long. The
/// arrays are only read, and only during the call they are passed to.
#[repr(C)]
pub struct kt_tokens {
    /// Sequences in the batch (at least 1).
    pub rows: usize,
    /// Tokens per sequence, padding included (at least 1).
    pub seq_len: usize,
    /// Token ids. Required.
    pub input_ids: *const i64,
    /// 1 for a real token, 0 for padding. Required.
    pub attention_mask: *const i64,
    /// Segment ids for models that take them (BERT); NULL gives zeros.
    pub token_type_ids: *const i64,
}

/// A borrowed view of one output.
#[repr(C)]
pub struct kt_output {
    /// The model's name for it, NUL-terminated.
    pub name: *const c_char,
    /// Its dims, `rank` of them.
    pub shape: *const usize,
    /// The number of dims.
    pub rank: usize,
    /// Its values, row-major.
    pub data: *const f32,
    /// The number of values (the product of the dims).
    pub len: usize,
}

/// Reads a `kt_tokens` after checking its pointers.
///
/// # Safety
/// The pointers in `t` must be NULL or point to `rows * seq_len` readable values.
pub(crate) unsafe fn tokens(t: &kt_tokens) -> Result<Tokens<'_>, Failure> {
    let n = t.rows.checked_mul(t.seq_len).ok_or_else(|| Failure::invalid("rows * seq_len", "overflows"))?;
    // SAFETY: the caller's promise; the helpers check for NULL, alignment and size.
    unsafe {
        Ok(Tokens {
            rows: t.rows,
            seq_len: t.seq_len,
            input_ids: arg_slice(t.input_ids, n, "input_ids")?,
            attention_mask: arg_slice(t.attention_mask, n, "attention_mask")?,
            token_type_ids: if t.token_type_ids.is_null() { None } else { Some(arg_slice(t.token_type_ids, n, "token_type_ids")?) },
        })
    }
}

/// A session over `base` running `threads` worker threads (0: one per core), with `delta`
/// applied, or the plain base when `delta` is NULL. The delta must belong to this base
/// (`KT_ERR_DELTA_WRONG_BASE` otherwise).
///
/// On success `*out` is a new session the caller owns (free it with `kt_session_free`); on
/// failure `*out` is left untouched. Thread safety: any thread.
///
/// # Safety
/// `base` must be a live base; `delta` NULL or a live delta; `out` valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn kt_session_new(base: *const kt_base, delta: *const kt_delta, threads: u32, out: *mut *mut kt_session) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (base, delta, out) = unsafe { (arg_ref(base, "base")?, arg_opt(delta, "delta")?, Out::new(out, "out")?) };
        let session = core::new_session(base.base.clone(), delta.map(|d| &d.delta), threads)?;
        out.write(into_handle(kt_session { session }));
        Ok(())
    })
}

/// Switches `session` to `delta` (NULL: the plain base) without rebuilding its threads, e.g.
/// when another user comes to the app. On failure the session keeps its previous delta.
///
/// # Safety
/// `session` must be a live session not in use by another thread; `delta` NULL or a live delta.
#[no_mangle]
pub unsafe extern "C" fn kt_session_set_delta(session: *mut kt_session, delta: *const kt_delta) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (session, delta) = unsafe { (arg_mut(session, "session")?, arg_opt(delta, "delta")?) };
        Ok(session.session.set_delta(delta.map(|d| &d.delta))?)
    })
}

/// Runs the model on `tokens`. On success `*out` holds every output (free it with
/// `kt_outputs_free`); on failure it is left untouched.
///
/// # Safety
/// `session` must be a live session not in use by another thread; `tokens` must point to a
/// `kt_tokens` whose arrays hold `rows * seq_len` values; `out` valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn kt_session_run(session: *const kt_session, tokens: *const kt_tokens, out: *mut *mut kt_outputs) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (session, t, out) = unsafe { (arg_ref(session, "session")?, arg_ref(tokens, "tokens")?, Out::new(out, "out")?) };
        // SAFETY: the caller promises the arrays hold rows * seq_len values.
        let t = unsafe { self::tokens(t)? };
        let set = core::run(&session.session, &t)?;
        out.write(into_handle(kt_outputs { set }));
        Ok(())
    })
}

/// Frees a session. NULL is a no-op. Call once, when no other thread is using it.
///
/// # Safety
/// `session` must be NULL or a live session not freed before.
#[no_mangle]
pub unsafe extern "C" fn kt_session_free(session: *mut kt_session) {
    // SAFETY: the caller promises `session` is NULL or a live handle from `into_handle`.
    call_infallible((), || unsafe { free_handle(session) })
}

/// Writes the number of outputs into `*out`.
///
/// # Safety
/// `outputs` must be live; `out` valid for writing.
#[no_mangle]
pub unsafe extern "C" fn kt_outputs_count(outputs: *const kt_outputs, out: *mut usize) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (outputs, out) = unsafe { (arg_ref(outputs, "outputs")?, Out::new(out, "out")?) };
        out.write(outputs.set.items.len());
        Ok(())
    })
}

/// Fills `*out` with a view of output `index` (`KT_ERR_INVALID_ARGUMENT` past the end). The
/// view's pointers borrow from `outputs` and stay valid until `kt_outputs_free(outputs)`.
///
/// # Safety
/// `outputs` must be live; `out` valid for writing a `kt_output`.
#[no_mangle]
pub unsafe extern "C" fn kt_outputs_get(outputs: *const kt_outputs, index: usize, out: *mut kt_output) -> kt_status {
    call(|| {
        // SAFETY: the caller's promises above; the helpers check for NULL and alignment.
        let (outputs, out) = unsafe { (arg_ref(outputs, "outputs")?, Out::new(out, "out")?) };
        let o = outputs.set.get(index)?;
        out.write(kt_output { name: o.name.as_ptr(), shape: o.shape.as_ptr(), rank: o.shape.len(), data: o.data.as_ptr(), len: o.data.len() });
        Ok(())
    })
}

/// Frees outputs. NULL is a no-op; views from `kt_outputs_get` die with them.
///
/// # Safety
/// `outputs` must be NULL or live outputs not freed before.
#[no_mangle]
pub unsafe extern "C" fn kt_outputs_free(outputs: *mut kt_outputs) {
    // SAFETY: the caller promises `outputs` is NULL or a live handle from `into_handle`.
    call_infallible((), || unsafe { free_handle(outputs) })
}
