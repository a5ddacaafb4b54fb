//! crs check: what this kernel and these privileges allow crs to do.

/// Check, feature by feature, whether this kernel and these privileges support crs, and say
/// what a missing feature costs. Exits 0 when checkpoint and restart both work.
#[derive(argh::FromArgs)]
struct Args {}

use crate::exit;
use crate::ptrace::{arch, mem, procfs, tracee::Tracee};
use nix::errno::Errno;

struct Line {
    ok: bool,
    essential: bool,
    name: &'static str,
    detail: String,
}

pub fn main(name: &str, argv: &[String]) -> i32 {
    if let Err(code) = super::parse::<Args>(name, argv) {
        return code;
    }
    let lines = run_checks();
    let mut fatal = false;
    for l in &lines {
        println!(
            "{:<5} {:<22} {}",
            if l.ok {
                "ok"
            } else if l.essential {
                "FAIL"
            } else {
                "warn"
            },
            l.name,
            l.detail
        );
        fatal |= !l.ok && l.essential;
    }
    if fatal {
        println!("crs cannot work here: see the FAIL lines");
        exit::REFUSED
    } else {
        println!("crs can checkpoint and restart processes here");
        exit::OK
    }
}

/// A child that sleeps until killed, to try things on.
struct Sleeper(i32);

impl Sleeper {
    fn new() -> Option<Sleeper> {
        // SAFETY: fork in a single-threaded applet; the child only pauses in a loop.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                // SAFETY: pause has no arguments.
                unsafe { libc::pause() };
            }
        }
        (pid > 0).then_some(Sleeper(pid))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.0), None);
    }
}

fn has_cap(bit: u32) -> bool {
    let st = procfs::read_status(std::process::id() as i32).unwrap_or_default();
    procfs::status_field(&st, "CapEff")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .is_some_and(|c| c & (1u64 << bit) != 0)
}

