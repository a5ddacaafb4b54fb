//! A traced process: seize/interrupt, registers, XSAVE state, signal mask, rseq configuration,
//! and waiting for stops. Every ptrace request goes through `ptrace_raw`, which names the request
//! and the pid in its error and tells "the task vanished" (ESRCH) apart from real failures.

use super::arch::{self, Regs};
use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG: libc::c_uint = 0x4211;

/// rseq registration as reported by PTRACE_GET_RSEQ_CONFIGURATION.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqConf {
    pub ptr: u64,
    pub len: u32,
    pub sig: u32,
}

/// What a stopped tracee reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Syscall entry or exit (SIGTRAP | 0x80, with PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// A PTRACE_EVENT_STOP (after PTRACE_INTERRUPT) or a group stop.
    Event,
    /// A signal is about to be delivered; the tracer decides whether it is.
    Signal(i32),
}

/// A resume of a tracee that runs only what we put it up to (a remote syscall, code copied in),
/// and the stop that ends it: `run` resumes it and waits for that stop. Signals sent to the
/// tracee meanwhile are held back, for the caller to deliver later; a fault, or a trap other
/// than the awaited one, is an error, never retried.
pub struct Resumed<'a> {
    t: &'a Tracee,
    req: libc::c_uint,
    name: &'static str,
    until: Until,
}

enum Until {
    /// The trap of a single step, once the instruction at this address has run.
    StepFrom(u64),
    /// An int3 whose next instruction is at this address.
    TrapAt(u64),
    /// A syscall entry or exit stop.
    Syscall,
}

impl Resumed<'_> {
    pub fn run(self, held: &mut Vec<Caught>) -> Result<()> {
        self.start()?;
        self.finish(held)
    }

    /// Resumes the tracee without waiting: many are run at once by starting them all, then
    /// finishing each.
    pub fn start(&self) -> Result<()> {
        ptrace_raw(self.req, self.t.pid, 0, 0, self.name).map(drop)
    }

    /// Waits for the stop a [`Resumed::start`] runs the tracee up to.
    pub fn finish(self, held: &mut Vec<Caught>) -> Result<()> {
        let t = self.t;
        let resume = || ptrace_raw(self.req, t.pid, 0, 0, self.name);
        loop {
            match t.wait()? {
                Stop::Syscall if matches!(self.until, Until::Syscall) => return Ok(()),
                Stop::Signal(sig) if (sig == libc::SIGTRAP || FAULTS.contains(&sig)) && !t.sent()? => {
                    let rip = t.regs()?.rip;
                    let ours = match self.until {
                        Until::StepFrom(at) => sig == libc::SIGTRAP && rip != at,
                        Until::TrapAt(end) => sig == libc::SIGTRAP && rip == end,
                        Until::Syscall => false,
                    };
                    return if ours { Ok(()) } else { Err(t.faulted(sig)) };
                }
                Stop::Signal(sig) => held.push(Caught::take(t, sig)),
                Stop::Syscall | Stop::Event => {}
            }
            resume()?;
        }
    }
}

/// The size of a siginfo_t.
pub const SIGINFO_LEN: usize = 128;

/// Signals that mean a syscall we ran faulted.
const FAULTS: [i32; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGSYS];

pub struct Tracee {
    pub pid: i32,
    attached: bool,
}

