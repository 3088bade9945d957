//! The process-wide allocator: mimalloc, called the cheap way.
//!
//! Every mimalloc block is at least 8-byte aligned (block sizes are whole
//! words and pages start aligned), so an allocation that needs no more
//! than that takes `mi_malloc` / `mi_zalloc` / `mi_realloc`, whose fast
//! paths are a few instructions; only larger alignments pay for the
//! `_aligned` variants. Nearly all of Rust's allocations (strings, byte
//! buffers, boxes of pointer-sized fields) need 8 bytes or less.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Alignment that every mimalloc block has.
const BLOCK_ALIGN: usize = 8;

/// mimalloc as Rust's global allocator.
pub struct MiMalloc;

// SAFETY: every pointer handed out comes from mimalloc with at least the
// layout's alignment (plain calls only when `BLOCK_ALIGN` covers it), and
// every pointer given back goes to `mi_free` / `mi_realloc*`, which accept
// any mimalloc block.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if layout.align() <= BLOCK_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe {
            if layout.align() <= BLOCK_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe {
            if layout.align() <= BLOCK_ALIGN {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

// `mi_collect` belongs to mimalloc's extended API, which the bindings
// only declare behind a feature that adds a dependency for it.
unsafe extern "C" {
    fn mi_collect(force: bool);
}

/// Gives the memory that this thread's heap holds free back to the system,
/// along with what the allocator had set aside to purge later. The server
/// calls it once when start-up is over: building the control API's router
/// and OpenAPI document makes about 1.5 MB of temporaries on the thread
/// that starts the server, and mimalloc purges freed pages only when that
/// thread allocates again, which it seldom does.
pub fn release_free_memory() {
    // SAFETY: takes only a flag and may be called at any time, from any
    // thread.
    unsafe { mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Memory freed on this thread stays resident until
    /// `release_free_memory` gives it back.
    #[test]
    fn release_free_memory_gives_freed_pages_back() {
        const BLOCKS: usize = 64 * 1024;
        const SIZE: usize = 512; // 32 MiB in all, in small blocks
        let a = MiMalloc;
        let layout = Layout::from_size_align(SIZE, 8).unwrap();
        let blocks: Vec<*mut u8> = (0..BLOCKS)
            .map(|_| unsafe {
                let p = a.alloc(layout);
                p.write_bytes(1, SIZE);
                p
            })
            .collect();
        for p in blocks {
            unsafe { a.dealloc(p, layout) };
        }
        let freed = rss_anon_kib();
        release_free_memory();
        let released = rss_anon_kib();
        assert!(
            released + 16 * 1024 < freed,
            "RssAnon {freed} KiB after freeing 32 MiB, {released} KiB after releasing"
        );
    }

    /// Every size and alignment gets a block of its alignment that holds
    /// what is written to it, zeroed allocations are zero, and growing or
    /// shrinking keeps the contents and the alignment.
    #[test]
    fn blocks_have_the_layouts_alignment_and_keep_their_contents() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=130).chain([255, 1000, 4096, 70_000]) {
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        *p.add(i) = i as u8;
                    }
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "grown {size} align {align}");
                    for i in 0..size {
                        assert_eq!(*grown.add(i), i as u8);
                    }
                    let big = Layout::from_size_align(size * 3, align).unwrap();
                    let shrunk = a.realloc(grown, big, size.div_ceil(2));
                    assert_eq!(shrunk as usize % align, 0, "shrunk {size} align {align}");
                    for i in 0..size.div_ceil(2) {
                        assert_eq!(*shrunk.add(i), i as u8);
                    }
                    a.dealloc(
                        shrunk,
                        Layout::from_size_align(size.div_ceil(2), align).unwrap(),
                    );
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
