//! RLIMITS: the process's resource limits (getrlimit/setrlimit), soft and hard, all of them.
//! Read from outside with prlimit64; set back from inside the restored process once it has its
//! user's ids, so that a user's image can never raise a hard limit beyond what that user may:
//! such an image is refused by name rather than restored with lower limits.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;

/// RLIMIT_CPU .. RLIMIT_RTTIME, in the kernel's order.
pub const NAMES: [&str; 16] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

/// One limit: (soft, hard), u64::MAX for unlimited.
pub type Limit = (u64, u64);

fn get(pid: i32, r: usize) -> Result<Limit> {
    let mut old = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit64 with no new limit only writes the old one into `old`.
    let rc = unsafe { libc::prlimit64(pid, r as libc::__rlimit_resource_t, std::ptr::null(), &mut old) };
    if rc != 0 {
        return Err(Error::sys(format!("prlimit64({})", NAMES[r]), format!("pid {pid}"), nix::errno::Errno::last()));
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// Every limit of process `pid` (0: ourselves): with prlimit64, or, when that is not allowed
/// (another user's process and no CAP_SYS_RESOURCE, as root in some containers), from
/// /proc/PID/limits, which anyone may read.
pub fn collect(pid: i32) -> Result<Vec<Limit>> {
    match (0..NAMES.len()).map(|r| get(pid, r)).collect() {
        Err(Error::Sys { errno: nix::errno::Errno::EPERM, .. }) => from_proc(pid),
        r => r,
    }
}

/// /proc/PID/limits: a header, then one line per limit in the kernel's order, its soft and
/// hard values ("unlimited" or a number) in the columns after the 25 of its name.
fn from_proc(pid: i32) -> Result<Vec<Limit>> {
    let path = format!("/proc/{pid}/limits");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value = |w: Option<&str>| match w {
        Some("unlimited") => Some(u64::MAX),
        Some(n) => n.parse().ok(),
        None => None,
    };
    let out: Option<Vec<Limit>> = text
        .lines()
        .skip(1)
        .take(NAMES.len())
        .map(|l| {
            let mut w = l.get(26..)?.split_whitespace();
            Some((value(w.next())?, value(w.next())?))
        })
        .collect();
    out.filter(|v| v.len() == NAMES.len()).ok_or_else(|| Error::Proc(format!("{path}: a format crs does not know")))
}

pub fn encode(limits: &[Limit]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(limits.len() as u32);
    for &(soft, hard) in limits {
        e.u64(soft).u64(hard);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Limit>> {
    let mut d = Dec::new(b, at, "RLIMITS");
    let n = d.count(16)?;
    if n != NAMES.len() {
        return Err(d.bad_at(at, format!("{n} resource limits, expected {}", NAMES.len())));
    }
    let mut out = Vec::with_capacity(n);
    for name in NAMES {
        let (soft, hard) = (d.u64()?, d.u64()?);
        if soft > hard {
            return Err(d.bad_at(at, format!("{name}: soft limit {soft} above the hard limit {hard}")));
        }
        out.push((soft, hard));
    }
    d.finish()?;
    Ok(out)
}

fn show(v: u64) -> String {
    if v == u64::MAX { "unlimited".into() } else { v.to_string() }
}

/// crfinfo's line: the limits that are not unlimited.
pub fn describe(limits: &[Limit]) -> Vec<String> {
    if limits.is_empty() {
        return vec![];
    }
    let set: Vec<String> = NAMES
        .iter()
        .zip(limits)
        .filter(|(_, l)| **l != (u64::MAX, u64::MAX))
        .map(|(n, &(s, h))| format!("{} {}/{}", n.trim_start_matches("RLIMIT_").to_lowercase(), show(s), show(h)))
        .collect();
    vec![format!("limits:    {} (soft/hard; others unlimited)", set.join(", "))]
}

/// Sets, inside the restored process (with its user's ids by now), every limit that differs
/// from what it inherited from us. A hard limit its user may not raise refuses the restore.
pub fn restore(c: &mut Ctl, limits: &[Limit]) -> Result<()> {
    let ours = collect(0)?;
    for (r, (&want, &have)) in limits.iter().zip(&ours).enumerate() {
        if want == have {
            continue;
        }
        let mut e = Enc::new();
        e.u64(want.0).u64(want.1);
        let at = c.scratch.put(c.pid(), 0, e.as_slice())?;
        match c.prlimit_raw(r as u32, at)? {
            0 => {}
            e if e == -(libc::EPERM as i64) => {
                return Err(Error::Refused(format!(
                    "the process had {} hard limit {}, above the {} it may raise to here (the restorer's)",
                    NAMES[r],
                    show(want.1),
                    show(have.1)
                )));
            }
            e => {
                return Err(Error::sys(
                    format!("prlimit64({}) (in pid {})", NAMES[r], c.pid()),
                    format!("{}/{}", show(want.0), show(want.1)),
                    nix::errno::Errno::from_raw(-e as i32),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_limits_read_as_prlimit64_does() {
        let me = std::process::id() as i32;
        assert_eq!(from_proc(me).unwrap(), (0..NAMES.len()).map(|r| get(me, r).unwrap()).collect::<Vec<_>>());
    }

    #[test]
    fn round_trip_and_bad_limits() {
        let ours = collect(0).unwrap();
        assert_eq!(decode(&encode(&ours), 0).unwrap(), ours);
        let mut bad = ours.clone();
        bad[7] = (10, 5);
        assert!(decode(&encode(&bad), 0).is_err());
        assert!(decode(&encode(&ours[..3]), 0).is_err());
    }
}
