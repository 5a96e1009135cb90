//! [`BlockCache`]: a global allocator that keeps large freed blocks for the next request of
//! the same size, instead of handing them back to the operating system.
//!
//! A training step allocates the same activation and gradient buffers every time (megabytes
//! each: MiniLM's feed-forward activations at batch 16 × 64 are 6 MB), frees them as the
//! reverse pass goes, and allocates them again in the next step. glibc serves blocks that size
//! with fresh `mmap`s and returns them with `munmap` (or trims them off its heaps), so every
//! step pays a page fault per 4 KiB of its working set: measured on the MiniLM LoRA benchmark,
//! about a sixth of the step. Keeping those blocks makes a step after the first reuse its
//! predecessor's memory. It is what the engine's planned buffers will do without the detour
//! through the allocator.
//!
//! Every block is a real block of the wrapped [`System`] allocator with its original layout;
//! the cache only postpones freeing it. So a cached block can be freed, reallocated or handed
//! out again with no bookkeeping beyond the table below. Small blocks (under [`MIN_BLOCK`])
//! pass straight through. The table is bounded in entries and in bytes ([`BlockCache::new`]);
//! when it is full the oldest block is freed for real. [`BlockCache::release`] frees them all
//! (an app going to the background, say).
//!
//! A library cannot choose the allocator of the program it is linked into, so the final
//! artifact opts in: the `kilotune` command line and the benchmarks do; a Rust program
//! embedding kilotune declares
//!
//! ```
//! #[global_allocator]
//! static ALLOC: kilotune::alloc::Global = kilotune::alloc::Global;
//! ```
//!
//! and the C library has it with the `block-cache` feature of `kilotune-ffi`. [`Global`] uses
//! the one process-wide cache, [`GLOBAL`] (at most [`GLOBAL_CAP`] bytes), which a trainer with
//! a memory budget empties after each step, as it trims the heap, and which [`release`] empties
//! on request. Where [`Global`] is not the allocator the cache stays empty and both do nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Blocks below this size go straight to the system allocator.
pub const MIN_BLOCK: usize = 256 << 10;
/// Blocks the cache holds at most.
const SLOTS: usize = 64;

/// Bytes of freed blocks [`GLOBAL`] holds at most.
pub const GLOBAL_CAP: usize = 256 << 20;

/// The process-wide cache behind [`Global`].
pub static GLOBAL: BlockCache = BlockCache::new(GLOBAL_CAP);

/// Frees every block [`GLOBAL`] holds (nothing when [`Global`] is not the allocator).
pub fn release() {
    GLOBAL.release();
}

/// The allocator to declare with `#[global_allocator]`: [`GLOBAL`]'s.
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

// SAFETY: forwards every call unchanged to `GLOBAL`, a `GlobalAlloc` itself.
unsafe impl GlobalAlloc for Global {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        unsafe { GLOBAL.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        unsafe { GLOBAL.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { GLOBAL.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, forwarded.
        unsafe { GLOBAL.realloc(ptr, layout, new_size) }
    }
}

/// A global allocator over [`System`] that reuses large freed blocks; see the module docs.
pub struct BlockCache {
    cap: usize,
    lock: AtomicBool,
    table: UnsafeCell<Table>,
}

// SAFETY: `table` is only touched while `lock` is held (see `with_table`).
unsafe impl Sync for BlockCache {}

#[derive(Clone, Copy)]
struct Slot {
    ptr: *mut u8,
    size: usize,
    align: usize,
}

struct Table {
    /// Oldest first.
    slots: [Slot; SLOTS],
    len: usize,
    bytes: usize,
}

impl BlockCache {
    /// A cache holding at most `cap_bytes` of freed blocks (and at most 64 of them).
    pub const fn new(cap_bytes: usize) -> Self {
        const EMPTY: Slot = Slot { ptr: std::ptr::null_mut(), size: 0, align: 0 };
        BlockCache { cap: cap_bytes, lock: AtomicBool::new(false), table: UnsafeCell::new(Table { slots: [EMPTY; SLOTS], len: 0, bytes: 0 }) }
    }

    /// Bytes of freed blocks held right now.
    pub fn cached_bytes(&self) -> usize {
        self.with_table(|t| t.bytes)
    }

