//! SIGNALS: every handler with its flags, restorer and mask, the blocked mask and sigaltstack.
//! Collected with rt_sigaction/sigaltstack run inside the tracee (no /proc file shows handler
//! addresses); restored the same way.
//! PENDING: the signals queued and not yet delivered, with their siginfo, in a section of its
//! own that only a process with some has; requeued by the restored process to itself.

use crate::crf::{Dec, Enc, PAGE_SIZE, Result as CrfResult};
use crate::error::Result;
use crate::ptrace::Ctl;
use crate::ptrace::tracee::SIGINFO_LEN;

pub const NSIG: usize = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// Index i is signal i + 1.
    pub actions: Vec<SigAction>,
    pub blocked: u64,
    pub altstack_sp: u64,
    pub altstack_flags: u32,
    pub altstack_size: u64,
    /// Queued, undelivered signals (not in SIGNALS: in PENDING, when there are any).
    pub pending: Vec<Pending>,
}

/// One queued signal: its siginfo as the kernel holds it, and whether it was queued for the
/// whole process (kill) or for the thread (tgkill).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub shared: bool,
    pub info: [u8; SIGINFO_LEN],
}

impl Pending {
    pub fn signo(&self) -> i32 {
        i32::from_le_bytes([self.info[0], self.info[1], self.info[2], self.info[3]])
    }
}

/// A kernel struct sigaction (handler, flags, restorer, mask: 32 bytes) as read.
fn action(b: &[u8]) -> SigAction {
    let w = |i: usize| u64::from_le_bytes(b.get(i * 8..i * 8 + 8).and_then(|x| x.try_into().ok()).unwrap_or([0; 8]));
    SigAction { handler: w(0), flags: w(1), restorer: w(2), mask: w(3) }
}

fn settable(sig: usize) -> bool {
    sig != libc::SIGKILL as usize && sig != libc::SIGSTOP as usize
}

