//! The processes a restore creates, before anything of the image is in them. The image's
//! first process is a clone3 of rstrt (spawn.rs); every other member is forked by its restored
//! parent (a clone3 run in it, with the member's pid when that can be had), so that parents,
//! sessions and process groups are the image's before any process drops privileges or holds
//! anything of the image. A session leader calls setsid before it forks its children, who
//! inherit the session; groups are joined once every member exists. A zombie is forked like
//! the others and made to exit with its status, for its parent to reap after the restore.
//! [`Family`] owns them all: until it is disarmed, dropping it kills every one.

use super::spawn::{ChildGuard, spawn_child};
use crate::crf::PAGE_SIZE;
use crate::error::{Error, Result};
use crate::ptrace::arch;
use crate::ptrace::procfs;
use crate::ptrace::remote::Remote;
use crate::ptrace::tracee::{Caught, Stop, Tracee, ptrace_raw};
use crate::ptrace::{Ctl, RemoteAddr, Scratch};
use crate::res::tree::Member;
use nix::errno::Errno;

/// A process of the image being restored: traced and stopped; nothing of the image runs yet.
pub struct Proc {
    pub t: Tracee,
    /// Its pid in the image.
    pub original: i32,
    /// Its other threads, once created.
    pub others: Vec<Tracee>,
    /// Signals that came while we drove it, delivered once it runs.
    pub held: Vec<Caught>,
    /// Why it did not get its pid, when it did not.
    pub pid_note: Option<String>,
    /// A page of its own for the arguments of the clone3 that forks its children.
    scratch: Option<RemoteAddr>,
    /// A `syscall` instruction in it: our own while it is a copy of rstrt, one in its vdso once
    /// it executed the image's program (see spawn::Exec).
    pub gadget: u64,
    /// It executed the image's program: /proc/PID/exe names it.
    pub executed: bool,
    /// Its image says it was stopped: it is stopped again as it is let go.
    pub stop: bool,
}

/// Every process created for an image, the first one first. Dropped while armed, it kills
/// them all, before any can run: a failed restore leaves nothing behind.
pub struct Family {
    pub procs: Vec<Proc>,
    pub armed: bool,
}

impl Drop for Family {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Every thread each has by now (those a restore made at its step 3b too), listed
        // before the kill: a leader is reported dead only once its other threads are, and
        // those we trace are ours to reap.
        let threads: Vec<Vec<i32>> = self.procs.iter().map(|p| procfs::tasks(p.t.pid).unwrap_or_default()).collect();
        for p in &self.procs {
            let _ = p.t.kill(nix::sys::signal::Signal::SIGKILL);
        }
        // As their tracer (and the first one's parent) we see each die.
        for (p, tids) in self.procs.iter().zip(threads) {
            for o in &p.others {
                while o.wait().is_ok() {}
            }
            for tid in tids.into_iter().filter(|&t| t != p.t.pid) {
                let mut status = 0;
                // SAFETY: waitpid writes one int; a thread not ours to wait for is ECHILD.
                while unsafe { libc::waitpid(tid, &mut status, libc::__WALL) } == tid || Errno::last() == Errno::EINTR {
                }
            }
            while p.t.wait().is_ok() {}
        }
    }
}

/// A remote-syscall driver for `p` as it was created (a copy of rstrt: our own `syscall`
/// instruction serves as the gadget), stopping at syscall entry and exit.
fn ctl(p: &Proc) -> Result<Ctl<'_>> {
    let scratch = Scratch { addr: p.scratch.unwrap_or(RemoteAddr(0)), len: PAGE_SIZE, exec: false };
    let mut c = Ctl { r: Remote::new(&p.t, p.gadget, p.t.regs()?), scratch };
    c.r.stepping = false;
    Ok(c)
}

/// Runs `f` in `p`, keeping the signals that come meanwhile.
fn with<T>(p: &mut Proc, f: impl FnOnce(&mut Ctl) -> Result<T>) -> Result<T> {
    let mut c = ctl(p)?;
    let r = f(&mut c);
    let held = std::mem::take(&mut c.r.held);
    drop(c);
    p.held.extend(held);
    r
}

/// A pty made again that is the controlling terminal of a session of the tree.
pub struct Ctty {
    /// The image's pid of the session's leader.
    pub session: i32,
    /// The slave's path here.
    pub path: String,
    /// The session's foreground group (the image's pid; 0: none).
    pub foreground: i32,
}

