//! SECCOMP: the process's no_new_privs bit and its seccomp filters (systemd's
//! SystemCallFilter, container runtimes, sandboxes), each as its BPF program with its flags,
//! oldest first. Read with PTRACE_SECCOMP_GET_FILTER and PTRACE_GET_SECCOMP_METADATA (root: it
//! needs CAP_SYS_ADMIN); every thread must have the same chain (a restore installs it in the
//! leader with SECCOMP_FILTER_FLAG_TSYNC, so the threads share it as before). While crs traces
//! a process its filters are suspended (PTRACE_O_SUSPEND_SECCOMP), so the syscalls crs makes
//! it run are not filtered; they apply again once it is let go.
//!
//! Refused by name: strict mode (SECCOMP_MODE_STRICT), a filter that hands syscalls to a
//! supervisor (SECCOMP_RET_USER_NOTIF: the supervisor and its listener are not in the image),
//! and threads with different filters.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::tracee::ptrace_raw;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seccomp {
    pub no_new_privs: bool,
    /// (flags, program as sock_filter instructions, 8 bytes each), oldest first.
    pub filters: Vec<(u32, Vec<u64>)>,
}

impl Seccomp {
    pub fn is_empty(&self) -> bool {
        !self.no_new_privs && self.filters.is_empty()
    }
}

const PTRACE_SECCOMP_GET_FILTER: u32 = 0x420c;
const PTRACE_GET_SECCOMP_METADATA: u32 = 0x420d;
/// The most instructions a filter has (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;
/// SECCOMP_FILTER_FLAG_LOG, the one flag a filter keeps that the kernel reports.
const FLAG_LOG: u32 = 2;
const RET_USER_NOTIF: u32 = 0x7fc0_0000;

/// Whether crs may suspend the filters of the processes it traces (PTRACE_O_SUSPEND_SECCOMP
/// needs CAP_SYS_ADMIN in the initial user namespace, and a tracer under no filter itself):
/// then every trace asks for it.
pub fn can_suspend() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |k: &str| crate::ptrace::procfs::status_field(&status, k).unwrap_or_default().to_string();
        let sys_admin = u64::from_str_radix(&field("CapEff"), 16).is_ok_and(|c| c & (1 << 21) != 0);
        let init_ns = std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
        sys_admin && init_ns && field("Seccomp") == "0"
    })
}

/// The filters of thread `tid` (traced and stopped), oldest first.
fn chain(tid: i32) -> Result<Vec<(u32, Vec<u64>)>> {
    let mut out = Vec::new();
    for i in 0.. {
        let n = match ptrace_raw(PTRACE_SECCOMP_GET_FILTER, tid, i, 0, "PTRACE_SECCOMP_GET_FILTER") {
            Ok(n) => n as usize,
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => break,
            Err(e) => return Err(e),
        };
        if n == 0 || n > MAX_INSNS {
            return Err(Error::Proc(format!("pid {tid}: seccomp filter {i} of {n} instructions")));
        }
        let mut prog = vec![0u64; n];
        ptrace_raw(PTRACE_SECCOMP_GET_FILTER, tid, i, prog.as_mut_ptr() as usize, "PTRACE_SECCOMP_GET_FILTER")?;
        let mut meta = [i as u64, 0u64];
        ptrace_raw(
            PTRACE_GET_SECCOMP_METADATA,
            tid,
            std::mem::size_of_val(&meta),
            meta.as_mut_ptr() as usize,
            "PTRACE_GET_SECCOMP_METADATA",
        )?;
        out.push((meta[1] as u32 & FLAG_LOG, prog));
    }
    // Index 0 is the first installed (the kernel counts from the oldest).
    Ok(out)
}

/// What `pid` (its threads `tids`, all traced and stopped) has: `status` is its
/// /proc/PID/status (strict mode, and filters crs may not read, were refused by
/// engine::blockers). Reasons against it go to `why`.
pub fn collect(pid: i32, tids: &[i32], status: &str, why: &mut Vec<String>) -> Result<Seccomp> {
    let field = |k: &str| crate::ptrace::procfs::status_field(status, k).unwrap_or_default();
    let mut s = Seccomp { no_new_privs: field("NoNewPrivs") == "1", filters: Vec::new() };
    if field("Seccomp") != "2" || !can_suspend() {
        return Ok(s);
    }
    s.filters = chain(pid)?;
    for &t in tids.iter().filter(|&&t| t != pid) {
        if chain(t)? != s.filters {
            why.push(format!("its thread {t} has other seccomp filters than the leader, which crs does not restore"));
        }
    }
    if s.filters.iter().any(|f| f.1.iter().any(|&i| notifies(i))) {
        why.push("a seccomp filter of it hands syscalls to a supervisor (SECCOMP_RET_USER_NOTIF), which crs does not restore".into());
    }
    Ok(s)
}

