//! The one boundary every exported C function goes through: it catches unwinding panics,
//! turns failures into a [`kt_status`] code plus the per-thread last-error message, and converts raw
//! pointers into references only after checking them (null, alignment, size overflow).
//!
//! An exported function is a thin shell:
//!
//! ```text
//! pub unsafe extern "C" fn kt_x_new(arg: *const kt_y, out: *mut *mut kt_x) -> kt_status {
//!     call(|| {
//!         // SAFETY: ...
//!         let (arg, out) = unsafe { (arg_ref(arg, "arg")?, Out::new(out, "out")?) };
//!         let value = plain_rust(arg)?;
//!         out.write(value); // last: out-parameters are written only on success
//!         Ok(())
//!     })
//! }
//! ```

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use crate::status::{kt_status, Failure, Status, KT_OK};

/// The longest last-error message kept, NUL included. Longer messages are cut at a character
/// boundary; fixed-size storage means reporting an error never allocates.
pub(crate) const LAST_ERROR_CAPACITY: usize = 512;

thread_local! {
    static LAST_ERROR: RefCell<heapless::Vec<u8, LAST_ERROR_CAPACITY>> = const { RefCell::new(heapless::Vec::new()) };
}

/// Replaces this thread's last-error message (NUL-terminated, interior NULs dropped).
pub fn set_last_error(message: &str) {
    LAST_ERROR.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        for ch in message.chars().filter(|&c| c != '\0') {
            let mut utf8 = [0u8; 4];
            let bytes = ch.encode_utf8(&mut utf8).as_bytes();
            // Keep one byte for the NUL.
            if buf.len() + bytes.len() >= LAST_ERROR_CAPACITY {
                break;
            }
            // Cannot fail: the length was checked just above.
            let _ = buf.extend_from_slice(bytes);
        }
        let _ = buf.push(0);
    });
}

/// Clears this thread's last-error message.
pub fn clear_last_error() {
    LAST_ERROR.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        let _ = buf.push(0);
    });
}

/// This thread's last-error message as a C string. It stays valid until the next kilotune call
/// on this thread (which may overwrite it) or until the thread ends.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.is_empty() {
            let _ = buf.push(0);
        }
        // The buffer lives in this thread's TLS block, so its address is stable for the
        // thread's life; only a later call on this same thread rewrites its bytes.
        buf.as_ptr().cast()
    })
}

