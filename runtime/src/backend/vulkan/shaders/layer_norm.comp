#version 450
// LayerNorm over rows of d, one invocation per row, in the CPU kernel's order of operations:
// plain sums for LayerNorm, Welford's running mean for the residual form (x + skip).
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) readonly buffer Skip { float skip[]; };
layout(std430, set = 0, binding = 2) readonly buffer G { float gamma[]; };
layout(std430, set = 0, binding = 3) readonly buffer Bt { float beta[]; };
layout(std430, set = 0, binding = 4) writeonly buffer Y { float y[]; };
// flags: 1 = add skip first (Welford statistics), 2 = add beta.
layout(push_constant) uniform P { uint rows; uint d; float eps; uint flags; } p;

float value(uint o, bool res) {
    precise float v = x[o];
    if (res) {
        v = v + skip[o];
    }
    return v;
}

void main() {
    uint r = gl_GlobalInvocationID.x;
    if (r >= p.rows) {
        return;
    }
    bool res = (p.flags & 1u) != 0u;
    uint base = r * p.d;
    precise float n = float(p.d);
    precise float a = 0.0;
    precise float b = 0.0;
    for (uint h = 0u; h < p.d; h++) {
        precise float v = value(base + h, res);
        if (res) {
            precise float cnt = float(h + 1u);
            precise float delta = v - a;
            a = a + delta / cnt;
            b = b + delta * (v - a);
        } else {
            a = a + v;
            b = b + v * v;
        }
    }
    precise float mean;
    precise float sd;
    if (res) {
        mean = a;
        sd = sqrt(b / n + p.eps);
    } else {
        mean = a / n;
        sd = sqrt(b / n - mean * mean + p.eps);
    }
    for (uint h = 0u; h < p.d; h++) {
        precise float o = (value(base + h, res) - mean) / sd * gamma[h];
        if ((p.flags & 2u) != 0u) {
            o = o + beta[h];
        }
        y[base + h] = o;
    }
}
