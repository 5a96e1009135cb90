//! Time of one LoRA training step (r = 8, AdamW): a BERT-style classifier (LoRA on query and
//! value), or with `lm` a Llama-style causal LM (LoRA on q_proj and v_proj, next-token loss
//! through the model's own LM head).
//!
//! `cargo run --release -p kilotune --example train_step -- model.onnx [BATCH] [SEQ] [THREADS] [lm]`

use kilotune::peft::{LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, LoadOptions, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = args.get(1) else {
        eprintln!("usage: train_step MODEL.onnx [BATCH] [SEQ] [THREADS] [lm]");
        std::process::exit(2);
    };
    let arg = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (b, s, threads) = (arg(2, 16), arg(3, 64), arg(4, 2));
    let lm = args.get(5).is_some_and(|a| a == "lm");
    let base = Base::load(model, LoadOptions::default())?;
    let targets: Vec<String> = if lm { vec!["q_proj".into(), "v_proj".into()] } else { vec!["query".into(), "value".into()] };
    let method = PeftMethod::Lora(LoraConfig { r: 8, alpha: 16.0, target_modules: targets, ..Default::default() });
    let ids: Vec<i64> = (0..(b * s) as i64).map(|i| (i * 7919 + 101) % 29000 + 1000).collect();
    let mask = Tensor::new(&[b, s], vec![1i64; b * s])?;
    let (task, batch) = if lm {
        (TaskHead::CausalLm, Batch::causal_lm(vec![("input_ids".into(), Tensor::new(&[b, s], ids)?), ("attention_mask".into(), mask)]))
    } else {
        let inputs = vec![
            ("input_ids".into(), Tensor::new(&[b, s], ids)?),
            ("attention_mask".into(), mask),
            ("token_type_ids".into(), Tensor::new(&[b, s], vec![0i64; b * s])?),
        ];
        (TaskHead::Classification { classes: 2, pooling: Pooling::Mean }, Batch::classification(inputs, (0..b).map(|i| i % 2).collect()))
    };
    let mut t = Trainer::new(base, method, task, TrainConfig { threads, ..Default::default() })?;
    t.step(&batch)?;
    let n = arg(6, 5);
    let start = std::time::Instant::now();
    for _ in 0..n {
        t.step(&batch)?;
    }
    let per = start.elapsed().as_secs_f64() / n as f64;
    println!("{model}: LoRA r=8 step, batch {b} × {s}, {threads} threads: {per:.3} s per step ({} trainable parameters)", t.parameter_count());
    Ok(())
}
