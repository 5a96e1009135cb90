use kilotune::kernels::attention::*;
fn main() {
    let (b, h, s, d) = (16, 12, 64, 32);
    let n = b * h * s * d;
    let q: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32) / 101.0 - 0.5).collect();
    let mask = vec![0f32; b * s];
    let mv = MaskView { data: &mask, batch_stride: s, head_stride: 0, row_stride: 0 };
    let dims = AttentionDims { batch: b, heads: h, kv_heads: h, q_len: s, kv_len: s, head_dim: d };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut out = vec![0f32; n];
    let op = |x| Operand { data: x, strides: Strides::bshd(h, s, d) };
    pool.install(|| {
        for _ in 0..3 { attention_f32(op(&q), op(&q), op(&q), Some(&mv), false, 0.17, &dims, &mut out); }
        let t = std::time::Instant::now();
        for _ in 0..20 { attention_f32(op(&q), op(&q), op(&q), Some(&mv), false, 0.17, &dims, &mut out); }
        println!("attention {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 20.0);
        let mut row = vec![0.5f32; 64];
        let t = std::time::Instant::now();
        for _ in 0..12288 { kilotune::kernels::softmax::softmax_row(&mut row); }
        println!("12288 softmax rows {:.3} ms", t.elapsed().as_secs_f64() * 1e3);
    });
}
