//! Typed remote syscalls: one method per syscall the resources run inside a tracee, taking
//! typed arguments (a [`RemoteAddr`] for an address there, a `&str` for a path, which goes
//! through the scratch area) and naming the syscall and its object when it fails. Call sites
//! never build `[u64; 6]` arrays; those live here, in `remote` and in `calls` (lists of them).

use super::{Ctl, RemoteAddr};
use crate::crf::Enc;
use crate::error::{Error, Result};

/// A capget/capset header: _LINUX_CAPABILITY_VERSION_3, pid 0 (the caller).
fn cap_header() -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&0x2008_0522u32.to_le_bytes());
    h
}

/// Scratch offset for a path argument (structs go at 0, paths after them).
const PATH_AT: usize = 1024;

impl Ctl<'_> {
    fn call(&mut self, nr: i64, args: [u64; 6], call: &str, what: &str) -> Result<u64> {
        self.r.call(nr, args, call, what)
    }

    /// mmap; `fd` None maps anonymous memory.
    #[allow(clippy::too_many_arguments)]
    pub fn mmap(
        &mut self,
        at: RemoteAddr,
        len: u64,
        prot: i32,
        flags: i32,
        fd: Option<i32>,
        off: u64,
        what: &str,
    ) -> Result<RemoteAddr> {
        let fd = fd.map_or(u64::MAX, |f| f as u64);
        self.call(libc::SYS_mmap, [at.0, len, prot as u64, flags as u64, fd, off], "mmap", what).map(RemoteAddr)
    }

    /// shmat: attaches System V shared memory segment `id` at exactly `at`.
    pub fn shmat(&mut self, id: i32, at: RemoteAddr, flags: i32, what: &str) -> Result<RemoteAddr> {
        self.call(libc::SYS_shmat, [id as u64, at.0, flags as u64, 0, 0, 0], "shmat", what).map(RemoteAddr)
    }

    pub fn munmap(&mut self, at: RemoteAddr, len: u64, what: &str) -> Result<()> {
        self.call(libc::SYS_munmap, [at.0, len, 0, 0, 0, 0], "munmap", what).map(drop)
    }

    /// munmap as the last remote syscall of a checkpoint (see `Remote::call_last`).
    pub fn munmap_last(&mut self, at: RemoteAddr, len: u64, what: &str) -> Result<()> {
        self.r.call_last(libc::SYS_munmap, [at.0, len, 0, 0, 0, 0], "munmap", what).map(drop)
    }

    /// munmap as the very last remote syscall of a restore, which unmaps the gadget itself:
    /// the tracee stays at the syscall's exit and never returns there. Raw result.
    pub fn munmap_and_stop(&mut self, at: RemoteAddr, len: u64) -> Result<i64> {
        self.r.last(libc::SYS_munmap, [at.0, len, 0, 0, 0, 0])
    }

    pub fn mprotect(&mut self, at: RemoteAddr, len: u64, prot: u32) -> Result<()> {
        let what = format!("{at}-{:#x}", at.0 + len);
        self.call(libc::SYS_mprotect, [at.0, len, prot as u64, 0, 0, 0], "mprotect", &what).map(drop)
    }

    /// Moves a mapping to exactly `to` (MREMAP_MAYMOVE | MREMAP_FIXED).
    pub fn mremap_to(&mut self, from: RemoteAddr, len: u64, to: RemoteAddr, what: &str) -> Result<()> {
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        let what = format!("{what} {from} -> {to}");
        self.call(libc::SYS_mremap, [from.0, len, len, flags, to.0, 0], "mremap", &what).map(drop)
    }

    /// openat(AT_FDCWD, path, flags); returns the fd.
    pub fn open(&mut self, path: &str, flags: i32, what: &str) -> Result<i32> {
        let p = self.scratch.put_cstr(self.pid(), PATH_AT, path)?;
        let at = libc::AT_FDCWD as i64 as u64;
        self.call(libc::SYS_openat, [at, p.0, flags as u32 as u64, 0, 0, 0], "openat", what).map(|fd| fd as i32)
    }

    pub fn close(&mut self, fd: i32, what: &str) -> Result<()> {
        self.call(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0], "close", what).map(drop)
    }

    pub fn dup3(&mut self, old: i32, new: i32, flags: i32, what: &str) -> Result<()> {
        self.call(libc::SYS_dup3, [old as u64, new as u64, flags as u64, 0, 0, 0], "dup3", what).map(drop)
    }

    pub fn lseek_set(&mut self, fd: i32, pos: u64, what: &str) -> Result<()> {
        self.call(libc::SYS_lseek, [fd as u64, pos, libc::SEEK_SET as u64, 0, 0, 0], "lseek", what).map(drop)
    }

    pub fn fcntl(&mut self, fd: i32, cmd: i32, arg: u64, call: &str, what: &str) -> Result<u64> {
        self.call(libc::SYS_fcntl, [fd as u64, cmd as u64, arg, 0, 0, 0], call, what)
    }

    pub fn chdir(&mut self, path: &str) -> Result<()> {
        let p = self.scratch.put_cstr(self.pid(), PATH_AT, path)?;
        self.call(libc::SYS_chdir, [p.0, 0, 0, 0, 0, 0], "chdir", path).map(drop)
    }

    pub fn setsid(&mut self) -> Result<()> {
        self.call(libc::SYS_setsid, [0; 6], "setsid", "detach").map(drop)
    }

    /// setpgid(0, pgid): the process joins (or, with its own pid, makes) group `pgid`.
    pub fn setpgid(&mut self, pgid: i32, what: &str) -> Result<()> {
        self.call(libc::SYS_setpgid, [0, pgid as u64, 0, 0, 0, 0], "setpgid", what).map(drop)
    }

    pub fn umask(&mut self, mask: u32) -> Result<()> {
        self.call(libc::SYS_umask, [mask as u64, 0, 0, 0, 0, 0], "umask", &format!("{mask:o}")).map(drop)
    }

    /// prctl(option, args...); `call` names the option in errors ("prctl(PR_SET_NAME)").
    pub fn prctl(&mut self, option: i32, args: [u64; 4], call: &str, what: &str) -> Result<u64> {
        self.call(libc::SYS_prctl, [option as u64, args[0], args[1], args[2], args[3], 0], call, what)
    }

    /// prctl(option, args...) with its raw result (negative errno), for callers that tell
    /// errors apart.
    pub fn prctl_raw(&mut self, option: i32, args: [u64; 4]) -> Result<i64> {
        self.r.raw(libc::SYS_prctl, [option as u64, args[0], args[1], args[2], args[3], 0])
    }

    /// rt_sigaction(sig, new, old) with the kernel's 8-byte mask.
    pub fn rt_sigaction(&mut self, sig: usize, new: Option<RemoteAddr>, old: Option<RemoteAddr>) -> Result<()> {
        let (n, o) = (new.map_or(0, |a| a.0), old.map_or(0, |a| a.0));
        self.call(libc::SYS_rt_sigaction, [sig as u64, n, o, 8, 0, 0], "rt_sigaction", &format!("signal {sig}"))
            .map(drop)
    }

    pub fn sigaltstack(&mut self, new: Option<RemoteAddr>, old: Option<RemoteAddr>, what: &str) -> Result<()> {
        let (n, o) = (new.map_or(0, |a| a.0), old.map_or(0, |a| a.0));
        self.call(libc::SYS_sigaltstack, [n, o, 0, 0, 0, 0], "sigaltstack", what).map(drop)
    }

    /// Queues signal `sig` with the siginfo at `info` to the tracee's own process `pid`:
    /// process-wide, or to its thread `tid` (which must be the tracee, for a siginfo of the
    /// kernel's or of tgkill).
    pub fn queue_signal(&mut self, pid: i32, sig: i32, info: RemoteAddr, tid: Option<i32>) -> Result<()> {
        let pid = pid as u64;
        let what = format!("signal {sig}");
        match tid {
            None => self.call(libc::SYS_rt_sigqueueinfo, [pid, sig as u64, info.0, 0, 0, 0], "rt_sigqueueinfo", &what),
            Some(t) => self.call(
                libc::SYS_rt_tgsigqueueinfo,
                [pid, t as u64, sig as u64, info.0, 0, 0],
                "rt_tgsigqueueinfo",
                &what,
            ),
        }
        .map(drop)
    }

    /// capget for the tracee itself, as the kernel lays it out: effective, permitted and
    /// inheritable of capabilities 0-31, then the same of 32-63.
    pub fn capget(&mut self) -> Result<[u32; 6]> {
        let pid = self.pid();
        let hdr = self.scratch.put(pid, 0, &cap_header())?;
        let data = self.scratch.addr.offset(64);
        self.call(libc::SYS_capget, [hdr.0, data.0, 0, 0, 0, 0], "capget", "its capabilities")?;
        let b = self.scratch.get(pid, 64, 24)?;
        let w = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        Ok([w(0), w(1), w(2), w(3), w(4), w(5)])
    }

    /// capset for the tracee itself, with the data as capget returns it.
    pub fn capset(&mut self, data: [u32; 6]) -> Result<()> {
        let pid = self.pid();
        let hdr = self.scratch.put(pid, 0, &cap_header())?;
        let mut e = Enc::new();
        for v in data {
            e.u32(v);
        }
        let at = self.scratch.put(pid, 64, e.as_slice())?;
        self.call(libc::SYS_capset, [hdr.0, at.0, 0, 0, 0, 0], "capset", "its capabilities").map(drop)
    }

    /// prlimit64(0, resource, new, NULL) for the tracee itself, with the new struct rlimit64
    /// at `new`; the raw result (negative errno), for callers that tell errors apart.
    pub fn prlimit_raw(&mut self, resource: u32, new: RemoteAddr) -> Result<i64> {
        self.r.raw(libc::SYS_prlimit64, [0, resource as u64, new.0, 0, 0, 0])
    }

    /// rseq(area, len, flags, sig).
    pub fn rseq(&mut self, area: RemoteAddr, len: u32, flags: u64, sig: u32, call: &str) -> Result<()> {
        self.call(libc::SYS_rseq, [area.0, len as u64, flags, sig as u64, 0, 0], call, &format!("area {area}"))
            .map(drop)
    }

    /// A syscall's raw result (negative errno), for callers that tell errors apart; `nr` is
    /// one of the typed wrappers' below, never a call site's literal.
    fn raw(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.r.raw(nr, args)
    }

    /// membarrier(cmd, 0); raw result (a registration mask for MEMBARRIER_CMD_GET_REGISTRATIONS).
    pub fn membarrier_raw(&mut self, cmd: u64) -> Result<i64> {
        self.raw(libc::SYS_membarrier, [cmd, 0, 0, 0, 0, 0])
    }

    /// timer_create(clock, sigevent, &id) with `id` preset (the id asked for, where the kernel
    /// takes requests); raw result: the new timer's id, or a negative errno.
    pub fn timer_create_raw(&mut self, clock: i32, sigevent: &[u8; 64], id: i32) -> Result<i64> {
        let pid = self.pid();
        let sev = self.scratch.put(pid, 0, sigevent)?;
        let out = self.scratch.put(pid, 64, &id.to_le_bytes())?;
        let r = self.raw(libc::SYS_timer_create, [clock as i64 as u64, sev.0, out.0, 0, 0, 0])?;
        if r < 0 {
            return Ok(r);
        }
        let b = self.scratch.get(pid, 64, 4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
    }

    pub fn timer_delete(&mut self, id: i32, what: &str) -> Result<()> {
        self.call(libc::SYS_timer_delete, [id as u64, 0, 0, 0, 0, 0], "timer_delete", what).map(drop)
    }

    /// timer_settime(id, 0, {interval, value}) with each as (seconds, nanoseconds).
    pub fn timer_settime(&mut self, id: i32, t: [u64; 4], what: &str) -> Result<()> {
        let mut e = Enc::new();
        for v in t {
            e.u64(v);
        }
        let at = self.scratch.put(self.pid(), 0, e.as_slice())?;
        self.call(libc::SYS_timer_settime, [id as u64, 0, at.0, 0, 0, 0], "timer_settime", what).map(drop)
    }

    /// setitimer(which, {interval, value}) with each as (seconds, microseconds).
    pub fn setitimer(&mut self, which: i32, t: [u64; 4]) -> Result<()> {
        let mut e = Enc::new();
        for v in t {
            e.u64(v);
        }
        let at = self.scratch.put(self.pid(), 0, e.as_slice())?;
        self.call(libc::SYS_setitimer, [which as u64, at.0, 0, 0, 0, 0], "setitimer", &format!("timer {which}"))
            .map(drop)
    }

    /// clone3 with the struct clone_args `args` (which may point into the scratch area past
    /// 128 bytes, where `tail` goes); raw result: the new task's id, or a negative errno.
    pub fn clone3_raw(&mut self, args: &[u8], tail: &[u8]) -> Result<i64> {
        let pid = self.pid();
        let at = self.scratch.put(pid, 0, args)?;
        self.scratch.put(pid, 128, tail)?;
        self.raw(libc::SYS_clone3, [at.0, args.len() as u64, 0, 0, 0, 0])
    }

    /// userfaultfd(flags): a new userfaultfd for the tracee's memory.
    pub fn userfaultfd(&mut self, flags: i32) -> Result<i32> {
        self.call(libc::SYS_userfaultfd, [flags as u64, 0, 0, 0, 0, 0], "userfaultfd", "for its memory")
            .map(|fd| fd as i32)
    }

    /// timerfd_settime(fd, flags, {interval, value}, NULL), times in nanoseconds; raw result.
    pub fn timerfd_settime_raw(&mut self, fd: i32, flags: u32, interval: u64, value: u64) -> Result<i64> {
        let mut e = Enc::new();
        for ns in [interval, value] {
            e.u64(ns / 1_000_000_000).u64(ns % 1_000_000_000);
        }
        let at = self.scratch.put(self.pid(), 0, e.as_slice())?;
        self.raw(libc::SYS_timerfd_settime, [fd as u64, flags as u64, at.0, 0, 0, 0])
    }

    /// ioctl(fd, request, pointer to `arg`); raw result.
    pub fn ioctl_in_raw(&mut self, fd: i32, request: u64, arg: &[u8]) -> Result<i64> {
        let at = self.scratch.put(self.pid(), 0, arg)?;
        self.raw(libc::SYS_ioctl, [fd as u64, request, at.0, 0, 0, 0])
    }

    /// ioctl(fd, FIONREAD): the bytes waiting to be read.
    pub fn fionread(&mut self, fd: i32, what: &str) -> Result<u32> {
        let at = self.scratch.addr;
        self.call(libc::SYS_ioctl, [fd as u64, libc::FIONREAD, at.0, 0, 0, 0], "ioctl(FIONREAD)", what)?;
        let b = self.scratch.get(self.pid(), 0, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// read(fd, scratch, len) for a short read whose bytes are thrown away; raw result.
    pub fn read_discard_raw(&mut self, fd: i32, len: u64) -> Result<i64> {
        let at = self.scratch.addr;
        self.raw(libc::SYS_read, [fd as u64, at.0, len.min(self.scratch.len as u64), 0, 0, 0])
    }

    /// inotify_add_watch(fd, path, mask); raw result (the watch descriptor).
    pub fn inotify_add_watch_raw(&mut self, fd: i32, path: &str, mask: u32) -> Result<i64> {
        let p = self.scratch.put_cstr(self.pid(), PATH_AT, path)?;
        self.raw(libc::SYS_inotify_add_watch, [fd as u64, p.0, mask as u64, 0, 0, 0])
    }

    pub fn inotify_rm_watch(&mut self, fd: i32, wd: i32, what: &str) -> Result<()> {
        self.call(libc::SYS_inotify_rm_watch, [fd as u64, wd as u64, 0, 0, 0, 0], "inotify_rm_watch", what).map(drop)
    }

    /// pipe2(O_CLOEXEC): (read end, write end).
    pub fn pipe(&mut self, what: &str) -> Result<(i32, i32)> {
        let out = self.scratch.addr;
        self.call(libc::SYS_pipe2, [out.0, libc::O_CLOEXEC as u64, 0, 0, 0, 0], "pipe2", what)?;
        let b = self.scratch.get(self.pid(), 0, 8)?;
        Ok(super::calls::fd_pair(&b))
    }

    /// socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC): both ends.
    /// seccomp(SECCOMP_SET_MODE_FILTER, flags, prog): installs the filter whose sock_fprog
    /// is at `prog`; raw result (with TSYNC, a positive one is a thread that could not).
    pub fn seccomp_filter_raw(&mut self, flags: u32, prog: RemoteAddr) -> Result<i64> {
        const SECCOMP_SET_MODE_FILTER: u64 = 1;
        self.raw(libc::SYS_seccomp, [SECCOMP_SET_MODE_FILTER, flags as u64, prog.0, 0, 0, 0])
    }

    /// socket(AF_UNIX, ty | SOCK_CLOEXEC, 0): a new unix socket.
    pub fn unix_socket(&mut self, ty: u32, what: &str) -> Result<i32> {
        let ty = (ty as i32 | libc::SOCK_CLOEXEC) as u64;
        self.call(libc::SYS_socket, [libc::AF_UNIX as u64, ty, 0, 0, 0, 0], "socket", what).map(|fd| fd as i32)
    }

    /// connect(2) of unix socket `fd` to `name` (sun_path as bound).
    pub fn unix_connect(&mut self, fd: i32, name: &[u8], what: &str) -> Result<()> {
        let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        if name.is_empty() || name.len() > 108 {
            return Err(Error::Refused(format!("{what}: a unix socket name of {} bytes", name.len())));
        }
        a.extend_from_slice(name);
        let p = self.scratch.put(self.pid(), PATH_AT, &a)?;
        self.call(libc::SYS_connect, [fd as u64, p.0, a.len() as u64, 0, 0, 0], "connect", what).map(drop)
    }

    /// socket(2) of `family`, `ty` (close-on-exec) and `proto`.
    pub fn socket(&mut self, family: i32, ty: i32, proto: i32, what: &str) -> Result<i32> {
        let ty = (ty | libc::SOCK_CLOEXEC) as u64;
        self.call(libc::SYS_socket, [family as u64, ty, proto as u64, 0, 0, 0], "socket", what).map(|fd| fd as i32)
    }

    /// setsockopt(2) of one int on `fd`.
    pub fn setsockopt_int(&mut self, fd: i32, level: i32, name: i32, v: i32, what: &str) -> Result<()> {
        let p = self.scratch.put(self.pid(), PATH_AT, &v.to_ne_bytes())?;
        self.call(libc::SYS_setsockopt, [fd as u64, level as u64, name as u64, p.0, 4, 0], "setsockopt", what).map(drop)
    }

    /// bind(2) of `fd` to the sockaddr `addr` (its bytes).
    pub fn bind_raw(&mut self, fd: i32, addr: &[u8], what: &str) -> Result<()> {
        let p = self.scratch.put(self.pid(), PATH_AT, addr)?;
        self.call(libc::SYS_bind, [fd as u64, p.0, addr.len() as u64, 0, 0, 0], "bind", what).map(drop)
    }

    pub fn socketpair(&mut self, what: &str) -> Result<(i32, i32)> {
        let out = self.scratch.addr;
        let ty = (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64;
        self.call(libc::SYS_socketpair, [libc::AF_UNIX as u64, ty, 0, out.0, 0, 0], "socketpair", what)?;
        let b = self.scratch.get(self.pid(), 0, 8)?;
        Ok(super::calls::fd_pair(&b))
    }

    /// write(fd, bytes) of a short buffer; raw result.
    pub fn write_raw(&mut self, fd: i32, bytes: &[u8]) -> Result<i64> {
        let at = self.scratch.put(self.pid(), 0, bytes)?;
        self.raw(libc::SYS_write, [fd as u64, at.0, bytes.len() as u64, 0, 0, 0])
    }
}
