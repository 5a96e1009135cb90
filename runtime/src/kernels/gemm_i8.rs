//! int8 GEMM (reference).
#[derive(Debug)]
pub struct PackedI8 { w: Vec<i8>, k: usize, n: usize, scales: Vec<f32>, zp: i8 }
impl PackedI8 {
    pub fn new(w_kn: &[i8], k: usize, n: usize, scales: &[f32], zero_point: i8) -> PackedI8 { PackedI8 { w: w_kn.to_vec(), k, n, scales: scales.to_vec(), zp: zero_point } }
    pub fn k(&self) -> usize { self.k }
    pub fn n(&self) -> usize { self.n }
    pub fn scales(&self) -> &[f32] { &self.scales }
    pub fn dequantize(&self) -> Vec<f32> { (0..self.k*self.n).map(|i| (self.w[i] as f32 - self.zp as f32) * self.scales[i % self.n]).collect() }
    pub fn weights_kn(&self) -> Vec<i8> { self.w.clone() }
}
pub fn gemm_u8i8(xq: &[u8], m: usize, x_scale: f32, x_zp: u8, w: &PackedI8, bias: Option<&[f32]>, out: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    for i in 0..m { for j in 0..n { let mut acc = 0i32; for p in 0..k { acc += (xq[i*k+p] as i32 - x_zp as i32) * (w.w[p*n+j] as i32 - w.zp as i32); }
        let mut v = acc as f32 * (x_scale * w.scales[j]); if let Some(b) = bias { v += b[j]; } out[i*n+j] = v; } }
}
pub fn selected_kernel() -> &'static str { "portable" }
