//! CAPS: the capability sets and securebits of a process, when they are not the default ones
//! (a container's root with a reduced bounding set, a unit's CapabilityBoundingSet=, a root
//! daemon that dropped what it does not need, `capsh --drop`).
//!
//! What comes back, and only ever less than the restorer has:
//! - the bounding set, for every process (a restriction: never silently lifted);
//! - for a process whose every uid is 0, also the permitted, effective, inheritable and
//!   ambient sets and the securebits, set as the last thing before it runs, so that the
//!   restore itself keeps root's powers until then;
//! - for a user's process (a unit's User= with AmbientCapabilities=), the same, but only when
//!   root restores it with `rstrt --user-caps` (`grant`: root vouches for the image, which its
//!   owner could have forged): its child keeps its permitted set across the uid
//!   change (PR_SET_KEEPCAPS, with no effective capability meanwhile), and it is cut to the
//!   image's at the end. An ordinary user's rstrt and restartd refuse such an image: that
//!   would be granting privilege on an image's word.
//!
//! A process whose uids mix 0 and others with capabilities or securebits is refused by
//! engine::blockers.

use super::head::Header;
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub bnd: u64,
    pub prm: u64,
    pub eff: u64,
    pub inh: u64,
    pub amb: u64,
    pub securebits: u32,
}

/// Every capability this kernel knows (/proc/sys/kernel/cap_last_cap).
pub fn all_known() -> u64 {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63);
    if last == 63 { u64::MAX } else { (1u64 << (last + 1)) - 1 }
}

fn hex(status: &str, k: &str) -> u64 {
    crate::ptrace::procfs::status_field(status, k).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0)
}

/// The process's sets from its /proc/PID/status, and its securebits; None when they are the
/// default ones (the whole bounding set, no securebits, and root's every capability or a user's
/// none), which a restore gives anyway.
pub fn collect(status: &str, securebits: u32, all_root: bool) -> Option<Caps> {
    let c = Caps {
        bnd: hex(status, "CapBnd"),
        prm: hex(status, "CapPrm"),
        eff: hex(status, "CapEff"),
        inh: hex(status, "CapInh"),
        amb: hex(status, "CapAmb"),
        securebits,
    };
    let full = all_known();
    let sets_default = if all_root {
        c.prm == full && c.eff == full && c.inh == 0 && c.amb == 0
    } else {
        c.prm | c.eff | c.inh | c.amb == 0
    };
    (c.bnd != full || securebits != 0 || !sets_default).then_some(c)
}

fn bits(v: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |b| v & (1u64 << b) != 0)
}

/// The bounding set, dropped to the image's in the child (which is still root: PR_CAPBSET_DROP
/// needs CAP_SETPCAP). A capability this kernel does not know cannot be in it here anyway.
/// Restored by a user, the child has the restorer's bounding set, which it cannot narrow: the
/// restore is refused if that has a capability the image's had not (it may have fewer: the
/// restorer's own restriction). A user in a user namespace of its own (rstrt --pidns), whose
/// bounding set there is full, drops from it as root does.
pub fn restore_bounding(c: &mut Ctl, caps: &Caps) -> Result<()> {
    if !crate::res::creds::is_root() && !crate::res::creds::user_with_caps() {
        let own = hex(&std::fs::read_to_string("/proc/self/status").unwrap_or_default(), "CapBnd");
        if own & !caps.bnd != 0 {
            return Err(Error::Permission(format!(
                "the image's process had a narrower capability bounding set ({:016x}) than yours ({own:016x}), which only root may restore: run rstrt as root",
                caps.bnd
            )));
        }
        return Ok(());
    }
    for cap in bits(all_known() & !caps.bnd) {
        c.prctl(libc::PR_CAPBSET_DROP, [cap as u64, 0, 0, 0], "prctl(PR_CAPBSET_DROP)", &format!("capability {cap}"))?;
    }
    Ok(())
}

