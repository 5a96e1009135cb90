//! Helpers shared by the cross-crate tests: where the data is, and how outputs are compared.

use std::path::{Path, PathBuf};

use kilotune::{npy, Tensor};

/// The repository's own tiny fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// `../shared` beside the repository: the real models. Panics with a clear message when it is
/// missing, because the real-model suite must never pass by skipping.
pub fn shared() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    assert!(p.is_dir(), "the real-model suite needs ../shared beside the repository ({} is missing)", p.display());
    p
}

/// Reads a `.npy`, panicking with the path if it is missing or malformed.
pub fn load_npy(path: impl AsRef<Path>) -> Tensor {
    let path = path.as_ref();
    assert!(path.is_file(), "missing test data: {}", path.display());
    npy::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Max |a - b| over the rows (last axis = features) whose `mask` entry is non-zero.
/// `mask` is [batch, seq]; `a`, `b` are [batch, seq, features].
pub fn max_abs_diff_masked(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let f = *a.shape().last().expect("rank ≥ 1");
    let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
    let m = mask.to_f32_vec();
    let mut worst = 0f32;
    for (row, &keep) in m.iter().enumerate() {
        if keep == 0.0 {
            continue;
        }
        for j in 0..f {
            let d = (x[row * f + j] - y[row * f + j]).abs();
            assert!(!d.is_nan(), "NaN at row {row}");
            worst = worst.max(d);
        }
    }
    worst
}

/// The smallest cosine similarity between matching feature vectors at unmasked positions.
pub fn min_cosine_masked(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let f = *a.shape().last().expect("rank ≥ 1");
    let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
    let m = mask.to_f32_vec();
    let mut worst = 1f32;
    for (row, &keep) in m.iter().enumerate() {
        if keep == 0.0 {
            continue;
        }
        let (u, v) = (&x[row * f..(row + 1) * f], &y[row * f..(row + 1) * f]);
        let dot: f64 = u.iter().zip(v).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum();
        let nu: f64 = u.iter().map(|&p| f64::from(p) * f64::from(p)).sum::<f64>().sqrt();
        let nv: f64 = v.iter().map(|&q| f64::from(q) * f64::from(q)).sum::<f64>().sqrt();
        worst = worst.min((dot / (nu * nv)) as f32);
    }
    worst
}
