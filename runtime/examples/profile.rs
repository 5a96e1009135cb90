//! Where a model's time goes: per-op-type wall time for a BERT-style model on synthetic
//! token ids.
//!
//! `cargo run --release -p kilotune --example profile -- model.onnx [BATCH] [SEQ] [THREADS]`

use kilotune::{Base, LoadOptions, Session, SessionConfig, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(model) = args.get(1) else {
        eprintln!("usage: profile MODEL.onnx [BATCH] [SEQ] [THREADS]");
        std::process::exit(2);
    };
    let arg = |i: usize, default: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (batch, seq, threads) = (arg(2, 1), arg(3, 64), arg(4, 2));
    let base = Base::load(model, LoadOptions::default())?;
    let session = Session::new(base.clone(), SessionConfig { threads })?;
    let ids: Vec<i64> = (0..(batch * seq) as i64).map(|i| (i * 7919 + 101) % 29000 + 1000).collect();
    let mut feed = vec![("input_ids", Tensor::new(&[batch, seq], ids)?), ("attention_mask", Tensor::new(&[batch, seq], vec![1i64; batch * seq])?)];
    if base.input_names().contains(&"token_type_ids") {
        feed.push(("token_type_ids", Tensor::new(&[batch, seq], vec![0i64; batch * seq])?));
    }
    for _ in 0..3 {
        session.run(&feed)?;
    }
    let runs = 10;
    let mut totals: Vec<(String, f64)> = Vec::new();
    for _ in 0..runs {
        let (_, per_op) = session.run_profiled(&feed)?;
        for (op, t) in per_op {
            let ms = t.as_secs_f64() * 1e3 / f64::from(runs);
            match totals.iter_mut().find(|(o, _)| *o == op) {
                Some((_, total)) => *total += ms,
                None => totals.push((op, ms)),
            }
        }
    }
    totals.sort_by(|a, b| b.1.total_cmp(&a.1));
    let sum: f64 = totals.iter().map(|(_, t)| t).sum();
    println!("{model}: batch {batch}, seq {seq}, {threads} threads: {sum:.2} ms per run (mean of {runs})");
    for (op, t) in totals.iter().filter(|(_, t)| *t >= 0.01) {
        println!("  {op:<16} {t:8.2} ms  {:5.1}%", 100.0 * t / sum);
    }
    Ok(())
}
