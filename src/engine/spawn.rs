//! The restored process's beginning: a clone3 of ours (with the image's pid when it is free and
//! we may), which asks to be traced and stops before it runs anything of its own, and a guard
//! that kills it again should the restore fail.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Kills and reaps the child unless disarmed: a failed restore leaves nothing behind.
pub struct ChildGuard {
    pub pid: i32,
    pub armed: bool,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(self.pid), Some(nix::sys::wait::WaitPidFlag::__WALL));
        }
    }
}

/// struct clone_args of clone3(2).
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// What the child executes before it stops, when given: the process's own executable (an fd
/// the restorer opened), so that /proc/PID/exe names it without the privilege PR_SET_MM_MAP
/// needs to change the link. Nothing of it runs: the traced child stops as the exec completes.
pub struct Exec {
    fd: libc::c_int,
    argv: [*const libc::c_char; 2],
    envp: [*const libc::c_char; 1],
}

impl Exec {
    pub fn of(f: &std::fs::File) -> Exec {
        use std::os::fd::AsRawFd;
        static ARG0: &std::ffi::CStr = c"crs-restore";
        Exec { fd: f.as_raw_fd(), argv: [ARG0.as_ptr(), std::ptr::null()], envp: [std::ptr::null()] }
    }
}

/// Forks the child that becomes the restored process, with pid `want` when possible.
/// Returns the child's pid and, when it did not get `want`, why.
pub fn spawn_child(want: i32, require: bool, exec: Option<&Exec>) -> Result<(i32, Option<String>)> {
    let parent = std::process::id() as libc::c_long;
    let tid = [want];
    let mut args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    let call = |args: &CloneArgs| -> libc::c_long {
        // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of our memory. It runs
        // only `child_stop`, which makes raw syscalls and never returns into Rust code that could
        // touch state shared with the parent.
        let r = unsafe { libc::syscall(libc::SYS_clone3, args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
        if r == 0 {
            child_stop(parent, exec);
        }
        r
    };
    // The kernel takes the pid last, a whole fork later (a ms or two with much memory held):
    // one in use here is asked first. (Freed or taken meanwhile, clone3 says so as before.)
    let (r, e) = match in_use(want) {
        true => (-1, Errno::EEXIST),
        false => (call(&args), Errno::last()),
    };
    if r > 0 {
        return Ok((r as i32, None));
    }
    let why = match e {
        Errno::EEXIST => pid_in_use(want),
        Errno::EPERM => "restoring a pid needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN".to_string(),
        Errno::ENOSYS => "this kernel has no clone3".to_string(),
        e => format!("clone3 with set_tid failed: {}", e.desc()),
    };
    if require {
        return Err(Error::Refused(format!("cannot restore as pid {want}: {why} (--require-pid)")));
    }
    args.set_tid = 0;
    args.set_tid_size = 0;
    let r = call(&args);
    if r < 0 {
        // clone3 may be missing entirely: fall back to fork.
        // SAFETY: as above; the child only runs `child_stop`.
        let f = unsafe { libc::fork() };
        if f == 0 {
            child_stop(parent, exec);
        }
        if f < 0 {
            return Err(Error::sys("fork", "restore child", Errno::last()));
        }
        return Ok((f, Some(why)));
    }
    Ok((r as i32, Some(why)))
}

/// Whether pid `want` is in use in the pid namespace our children are made in (a process's
/// or a thread's); false when that cannot be told (another namespace: clone3 tells).
fn in_use(want: i32) -> bool {
    let ns = |n: &str| std::fs::metadata(format!("/proc/self/ns/{n}")).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    if want <= 0 || !matches!((ns("pid"), ns("pid_for_children")), (Ok(a), Ok(b)) if a == b) {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it asks whether the pid exists.
    unsafe { libc::kill(want, 0) == 0 || Errno::last() == Errno::EPERM }
}

/// In the child: die with rstrt, ask to be traced, then execute `exec` (the tracer sees the
/// exec's SIGTRAP) or, without one or should it fail, stop (SIGSTOP). Raw syscalls only
/// (glibc's cached thread id still names the parent, so raise() would signal the wrong task).
fn child_stop(parent: libc::c_long, exec: Option<&Exec>) -> ! {
    // SAFETY: plain syscalls with integer arguments, and execveat's, which reads a path ("")
    // and argv/envp arrays that the parent built before the fork and this copy still holds.
    unsafe {
        libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::syscall(libc::SYS_getppid) != parent {
            libc::syscall(libc::SYS_exit_group, 1);
        }
        libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
        if let Some(e) = exec {
            libc::syscall(
                libc::SYS_execveat,
                e.fd,
                c"".as_ptr(),
                e.argv.as_ptr(),
                e.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        let me = libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
        // Only reached if the parent let us go without restoring us.
        libc::syscall(libc::SYS_exit_group, 127);
    }
    unreachable!()
}

/// Why pid `want` cannot be had: who holds it (a zombie not reaped yet says so: a process
/// just killed, its parent slow to reap), and what would keep it.
pub fn pid_in_use(want: i32) -> String {
    let hint = "a pid namespace of the restore's own would keep it: rstrt --pidns, or a restartd started in one";
    match crate::ptrace::procfs::read_stat(want) {
        Ok(st) if st.state == 'Z' => {
            format!("pid {want} is in use by {}, a zombie its parent has not reaped yet ({hint})", st.comm)
        }
        Ok(st) => format!("pid {want} is in use by {} ({hint})", st.comm),
        // A thread's id, or a process that just ended.
        Err(_) => format!("pid {want} is in use ({hint})"),
    }
}
