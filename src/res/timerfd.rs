//! TIMERFDS: the process's timerfds, each with its clock, its settime flags
//! (TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET), its interval, the time left to its next
//! expiry and the expiries not yet read. The fds are FILES records (KIND_TIMERFD, `id.mode`
//! the clock); a restore creates them with the other fds, then arms them here.
//!
//! At checkpoint each timer is asked through a copy of its fd (timerfd_gettime: what the
//! process would be told; it also counts the expiries of a periodic timer that nobody read
//! yet), then its fdinfo gives the unread count. A relative timer restarts with the time it
//! had left (the time the process was frozen or not running does not count, as for the
//! interval timers); an absolute one keeps its deadline on its clock, when that clock means
//! the same here (the real-time clocks anywhere, the others on the same boot; otherwise it
//! too restarts with the time it had left). Unread expiries come back with TFD_IOC_SET_TICKS.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use crate::res::files::{Fd, KIND_TIMERFD};
use nix::errno::Errno;
use std::os::fd::AsRawFd;

pub const TFD_TIMER_ABSTIME: u32 = 1;
pub const TFD_TIMER_CANCEL_ON_SET: u32 = 2;
/// _IOW('T', 0, u64): sets the unread expiry count (the kernel's CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
const NS: u64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    pub fd: i32,
    pub clock: u32,
    /// The flags of its last timerfd_settime.
    pub flags: u32,
    /// Expiries not yet read.
    pub ticks: u64,
    /// Nanoseconds to its next expiry; 0 when disarmed.
    pub left: u64,
    pub interval: u64,
    /// Its clock's reading (ns) when `left` was taken: an absolute timer's deadline is
    /// `taken_at + left`.
    pub taken_at: u64,
}

/// The clocks a timerfd may use, by id.
fn clock_name(c: u32) -> Option<&'static str> {
    Some(match c as i32 {
        libc::CLOCK_REALTIME => "realtime",
        libc::CLOCK_MONOTONIC => "monotonic",
        libc::CLOCK_BOOTTIME => "boottime",
        libc::CLOCK_REALTIME_ALARM => "realtime-alarm",
        libc::CLOCK_BOOTTIME_ALARM => "boottime-alarm",
        _ => return None,
    })
}

/// Whether a deadline on clock `c` means the same after a restore on another boot.
fn wall_clock(c: u32) -> bool {
    [libc::CLOCK_REALTIME, libc::CLOCK_REALTIME_ALARM].contains(&(c as i32))
}

fn ns(secs: i64, nsecs: i64) -> u64 {
    (secs.max(0) as u64).saturating_mul(NS).saturating_add(nsecs.max(0) as u64)
}

/// clockid, ticks, settime flags, it_value and it_interval (ns) from a timerfd's fdinfo.
pub fn parse(info: &str) -> Option<(u32, u64, u32, u64, u64)> {
    let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    let pair = |k: &str| -> Option<u64> {
        let v = field(k)?.trim_start_matches('(').trim_end_matches(')');
        let (s, n) = v.split_once(',')?;
        Some(ns(s.trim().parse().ok()?, n.trim().parse().ok()?))
    };
    Some((
        field("clockid:")?.parse().ok()?,
        field("ticks:")?.parse().ok()?,
        u32::from_str_radix(field("settime flags:")?, 8).ok()?,
        pair("it_value:")?,
        pair("it_interval:")?,
    ))
}

/// Every timerfd among `fds` of the frozen process `pid`.
pub fn collect(pid: i32, fds: &[Fd]) -> Result<Vec<Timer>> {
    let mut out = Vec::new();
    for f in fds.iter().filter(|f| f.kind == KIND_TIMERFD) {
        let what = format!("timerfd (fd {} of pid {pid})", f.fd);
        let ours = crate::ptrace::procfs::getfd(pid, f.fd, "timerfd")?;
        let path = format!("/proc/{pid}/fdinfo/{}", f.fd);
        // The time left comes from timerfd_gettime, between two readings of its clock (an
        // absolute deadline is then off by about a microsecond); the unread count from fdinfo
        // just after. An expiry in between shows as a change of armed to expired: ask again.
        let clock = f.id.mode;
        let read_clock = || -> Result<u64> {
            let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime writes one timespec into `now`, which we own.
            if unsafe { libc::clock_gettime(clock as i32, &mut now) } != 0 {
                return Err(Error::sys("clock_gettime", format!("clock {clock} of {what}"), Errno::last()));
            }
            Ok(ns(now.tv_sec, now.tv_nsec))
        };
        let mut tries = 0;
        let t = loop {
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            let mut cur = libc::itimerspec { it_interval: zero, it_value: zero };
            let before = read_clock()?;
            // SAFETY: timerfd_gettime writes one itimerspec into `cur`, which we own.
            if unsafe { libc::timerfd_gettime(ours.as_raw_fd(), &mut cur) } != 0 {
                return Err(Error::sys("timerfd_gettime", what, Errno::last()));
            }
            let after = read_clock()?;
            let info = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let (fd_clock, ticks, flags, left_now, interval) =
                parse(&info).ok_or_else(|| Error::Proc(format!("{path}: unexpected timerfd format")))?;
            let left = ns(cur.it_value.tv_sec, cur.it_value.tv_nsec);
            tries += 1;
            if (left > 0) != (left_now > 0) && tries < 8 {
                continue;
            }
            let taken_at = before + after.saturating_sub(before) / 2;
            // Still expiring under us: the next expiry is about one interval away.
            let left = if left_now == 0 && interval > 0 { interval } else { left };
            break Timer { fd: f.fd, clock: fd_clock, flags, ticks, left, interval, taken_at };
        };
        out.push(t);
    }
    Ok(out)
}

