//! The allocator of the crs binary: glibc's malloc, with every block of 4 KiB or more aligned
//! to 64 bytes.
//!
//! Pages pass through large buffers of ours (`Vec<u8>`): read out of a process
//! (process_vm_readv), out of an image file or a socket (read, recv). glibc's malloc gives
//! such a block 16 bytes past a 32-byte boundary (a chunk's header), and the kernel's copy
//! into it (`rep movsb`) is then four to five times slower on AMD's CPUs: 1.1 ms instead of
//! 0.22 for 1.4 MB read out of a process, 6.8 ms instead of 1.5 for 8 MB read from tmpfs
//! (EPYC, Linux 6.18). From 32 bytes on, the copy runs at full speed; 64 is a cache line.
//!
//! A large block is a malloc'd one with room for the alignment and, just before the address
//! given out, the address malloc gave. Not posix_memalign: its blocks cannot be had zeroed
//! without writing them (calloc's mmap'd blocks are zero pages, untouched until used: a
//! restore's buffers of megabytes cost 1000 page faults more that way), nor grown in place.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks from this size on are aligned to [`ALIGN`].
const LARGE: usize = 4096;
const ALIGN: usize = 64;
/// What a large block takes beyond its size: the alignment, and the word before it.
const EXTRA: usize = ALIGN + std::mem::size_of::<usize>();

pub struct Aligned;

/// Whether a block of layout `l` is one of ours (otherwise System's).
fn large(size: usize, align: usize) -> bool {
    size >= LARGE && align <= ALIGN
}

/// Where the address given out lies in a malloc'd block at `raw`: 64-aligned, with a word
/// before it, at most EXTRA - 1 bytes in.
fn within(raw: *mut u8) -> *mut u8 {
    raw.wrapping_add((raw as usize + std::mem::size_of::<usize>()).next_multiple_of(ALIGN) - raw as usize)
}

/// The address to give out in a malloc'd block at `raw`, its header written.
///
/// # Safety
/// `raw` is a live block of at least `size + EXTRA` bytes, or null.
unsafe fn give(raw: *mut u8) -> *mut u8 {
    if raw.is_null() {
        return raw;
    }
    let p = within(raw);
    // SAFETY: `p - raw` is at least one word, so the word before `p` lies in the block
    // (written unaligned: nothing says malloc's blocks are aligned for usize).
    unsafe { (p.sub(std::mem::size_of::<usize>()) as *mut usize).write_unaligned(raw as usize) };
    p
}

/// The malloc'd block behind a large block's address.
///
/// # Safety
/// `p` was given by [`give`] and is live.
unsafe fn raw_of(p: *mut u8) -> *mut u8 {
    // SAFETY: give wrote the word before p.
    unsafe { (p.sub(std::mem::size_of::<usize>()) as *const usize).read_unaligned() as *mut u8 }
}

// SAFETY: a block is ours or System's by `large(size, align)` of the layout it is allocated,
// freed and reallocated with, as GlobalAlloc's callers give the same layout each time; a
// realloc that moves it between the two classes copies it into a new block of the other.
// Ours come from malloc with EXTRA bytes of room, so the address given (64-aligned, which
// meets every alignment up to 64) has `size` bytes of the block after it.
unsafe impl GlobalAlloc for Aligned {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !large(l.size(), l.align()) {
            // SAFETY: the caller's layout, unchanged.
            return unsafe { System.alloc(l) };
        }
        // SAFETY: malloc of a nonzero size (no overflow: a valid layout's size is at most
        // isize::MAX); give gets the block or null.
        unsafe { give(libc::malloc(l.size() + EXTRA) as *mut u8) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !large(l.size(), l.align()) {
            // SAFETY: as alloc.
            return unsafe { System.alloc_zeroed(l) };
        }
        // SAFETY: as alloc; calloc's block is zeroed throughout.
        unsafe { give(libc::calloc(1, l.size() + EXTRA) as *mut u8) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if !large(l.size(), l.align()) {
            // SAFETY: allocated by System with this layout.
            return unsafe { System.dealloc(p, l) };
        }
        // SAFETY: one of ours: free the block malloc gave.
        unsafe { libc::free(raw_of(p) as *mut libc::c_void) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let (was, will) = (large(l.size(), l.align()), large(new_size, l.align()));
        if !was && !will {
            // SAFETY: System's block, staying System's.
            return unsafe { System.realloc(p, l, new_size) };
        }
        if was && will {
            // SAFETY: our block: malloc's realloc keeps its bytes (from the start of the
            // block, header and all), and the data is moved to where the new block's
            // alignment falls if that differs. (An mmap'd block, grown by mremap, keeps its
            // offset in the page and is not copied at all; a heap block that malloc moved
            // may fall at another offset, and its bytes are then moved once more.)
            unsafe {
                let raw = raw_of(p);
                let off = p as usize - raw as usize;
                let moved = libc::realloc(raw as *mut libc::c_void, new_size + EXTRA) as *mut u8;
                if moved.is_null() {
                    return moved;
                }
                let q = within(moved);
                if q as usize - moved as usize != off {
                    std::ptr::copy(moved.add(off), q, l.size().min(new_size));
                }
                // (The header once the data is in place: it may lie where the data was.)
                return give(moved);
            }
        }
        // SAFETY: from one class to the other: a new block, the bytes both hold copied,
        // the old block freed with its own layout.
        unsafe {
            let Ok(want) = Layout::from_size_align(new_size, l.align()) else { return std::ptr::null_mut() };
            let q = self.alloc(want);
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                self.dealloc(p, l);
            }
            q
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_are_aligned_and_keep_their_bytes_across_classes() {
        let a = Aligned;
        let l = |n| Layout::from_size_align(n, 1).unwrap();
        // SAFETY: layouts of nonzero size; each block freed once, with the layout it has.
        unsafe {
            let p = a.alloc(l(100));
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 7, 100);
            let q = a.realloc(p, l(100), 300_000);
            assert!(!q.is_null());
            assert_eq!(q as usize % ALIGN, 0);
            assert!((0..100).all(|i| *q.add(i) == 7));
            std::ptr::write_bytes(q, 9, 300_000);
            let r = a.realloc(q, l(300_000), 5_000_000);
            assert_eq!(r as usize % ALIGN, 0);
            assert!((0..300_000).all(|i| *r.add(i) == 9));
            let s = a.realloc(r, l(5_000_000), 50);
            assert!(!s.is_null());
            assert!((0..50).all(|i| *s.add(i) == 9));
            a.dealloc(s, l(50));
            let z = a.alloc_zeroed(l(1 << 20));
            assert_eq!(z as usize % ALIGN, 0);
            assert!((0..1 << 20).all(|i| *z.add(i) == 0));
            a.dealloc(z, l(1 << 20));
        }
    }
}
