//! Run-time selection of the instruction set for the plain-Rust kernels.
//!
//! Kernels whose arithmetic is written with `mul_add` and simple loops are compiled several
//! times: once for the baseline target and once with FMA (and AVX-512 on x86-64) enabled, where
//! LLVM turns `mul_add` into single `vfmadd` instructions and vectorizes the loops. The
//! arithmetic, and so every result bit, is the same in each version; only speed differs.

/// Instruction-set levels a multiversioned kernel can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// Off x86-64 only `Baseline` is ever detected.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub enum Level {
    /// The build target's baseline (`mul_add` may be a library call on old x86-64).
    Baseline,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// x86-64 with AVX-512F (and FMA).
    Avx512,
}

/// The best level this CPU supports, detected once.
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Level::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Level::Avx2Fma;
            }
        }
        Level::Baseline
    })
}

/// Defines `$name` as a dispatcher over copies of `$body` compiled per [`Level`].
///
/// The body must be safe code; the `unsafe` is only the call into a `#[target_feature]`
/// function, guarded by the detection in [`level`].
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            match $crate::kernels::simd::level() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: level() reported AVX-512F and FMA on this CPU.
                $crate::kernels::simd::Level::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: level() reported AVX2 and FMA on this CPU.
                $crate::kernels::simd::Level::Avx2Fma => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;