/// Whether instruction `i` (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k) returns
/// SECCOMP_RET_USER_NOTIF.
fn notifies(i: u64) -> bool {
    let code = (i & 0xffff) as u16;
    let k = (i >> 32) as u32;
    // BPF_RET | BPF_K
    code == 0x06 && k & 0xffff_0000 == RET_USER_NOTIF
}

/// Gives the child `s`: no_new_privs, then each filter, oldest first, to all its threads
/// (`threads`: it has others) at once. Needs root (the filters must not apply to the syscalls
/// the restore still makes it run: PTRACE_O_SUSPEND_SECCOMP).
pub fn restore(c: &mut crate::ptrace::Ctl, s: &Seccomp, threads: bool) -> Result<()> {
    if s.no_new_privs {
        c.prctl(libc::PR_SET_NO_NEW_PRIVS, [1, 0, 0, 0], "prctl(PR_SET_NO_NEW_PRIVS)", "the process")?;
    }
    if s.filters.is_empty() {
        return Ok(());
    }
    if !can_suspend() {
        return Err(Error::Permission(
            "the image's process runs under seccomp filters, which only root may restore (PTRACE_O_SUSPEND_SECCOMP): run rstrt as root"
                .into(),
        ));
    }
    const FLAG_TSYNC: u32 = 1;
    for (i, (flags, prog)) in s.filters.iter().enumerate() {
        // struct sock_fprog { u16 len; (pad); struct sock_filter *filter; }, the program after it.
        let at = c.scratch.addr.0;
        let mut b = Vec::with_capacity(16 + prog.len() * 8);
        b.extend_from_slice(&(prog.len() as u64).to_le_bytes());
        b.extend_from_slice(&(at + 16).to_le_bytes());
        for insn in prog {
            b.extend_from_slice(&insn.to_le_bytes());
        }
        let fprog = c.scratch.put(c.pid(), 0, &b)?;
        let flags = flags | if threads { FLAG_TSYNC } else { 0 };
        let what = format!("seccomp filter {} of {} ({} instructions)", i + 1, s.filters.len(), prog.len());
        let r = c.seccomp_filter_raw(flags, fprog)?;
        // With TSYNC, a positive result is the thread that could not take it.
        if r != 0 {
            let why = if r > 0 {
                format!("its thread {r} could not take it")
            } else {
                nix::errno::Errno::from_raw(-r as i32).desc().to_string()
            };
            return Err(Error::not_here(format!("{what} cannot be installed"), format!("seccomp: {why}")));
        }
    }
    Ok(())
}

pub fn encode(s: &Seccomp) -> Vec<u8> {
    let mut e = Enc::new();
    e.u8(s.no_new_privs as u8).u32(s.filters.len() as u32);
    for (flags, prog) in &s.filters {
        e.u32(*flags).u32(prog.len() as u32);
        for i in prog {
            e.u64(*i);
        }
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Seccomp> {
    let mut d = Dec::new(b, at, "SECCOMP");
    let nnp = d.u8()?;
    let mut s = Seccomp { no_new_privs: nnp == 1, filters: Vec::new() };
    let n = d.count(8)?;
    for _ in 0..n {
        let rec = d.offset();
        let flags = d.u32()?;
        let m = d.count(8)?;
        let prog = (0..m).map(|_| d.u64()).collect::<CrfResult<Vec<u64>>>()?;
        if flags & !FLAG_LOG != 0 || m == 0 || m > MAX_INSNS || prog.iter().any(|&i| notifies(i)) {
            return Err(d.bad_at(rec, format!("seccomp filter of {m} instructions, flags {flags:#x}")));
        }
        s.filters.push((flags, prog));
    }
    if nnp > 1 {
        return Err(d.bad_at(0, format!("no_new_privs {nnp}")));
    }
    d.finish()?;
    Ok(s)
}

pub fn describe(s: &Seccomp) -> Vec<String> {
    let filters: Vec<String> = s
        .filters
        .iter()
        .map(|(f, p)| format!("{} instructions{}", p.len(), if f & FLAG_LOG != 0 { " (log)" } else { "" }))
        .collect();
    vec![format!(
        "seccomp:   no_new_privs {}, {} filters{}{}",
        s.no_new_privs as u8,
        s.filters.len(),
        if filters.is_empty() { "" } else { ": " },
        filters.join(", ")
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_a_supervisor_is_refused() {
        let s =
            Seccomp { no_new_privs: true, filters: vec![(0, vec![0x20, 0x7fff_0000_0000_0006]), (FLAG_LOG, vec![6])] };
        assert_eq!(decode(&encode(&s), 0).unwrap(), s);
        let notify = Seccomp { no_new_privs: false, filters: vec![(0, vec![(RET_USER_NOTIF as u64) << 32 | 6])] };
        assert!(decode(&encode(&notify), 0).is_err());
    }
}
