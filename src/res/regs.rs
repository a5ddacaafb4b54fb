//! REGS: the general-purpose registers (with fs/gs base) and the whole XSAVE area.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::arch::{self, Regs};

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
