#version 450
// y = a + b, elementwise over equal shapes (residual adds, LoRA side paths).
layout(local_size_x = 64) in;
layout(std430, set = 0, binding = 0) readonly buffer A { float a[]; };
layout(std430, set = 0, binding = 1) readonly buffer B { float b[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant) uniform P { uint len; } p;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < p.len) {
        y[i] = a[i] + b[i];
    }
}
