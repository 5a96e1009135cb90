//! The C function that takes bytes, `kt_base_load_bytes`, called as C calls it: with the
//! input as the buffer, then (when it loads) the base fingerprinted and freed.
#![no_main]

use kilotune_ffi::c::base::{kt_base_fingerprint, kt_base_free, kt_base_load_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut base = std::ptr::null_mut();
    // SAFETY: `data` is valid for `data.len()` bytes and `base` for one pointer write.
    let status = unsafe { kt_base_load_bytes(data.as_ptr(), data.len(), 0, &mut base) };
    if status == 0 {
        let mut fp = [0u8; 32];
        // SAFETY: `base` is the live base just made; `fp` holds the 32 bytes written.
        assert_eq!(unsafe { kt_base_fingerprint(base, fp.as_mut_ptr()) }, 0);
        // SAFETY: freed once.
        unsafe { kt_base_free(base) };
    } else {
        assert!(base.is_null(), "an error must leave the out-parameter alone");
    }
});
