//! /proc/PID/pagemap: which pages of a range are in memory or in swap, and whether each is
//! the process's own (anonymous, or a private copy) or a file's. With the PAGEMAP_SCAN ioctl
//! (Linux 6.7+) the kernel hands back runs of pages; without it (Debian's 6.1), one 8-byte
//! entry a page is read and scanned, which costs a process with many thread stacks (8 MiB
//! each, a few pages touched) a millisecond or more.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const PAGE: u64 = crate::crf::PAGE_SIZE as u64;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// PAGEMAP_SCAN: _IOWR('f', 16, struct pm_scan_arg).
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// struct pm_scan_arg (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct ScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// struct page_region.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Region {
    start: u64,
    end: u64,
    categories: u64,
}

/// A run of pages in memory or in swap, all a file's (`file`: the page cache's, not copied
/// yet) or all the process's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Touched {
    pub start: u64,
    pub end: u64,
    pub file: bool,
}

pub struct Pagemap {
    file: File,
    path: String,
    /// Whether this kernel has PAGEMAP_SCAN (until it says it has not).
    scan: bool,
    /// The kernel's answers, or the entries read, kept from one range to the next.
    regions: Vec<Region>,
    entries: Vec<u8>,
}

impl Pagemap {
    pub fn open(pid: i32) -> Result<Pagemap> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Pagemap { file, path, scan: true, regions: Vec::new(), entries: Vec::new() })
    }

    /// The pages of [start, end) of anonymous memory that hold data, in runs, in order: those
    /// in memory or in swap but the shared zero page (which a read maps where nothing was
    /// written: it reads as zero without being stored). Without PAGEMAP_SCAN, every page in
    /// memory or in swap.
    pub fn own_data(&mut self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        if self.scan {
            match self.with_data(start, end) {
                Ok(t) => return Ok(t),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => self.scan = false,
                Err(e) => return Err(Error::io(format!("PAGEMAP_SCAN of {} at {start:#x}", self.path), e)),
            }
        }
        Ok(self.read_touched(start, end)?.into_iter().map(|t| (t.start, t.end)).collect())
    }

    /// The pages of [start, end) (page-aligned) in memory or in swap, in runs, in order.
    pub fn touched(&mut self, start: u64, end: u64) -> Result<Vec<Touched>> {
        if self.scan {
            match self.scan_touched(start, end) {
                Ok(t) => return Ok(t),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => self.scan = false,
                Err(e) => return Err(Error::io(format!("PAGEMAP_SCAN of {} at {start:#x}", self.path), e)),
            }
        }
        self.read_touched(start, end)
    }

    fn scan_touched(&mut self, start: u64, end: u64) -> std::io::Result<Vec<Touched>> {
        let mut out: Vec<Touched> = Vec::new();
        let ask = ScanArg {
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE,
            ..Default::default()
        };
        self.scan(start, end, ask, |r| push(&mut out, r.start, r.end, r.categories & PAGE_IS_FILE != 0))?;
        Ok(out)
    }

    /// Walks [start, end) with PAGEMAP_SCAN, asking what `ask` says (its flags and masks),
    /// handing each region the kernel returns to `each`, in order.
    fn scan(&mut self, start: u64, end: u64, ask: ScanArg, mut each: impl FnMut(&Region)) -> std::io::Result<()> {
        if self.regions.is_empty() {
            self.regions = vec![Region::default(); 512];
        }
        let mut at = start;
        while at < end {
            let mut a = ScanArg {
                size: std::mem::size_of::<ScanArg>() as u64,
                start: at,
                end,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                ..ask
            };
            // SAFETY: PAGEMAP_SCAN reads the pm_scan_arg we pass (sized by its own size field)
            // and writes at most vec_len page_regions to `vec`, our buffer of that many, and
            // walk_end back into the argument.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN, &mut a as *mut ScanArg) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            self.regions[..(n as usize).min(self.regions.len())].iter().for_each(&mut each);
            // The walk stops early when the buffer is full; walk_end says where.
            if a.walk_end <= at {
                break;
            }
            at = a.walk_end;
        }
        Ok(())
    }

    /// Whether this process sees frame numbers in a pagemap (CAP_SYS_ADMIN, when it opens
    /// one): asked of its own, at a page it has just written.
    pub fn frames_visible() -> bool {
        let mut probe = [1u8; 64];
        std::hint::black_box(&mut probe);
        let at = (probe.as_ptr() as u64) / PAGE * PAGE;
        let Ok(mut pm) = Pagemap::open(std::process::id() as i32) else { return false };
        let mut seen = false;
        let read = pm.each_entry(at, at + PAGE, |e| seen = e & PM_PRESENT != 0 && e & ((1 << 55) - 1) != 0);
        read.is_ok() && seen
    }

    /// Per page of [start, end) (page-aligned), the frame number of the process's own page in
    /// memory there that another process maps too (what a fork leaves shared until one
    /// writes), else 0: not present, in swap, a file's, mapped by this process alone, or
    /// frame numbers hidden from us (they need CAP_SYS_ADMIN).
    pub fn shared_frames(&mut self, start: u64, end: u64) -> Result<Vec<u64>> {
        const PM_EXCLUSIVE: u64 = 1 << 56;
        const PFN: u64 = (1 << 55) - 1;
        let mut out = Vec::with_capacity(((end - start) / PAGE) as usize);
        self.each_entry(start, end, |e| {
            let own = e & PM_PRESENT != 0 && e & (PM_FILE | PM_EXCLUSIVE) == 0;
            out.push(if own { e & PFN } else { 0 });
        })?;
        Ok(out)
    }

    /// The pages of [start, end) in memory that are the process's own (anonymous, or a
    /// private copy) and that another process maps too (a fork left them shared), as runs.
    pub fn shared_anon(&mut self, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
        const PM_EXCLUSIVE: u64 = 1 << 56;
        let mut out = Vec::new();
        let mut a = start;
        self.each_entry(start, end, |e| {
            if e & PM_PRESENT != 0 && e & (PM_FILE | PM_EXCLUSIVE) == 0 {
                join(&mut out, a, a + PAGE);
            }
            a += PAGE;
        })?;
        Ok(out)
    }

    /// Reads the pagemap entry of every page of [start, end), in order.
    fn each_entry(&mut self, start: u64, end: u64, mut each: impl FnMut(u64)) -> Result<()> {
        const CHUNK: u64 = 65536;
        let mut at = start;
        while at < end {
            let n = ((end - at) / PAGE).min(CHUNK) as usize;
            if self.entries.len() < 8 * n {
                self.entries.resize(8 * n, 0);
            }
            let buf = &mut self.entries[..8 * n];
            self.file
                .read_exact_at(buf, at / PAGE * 8)
                .map_err(|e| Error::io(format!("{} at {at:#x}", self.path), e))?;
            for e in buf.chunks_exact(8) {
                each(u64::from_le_bytes(e.try_into().unwrap_or([0; 8])));
            }
            at += n as u64 * PAGE;
        }
        Ok(())
    }

    fn read_touched(&mut self, start: u64, end: u64) -> Result<Vec<Touched>> {
        let mut out = Vec::new();
        let mut a = start;
        self.each_entry(start, end, |e| {
            if e & (PM_PRESENT | PM_SWAP) != 0 {
                push(&mut out, a, a + PAGE, e & PM_FILE != 0);
            }
            a += PAGE;
        })?;
        Ok(out)
    }
}

