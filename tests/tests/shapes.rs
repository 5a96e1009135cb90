//! Batch size and sequence length change freely from run to run on one loaded base: fused
//! and unfused graphs agree at every shape, and a row's output does not depend on the batch
//! it rides in.

use kilotune::{Base, LoadOptions, Session, SessionConfig, Tensor};
use kilotune_tests::fixtures;

fn sessions(file: &str) -> (Session, Session) {
    let path = fixtures().join(file);
    let fused = Base::load(&path, LoadOptions::default()).unwrap();
    let plain = Base::load(&path, LoadOptions { fuse: false, ..Default::default() }).unwrap();
    (Session::new(fused, SessionConfig { threads: 2 }).unwrap(), Session::new(plain, SessionConfig { threads: 2 }).unwrap())
}

fn inputs(names: &[&str], batch: usize, seq: usize, vocab: i64, seed: i64) -> Vec<(String, Tensor)> {
    let ids: Vec<i64> = (0..(batch * seq) as i64).map(|i| (i * 31 + seed * 17 + 5) % (vocab - 1) + 1).collect();
    names
        .iter()
        .map(|&n| {
            let t = match n {
                "input_ids" => Tensor::new(&[batch, seq], ids.clone()),
                "token_type_ids" => Tensor::new(&[batch, seq], vec![0i64; batch * seq]),
                _ => Tensor::new(&[batch, seq], vec![1i64; batch * seq]),
            };
            (n.to_owned(), t.unwrap())
        })
        .collect()
}

fn run(s: &Session, feed: &[(String, Tensor)]) -> Vec<f32> {
    let feed: Vec<(&str, Tensor)> = feed.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    s.run(&feed).unwrap().0.remove(0).1.to_f32_vec()
}

fn check(file: &str, shapes: &[(usize, usize)]) {
    let (fused, plain) = sessions(file);
    let names: Vec<String> = fused.base().input_names().iter().map(|s| s.to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for (i, &(b, s)) in shapes.iter().enumerate() {
        let feed = inputs(&names, b, s, 128, i as i64);
        let (a, p) = (run(&fused, &feed), run(&plain, &feed));
        assert_eq!(a.len(), p.len());
        let worst = a.iter().zip(&p).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // Fused and unfused kernels round differently (fused attention, Welford norms).
        assert!(worst < 1e-4, "{file} at [{b}, {s}]: fused vs unfused max |Δ| = {worst:e}");
        // Row 0 alone gives the same result as row 0 inside the batch.
        let single: Vec<(String, Tensor)> = feed
            .iter()
            .map(|(n, t)| (n.clone(), Tensor::new(&[1, s], t.to_f32_vec()[..s].iter().map(|&v| v as i64).collect()).unwrap()))
            .collect();
        let one = run(&fused, &single);
        let worst = one.iter().zip(&a[..one.len()]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{file} at [{b}, {s}]: row 0 depends on the batch (max |Δ| = {worst:e})");
    }
}

#[test]
fn bert_shapes_vary_without_reloading() {
    // tiny-bert has 64 positions.
    check("tiny-bert.dynamo.onnx", &[(1, 1), (3, 17), (64, 64), (2, 5), (1, 64)]);
}

#[test]
fn llama_shapes_vary_without_reloading() {
    check("tiny-llama.dynamo.onnx", &[(1, 1), (64, 8), (2, 512), (5, 33)]);
    check("tiny-llama.legacy.onnx", &[(1, 1), (3, 100)]);
}
