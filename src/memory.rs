//! Giving freed memory back to the operating system, and keeping less of it in the first
//! place: the only `unsafe` outside the btrfs ioctls.
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
        /// `int mallopt(int param, int value)` from glibc's `<malloc.h>`.
        pub fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }

    /// `M_ARENA_MAX` from `<malloc.h>`.
    pub const M_ARENA_MAX: std::ffi::c_int = -8;
}

/// Makes every thread allocate from one heap (glibc's `M_ARENA_MAX` = 1). Call it first
/// thing in `main`, before any thread starts.
///
/// glibc gives threads that contend for the heap arenas of their own, up to eight per
/// core, and each keeps what is freed in it for reuse by that arena. The roles' work is
/// API round trips, not allocation, so the contention saved is small, while the retained
/// memory is not: the controller at 5,000 nodes and 50,000 volumes held 88 MiB with the
/// default and 75 MiB with one arena (benches/rss.rs). It takes precedence over
/// `MALLOC_ARENA_MAX` in the environment, which glibc reads before `main`.
///
/// Says whether the allocator took it (never on other C libraries).
pub fn one_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` takes two plain integers and only sets a tunable of glibc's
    // allocator under its own lock; M_ARENA_MAX limits arenas created from now on and
    // changes no live allocation.
    unsafe {
        glibc::mallopt(glibc::M_ARENA_MAX, 1) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
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
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_one_heap_setting() {
        assert!(one_heap(), "mallopt(M_ARENA_MAX, 1) was refused");
    }

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
