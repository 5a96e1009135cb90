//! The backend table (backend × batch × model) and ONNX Runtime's delta-switch cost, in one run.
//!
//! ```sh
//! bash scripts/get-ort.sh && export ORT_DYLIB_PATH=$PWD/.ort/libonnxruntime.so.1.31.1
//! cargo bench -p kilotune-bench --features backends --bench backends
//! ```
//!
//! Every backend this build has runs MiniLM-L6 (fp32 and int8, sequence 64) with the same
//! user's LoRA delta (r=8 on query and value, random non-zero A and B), interleaved round by
//! round; each latency is printed with its ratio to `cpu` measured in the same run. `ort` runs
//! the adapter-ready graph (the delta fed as inputs), `ort-merged` the delta merged into the
//! weights: plain ONNX Runtime on the merged model, the peer for the switch benchmark.
//!
//! The switch benchmark: one adapter-ready session, two users' deltas prepared once; runs for
//! the same user every time against runs that alternate users every run. The difference is
//! what switching users adds to a run (the issue's target: ≤ 1 ms). A paired measurement
//! follows: `KILOTUNE_BENCH_PAIRS` (default 100) pairs of a run for the previous run's user and
//! a run that switches; the median difference and its 95% interval resist the drift of a busy
//! machine better than the blocks do.
//!
//! Env: `KILOTUNE_BENCH_THREADS` (default 2), `KILOTUNE_BENCH_ROUNDS` (default 5),
//! `KILOTUNE_BENCH_BATCHES` (default `1,16`), `KILOTUNE_BENCH_MODELS` (see `models_dir`).

use std::sync::Arc;

use kilotune::delta::{Delta, NamedTensor, TrainingSummary};
use kilotune::peft::{LoraConfig, PeftMethod};
use kilotune::{BackendConfig, BackendKind, BackendSession, Base, LoadOptions, Tensor};
use kilotune_bench::{env_usize, median, models_dir, time};

/// The deterministic ids the inference benchmark uses.
fn inputs(batch: usize, seq: usize) -> Vec<(&'static str, Tensor)> {
    let ids: Vec<i64> = (0..(batch * seq) as i64).map(|i| (i * 7919 + 101) % 29000 + 1000).collect();
    vec![
        ("input_ids", Tensor::new(&[batch, seq], ids).expect("shape matches")),
        ("attention_mask", Tensor::new(&[batch, seq], vec![1i64; batch * seq]).expect("shape matches")),
        ("token_type_ids", Tensor::new(&[batch, seq], vec![0i64; batch * seq]).expect("shape matches")),
    ]
}

