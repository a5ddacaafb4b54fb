//! rstrt: restart a process from a CRF image.

/// Restart a process from a CRF image (a file, or "-" for standard input). In the foreground
/// (default) rstrt waits for the process like a shell waits for a command: it exits with the
/// process's status, and SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to rstrt reach the process.
#[derive(argh::FromArgs)]
struct Args {
    /// run the process in a session of its own, print its pid and exit 0 once it runs; its
    /// fds 0-2 that were a terminal or a pipe are /dev/null
    #[argh(switch, short = 'd')]
    detach: bool,
    /// with -d: give the process rstrt's own fds 0-2 instead of /dev/null
    #[argh(switch)]
    inherit_stdio: bool,
    /// leave the restored process stopped (the paper's RESTART_STOP); continue it with SIGCONT
    #[argh(switch)]
    stop: bool,
    /// send SIGUSR1 to PID once the restore is complete (RESTART_NOTIFY; 0 = rstrt's parent)
    #[argh(option)]
    notify: Option<i32>,
    /// write the restored process's pid to FILE
    #[argh(option)]
    pidfile: Option<String>,
    /// fail unless the process gets its original pid back
    #[argh(switch)]
    require_pid: bool,
    /// restore in a new pid namespace, where every pid is free: the process and its threads
    /// get their ids back even while the original still runs (root, or a user through a user
    /// namespace of its own)
    #[argh(switch)]
    pidns: bool,
    /// restore in a new IPC namespace, where the System V objects the image holds get their
    /// ids and keys even if this node's are taken (root only, or with --pidns for a user)
    #[argh(switch)]
    ipcns: bool,
    /// restore in a new time namespace, where CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from
    /// where they were when the process was frozen, on any node (root only, or with --pidns for a user)
    #[argh(switch)]
    timens: bool,
    /// run a job checkpointed with ckpt --shell-job in rstrt's session and process group, its
    /// terminal fds on rstrt's terminal, with the terminal modes it had; it gets SIGWINCH
    #[argh(switch)]
    shell_job: bool,
    /// as root: give a user's process the capabilities its image says it had (a unit's
    /// AmbientCapabilities=); only for images you trust, since their owner could forge one
    #[argh(switch)]
    user_caps: bool,
    /// run the process at once, before its memory is in place: its private anonymous pages
    /// come from the image as it touches them, the rest in the background; rstrt stays until
    /// all are in (root only; IMAGE a regular file)
    #[argh(switch)]
    lazy: bool,
    /// print what was done on stderr
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// which engine restarts: "ptrace" (the userspace one), "crd" (the kernel module, /dev/crd,
    /// see crd(4): one single-threaded process with fds 0 to 2), or "auto" (the
    /// default: ptrace, and crd when Yama forbids ptrace)
    #[argh(option, default = "String::from(\"auto\")")]
    backend: String,
    /// the image file, or "-" to read it from standard input
    #[argh(positional)]
    image: String,
}

use crate::engine::pidns::{self, End, Side};
use crate::error::Error;
use crate::exit;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::io::Write;

const FORWARDED: [Signal; 4] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT];