/// Creates the processes of `members` (the image's tree, parents first; one member for an
/// image of one process). The first is a child of ours; `own_session` makes it a session
/// leader (it was one, or it is to be detached). With `require_pid`, a pid that cannot be had
/// fails the restore; otherwise it is said in `notes`. A session leader of `ctty` takes its
/// terminal as soon as it leads its session, before it forks: its children inherit it.
/// With `exec`, the first process executes the image's program before it stops.
pub fn create(
    members: &[Member],
    require_pid: bool,
    own_session: bool,
    ctty: &[Ctty],
    exec: Option<&super::spawn::Exec>,
    notes: &mut Vec<String>,
) -> Result<Family> {
    let root = members.first().ok_or_else(|| Error::Refused("the image holds no process".into()))?;
    let (pid, pid_note) = spawn_child(root.pid, require_pid, exec)?;
    let mut early = ChildGuard { pid, armed: true };
    let (t, executed) = Tracee::adopt_child_exec(pid)?;
    let gadget =
        if executed { super::checkpoint::find_gadget(pid, &procfs::read_maps(pid)?)? } else { arch::own_gadget() };
    early.armed = false;
    let first = Proc {
        t,
        original: root.pid,
        others: Vec::new(),
        held: Vec::new(),
        pid_note,
        scratch: None,
        gadget,
        executed,
        stop: false,
    };
    let mut fam = Family { procs: vec![first], armed: true };
    if own_session {
        with(&mut fam.procs[0], |c| c.setsid())?;
        take_terminal(&mut fam.procs[0], ctty)?;
    }
    for m in &members[1..] {
        let pi = fam.procs.iter().position(|p| p.original == m.ppid).ok_or_else(|| {
            Error::Refused(format!("the image's pid {} has no parent {} before it: it is damaged", m.pid, m.ppid))
        })?;
        let mut child = fork(&mut fam.procs[pi], m.pid, require_pid)?;
        if let Some(n) = &child.pid_note {
            notes.push(format!("pid {} runs as pid {}: {n}", m.pid, child.t.pid));
        }
        if m.sid == m.pid {
            let r = with(&mut child, |c| c.setsid()).and_then(|_| take_terminal(&mut child, ctty));
            fam.procs.push(child);
            r?;
        } else {
            fam.procs.push(child);
        }
    }
    groups(&mut fam, members)?;
    foregrounds(&mut fam, members, ctty)?;
    // The zombies last: each exits with its status, now that every group it led was joined.
    for m in members.iter().filter(|m| m.zombie.is_some()) {
        if let Some(i) = fam.procs.iter().position(|p| p.original == m.pid) {
            let p = fam.procs.remove(i);
            die(p, m.zombie.unwrap_or(0), &m.comm)?;
        }
    }
    Ok(fam)
}

/// Gives `p` a page of its own for the arguments of the calls run in it.
fn scratch(p: &mut Proc) -> Result<()> {
    if p.scratch.is_none() {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let fl = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let at = with(p, |c| c.mmap(RemoteAddr(0), PAGE_SIZE as u64, rw, fl, None, 0, "call arguments"))?;
        p.scratch = Some(at);
    }
    Ok(())
}

/// `p` has just made its session: if a pty of `ctty` was that session's terminal, it opens it
/// (a session leader without a terminal takes the first it opens) and closes it again.
fn take_terminal(p: &mut Proc, ctty: &[Ctty]) -> Result<()> {
    let Some(t) = ctty.iter().find(|t| t.session == p.original) else { return Ok(()) };
    scratch(p)?;
    let what = format!("{} (the terminal of session {})", t.path, p.original);
    with(p, |c| {
        let fd = c.open(&t.path, libc::O_RDWR | libc::O_CLOEXEC, &what)?;
        c.close(fd, &what)
    })
}

