//! CLOCKS: CLOCK_MONOTONIC and CLOCK_BOOTTIME when the processes were frozen. What a restored
//! process sees of them:
//! - restored on the same boot, they went on counting meanwhile: the process sees the time it
//!   was frozen pass, as after a suspend;
//! - on another node (or after a reboot) they are that node's, which may be far ahead or
//!   behind: deadlines a program computed from them (Go's timers, poll loops) are then wrong;
//! - with `rstrt --timens` the processes get a time namespace (Linux 5.6) whose offsets make
//!   both clocks go on from where they were frozen, on any node: only the restore's own
//!   milliseconds pass.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clocks {
    pub monotonic: u64,
    pub boottime: u64,
}

/// Nanoseconds on `clock`, now.
pub fn now(clock: libc::clockid_t) -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `t`, which we own.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Both clocks, now.
pub fn read() -> Clocks {
    Clocks { monotonic: now(libc::CLOCK_MONOTONIC), boottime: now(libc::CLOCK_BOOTTIME) }
}

/// Moves our children to a new time namespace in which both clocks read what `c` says now, and
/// go on from there (the offsets are the differences with ours). Needs CAP_SYS_ADMIN.
pub fn enter_namespace(c: &Clocks) -> Result<()> {
    // SAFETY: unshare takes flags only; CLONE_NEWTIME moves the children made after it.
    if unsafe { libc::unshare(libc::CLONE_NEWTIME) } != 0 {
        return Err(match Errno::last() {
            Errno::EPERM => Error::Permission(
                "--timens needs CAP_SYS_ADMIN: run rstrt as root, or add --pidns (a user namespace of its own)".into(),
            ),
            Errno::EINVAL => {
                Error::not_here("--timens", "this kernel has no time namespaces (Linux 5.6, CONFIG_TIME_NS)")
            }
            e => Error::sys("unshare(CLONE_NEWTIME)", "rstrt", e),
        });
    }
    let here = read();
    let offset = |then: u64, now: u64| {
        let d = then as i128 - now as i128;
        let (s, ns) = (d.div_euclid(1_000_000_000), d.rem_euclid(1_000_000_000));
        format!("{s} {ns}")
    };
    let text =
        format!("monotonic {}\nboottime {}\n", offset(c.monotonic, here.monotonic), offset(c.boottime, here.boottime));
    std::fs::write("/proc/self/timens_offsets", text).map_err(|e| Error::io("/proc/self/timens_offsets", e))
}

pub fn encode(c: &Clocks) -> Vec<u8> {
    let mut e = Enc::new();
    e.u64(c.monotonic).u64(c.boottime);
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Option<Clocks>> {
    let mut d = Dec::new(b, at, "CLOCKS");
    let c = Clocks { monotonic: d.u64()?, boottime: d.u64()? };
    d.finish()?;
    Ok(Some(c))
}

pub fn describe(c: &Clocks) -> Vec<String> {
    let s = |ns: u64| format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000);
    vec![format!("clocks:    monotonic {} s, boottime {} s when frozen", s(c.monotonic), s(c.boottime))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = read();
        assert!(c.monotonic > 0 && c.boottime >= c.monotonic);
        assert_eq!(decode(&encode(&c), 0).unwrap(), Some(c));
    }
}
