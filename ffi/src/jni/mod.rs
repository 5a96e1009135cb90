//! JNI glue for `android/` (feature `jni`): the native methods of `dev.kilotune.Native`.
//!
//! The same layering as the C functions: each native method converts its Java arguments,
//! calls [`crate::core`], and returns plain values. A Java `long` is the same heap handle C
//! gets (`kt_base *`, ...), checked through [`crate::boundary`]. Failures and panics become a
//! `dev.kilotune.KilotuneException` carrying the C status code; `jni`'s `with_env` catches the
//! panics and [`ThrowKilotune`] throws.

mod natives;

use jni::errors::ErrorPolicy;
use jni::objects::{JIntArray, JLongArray, JString, JValue};
use jni::sys::jlong;
use jni::{jni_sig, jni_str, Env};

use crate::boundary::{arg_mut, arg_ref, panic_message};
use crate::status::{Failure, Status};

/// Why a native method failed: a kilotune failure, or a JNI call that failed (usually with a
/// Java exception already pending, which then takes precedence).
#[derive(Debug)]
pub enum JniFailure {
    /// A kilotune failure, thrown as `KilotuneException`.
    Kt(Failure),
    /// A JNI call failed.
    Jni(jni::errors::Error),
}

impl From<Failure> for JniFailure {
    fn from(f: Failure) -> JniFailure {
        JniFailure::Kt(f)
    }
}

impl From<jni::errors::Error> for JniFailure {
    fn from(e: jni::errors::Error) -> JniFailure {
        JniFailure::Jni(e)
    }
}

impl From<kilotune::Error> for JniFailure {
    fn from(e: kilotune::Error) -> JniFailure {
        JniFailure::Kt(e.into())
    }
}

type Jr<T> = Result<T, JniFailure>;

/// Throws `dev.kilotune.KilotuneException(status, message)`, unless an exception is already
/// pending (a failed array access, say), which then reaches Java instead.
fn throw(env: &mut Env<'_>, status: Status, message: &str) -> jni::errors::Result<()> {
    if env.exception_check() {
        return Ok(());
    }
    let msg = env.new_string(message)?;
    let e = env.new_object(
        jni_str!("dev/kilotune/KilotuneException"),
        jni_sig!("(ILjava/lang/String;)V"),
        &[JValue::Int(status as i32), JValue::Object(&msg)],
    )?;
    // `throw` reports the now-pending exception as an error; that is the point here.
    let e = jni::objects::JThrowable::cast_local(env, e)?;
    let _ = env.throw(e);
    Ok(())
}

/// The error policy of every native method: a failure or a panic becomes a
/// `KilotuneException` with its status code, and the method returns its type's default.
pub struct ThrowKilotune;

impl<T: Default> ErrorPolicy<T, JniFailure> for ThrowKilotune {
    type Captures<'unowned_env_local: 'native_method, 'native_method> = ();

    fn on_error<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut (),
        err: JniFailure,
    ) -> jni::errors::Result<T> {
        match err {
            JniFailure::Kt(f) => throw(env, f.status, &f.message)?,
            JniFailure::Jni(e) => throw(env, Status::Internal, &format!("JNI: {e}"))?,
        }
        Ok(T::default())
    }

    fn on_panic<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut (),
        payload: Box<dyn std::any::Any + Send + 'static>,
    ) -> jni::errors::Result<T> {
        let message = format!("kilotune panicked: {}", panic_message(payload.as_ref()));
        // Dropping a payload can itself panic; never let that reach the JVM.
        if let Err(second) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(payload))) {
            std::mem::forget(second);
        }
        throw(env, Status::Panic, &message)?;
        Ok(T::default())
    }
}

/// The handle a Java object holds, as a shared reference.
///
/// # Safety
/// `h` must be 0 or a live handle of type `T` made by this library, not used mutably elsewhere
/// (the Java classes guarantee it: they free a handle once, in a synchronized `close`).
unsafe fn handle<'a, T>(h: jlong, name: &str) -> Jr<&'a T> {
    // SAFETY: forwarded to the caller; `arg_ref` refuses 0 (NULL) and misalignment.
    Ok(unsafe { arg_ref(h as usize as *const T, name)? })
}

/// The handle a Java object holds, as an exclusive reference.
///
/// # Safety
/// As [`handle`], and no other thread uses it meanwhile (the Java methods are synchronized).
unsafe fn handle_mut<'a, T>(h: jlong, name: &str) -> Jr<&'a mut T> {
    // SAFETY: forwarded to the caller; `arg_mut` refuses 0 (NULL) and misalignment.
    Ok(unsafe { arg_mut(h as usize as *mut T, name)? })
}

fn string(env: &Env<'_>, s: &JString<'_>, name: &str) -> Jr<String> {
    if s.is_null() {
        return Err(Failure::null(name).into());
    }
    Ok(s.try_to_string(env)?)
}

fn longs(env: &Env<'_>, a: &JLongArray<'_>, name: &str) -> Jr<Vec<i64>> {
    if a.is_null() {
        return Err(Failure::null(name).into());
    }
    let mut v = vec![0i64; a.len(env)?];
    a.get_region(env, 0, &mut v)?;
    Ok(v)
}

fn optional_longs(env: &Env<'_>, a: &JLongArray<'_>, name: &str) -> Jr<Option<Vec<i64>>> {
    if a.is_null() {
        return Ok(None);
    }
    longs(env, a, name).map(Some)
}

fn ints(env: &Env<'_>, a: &JIntArray<'_>, name: &str) -> Jr<Vec<i32>> {
    if a.is_null() {
        return Err(Failure::null(name).into());
    }
    let mut v = vec![0i32; a.len(env)?];
    a.get_region(env, 0, &mut v)?;
    Ok(v)
}

/// A Java `int` that must be a count or a code: not negative.
fn unsigned(v: i32, name: &str) -> Jr<u32> {
    u32::try_from(v).map_err(|_| Failure::invalid(name, format!("{v} is negative")).into())
}
