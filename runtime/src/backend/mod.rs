//! Execution backends. `cpu` is kilotune's own engine, always built; the others are cargo
//! features.

pub mod cpu;
