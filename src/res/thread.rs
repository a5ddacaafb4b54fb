//! THREAD: what belongs to one thread besides its registers (REGS), one section per thread in
//! the same order, the thread-group leader first: its tid, signal mask, alternate signal stack,
//! rseq registration, clear_child_tid address (set_tid_address), robust futex list, name, and
//! the signals queued for it alone. The leader's mask, stack and rseq are also in SIGNALS and
//! TASK, and its own queued signals in PENDING (as images before threads had them); a restore
//! takes the leader's from there and the other threads' from here.
//!
//! Collected from outside (ptrace, get_robust_list, /proc/PID/task) and, for the alternate
//! stack and the clear_child_tid address, by syscalls run in the thread itself. A restore
//! creates each thread with clone3 in the leader (with its tid, where the pid could be kept),
//! then sets all of this from inside it.

use super::pending::Pending;
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::RemoteAddr;
use crate::ptrace::calls::{Answers, Calls, Q};
use crate::ptrace::tracee::{RseqConf, SIGINFO_LEN};

pub const PR_GET_TID_ADDRESS: i32 = 40;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadInfo {
    pub tid: i32,
    pub sigmask: u64,
    /// sigaltstack: (sp, flags, size).
    pub altstack: (u64, u32, u64),
    pub rseq: Option<RseqConf>,
    /// The clear_child_tid address (0: none).
    pub clear_tid: u64,
    /// The robust futex list: (head, len); (0, 0) for none.
    pub robust: (u64, u64),
    pub comm: String,
    /// Signals queued for this thread alone (the leader's are in PENDING).
    pub pending: Vec<Pending>,
}

/// The thread's robust list head and length, from outside (get_robust_list needs the ptrace
/// access we have as its tracer).
pub fn robust_list(tid: i32) -> Result<(u64, u64)> {
    let (mut head, mut len) = (0u64, 0u64);
    // SAFETY: get_robust_list writes one pointer and one size_t through the two pointers.
    let rc = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head as *mut u64, &mut len as *mut u64) };
    if rc != 0 {
        return Err(Error::sys("get_robust_list", format!("thread {tid}"), nix::errno::Errno::last()));
    }
    Ok((head, len))
}

/// A thread's name from the 16 bytes PR_GET_NAME wrote (up to its NUL), as text: a name
/// that is not UTF-8 comes back with U+FFFD in place of the bytes that are not, cut to 15
/// bytes.
pub fn comm_from(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len()).min(15);
    let mut s = String::from_utf8_lossy(&b[..end]).into_owned();
    while s.len() > 15 {
        s.pop();
    }
    s
}

/// The question only the thread can answer beside its signals' (its alternate stack: see
/// res::signals): its clear_child_tid address, asked through a syscall run in it.
pub fn ask_clear_tid(l: &mut Calls) -> Q {
    l.ask_prctl_out(PR_GET_TID_ADDRESS, 8)
}

/// The answer to [`ask_clear_tid`].
pub fn clear_tid(a: &Answers, q: Q) -> Result<u64> {
    a.ok(q, "prctl(PR_GET_TID_ADDRESS)", "query")?;
    Ok(a.words::<1>(q)[0])
}

impl ThreadInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(self.tid as u32).u64(self.sigmask);
        e.u64(self.altstack.0).u32(self.altstack.1).u64(self.altstack.2);
        let r = self.rseq.unwrap_or_default();
        e.u64(r.ptr).u32(r.len).u32(r.sig);
        e.u64(self.clear_tid).u64(self.robust.0).u64(self.robust.1).str(&self.comm);
        e.u32(self.pending.len() as u32);
        for p in &self.pending {
            e.bytes(&p.info);
        }
        e.into_bytes()
    }

    pub fn decode(b: &[u8], at: u64) -> CrfResult<ThreadInfo> {
        let mut d = Dec::new(b, at, "THREAD");
        let tid = d.u32()? as i32;
        let sigmask = d.u64()?;
        let altstack = (d.u64()?, d.u32()?, d.u64()?);
        let r = RseqConf { ptr: d.u64()?, len: d.u32()?, sig: d.u32()? };
        let (clear_tid, robust) = (d.u64()?, (d.u64()?, d.u64()?));
        let comm = d.str()?;
        let n = d.count(4 + SIGINFO_LEN)?;
        let mut pending = Vec::with_capacity(n);
        for _ in 0..n {
            let raw = d.bytes()?;
            let info: [u8; SIGINFO_LEN] =
                raw.try_into().map_err(|_| d.bad_at(at, format!("a siginfo of {} bytes", raw.len())))?;
            let p = Pending { shared: false, info };
            if !(1..=super::signals::NSIG as i32).contains(&p.signo()) {
                return Err(d.bad_at(at, format!("a pending signal {}", p.signo())));
            }
            pending.push(p);
        }
        d.finish()?;
        if tid <= 0 || comm.len() > 15 || comm.contains('\0') {
            return Err(d.bad_at(at, format!("thread {tid} ({comm:?}) is not valid")));
        }
        Ok(ThreadInfo { tid, sigmask, altstack, rseq: (r.ptr != 0).then_some(r), clear_tid, robust, comm, pending })
    }

    /// crfinfo's line for one thread.
    pub fn describe(&self) -> String {
        format!(
            "thread:    tid {} ({}), blocked {:#x}, altstack {:#x}+{}, robust list {:#x}, clear_tid {:#x}{}",
            self.tid,
            self.comm,
            self.sigmask,
            self.altstack.0,
            self.altstack.2,
            self.robust.0,
            self.clear_tid,
            if self.pending.is_empty() { String::new() } else { format!(", {} signals pending", self.pending.len()) }
        )
    }

    /// What the restored thread alone has: its name, robust list, clear_child_tid and, but
    /// for the `leader` (whose TASK and SIGNALS restore them), its rseq registration and
    /// alternate signal stack; added to `l`, the thread's list of syscalls.
    pub fn calls(&self, l: &mut Calls, leader: bool) {
        l.set_name(&self.comm);
        l.set_tid_address(RemoteAddr(self.clear_tid));
        if self.robust != (0, 0) {
            l.set_robust_list(RemoteAddr(self.robust.0), self.robust.1);
        }
        if !leader {
            if let Some(r) = self.rseq {
                l.rseq(RemoteAddr(r.ptr), r.len, 0, r.sig, "rseq");
            }
            // A disabled stack (SS_DISABLE) is what a new thread has already.
            if self.altstack.1 & libc::SS_DISABLE as u32 == 0 {
                l.sigaltstack(self.altstack, "restore");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut info = [0u8; SIGINFO_LEN];
        info[..4].copy_from_slice(&10i32.to_le_bytes());
        let t = ThreadInfo {
            tid: 77,
            sigmask: 0x4000,
            altstack: (0x7000, 0, 8192),
            rseq: Some(RseqConf { ptr: 0x9000, len: 32, sig: 0x53053053 }),
            clear_tid: 0x7f00_0000_09d0,
            robust: (0x7f00_0000_09e0, 24),
            comm: "worker".into(),
            pending: vec![Pending { shared: false, info }],
        };
        assert_eq!(ThreadInfo::decode(&t.encode(), 0).unwrap(), t);
        let bad = ThreadInfo { tid: 0, ..t.clone() };
        assert!(ThreadInfo::decode(&bad.encode(), 0).is_err());
        let bad = ThreadInfo { comm: "a name much too long".into(), ..t };
        assert!(ThreadInfo::decode(&bad.encode(), 0).is_err());
    }
}
