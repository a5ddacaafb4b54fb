//! A restore in a pid namespace of its own (`rstrt --pidns`), where every pid is free: the
//! restored process and each of its threads get their ids back even while the original still
//! runs (a leave-running copy) or its pid is someone else's by now.
//!
//! rstrt unshares a pid namespace and forks its first process, the namespace's init (pid 1).
//! That init mounts a /proc of the namespace in a mount namespace of its own (a slave of
//! rstrt's: mounts made outside still show inside, none made inside leak out), restores the
//! image as its child, reaps whatever the namespace orphans, and ends when the restored
//! process ends, with its status (the namespace and all in it end with it). rstrt, outside,
//! learns through a pipe when the process runs (then names it by its pid outside the
//! namespace, which is what a user outside can signal) and how it ended.

use crate::error::{Error, Result};
use nix::errno::Errno;
use std::io::{BufRead, BufReader, Write};

/// Which side of the fork we are on.
pub enum Side {
    /// The namespace's init: restore, then `Init::ready`, wait, `Init::ended`.
    Init(Init),
    /// rstrt, outside: the init's pid and the pipe it reports on.
    Outside(Outside),
}

pub struct Init {
    report: std::fs::File,
}

pub struct Outside {
    pub init: i32,
    report: BufReader<std::fs::File>,
}

/// How the restored process ended, as the init reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    Killed(i32),
}

/// Unshares a pid namespace and forks its init; an ordinary user first enters a user
/// namespace of its own ([`own_user_ns`]). Must be called while rstrt has a single thread.
pub fn enter() -> Result<Side> {
    if !crate::res::creds::is_root() {
        own_user_ns()?;
    }
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(match Errno::last() {
            Errno::EPERM => Error::Permission("--pidns needs CAP_SYS_ADMIN (run rstrt as root)".into()),
            e => Error::sys("unshare(CLONE_NEWPID)", "rstrt", e),
        });
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", "--pidns", e))?;
    // SAFETY: rstrt has one thread here (the caller's contract), so the child may go on
    // running Rust code: it is the process that restores, as rstrt itself would.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(Error::sys("fork", "the pid namespace's init", e)),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(w);
            Ok(Side::Outside(Outside { init: child.as_raw(), report: BufReader::new(std::fs::File::from(r)) }))
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(r);
            // Dies with rstrt. (Its parent is outside the namespace, so getppid() says 0 and
            // cannot tell whether rstrt died before this: then the report pipe has no reader,
            // and the init's first report kills it with SIGPIPE.)
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            own_proc()?;
            Ok(Side::Init(Init { report: std::fs::File::from(w) }))
        }
    }
}

/// For an ordinary user: a user namespace of its own, in which it has the capabilities the
/// pid and mount namespaces and the restore need (to choose pids, to set the exe link), over
/// those namespaces only. Only its own uid and gid are mapped, as themselves: the restored
/// process has its ids, sees other users' files as owned by the overflow ids (nobody), and
/// cannot change its supplementary groups (setgroups is denied there).
fn own_user_ns() -> Result<()> {
    let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        let e = Errno::last();
        return Err(Error::Permission(format!(
            "--pidns as an ordinary user needs a user namespace, which this system refuses (unshare(CLONE_NEWUSER): {}; see user.max_user_namespaces, kernel.unprivileged_userns_clone, or AppArmor's userns restriction): run rstrt as root",
            e.desc()
        )));
    }
    for (file, text) in [
        ("setgroups", "deny".to_string()),
        ("uid_map", format!("{uid} {uid} 1")),
        ("gid_map", format!("{gid} {gid} 1")),
    ] {
        let path = format!("/proc/self/{file}");
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// In the init: a mount namespace of our own with a /proc of the new pid namespace.
fn own_proc() -> Result<()> {
    // SAFETY: unshare takes flags only; the mount arguments are NUL-terminated literals.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(Error::sys("unshare(CLONE_NEWNS)", "--pidns", Errno::last()));
        }
        let none = std::ptr::null();
        if libc::mount(none, c"/".as_ptr(), none, libc::MS_REC | libc::MS_SLAVE, none as _) != 0 {
            return Err(Error::sys("mount(MS_SLAVE)", "/", Errno::last()));
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, none as _) != 0 {
            return Err(Error::sys("mount", "/proc", Errno::last()));
        }
    }
    Ok(())
}

impl Init {
    /// The restored process runs. With `detach`, the init leaves rstrt's session and stdio
    /// (rstrt outside exits now) and no longer dies with rstrt.
    pub fn ready(&mut self, detach: bool) -> Result<()> {
        // Detached, no longer bound to rstrt before it hears we are ready (and may exit).
        if detach {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
        }
        writeln!(self.report, "ready").map_err(|e| Error::io("--pidns report", e))?;
        if detach {
            // SAFETY: plain syscalls; the fds replaced are our own stdio.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                    libc::close(null);
                }
            }
        }
        Ok(())
    }

    /// Reaps every process of the namespace until `pid` (the restored one) ends; reports how
    /// and returns it. The init never dies of a signal (pid 1 of its namespace ignores them).
    pub fn wait(mut self, pid: i32) -> End {
        let end = loop {
            let mut status = 0;
            // SAFETY: waitpid writes one int.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
            if r < 0 {
                if Errno::last() == Errno::EINTR {
                    continue;
                }
                break End::Exited(crate::exit::FAILURE);
            }
            if r != pid {
                continue;
            }
            if libc::WIFEXITED(status) {
                break End::Exited(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                break End::Killed(libc::WTERMSIG(status));
            }
        };
        let line = match end {
            End::Exited(c) => format!("exited {c}"),
            End::Killed(s) => format!("killed {s}"),
        };
        let _ = writeln!(self.report, "{line}");
        end
    }
}

impl Outside {
    /// Waits for the init's word that the process runs; returns its pid outside the
    /// namespace (0 when it has ended already: the init says how next). None: the restore
    /// failed (the init said why on stderr and exits).
    pub fn ready(&mut self) -> Result<Option<i32>> {
        let mut line = String::new();
        self.report.read_line(&mut line).map_err(|e| Error::io("--pidns report", e))?;
        if line.trim() != "ready" {
            return Ok(None);
        }
        // The init's only child is the restored process.
        let path = format!("/proc/{0}/task/{0}/children", self.init);
        let kids = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        // None there: it ended (and the init reaped it) before we looked.
        Ok(Some(kids.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0)))
    }

    /// How the restored process ended, once the init has said it (None: the init ended
    /// without saying, with `status`).
    pub fn end(&mut self) -> Option<End> {
        let mut line = String::new();
        self.report.read_line(&mut line).ok()?;
        let (what, n) = line.trim().split_once(' ')?;
        let n = n.parse().ok()?;
        match what {
            "exited" => Some(End::Exited(n)),
            "killed" => Some(End::Killed(n)),
            _ => None,
        }
    }
}
