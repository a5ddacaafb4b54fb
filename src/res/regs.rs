//! REGS: the general-purpose registers (with fs/gs base) and the whole XSAVE area of a
//! thread: read from the frozen thread (with the kernel's syscall-restart and rseq rules
//! applied, as on its way back to user mode), written to the image, checked against this CPU
//! and loaded into the restored thread.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::arch::{self, Regs};
use crate::ptrace::mem;
use crate::ptrace::tracee::{RseqConf, Tracee};

/// A frozen thread's general registers, twice: as it resumes if it runs on (`live`: its
/// kernel restart block is still there, so an interrupted sleep goes on through
/// restart_syscall) and as the image holds them (`image`: a restored thread re-issues the
/// interrupted syscall). Both leave an rseq critical section at its abort handler.
pub struct Frozen {
    pub live: Regs,
    pub image: Regs,
}

pub fn collect(t: &Tracee, rseq: Option<RseqConf>) -> Result<Frozen> {
    let orig = t.regs()?;
    let fix = rseq_fixup(t.pid, rseq, &orig);
    let mut live = arch::restart_regs(&orig, true);
    let mut image = arch::restart_regs(&orig, false);
    if let Some(ip) = fix {
        live.rip = ip;
        image.rip = ip;
    }
    Ok(Frozen { live, image })
}

/// If the process was stopped inside an rseq critical section, the address it must resume at
/// (its abort handler), as the kernel would have done on the way back to user mode.
fn rseq_fixup(pid: i32, rseq: Option<RseqConf>, r: &Regs) -> Option<u64> {
    let conf = rseq?;
    let mut b = [0u8; 8];
    mem::read_runs(pid, &[(conf.ptr + 8, 8)], &mut b).ok()?;
    let cs = u64::from_le_bytes(b);
    if cs == 0 {
        return None;
    }
    let mut d = [0u8; 32];
    mem::read_runs(pid, &[(cs, 32)], &mut d).ok()?;
    let w = |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().unwrap_or([0; 8]));
    let (start, post, abort) = (w(8), w(16), w(24));
    (r.rip >= start && r.rip < start.wrapping_add(post)).then_some(abort)
}

#[derive(Clone)]
pub struct RegState {
    pub gpr: Regs,
    pub xsave: Vec<u8>,
}

impl std::fmt::Debug for RegState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RegState {{ rip: {:#x}, rsp: {:#x}, xsave: {} bytes }}",
            self.gpr.rip,
            self.gpr.rsp,
            self.xsave.len()
        )
    }
}

impl RegState {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        for v in arch::regs_to_array(&self.gpr) {
            e.u64(v);
        }
        e.bytes(&self.xsave);
        e.into_bytes()
    }

    pub fn decode(b: &[u8], at: u64) -> CrfResult<RegState> {
        let mut d = Dec::new(b, at, "REGS");
        let mut a = [0u64; 27];
        for v in a.iter_mut() {
            *v = d.u64()?;
        }
        let gpr = arch::regs_from_array(&a);
        let xsave = d.bytes()?.to_vec();
        // Empty, the 512-byte FXSAVE area of a CPU without XSAVE, or an XSAVE area.
        if !xsave.is_empty() && xsave.len() != crate::ptrace::arch::FXSAVE_LEN && xsave.len() < 576 {
            return Err(d.bad_at(at, format!("XSAVE area of {} bytes is too short", xsave.len())));
        }
        d.finish()?;
        Ok(RegState { gpr, xsave })
    }

    /// crfinfo's line.
    pub fn describe(&self) -> String {
        format!(
            "registers: rip {:#x} rsp {:#x} rax {:#x} fs_base {:#x}; xsave {} bytes (xcr0 {:#x})",
            self.gpr.rip,
            self.gpr.rsp,
            self.gpr.rax,
            self.gpr.fs_base,
            self.xsave.len(),
            self.xcr0()
        )
    }

    /// Loads the XSAVE state into the restored thread (before its last remote syscall).
    pub fn load_xstate(&self, t: &Tracee) -> Result<()> {
        if self.xsave.is_empty() { Ok(()) } else { t.set_xstate(&self.xsave) }
    }

    /// Loads the general registers, with no syscall left to restart: the thread resumes
    /// exactly where the image says.
    pub fn load_gprs(&self, t: &Tracee) -> Result<()> {
        let mut fin = self.gpr;
        fin.orig_rax = u64::MAX;
        t.set_regs(&fin)
    }

    /// XCR0 as saved in the XSAVE area: which state components the image carries.
    pub fn xcr0(&self) -> u64 {
        if self.xsave.len() == arch::FXSAVE_LEN {
            return 0;
        }
        let o = arch::XSTATE_XCR0_OFFSET;
        self.xsave.get(o..o + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
}

/// Refuses registers this CPU cannot load (an image from a CPU with more XSAVE features).
pub fn check_xstate(regs: &RegState) -> Result<()> {
    if regs.xsave.is_empty() || regs.xsave.len() == arch::FXSAVE_LEN {
        // x87 and SSE state: every x86_64 CPU has it.
        return Ok(());
    }
    if !arch::has_xsave() {
        return Err(Error::Refused("the image has XSAVE state but this CPU or kernel has no XSAVE".into()));
    }
    // SAFETY: XGETBV(0) reads XCR0; OSXSAVE (checked above) guarantees the instruction exists.
    let here = unsafe { core::arch::x86_64::_xgetbv(0) };
    let need = regs.xcr0();
    if need & !here != 0 {
        return Err(Error::Refused(format!(
            "the image's CPU state uses features {:#x} this CPU lacks (XCR0 here {here:#x}); restart it on the same kind of CPU",
            need & !here
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let a: [u64; 27] = std::array::from_fn(|i| i as u64);
        let mut xs = vec![0u8; 832];
        xs[arch::XSTATE_XCR0_OFFSET] = 7;
        let r = RegState { gpr: arch::regs_from_array(&a), xsave: xs.clone() };
        let d = RegState::decode(&r.encode(), 0).unwrap();
        assert_eq!(arch::regs_to_array(&d.gpr), a);
        assert_eq!(d.xsave, xs);
        assert_eq!(d.xcr0(), 7);
    }
}