fn run_checks() -> Vec<Line> {
    let mut out = Vec::new();
    let mut line =
        |ok: bool, essential: bool, name: &'static str, detail: String| out.push(Line { ok, essential, name, detail });
    let me = std::process::id() as i32;

    let sleeper = Sleeper::new();
    match sleeper.as_ref().map(|s| Tracee::seize(s.0)) {
        Some(Ok(t)) => {
            let steps = t.interrupt(&mut Vec::new()).and_then(|_| t.regs()).and_then(|_| t.xstate());
            match steps {
                Ok(_) if crate::ptrace::arch::has_xsave() => {
                    line(true, true, "ptrace", "PTRACE_SEIZE, PTRACE_INTERRUPT, GETREGS, NT_X86_XSTATE work".into())
                }
                Ok(_) => line(
                    true,
                    true,
                    "ptrace",
                    "PTRACE_SEIZE, PTRACE_INTERRUPT, GETREGS work; no XSAVE: FPU state as FXSAVE".into(),
                ),
                Err(e) => line(false, true, "ptrace", format!("{e}: crs cannot freeze processes")),
            }
            match t.rseq() {
                Ok(Some(r)) => line(
                    true,
                    true,
                    "rseq",
                    format!("PTRACE_GET_RSEQ_CONFIGURATION works (libc registers {} bytes)", r.len),
                ),
                Ok(None) => {
                    line(true, true, "rseq", "PTRACE_GET_RSEQ_CONFIGURATION works (this libc registers none)".into())
                }
                Err(e) => {
                    line(false, true, "rseq", format!("{e}: ckpt cannot save the rseq area glibc 2.35+ registers"))
                }
            }
        }
        Some(Err(e)) => line(false, true, "ptrace", format!("{e}: crs cannot freeze or restore processes")),
        None => line(false, true, "ptrace", "could not fork a test process".into()),
    }
    let mut b = [0u8; 8];
    let vm = sleeper.as_ref().map(|s| mem::read_runs(s.0, &[(arch::own_gadget(), 3)], &mut b[..3]));
    match vm {
        Some(Ok(())) => line(true, true, "process_vm_readv", "bulk memory reads and writes work".into()),
        Some(Err(e)) => line(false, true, "process_vm_readv", format!("{e}: memory cannot be copied")),
        None => line(false, true, "process_vm_readv", "could not fork a test process".into()),
    }
    drop(sleeper);

    // PR_SET_MM_MAP: the size query works for everyone; changing the exe link needs a capability.
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one u32 to the pointer we pass.
    let r = unsafe { libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_MAP_SIZE, &mut size as *mut u32, 0, 0) };
    let cr = has_cap(40) || has_cap(21); // CAP_CHECKPOINT_RESTORE, CAP_SYS_ADMIN
    if r == 0 {
        let exe = if cr {
            "and the exe link can be set"
        } else {
            "and without CAP_CHECKPOINT_RESTORE the exe link comes from executing the program first"
        };
        line(true, true, "PR_SET_MM_MAP", format!("available (struct of {size} bytes), {exe}"));
    } else {
        line(
            false,
            true,
            "PR_SET_MM_MAP",
            format!(
                "{}: needs CONFIG_CHECKPOINT_RESTORE; restored processes would have a wrong mm layout",
                Errno::last().desc()
            ),
        );
    }

    // clone3 with set_tid: an invalid call tells ENOSYS (missing) from EINVAL (present).
    // SAFETY: a NULL args pointer with size 0 is rejected by the kernel before anything happens.
    let r = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
    let present = !(r < 0 && Errno::last() == Errno::ENOSYS);
    if present && cr {
        line(true, false, "clone3 set_tid", "available: restored processes keep their pid when it is free".into());
    } else if present {
        line(false, false, "clone3 set_tid", "needs CAP_CHECKPOINT_RESTORE: restored processes get a new pid".into());
    } else {
        line(false, false, "clone3 set_tid", "no clone3 in this kernel: restored processes get a new pid".into());
    }

    // The vdso layout, parsed as found.
    match procfs::read_smaps(me) {
        Ok(maps) => {
            let sp: Vec<String> = maps
                .iter()
                .filter(|m| m.is_vdso_or_vvar())
                .map(|m| format!("{} {}K", m.name, m.len() / 1024))
                .collect();
            let has_vdso = maps.iter().any(|m| m.name == "[vdso]");
            let gadget = maps.iter().find(|m| m.name == "[vdso]").and_then(|v| {
                let mut code = vec![0u8; v.len() as usize];
                mem::read_runs(me, &[(v.start, code.len())], &mut code).ok()?;
                arch::find_syscall_insn(&code, v.start)
            });
            let ok = has_vdso && gadget.is_some();
            let detail = if ok {
                format!("{}; moved as a whole on restore (same kernel build needed)", sp.join(", "))
            } else {
                "no vdso (vdso=0?): ckpt cannot run syscalls in a process".into()
            };
            line(ok, true, "vdso layout", detail);
        }
        Err(e) => line(false, true, "vdso layout", e.to_string()),
    }

    // userfaultfd: live migration needs it (with write tracking, below).
    // SAFETY: userfaultfd takes flags only; a returned fd is closed right away.
    let fd = unsafe {
        libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */)
    };
    if fd >= 0 {
        // SAFETY: fd is ours.
        unsafe { libc::close(fd as i32) };
        line(true, false, "userfaultfd", "available (for live migration)".into());
    } else {
        line(
            false,
            false,
            "userfaultfd",
            format!("{}: migrate --live will copy with the process stopped", Errno::last().desc()),
        );
    }

    match crate::ptrace::wp::available() {
        Ok(()) => line(
            true,
            false,
            "write tracking",
            "userfaultfd WP_ASYNC with PAGEMAP_SCAN: migrate --live, and ckpt of a process that runs on, copy memory while it runs".into(),
        ),
        Err(why) => {
            line(false, false, "write tracking", format!("{why}: migrate --live and ckpt copy with the process stopped"))
        }
    }

    match crate::engine::lazy::available() {
        Ok(()) => line(
            true,
            false,
            "lazy restore",
            "userfaultfd with fork, remap, remove and unmap events: rstrt --lazy runs a process before its memory is in".into(),
        ),
        Err(why) => line(false, false, "lazy restore", format!("{why}: rstrt --lazy is refused")),
    }

    match crate::res::tcpqueue::usable() {
        Ok(()) => line(
            true,
            false,
            "waiting connections",
            "BPF SYN cookies (bpf_sk_assign_tcp_reqsk): ckpt --tcp-established carries connections a listener had not accepted".into(),
        ),
        Err(why) => line(
            false,
            false,
            "waiting connections",
            format!("{why}: connections a listener had not accepted are left out"),
        ),
    }

    let pagemap = std::fs::File::open(format!("/proc/{me}/pagemap")).is_ok();
    let detail = if pagemap {
        "readable: only touched pages are stored"
    } else {
        "not readable: ckpt cannot tell touched pages"
    };
    line(pagemap, true, "pagemap", detail.into());
    out
}