/// Whether a task whose /proc status is `status` has the sets and securebits [`restore_root`]
/// would give it already (read without a remote syscall; its securebits are ours, which it
/// inherited).
pub fn already(status: &str, caps: &Caps, kept: bool) -> bool {
    let same = [("CapPrm", caps.prm), ("CapEff", caps.eff), ("CapInh", caps.inh), ("CapAmb", caps.amb)]
        .iter()
        .all(|&(k, v)| hex(status, k) == v);
    // SAFETY: prctl(PR_GET_SECUREBITS) takes no pointers.
    let ours = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    same && caps.securebits == 0 && ours == 0 && !kept
}

/// A root process's own sets and securebits, as the last thing before it runs: the
/// inheritable set, then each ambient capability, the securebits, and the permitted and
/// effective sets (which may lack what the earlier steps needed).
/// `kept`: a user's process whose permitted set was kept across the uid change (see the
/// module's notes), whose effective set is raised first (securebits need CAP_SETPCAP) and
/// whose securebits are always set (its PR_SET_KEEPCAPS goes).
pub fn restore_root(c: &mut Ctl, caps: &Caps, kept: bool) -> Result<()> {
    let mut now = c.capget()?;
    if kept {
        (now[0], now[3]) = (now[1], now[4]);
    }
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    // [eff, prm, inh] of the low words, then of the high ones.
    now[2] = lo(caps.inh);
    now[5] = hi(caps.inh);
    c.capset(now)?;
    for cap in bits(caps.amb) {
        let what = format!("ambient capability {cap}");
        c.prctl(
            libc::PR_CAP_AMBIENT,
            [libc::PR_CAP_AMBIENT_RAISE as u64, cap as u64, 0, 0],
            "prctl(PR_CAP_AMBIENT)",
            &what,
        )?;
    }
    if caps.securebits != 0 || kept {
        c.prctl(libc::PR_SET_SECUREBITS, [caps.securebits as u64, 0, 0, 0], "prctl(PR_SET_SECUREBITS)", "the process")?;
    }
    c.capset([lo(caps.eff), lo(caps.prm), lo(caps.inh), hi(caps.eff), hi(caps.prm), hi(caps.inh)])
}

/// Checks the sets in task `tid`'s /proc status (`status`, read after [`restore_root`]):
/// exactly the image's, or an error that names the set.
pub fn verify(status: &str, tid: i32, caps: &Caps, all_root: bool) -> Result<()> {
    let mut want = vec![("CapBnd", caps.bnd & all_known())];
    if all_root {
        want.extend([("CapPrm", caps.prm), ("CapEff", caps.eff), ("CapInh", caps.inh), ("CapAmb", caps.amb)]);
    }
    for (k, v) in want {
        if hex(status, k) != v {
            return Err(Error::Proc(format!(
                "pid {tid}: {k} is {:016x} after the restore, not the image's {v:016x}",
                hex(status, k)
            )));
        }
    }
    Ok(())
}

/// While alive, this thread (only this one: raw syscalls) has no effective capability but
/// those of `keep` it has; the others stay permitted, and come back on drop. The restorer,
/// root, makes what another user's image asks for (sockets) this way: the kernel then checks
/// it as it would have the image's process, not root.
pub struct Lowered {
    saved: Option<[u32; 6]>,
}

const CAP_HEADER: [u32; 2] = [0x2008_0522, 0]; // _LINUX_CAPABILITY_VERSION_3, this thread

impl Lowered {
    pub fn to(keep: u64) -> Result<Lowered> {
        let mut data = [0u32; 6];
        // SAFETY: capget reads the 8-byte header and writes two 12-byte data records.
        if unsafe { libc::syscall(libc::SYS_capget, CAP_HEADER.as_ptr(), data.as_mut_ptr()) } != 0 {
            return Err(Error::sys("capget", "rstrt", nix::errno::Errno::last()));
        }
        let saved = data;
        data[0] &= keep as u32;
        data[3] &= (keep >> 32) as u32;
        // SAFETY: capset reads the header and the two data records; lowering the effective set
        // is always allowed, and affects only this thread.
        if unsafe { libc::syscall(libc::SYS_capset, CAP_HEADER.as_ptr(), data.as_ptr()) } != 0 {
            return Err(Error::sys("capset", "rstrt", nix::errno::Errno::last()));
        }
        Ok(Lowered { saved: Some(saved) })
    }

