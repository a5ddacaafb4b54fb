//! THP: PR_SET_THP_DISABLE, a process's opt-out of transparent huge pages (inherited by its
//! children and kept across exec; set by programs such as databases that suffer from THP's
//! latency). A section of its own, written only when set, so that a crs that does not know it
//! refuses such an image instead of dropping the setting.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::Result;
use crate::ptrace::calls::{Answers, Calls, Q};

/// crfinfo's line, if disabled.
pub fn describe(disabled: bool) -> Vec<String> {
    match disabled {
        true => vec!["thp:       transparent huge pages disabled (PR_SET_THP_DISABLE)".into()],
        false => vec![],
    }
}

/// The payload: u32 flags, 1 (disabled) the only one.
pub fn encode() -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(1);
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<()> {
    let mut d = Dec::new(b, at, "THP");
    let flags = d.u32()?;
    if flags != 1 {
        return Err(d.bad_at(at, format!("flags {flags:#x} are not valid")));
    }
    d.finish()
}

/// The question whether the frozen process has transparent huge pages disabled.
pub fn ask(l: &mut Calls) -> Q {
    l.ask_prctl(libc::PR_GET_THP_DISABLE, 0)
}

/// The answer to [`ask`].
pub fn disabled(a: &Answers, q: Q) -> Result<bool> {
    Ok(a.ok(q, "prctl(PR_GET_THP_DISABLE)", "query")? != 0)
}

/// The call that disables transparent huge pages in the restored process, if its image says so.
pub fn calls(l: &mut Calls, disabled: bool) {
    if disabled {
        l.prctl(libc::PR_SET_THP_DISABLE, [1, 0, 0, 0], "prctl(PR_SET_THP_DISABLE)", "restore");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        assert!(super::decode(&super::encode(), 0).is_ok());
        assert!(super::decode(&[2, 0, 0, 0], 0).is_err());
    }
}
