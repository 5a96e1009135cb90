#version 450
// C[m×n] = alpha·(A[m×k]·op(B)) (+ bias[n]) (+ C): f32 GEMM in 16×16 tiles through shared
// memory. op(B) is B [k×n], or Bᵀ when B is stored [n×k] (flag 1: LoRA's A and B layouts).
layout(local_size_x = 16, local_size_y = 16) in;
layout(std430, set = 0, binding = 0) readonly buffer A { float a[]; };
layout(std430, set = 0, binding = 1) readonly buffer B { float b[]; };
layout(std430, set = 0, binding = 2) buffer C { float c[]; };
layout(std430, set = 0, binding = 3) readonly buffer Bias { float bias[]; };
// flags: 1 = B is stored n×k, 2 = accumulate into C, 4 = add bias.
layout(push_constant) uniform P { uint m; uint n; uint k; uint flags; float alpha; } p;

shared float ta[16][16];
shared float tb[16][16];

void main() {
    uint row = gl_GlobalInvocationID.y;
    uint col = gl_GlobalInvocationID.x;
    uint lr = gl_LocalInvocationID.y;
    uint lc = gl_LocalInvocationID.x;
    bool bt = (p.flags & 1u) != 0u;
    float acc = 0.0;
    for (uint t = 0u; t < p.k; t += 16u) {
        uint ak = t + lc;
        ta[lr][lc] = (row < p.m && ak < p.k) ? a[row * p.k + ak] : 0.0;
        uint bk = t + lr;
        float bv = 0.0;
        if (col < p.n && bk < p.k) {
            bv = bt ? b[col * p.k + bk] : b[bk * p.n + col];
        }
        tb[lr][lc] = bv;
        barrier();
        for (uint i = 0u; i < 16u; i++) {
            acc += ta[lr][i] * tb[i][lc];
        }
        barrier();
    }
    if (row < p.m && col < p.n) {
        float v = p.alpha * acc;
        if ((p.flags & 4u) != 0u) {
            v = bias[col] + v;
        }
        if ((p.flags & 2u) != 0u) {
            v = c[row * p.n + col] + v;
        }
        c[row * p.n + col] = v;
    }
}
