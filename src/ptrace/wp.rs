//! Which pages of a running process it writes, without stopping it: userfaultfd
//! write-protection in asynchronous mode (UFFD_FEATURE_WP_ASYNC, Linux 6.7+: the kernel lifts
//! the protection of a page at its first write and sends no message), read and re-armed in one
//! walk with the PAGEMAP_SCAN ioctl. This is what a copy of a process's memory made while it
//! runs needs (pre-copy), on kernels without soft-dirty tracking.
//!
//! Only pages in memory or in swap are protected (see `Pagemap::written`), and not with
//! WP_UNPOPULATED: a page never touched counts as written when it is first written all the
//! same (the page faulted in is not protected). Protecting an untouched page puts a marker in
//! it, which PAGEMAP_SCAN then reports as swapped: a gigabyte reserved and never touched
//! would look like a gigabyte of data.
//!
//! The userfaultfd must be the process's own (made for its memory): [`uffd_of`] makes it
//! inside the stopped process and takes it out, closing the process's copy at once. Dropping
//! the [`Tracker`] closes the last copy, which unregisters every range: the process is left
//! as it was.

use super::Ctl;
use super::pagemap::Pagemap;
use crate::error::{Error, Result};
use std::os::fd::{FromRawFd, OwnedFd};

use super::uffd::{self, USER_MODE_ONLY as UFFD_USER_MODE_ONLY};

const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

/// The features a tracker needs.
const NEEDED: u64 = UFFD_FEATURE_WP_ASYNC;

/// The writes to some ranges of a process's memory.
pub struct Tracker {
    pid: i32,
    uffd: OwnedFd,
    pagemap: Pagemap,
    /// The ranges registered, in order.
    ranges: Vec<(u64, u64)>,
    /// Those the kernel would not track (a mapping kind uffd-wp does not cover): a copy takes
    /// them whole at the end.
    pub untracked: Vec<(u64, u64)>,
    /// Ranges tracked once and let go since (not registered memory any more, see
    /// [`Tracker::take`]): a look at the mappings taken before we let one go may still show
    /// our mark there.
    let_go: Vec<(u64, u64)>,
}

/// A userfaultfd for the memory of the process `c` drives (stopped), made there with a remote
/// syscall and taken out (pidfd_getfd); the process's own copy is closed again.
pub fn uffd_of(c: &mut Ctl) -> Result<OwnedFd> {
    uffd::made_in(c, libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY)
}

/// Enables the asynchronous write-protection features on a fresh userfaultfd.
fn api(fd: &OwnedFd) -> std::io::Result<()> {
    // A kernel without the shmem and hugetlbfs kind tracks anonymous memory all the same.
    uffd::api(fd, NEEDED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM).or_else(|_| uffd::api(fd, NEEDED))
}

impl Tracker {
    /// Tracks the writes of process `pid` (whose userfaultfd `uffd` is, see [`uffd_of`]) to
    /// `ranges` (page-aligned, each within one mapping or spanning whole ones) from now on:
    /// registers them for asynchronous write-protection and protects them all.
    pub fn new(pid: i32, uffd: OwnedFd, ranges: &[(u64, u64)]) -> Result<Tracker> {
        api(&uffd).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => Error::not_here(
                format!("tracking the writes of pid {pid} (userfaultfd WP_ASYNC)"),
                "this kernel lacks asynchronous write-protection (Linux 6.7 or later has it)",
            ),
            _ => Error::io(format!("UFFDIO_API (pid {pid})"), e),
        })?;
        let mut t = Tracker {
            pid,
            uffd,
            pagemap: Pagemap::open(pid)?,
            ranges: Vec::new(),
            untracked: Vec::new(),
            let_go: Vec::new(),
        };
        t.add(ranges)?;
        Ok(t)
    }

    /// Tracks `ranges` too (as [`Tracker::new`]): the process may run meanwhile. Returns those
    /// now tracked; the others (gone meanwhile, or a kind uffd-wp does not cover) are not.
    pub fn add(&mut self, ranges: &[(u64, u64)]) -> Result<Vec<(u64, u64)>> {
        let pid = self.pid;
        let mut added = Vec::new();
        for &(start, end) in ranges {
            match uffd::register(&self.uffd, start, end, uffd::MODE_WP) {
                Ok(()) => added.push((start, end)),
                Err(e) => match e {
                    // Not a kind of memory uffd-wp covers (a file's, a special mapping),
                    // unmapped since (ENOMEM), or registered by another userfaultfd (EBUSY:
                    // the checkpoint refuses that at the freeze).
                    e if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL) | Some(libc::EPERM) | Some(libc::ENOMEM) | Some(libc::EBUSY)
                    ) =>
                    {
                        self.untracked.push((start, end))
                    }
                    e => return Err(Error::io(format!("UFFDIO_REGISTER {start:#x}-{end:#x} (pid {pid})"), e)),
                },
            }
        }
        // Protects them: the first walk finds every page "written" (none is protected yet) and
        // protects it.
        for &(start, end) in &added {
            self.pagemap
                .written(start, end)
                .map_err(|e| Error::io(format!("PAGEMAP_SCAN of {start:#x}-{end:#x} (pid {pid})"), e))?;
        }
        self.ranges.extend(&added);
        self.ranges.sort_unstable();
        Ok(added)
    }

    /// The ranges tracked, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Every range registered with our userfaultfd since the tracking began: those tracked,
    /// and those let go.
    pub fn ever_ours(&self) -> impl Iterator<Item = &(u64, u64)> {
        self.ranges.iter().chain(&self.let_go)
    }

    /// The pagemap of the process, for other questions.
    pub fn pagemap(&mut self) -> &mut Pagemap {
        &mut self.pagemap
    }

    /// The pages written since the tracker began or since the last call, as runs in address
    /// order; each is protected again in the same walk, so a write that comes after it is
    /// found by the next call. With them, the ranges whose tracking was lost (unmapped, or
    /// mapped again: what they hold now is unknown), no longer tracked.
    pub fn take(&mut self) -> Result<Taken> {
        self.take_as(false)
    }

    /// [`Tracker::take`] for the last time (the process is frozen): nothing is protected
    /// again, and the same walk finds which pages hold data (`Taken::data`).
    pub fn take_last(&mut self) -> Result<Taken> {
        self.take_as(true)
    }

    fn take_as(&mut self, last: bool) -> Result<Taken> {
        let mut t = Taken::default();
        let pid = self.pid;
        let mut lost = Vec::new();
        for &(start, end) in &self.ranges {
            let found = match last {
                false => self.pagemap.written(start, end).map(|w| (w, Vec::new())),
                true => self.pagemap.written_and_data(start, end),
            };
            match found {
                Ok((runs, data)) => {
                    t.written.extend(runs);
                    t.data.extend(data);
                }
                // Some of it is not registered memory any more.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOENT)) => lost.push((start, end)),
                Err(e) => {
                    return Err(Error::io(format!("PAGEMAP_SCAN of {start:#x}-{end:#x} (pid {pid})"), e));
                }
            }
        }
        self.ranges.retain(|r| !lost.contains(r));
        // What is left registered of a lost range (the process mapped over part of it) is
        // let go: it would look like a registration of the process's own, and a range
        // tracked again is registered anew. (Source::arm tracks no process that holds a
        // userfaultfd of its own: nothing else is registered there, short of a userfaultfd
        // for its memory held by another process.)
        for &(start, end) in &lost {
            if let Err(e) = uffd::unregister(&self.uffd, start, end) {
                log::debug!("pid {pid}: UFFDIO_UNREGISTER {start:#x}-{end:#x}: {e}");
            }
        }
        self.let_go.extend(&lost);
        t.lost = lost;
        Ok(t)
    }
}

