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

/// [`read_runs`], but the parts of the runs that lie in `shared` (sorted ranges: pages a fork
/// left shared) through /proc/PID/mem: process_vm_readv pins pages, and the kernel then gives
/// the process its own copy of each shared one (FAULT_FLAG_UNSHARE).
pub fn read_runs_unpinned(pid: i32, remote: &[(u64, usize)], buf: &mut [u8], shared: &[(u64, u64)]) -> Result<()> {
    if shared.is_empty() {
        return read_runs(pid, remote, buf);
    }
    fits(pid, remote, buf.len())?;
    let (mut pinned, mut unpinned) = (Vec::new(), Vec::new());
    let mut off = 0usize;
    for &(s, len) in remote {
        let e = s + len as u64;
        let mut at = s;
        let k = shared.partition_point(|r| r.1 <= at);
        for &(ss, se) in shared[k..].iter().take_while(|r| r.0 < e) {
            if ss > at {
                pinned.push((at, (ss - at) as usize, off + (at - s) as usize));
            }
            let (from, to) = (ss.max(at), se.min(e));
            unpinned.push((from, (to - from) as usize, off + (from - s) as usize));
            at = to;
        }
        if at < e {
            pinned.push((at, (e - at) as usize, off + (at - s) as usize));
        }
        off += len;
    }
    for (addr, len, at) in pinned {
        read_runs(pid, &[(addr, len)], &mut buf[at..at + len])?;
    }
    if !unpinned.is_empty() {
        let path = format!("/proc/{pid}/mem");
        let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        for (addr, len, at) in unpinned {
            f.read_exact_at(&mut buf[at..at + len], addr).map_err(|e| Error::io(format!("{path} at {addr:#x}"), e))?;
        }
    }
    Ok(())
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
        shrunk::watch(ptr as usize, len, what);
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

// SAFETY: the mapping is read-only and private, never written through `ptr`, and lives until
// Drop: reading it from several threads at once is sound.
unsafe impl Send for Mapped {}
// SAFETY: as above; `as_slice` hands out shared, read-only views only.
unsafe impl Sync for Mapped {}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            shrunk::forget(self.ptr as usize);
            // SAFETY: unmapping exactly the mapping we made; no slice of it outlives self.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// A mapped file truncated under us (its owner, root, rewrote it in place while rstrt read
/// it) raises SIGBUS where we read past its new end: said in one line, and we exit with
/// BAD_IMAGE (what the restore made dies with us: held processes by PTRACE_O_EXITKILL, those
/// of a lazy restore by its sentinel). Any other SIGBUS goes on to the handler there was.
mod shrunk {
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

    /// Mappings watched at once, at most (rstrt maps one image).
    const SLOTS: usize = 4;
    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: Slot = Slot {
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        msg: AtomicPtr::new(std::ptr::null_mut()),
        len: AtomicUsize::new(0),
    };
    static WATCHED: [Slot; SLOTS] = [FREE; SLOTS];
    static OLD: std::sync::OnceLock<libc::sigaction> = std::sync::OnceLock::new();

    struct Slot {
        start: AtomicUsize,
        end: AtomicUsize,
        /// The line to print, leaked: the handler may not allocate.
        msg: AtomicPtr<u8>,
        len: AtomicUsize,
    }

    pub fn watch(start: usize, len: usize, what: &str) {
        OLD.get_or_init(|| {
            // SAFETY: sigaction installs our handler, which is async-signal-safe (atomic loads,
            // write, _exit, or the old handler as the kernel would call it), and fills `old`.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_sigbus as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(libc::SIGBUS, &sa, &mut old);
                old
            }
        });
        // (As the applet says its other errors: rstrt, or crs rstrt.)
        let mut args = std::env::args().map(|a| a.rsplit('/').next().unwrap_or_default().to_string());
        let name = match args.next() {
            Some(a) if a == "crs" => args.next().unwrap_or(a),
            a => a.unwrap_or_else(|| "crs".into()),
        };
        let line = format!(
            "{name}: {what} shrank while it was read (truncated or rewritten in place): the restore is lost, and what it restored is killed\n"
        );
        let line: &'static mut [u8] = Box::leak(line.into_bytes().into_boxed_slice());
        for s in &WATCHED {
            if s.start.compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                s.msg.store(line.as_mut_ptr(), Ordering::SeqCst);
                s.len.store(line.len(), Ordering::SeqCst);
                s.end.store(start + len, Ordering::SeqCst);
                return;
            }
        }
    }

    pub fn forget(start: usize) {
        for s in &WATCHED {
            if s.start.load(Ordering::SeqCst) == start {
                s.end.store(0, Ordering::SeqCst);
                s.start.store(0, Ordering::SeqCst);
            }
        }
    }

    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
        let addr = unsafe { (*info).si_addr() } as usize;
        for s in &WATCHED {
            let (start, end) = (s.start.load(Ordering::SeqCst), s.end.load(Ordering::SeqCst));
            if start != 0 && (start..end).contains(&addr) {
                // SAFETY: write(2) of the leaked line (valid for ever), then _exit: both
                // async-signal-safe.
                unsafe {
                    libc::write(2, s.msg.load(Ordering::SeqCst).cast(), s.len.load(Ordering::SeqCst));
                    libc::_exit(crate::exit::BAD_IMAGE);
                }
            }
        }
        // Not ours: the handler there was, as the kernel would have called it; or, if it was
        // the default, back to it (the fault comes again, and does what it would have).
        match OLD.get() {
            Some(old) if old.sa_sigaction > libc::SIG_IGN && old.sa_flags & libc::SA_SIGINFO != 0 => {
                // SAFETY: the old SA_SIGINFO handler, with the arguments the kernel gave us.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig, info, ctx)
            }
            Some(old) if old.sa_sigaction > libc::SIG_IGN => {
                // SAFETY: the old plain handler, with the signal number.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(old.sa_sigaction) };
                f(sig)
            }
            // SAFETY: signal(2) back to the default action; async-signal-safe.
            _ => unsafe {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mapped file truncated under us: reading past its new end says so in one line and
    /// exits with BAD_IMAGE, in a child of the test (it exits).
    #[test]
    fn a_mapped_file_truncated_under_us_is_said_not_a_crash() {
        use std::io::Read;
        let dir = std::env::temp_dir().join(format!("crs-shrunk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        std::fs::write(&path, vec![5u8; 64 << 10]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let m = Mapped::new(&f, "image file img").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_len(4096).unwrap();
        let (mut rd, wr) = std::io::pipe().unwrap();
        // SAFETY: the child only reads the mapping (raising SIGBUS, whose handler writes and
        // _exits) and redirects its stderr with dup2; the parent waits for it.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&wr), 2);
                let v = std::ptr::read_volatile(m.as_slice().as_ptr().add(32 << 10));
                libc::_exit(v as i32 + 100);
            }
        }
        drop(wr);
        let mut said = String::new();
        rd.read_to_string(&mut said).unwrap();
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}: {said}");
        assert_eq!(libc::WEXITSTATUS(status), crate::exit::BAD_IMAGE, "{said}");
        assert!(said.contains("image file img shrank while it was read") && said.lines().count() == 1, "{said}");
        drop(m);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Pages a fork left shared, read without pinning, stay shared in the process read; read
    /// with process_vm_readv, they become its own copies.
    #[test]
    fn shared_pages_are_read_without_unsharing_them() {
        const LEN: usize = 4 * 4096;
        // SAFETY: a fresh private anonymous mapping of ours.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as *mut u8;
        assert_ne!(p as *mut libc::c_void, libc::MAP_FAILED);
        // SAFETY: the mapping is ours and LEN long.
        unsafe { std::ptr::write_bytes(p, 7, LEN) };
        // SAFETY: the child only pauses (async-signal-safe) until it is killed.
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                // SAFETY: pause takes nothing.
                unsafe { libc::pause() };
            }
        }
        let at = p as u64;
        let exclusive = || {
            let f = std::fs::File::open(format!("/proc/{child}/pagemap")).unwrap();
            let mut e = [0u8; 8];
            f.read_exact_at(&mut e, at / 4096 * 8).unwrap();
            u64::from_le_bytes(e) & (1 << 56) != 0
        };
        let mut pm = crate::ptrace::pagemap::Pagemap::open(child).unwrap();
        let shared = pm.shared_anon(at, at + LEN as u64).unwrap();
        let mut buf = vec![0u8; LEN];
        let r = read_runs_unpinned(child, &[(at, LEN)], &mut buf, &shared);
        let after_unpinned = exclusive();
        read_runs(child, &[(at, LEN)], &mut buf).unwrap();
        let after_pinned = exclusive();
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
            libc::munmap(p as *mut libc::c_void, LEN);
        }
        r.unwrap();
        assert_eq!(shared, vec![(at, at + LEN as u64)]);
        assert!(buf.iter().all(|&b| b == 7));
        assert!(!after_unpinned, "read through /proc/PID/mem, the page is no longer shared");
        assert!(after_pinned, "process_vm_readv left the page shared: the test shows nothing");
    }

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
