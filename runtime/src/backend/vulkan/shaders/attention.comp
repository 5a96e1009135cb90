#version 450
// Fused attention, one invocation per (query row, head, batch item):
// softmax(scale·q·Kᵀ + mask (+ causal)) · V. Q, K and V are read through strides, so the
// exporters' per-head transposes are never materialized; grouped KV heads share K and V.
// The scores go to a scratch row [b, h, i, kv_len].
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer Q { float q[]; };
layout(std430, set = 0, binding = 1) readonly buffer K { float k[]; };
layout(std430, set = 0, binding = 2) readonly buffer V { float v[]; };
layout(std430, set = 0, binding = 3) readonly buffer M { float mask[]; };
layout(std430, set = 0, binding = 4) buffer S { float s[]; };
layout(std430, set = 0, binding = 5) writeonly buffer O { float o[]; };
// flags: 1 = mask given, 2 = causal, 4 = output [B, H, S, D] (else [B, S, H, D]).
layout(push_constant) uniform P {
    uint batch; uint heads; uint kv_heads; uint q_len; uint kv_len; uint dim;
    uint qb; uint qh; uint qr;
    uint kb; uint kh; uint kr;
    uint vb; uint vh; uint vr;
    uint mb; uint mh; uint mr;
    uint flags; float scale;
} p;

void main() {
    uint i = gl_GlobalInvocationID.x;
    uint h = gl_GlobalInvocationID.y;
    uint b = gl_GlobalInvocationID.z;
    if (i >= p.q_len || h >= p.heads || b >= p.batch) {
        return;
    }
    uint kvh = h / (p.heads / p.kv_heads);
    uint qo = b * p.qb + h * p.qh + i * p.qr;
    uint so = ((b * p.heads + h) * p.q_len + i) * p.kv_len;
    uint mo = b * p.mb + h * p.mh + i * p.mr;
    uint visible = i + (p.kv_len - min(p.q_len, p.kv_len));
    float mx = -1.0 / 0.0;
    for (uint j = 0u; j < p.kv_len; j++) {
        uint ko = b * p.kb + kvh * p.kh + j * p.kr;
        float dot = 0.0;
        for (uint d = 0u; d < p.dim; d++) {
            dot += q[qo + d] * k[ko + d];
        }
        float x = dot * p.scale;
        if ((p.flags & 1u) != 0u) {
            x = x + mask[mo + j];
        }
        if ((p.flags & 2u) != 0u && j > visible) {
            x = -1.0 / 0.0;
        }
        s[so + j] = x;
        mx = max(mx, x);
    }
    float sum = 0.0;
    for (uint j = 0u; j < p.kv_len; j++) {
        float e = (mx == -1.0 / 0.0) ? 0.0 : exp(s[so + j] - mx);
        s[so + j] = e;
        sum += e;
    }
    float inv = sum > 0.0 ? 1.0 / sum : 0.0;
    uint oo = (p.flags & 4u) != 0u ? ((b * p.heads + h) * p.q_len + i) * p.dim
                                   : ((b * p.q_len + i) * p.heads + h) * p.dim;
    for (uint d = 0u; d < p.dim; d++) {
        float acc = 0.0;
        for (uint j = 0u; j < p.kv_len; j++) {
            acc += s[so + j] * v[b * p.vb + kvh * p.vh + j * p.vr + d];
        }
        o[oo + d] = acc * inv;
    }
}
