//! The most elements one op may create.
//!
//! Most ops make an output no larger than an input. A few make one whose size comes from
//! their inputs' *values* or from broadcasting two small inputs against each other
//! (`ConstantOfShape`, `Range`, `Expand`, broadcasting ops, `MatMul`, `Gather`), so a model of a
//! few bytes could ask for terabytes. Those ops ask here before they allocate: a run allows
//! [`RUN_LIMIT`] elements, and constant folding at load allows what the model's own stored
//! weights justify (see [`crate::graph::fold`]), so loading a file never allocates far more
//! than the file holds.

use std::cell::Cell;

use crate::error::{Error, Result};

/// The most elements one op may create in a run: 2^28 (1 GiB of f32).
pub const RUN_LIMIT: usize = 1 << 28;

thread_local! {
    static LIMIT: Cell<usize> = const { Cell::new(RUN_LIMIT) };
    static EXCEEDED: Cell<bool> = const { Cell::new(false) };
}

/// The number of elements of `dims`, or an error when that overflows or passes the limit in
/// force on this thread.
pub fn check(dims: &[usize], op: &str) -> Result<usize> {
    let limit = LIMIT.with(Cell::get);
    match dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
        Some(n) if n <= limit => Ok(n),
        n => {
            EXCEEDED.with(|e| e.set(true));
            let size = n.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string());
            Err(Error::InvalidModel(format!("{op}: an output of {dims:?} ({size} elements) passes the limit of {limit} elements")))
        }
    }
}

/// Runs `f` with `limit` in force on this thread; also says whether an op asked for more.
pub fn with_limit<R>(limit: usize, f: impl FnOnce() -> R) -> (R, bool) {
    let old = LIMIT.with(|l| l.replace(limit));
    let was = EXCEEDED.with(|e| e.replace(false));
    let r = f();
    LIMIT.with(|l| l.set(old));
    let exceeded = EXCEEDED.with(|e| e.replace(was));
    (r, exceeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_the_limit_are_errors_and_reported() {
        assert_eq!(check(&[3, 4], "t").unwrap(), 12);
        let (r, exceeded) = with_limit(10, || check(&[3, 4], "t"));
        assert!(r.is_err() && exceeded);
        let (r, exceeded) = with_limit(10, || check(&[2, 5], "t"));
        assert_eq!((r.unwrap(), exceeded), (10, false));
        assert!(check(&[1 << 40, 1 << 40], "t").is_err());
        // The limit in force is restored afterwards.
        assert_eq!(check(&[1 << 20], "t").unwrap(), 1 << 20);
    }
}
