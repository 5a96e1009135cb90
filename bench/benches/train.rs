//! One LoRA training step, kilotune vs PyTorch + Hugging Face PEFT, measured in the same run.
//!
//! The step: MiniLM, LoRA r=8 (alpha 16) on query and value, mean pooling and a linear head,
//! cross-entropy, AdamW; batch 16 × 64 tokens; 2 threads on both sides.
//!
//! `bash bench/setup.sh train` once, then `cargo bench -p kilotune-bench --bench train`.
//! The model comes from `../shared/models/minilm-l6` beside the repository, or from the folder
//! in `KILOTUNE_BENCH_MODELS` (`model.onnx` and `config.json`).
//! Env: `KILOTUNE_BENCH_THREADS` (default 2), `KILOTUNE_BENCH_ROUNDS` (default 5),
//! `KILOTUNE_BENCH_INT8=1` to train on the int8 model (`model.int8.onnx`) instead,
//! `KILOTUNE_BENCH_BUDGET_MIB=N` to give kilotune's trainer a `memory_budget` of N MiB (0:
//! checkpoint every step).
//!
//! Peak RSS is each process's high-water mark over the whole run (load included), read from
//! `/proc/self/status` here and from `getrusage` in the peer.

use kilotune::peft::{LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, LoadOptions, Tensor};
use kilotune_bench::{env_usize, median, models_dir, peak_rss_bytes, repo_root, time, Peer};

fn main() -> Result<(), String> {
    let threads = env_usize("KILOTUNE_BENCH_THREADS", 2);
    let rounds = env_usize("KILOTUNE_BENCH_ROUNDS", 5);
    let int8 = std::env::var("KILOTUNE_BENCH_INT8").is_ok_and(|v| v == "1");
    let budget = std::env::var("KILOTUNE_BENCH_BUDGET_MIB").ok().and_then(|v| v.parse::<usize>().ok()).map(|m| m << 20);
    let (batch, seq, rank, iters) = (16usize, 64usize, 8u32, 2usize);
    let file = if int8 { "model.int8.onnx" } else { "model.onnx" };
    let models = models_dir(&[file, "config.json"])?;
    let mut torch = Peer::spawn(&repo_root().join("bench/torch_train.py"), &[])?;
    torch.ask(&format!("load {} {threads} {rank}", models.join("config.json").display()))?;

    let base = Base::load(models.join(file), LoadOptions::default()).map_err(|e| e.to_string())?;
    let method = PeftMethod::Lora(LoraConfig { r: rank, alpha: 2.0 * rank as f32, ..Default::default() });
    let task = TaskHead::Classification { classes: 2, pooling: Pooling::Mean };
    let mut trainer = Trainer::new(base, method, task, TrainConfig { threads, memory_budget: budget, ..Default::default() }).map_err(|e| e.to_string())?;
    // The same deterministic ids `bench/torch_train.py` builds.
    let ids: Vec<i64> = (0..(batch * seq) as i64).map(|i| (i * 7919 + 101) % 29000 + 1000).collect();
    let tensor = |v: Vec<i64>| Tensor::new(&[batch, seq], v).map_err(|e| e.to_string());
    let inputs = vec![
        ("input_ids".to_owned(), tensor(ids)?),
        ("attention_mask".to_owned(), tensor(vec![1; batch * seq])?),
        ("token_type_ids".to_owned(), tensor(vec![0; batch * seq])?),
    ];
    let data = Batch::classification(inputs, (0..batch).map(|i| i % 2).collect());

    // Warm-up on both sides, then interleaved rounds.
    trainer.step(&data).map_err(|e| e.to_string())?;
    torch.ask(&format!("step {batch} {seq} 1"))?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..iters {
            let (t, r) = time(|| trainer.step(&data));
            r.map_err(|e| e.to_string())?;
            ours.push(t);
        }
        let reply = torch.ask(&format!("step {batch} {seq} {iters}"))?;
        theirs.extend(reply.split_whitespace().filter_map(|s| s.parse::<f64>().ok()));
    }
    let (a, b) = (median(ours), median(theirs));
    let our_rss = peak_rss_bytes().ok_or("cannot read this process's peak RSS")?;
    let their_rss: f64 = torch.ask("rss")?.parse().map_err(|e| format!("peer's rss: {e}"))?;
    let mib = |v: f64| v / (1024.0 * 1024.0);
    println!(
        "LoRA r={rank} training step, MiniLM {}, batch {batch} × {seq}, {threads} threads, AdamW; median of {} steps each",
        if int8 { "int8" } else { "fp32" },
        rounds * iters
    );
    if let Some(b) = budget {
        println!("kilotune memory_budget {} MiB: the last step held {} MiB of activations", b >> 20, trainer.last_usage().peak >> 20);
    }
    println!("{:<22} {:>12} {:>12} {:>8}", "", "kilotune", "PyTorch+PEFT", "ratio");
    println!("{:<22} {:>12.3} {:>12.3} {:>7.2}x", "step time (s)", a, b, a / b);
    println!("{:<22} {:>12.0} {:>12.0} {:>7.2}x", "peak RSS (MiB)", mib(our_rss as f64), mib(their_rss), our_rss as f64 / their_rss);
    Ok(())
}
