//! SIGNALS: every handler with its flags, restorer and mask, the blocked mask and sigaltstack.
//! Collected with rt_sigaction/sigaltstack run inside the tracee (no /proc file shows handler
//! addresses); restored the same way.
//! (Signals queued and not yet delivered: pending.rs.)

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::Result;
use crate::ptrace::calls::{Answers, Calls, Q};

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
}

/// A kernel struct sigaction (handler, flags, restorer, mask: 32 bytes) as read.
fn action(b: &[u8]) -> SigAction {
    let w = |i: usize| u64::from_le_bytes(b.get(i * 8..i * 8 + 8).and_then(|x| x.try_into().ok()).unwrap_or([0; 8]));
    SigAction { handler: w(0), flags: w(1), restorer: w(2), mask: w(3) }
}

/// The questions of [`Signals::ask`].
pub struct Asked {
    /// Per signal (1 to NSIG), its rt_sigaction; None for those none may set.
    actions: Vec<Option<Q>>,
    altstack: Q,
}

impl Asked {
    /// The process's handlers and alternate stack, as answered; `blocked` its signal mask.
    pub fn signals(&self, a: &Answers, blocked: u64) -> Result<Signals> {
        let mut actions = Vec::with_capacity(NSIG);
        for (sig, q) in (1..=NSIG).zip(&self.actions) {
            actions.push(match q {
                Some(q) => {
                    a.ok(*q, "rt_sigaction", &format!("signal {sig}"))?;
                    action(&a.bytes::<32>(*q))
                }
                None => SigAction::default(),
            });
        }
        // stack_t { void *ss_sp; int ss_flags; size_t ss_size; }
        a.ok(self.altstack, "sigaltstack", "query")?;
        let [sp, flags, size] = a.words(self.altstack);
        Ok(Signals { actions, blocked, altstack_sp: sp, altstack_flags: flags as u32, altstack_size: size })
    }
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
        };
        d.finish()?;
        Ok(s)
    }

    /// The questions for the handlers and the alternate stack, asked through syscalls run in
    /// the tracee; [`Asked::signals`] reads their answers.
    pub fn ask(l: &mut Calls) -> Asked {
        let actions = (1..=NSIG).map(|sig| settable(sig).then(|| l.ask_rt_sigaction(sig))).collect();
        Asked { actions, altstack: l.ask_sigaltstack() }
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
        }
    }

    /// The calls that install handlers and the alternate stack (the mask is set last, by
    /// ptrace) in a child that inherited `from`: only for what differs.
    pub fn calls(&self, l: &mut Calls, from: &Signals) {
        for (i, a) in self.actions.iter().enumerate() {
            let sig = i + 1;
            if !settable(sig) || from.actions.get(i) == Some(a) {
                continue;
            }
            let mut e = Enc::new();
            e.u64(a.handler).u64(a.flags).u64(a.restorer).u64(a.mask);
            l.rt_sigaction(sig, e.as_slice());
        }
        // SS_ONSTACK is a state, not a setting. The inherited stack (our own) must not stay
        // when the process had none: a handler with SA_ONSTACK would run on it.
        let flags = self.altstack_flags & !(libc::SS_ONSTACK as u32);
        let disabled = |f: u32| f & libc::SS_DISABLE as u32 != 0;
        if !disabled(flags) || !disabled(from.altstack_flags) {
            l.sigaltstack((self.altstack_sp, flags, self.altstack_size), &format!("stack {:#x}", self.altstack_sp));
        }
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
        };
        assert_eq!(Signals::decode(&s.encode(), 0).unwrap(), s);
    }
}
