//! A global allocator that counts the bytes it hands out, for tests that check a steady state
//! allocates nothing (a forward pass reusing its workspaces). It lives here because
//! implementing `GlobalAlloc` is `unsafe`, which only this crate may contain; a test binary
//! installs it with `#[global_allocator] static A: CountingAllocator = CountingAllocator;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static BYTES: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting every allocation (and growth by `realloc`) process-wide.
pub struct CountingAllocator;

/// Bytes and calls counted so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocCount {
    /// Bytes requested by `alloc`, `alloc_zeroed` and the growing part of `realloc`.
    pub bytes: u64,
    /// Number of those calls.
    pub calls: u64,
}

impl AllocCount {
    /// The counts now (meaningful only where [`CountingAllocator`] is the global allocator).
    pub fn now() -> AllocCount {
        AllocCount {
            bytes: BYTES.load(Ordering::Relaxed),
            calls: CALLS.load(Ordering::Relaxed),
        }
    }

    /// What was allocated since `earlier`.
    pub fn since(self, earlier: AllocCount) -> AllocCount {
        AllocCount {
            bytes: self.bytes - earlier.bytes,
            calls: self.calls - earlier.calls,
        }
    }
}

fn count(bytes: usize) {
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    CALLS.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's own arguments, so `System`'s
// guarantees are the caller's; the counters have no effect on the memory returned.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by this allocator (so by `System`) for `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: `ptr` was returned by this allocator (so by `System`) for `layout`, and the
        // caller upholds `realloc`'s contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