pub fn main(name: &str, argv: &[String]) -> i32 {
    let a: Args = match super::parse(name, argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    super::verbose(a.verbose);
    let stdin = a.image == "-";
    if a.inherit_stdio && !a.detach {
        eprintln!("{name}: --inherit-stdio goes with -d (in the foreground the process has rstrt's stdio anyway)");
        return exit::USAGE;
    }
    let flags = crate::RestartFlags {
        free_bind: None,
        detach: a.detach,
        stop: a.stop,
        require_pid: a.require_pid,
        hold: false,
        // Detached, the process must not hold its caller's stdio: `PID=$(rstrt -d IMG)` would
        // wait for it to close the pipe the pid is printed on.
        null_stdio: if a.detach && !a.inherit_stdio { 7 } else { stdin as u8 },
        ipcns: a.ipcns,
        timens: a.timens,
        shell_job: a.shell_job,
        grant_caps: a.user_caps,
        backend: crate::dev::Backend::Auto,
    };
    // Block the signals we forward before the process exists, so none is lost in between.
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    // (With --lazy, -d too: rstrt serves the pages until all are in, and must not die of a
    // ^C or a hangup meanwhile.)
    if (!a.detach || a.pidns || a.lazy) && set.thread_block().is_err() {
        eprintln!("{name}: cannot block signals");
        return exit::FAILURE;
    }
    // With --pidns, what follows runs in the namespace's init; rstrt waits outside.
    let mut init = None;
    if a.pidns {
        match pidns::enter() {
            Err(e) => return exit::report(name, &e),
            Ok(Side::Outside(o)) => return outside(name, &a, o, &set),
            Ok(Side::Init(i)) => init = Some(i),
        }
    }
    let backend: crate::dev::Backend = match a.backend.parse() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{name}: {e}");
            return exit::USAGE;
        }
    };
    let crd = crate::dev::choose_restart(backend) == crate::dev::Backend::Crd;
    if crd && a.pidns {
        eprintln!("{name}: the crd backend does not do --pidns: use --backend ptrace");
        return exit::USAGE;
    }
    let flags = crate::RestartFlags {
        backend: if crd { crate::dev::Backend::Crd } else { crate::dev::Backend::Ptrace },
        ..flags
    };
    if a.lazy && stdin {
        eprintln!("{name}: --lazy reads pages from the image as the process touches them: give a file, not \"-\"");
        return exit::USAGE;
    }
    let r = if crd && a.lazy {
        eprintln!("{name}: the crd backend does not restore lazily: use --backend ptrace");
        return exit::USAGE;
    } else if crd {
        crate::dev::restart::restart(&a.image, &flags)
    } else if a.lazy {
        crate::restart_lazy(&a.image, &flags)
    } else if stdin {
        crate::grow_pipe(std::io::stdin());
        crate::restart(std::io::stdin().lock(), &flags, None)
    } else {
        crate::restart_path(&a.image, &flags, None)
    };
    let mut r = match r {
        Ok(r) => r,
        Err(e) => return exit::report(name, &e),
    };
    // A lazy restore's pages: served while rstrt goes on, waited for before it ends.
    let lazy = Lazy(r.lazy.take(), a.verbose);
    if let Some(why) = &r.pid_note {
        eprintln!("{name}: {why}: restored pid {} as pid {}", r.original_pid, r.pid);
    }
    for n in &r.notes {
        eprintln!("{name}: {n}");
    }
    if r.exe_kept {
        let why = if crate::res::creds::is_root() {
            "its program here is not the one the image maps (changed since, or one its owner may not execute)"
        } else {
            "setting it needs CAP_CHECKPOINT_RESTORE"
        };
        eprintln!("{name}: /proc/{}/exe still names crs: {why}", r.pid);
    }
    // Fds 0-2 that were a terminal or a pipe: which got ours, which /dev/null.
    let stdio = r.state.files.iter().filter(|f| f.kind == crate::res::files::KIND_STDIO).map(|f| f.fd);
    let (null, own): (Vec<i32>, Vec<i32>) = stdio.partition(|&n| r.null_stdio & (1 << n) != 0);
    let list = |v: &[i32]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    if !own.is_empty() {
        eprintln!("{name}: fds {} (terminal or pipe) now use rstrt's own", list(&own));
    }
    // Why each went to /dev/null: -d, the image on our stdin, or root's terminal kept from
    // another user's process.
    let dash_d = a.detach && !a.inherit_stdio;
    let (image_in, other): (Vec<i32>, Vec<i32>) = null.iter().partition(|&&n| n == 0 && stdin && !dash_d);
    if !image_in.is_empty() {
        eprintln!("{name}: fd 0 (terminal or pipe) now uses /dev/null (rstrt's stdin carries the image)");
    }
    if !other.is_empty() {
        let why = if dash_d {
            "-d; --inherit-stdio gives them rstrt's"
        } else {
            "another user's process gets none of root's terminal"
        };
        eprintln!("{name}: fds {} (terminal or pipe) now use /dev/null ({why})", list(&other));
    }
    if a.verbose {
        eprintln!("{name}: restored pid {} ({}) as pid {}", r.original_pid, r.state.head.comm, r.pid);
    }
    // In a pid namespace: rstrt outside reports the process (by its pid there); the init
    // reaps until it ends.
    if let Some(mut i) = init {
        if let Err(e) = i.ready(a.detach) {
            eprintln!("{name}: {e}");
        }
        let end = i.wait(r.pid);
        return lazy.finish(name).unwrap_or(match end {
            End::Exited(c) => c,
            End::Killed(s) => 128 + s,
        });
    }
    report_running(name, &a, r.pid);
    if a.detach {
        // (A reader gone is no reason to die: the process runs.)
        let _ = writeln!(std::io::stdout(), "{}", r.pid);
        if lazy.0.is_some() {
            // Whoever reads the pid must not wait for the pages: stdout is closed first.
            let _ = std::io::stdout().flush();
            if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
                // SAFETY: dup2 onto our own fd 1; `null` stays open across the call.
                unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) };
            }
        }
        return lazy.finish(name).unwrap_or(exit::OK);
    }
    let end = wait_forwarding(r.pid, r.pid, &set);
    if let Some(code) = lazy.finish(name) {
        return code;
    }
    match end {
        Ok(End::Exited(c)) => c,
        Ok(End::Killed(s)) => die_like(Signal::try_from(s).unwrap_or(Signal::SIGKILL)),
        Err(code) => code,
    }
}