/// This thread's last-error message, copied (for tests and for the JNI glue).
pub fn last_error() -> String {
    LAST_ERROR.with(|cell| {
        let buf = cell.borrow();
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
}

/// The text a panic carried.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Runs `f`, catching any panic, and maps its outcome to a status. On success the last-error
/// message is cleared; on failure it holds the reason.
pub fn call(f: impl FnOnce() -> Result<(), Failure>) -> kt_status {
    match catch(f) {
        Ok(()) => {
            clear_last_error();
            KT_OK
        }
        Err(failure) => {
            set_last_error(&failure.message);
            failure.status as kt_status
        }
    }
}

/// For the few functions that cannot fail and return a value instead of a status (`_free`,
/// the accessors of plain values): runs `f`, and returns `fallback` if it panics, with the
/// panic in the last-error message.
pub fn call_infallible<R>(fallback: R, f: impl FnOnce() -> R) -> R {
    match catch(|| Ok(f())) {
        Ok(r) => r,
        Err(failure) => {
            set_last_error(&failure.message);
            fallback
        }
    }
}

/// `f`'s result, with a panic turned into a [`Status::Panic`] failure.
pub fn catch<R>(f: impl FnOnce() -> Result<R, Failure>) -> Result<R, Failure> {
    // The closure only touches the handles it was given; after a panic the caller is told to
    // free them (KT_ERR_PANIC's documentation), so no broken invariant is observed later.
    match catch_unwind(AssertUnwindSafe(|| {
        injected_panic();
        f()
    })) {
        Ok(r) => r,
        Err(payload) => {
            let message = format!("kilotune panicked: {}", panic_message(payload.as_ref()));
            // Dropping a payload can itself panic; never let that cross the boundary.
            if let Err(second) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
                std::mem::forget(second);
            }
            Err(Failure::new(Status::Panic, message))
        }
    }
}

/// Set by `kt_test_force_panics` (feature `fault-injection`): every boundary call panics.
#[cfg(feature = "fault-injection")]
static FORCE_PANICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Panics when the fault-injection hook asks for it; nothing in normal builds.
#[inline(always)]
fn injected_panic() {
    #[cfg(feature = "fault-injection")]
    if FORCE_PANICS.load(std::sync::atomic::Ordering::SeqCst) {
        panic!("forced by the fault-injection hook");
    }
}

/// Test builds only (feature `fault-injection`, never in the shipped header): with `on` ≠ 0,
/// every exported function panics inside its boundary until called again with 0.
#[cfg(feature = "fault-injection")]
#[no_mangle]
pub extern "C" fn kt_test_force_panics(on: u32) {
    FORCE_PANICS.store(on != 0, std::sync::atomic::Ordering::SeqCst);
}

/// Checks that `p` is non-null and aligned for `T`.
fn checked<T>(p: *const T, name: &str) -> Result<NonNull<T>, Failure> {
    let nn = NonNull::new(p.cast_mut()).ok_or_else(|| Failure::null(name))?;
    if !p.is_aligned() {
        return Err(Failure::new(Status::NullArgument, format!("`{name}` is not aligned")));
    }
    Ok(nn)
}

/// `&*p`, after checking `p`.
///
/// # Safety
/// If non-null and aligned, `p` must point to a live, initialized `T` that nothing mutates
/// for `'a`.
pub unsafe fn arg_ref<'a, T>(p: *const T, name: &str) -> Result<&'a T, Failure> {
    let nn = checked(p, name)?;
    // SAFETY: non-null and aligned (checked); liveness and no mutation are the caller's promise.
    Ok(unsafe { nn.as_ref() })
}

/// `&mut *p`, after checking `p`.
///
/// # Safety
/// If non-null and aligned, `p` must point to a live, initialized `T` that nothing else
/// accesses for `'a`.
pub unsafe fn arg_mut<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T, Failure> {
    let mut nn = checked(p, name)?;
    // SAFETY: non-null and aligned (checked); exclusivity is the caller's promise.
    Ok(unsafe { nn.as_mut() })
}

/// An optional argument: `None` for NULL.
///
/// # Safety
/// As [`arg_ref`] when non-null.
pub unsafe fn arg_opt<'a, T>(p: *const T, name: &str) -> Result<Option<&'a T>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded to the caller.
    unsafe { arg_ref(p, name) }.map(Some)
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// If non-null, `p` must point to a NUL-terminated string that stays unchanged for `'a`.
pub unsafe fn arg_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    let nn = checked(p, name)?;
    // SAFETY: non-null; NUL termination and lifetime are the caller's promise.
    let c = unsafe { CStr::from_ptr(nn.as_ptr()) };
    c.to_str().map_err(|e| Failure::invalid(name, format!("not UTF-8 ({e})")))
}

/// `len` elements at `p`. `p` may be NULL only when `len` is 0.
///
/// # Safety
/// If non-null, `p` must point to `len` initialized `T`s that nothing mutates for `'a`.
pub unsafe fn arg_slice<'a, T>(p: *const T, len: usize, name: &str) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    let nn = checked(p, name)?;
    if len.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(Failure::invalid(name, format!("{len} elements do not fit in memory")));
    }
    // SAFETY: non-null, aligned, size within isize::MAX (checked); the elements' validity and
    // lifetime are the caller's promise.
    Ok(unsafe { std::slice::from_raw_parts(nn.as_ptr(), len) })
}

