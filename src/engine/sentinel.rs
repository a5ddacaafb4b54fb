//! A process of ours that kills the processes of a lazy restore (rstrt --lazy, the destination
//! of migrate --post-copy) if we die before every page is in: their pages not yet in would
//! otherwise read as zeros once our userfaultfds close, and a post-copy's source, told the
//! transfer broke, runs on beside them.
//!
//! It is a child of ours that holds a pidfd of each restored process and the read end of a
//! pipe whose write end only we hold: when we die, by any signal, the pipe reads empty and it
//! kills them, and their descendants, then exits. Told that every page is in
//! ([`Sentinel::stand_down`]), it exits leaving them be. It holds nothing else of ours (no
//! connection, image or userfaultfd), it leads a session of its own (a kill of our process
//! group does not reach it), and it ignores the signals a terminal or a service manager
//! sends, so that it outlives us when they end us.

use crate::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What the pipe says when every page is in.
const DONE: u8 = b'd';

pub struct Sentinel {
    /// The write end of its pipe; closed unwritten, it kills.
    pipe: Option<OwnedFd>,
    pid: i32,
}

impl Sentinel {
    /// Starts one for processes `pids` (and what they fork meanwhile).
    pub fn start(pids: &[i32]) -> Result<Sentinel> {
        // (One gone already needs no killing.)
        let held: Vec<(i32, OwnedFd)> =
            pids.iter().filter_map(|&p| crate::ptrace::procfs::pidfd(p).ok().map(|f| (p, f))).collect();
        let mut ends = [0i32; 2];
        // SAFETY: pipe2 writes two fds into `ends`, ours.
        if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(Error::io("pipe2 (lazy restore's sentinel)", std::io::Error::last_os_error()));
        }
        // SAFETY: two fresh fds nobody else owns.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        // Every fd it keeps, sorted: the rest are closed in it.
        let watched: Vec<(i32, i32)> = held.iter().map(|(p, f)| (*p, f.as_raw_fd())).collect();
        let mut keep: Vec<i32> = watched.iter().map(|w| w.1).chain([rd.as_raw_fd()]).collect();
        keep.sort_unstable();
        // SAFETY: the child runs `watch` only, which uses raw syscalls and, to find what the
        // processes forked, reads /proc with the allocator (glibc's fork leaves it usable in
        // the child); it never returns.
        match unsafe { libc::fork() } {
            -1 => Err(Error::io("fork (lazy restore's sentinel)", std::io::Error::last_os_error())),
            0 => watch(rd.as_raw_fd(), &keep, &watched),
            pid => Ok(Sentinel { pipe: Some(wr), pid }),
        }
    }

    /// Every page is in: it exits, leaving the processes be.
    pub fn stand_down(mut self) {
        if let Some(p) = self.pipe.take() {
            // SAFETY: writes one byte of ours to our pipe.
            unsafe { libc::write(p.as_raw_fd(), (&DONE as *const u8).cast(), 1) };
        }
    }
}

impl Drop for Sentinel {
    /// Unless stood down, it kills the processes; either way it is waited for.
    fn drop(&mut self) {
        drop(self.pipe.take());
        let mut status = 0;
        // SAFETY: waits for our own child.
        while unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) } < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

/// The sentinel's life: waits on `rd` until it reads DONE (exits) or the end (kills the
/// processes of `watched`, pid and pidfd each).
fn watch(rd: i32, keep: &[i32], watched: &[(i32, i32)]) -> ! {
    // SAFETY: raw syscalls on our own fd table, signal actions and name; integer arguments
    // and buffers of ours.
    unsafe {
        let mut from = 0u32;
        for &k in keep {
            if k as u32 > from {
                libc::syscall(libc::SYS_close_range, from, k as u32 - 1, 0u32);
            }
            from = k as u32 + 1;
        }
        libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32);
        // A session of its own: a kill of our process group (kill -9 -PGID, as a supervisor
        // ends a job) does not end it with us.
        libc::setsid();
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGPIPE, libc::SIGTSTP] {
            libc::signal(s, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_NAME, c"crs-sentinel".as_ptr());
        let mut b = 0u8;
        loop {
            match libc::read(rd, (&mut b as *mut u8).cast(), 1) {
                1 if b == DONE => libc::_exit(0),
                -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
                _ => break,
            }
        }
        // First what they forked (found through their pids while each is still theirs: a
        // pidfd that still signals), then them.
        let mut doomed: Vec<OwnedFd> = Vec::new();
        for &(pid, fd) in watched {
            if libc::syscall(libc::SYS_pidfd_send_signal, fd, 0, 0usize, 0u32) == 0 {
                for d in crate::res::tree::walk(pid).into_iter().skip(1) {
                    doomed.extend(crate::ptrace::procfs::pidfd(d).ok());
                }
            }
        }
        for fd in watched.iter().map(|w| w.1).chain(doomed.iter().map(|f| f.as_raw_fd())) {
            libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, 0usize, 0u32);
        }
        libc::_exit(0)
    }
}