/// One ptrace call with a typed error.
pub fn ptrace_raw(req: libc::c_uint, pid: i32, addr: usize, data: usize, what: &str) -> Result<libc::c_long> {
    Errno::clear();
    // SAFETY: ptrace reads/writes only through `addr`/`data`, which callers pass as pointers to
    // live buffers of the size the request needs (or as plain integers for requests that take
    // none); a bad pid only yields an error.
    let r = unsafe { libc::ptrace(req, pid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if r == -1 && Errno::last_raw() != 0 {
        let e = Errno::last();
        return Err(if e == Errno::ESRCH {
            Error::Gone(pid)
        } else {
            Error::sys(format!("ptrace({what})"), format!("pid {pid}"), e)
        });
    }
    Ok(r)
}

/// PTRACE_O_SUSPEND_SECCOMP, when crs may ask it (see res::seccomp::can_suspend): a traced
/// process's seccomp filters do not apply to the syscalls crs makes it run.
fn suspend() -> usize {
    const PTRACE_O_SUSPEND_SECCOMP: usize = 1 << 21;
    if crate::res::seccomp::can_suspend() { PTRACE_O_SUSPEND_SECCOMP } else { 0 }
}

/// Whether process `pid` is exiting or gone (a zombie, dead, or no longer in /proc).
fn exiting(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => crate::ptrace::procfs::status_field(&s, "State").is_some_and(|v| v.starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// The pid of the process that traces `pid`, if one does.
fn tracer_of(pid: i32) -> Option<i32> {
    let status = crate::ptrace::procfs::read_status(pid).ok()?;
    crate::ptrace::procfs::status_field(&status, "TracerPid")?.parse().ok().filter(|&t: &i32| t > 0)
}

impl Tracee {
    /// PTRACE_SEIZE: attaches without stopping or signalling the process.
    pub fn seize(pid: i32) -> Result<Tracee> {
        let opts = libc::PTRACE_O_TRACESYSGOOD as usize | suspend();
        ptrace_raw(libc::PTRACE_SEIZE, pid, 0, opts, "PTRACE_SEIZE").map_err(|e| match e.errno() {
            // The kernel refuses a process that is exiting with EPERM too: it is going.
            Some(Errno::EPERM) if exiting(pid) => Error::Gone(pid),
            Some(Errno::EPERM) if let Some(tracer) = tracer_of(pid) => {
                Error::Refused(format!("pid {pid} is already traced by pid {tracer} (a debugger?); detach it first"))
            }
            Some(Errno::EPERM) => Error::Permission(format!(
                "may not trace pid {pid}: it belongs to another user, is already traced, or ptrace is \
                 restricted; run as its owner or as root"
            )),
            _ => e,
        })?;
        Ok(Tracee { pid, attached: true })
    }

    /// Adopts a child that called PTRACE_TRACEME and stopped itself.
    pub fn adopt_child(pid: i32) -> Result<Tracee> {
        match Tracee::adopt_child_exec(pid)? {
            (t, false) => Ok(t),
            (_, true) => Err(Error::Proc(format!("restore child {pid}: unexpected first stop at an exec"))),
        }
    }

    /// Adopts a child that called PTRACE_TRACEME and then either stopped itself (false) or
    /// executed a program, stopping as the exec completed (true: SIGTRAP).
    pub fn adopt_child_exec(pid: i32) -> Result<(Tracee, bool)> {
        let t = Tracee { pid, attached: true };
        let executed = match t.wait()? {
            Stop::Signal(sig) if sig == libc::SIGSTOP => false,
            Stop::Signal(sig) if sig == libc::SIGTRAP => true,
            other => {
                return Err(Error::Proc(format!("restore child {pid}: unexpected first stop {other:?}")));
            }
        };
        let opts = (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL) as usize | suspend();
        ptrace_raw(libc::PTRACE_SETOPTIONS, pid, 0, opts, "PTRACE_SETOPTIONS")?;
        Ok((t, executed))
    }

    /// Also traces the threads it creates from now on: each starts stopped (PTRACE_O_TRACECLONE).
    pub fn trace_clones(&self) -> Result<()> {
        let opts =
            (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACECLONE) as usize | suspend();
        ptrace_raw(libc::PTRACE_SETOPTIONS, self.pid, 0, opts, "PTRACE_SETOPTIONS").map(|_| ())
    }

    /// Also traces the processes it forks from now on: each starts stopped (PTRACE_O_TRACEFORK).
    pub fn trace_forks(&self) -> Result<()> {
        let opts =
            (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACEFORK) as usize | suspend();
        ptrace_raw(libc::PTRACE_SETOPTIONS, self.pid, 0, opts, "PTRACE_SETOPTIONS").map(|_| ())
    }

    /// Stops the process with PTRACE_INTERRUPT (no SIGSTOP is sent) and waits for the stop.
    /// Signals that arrive meanwhile are held back in `held`, to be delivered later.
    pub fn interrupt(&self, held: &mut Vec<Caught>) -> Result<()> {
        self.interrupt_start()?;
        self.interrupted(held)
    }

    /// PTRACE_INTERRUPT without waiting: many threads are stopped in parallel by asking them
    /// all, then waiting for each ([`Tracee::interrupted`]).
    pub fn interrupt_start(&self) -> Result<()> {
        ptrace_raw(libc::PTRACE_INTERRUPT, self.pid, 0, 0, "PTRACE_INTERRUPT").map(drop)
    }

    /// Waits for the stop a PTRACE_INTERRUPT asked for; signals meanwhile go to `held`.
    pub fn interrupted(&self, held: &mut Vec<Caught>) -> Result<()> {
        loop {
            match self.wait()? {
                Stop::Event => return Ok(()),
                Stop::Signal(sig) => {
                    held.push(Caught::take(self, sig));
                    // Suppress it for now; the interrupt is still pending and stops it again.
                    ptrace_raw(libc::PTRACE_CONT, self.pid, 0, 0, "PTRACE_CONT")?;
                }
                Stop::Syscall => ptrace_raw(libc::PTRACE_CONT, self.pid, 0, 0, "PTRACE_CONT").map(|_| ())?,
            }
        }
    }

    /// Waits for the next stop of this tracee. (The status is decoded here, not by nix, whose
    /// Signal has no real-time signals: a timer's SIGRTMIN arriving during a freeze would read
    /// as an error.)
    pub fn wait(&self) -> Result<Stop> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes one int.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
            if r < 0 {
                match Errno::last() {
                    Errno::EINTR => continue,
                    e => return Err(Error::sys("waitpid", format!("pid {}", self.pid), e)),
                }
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                return Err(Error::Gone(self.pid));
            }
            if !libc::WIFSTOPPED(status) {
                continue; // continued
            }
            let sig = libc::WSTOPSIG(status);
            return Ok(if status >> 16 != 0 {
                // PTRACE_EVENT_STOP (an interrupt or a group stop) or another ptrace event.
                Stop::Event
            } else if sig == libc::SIGTRAP | 0x80 {
                Stop::Syscall
            } else {
                Stop::Signal(sig)
            });
        }
    }

    pub fn regs(&self) -> Result<Regs> {
        // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        ptrace_raw(libc::PTRACE_GETREGS, self.pid, 0, &mut r as *mut Regs as usize, "PTRACE_GETREGS")?;
        Ok(r)
    }

    pub fn set_regs(&self, r: &Regs) -> Result<()> {
        ptrace_raw(libc::PTRACE_SETREGS, self.pid, 0, r as *const Regs as usize, "PTRACE_SETREGS").map(|_| ())
    }

    /// The XSAVE area (all FPU/SSE/AVX/AVX-512 state), exactly as long as the kernel fills it;
    /// on a CPU without XSAVE, the 512-byte FXSAVE area (x87 and SSE).
    pub fn xstate(&self) -> Result<Vec<u8>> {
        if !arch::has_xsave() {
            let mut buf = vec![0u8; arch::FXSAVE_LEN];
            ptrace_raw(libc::PTRACE_GETFPREGS, self.pid, 0, buf.as_mut_ptr() as usize, "PTRACE_GETFPREGS")?;
            return Ok(buf);
        }
        // Sized for this CPU, not for the largest possible area: a 64-thread process would
        // otherwise fault in megabytes of zeroes.
        let mut buf = vec![0u8; arch::xstate_len()];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        ptrace_raw(
            libc::PTRACE_GETREGSET,
            self.pid,
            arch::NT_X86_XSTATE as usize,
            &mut iov as *mut _ as usize,
            "PTRACE_GETREGSET NT_X86_XSTATE",
        )?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    pub fn set_xstate(&self, x: &[u8]) -> Result<()> {
        let mut copy = x.to_vec();
        if x.len() == arch::FXSAVE_LEN {
            return ptrace_raw(libc::PTRACE_SETFPREGS, self.pid, 0, copy.as_mut_ptr() as usize, "PTRACE_SETFPREGS")
                .map(|_| ());
        }
        let mut iov = libc::iovec { iov_base: copy.as_mut_ptr().cast(), iov_len: copy.len() };
        ptrace_raw(
            libc::PTRACE_SETREGSET,
            self.pid,
            arch::NT_X86_XSTATE as usize,
            &mut iov as *mut _ as usize,
            "PTRACE_SETREGSET NT_X86_XSTATE",
        )
        .map(|_| ())
    }

    pub fn sigmask(&self) -> Result<u64> {
        let mut m = 0u64;
        ptrace_raw(PTRACE_GETSIGMASK, self.pid, 8, &mut m as *mut u64 as usize, "PTRACE_GETSIGMASK")?;
        Ok(m)
    }

    /// The signals queued for the thread and not yet delivered, each with its siginfo as the
    /// kernel holds it: its own queue, or with `shared` the process's.
    pub fn pending(&self, shared: bool) -> Result<Vec<[u8; SIGINFO_LEN]>> {
        #[repr(C)]
        struct Args {
            off: u64,
            flags: u32,
            nr: i32,
        }
        const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
        const SHARED: u32 = 1;
        let flags = if shared { SHARED } else { 0 };
        let mut out = Vec::new();
        loop {
            let mut buf = [[0u8; SIGINFO_LEN]; 16];
            let a = Args { off: out.len() as u64, flags, nr: 16 };
            let n = ptrace_raw(
                PTRACE_PEEKSIGINFO,
                self.pid,
                &a as *const Args as usize,
                buf.as_mut_ptr() as usize,
                "PTRACE_PEEKSIGINFO",
            )? as usize;
            out.extend(buf.iter().take(n.min(16)));
            if n < 16 {
                break;
            }
        }
        Ok(out)
    }

    pub fn set_sigmask(&self, m: u64) -> Result<()> {
        ptrace_raw(PTRACE_SETSIGMASK, self.pid, 8, &m as *const u64 as usize, "PTRACE_SETSIGMASK").map(|_| ())
    }

    /// The rseq area the task registered, if any.
    pub fn rseq(&self) -> Result<Option<RseqConf>> {
        #[repr(C)]
        #[derive(Default)]
        struct Conf {
            ptr: u64,
            size: u32,
            sig: u32,
            flags: u32,
            pad: u32,
        }
        let mut c = Conf::default();
        ptrace_raw(
            PTRACE_GET_RSEQ_CONFIGURATION,
            self.pid,
            std::mem::size_of::<Conf>(),
            &mut c as *mut Conf as usize,
            "PTRACE_GET_RSEQ_CONFIGURATION",
        )?;
        Ok((c.ptr != 0 && c.size != 0).then_some(RseqConf { ptr: c.ptr, len: c.size, sig: c.sig }))
    }

    /// Whether syscall user dispatch (PR_SET_SYSCALL_USER_DISPATCH) is on; false where the
    /// kernel (before 6.0) cannot tell.
    pub fn syscall_user_dispatch(&self) -> Result<bool> {
        let mut c = [0u64; 4]; // mode, offset, len, selector
        let r = ptrace_raw(
            PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG,
            self.pid,
            std::mem::size_of_val(&c),
            c.as_mut_ptr() as usize,
            "PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG",
        );
        match r {
            Ok(_) => Ok(c[0] != 0),
            Err(Error::Sys { errno: Errno::EIO | Errno::EINVAL, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs the `syscall` instruction at `at` (where the registers point) and stops right after
    /// it, with a single step: one resume and one stop, where stopping at the syscall's entry and
    /// exit takes two of each.
    pub fn step_syscall(&self, at: u64) -> Resumed<'_> {
        Resumed { t: self, req: libc::PTRACE_SINGLESTEP, name: "PTRACE_SINGLESTEP", until: Until::StepFrom(at) }
    }

    /// Resumes until the tracee stops on a breakpoint (int3) whose next instruction is at `end`.
    pub fn cont_to_trap(&self, end: u64) -> Resumed<'_> {
        Resumed { t: self, req: libc::PTRACE_CONT, name: "PTRACE_CONT", until: Until::TrapAt(end) }
    }

    /// Resumes until the next syscall entry or exit stop.
    pub fn to_syscall_stop(&self) -> Resumed<'_> {
        Resumed { t: self, req: libc::PTRACE_SYSCALL, name: "PTRACE_SYSCALL", until: Until::Syscall }
    }

    /// Whether the signal of the current signal-delivery stop was sent by a process (kill,
    /// tgkill, sigqueue: si_code <= 0) rather than raised by the kernel for what the tracee ran.
    fn sent(&self) -> Result<bool> {
        // SAFETY: siginfo_t is plain data; PTRACE_GETSIGINFO fills it.
        let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
        ptrace_raw(libc::PTRACE_GETSIGINFO, self.pid, 0, &mut si as *mut _ as usize, "PTRACE_GETSIGINFO")?;
        Ok(si.si_code <= 0)
    }

    fn faulted(&self, sig: i32) -> Error {
        Error::Refused(format!(
            "pid {}: a syscall crs ran in it faulted (signal {sig}); its vdso may be unusable or a seccomp filter in the way",
            self.pid
        ))
    }

    /// Detaches; the process continues (or stays stopped if it has a SIGSTOP pending).
    pub fn detach(mut self) -> Result<()> {
        self.attached = false;
        ptrace_raw(libc::PTRACE_DETACH, self.pid, 0, 0, "PTRACE_DETACH").map(|_| ())
    }

    pub fn kill(&self, sig: Signal) -> Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.pid), sig)
            .map_err(|e| Error::sys(format!("kill({sig})"), format!("pid {}", self.pid), e))
    }
}

/// Sends `pid` the signals that arrived while we held it (and that we kept from it), once it
/// runs on its own again.
pub fn redeliver(pid: i32, sigs: &[Caught]) {
    for c in sigs {
        c.requeue(pid);
    }
}

/// A signal that reached a thread while we held it stopped (at its signal-delivery stop, where
/// the kernel had already taken it from the queue): we suppress it then and queue it again
/// when the process runs on ([`redeliver`]), with its siginfo, to the same thread.
#[derive(Clone)]
pub struct Caught {
    pub tid: i32,
    pub sig: i32,
    /// Its siginfo (None if it could not be read).
    info: Option<[u8; SIGINFO_LEN]>,
}

impl std::fmt::Debug for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "signal {} to {}", self.sig, self.tid)
    }
}