    /// Frees every cached block for real.
    pub fn release(&self) {
        loop {
            // One block at a time, outside the lock: freeing may take the system allocator's.
            let Some(s) = self.with_table(|t| t.pop_oldest()) else { return };
            // SAFETY: cached blocks came from `System` with exactly this layout and are owned by
            // the cache alone.
            unsafe { System.dealloc(s.ptr, Layout::from_size_align_unchecked(s.size, s.align)) };
        }
    }

    /// Runs `f` on the table under a spin lock (held for a scan of at most 64 entries; no
    /// allocation and no panic inside).
    fn with_table<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        let mut spins = 0u32;
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: the lock above gives this thread sole access until it is released below.
        let r = f(unsafe { &mut *self.table.get() });
        self.lock.store(false, Ordering::Release);
        r
    }

    /// A cached block of exactly this layout, taken out of the table.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        if layout.size() < MIN_BLOCK {
            return None;
        }
        self.with_table(|t| t.take(layout.size(), layout.align()))
    }

    /// Keeps a freed block; `false` when it does not fit (the caller frees it). May free the
    /// oldest blocks to make room.
    ///
    /// # Safety
    /// `ptr` must be a block of `System` with `layout`, no longer used by anyone.
    unsafe fn keep(&self, ptr: *mut u8, layout: Layout) -> bool {
        if layout.size() < MIN_BLOCK || layout.size() > self.cap {
            return false;
        }
        let mut evicted = [Slot { ptr: std::ptr::null_mut(), size: 0, align: 0 }; SLOTS];
        let n = self.with_table(|t| {
            let mut n = 0;
            while t.len == SLOTS || t.bytes + layout.size() > self.cap {
                match t.pop_oldest() {
                    Some(s) => {
                        evicted[n] = s;
                        n += 1;
                    }
                    None => break,
                }
            }
            t.slots[t.len] = Slot { ptr, size: layout.size(), align: layout.align() };
            t.len += 1;
            t.bytes += layout.size();
            n
        });
        for s in &evicted[..n] {
            // SAFETY: as in `release`.
            unsafe { System.dealloc(s.ptr, Layout::from_size_align_unchecked(s.size, s.align)) };
        }
        true
    }
}

impl Table {
    fn take(&mut self, size: usize, align: usize) -> Option<*mut u8> {
        // Newest first: the block most likely still in cache.
        let i = (0..self.len).rev().find(|&i| self.slots[i].size == size && self.slots[i].align == align)?;
        let s = self.remove(i);
        Some(s.ptr)
    }

    fn pop_oldest(&mut self) -> Option<Slot> {
        (self.len > 0).then(|| self.remove(0))
    }

    fn remove(&mut self, i: usize) -> Slot {
        let s = self.slots[i];
        self.slots.copy_within(i + 1..self.len, i);
        self.len -= 1;
        self.bytes -= s.size;
        s
    }
}