    /// Nothing lowered.
    pub fn none() -> Lowered {
        Lowered { saved: None }
    }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            // SAFETY: as in `to`; the effective set back within the unchanged permitted one.
            unsafe { libc::syscall(libc::SYS_capset, CAP_HEADER.as_ptr(), saved.as_ptr()) };
        }
    }
}

/// Whether the image says its process, not root's, had capabilities or securebits.
pub fn claims(caps: &Caps, h: &Header) -> bool {
    !all_root(h) && (caps.prm | caps.eff | caps.inh | caps.amb != 0 || caps.securebits != 0)
}

/// Refuses an image of a process that is not root's which says it had capabilities or
/// securebits, unless `grant` (root restoring with rstrt --user-caps, vouching for the image):
/// otherwise that would be granting privilege on an image's word. An image whose uids mix 0 and others is refused whatever.
pub fn check_claims(caps: &Caps, h: &Header, grant: bool) -> Result<()> {
    if !claims(caps, h) {
        return Ok(());
    }
    if h.uids.contains(&0) {
        return Err(Error::Permission(format!(
            "the image says its process, whose uids mix 0 and others ({:?}), had capabilities or securebits, which crs never restores",
            h.uids
        )));
    }
    if !grant {
        return Err(Error::Permission(format!(
            "the image says its process (uid {}) had capabilities or securebits, which only root gives back, with rstrt --user-caps, for an image it trusts",
            h.uids[0]
        )));
    }
    Ok(())
}

/// Whether every uid of `h` is 0.
pub fn all_root(h: &Header) -> bool {
    h.uids.iter().all(|&u| u == 0)
}

pub fn encode(c: &Caps) -> Vec<u8> {
    let mut e = Enc::new();
    e.u64(c.bnd).u64(c.prm).u64(c.eff).u64(c.inh).u64(c.amb).u32(c.securebits);
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Option<Caps>> {
    let mut d = Dec::new(b, at, "CAPS");
    let c = Caps { bnd: d.u64()?, prm: d.u64()?, eff: d.u64()?, inh: d.u64()?, amb: d.u64()?, securebits: d.u32()? };
    // The kernel's own rules: effective within permitted, ambient within permitted and
    // inheritable; securebits are 6 bits.
    if c.eff & !c.prm != 0 || c.amb & !(c.prm & c.inh) != 0 || c.securebits & !0x3f != 0 {
        return Err(d.bad_at(0, format!("capability sets that no process can have ({c:x?})")));
    }
    d.finish()?;
    Ok(Some(c))
}

pub fn describe(c: &Caps) -> Vec<String> {
    vec![format!(
        "caps:      bounding {:016x}, permitted {:016x}, effective {:016x}, inheritable {:016x}, ambient {:016x}, securebits {:#x}",
        c.bnd, c.prm, c.eff, c.inh, c.amb, c.securebits
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_differs_from_the_default_is_kept() {
        let full = all_known();
        let st = |bnd: u64, prm: u64| {
            format!(
                "CapInh:\t0000000000000000\nCapPrm:\t{prm:016x}\nCapEff:\t{prm:016x}\nCapBnd:\t{bnd:016x}\nCapAmb:\t0000000000000000\n"
            )
        };
        assert_eq!(collect(&st(full, full), 0, true), None);
        assert_eq!(collect(&st(full, 0), 0, false), None);
        let c = collect(&st(full & !(1 << 21), full & !(1 << 21)), 0, true).unwrap();
        assert_eq!(decode(&encode(&c), 0).unwrap(), Some(c));
        let bad = Caps { eff: 1, ..Default::default() };
        assert!(decode(&encode(&bad), 0).is_err());
    }
}
