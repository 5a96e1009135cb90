//! A raw output pointer shared by parallel tasks that write disjoint parts of
//! one slice (tiles of a GEMM output, heads of an attention output) that
//! `chunks_mut` cannot express because they interleave in memory.

use std::marker::PhantomData;

/// Shared handle to a mutable slice whose parts are written by different
/// tasks. Creating it borrows the slice mutably for `'a`, so nothing else can
/// touch the slice while tasks hold copies.
#[derive(Clone, Copy)]
pub(crate) struct DisjointOut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: the handle only hands out element ranges through the unsafe
// `range`, whose callers guarantee that concurrent ranges never overlap; `T`
// values are moved across threads only as with `&mut [T]`, hence `T: Send`.
unsafe impl<T: Send> Send for DisjointOut<'_, T> {}
// SAFETY: as above; sharing the handle shares no `T` by reference.
unsafe impl<T: Send> Sync for DisjointOut<'_, T> {}

impl<'a, T> DisjointOut<'a, T> {
    /// Wraps `out` for the duration of the parallel section.
    pub(crate) fn new(out: &'a mut [T]) -> Self {
        DisjointOut { ptr: out.as_mut_ptr(), len: out.len(), _borrow: PhantomData }
    }

    /// The elements `start..start + len`.
    ///
    /// # Safety
    /// No two ranges alive at the same time (on any thread) may overlap.
    /// The bounds are checked here.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, start: usize, len: usize) -> &'a mut [T] {
        assert!(start <= self.len && len <= self.len - start, "range outside the output");
        // SAFETY: in bounds (checked above) of a slice mutably borrowed for
        // 'a; exclusivity of the range is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}