// SAFETY: every block handed out is a `System` block of the requested layout (fresh, or cached
// with exactly that size and alignment); every block taken back is either kept whole (and only
// handed out again as a whole) or returned to `System` with its layout.
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.take(layout) {
            Some(p) => p,
            // SAFETY: forwarded with the caller's (valid, non-zero-size) layout.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.take(layout) {
            Some(p) => {
                // SAFETY: `p` is a block of `layout.size()` bytes that this caller now owns.
                unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
                p
            }
            // SAFETY: forwarded with the caller's layout.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller gives up a block this allocator returned with `layout`, which is a
        // `System` block of that layout (see above).
        if !unsafe { self.keep(ptr, layout) } {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `layout` with `new_size` is valid (the caller's contract).
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match self.take(new) {
            Some(p) => {
                // SAFETY: `ptr` holds `layout.size()` bytes the caller owns; `p` is a distinct
                // block of `new_size` bytes; the old block is then given up.
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                p
            }
            // SAFETY: `ptr` is a `System` block of `layout` (see above).
            None => unsafe { System.realloc(ptr, layout, new_size) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 64).unwrap()
    }

    #[test]
    fn a_freed_large_block_is_handed_out_again_for_the_same_size_only() {
        let c = BlockCache::new(8 << 20);
        // SAFETY (whole test): every block is used within its layout and freed once.
        unsafe {
            let a = c.alloc(layout(1 << 20));
            a.write_bytes(7, 1 << 20);
            c.dealloc(a, layout(1 << 20));
            assert_eq!(c.cached_bytes(), 1 << 20);
            let other = c.alloc(layout(2 << 20));
            assert_ne!(other, a, "a different size must not reuse the block");
            let again = c.alloc_zeroed(layout(1 << 20));
            assert_eq!(again, a);
            assert_eq!(c.cached_bytes(), 0);
            assert!(std::slice::from_raw_parts(again, 1 << 20).iter().all(|&b| b == 0), "alloc_zeroed must zero a reused block");
            c.dealloc(again, layout(1 << 20));
            c.dealloc(other, layout(2 << 20));
            assert_eq!(c.cached_bytes(), 3 << 20);
            c.release();
            assert_eq!(c.cached_bytes(), 0);
        }
    }

    #[test]
    fn small_blocks_pass_through_and_the_byte_cap_evicts_the_oldest() {
        let c = BlockCache::new(3 * MIN_BLOCK);
        // SAFETY (whole test): as above.
        unsafe {
            let small = c.alloc(layout(1024));
            c.dealloc(small, layout(1024));
            assert_eq!(c.cached_bytes(), 0);
            let blocks: Vec<*mut u8> = (0..4).map(|_| c.alloc(layout(MIN_BLOCK))).collect();
            for &b in &blocks {
                c.dealloc(b, layout(MIN_BLOCK));
            }
            assert_eq!(c.cached_bytes(), 3 * MIN_BLOCK, "the cap holds three");
            // The newest comes back first; the oldest was freed for real.
            assert_eq!(c.alloc(layout(MIN_BLOCK)), blocks[3]);
            let rest: Vec<*mut u8> = (0..2).map(|_| c.alloc(layout(MIN_BLOCK))).collect();
            assert_eq!(rest, vec![blocks[2], blocks[1]]);
            for b in [blocks[3], rest[0], rest[1]] {
                c.dealloc(b, layout(MIN_BLOCK));
            }
            // Larger than the whole cap: never kept.
            let huge = c.alloc(layout(4 * MIN_BLOCK));
            c.dealloc(huge, layout(4 * MIN_BLOCK));
            assert_eq!(c.cached_bytes(), 3 * MIN_BLOCK);
            c.release();
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_sizes_and_through_the_cache() {
        let c = BlockCache::new(64 << 20);
        // SAFETY (whole test): as above.
        unsafe {
            // Park a block of the target size so the realloc below takes the cached path.
            let parked = c.alloc(layout(2 << 20));
            c.dealloc(parked, layout(2 << 20));
            let p = c.alloc(layout(1 << 20));
            for i in 0..(1 << 20) {
                *p.add(i) = (i % 251) as u8;
            }
            let q = c.realloc(p, layout(1 << 20), 2 << 20);
            assert_eq!(q, parked);
            assert!((0..(1 << 20)).all(|i| *q.add(i) == (i % 251) as u8));
            // Large to small goes through the system allocator.
            let r = c.realloc(q, layout(2 << 20), 100);
            assert!((0..100).all(|i| *r.add(i) == (i % 251) as u8));
            c.dealloc(r, layout(100));
            c.release();
        }
    }

    #[test]
    fn the_global_cache_keeps_what_global_frees_until_release() {
        // SAFETY: the block is used within its layout and freed once.
        unsafe {
            let p = Global.alloc(layout(MIN_BLOCK));
            Global.dealloc(p, layout(MIN_BLOCK));
        }
        assert!(GLOBAL.cached_bytes() >= MIN_BLOCK);
        release();
        assert_eq!(GLOBAL.cached_bytes(), 0);
    }

    #[test]
    fn threads_allocating_and_freeing_at_once_never_share_a_block() {
        static C: BlockCache = BlockCache::new(32 << 20);
        std::thread::scope(|s| {
            for t in 0..8u8 {
                s.spawn(move || {
                    for i in 0..200usize {
                        let l = layout(MIN_BLOCK * (1 + (i + t as usize) % 3));
                        // SAFETY: the block is this thread's alone until freed once.
                        unsafe {
                            let p = C.alloc(l);
                            p.write_bytes(t, l.size());
                            std::thread::yield_now();
                            assert!(std::slice::from_raw_parts(p, l.size()).iter().all(|&b| b == t), "another thread wrote into this block");
                            C.dealloc(p, l);
                        }
                    }
                });
            }
        });
        C.release();
        assert_eq!(C.cached_bytes(), 0);
    }
}
