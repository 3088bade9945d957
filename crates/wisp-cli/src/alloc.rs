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

#[cfg(test)]
mod tests {
    use super::*;

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
