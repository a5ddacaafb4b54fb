//! Syscalls run inside a stopped tracee: load the registers, single-step it through a
//! `syscall` instruction (the gadget), and collect the result from the stop after it.
//! The tracee never executes anything but that one instruction, so any `0f 05` in its memory
//! serves as a gadget, even in the middle of another instruction.
//!
//! A single step, like the int3 that ends code we copy in, ends in a SIGTRAP the kernel forces
//! on the tracee; and a forced signal that the tracee blocks or ignores has its handler reset
//! to SIG_DFL and is unblocked. So stepping is only for a tracee whose SIGTRAP is neither
//! blocked nor ignored (`stepping`); otherwise each syscall stops at its entry and its exit,
//! which involves no signal.

use super::arch::{self, Regs};
use super::tracee::{Caught, Tracee};
use crate::error::{Error, Result};
use nix::errno::Errno;

pub struct Remote<'a> {
    pub t: &'a Tracee,
    pub gadget: u64,
    base: Regs,
    /// Signals that arrived while we drove the tracee; the caller delivers them later.
    pub held: Vec<Caught>,
    /// Whether a forced SIGTRAP leaves the tracee as it was: single steps and copied code
    /// are allowed (see the module's notes).
    pub stepping: bool,
}

/// Whether a tracee with this blocked mask and these ignored signals (SigIgn) takes a forced
/// SIGTRAP without its handler being reset.
pub fn traps_harmless(blocked: u64, ignored: u64) -> bool {
    let bit = 1u64 << (libc::SIGTRAP - 1);
    blocked & bit == 0 && ignored & bit == 0
}

impl<'a> Remote<'a> {
    /// `base` supplies the registers a syscall does not set (segments, flags). Stepping is off
    /// until the caller knows it is harmless.
    pub fn new(t: &'a Tracee, gadget: u64, base: Regs) -> Self {
        Remote { t, gadget, base, held: Vec::new(), stepping: false }
    }

    /// Runs a syscall and returns its raw result (negative errno on failure).
    pub fn raw(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        if !self.stepping {
            return self.raw_unstepped(nr, args);
        }
        let mut r = self.base;
        arch::set_syscall(&mut r, self.gadget, nr, &args);
        self.t.set_regs(&r)?;
        self.t.step_syscall(self.gadget).run(&mut self.held)?;
        Ok(arch::syscall_result(&self.t.regs()?))
    }

    /// Runs `len` bytes of code at `entry` that end in an int3, with `set` applied to the
    /// registers first; returns the registers at the int3. Only while `stepping`.
    pub fn run(&mut self, entry: u64, len: usize, set: impl FnOnce(&mut Regs)) -> Result<Regs> {
        if !self.stepping {
            return Err(Error::Proc("copied code run where a trap would change the process".into()));
        }
        let mut r = self.base;
        r.rip = entry;
        set(&mut r);
        self.t.set_regs(&r)?;
        self.t.cont_to_trap(entry + len as u64).run(&mut self.held)?;
        self.t.regs()
    }

    /// Runs a syscall; a failure names the syscall (`call`) and its object (`what`).
    pub fn call(&mut self, nr: i64, args: [u64; 6], call: &str, what: &str) -> Result<u64> {
        let r = self.raw(nr, args)?;
        self.checked(r, call, what)
    }

    fn checked(&self, r: i64, call: &str, what: &str) -> Result<u64> {
        if (-4095..0).contains(&r) {
            return Err(Error::sys(
                format!("{call} (in pid {})", self.t.pid),
                what.to_string(),
                Errno::from_raw(-r as i32),
            ));
        }
        Ok(r as u64)
    }

    /// Runs a syscall with a stop at its entry and one at its exit, not a single step. Resuming
    /// with anything but PTRACE_SINGLESTEP clears the kernel's single-step state, which a tracer
    /// that dies (PTRACE_DETACH would clear it too) leaves behind: the process would die of
    /// SIGTRAP at its next syscall. The last remote syscall of a checkpoint or a restore goes
    /// this way.
    fn raw_unstepped(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let mut r = self.base;
        arch::set_syscall(&mut r, self.gadget, nr, &args);
        self.t.set_regs(&r)?;
        self.t.to_syscall_stop().run(&mut self.held)?; // entry
        self.t.to_syscall_stop().run(&mut self.held)?; // exit
        Ok(arch::syscall_result(&self.t.regs()?))
    }

    /// [`Remote::call`] as the last remote syscall (see `raw_unstepped`).
    pub fn call_last(&mut self, nr: i64, args: [u64; 6], call: &str, what: &str) -> Result<u64> {
        let r = self.raw_unstepped(nr, args)?;
        self.checked(r, call, what)
    }

    /// Runs a syscall and stays at its exit stop; used for the last one of a restore, which
    /// unmaps the gadget itself (the tracee never returns to it).
    pub fn last(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.raw_unstepped(nr, args)
    }
}

/// Runs a list of syscalls in each of several tracees at once, all in one go per tracee: the
/// batch code (arch::batch_code) copied at `entry` in an executable area they share, each
/// tracee `ts[i].0` from its registers `ts[i].1` on its own list at `lists[i]` (`n[i]`
/// entries, written there by the caller; each result lands in its entry). Only where a
/// forced SIGTRAP is harmless to every one of them (see the module's notes): its int3 ends in
/// one. All are resumed before any is waited for.
pub fn batch_all(ts: &[(&Tracee, Regs)], entry: u64, lists: &[(u64, usize)], held: &mut Vec<Caught>) -> Result<()> {
    let end = entry + arch::batch_code().len() as u64;
    for ((t, base), &(list, n)) in ts.iter().zip(lists) {
        let mut r = *base;
        arch::set_batch(&mut r, entry, list, n);
        t.set_regs(&r)?;
    }
    for (t, _) in ts {
        t.cont_to_trap(end).start()?;
    }
    for (t, _) in ts {
        t.cont_to_trap(end).finish(held)?;
    }
    Ok(())
}

/// Runs one syscall in each of several tracees at once (`calls[i]` in `ts[i].0`, at `gadget`,
/// from its registers `ts[i].1`): all are resumed before any is waited for, so the cost is
/// about that of one, not the sum; each stops at its syscall's entry and exit (no single
/// step, which would leave state behind). Signals meanwhile go to `held`. The raw results.
pub fn syscall_all(
    ts: &[(&Tracee, Regs)],
    gadget: u64,
    calls: &[(i64, [u64; 6])],
    held: &mut Vec<Caught>,
) -> Result<Vec<i64>> {
    for ((t, base), (nr, args)) in ts.iter().zip(calls) {
        let mut r = *base;
        arch::set_syscall(&mut r, gadget, *nr, args);
        t.set_regs(&r)?;
    }
    for _entry_then_exit in 0..2 {
        for (t, _) in ts {
            t.to_syscall_stop().start()?;
        }
        for (t, _) in ts {
            t.to_syscall_stop().finish(held)?;
        }
    }
    ts.iter().map(|(t, _)| Ok(arch::syscall_result(&t.regs()?))).collect()
}