/// An out-parameter, checked before any work is done and written only at the very end, so a
/// failing call leaves it untouched.
pub struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// Checks `p`.
    ///
    /// # Safety
    /// If non-null and aligned, `p` must be valid for writing a `T` until [`Out::write`].
    pub unsafe fn new(p: *mut T, name: &str) -> Result<Out<T>, Failure> {
        checked(p, name).map(Out)
    }

    /// Writes `value` without reading or dropping the old contents (which may be garbage).
    pub fn write(self, value: T) {
        // SAFETY: checked non-null and aligned in `new`; validity for writes was promised there.
        unsafe { self.0.as_ptr().write(value) }
    }
}

/// Moves `value` to the heap and hands out the raw pointer that C will own.
pub fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Takes back a handle made by [`into_handle`] and drops it; NULL is a no-op, as for `free`.
///
/// # Safety
/// `p` must be NULL or a pointer from [`into_handle`] for the same `T`, not freed before and
/// not used after.
pub unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: the caller promises `p` came from `Box::into_raw` and is freed only once.
        drop(unsafe { Box::from_raw(p) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = call(|| panic!("boom {}", 42));
        assert_eq!(status, Status::Panic as kt_status);
        assert_eq!(last_error(), "kilotune panicked: boom 42");
        // A later success clears the message.
        assert_eq!(call(|| Ok(())), KT_OK);
        assert_eq!(last_error(), "");
        assert_eq!(call_infallible(7, || -> i32 { panic!("static") }), 7);
        assert_eq!(last_error(), "kilotune panicked: static");
    }

    #[test]
    fn long_and_odd_messages_are_cut_on_a_character_boundary_and_nul_terminated() {
        let long = "é".repeat(1000);
        set_last_error(&long);
        let got = last_error();
        assert_eq!(got.len(), LAST_ERROR_CAPACITY - 2, "255 two-byte characters, then the NUL");
        assert!(got.chars().all(|c| c == 'é'));
        set_last_error("a\0b");
        // SAFETY: the pointer is to this thread's buffer, just written, NUL-terminated.
        let c = unsafe { CStr::from_ptr(last_error_ptr()) };
        assert_eq!(c.to_str().expect("UTF-8"), "ab");
    }

    #[test]
    fn null_and_misaligned_pointers_are_refused_and_outs_stay_untouched() {
        // SAFETY: the pointers are NULL or misaligned, which the helpers refuse before use.
        unsafe {
            let e = arg_ref::<u32>(std::ptr::null(), "base").expect_err("null");
            assert_eq!((e.status, e.message.as_str()), (Status::NullArgument, "`base` is NULL"));
            let words = [0u32; 2];
            let odd = words.as_ptr().cast::<u8>().add(1).cast::<u32>();
            assert_eq!(arg_ref(odd, "x").err().map(|e| e.status), Some(Status::NullArgument));
            assert!(arg_slice::<i64>(std::ptr::null(), 0, "ids").expect("empty").is_empty());
            assert!(arg_slice::<i64>(std::ptr::null(), 3, "ids").is_err());
            assert!(arg_slice::<i64>(words.as_ptr().cast(), usize::MAX / 4, "ids").is_err());
            assert!(Out::<u32>::new(std::ptr::null_mut(), "out").is_err());
            assert_eq!(arg_opt::<u32>(std::ptr::null(), "d").expect("ok"), None);
            let bad = [0xffu8, 0];
            let e = arg_str(bad.as_ptr().cast(), "path").expect_err("not UTF-8");
            assert_eq!(e.status, Status::InvalidArgument);
        }
        let mut out = 5u32;
        // SAFETY: `out` is a live u32.
        let status = call(|| {
            let o = unsafe { Out::new(&mut out, "out")? };
            Err::<(), _>(Failure::invalid("x", "no")).map(|()| o.write(9))
        });
        assert_eq!(status, Status::InvalidArgument as kt_status);
        assert_eq!(out, 5);
    }
}