impl Signals {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(self.actions.len() as u32);
        for a in &self.actions {
            e.u64(a.handler).u64(a.flags).u64(a.restorer).u64(a.mask);
        }
        e.u64(self.blocked).u64(self.altstack_sp).u32(self.altstack_flags).u64(self.altstack_size);
        e.into_bytes()
    }

    /// crfinfo's line for SIGNALS.
    pub fn describe(&self) -> Vec<String> {
        let handled: Vec<String> =
            self.actions.iter().enumerate().filter(|(_, a)| a.handler > 1).map(|(i, _)| (i + 1).to_string()).collect();
        vec![format!(
            "signals:   handlers for [{}], blocked {:#x}, altstack {:#x}+{}",
            handled.join(" "),
            self.blocked,
            self.altstack_sp,
            self.altstack_size
        )]
    }

    /// crfinfo's line for PENDING, if any signal is.
    pub fn describe_pending(&self) -> Vec<String> {
        if self.pending.is_empty() {
            return vec![];
        }
        let sigs: Vec<String> = self.pending.iter().map(|p| p.signo().to_string()).collect();
        vec![format!("pending:   signals [{}]", sigs.join(" "))]
    }

    pub fn decode(b: &[u8], at: u64) -> CrfResult<Signals> {
        let mut d = Dec::new(b, at, "SIGNALS");
        let n = d.count(32)?;
        if n != NSIG {
            return Err(d.bad_at(at, format!("{n} signal actions, expected {NSIG}")));
        }
        let actions = (0..n)
            .map(|_| Ok(SigAction { handler: d.u64()?, flags: d.u64()?, restorer: d.u64()?, mask: d.u64()? }))
            .collect::<CrfResult<_>>()?;
        let s = Signals {
            actions,
            blocked: d.u64()?,
            altstack_sp: d.u64()?,
            altstack_flags: d.u32()?,
            altstack_size: d.u64()?,
            pending: Vec::new(),
        };
        d.finish()?;
        Ok(s)
    }

    /// Reads the handlers and the alternate stack through syscalls run in the tracee.
    pub fn collect(c: &mut Ctl, blocked: u64) -> Result<Signals> {
        let pid = c.pid();
        let out = c.scratch.addr;
        let at_once = c.scratch.exec && c.r.stepping;
        let actions = if at_once { Self::query_at_once(c)? } else { Self::query_each(c)? };
        c.sigaltstack(None, Some(out), "query")?;
        let b = c.scratch.get(pid, 0, 24)?;
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        // stack_t { void *ss_sp; int ss_flags; size_t ss_size; }
        Ok(Signals {
            actions,
            blocked,
            altstack_sp: w(0),
            altstack_flags: w(1) as u32,
            altstack_size: w(2),
            pending: Vec::new(),
        })
    }

    /// One rt_sigaction query per signal, each a remote syscall.
    fn query_each(c: &mut Ctl) -> Result<Vec<SigAction>> {
        let pid = c.pid();
        let out = c.scratch.addr;
        let mut actions = Vec::with_capacity(NSIG);
        for sig in 1..=NSIG {
            if !settable(sig) {
                actions.push(SigAction::default());
                continue;
            }
            c.rt_sigaction(sig, None, Some(out))?;
            actions.push(action(&c.scratch.get(pid, 0, 32)?));
        }
        Ok(actions)
    }

    /// All queries in one run of arch::sigactions_code inside the tracee, copied to the
    /// executable scratch area: the code at its start; in its second page, signal s's action
    /// (32 bytes) at offset 32 × s and its result (an i32) at 32 × 65 + 4 × s.
    fn query_at_once(c: &mut Ctl) -> Result<Vec<SigAction>> {
        let pid = c.pid();
        let code = crate::ptrace::arch::sigactions_code();
        let (acts, res) = (PAGE_SIZE, PAGE_SIZE + 32 * (NSIG + 1));
        let entry = c.scratch.put(pid, 0, code)?;
        let (base_acts, base_res) = (c.scratch.addr.offset(acts as u64), c.scratch.addr.offset(res as u64));
        c.r.run(entry.0, code.len(), |r| {
            r.r12 = base_acts.0;
            r.r13 = base_res.0;
        })?;
        let all = c.scratch.get(pid, acts, 32 * (NSIG + 1))?;
        let results = c.scratch.get(pid, res, 4 * (NSIG + 1))?;
        let mut actions = Vec::with_capacity(NSIG);
        for sig in 1..=NSIG {
            if !settable(sig) {
                actions.push(SigAction::default());
                continue;
            }
            let r = i32::from_le_bytes(results[4 * sig..4 * sig + 4].try_into().unwrap_or([0; 4]));
            if r != 0 {
                return Err(crate::error::Error::sys(
                    format!("rt_sigaction (in pid {pid})"),
                    format!("signal {sig}"),
                    nix::errno::Errno::from_raw(-r),
                ));
            }
            actions.push(action(&all[32 * sig..32 * sig + 32]));
        }
        Ok(actions)
    }

    /// The PENDING section's payload: u32 count, then per signal u32 queue (0 the thread's,
    /// 1 the process's) and the siginfo (a byte field of 128 bytes).
    pub fn encode_pending(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(self.pending.len() as u32);
        for p in &self.pending {
            e.u32(p.shared as u32).bytes(&p.info);
        }
        e.into_bytes()
    }

    pub fn decode_pending(b: &[u8], at: u64) -> CrfResult<Vec<Pending>> {
        let mut d = Dec::new(b, at, "PENDING");
        let n = d.count(8 + SIGINFO_LEN)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let queue = d.u32()?;
            let raw = d.bytes()?;
            let info: [u8; SIGINFO_LEN] =
                raw.try_into().map_err(|_| d.bad_at(at, format!("a siginfo of {} bytes", raw.len())))?;
            let p = Pending { shared: queue == 1, info };
            if queue > 1 || !(1..=NSIG as i32).contains(&p.signo()) {
                return Err(d.bad_at(at, format!("a pending signal {} in queue {queue}", p.signo())));
            }
            out.push(p);
        }
        d.finish()?;
        Ok(out)
    }

    /// Queues the pending signals again, sent by the process to itself (the only sender the
    /// kernel lets give any siginfo). Its signals must be blocked meanwhile: an unblocked one
    /// would otherwise be delivered at our next remote syscall.
    pub fn restore_pending(&self, c: &mut Ctl) -> Result<()> {
        let pid = c.pid();
        for p in &self.pending {
            let at = c.scratch.put(pid, 0, &p.info)?;
            c.queue_signal(p.signo(), at, (!p.shared).then_some(pid))?;
        }
        Ok(())
    }

    /// This process's own handlers and alternate stack, which a child it clones inherits.
    pub fn own() -> Signals {
        let mut actions = Vec::with_capacity(NSIG);
        for sig in 1..=NSIG {
            let mut k = [0u64; 4];
            // SAFETY: with a null new action, rt_sigaction only writes the current one (handler,
            // flags, restorer, 8-byte mask: 32 bytes) into `k`.
            let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<u8>(), k.as_mut_ptr(), 8) };
            // A signal we cannot ask about is set in the child whatever it holds.
            let a = if r == 0 {
                SigAction { handler: k[0], flags: k[1], restorer: k[2], mask: k[3] }
            } else {
                SigAction { handler: u64::MAX, ..Default::default() }
            };
            actions.push(a);
        }
        let mut st = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
        // SAFETY: sigaltstack with a null new stack only writes the current one into `st`.
        unsafe { libc::sigaltstack(std::ptr::null(), &mut st) };
        Signals {
            actions,
            blocked: 0,
            altstack_sp: st.ss_sp as u64,
            altstack_flags: st.ss_flags as u32,
            altstack_size: st.ss_size as u64,
            pending: Vec::new(),
        }
    }

    /// Installs handlers and the alternate stack (the mask is set last, by ptrace) in a child
    /// that inherited `from`: only what differs is set, each a remote syscall.
    pub fn restore(&self, c: &mut Ctl, from: &Signals) -> Result<()> {
        let pid = c.pid();
        for (i, a) in self.actions.iter().enumerate() {
            let sig = i + 1;
            if !settable(sig) || from.actions.get(i) == Some(a) {
                continue;
            }
            let mut e = Enc::new();
            e.u64(a.handler).u64(a.flags).u64(a.restorer).u64(a.mask);
            let p = c.scratch.put(pid, 0, e.as_slice())?;
            c.rt_sigaction(sig, Some(p), None)?;
        }
        // SS_ONSTACK is a state, not a setting. The inherited stack (our own) must not stay
        // when the process had none: a handler with SA_ONSTACK would run on it.
        let flags = self.altstack_flags & !(libc::SS_ONSTACK as u32);
        let disabled = |f: u32| f & libc::SS_DISABLE as u32 != 0;
        if !disabled(flags) || !disabled(from.altstack_flags) {
            let mut e = Enc::new();
            e.u64(self.altstack_sp).u64(flags as u64).u64(self.altstack_size);
            let p = c.scratch.put(pid, 0, e.as_slice())?;
            c.sigaltstack(Some(p), None, &format!("stack {:#x}", self.altstack_sp))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = Signals {
            actions: (0..NSIG as u64)
                .map(|i| SigAction { handler: i, flags: i * 2, restorer: 3, mask: 1 << i })
                .collect(),
            blocked: 0x1234,
            altstack_sp: 0x7000,
            altstack_flags: 0,
            altstack_size: 8192,
            pending: Vec::new(),
        };
        assert_eq!(Signals::decode(&s.encode(), 0).unwrap(), s);
    }

    #[test]
    fn pending_round_trip_and_bad_signals() {
        let mut info = [7u8; SIGINFO_LEN];
        info[..4].copy_from_slice(&34i32.to_le_bytes());
        let one = Pending { shared: true, info };
        let s = Signals { pending: vec![Pending { shared: false, ..one.clone() }, one], ..Default::default() };
        assert_eq!(Signals::decode_pending(&s.encode_pending(), 0).unwrap(), s.pending);
        for bad in [0i32, 65, -1] {
            let mut info = info;
            info[..4].copy_from_slice(&bad.to_le_bytes());
            let s = Signals { pending: vec![Pending { shared: false, info }], ..Default::default() };
            assert!(Signals::decode_pending(&s.encode_pending(), 0).is_err(), "signal {bad}");
        }
    }
}
