//! The base fingerprint: SHA-256 over the fused graph and every weight, so a delta can only be
//! applied to the exact base it was trained on.
//!
//! Canonical form: the declared inputs (names, element types, dims), then each node in
//! execution order: its op (name and parameters), the ids of the values it reads and writes,
//! and the bytes of every constant it reads or holds (weights, biases, scales). Value names are
//! not hashed (they carry no meaning for the math); a re-export of the same weights that fuses
//! to the same graph gets the same fingerprint.

use sha2::{Digest, Sha256};

use crate::graph::{Dim, Graph};
use crate::ops::{LinearWeight, Op};
use crate::tensor::{Data, Tensor};

fn tensor(h: &mut Sha256, t: &Tensor) {
    h.update(t.dtype().to_string().as_bytes());
    h.update((t.rank() as u64).to_le_bytes());
    for &d in t.shape() {
        h.update((d as u64).to_le_bytes());
    }
    match t.data() {
        Data::F32(v) => v.iter().for_each(|x| h.update(x.to_le_bytes())),
        Data::I64(v) => v.iter().for_each(|x| h.update(x.to_le_bytes())),
        Data::I32(v) => v.iter().for_each(|x| h.update(x.to_le_bytes())),
        Data::I8(v) => h.update(v.iter().map(|&x| x as u8).collect::<Vec<_>>()),
        Data::U8(v) => h.update(v.as_slice()),
        Data::Bool(v) => h.update(v.iter().map(|&x| u8::from(x)).collect::<Vec<_>>()),
    }
}

fn floats(h: &mut Sha256, v: &[f32]) {
    h.update((v.len() as u64).to_le_bytes());
    // Little-endian bytes of each value, in order.
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    h.update(bytes);
}

/// SHA-256 of `g` in its canonical form.
pub fn fingerprint(g: &Graph) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kilotune-base-v1");
    for i in &g.inputs {
        h.update(g.values[i.value].name.as_bytes());
        h.update(i.dtype.to_string().as_bytes());
        for d in &i.dims {
            match d {
                Dim::Fixed(n) => h.update((*n as u64).to_le_bytes()),
                Dim::Symbol(s) => h.update(s.as_bytes()),
            }
        }
    }
    for n in &g.nodes {
        h.update(n.op.name().as_bytes());
        match &n.op {
            Op::Linear(l) => {
                h.update(l.module.as_bytes());
                h.update((l.k as u64).to_le_bytes());
                h.update((l.n as u64).to_le_bytes());
                match &l.weight {
                    LinearWeight::F32(w) => floats(&mut h, w),
                    LinearWeight::I8(p) => {
                        h.update(p.weights_kn().iter().map(|&x| x as u8).collect::<Vec<_>>());
                        floats(&mut h, p.scales());
                        h.update([p.zero_point() as u8]);
                    }
                }
                if let Some(b) = &l.bias {
                    floats(&mut h, b);
                }
            }
            Op::Constant(t) | Op::ConstantOfShape(t) => tensor(&mut h, t),
            // Every other op's parameters are small: their debug form is canonical enough.
            op => h.update(format!("{op:?}").as_bytes()),
        }
        for v in &n.inputs {
            match v {
                Some(v) => {
                    h.update((*v as u64).to_le_bytes());
                    if let Some(t) = g.constant(*v) {
                        tensor(&mut h, t);
                    }
                }
                None => h.update(u64::MAX.to_le_bytes()),
            }
        }
        for v in &n.outputs {
            h.update((*v as u64).to_le_bytes());
        }
    }
    for o in &g.outputs {
        h.update((*o as u64).to_le_bytes());
    }
    h.finalize().into()
}
