#version 450
// GELU (erf form): 0.5·x·(erf(x/√2) + 1), with the CPU kernel's erf (same polynomials and
// constants, fma where it uses mul_add). With `backward` set, the input gradient instead:
// dy·(Φ(x) + x·φ(x)), Φ(x) = ½(1 + erf(x/√2)), φ(x) = e^(−x²/2)/√(2π).
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(std430, set = 0, binding = 2) readonly buffer DY { float dy[]; };
layout(push_constant) uniform P { uint len; uint backward; } p;

float c(uint bits) { return uintBitsToFloat(bits); }

float erf_(float v) {
    precise float a = min(abs(v), c(0x407B3333u));
    precise float sq = a * a;
    precise float r = c(0xBA1D0D41u);
    r = fma(r, sq, c(0x3BA39FA4u));
    r = fma(r, sq, c(0xBCDB45E9u));
    r = fma(r, sq, c(0x3DE70D23u));
    r = fma(r, sq, c(0xBEC09370u));
    r = fma(r, sq, c(0x3E0375D3u));
    precise float small = fma(r, a, a);
    precise float q = c(0x37911480u);
    q = fma(q, a, c(0xB9C8E966u));
    q = fma(q, a, c(0x3B7E899Bu));
    q = fma(q, a, c(0xBCC6B180u));
    q = fma(q, a, c(0x3DDAAE58u));
    q = fma(q, a, c(0x3F228550u));
    q = fma(q, a, c(0x3E03CE86u));
    q = fma(q, a, a);
    precise float t = max(-q, c(0xC2B0C0A5u));
    precise float rb = 12582912.0;
    precise float biased = fma(c(0x3FB8AA3Bu), t, rb);
    precise float m = biased - rb;
    int mi = floatBitsToInt(biased) - floatBitsToInt(rb);
    precise float f = fma(m, c(0xBF317200u), t);
    f = fma(m, c(0xB5BFBE8Eu), f);
    precise float e = c(0x3AB54C6Du);
    e = fma(e, f, c(0x3C093965u));
    e = fma(e, f, c(0x3D2AAD10u));
    e = fma(e, f, c(0x3E2AAA17u));
    e = fma(e, f, c(0x3EFFFFFBu));
    e = fma(e, f, 1.0);
    e = fma(e, f, 1.0);
    e = e * intBitsToFloat((mi + 127) << 23);
    precise float big = 1.0 - e;
    float res = a > c(0x3F6C0000u) ? big : small;
    return uintBitsToFloat(floatBitsToUint(res) | (floatBitsToUint(v) & 0x80000000u));
}

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.len) {
        return;
    }
    precise float v = x[i];
    if (p.backward != 0u) {
        precise float cdf = 0.5 * (1.0 + erf_(v * c(0x3F3504F3u)));
        precise float pdf = 0.3989422804014327 * exp(-0.5 * v * v);
        y[i] = dy[i] * (cdf + v * pdf);
        return;
    }
    precise float h = 0.5 * v;
    y[i] = h * (erf_(v * c(0x3F3504F3u)) + 1.0);
}