/// A user's LoRA r=8 on query and value, A and B pseudo-random under `seed`.
fn user(base: &Base, seed: usize) -> Delta {
    let r = 8usize;
    let noise = |i: usize, s: usize| ((i.wrapping_mul(2_654_435_761).wrapping_add(s * 40_503) % 1000) as f32 / 1000.0 - 0.5) * 0.1;
    let mut tensors = Vec::new();
    for (li, l) in base.linears().into_iter().enumerate() {
        if l.module.ends_with("query") || l.module.ends_with("value") {
            let s = seed * 1000 + li;
            tensors.push(NamedTensor::f32(format!("{}.lora_A", l.module), &[r as u32, l.k as u32], (0..r * l.k).map(|i| noise(i, s)).collect()));
            tensors.push(NamedTensor::f32(format!("{}.lora_B", l.module), &[l.n as u32, r as u32], (0..l.n * r).map(|i| noise(i, s + 7)).collect()));
        }
    }
    let method = PeftMethod::Lora(LoraConfig { r: 8, alpha: 16.0, ..Default::default() });
    Delta { base_fingerprint: base.fingerprint(), method, head: None, tensors, summary: TrainingSummary::default() }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn main() -> Result<(), String> {
    let models = models_dir(&["model.onnx", "model.int8.onnx"])?;
    let threads = env_usize("KILOTUNE_BENCH_THREADS", 2);
    let rounds = env_usize("KILOTUNE_BENCH_ROUNDS", 5);
    let batches: Vec<usize> = std::env::var("KILOTUNE_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,16".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seq = 64;
    let mut backends: Vec<(String, BackendConfig)> = Vec::new();
    for kind in BackendKind::compiled() {
        let c = BackendConfig { backend: kind, threads, ..Default::default() };
        if kind == BackendKind::Ort {
            // The adapter-ready file carries inputs only where this app trains.
            let adapter = kilotune::peft::merge::AdapterReadyConfig { lora_targets: Some(vec!["query".into(), "value".into()]), bias_deltas: false };
            backends.push(("ort".into(), BackendConfig { adapter, ..c.clone() }));
            backends.push(("ort-merged".into(), BackendConfig { merged: true, ..c }));
        } else {
            backends.push((kind.name().into(), c));
        }
    }
    println!("backends with one user's LoRA delta (r=8, query+value), {threads} threads, seq {seq}, median of {rounds} interleaved rounds");
    println!("| model | batch | backend | ms | × cpu |");
    println!("|---|---|---|---|---|");
    for (label, file) in [("MiniLM fp32", "model.onnx"), ("MiniLM int8", "model.int8.onnx")] {
        let path = models.join(file);
        let base = Base::load(&path, LoadOptions::default()).map_err(err)?;
        let delta = user(&base, 1);
        let bytes: Arc<[u8]> = std::fs::read(&path).map_err(err)?.into();
        let mut sessions = Vec::new();
        for (name, c) in &backends {
            let mut s = BackendSession::from_parts(bytes.clone(), base.clone(), c).map_err(|e| format!("{name}: {e}"))?;
            s.set_delta(Some(&delta)).map_err(|e| format!("{name}: {e}"))?;
            sessions.push((name.clone(), s));
        }
        for &batch in &batches {
            let feed = inputs(batch, seq);
            let iters = |name: &str| match (name, batch) {
                // lavapipe runs Vulkan on the CPU, orders of magnitude slower than the others.
                ("vulkan", _) => 1,
                (_, 1) => 10,
                _ => 2,
            };
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); sessions.len()];
            for (_, s) in &mut sessions {
                s.run(&feed).map_err(err)?; // warm-up (tract plans its shapes here)
            }
            for _ in 0..rounds {
                for ((name, s), t) in sessions.iter_mut().zip(&mut times) {
                    for _ in 0..iters(name) {
                        let (dt, r) = time(|| s.run(&feed));
                        r.map_err(err)?;
                        t.push(dt);
                    }
                }
            }
            let medians: Vec<f64> = times.into_iter().map(median).collect();
            let cpu = medians[0];
            for ((name, _), m) in sessions.iter().zip(&medians) {
                println!("| {label} | {batch} | {name} | {:.2} | {:.2}× |", m * 1e3, m / cpu);
            }
        }
        if backends.iter().any(|(n, _)| n == "ort") {
            switch_benchmark(label, bytes, base, threads, rounds, seq)?;
        }
    }
    Ok(())
}

