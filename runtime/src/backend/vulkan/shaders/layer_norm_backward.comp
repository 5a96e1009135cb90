#version 450
// LayerNorm's backward over rows of d (the residual form is differentiated at x + skip), in
// two passes. Row pass (one invocation per row): with x̂ = (x − μ)·r, r = 1/√(var + eps) and
// g = dy·γ, dx = r·(g − mean(g) − x̂·mean(g·x̂)); the row's μ and r go to `stats`. Column pass
// (one invocation per feature, after the row pass): dγ = Σ_rows dy·x̂ and dβ = Σ_rows dy.
// Statistics use the two-pass formula, as the CPU's backward does (in f32 here, f64 there).
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer X { float x[]; };
layout(std430, set = 0, binding = 1) readonly buffer Skip { float skip[]; };
layout(std430, set = 0, binding = 2) readonly buffer G { float gamma[]; };
layout(std430, set = 0, binding = 3) readonly buffer DY { float dy[]; };
layout(std430, set = 0, binding = 4) writeonly buffer DX { float dx[]; };
layout(std430, set = 0, binding = 5) buffer Stats { float stats[]; };
layout(std430, set = 0, binding = 6) writeonly buffer DGB { float dgb[]; };
// flags: 1 = add skip first, 2 = the column pass.
layout(push_constant) uniform P { uint rows; uint d; float eps; uint flags; } p;

float value(uint o) {
    precise float v = x[o];
    if ((p.flags & 1u) != 0u) {
        v = v + skip[o];
    }
    return v;
}

void main() {
    uint id = gl_GlobalInvocationID.x;
    if ((p.flags & 2u) != 0u) {
        if (id >= p.d) {
            return;
        }
        precise float dg = 0.0;
        precise float db = 0.0;
        for (uint r = 0u; r < p.rows; r++) {
            uint o = r * p.d + id;
            precise float xh = (value(o) - stats[2u * r]) * stats[2u * r + 1u];
            dg = dg + dy[o] * xh;
            db = db + dy[o];
        }
        dgb[id] = dg;
        dgb[p.d + id] = db;
        return;
    }
    if (id >= p.rows) {
        return;
    }
    uint base = id * p.d;
    precise float n = float(p.d);
    precise float mean = 0.0;
    for (uint h = 0u; h < p.d; h++) {
        mean = mean + value(base + h);
    }
    mean = mean / n;
    precise float var = 0.0;
    for (uint h = 0u; h < p.d; h++) {
        precise float c = value(base + h) - mean;
        var = var + c * c;
    }
    precise float r = 1.0 / sqrt(var / n + p.eps);
    precise float mg = 0.0;
    precise float mgx = 0.0;
    for (uint h = 0u; h < p.d; h++) {
        precise float g = dy[base + h] * gamma[h];
        mg = mg + g;
        mgx = mgx + g * (value(base + h) - mean) * r;
    }
    mg = mg / n;
    mgx = mgx / n;
    for (uint h = 0u; h < p.d; h++) {
        precise float g = dy[base + h] * gamma[h];
        precise float xh = (value(base + h) - mean) * r;
        dx[base + h] = r * (g - mg - xh * mgx);
    }
    stats[2u * id] = mean;
    stats[2u * id + 1u] = r;
}
