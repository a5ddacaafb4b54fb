//! Bulk page I/O with another process: process_vm_readv/writev with up to IOV_MAX runs per call,
//! and /proc/PID/mem for pages the process itself cannot read (PROT_NONE).

use crate::error::{Error, Result};
use nix::errno::Errno;
use std::os::unix::fs::FileExt;

const IOV_MAX: usize = 1024;

/// Remote ranges (address, length) paired in order with `buf`; moves all of it or fails.
fn vm_io(pid: i32, remote: &[(u64, usize)], buf: *mut u8, write: bool) -> Result<()> {
    let mut off = 0usize;
    let mut i = 0usize;
    let mut skip = 0usize; // bytes of remote[i] already done
    while i < remote.len() {
        if remote[i].1 == 0 {
            i += 1;
            continue;
        }
        let mut riov: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX.min(remote.len() - i));
        let mut total = 0usize;
        for (j, &(a, l)) in remote[i..].iter().enumerate().take(IOV_MAX) {
            let s = if j == 0 { skip } else { 0 };
            riov.push(libc::iovec { iov_base: (a as usize + s) as *mut libc::c_void, iov_len: l - s });
            total += l - s;
        }
        // SAFETY: `buf` holds at least sum(remote lengths) bytes (checked by callers) and we
        // stay within [off, off + total).
        let liov = libc::iovec { iov_base: unsafe { buf.add(off) }.cast(), iov_len: total };
        // SAFETY: the iovecs point into `buf` (local) or describe remote addresses, which the
        // kernel checks against the target's mappings.
        let n = unsafe {
            if write {
                libc::process_vm_writev(pid, &liov, 1, riov.as_ptr(), riov.len() as libc::c_ulong, 0)
            } else {
                libc::process_vm_readv(pid, &liov, 1, riov.as_ptr(), riov.len() as libc::c_ulong, 0)
            }
        };
        let call = if write { "process_vm_writev" } else { "process_vm_readv" };
        if n < 0 {
            let (a, _) = remote[i];
            return Err(Error::sys(call, format!("pid {pid} address {:#x}", a as usize + skip), Errno::last()));
        }
        if n == 0 {
            return Err(Error::sys(call, format!("pid {pid} address {:#x}", remote[i].0), Errno::EFAULT));
        }
        // Advance over what was transferred.
        let mut n = n as usize;
        off += n;
        while n > 0 {
            let left = remote[i].1 - skip;
            if n >= left {
                n -= left;
                i += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Refuses runs that the local buffer cannot hold (an error, never an abort: the caller may
/// hold a frozen process).
fn fits(pid: i32, remote: &[(u64, usize)], len: usize) -> Result<()> {
    let total = remote.iter().try_fold(0usize, |t, r| t.checked_add(r.1));
    match total {
        Some(t) if t <= len => Ok(()),
        _ => Err(Error::Proc(format!(
            "pid {pid}: {} runs starting at {:#x} need more than the {len} bytes given for them",
            remote.len(),
            remote.first().map_or(0, |r| r.0)
        ))),
    }
}

pub fn read_runs(pid: i32, remote: &[(u64, usize)], buf: &mut [u8]) -> Result<()> {
    fits(pid, remote, buf.len())?;
    vm_io(pid, remote, buf.as_mut_ptr(), false)
}

pub fn write_runs(pid: i32, remote: &[(u64, usize)], buf: &[u8]) -> Result<()> {
    fits(pid, remote, buf.len())?;
    // process_vm_writev only reads from the local buffer.
    vm_io(pid, remote, buf.as_ptr() as *mut u8, true)
}

/// Reads through /proc/PID/mem, which also reaches pages without read permission.
pub fn read_proc_mem(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let path = format!("/proc/{pid}/mem");
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    f.read_exact_at(buf, addr).map_err(|e| Error::io(format!("{path} at {addr:#x}"), e))
}

/// A whole file mapped read-only, e.g. an image whose pages we write straight from the page cache
/// into a process, with no copy of our own.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    pub fn new(f: &std::fs::File, what: &str) -> Result<Mapped> {
        let len = f.metadata().map_err(|e| Error::io(what, e))?.len() as usize;
        if len == 0 {
            return Ok(Mapped { ptr: std::ptr::null_mut(), len: 0 });
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private read-only mapping of a file we hold open; we only ever read it
        // through `as_slice`, whose lifetime is tied to this struct, and unmap it in Drop.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(Error::sys("mmap", what.to_string(), Errno::last()));
        }
        Ok(Mapped { ptr, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr..ptr+len is our live read-only mapping (see `new`). A file truncated under
        // us would raise SIGBUS on access; images are written once and renamed into place.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping exactly the mapping we made; no slice of it outlives self.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_larger_than_the_buffer_are_an_error_not_an_abort() {
        let me = std::process::id() as i32;
        let x = [7u8; 16];
        let mut buf = [0u8; 8];
        let e = read_runs(me, &[(x.as_ptr() as u64, 16)], &mut buf).unwrap_err();
        assert!(e.to_string().contains("need more than the 8 bytes"), "{e}");
        assert!(write_runs(me, &[(0, usize::MAX), (0, 2)], &buf).is_err());
        read_runs(me, &[(x.as_ptr() as u64, 8)], &mut buf).unwrap();
        assert_eq!(buf, [7; 8]);
    }
}
