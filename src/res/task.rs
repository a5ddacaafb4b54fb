//! TASK: per-process attributes that are neither memory nor files: umask, personality,
//! dumpable, parent-death signal, the rseq registration and the name (credentials: creds.rs;
//! memory-deny-write-execute: mdwe.rs).

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::calls::{Answers, Calls, Q};
use crate::ptrace::procfs;
use crate::ptrace::tracee::RseqConf;
use crate::ptrace::{Ctl, RemoteAddr};

const RSEQ_FLAG_UNREGISTER: u64 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Task {
    pub umask: u32,
    pub personality: u32,
    pub dumpable: u32,
    pub pdeathsig: u32,
    pub rseq: Option<RseqConf>,
}

/// The questions of [`Task::ask`].
pub struct Asked {
    personality: Q,
    dumpable: Q,
    pdeathsig: Q,
}

impl Asked {
    /// The task's attributes: as answered, its umask from its `status`, its `rseq`.
    pub fn task(&self, a: &Answers, pid: i32, status: &str, rseq: Option<RseqConf>) -> Result<Task> {
        let umask = procfs::status_field(status, "Umask")
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .ok_or_else(|| Error::Proc(format!("/proc/{pid}/status: no Umask line")))?;
        let personality = a.ok(self.personality, "personality", "0xffffffff")? as u32;
        let dumpable = a.ok(self.dumpable, "prctl(PR_GET_DUMPABLE)", "query")? as u32;
        a.ok(self.pdeathsig, "prctl(PR_GET_PDEATHSIG)", "query")?;
        Ok(Task { umask, personality, dumpable, pdeathsig: a.u32(self.pdeathsig), rseq })
    }
}

impl Task {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(self.umask).u32(self.personality).u32(self.dumpable).u32(self.pdeathsig);
        let r = self.rseq.unwrap_or_default();
        e.u64(r.ptr).u32(r.len).u32(r.sig);
        e.into_bytes()
    }

    /// crfinfo's line for TASK.
    pub fn describe(&self) -> Vec<String> {
        let rs = self.rseq.map_or("none".to_string(), |x| format!("{:#x}+{}", x.ptr, x.len));
        vec![format!("task:      umask {:03o}, personality {:#x}, rseq {rs}", self.umask, self.personality)]
    }

    pub fn decode(b: &[u8], at: u64) -> CrfResult<Task> {
        let mut d = Dec::new(b, at, "TASK");
        let mut t =
            Task { umask: d.u32()?, personality: d.u32()?, dumpable: d.u32()?, pdeathsig: d.u32()?, rseq: None };
        let r = RseqConf { ptr: d.u64()?, len: d.u32()?, sig: d.u32()? };
        t.rseq = (r.ptr != 0).then_some(r);
        if t.umask > 0o777 {
            return Err(d.bad_at(at, format!("umask {:o} is not valid", t.umask)));
        }
        // personality(0xffffffff) only asks; no process has that persona.
        if t.personality == u32::MAX {
            return Err(d.bad_at(at, "personality 0xffffffff is not valid (it means \"query\")".into()));
        }
        if t.pdeathsig > 64 {
            return Err(d.bad_at(at, format!("parent-death signal {} is not a signal", t.pdeathsig)));
        }
        d.finish()?;
        Ok(t)
    }

    /// The questions for what the process itself must tell: its personality, whether it is
    /// dumpable, its parent-death signal.
    pub fn ask(l: &mut Calls) -> Asked {
        Asked {
            personality: l.ask_personality(),
            dumpable: l.ask_prctl(libc::PR_GET_DUMPABLE, 0),
            pdeathsig: l.ask_prctl_out(libc::PR_GET_PDEATHSIG, 4),
        }
    }

    /// The calls that restore what needs no privilege; run once memory is in place (rseq
    /// needs its area).
    pub fn calls(&self, l: &mut Calls, comm: &str) {
        l.umask(self.umask);
        l.personality(self.personality);
        l.set_name(comm);
        l.prctl(libc::PR_SET_PDEATHSIG, [self.pdeathsig as u64, 0, 0, 0], "prctl(PR_SET_PDEATHSIG)", "restore");
        if let Some(r) = self.rseq {
            l.rseq(RemoteAddr(r.ptr), r.len, 0, r.sig, "rseq");
        }
    }

    /// dumpable goes after the credentials (a uid change resets it).
    pub fn restore_dumpable(&self, c: &mut Ctl) -> Result<()> {
        let v = if self.dumpable == 0 { 0 } else { 1 };
        c.prctl(libc::PR_SET_DUMPABLE, [v, 0, 0, 0], "prctl(PR_SET_DUMPABLE)", "restore").map(drop)
    }
}

/// Unregisters the rseq area a forked child inherited (its memory is about to be replaced).
pub fn unregister_rseq(c: &mut Ctl, r: RseqConf) -> Result<()> {
    c.rseq(RemoteAddr(r.ptr), r.len, RSEQ_FLAG_UNREGISTER, r.sig, "rseq(UNREGISTER)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = Task {
            umask: 0o027,
            personality: 0x40000,
            dumpable: 1,
            pdeathsig: 9,
            rseq: Some(RseqConf { ptr: 0x7f00, len: 32, sig: 0x53053053 }),
        };
        assert_eq!(Task::decode(&t.encode(), 0).unwrap(), t);
        let t = Task { rseq: None, ..t };
        assert_eq!(Task::decode(&t.encode(), 0).unwrap(), t);
    }
}
