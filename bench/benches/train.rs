//! One LoRA training step, kilotune vs PyTorch + Hugging Face PEFT, measured in the same run.
//!
//! Two workloads (`KILOTUNE_BENCH_MODEL`):
//! - `minilm` (default): MiniLM, LoRA r=8 (alpha 16) on query and value, mean pooling and a
//!   linear head, cross-entropy; batch 16 × 64 tokens. The model comes from
//!   `../shared/models/minilm-l6` beside the repository, or from the folder in
//!   `KILOTUNE_BENCH_MODELS` (`model.onnx` and `config.json`).
//! - `smollm2`: SmolLM2-135M as `scripts/get-models.sh --import` writes it
//!   (`models/smollm2/model.onnx`, imported from its Q4_1 GGUF), LoRA r=8 (alpha 16) on q_proj
//!   and v_proj, next-token cross-entropy through the tied LM head; batch 4 × 128 tokens. The
//!   PyTorch side builds `LlamaForCausalLM` from `bench/smollm2-config.json` (the GGUF's own
//!   hyper-parameters).
//!
//! Both: AdamW, 2 threads on both sides, dropout off.
//! `bash bench/setup.sh train` once, then `cargo bench -p kilotune-bench --bench train`.
//! Env: `KILOTUNE_BENCH_THREADS` (default 2), `KILOTUNE_BENCH_ROUNDS` (default 5),
//! `KILOTUNE_BENCH_INT8=1` to train on the int8 model (`model.int8.onnx`; minilm only),
//! `KILOTUNE_BENCH_BUDGET_MIB=N` to give kilotune's trainer a `memory_budget` of N MiB (0:
//! checkpoint every step).
//!
//! Peak RSS is each process's high-water mark over the whole run (load included), read from
//! `/proc/self/status` here and from `getrusage` in the peer.

use std::path::PathBuf;

use kilotune::peft::{LoraConfig, PeftMethod, Pooling, TaskHead};
use kilotune::train::trainer::{Batch, TrainConfig, Trainer};
use kilotune::{Base, LoadOptions, Tensor};
use kilotune_bench::{env_usize, median, models_dir, peak_rss_bytes, repo_root, time, Peer};

/// What one benchmark run trains.
struct Workload {
    title: String,
    model: PathBuf,
    /// The peer's `load` command.
    peer_load: String,
    /// The peer's step command, without the iteration count.
    peer_step: String,
    targets: Vec<String>,
    task: TaskHead,
    data: Batch,
}

fn workload(rank: u32, threads: usize, int8: bool) -> Result<Workload, String> {
    let name = std::env::var("KILOTUNE_BENCH_MODEL").unwrap_or_else(|_| "minilm".into());
    // The same deterministic ids `bench/torch_train.py` builds.
    let ids = |batch: usize, seq: usize, vocab: i64| -> Vec<i64> { (0..(batch * seq) as i64).map(|i| (i * 7919 + 101) % (vocab - 1000) + 1000).collect() };
    let tensor = |shape: [usize; 2], v: Vec<i64>| Tensor::new(&shape, v).map_err(|e| e.to_string());
    match name.as_str() {
        "minilm" => {
            let (batch, seq) = (16usize, 64usize);
            let file = if int8 { "model.int8.onnx" } else { "model.onnx" };
            let models = models_dir(&[file, "config.json"])?;
            let inputs = vec![
                ("input_ids".to_owned(), tensor([batch, seq], ids(batch, seq, 30000))?),
                ("attention_mask".to_owned(), tensor([batch, seq], vec![1; batch * seq])?),
                ("token_type_ids".to_owned(), tensor([batch, seq], vec![0; batch * seq])?),
            ];
            Ok(Workload {
                title: format!("MiniLM {}, batch {batch} × {seq}, classification", if int8 { "int8" } else { "fp32" }),
                model: models.join(file),
                peer_load: format!("load {} {threads} {rank}", models.join("config.json").display()),
                peer_step: format!("step {batch} {seq}"),
                targets: vec!["query".into(), "value".into()],
                task: TaskHead::Classification { classes: 2, pooling: Pooling::Mean },
                data: Batch::classification(inputs, (0..batch).map(|i| i % 2).collect()),
            })
        }
        "smollm2" => {
            if int8 {
                return Err("KILOTUNE_BENCH_INT8 is for the minilm workload".into());
            }
            let (batch, seq) = (4usize, 128usize);
            let model = repo_root().join("models/smollm2/model.onnx");
            if !model.is_file() {
                return Err(format!("{} is missing: run `bash scripts/get-models.sh --import` first", model.display()));
            }
            let inputs = vec![
                ("input_ids".to_owned(), tensor([batch, seq], ids(batch, seq, 49152))?),
                ("attention_mask".to_owned(), tensor([batch, seq], vec![1; batch * seq])?),
            ];
            Ok(Workload {
                title: format!("SmolLM2-135M fp32, batch {batch} × {seq}, causal LM"),
                model,
                peer_load: format!("load-llama {} {threads} {rank}", repo_root().join("bench/smollm2-config.json").display()),
                peer_step: format!("step-lm {batch} {seq}"),
                targets: vec!["q_proj".into(), "v_proj".into()],
                task: TaskHead::CausalLm,
                data: Batch::causal_lm(inputs),
            })
        }
        other => Err(format!("KILOTUNE_BENCH_MODEL={other}: expected minilm or smollm2")),
    }
}

