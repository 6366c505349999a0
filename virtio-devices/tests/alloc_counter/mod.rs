//! A global allocator that counts allocations and live bytes, for the
//! tests that prove a device's hot path allocates nothing or that a
//! guest cannot grow the host's heap. Each such test binary installs it:
//! `#[global_allocator] static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Forwards to the system allocator, counting every allocation.
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);

/// Allocations so far in this process.
#[allow(dead_code)] // not every test binary that installs the counter reads it
pub fn allocations() -> u64 {
    ALLOCS.load(Ordering::SeqCst)
}

/// Bytes allocated and not yet freed in this process.
#[allow(dead_code)] // not every test binary that installs the counter reads it
pub fn live_bytes() -> u64 {
    LIVE.load(Ordering::SeqCst)
}

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}
