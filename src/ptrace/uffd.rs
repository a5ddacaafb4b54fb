//! The userfaultfd calls crs makes (linux/userfaultfd.h): a userfaultfd made inside a stopped
//! process for its memory, its features, ranges registered. Write tracking (ptrace::wp) and
//! the pages served after a restore (engine::lazy) build on them.

use super::{Ctl, procfs};
use crate::error::Result;
use std::os::fd::{AsRawFd, OwnedFd};

/// userfaultfd(2) flag: only faults raised in user mode (what an unprivileged user may have).
pub const USER_MODE_ONLY: i32 = 1;
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f; // _IOWR(0xAA, 0x3F, struct uffdio_api)
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00; // _IOWR(0xAA, 0x00, struct uffdio_register)
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01; // _IOR(0xAA, 0x01, struct uffdio_range)
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03; // _IOWR(0xAA, 0x03, struct uffdio_copy)
/// UFFDIO_REGISTER modes.
pub const MODE_MISSING: u64 = 1;
pub const MODE_WP: u64 = 1 << 1;

/// struct uffdio_api.
#[repr(C)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// struct uffdio_register.
#[repr(C)]
struct Register {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// struct uffdio_copy.
#[repr(C)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// A userfaultfd for the memory of the process `c` drives (stopped), made there with a remote
/// syscall (`flags`: O_CLOEXEC, O_NONBLOCK, USER_MODE_ONLY) and taken out (pidfd_getfd); the
/// process's own copy is closed again.
pub fn made_in(c: &mut Ctl, flags: i32) -> Result<OwnedFd> {
    let fd = c.userfaultfd(flags)?;
    let ours = procfs::getfd(c.pid(), fd, "its userfaultfd");
    c.close(fd, "its userfaultfd")?;
    ours
}

/// Asks a fresh userfaultfd for `features` (UFFDIO_API). A failure leaves it unconfigured: it
/// may be asked again, for fewer.
pub fn api(uffd: &OwnedFd, features: u64) -> std::io::Result<()> {
    let mut a = Api { api: UFFD_API, features, ioctls: 0 };
    // SAFETY: UFFDIO_API reads and writes one struct uffdio_api, ours.
    match unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut a as *mut Api) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Registers [start, end) of the userfaultfd's process in `mode` (UFFDIO_REGISTER).
pub fn register(uffd: &OwnedFd, start: u64, end: u64, mode: u64) -> std::io::Result<()> {
    let mut r = Register { start, len: end - start, mode, ioctls: 0 };
    // SAFETY: UFFDIO_REGISTER reads and writes one struct uffdio_register, ours; the range is
    // in the userfaultfd's process's address space, not ours.
    match unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut r as *mut Register) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Unregisters [start, end) of the userfaultfd's process (UFFDIO_UNREGISTER): whatever is
/// registered there, by any userfaultfd of that process, is no longer.
pub fn unregister(uffd: &OwnedFd, start: u64, end: u64) -> std::io::Result<()> {
    let mut r = [start, end - start];
    // SAFETY: UFFDIO_UNREGISTER reads one struct uffdio_range (u64 start, u64 len), ours; the
    // range is in the userfaultfd's process's address space, not ours.
    match unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_UNREGISTER, r.as_mut_ptr()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Copies `src` to `dst` in the userfaultfd's process (UFFDIO_COPY: each page a new one, filled
/// from `src` without being zeroed first; `dst` and the length page-aligned, the range
/// registered for missing pages). Returns the bytes copied, and the error that stopped it
/// short of all of them (EEXIST: the next page is there already; EAGAIN: the mm is changing).
pub fn copy(uffd: i32, dst: u64, src: &[u8]) -> (u64, Option<std::io::Error>) {
    let mut c = Copy { dst, src: src.as_ptr() as u64, len: src.len() as u64, mode: 0, copy: 0 };
    // SAFETY: UFFDIO_COPY reads and writes one struct uffdio_copy, ours; it reads `len` bytes
    // at `src`, all inside the slice, and writes only the other process's memory.
    if unsafe { libc::ioctl(uffd, UFFDIO_COPY, &mut c as *mut Copy) } == 0 {
        return (src.len() as u64, None);
    }
    let e = std::io::Error::last_os_error();
    (c.copy.max(0) as u64, Some(e))
}