/// Runs for one user against runs that switch users every time, on one adapter-ready session,
/// next to plain ONNX Runtime on the merged model.
#[cfg(feature = "ort")]
fn switch_benchmark(label: &str, bytes: Arc<[u8]>, base: Arc<Base>, threads: usize, rounds: usize, seq: usize) -> Result<(), String> {
    let (a, b) = (user(&base, 1), user(&base, 2));
    let adapter = kilotune::peft::merge::AdapterReadyConfig { lora_targets: Some(vec!["query".into(), "value".into()]), bias_deltas: false };
    let ready = BackendConfig { backend: BackendKind::Ort, threads, adapter, ..Default::default() };
    let mut s = BackendSession::from_parts(bytes.clone(), base.clone(), &ready).map_err(err)?;
    let mut merged = BackendSession::from_parts(bytes, base, &BackendConfig { merged: true, ..ready.clone() }).map_err(err)?;
    merged.set_delta(Some(&a)).map_err(err)?;
    let ort = s.as_ort().ok_or("not an ort session")?;
    let (pa, pb) = (ort.prepare(&a).map_err(err)?, ort.prepare(&b).map_err(err)?);
    let feed = inputs(1, seq);
    let (mut same, mut switching, mut plain, mut prepare, mut new_session) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for p in [&pa, &pb] {
        ort.run_with(Some(p), &feed).map_err(err)?;
    }
    merged.run(&feed).map_err(err)?;
    // Each kind of run goes in a block of its own, so each finds the caches as a run of its
    // kind leaves them (alternating two sessions would charge the plain runs for the other's
    // weights).
    for _ in 0..rounds {
        for _ in 0..10 {
            let (t, r) = time(|| merged.run(&feed));
            r.map_err(err)?;
            plain.push(t);
        }
        for _ in 0..10 {
            let (t, r) = time(|| ort.run_with(Some(&pa), &feed));
            r.map_err(err)?;
            same.push(t);
        }
        for i in 0..10 {
            let p = if i % 2 == 0 { &pa } else { &pb };
            let (t, r) = time(|| ort.run_with(Some(p), &feed));
            r.map_err(err)?;
            switching.push(t);
        }
        let (t, r) = time(|| ort.prepare(&b));
        r.map_err(err)?;
        prepare.push(t);
    }
    for _ in 0..rounds.min(3) {
        let (t, r) = time(|| merged.set_delta(Some(&b)));
        r.map_err(err)?;
        new_session.push(t);
    }
    // Paired runs, which cancel the machine's drift: each pair is a run for the user the
    // previous run had, then a run for the other user (a switch); the pairs alternate users, so
    // every switch is a real one. The median of the differences, with the order-statistic 95%
    // interval of a median (sign test), is what switching adds to a run.
    let pairs = env_usize("KILOTUNE_BENCH_PAIRS", 100).max(1);
    let mut diffs = Vec::with_capacity(pairs);
    let mut current = &pa;
    ort.run_with(Some(current), &feed).map_err(err)?;
    for _ in 0..pairs {
        let (t0, r) = time(|| ort.run_with(Some(current), &feed));
        r.map_err(err)?;
        current = if std::ptr::eq(current, &pa) { &pb } else { &pa };
        let (t1, r) = time(|| ort.run_with(Some(current), &feed));
        r.map_err(err)?;
        diffs.push(t1 - t0);
    }
    diffs.sort_by(f64::total_cmp);
    let n = diffs.len();
    let half = 0.98 * (n as f64).sqrt();
    let lo = diffs[((n as f64 / 2.0 - half).floor().max(0.0) as usize).min(n - 1)];
    let hi = diffs[((n as f64 / 2.0 + half).ceil() as usize).min(n - 1)];
    let paired = median(diffs);
    let (same, switching, plain) = (median(same), median(switching), median(plain));
    println!();
    println!("{label}, batch 1: ONNX Runtime, switching users per run (median of {} runs each)", rounds * 10);
    println!("| run | ms | × plain ORT (merged) |");
    println!("|---|---|---|");
    println!("| plain ORT, merged model | {:.3} | 1.00× |", plain * 1e3);
    println!("| adapter-ready, same user every run | {:.3} | {:.2}× |", same * 1e3, same / plain);
    println!("| adapter-ready, switching users every run | {:.3} | {:.2}× |", switching * 1e3, switching / plain);
    println!("switching adds {:.3} ms a run (blocks of 10); preparing a user's delta once: {:.3} ms; merged path, a new session per user: {:.1} ms", (switching - same) * 1e3, median(prepare) * 1e3, median(new_session) * 1e3);
    println!("paired (same user, then a switch; {n} pairs): switching adds {:.3} ms a run, 95% interval [{:.3}, {:.3}] ms", paired * 1e3, lo * 1e3, hi * 1e3);
    println!();
    Ok(())
}

#[cfg(not(feature = "ort"))]
fn switch_benchmark(_: &str, _: Arc<[u8]>, _: Arc<Base>, _: usize, _: usize, _: usize) -> Result<(), String> {
    Ok(())
}
