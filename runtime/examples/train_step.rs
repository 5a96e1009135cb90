//! Time of one LoRA training step (r = 8 on query and value, AdamW) on a BERT-style model.
//!
//! `cargo run --release -p kilotune --example train_step -- model.onnx [BATCH] [SEQ] [THREADS]`

use kilotune::peft::{LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, LoadOptions, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = args.get(1) else {
        eprintln!("usage: train_step MODEL.onnx [BATCH] [SEQ] [THREADS]");
        std::process::exit(2);
    };
    let arg = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (b, s, threads) = (arg(2, 16), arg(3, 64), arg(4, 2));
    let base = Base::load(model, LoadOptions::default())?;
    let method = PeftMethod::Lora(LoraConfig { r: 8, alpha: 16.0, ..Default::default() });
    let task = TaskHead::Classification { classes: 2, pooling: Pooling::Mean };
    let mut t = Trainer::new(base, method, task, TrainConfig { threads, ..Default::default() })?;
    let ids: Vec<i64> = (0..(b * s) as i64).map(|i| (i * 7919 + 101) % 29000 + 1000).collect();
    let batch = Batch::classification(
        vec![
            ("input_ids".into(), Tensor::new(&[b, s], ids)?),
            ("attention_mask".into(), Tensor::new(&[b, s], vec![1i64; b * s])?),
            ("token_type_ids".into(), Tensor::new(&[b, s], vec![0i64; b * s])?),
        ],
        (0..b).map(|i| i % 2).collect(),
    );
    t.step(&batch)?;
    let n = 5;
    let start = std::time::Instant::now();
    for _ in 0..n {
        t.step(&batch)?;
    }
    let per = start.elapsed().as_secs_f64() / f64::from(n);
    println!("{model}: LoRA r=8 step, batch {b} × {s}, {threads} threads: {:.3} s per step ({} trainable parameters)", per, t.parameter_count());
    Ok(())
}
