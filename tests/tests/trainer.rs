//! The trainer on the tiny BERT: loss goes down on a learnable toy task, runs repeat bit for
//! bit for a seed, and the trained delta saves, loads and runs.

use kilotune::delta::{self, Precision};
use kilotune::peft::{BitFitConfig, LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, LoadOptions, Tensor};
use kilotune_tests::fixtures;

/// Rows whose first token is below 64 are class 0, the rest class 1.
fn batches(n: usize, rows: usize, seq: usize, seed: u64) -> Vec<Batch> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as i64
    };
    (0..n)
        .map(|_| {
            let ids: Vec<i64> = (0..rows * seq).map(|_| next() % 127 + 1).collect();
            let labels = (0..rows).map(|r| usize::from(ids[r * seq] >= 64)).collect();
            Batch::classification(
                vec![
                    ("input_ids".into(), Tensor::new(&[rows, seq], ids).unwrap()),
                    ("attention_mask".into(), Tensor::new(&[rows, seq], vec![1i64; rows * seq]).unwrap()),
                    ("token_type_ids".into(), Tensor::new(&[rows, seq], vec![0i64; rows * seq]).unwrap()),
                ],
                labels,
            )
        })
        .collect()
}

fn trainer(method: PeftMethod, seed: u64) -> Trainer {
    let base = Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions::default()).unwrap();
    let mut config = TrainConfig { seed, threads: 2, ..Default::default() };
    config.optimizer.lr = 5e-2;
    Trainer::new(base, method, TaskHead::Classification { classes: 2, pooling: Pooling::Mean }, config).unwrap()
}

#[test]
fn lora_training_lowers_the_loss_and_repeats_bit_for_bit() {
    let data = batches(40, 8, 6, 1);
    let mut a = trainer(PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, ..Default::default() }), 3);
    let mut b = trainer(PeftMethod::Lora(LoraConfig { r: 4, alpha: 8.0, ..Default::default() }), 3);
    let before = a.evaluate(&data).unwrap();
    for _ in 0..6 {
        for batch in &data {
            let ra = a.step(batch).unwrap();
            let rb = b.step(batch).unwrap();
            assert_eq!(ra.loss.to_bits(), rb.loss.to_bits(), "same seed, same data: same bits");
        }
    }
    let after = a.evaluate(&data).unwrap();
    assert!(after.loss < before.loss * 0.9, "loss {} → {}", before.loss, after.loss);
    assert_eq!(a.delta(), b.delta());
}

#[test]
fn bitfit_delta_saves_loads_and_runs() {
    let data = batches(10, 8, 6, 2);
    let mut t = trainer(PeftMethod::BitFit(BitFitConfig::default()), 5);
    for batch in &data {
        t.step(batch).unwrap();
    }
    let d = t.delta();
    let dir = std::env::temp_dir().join(format!("kt-trainer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("user.ktd");
    delta::save(&d, &path, Precision::F32).unwrap();
    let base = Base::load(fixtures().join("tiny-bert.dynamo.onnx"), LoadOptions::default()).unwrap();
    let loaded = delta::load(&path, Some(&base.fingerprint()), &Default::default()).unwrap();
    assert_eq!(loaded, d);
    assert_eq!(loaded.summary.steps, 10);
    std::fs::remove_dir_all(&dir).unwrap();
}
