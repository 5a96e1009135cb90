//! kilotune's C ABI, and with the `jni` feature its JNI glue: one library that C, Java
//! (`android/`) and Swift (`ios/`) all load.
//!
//! Three layers, libsignal style:
//! - [`core`]: plain, safe Rust over the runtime (load, train, save, run) taking plain values;
//! - [`c`]: the exported `kt_*` functions, each a thin shell through [`boundary`], which
//!   null-checks pointers, catches panics and maps errors to the stable codes of [`status`];
//! - `jni` (feature): the `dev.kilotune.*` native methods, the same shells for Java, throwing
//!   `KilotuneException` with the same codes.
//!
//! The C header `include/kilotune.h` is generated from this crate by `scripts/gen-header.sh`
//! (a pinned cbindgen) and committed; CI fails when it drifts.

#![allow(non_camel_case_types)]

pub mod boundary;

/// With the `block-cache` feature: large freed blocks are kept for reuse (see
/// `kilotune::alloc`). The library's own allocations only; the app's are its business.
#[cfg(feature = "block-cache")]
#[global_allocator]
static ALLOC: kilotune::alloc::Global = kilotune::alloc::Global;
pub mod c;
pub mod core;
#[cfg(feature = "jni")]
pub mod jni;
pub mod status;

// The header promises these: bases and deltas may be shared between threads; trainers,
// sessions and outputs may move between them.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    const fn movable<T: Send>() {}
    shared::<c::base::kt_base>();
    shared::<c::delta::kt_delta>();
    shared::<c::session::kt_outputs>();
    movable::<c::trainer::kt_trainer>();
    movable::<c::session::kt_session>();
};