/// A lazy restore's page server, and whether to say what it did.
struct Lazy(Option<crate::engine::lazy::Server>, bool);

impl Lazy {
    /// Waits until every page is in: None, or rstrt's exit code when the server failed (the
    /// processes were killed then: see engine::lazy).
    fn finish(self, name: &str) -> Option<i32> {
        let s = self.0?;
        match s.finish() {
            Ok(st) => {
                if self.1 {
                    eprintln!(
                        "{name}: every page in after {:.0} ms: {} touched first, {} copied in the background, {} zero, {} forks followed",
                        st.seconds * 1e3,
                        st.faulted,
                        st.filled,
                        st.zeroed,
                        st.forks
                    );
                }
                None
            }
            Err(e) => Some(exit::report(name, &e)),
        }
    }
}

/// The pid file and the notification, once the process runs as `pid`: a failure is a
/// warning, never a reason to stop waiting for it.
fn report_running(name: &str, a: &Args, pid: i32) {
    if let Some(p) = &a.pidfile
        && let Err(e) = std::fs::write(p, format!("{pid}\n"))
    {
        eprintln!("{name}: {}", Error::io(p.as_str(), e));
    }
    // Notify only once the pid file says where the process is.
    if let Some(n) = a.notify
        && let Err(e) = crate::notify(n)
    {
        eprintln!("{name}: {e}");
    }
}

/// rstrt outside the pid namespace: reports the process by its pid here once the init says it
/// runs, forwards signals to it, and ends as it ended.
fn outside(name: &str, a: &Args, mut o: pidns::Outside, set: &SigSet) -> i32 {
    let init = Pid::from_raw(o.init);
    let init_status = || match waitpid(init, Some(WaitPidFlag::__WALL)) {
        Ok(WaitStatus::Exited(_, c)) => c,
        _ => exit::FAILURE,
    };
    let pid = match o.ready() {
        Ok(Some(p)) => p,
        // The init said why on stderr.
        Ok(None) => return init_status(),
        Err(e) => {
            let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
            init_status();
            return exit::report(name, &e);
        }
    };
    if pid == 0 {
        // It ended before we saw it: end as it ended, as when it ends later.
        let end = o.end();
        let status = init_status();
        return match end {
            Some(End::Exited(c)) => c,
            Some(End::Killed(s)) => die_like(Signal::try_from(s).unwrap_or(Signal::SIGKILL)),
            None => status,
        };
    }
    if a.verbose {
        eprintln!("{name}: it is pid {pid} outside its pid namespace");
    }
    report_running(name, a, pid);
    if a.detach {
        println!("{pid}");
        return exit::OK;
    }
    match wait_forwarding(o.init, pid, set) {
        Err(code) => code,
        Ok(_) => match o.end() {
            Some(End::Exited(c)) => c,
            Some(End::Killed(s)) => die_like(Signal::try_from(s).unwrap_or(Signal::SIGKILL)),
            None => exit::FAILURE,
        },
    }
}

/// Waits for `child` like a shell waits for a command, forwarding the signals someone sends
/// rstrt to `to` (the restored process: the child itself, or with --pidns the init's child).
/// Signals from the terminal (si_code SI_KERNEL) already reached the whole foreground process
/// group, the process included, and are not sent twice. Err: rstrt's exit code.
fn wait_forwarding(child: i32, to: i32, set: &SigSet) -> Result<End, i32> {
    let (child, to) = (Pid::from_raw(child), Pid::from_raw(to));
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(End::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(End::Killed(sig as i32)),
            Ok(_) => {}
            Err(e) => {
                eprintln!("rstrt: waitpid on pid {child}: {}", e.desc());
                return Err(exit::FAILURE);
            }
        }
        // SAFETY: siginfo_t is plain data; sigwaitinfo fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset and `info` a valid out-pointer.
        let s = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
        if s < 0 || s == libc::SIGCHLD {
            continue;
        }
        if info.si_code != libc::SI_KERNEL
            && let Ok(sig) = Signal::try_from(s)
        {
            let _ = nix::sys::signal::kill(to, sig);
        }
    }
}

/// Ends rstrt the way the child ended, so the shell sees the same status.
fn die_like(sig: Signal) -> ! {
    // SAFETY: resetting a disposition and unblocking signals has no memory-safety impact.
    unsafe {
        libc::signal(sig as i32, libc::SIG_DFL);
        // The process may have dumped core already; rstrt must not add one of its own.
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
    let mut one = SigSet::empty();
    one.add(sig);
    let _ = one.thread_unblock();
    let _ = nix::sys::signal::raise(sig);
    std::process::exit(128 + sig as i32);
}