/// What [`Tracker::take`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub written: Vec<(u64, u64)>,
    pub lost: Vec<(u64, u64)>,
    /// [`Tracker::take_last`]: the pages of the ranges still tracked that hold data.
    pub data: Vec<(u64, u64)>,
}

/// Whether this kernel lets crs track a running process's writes, asked on a userfaultfd and
/// the pagemap of crs's own: Ok, or what is missing.
pub fn available() -> std::result::Result<(), String> {
    // SAFETY: userfaultfd takes flags and returns a new fd, owned below.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY) };
    if fd < 0 {
        return Err(format!("no userfaultfd ({})", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nobody else owns.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    api(&uffd).map_err(|_| "userfaultfd without asynchronous write-protection (Linux 6.7+)".to_string())?;
    let mut pm = Pagemap::open(std::process::id() as i32).map_err(|e| e.to_string())?;
    // A range nothing is registered in: PAGEMAP_SCAN answers EPERM (CHECK_WPASYNC), a kernel
    // without it ENOTTY or EINVAL.
    match pm.written(0x1000, 0x2000) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => {
            Err("no PAGEMAP_SCAN ioctl (Linux 6.7+)".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = crate::crf::PAGE_SIZE as u64;

    /// On this process's own memory: every page at first, then exactly the pages written
    /// since, then none; and once dropped, nothing is registered any more.
    #[test]
    fn finds_exactly_the_pages_written_since() {
        if let Err(why) = available() {
            assert!(std::env::var_os("CI").is_none(), "CI needs write tracking: {why}");
            eprintln!("skipped: {why}");
            return;
        }
        let len = 64 * PAGE as usize;
        let p = crate::ptrace::pagemap::tests::fresh(len);
        let at = p as u64;
        let write = |pages: &[usize]| {
            for &i in pages {
                // SAFETY: inside the mapping.
                unsafe { std::ptr::write_volatile(p.add(i * PAGE as usize), 7) };
            }
        };
        write(&[0, 1, 2, 30]);
        // SAFETY: userfaultfd takes flags; the fd is owned at once.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let me = std::process::id() as i32;
        let mut t = Tracker::new(me, uffd, &[(at, at + len as u64)]).unwrap();
        assert!(t.untracked.is_empty());
        let w = |t: &mut Tracker| t.take().unwrap().written;
        assert_eq!(w(&mut t), vec![]);
        write(&[5, 40, 41, 63]);
        let pg = |a: u64, b: u64| (at + a * PAGE, at + b * PAGE);
        assert_eq!(w(&mut t), vec![pg(5, 6), pg(40, 42), pg(63, 64)]);
        assert_eq!(w(&mut t), vec![]);
        write(&[5]);
        assert_eq!(w(&mut t), vec![pg(5, 6)]);
        let registered = || {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut inside = false;
            for l in smaps.lines() {
                if let Some((range, _)) = l.split_once(' ').filter(|(r, _)| r.contains('-')) {
                    let start = u64::from_str_radix(range.split('-').next().unwrap_or(""), 16).unwrap_or(0);
                    inside = start >= at && start < at + len as u64;
                } else if inside && l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "uw") {
                    return true;
                }
            }
            false
        };
        assert!(registered());
        drop(t);
        assert!(!registered(), "still registered after the tracker is gone");
        write(&[6]);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(p as *mut libc::c_void, len) };
    }
}
