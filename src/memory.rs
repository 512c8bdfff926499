//! Giving freed memory back to the operating system: the only `unsafe` outside the btrfs
//! ioctls.
//!
//! A watch's first list decodes tens of thousands of whole objects, a page at a time, and
//! keeps a small row of each (`cache::rows`); the index's tables grow by doubling on the way.
//! glibc's allocator keeps what is freed in between for reuse, so a controller that needed
//! 100 MiB for a moment while listing would hold that much for good. [`release_free_memory`]
//! asks the allocator to return free pages after such a list (glibc's `malloc_trim`, which
//! also releases whole free pages in the middle of its heaps). It changes no live
//! allocation. On other C libraries (musl) it does nothing.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    unsafe extern "C" {
        /// `int malloc_trim(size_t pad)` from glibc's `<malloc.h>`.
        pub fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
}

/// Returns the allocator's free memory to the operating system, keeping no padding.
/// Costs a walk over the allocator's heaps (milliseconds at a few hundred MiB): call it
/// after large, rare frees, not per request.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes a plain integer, touches only glibc's own allocator state
    // under that allocator's locks, and never frees or moves a live allocation; Rust's
    // global allocator on this target is that same glibc malloc.
    unsafe {
        glibc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_returned_and_live_memory_kept() {
        let rss = || -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        // Many small blocks (below the mmap threshold, so they live in the heap), touched,
        // then all but every 64th freed: the heap is mostly free pages.
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![(i % 251) as u8; 4096]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter().step_by(64).cloned().collect();
        blocks.clear();
        blocks.shrink_to_fit();
        let before = rss();
        release_free_memory();
        let after = rss();
        assert!(
            after + 20_000 < before,
            "malloc_trim returned less than 20 MiB: VmRSS {before} kB -> {after} kB"
        );
        // The blocks still alive are intact.
        for (i, block) in kept.iter().enumerate() {
            assert!(block.iter().all(|&b| b == ((i * 64) % 251) as u8));
        }
    }
}
