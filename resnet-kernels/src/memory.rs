//! The two knobs of the C allocator (glibc's malloc, which Rust's `System` allocator uses on
//! Linux) that a long-running server needs, so that memory freed after a burst of large
//! requests goes back to the system. Elsewhere (musl, macOS) they do nothing and say so.
//!
//! - [`map_large_allocations`]: allocations of at least `threshold` bytes get their own
//!   mapping, unmapped when freed. glibc otherwise raises its mapping threshold each time such
//!   a block is freed (up to 32 MiB), after which 10 MiB request bodies come from the heap and
//!   stay in the process once freed.
//! - [`release_free_memory`]: `malloc_trim(0)`: gives the free pages of every heap back.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    extern "C" {
        pub fn mallopt(param: i32, value: i32) -> i32;
        pub fn malloc_trim(pad: usize) -> i32;
    }
    /// `M_MMAP_THRESHOLD` in glibc's `malloc.h`.
    pub const M_MMAP_THRESHOLD: i32 = -3;
}

/// Serves allocations of `threshold` bytes or more (clamped to 32 MiB, glibc's maximum) from
/// their own mappings, returned to the system when freed. True when the allocator took it.
pub fn map_large_allocations(threshold: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let value = threshold.min(32 << 20) as i32;
        // SAFETY: mallopt only reads its two integer arguments; M_MMAP_THRESHOLD with a value
        // within glibc's documented range (0..=32 MiB on 64-bit) is always valid.
        unsafe { glibc::mallopt(glibc::M_MMAP_THRESHOLD, value) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = threshold;
        false
    }
}

/// Returns the free memory of the allocator's heaps to the system. True when some was.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a plain integer (the padding to keep) and only walks the
        // allocator's own free lists under its locks; it is safe to call from any thread.
        unsafe { glibc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_knobs_can_be_called_and_allocation_still_works() {
        let on_glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        assert_eq!(map_large_allocations(1 << 20), on_glibc);
        let big = vec![7u8; 4 << 20];
        assert_eq!(big[(4 << 20) - 1], 7);
        drop(big);
        let _ = release_free_memory();
        let again = vec![1u32; 1 << 20];
        assert_eq!(again.iter().map(|&v| v as u64).sum::<u64>(), 1 << 20);
    }
}
