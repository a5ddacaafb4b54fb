//! MDWE: memory-deny-write-execute (PR_SET_MDWE), which a hardened process sets on itself and
//! can never unset. A section of its own, written only when set, so that a crs that does not
//! know it refuses the image instead of dropping the protection.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use crate::ptrace::calls::{Answers, Calls, Q};

/// PR_MDWE_REFUSE_EXEC_GAIN | PR_MDWE_NO_INHERIT.
const KNOWN: u64 = 3;

/// The question for its PR_GET_MDWE flags.
pub fn ask(l: &mut Calls) -> Q {
    l.ask_prctl(libc::PR_GET_MDWE, 0)
}

/// The flags answered, 0 when the kernel has no MDWE (Linux before 6.3 answers EINVAL).
pub fn flags(a: &Answers, q: Q) -> u64 {
    a.raw(q).max(0) as u64
}

/// The payload: u64 flags, never 0.
pub fn encode(flags: u64) -> Vec<u8> {
    let mut e = Enc::new();
    e.u64(flags);
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<u64> {
    let mut d = Dec::new(b, at, "MDWE");
    let flags = d.u64()?;
    if flags == 0 || flags & !KNOWN != 0 {
        return Err(d.bad_at(at, format!("memory-deny-write-execute flags {flags:#x} are not valid")));
    }
    d.finish()?;
    Ok(flags)
}

/// crfinfo's line, if set.
pub fn describe(flags: u64) -> Vec<String> {
    match flags {
        0 => vec![],
        f => vec![format!("mdwe:      memory-deny-write-execute, flags {f:#x}")],
    }
}

/// Goes last: once set, the process can no longer make memory both writable and executable,
/// and it can never be unset.
pub fn restore(c: &mut Ctl, flags: u64) -> Result<()> {
    if flags == 0 {
        return Ok(());
    }
    match c.prctl_raw(libc::PR_SET_MDWE, [flags, 0, 0, 0])? {
        0 => Ok(()),
        r if r == -(libc::EINVAL as i64) => Err(Error::Refused(format!(
            "the process had memory-deny-write-execute (flags {flags:#x}), which this kernel cannot set (it needs Linux 6.3 or later); restart it on such a node"
        ))),
        r => Err(Error::sys(
            format!("prctl(PR_SET_MDWE) (in pid {})", c.pid()),
            format!("flags {flags:#x}"),
            nix::errno::Errno::from_raw(-r as i32),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(decode(&encode(1), 0).unwrap(), 1);
        assert_eq!(decode(&encode(3), 0).unwrap(), 3);
        assert!(decode(&encode(0), 0).is_err());
        assert!(decode(&encode(8), 0).is_err());
    }
}