fn main() -> Result<(), String> {
    let threads = env_usize("KILOTUNE_BENCH_THREADS", 2);
    let rounds = env_usize("KILOTUNE_BENCH_ROUNDS", 5);
    let int8 = std::env::var("KILOTUNE_BENCH_INT8").is_ok_and(|v| v == "1");
    let budget = std::env::var("KILOTUNE_BENCH_BUDGET_MIB").ok().and_then(|v| v.parse::<usize>().ok()).map(|m| m << 20);
    let (rank, iters) = (8u32, 2usize);
    let w = workload(rank, threads, int8)?;
    let mut torch = Peer::spawn(&repo_root().join("bench/torch_train.py"), &[])?;
    torch.ask(&w.peer_load)?;

    let base = Base::load(&w.model, LoadOptions::default()).map_err(|e| e.to_string())?;
    let method = PeftMethod::Lora(LoraConfig { r: rank, alpha: 2.0 * rank as f32, target_modules: w.targets.clone(), ..Default::default() });
    let mut trainer = Trainer::new(base, method, w.task.clone(), TrainConfig { threads, memory_budget: budget, ..Default::default() }).map_err(|e| e.to_string())?;

    // Warm-up on both sides, then interleaved rounds.
    trainer.step(&w.data).map_err(|e| e.to_string())?;
    torch.ask(&format!("{} 1", w.peer_step))?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for _ in 0..iters {
            let (t, r) = time(|| trainer.step(&w.data));
            r.map_err(|e| e.to_string())?;
            ours.push(t);
        }
        let reply = torch.ask(&format!("{} {iters}", w.peer_step))?;
        theirs.extend(reply.split_whitespace().filter_map(|s| s.parse::<f64>().ok()));
    }
    let (a, b) = (median(ours), median(theirs));
    let our_rss = peak_rss_bytes().ok_or("cannot read this process's peak RSS")?;
    let their_rss: f64 = torch.ask("rss")?.parse().map_err(|e| format!("peer's rss: {e}"))?;
    let mib = |v: f64| v / (1024.0 * 1024.0);
    println!("LoRA r={rank} training step, {}, {threads} threads, AdamW; median of {} steps each", w.title, rounds * iters);
    if let Some(b) = budget {
        println!("kilotune memory_budget {} MiB: the last step held {} MiB of activations", b >> 20, trainer.last_usage().peak >> 20);
    }
    println!("{:<22} {:>12} {:>12} {:>8}", "", "kilotune", "PyTorch+PEFT", "ratio");
    println!("{:<22} {:>12.3} {:>12.3} {:>7.2}x", "step time (s)", a, b, a / b);
    println!("{:<22} {:>12.0} {:>12.0} {:>7.2}x", "peak RSS (MiB)", mib(our_rss as f64), mib(their_rss), our_rss as f64 / their_rss);
    Ok(())
}
