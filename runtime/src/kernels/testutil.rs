//! Deterministic test data and a throughput probe shared by the kernel tests.

use std::time::Instant;

/// splitmix64: tiny, deterministic, and good enough to exercise kernels.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// `len` uniform floats in `[lo, hi)`.
    pub fn f32s(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.f32(lo, hi)).collect()
    }

    /// Random bytes where about a quarter are the extremes 0 and 255, since
    /// those are what break saturating SIMD tricks.
    pub fn u8s(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                let r = self.next_u64();
                match r % 8 {
                    0 => 0,
                    1 => 255,
                    _ => (r >> 8) as u8,
                }
            })
            .collect()
    }

    /// Random signed bytes with frequent -128 / 127.
    pub fn i8s(&mut self, len: usize) -> Vec<i8> {
        (0..len)
            .map(|_| {
                let r = self.next_u64();
                match r % 8 {
                    0 => -128,
                    1 => 127,
                    _ => (r >> 8) as i8,
                }
            })
            .collect()
    }
}

/// Seconds per call of `f`: best of a few timed batches after a warm-up.
/// Only for printing; the machine is shared, so nothing asserts on it.
pub fn bench_secs(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((0.02 / once) as usize).clamp(1, 1000);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}
