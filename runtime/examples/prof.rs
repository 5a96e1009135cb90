use kilotune::*;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (b, s): (usize, usize) = (a[2].parse().unwrap(), 64);
    let base = Base::load(&a[1], LoadOptions::default()).unwrap();
    let sess = Session::new(base, SessionConfig { threads: 2 }).unwrap();
    let ids: Vec<i64> = (0..(b * s) as i64).map(|i| (i * 7919 + 101) % 29000 + 1000).collect();
    let feed = [("input_ids", Tensor::new(&[b, s], ids).unwrap()), ("attention_mask", Tensor::new(&[b, s], vec![1i64; b * s]).unwrap()), ("token_type_ids", Tensor::new(&[b, s], vec![0i64; b * s]).unwrap())];
    for _ in 0..3 { sess.run(&feed).unwrap(); }
    let mut tot = std::collections::HashMap::<String, f64>::new();
    let n = 10;
    for _ in 0..n { let (_, p) = sess.run_profiled(&feed).unwrap(); for (k, v) in p { *tot.entry(k).or_default() += v.as_secs_f64() * 1e3 / n as f64; } }
    let mut v: Vec<_> = tot.into_iter().collect(); v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let sum: f64 = v.iter().map(|x| x.1).sum();
    println!("total {sum:.2} ms"); for (k, t) in v.iter().take(12) { println!("{k:20} {t:8.2} ms"); }
}