pub fn encode(all: &[Timer]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for t in all {
        e.u32(t.fd as u32).u32(t.clock).u32(t.flags).u64(t.ticks).u64(t.left).u64(t.interval).u64(t.taken_at);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Timer>> {
    let mut d = Dec::new(b, at, "TIMERFDS");
    let n = d.count(44)?;
    let mut out: Vec<Timer> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let t = Timer {
            fd: d.u32()? as i32,
            clock: d.u32()?,
            flags: d.u32()?,
            ticks: d.u64()?,
            left: d.u64()?,
            interval: d.u64()?,
            taken_at: d.u64()?,
        };
        if !(0..=1 << 20).contains(&t.fd)
            || out.iter().any(|o| o.fd == t.fd)
            || clock_name(t.clock).is_none()
            || t.flags & !(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) != 0
            || t.ticks > i64::MAX as u64
        {
            return Err(d.bad_at(rec, format!("timerfd record for fd {} is not valid", t.fd)));
        }
        out.push(t);
    }
    d.finish()?;
    Ok(out)
}

fn secs(ns: u64) -> String {
    format!("{}.{:09}", ns / NS, ns % NS)
}

/// crfinfo's lines.
pub fn describe(all: &[Timer]) -> Vec<String> {
    all.iter()
        .map(|t| {
            let clock = clock_name(t.clock).unwrap_or("?");
            let armed = if t.left == 0 {
                "disarmed".to_string()
            } else if t.flags & TFD_TIMER_ABSTIME != 0 {
                format!("deadline {} s", secs(t.taken_at.saturating_add(t.left)))
            } else {
                format!("{} s left", secs(t.left))
            };
            let every = if t.interval > 0 { format!(", every {} s", secs(t.interval)) } else { String::new() };
            format!("timerfd:   fd {} clock {clock}, {armed}{every}, {} expiries unread", t.fd, t.ticks)
        })
        .collect()
}

/// Arms every timerfd (created disarmed with the other fds) and gives it back its unread
/// expiries. `same_boot`: the monotonic and boot clocks go on from where they were.
pub fn restore(c: &mut Ctl, all: &[Timer], same_boot: bool) -> Result<()> {
    for t in all {
        let what = format!("timerfd fd {} in pid {}", t.fd, c.pid());
        let fail = |call: &str, r: i64| Error::sys(call, what.clone(), Errno::from_raw(-r as i32));
        if t.left > 0 {
            let keep_deadline = t.flags & TFD_TIMER_ABSTIME != 0 && (same_boot || wall_clock(t.clock));
            let (flags, value) = if keep_deadline { (t.flags, t.taken_at.saturating_add(t.left)) } else { (0, t.left) };
            let r = c.timerfd_settime_raw(t.fd, flags, t.interval, value)?;
            if r < 0 {
                return Err(fail("timerfd_settime", r));
            }
        }
        if t.ticks > 0 {
            let r = c.ioctl_in_raw(t.fd, TFD_IOC_SET_TICKS, &t.ticks.to_le_bytes())?;
            if r == -(libc::ENOTTY as i64) {
                return Err(Error::not_here(
                    format!("{what} has {} expiries unread, which this kernel cannot set", t.ticks),
                    "TFD_IOC_SET_TICKS needs a kernel built with CONFIG_CHECKPOINT_RESTORE",
                ));
            }
            if r < 0 {
                return Err(fail("ioctl(TFD_IOC_SET_TICKS)", r));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_round_trip() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1030\nclockid: 1\nticks: 3\nsettime flags: 03\n\
                    it_value: (0, 5000)\nit_interval: (1, 500)\n";
        assert_eq!(parse(info), Some((1, 3, 3, 5000, NS + 500)));
        let all = vec![Timer { fd: 4, clock: 1, flags: 1, ticks: 3, left: 5000, interval: NS, taken_at: 7 }];
        assert_eq!(decode(&encode(&all), 0).unwrap(), all);
        let mut bad = all.clone();
        bad[0].clock = 3; // CLOCK_THREAD_CPUTIME_ID: no timerfd has it
        assert!(decode(&encode(&bad), 0).is_err());
        assert_eq!(
            describe(&all)[0],
            "timerfd:   fd 4 clock monotonic, deadline 0.000005007 s, every 1.000000000 s, 3 expiries unread"
        );
    }
}