impl Caught {
    /// The signal `sig` of `t`'s current signal-delivery stop.
    pub fn take(t: &Tracee, sig: i32) -> Caught {
        let mut info = [0u8; SIGINFO_LEN];
        let ok = ptrace_raw(libc::PTRACE_GETSIGINFO, t.pid, 0, info.as_mut_ptr() as usize, "PTRACE_GETSIGINFO").is_ok();
        Caught { tid: t.pid, sig, info: ok.then_some(info) }
    }

    /// Its siginfo: as the kernel gave it, or (where it could not be read) one that names the
    /// signal only, as sent by kill(2).
    pub fn siginfo(&self) -> [u8; SIGINFO_LEN] {
        self.info.unwrap_or_else(|| {
            let mut i = [0u8; SIGINFO_LEN];
            i[..4].copy_from_slice(&self.sig.to_le_bytes());
            i
        })
    }

    /// Queues it again to its thread of process `pid`: with its siginfo where the kernel lets
    /// another process queue that one (si_code < 0: sigqueue, timers, tgkill... but SI_TKILL),
    /// otherwise as tgkill would (a kill(2) from us, then).
    fn requeue(&self, pid: i32) {
        let code = self.info.map(|i| i32::from_le_bytes([i[8], i[9], i[10], i[11]]));
        if let (Some(info), Some(code)) = (self.info, code)
            && code < 0
            && code != libc::SI_TKILL
        {
            // SAFETY: `info` is a whole siginfo_t the kernel gave us; the call only reads it.
            let r = unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, self.tid, self.sig, info.as_ptr()) };
            if r == 0 {
                return;
            }
        }
        // SAFETY: tgkill takes integers.
        if unsafe { libc::syscall(libc::SYS_tgkill, pid, self.tid, self.sig) } != 0 {
            // The thread is gone: the process may still take it.
            // SAFETY: kill takes integers.
            unsafe { libc::kill(pid, self.sig) };
        }
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.attached {
            // Best effort: on an error path the owner has already put the registers back.
            let _ = ptrace_raw(libc::PTRACE_DETACH, self.pid, 0, 0, "PTRACE_DETACH");
        }
    }
}

#[cfg(test)]
mod tests {
    /// A zombie (a child that exited, not yet reaped) is exiting; we are not; nor is a
    /// seize of the zombie refused as a matter of permission: it is gone.
    #[test]
    fn a_zombie_is_exiting_and_its_seize_says_gone() {
        // SAFETY: the child only exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(0) };
        }
        let t0 = std::time::Instant::now();
        while !super::exiting(pid) {
            assert!(t0.elapsed() < std::time::Duration::from_secs(5), "child {pid} never became a zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!super::exiting(std::process::id() as i32));
        let e = super::Tracee::seize(pid).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(&format!("no process {pid}")), "{e}");
        let mut st = 0;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
}
