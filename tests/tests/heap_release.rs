//! A trainer with a memory budget hands the heap's freed pages back to the OS after each step
//! (`kilotune::train::checkpoint::release_freed_heap`, glibc's `malloc_trim`). This checks that
//! the call really lowers the resident size. It is alone in its test binary, so no other test
//! allocates while it reads the resident size.

/// This process's resident set size in KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_heap_pages_go_back_to_the_os() {
    // 64 MiB in 4 KiB blocks, far below glibc's mmap threshold: they come from the heap.
    let mut blocks: Vec<Option<Vec<u8>>> = (0..16_384).map(|i| Some(vec![(i % 251) as u8 | 1; 4096])).collect();
    // Free 63 of every 64, so the heap cannot simply shrink from its top: the freed runs sit
    // between live blocks, as a training step's freed activations do.
    for (i, b) in blocks.iter_mut().enumerate() {
        if i % 64 != 63 {
            *b = None;
        }
    }
    let freed = rss_kib();
    kilotune::train::checkpoint::release_freed_heap();
    let released = rss_kib();
    // The live blocks are still intact.
    for (i, b) in blocks.iter().enumerate() {
        if let Some(b) = b {
            assert!(b.iter().all(|&v| v == (i % 251) as u8 | 1), "block {i} changed");
        }
    }
    println!("resident after the frees: {freed} KiB; after release_freed_heap: {released} KiB");
    assert!(freed >= released + 32 * 1024, "release_freed_heap returned {} KiB of the 63 MiB freed", freed.saturating_sub(released));
}
