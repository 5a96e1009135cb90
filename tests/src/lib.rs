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

/// A BERT classification batch of `ids` (`[rows, seq]`): the last `pad` positions of the last
/// row masked out, token types 0, and each row labelled 1 when its first id is at least
/// `split`, else 0.
pub fn bert_batch(ids: Vec<i64>, rows: usize, seq: usize, pad: usize, split: i64) -> kilotune::train::trainer::Batch {
    assert_eq!(ids.len(), rows * seq, "bert_batch: ids are not rows × seq");
    let mut mask = vec![1i64; rows * seq];
    mask[rows * seq - pad..].fill(0);
    let labels = (0..rows).map(|r| usize::from(ids[r * seq] >= split)).collect();
    kilotune::train::trainer::Batch::classification(
        vec![
            ("input_ids".into(), Tensor::new(&[rows, seq], ids).expect("shape fits")),
            ("attention_mask".into(), Tensor::new(&[rows, seq], mask).expect("shape fits")),
            ("token_type_ids".into(), Tensor::new(&[rows, seq], vec![0i64; rows * seq]).expect("shape fits")),
        ],
        labels,
    )
}

/// A LoRA delta really trained on the tiny BERT fixture (r = 2 on query and value, a 2-class
/// head, two seeded steps), for the malformed-input and allocation tests: the bytes they cut,
/// flip and measure are a trainer's own output, not a hand-made sample.
pub fn trained_tiny_bert_lora() -> (std::sync::Arc<kilotune::Base>, kilotune::delta::Delta) {
    use kilotune::peft::{LoraConfig, PeftMethod, Pooling, TaskHead};
    use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
    let base = kilotune::Base::load(fixtures().join("tiny-bert.dynamo.onnx"), kilotune::LoadOptions::default())
        .expect("the tiny BERT fixture loads");
    let (rows, seq) = (2, 5);
    let ids: Vec<i64> = (0..rows * seq).map(|i| (i as i64 * 37 + 11) % 120 + 1).collect();
    let batch = Batch::classification(
        vec![
            ("input_ids".into(), Tensor::new(&[rows, seq], ids).expect("shape fits")),
            ("attention_mask".into(), Tensor::new(&[rows, seq], vec![1i64; rows * seq]).expect("shape fits")),
            ("token_type_ids".into(), Tensor::new(&[rows, seq], vec![0i64; rows * seq]).expect("shape fits")),
        ],
        vec![0, 1],
    );
    let method = PeftMethod::Lora(LoraConfig { r: 2, alpha: 4.0, ..Default::default() });
    let head = TaskHead::Classification { classes: 2, pooling: Pooling::Mean };
    let mut config = TrainConfig { seed: 5, threads: 1, ..Default::default() };
    config.optimizer.lr = 1e-2;
    let mut trainer = Trainer::new(base.clone(), method, head, config).expect("LoRA fits the tiny BERT");
    for _ in 0..2 {
        trainer.step(&batch).expect("a step on a well-formed batch");
    }
    let delta = trainer.delta();
    (base, delta)
}

/// A scratch folder under the system's temporary folder, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty folder whose name contains `tag` and the process id.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("kilotune-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("the temporary folder is writable");
        TempDir(p)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A minimal protobuf writer, enough to build hostile ONNX models by hand.
pub mod pb {
    /// A base-128 varint.
    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Field `n` as length-delimited bytes.
    pub fn bytes_field(n: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(n << 3 | 2), out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    /// Field `n` as a varint (negative values as protobuf writes an `int64`).
    pub fn int_field(n: u32, v: i64, out: &mut Vec<u8>) {
        varint(u64::from(n << 3), out);
        varint(v as u64, out);
    }
}
