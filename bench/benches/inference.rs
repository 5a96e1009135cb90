//! Inference latency, kilotune vs ONNX Runtime, measured in the same run.
//!
//! `bash bench/setup.sh` once, then `cargo bench -p kilotune-bench --bench inference`.
//! Models come from `../shared/models/minilm-l6` beside the repository, or from the folder in
//! `KILOTUNE_BENCH_MODELS` (it must hold `model.onnx` and `model.int8.onnx`).
//! Env: `KILOTUNE_BENCH_THREADS` (default 2), `KILOTUNE_BENCH_ROUNDS` (default 5).

use kilotune::{Base, LoadOptions, Session, SessionConfig, Tensor, WeightFormat};
use kilotune_bench::{env_usize, median, models_dir, repo_root, time, Peer};

/// The same deterministic ids `bench/ort_infer.py` builds.
fn inputs(base: &Base, batch: usize, seq: usize) -> Vec<(&'static str, Tensor)> {
    let ids: Vec<i64> = (0..(batch * seq) as i64).map(|i| (i * 7919 + 101) % 29000 + 1000).collect();
    let mut v = vec![
        ("input_ids", Tensor::new(&[batch, seq], ids).expect("shape matches")),
        ("attention_mask", Tensor::new(&[batch, seq], vec![1i64; batch * seq]).expect("shape matches")),
    ];
    if base.input_names().contains(&"token_type_ids") {
        v.push(("token_type_ids", Tensor::new(&[batch, seq], vec![0i64; batch * seq]).expect("shape matches")));
    }
    v
}

fn main() -> Result<(), String> {
    let models = models_dir(&["model.onnx", "model.int8.onnx"])?;
    let threads = env_usize("KILOTUNE_BENCH_THREADS", 2);
    let rounds = env_usize("KILOTUNE_BENCH_ROUNDS", 5);
    let seq = 64;
    let mut ort = Peer::spawn(&repo_root().join("bench/ort_infer.py"), &[])?;
    // (label, our file, our weights, ORT's file)
    let cases = [
        ("MiniLM fp32", "model.onnx", WeightFormat::AsShipped, "model.onnx"),
        ("MiniLM int8", "model.int8.onnx", WeightFormat::AsShipped, "model.int8.onnx"),
    ];
    println!("kilotune vs ONNX Runtime, {threads} threads, seq {seq}, median of {rounds} interleaved rounds");
    println!("{:<14} {:>5} {:>12} {:>12} {:>8}", "model", "batch", "kilotune ms", "ORT ms", "ratio");
    for (label, file, weights, ort_file) in cases {
        let base = Base::load(models.join(file), LoadOptions { weights, ..Default::default() }).map_err(|e| e.to_string())?;
        let session = Session::new(base.clone(), SessionConfig { threads }).map_err(|e| e.to_string())?;
        ort.ask(&format!("load {label_id} {} {threads}", models.join(ort_file).display(), label_id = label.replace(' ', "_")))?;
        for batch in [1usize, 16] {
            let iters = if batch == 1 { 20 } else { 4 };
            let feed = inputs(&base, batch, seq);
            // warm-up both sides
            session.run(&feed).map_err(|e| e.to_string())?;
            ort.ask(&format!("run {} {batch} {seq} 2", label.replace(' ', "_")))?;
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                for _ in 0..iters {
                    let (t, r) = time(|| session.run(&feed));
                    r.map_err(|e| e.to_string())?;
                    ours.push(t);
                }
                let reply = ort.ask(&format!("run {} {batch} {seq} {iters}", label.replace(' ', "_")))?;
                theirs.extend(reply.split_whitespace().filter_map(|s| s.parse::<f64>().ok()));
            }
            let (a, b) = (median(ours), median(theirs));
            println!("{label:<14} {batch:>5} {:>12.2} {:>12.2} {:>7.2}x", a * 1e3, b * 1e3, a / b);
        }
    }
    Ok(())
}
