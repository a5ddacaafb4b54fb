//! CWD: the working directory (the paper's "size of CWD" + "CWD"): the template resource.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::calls::Calls;

/// crfinfo's line.
pub fn describe(cwd: &str) -> Vec<String> {
    vec![format!("cwd:       {cwd}")]
}

pub fn encode(cwd: &str) -> Vec<u8> {
    let mut e = Enc::new();
    e.str(cwd);
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<String> {
    let mut d = Dec::new(b, at, "CWD");
    let s = d.str()?;
    if !s.starts_with('/') {
        return Err(d.bad_at(at, format!("cwd {s:?} is not an absolute path")));
    }
    d.finish()?;
    Ok(s)
}

pub fn collect(pid: i32) -> Result<String> {
    let link = format!("/proc/{pid}/cwd");
    let p = std::fs::read_link(&link).map_err(|e| Error::io(&link, e))?;
    let s = p.to_str().ok_or_else(|| Error::Refused(format!("pid {pid}: cwd {p:?} is not UTF-8")))?;
    if s.ends_with(" (deleted)") {
        return Err(Error::Refused(format!("pid {pid}: its working directory {s} was deleted")));
    }
    Ok(s.to_string())
}

/// The restored process's working directory, in its list of calls.
pub fn calls(l: &mut Calls, cwd: &str) {
    l.chdir(cwd);
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        assert_eq!(super::decode(&super::encode("/tmp/x y"), 0).unwrap(), "/tmp/x y");
        assert!(super::decode(&super::encode("rel"), 0).is_err());
    }
}
