//! attention (reference).
pub struct AttentionDims { pub batch: usize, pub heads: usize, pub kv_heads: usize, pub q_len: usize, pub kv_len: usize, pub head_dim: usize }
pub struct MaskView<'a> { pub data: &'a [f32], pub batch_stride: usize, pub head_stride: usize, pub row_stride: usize }
pub fn attention_f32(q: &[f32], k: &[f32], v: &[f32], mask: Option<&MaskView>, causal: bool, scale: f32, d: &AttentionDims, out: &mut [f32]) {
    let (sq, sk, hd) = (d.q_len, d.kv_len, d.head_dim);
    let grp = d.heads / d.kv_heads;
    for b in 0..d.batch { for h in 0..d.heads { let kh = h / grp;
        let qb = &q[((b*d.heads+h)*sq)*hd..]; let kb = &k[((b*d.kv_heads+kh)*sk)*hd..]; let vb = &v[((b*d.kv_heads+kh)*sk)*hd..];
        for i in 0..sq { let mut s = vec![0f32; sk];
            for j in 0..sk { let mut acc = 0f32; for t in 0..hd { acc += qb[i*hd+t]*kb[j*hd+t]; } acc *= scale;
                if let Some(m) = mask { acc += m.data[b*m.batch_stride + h*m.head_stride + i*m.row_stride + j]; }
                if causal && j > i + (sk - sq) { acc = f32::NEG_INFINITY; } s[j] = acc; }
            let mx = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let o = &mut out[((b*sq+i)*d.heads+h)*hd..][..hd];
            if mx == f32::NEG_INFINITY { o.fill(0.0); continue; }
            let mut sum = 0f32; for x in &mut s { *x = (*x - mx).exp(); sum += *x; }
            o.fill(0.0); for j in 0..sk { let p = s[j] / sum; for t in 0..hd { o[t] += p * vb[j*hd+t]; } }
        } } }
}