/// Gives each session's terminal of `ctty` its foreground group, once every group exists.
fn foregrounds(fam: &mut Family, members: &[Member], ctty: &[Ctty]) -> Result<()> {
    for t in ctty.iter().filter(|t| t.foreground != 0) {
        let Some(leader) = fam.procs.iter().position(|p| p.original == t.session) else { continue };
        let group = if t.foreground == members[0].pgid {
            procfs::read_stat(fam.procs[0].t.pid)?.pgid
        } else {
            match fam.procs.iter().find(|p| p.original == t.foreground) {
                Some(p) => p.t.pid,
                None => continue,
            }
        };
        let p = &mut fam.procs[leader];
        scratch(p)?;
        let what = format!("{} (foreground group {group})", t.path);
        with(p, |c| {
            let fd = c.open(&t.path, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC, &what)?;
            let r = c.ioctl_in_raw(fd, libc::TIOCSPGRP, &group.to_le_bytes())?;
            c.close(fd, &what)?;
            if r < 0 {
                return Err(Error::sys("ioctl(TIOCSPGRP)", what.as_str(), Errno::from_raw(-r as i32)));
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Has `parent` fork a child with pid `want` (when it can be had), traced and stopped before it
/// runs anything: a copy of `parent`, which is still a copy of rstrt.
fn fork(parent: &mut Proc, want: i32, require: bool) -> Result<Proc> {
    parent.t.trace_forks()?;
    scratch(parent)?;
    let tid_at = parent.scratch.map_or(0, |a| a.0 + 128);
    let args = |set_tid: bool| {
        let mut e = crate::crf::Enc::new();
        e.u64(0).u64(0).u64(0).u64(0).u64(libc::SIGCHLD as u64); // flags, pidfd, child_tid, parent_tid, exit_signal
        e.u64(0).u64(0).u64(0); // stack, stack_size, tls: a fork
        if set_tid {
            e.u64(tid_at).u64(1)
        } else {
            e.u64(0).u64(0)
        };
        e.u64(0); // cgroup
        e.into_bytes()
    };
    let tid = (want as u32).to_le_bytes();
    let mut r = with(parent, |c| c.clone3_raw(&args(true), &tid))?;
    let mut note = None;
    if r < 0 {
        let why = match Errno::from_raw(-r as i32) {
            Errno::EEXIST => super::spawn::pid_in_use(want),
            Errno::EPERM => "restoring a pid needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN".to_string(),
            e => format!("clone3 with set_tid failed: {}", e.desc()),
        };
        if require {
            return Err(Error::Refused(format!("cannot restore as pid {want}: {why} (--require-pid)")));
        }
        // Its parent knows it by its pid (bash, make and Python wait for that pid): a tree
        // whose pids are taken is not restored with others, only where it may have its own
        // (without the privilege to choose pids, every pid is new: see rstrt(1)).
        if Errno::from_raw(-r as i32) == Errno::EEXIST {
            return Err(Error::Refused(format!(
                "cannot restore the tree's pid {want}, a child of pid {}: {why}; its parent would not find it",
                parent.original
            )));
        }
        r = with(parent, |c| c.clone3_raw(&args(false), &[]))?;
        if r < 0 {
            return Err(Error::sys("clone3 (a child)", format!("pid {}", parent.t.pid), Errno::from_raw(-r as i32)));
        }
        note = Some(why);
    }
    let t = Tracee::adopt_child(r as i32)?;
    // A copy of its parent: the same gadget, the same executable.
    let (gadget, executed) = (parent.gadget, parent.executed);
    Ok(Proc {
        t,
        original: want,
        others: Vec::new(),
        held: Vec::new(),
        pid_note: note,
        scratch: None,
        gadget,
        executed,
        stop: false,
    })
}

/// Puts every member in its process group: the leaders make theirs, then the others join
/// theirs (the first process's group being whatever it has here).
fn groups(fam: &mut Family, members: &[Member]) -> Result<()> {
    let root = &members[0];
    let here = |pid: i32| procfs::read_stat(pid).map(|s| s.pgid);
    let root_group = here(fam.procs[0].t.pid)?;
    for leaders in [true, false] {
        for m in &members[1..] {
            if (m.pgid == m.pid) != leaders {
                continue;
            }
            let Some(i) = fam.procs.iter().position(|p| p.original == m.pid) else { continue };
            let want = if leaders {
                fam.procs[i].t.pid
            } else if m.pgid == root.pgid {
                root_group
            } else {
                let leader = fam.procs.iter().find(|p| p.original == m.pgid);
                leader.map(|p| p.t.pid).ok_or_else(|| {
                    Error::Refused(format!("the image's pid {} is in group {}, which it does not hold", m.pid, m.pgid))
                })?
            };
            let p = &mut fam.procs[i];
            if here(p.t.pid)? != want {
                let what = format!("pid {} into group {want}", p.t.pid);
                with(p, |c| c.setpgid(want, &what))?;
            }
        }
    }
    Ok(())
}

/// Makes `p` exit with wait status `status`, leaving the zombie, named `comm` (if any: ps
/// shows it so), for its parent to reap.
fn die(mut p: Proc, status: i32, comm: &str) -> Result<()> {
    let pid = p.t.pid;
    let done = |r: Result<()>| match r {
        Err(Error::Gone(_)) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    };
    if !comm.is_empty() {
        scratch(&mut p)?;
        let mut l = crate::ptrace::calls::Calls::new();
        l.set_name(comm);
        with(&mut p, |c| c.run(&l))?;
    }
    if !libc::WIFSIGNALED(status) {
        let code = libc::WEXITSTATUS(status) as u64;
        return done(with(&mut p, |c| c.r.raw(libc::SYS_exit_group, [code, 0, 0, 0, 0, 0]).map(drop)));
    }
    let sig = libc::WTERMSIG(status);
    // Its own action for the signal, the default (a copy of rstrt may have a handler), no
    // core dump (it would be rstrt's), the signal unblocked.
    with(&mut p, |c| {
        c.prctl(libc::PR_SET_DUMPABLE, [0; 4], "prctl(PR_SET_DUMPABLE)", "a zombie")?;
        let page = c.mmap(
            RemoteAddr(0),
            PAGE_SIZE as u64,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            None,
            0,
            "a zombie's signal action",
        )?;
        c.rt_sigaction(sig as usize, Some(page), None)
    })?;
    p.t.set_sigmask(0)?;
    // SAFETY: kill takes integers. (nix's Signal has no real-time signals.)
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(Error::sys("kill", format!("pid {pid} (a zombie to be)"), Errno::last()));
    }
    let mut deliver = 0usize;
    loop {
        ptrace_raw(libc::PTRACE_CONT, pid, 0, deliver, "PTRACE_CONT")?;
        match p.t.wait() {
            Ok(Stop::Signal(s)) => deliver = s as usize,
            Ok(_) => deliver = 0,
            Err(Error::Gone(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