const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

impl Pagemap {
    /// The pages of [start, end) that hold data: in memory or in swap, and not the shared zero
    /// page (which a read of a page dropped with MADV_DONTNEED maps without a write), as runs.
    /// Needs PAGEMAP_SCAN.
    pub fn with_data(&mut self, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let ask = ScanArg {
            category_inverted: PAGE_IS_PFNZERO,
            category_mask: PAGE_IS_PFNZERO,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ..Default::default()
        };
        self.scan(start, end, ask, |r| join(&mut out, r.start, r.end))?;
        Ok(out)
    }

    /// The pages of [start, end) written since they were last write-protected, as runs, and
    /// write-protected again in the same walk (PM_SCAN_WP_MATCHING): the range must be
    /// registered with a userfaultfd in WP_ASYNC mode (see ptrace::wp), or EPERM.
    pub fn written(&mut self, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        // Only pages in memory or in swap: protecting an untouched page would put a marker
        // in it, which the kernel then reports as swapped (and the walk would reach every
        // page of a reserved gigabyte). A page first touched later is written all the same.
        let ask = ScanArg {
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            category_mask: PAGE_IS_WRITTEN,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_WRITTEN,
            ..Default::default()
        };
        self.scan(start, end, ask, |r| join(&mut out, r.start, r.end))?;
        Ok(out)
    }
}

