#version 450
// y[m×n] = ((xq − zp)·W) · (x_scale·scale[n]) (+ bias[n]): u8 activations times int8 weights
// with exact int32 accumulation, then the CPU kernel's own float epilogue, so a layer's
// output matches kilotune's int8 kernels bit for bit.
// Rows are packed four bytes to a word: xq [m × kw] (padded with zp), wq is Wᵀ [n × kw]
// (padded with 0), so padding adds nothing.
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer X { uint xq[]; };
layout(std430, set = 0, binding = 1) readonly buffer W { uint wq[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(std430, set = 0, binding = 3) readonly buffer S { float scale[]; };
layout(std430, set = 0, binding = 4) readonly buffer Bias { float bias[]; };
// flags: 1 = add bias.
layout(push_constant) uniform P { uint m; uint n; uint kw; uint zp; float x_scale; uint flags; } p;

void main() {
    uint idx = gl_GlobalInvocationID.x;
    if (idx >= p.m * p.n) {
        return;
    }
    uint row = idx / p.n;
    uint col = idx % p.n;
    int zp = int(p.zp);
    int acc = 0;
    for (uint w = 0u; w < p.kw; w++) {
        uint xa = xq[row * p.kw + w];
        int wb = int(wq[col * p.kw + w]);
        for (int i = 0; i < 4; i++) {
            int xv = int((xa >> uint(8 * i)) & 0xffu) - zp;
            int wv = bitfieldExtract(wb, 8 * i, 8);
            acc += xv * wv;
        }
    }
    precise float s = p.x_scale * scale[col];
    precise float v = float(acc) * s;
    if ((p.flags & 1u) != 0u) {
        v = v + bias[col];
    }
    y[idx] = v;
}
