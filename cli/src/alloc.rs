//! The command line's allocator: large freed blocks (a training step's activations) are kept
//! for the next step instead of going back to the operating system; see `kilotune::alloc`.

#[global_allocator]
static ALLOC: kilotune::alloc::Global = kilotune::alloc::Global;
