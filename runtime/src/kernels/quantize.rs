//! quantization (reference).
pub fn quantize_dynamic_u8(x: &[f32], out: &mut [u8]) -> (f32, u8) {
    let mx = x.iter().fold(0f32, |a, &b| a.max(b)); let mn = x.iter().fold(0f32, |a, &b| a.min(b));
    let scale = (mx - mn) / 255.0;
    let zp = if scale == 0.0 { 0 } else { (-mn / scale).round_ties_even().clamp(0.0, 255.0) as u8 };
    for (o, &v) in out.iter_mut().zip(x) { *o = if scale == 0.0 { zp } else { ((v / scale).round_ties_even() + zp as f32).clamp(0.0, 255.0) as u8 }; }
    (scale, zp)
}
pub fn quantize_weight_per_channel(w: &[f32], k: usize, n: usize) -> (Vec<i8>, Vec<f32>) {
    let mut s = vec![0f32; n]; for p in 0..k { for j in 0..n { s[j] = s[j].max(w[p*n+j].abs()); } }
    for v in &mut s { *v = if *v == 0.0 { 1.0 } else { *v / 127.0 }; }
    let q = (0..k*n).map(|i| (w[i] / s[i % n]).round_ties_even().clamp(-127.0, 127.0) as i8).collect();
    (q, s)
}
