#version 450
// Attention's backward, out = softmax(scale·Q·Kᵀ + mask (+ causal))·V, with the probabilities
// recomputed from Q and K, in two passes over contiguous Q [B, H, Sq, D], K and V
// [B, KVH, Sk, D] and dO [B, Sq, H, D] (the forward's output layout).
// Query pass (one invocation per query row, head, batch item): the row's P (kept in `pr`),
// dP = dO·Vᵀ, dS = scale·P·(dP − Σ P·dP) (kept in `ds`), and dQ = dS·K. A row with no visible
// key gets zero gradients. Key pass (one invocation per key row, kv head, batch item, after
// the query pass): dV = Σ Pᵀ·dO and dK = Σ dSᵀ·Q over the query heads of the kv head's group.
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer Q { float q[]; };
layout(std430, set = 0, binding = 1) readonly buffer K { float k[]; };
layout(std430, set = 0, binding = 2) readonly buffer V { float v[]; };
layout(std430, set = 0, binding = 3) readonly buffer M { float mask[]; };
layout(std430, set = 0, binding = 4) readonly buffer DO { float dout[]; };
layout(std430, set = 0, binding = 5) buffer PR { float pr[]; };
layout(std430, set = 0, binding = 6) buffer DS { float ds[]; };
layout(std430, set = 0, binding = 7) writeonly buffer DQ { float dq[]; };
layout(std430, set = 0, binding = 8) writeonly buffer DK { float dk[]; };
layout(std430, set = 0, binding = 9) writeonly buffer DV { float dv[]; };
// flags: 1 = mask given, 2 = causal, 4 = the key pass.
layout(push_constant) uniform P {
    uint batch; uint heads; uint kv_heads; uint q_len; uint kv_len; uint dim;
    uint mb; uint mh; uint mr;
    uint flags; float scale;
} p;

uint q_at(uint b, uint h, uint i) { return ((b * p.heads + h) * p.q_len + i) * p.dim; }
uint kv_at(uint b, uint g, uint j) { return ((b * p.kv_heads + g) * p.kv_len + j) * p.dim; }
uint do_at(uint b, uint h, uint i) { return ((b * p.q_len + i) * p.heads + h) * p.dim; }
uint s_at(uint b, uint h, uint i) { return ((b * p.heads + h) * p.q_len + i) * p.kv_len; }

void query_pass(uint i, uint h, uint b) {
    uint g = h / (p.heads / p.kv_heads);
    uint so = s_at(b, h, i);
    uint mo = b * p.mb + h * p.mh + i * p.mr;
    uint last = i + (p.kv_len - min(p.q_len, p.kv_len));
    float mx = -1.0 / 0.0;
    for (uint j = 0u; j < p.kv_len; j++) {
        float dot = 0.0;
        for (uint c = 0u; c < p.dim; c++) {
            dot += q[q_at(b, h, i) + c] * k[kv_at(b, g, j) + c];
        }
        float x = dot * p.scale;
        if ((p.flags & 1u) != 0u) {
            x = x + mask[mo + j];
        }
        if ((p.flags & 2u) != 0u && j > last) {
            x = -1.0 / 0.0;
        }
        pr[so + j] = x;
        mx = max(mx, x);
    }
    bool visible = mx != -1.0 / 0.0;
    float sum = 0.0;
    for (uint j = 0u; j < p.kv_len; j++) {
        float e = visible ? exp(pr[so + j] - mx) : 0.0;
        pr[so + j] = e;
        sum += e;
    }
    float inv = (visible && sum > 0.0) ? 1.0 / sum : 0.0;
    float pdp = 0.0;
    for (uint j = 0u; j < p.kv_len; j++) {
        float pj = pr[so + j] * inv;
        pr[so + j] = pj;
        float dpj = 0.0;
        for (uint c = 0u; c < p.dim; c++) {
            dpj += dout[do_at(b, h, i) + c] * v[kv_at(b, g, j) + c];
        }
        ds[so + j] = dpj;
        pdp += pj * dpj;
    }
    for (uint j = 0u; j < p.kv_len; j++) {
        ds[so + j] = visible ? p.scale * pr[so + j] * (ds[so + j] - pdp) : 0.0;
    }
    for (uint c = 0u; c < p.dim; c++) {
        float acc = 0.0;
        for (uint j = 0u; j < p.kv_len; j++) {
            acc += ds[so + j] * k[kv_at(b, g, j) + c];
        }
        dq[q_at(b, h, i) + c] = acc;
    }
}

void key_pass(uint j, uint g, uint b) {
    uint group = p.heads / p.kv_heads;
    for (uint c = 0u; c < p.dim; c++) {
        float av = 0.0;
        float ak = 0.0;
        for (uint hg = 0u; hg < group; hg++) {
            uint h = g * group + hg;
            for (uint i = 0u; i < p.q_len; i++) {
                uint s = s_at(b, h, i) + j;
                av += pr[s] * dout[do_at(b, h, i) + c];
                ak += ds[s] * q[q_at(b, h, i) + c];
            }
        }
        dv[kv_at(b, g, j) + c] = av;
        dk[kv_at(b, g, j) + c] = ak;
    }
}

void main() {
    uint x = gl_GlobalInvocationID.x;
    uint y = gl_GlobalInvocationID.y;
    uint b = gl_GlobalInvocationID.z;
    if ((p.flags & 4u) != 0u) {
        if (x < p.kv_len && y < p.kv_heads && b < p.batch) {
            key_pass(x, y, b);
        }
    } else if (x < p.q_len && y < p.heads && b < p.batch) {
        query_pass(x, y, b);
    }
}