impl Pagemap {
    /// For the last look at a tracked range (see [`Pagemap::written`]), in one walk and
    /// without protecting anything again: the pages written since they were last protected,
    /// and the pages that hold data (in memory or in swap, not the zero page), as runs.
    pub fn written_and_data(&mut self, start: u64, end: u64) -> std::io::Result<(Runs, Runs)> {
        let (mut written, mut data) = (Runs::new(), Runs::new());
        let ask = ScanArg {
            flags: PM_SCAN_CHECK_WPASYNC,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO,
            ..Default::default()
        };
        self.scan(start, end, ask, |r| {
            if r.categories & PAGE_IS_WRITTEN != 0 {
                join(&mut written, r.start, r.end);
            }
            if r.categories & PAGE_IS_PFNZERO == 0 {
                join(&mut data, r.start, r.end);
            }
        })?;
        Ok((written, data))
    }
}

/// Ranges of addresses, [start, end) each, in order.
pub type Runs = Vec<(u64, u64)>;

/// Appends a range, joined to the last one when it continues it.
pub fn join(out: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    match out.last_mut() {
        Some(last) if last.1 == start => last.1 = end,
        _ => out.push((start, end)),
    }
}

/// Appends a run, joined to the last one when it continues it.
fn push(out: &mut Vec<Touched>, start: u64, end: u64, file: bool) {
    match out.last_mut() {
        Some(t) if t.end == start && t.file == file => t.end = end,
        _ => out.push(Touched { start, end, file }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn frame_numbers_are_seen_with_cap_sys_admin_only() {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
        let admin = u64::from_str_radix(eff, 16).unwrap() & (1 << 21) != 0; // CAP_SYS_ADMIN
        assert_eq!(Pagemap::frames_visible(), admin, "CapEff {eff}");
    }

    /// A fresh private anonymous mapping of `len` bytes for a test, which writes only inside
    /// it and unmaps it at the end.
    pub(crate) fn fresh(len: usize) -> *mut u8 {
        // SAFETY: a new mapping of our own; nothing else uses its addresses.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as *mut u8
    }

    /// Both ways agree, on this process: pages written, a hole, a file's page read, a page
    /// of it written (copied).
    #[test]
    fn scan_and_read_agree() {
        let len = 64 * PAGE as usize;
        let p = fresh(len);
        for i in [0usize, 1, 2, 10, 40, 41, 63] {
            // SAFETY: inside the mapping.
            unsafe { *p.add(i * PAGE as usize) = 1 };
        }
        let exe = File::open("/proc/self/exe").unwrap();
        // SAFETY: a private read-write mapping of our own executable's first pages.
        let f = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                exe.as_raw_fd(),
                0,
            )
        } as *mut u8;
        assert_ne!(f as *mut libc::c_void, libc::MAP_FAILED);
        // SAFETY: inside the mapping: page 0 read, page 1 written.
        let first = unsafe { std::ptr::read_volatile(f) };
        unsafe { *f.add(PAGE as usize) = first.wrapping_add(1) };
        let me = std::process::id() as i32;
        let (a, fa) = (p as u64, f as u64);
        let mut scan = Pagemap::open(me).unwrap();
        let mut read = Pagemap::open(me).unwrap();
        read.scan = false;
        for (s, e) in [(a, a + len as u64), (fa, fa + 4 * PAGE)] {
            assert_eq!(scan.touched(s, e).unwrap(), read.touched(s, e).unwrap());
        }
        let got = read.touched(a, a + len as u64).unwrap();
        let pages: Vec<(u64, u64)> = got.iter().map(|t| ((t.start - a) / PAGE, (t.end - a) / PAGE)).collect();
        assert_eq!(pages, vec![(0, 3), (10, 11), (40, 42), (63, 64)]);
        assert!(got.iter().all(|t| !t.file));
        let got = read.touched(fa, fa + 4 * PAGE).unwrap();
        assert_eq!(got.first().map(|t| (t.start, t.file)), Some((fa, true)));
        assert!(got.iter().any(|t| t.start <= fa + PAGE && fa + PAGE < t.end && !t.file));
        // SAFETY: our own mappings, unused from here on.
        unsafe {
            libc::munmap(p.cast(), len);
            libc::munmap(f.cast(), 4 * PAGE as usize);
        }
    }
}
