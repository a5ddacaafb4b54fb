//! PTIMERS: the process's POSIX timers (timer_create): per timer its id, clock, how it
//! notifies (a signal to the process, a signal to one thread, or nothing) with its signal and
//! 64-bit value, its interval and the time left to its next expiry. /proc/PID/timers lists
//! them; the times are asked of the frozen process (timer_gettime). A restore creates each
//! under its own id (PR_TIMER_CREATE_RESTORE_IDS where the kernel has it, Linux 6.14+;
//! otherwise by creating and deleting timers until the kernel's next id is the one wanted)
//! and arms it, with the interval timers, as the last thing before the process runs.
//!
//! A timer on a CPU clock of the process or of one of its threads (pthread_getcpuclockid, as
//! haproxy's watchdog has one per thread) measures that thread's CPU time again, its tid taken
//! to the restored thread's: it fires once the thread has used the CPU time it had left. The
//! CPU time a thread had used is not carried (a restored thread's clock starts again from
//! about zero).
//!
//! Not carried: the overrun count of a signal not yet delivered, and whether a timer was armed
//! with TIMER_ABSTIME (a restored timer goes on with the time it had left, so an absolute one's
//! deadline moves by the time the process was not running). Refused by name: timers on
//! another process's CPU clock, and, in a process with more than one thread, on the CPU clock
//! of "the calling thread" (CLOCK_THREAD_CPUTIME_ID), which /proc does not say which thread
//! made.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use crate::ptrace::calls::{Answers, Calls, Q};
use crate::ptrace::procfs;
use nix::errno::Errno;

pub const SIGEV_SIGNAL: u32 = 0;
pub const SIGEV_NONE: u32 = 1;
pub const SIGEV_THREAD_ID: u32 = 4;
/// The process's own CPU clock as /proc shows it (CLOCK_PROCESS_CPUTIME_ID, pid 0).
const PROCESS_CPU: i32 = -6;
const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
/// The highest id a restore reaches by creating and deleting timers in turn.
const MAX_ID: i32 = 1 << 16;
const NS: u64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PTimer {
    pub id: i32,
    pub clock: i32,
    /// SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD_ID.
    pub notify: u32,
    pub signo: i32,
    /// sigev_value.
    pub value: u64,
    /// With SIGEV_THREAD_ID, the thread signalled.
    pub tid: i32,
    pub interval: u64,
    /// Nanoseconds to its next expiry; 0: disarmed.
    pub left: u64,
}

/// A CPU clock's parts (include/linux/posix-timers.h: the pid, its complement shifted left by
/// 3; bit 2, a thread's clock; bits 0-1, which time): (pid or tid, 0 for the caller's own;
/// a thread's; which). None for the other clocks.
fn cpu_clock(c: i32) -> Option<(i32, bool, i32)> {
    (c < 0).then_some((!(c >> 3), c & 4 != 0, c & 3))
}

fn make_cpu_clock(pid: i32, thread: bool, which: i32) -> i32 {
    (!pid << 3) | if thread { 4 } else { 0 } | which
}

/// A clock an image may name: the system's, or a CPU clock of the process or of a thread
/// (profiling, virtual or scheduler time).
fn clock_ok(c: i32) -> bool {
    [0, 1, 7, 8, 9, 11].contains(&c) || cpu_clock(c).is_some_and(|(_, _, which)| which < 3)
}

fn clock_name(c: i32) -> String {
    let fixed = match c {
        0 => "realtime",
        1 => "monotonic",
        7 => "boottime",
        8 => "realtime-alarm",
        9 => "boottime-alarm",
        11 => "tai",
        PROCESS_CPU => "process CPU time",
        _ => "",
    };
    match cpu_clock(c) {
        _ if !fixed.is_empty() => fixed.to_string(),
        Some((0, true, _)) => "CPU time of the thread that made it".to_string(),
        Some((n, true, _)) => format!("CPU time of thread {n}"),
        Some((n, false, _)) => format!("CPU time of pid {n}"),
        None => format!("{c}"),
    }
}

/// The timers /proc/PID/timers lists: (id, signo, value, notify, tid or 0, clock), by id.
pub fn parse(text: &str) -> Option<Vec<PTimer>> {
    let mut out = Vec::new();
    let mut t: Option<PTimer> = None;
    for l in text.lines() {
        let (k, v) = l.split_once(':')?;
        let v = v.trim();
        match k {
            "ID" => {
                out.extend(t.take());
                let id = v.parse().ok()?;
                t = Some(PTimer { id, clock: 0, notify: 0, signo: 0, value: 0, tid: 0, interval: 0, left: 0 });
            }
            "signal" => {
                let (s, val) = v.split_once('/')?;
                let t = t.as_mut()?;
                t.signo = s.parse().ok()?;
                t.value = u64::from_str_radix(val, 16).ok()?;
            }
            "notify" => {
                // "signal/pid.12", "none/pid.12", "signal/tid.13" (SIGEV_THREAD_ID).
                let (how, who) = v.split_once('/')?;
                let (kind, n) = who.split_once('.')?;
                let t = t.as_mut()?;
                t.notify = match (how, kind) {
                    ("none", _) => SIGEV_NONE,
                    ("signal", "tid") => SIGEV_THREAD_ID,
                    ("signal", _) => SIGEV_SIGNAL,
                    _ => return None,
                };
                if t.notify == SIGEV_THREAD_ID {
                    t.tid = n.parse().ok()?;
                }
            }
            "ClockID" => t.as_mut()?.clock = v.parse().ok()?,
            _ => {}
        }
    }
    out.extend(t);
    out.sort_by_key(|t| t.id);
    Some(out)
}

/// What cannot be restored of the timers `all` of `pid`, whose threads are `tids`, by name.
/// (crs runs in the pid namespace of the processes it checkpoints or restores: the tids a CPU
/// clock names are those we see.)
fn unfit(pid: i32, all: &[PTimer], tids: &[i32]) -> Vec<String> {
    let mut out = Vec::new();
    for t in all {
        let Some((n, thread, which)) = cpu_clock(t.clock) else { continue };
        let why = match (n, thread) {
            _ if which > 2 => format!("on a clock crs does not know ({})", t.clock),
            (0, false) => continue,
            (0, true) if tids.len() > 1 => {
                "on the CPU clock of the thread that made it (CLOCK_THREAD_CPUTIME_ID), which /proc does not name in a process of several threads"
                    .to_string()
            }
            (0, true) => continue,
            (tid, true) if tids.contains(&tid) => continue,
            (p, false) if p == pid => continue,
            _ => format!("on another process's CPU clock ({})", clock_name(t.clock)),
        };
        out.push(format!("its POSIX timer {} is {why}, which crs does not restore", t.id));
    }
    out
}

/// What crs cannot restore among `pid`'s timers, by name (before anything is touched).
pub fn refusals(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_default();
    match parse(&text) {
        Some(all) => unfit(pid, &all, &procfs::tasks(pid).unwrap_or_default()),
        None => vec![format!("/proc/{pid}/timers is in a format crs does not know")],
    }
}

/// The timers of frozen process `pid`, and the questions for the times each has.
pub fn ask(pid: i32, l: &mut Calls) -> Result<(Vec<PTimer>, Vec<Q>)> {
    let path = format!("/proc/{pid}/timers");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let all = parse(&text).ok_or_else(|| Error::Proc(format!("{path}: unexpected format")))?;
    if all.iter().any(|t| cpu_clock(t.clock).is_some()) {
        Error::blocked(pid, unfit(pid, &all, &procfs::tasks(pid)?))?;
    }
    let qs = all.iter().map(|t| l.ask_timer_gettime(t.id)).collect();
    Ok((all, qs))
}

/// The timers of [`ask`], with their times as answered.
pub fn timers(a: &Answers, (mut all, qs): (Vec<PTimer>, Vec<Q>)) -> Result<Vec<PTimer>> {
    for (t, q) in all.iter_mut().zip(qs) {
        a.ok(q, "timer_gettime", &format!("POSIX timer {}", t.id))?;
        let [isec, insec, vsec, vnsec] = a.words(q);
        t.interval = isec.saturating_mul(NS).saturating_add(insec);
        t.left = vsec.saturating_mul(NS).saturating_add(vnsec);
    }
    Ok(all)
}

pub fn encode(all: &[PTimer]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for t in all {
        e.u32(t.id as u32).u32(t.clock as u32).u32(t.notify).u32(t.signo as u32).u64(t.value).u32(t.tid as u32);
        e.u64(t.interval).u64(t.left);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<PTimer>> {
    let mut d = Dec::new(b, at, "PTIMERS");
    let n = d.count(44)?;
    let mut out: Vec<PTimer> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let t = PTimer {
            id: d.u32()? as i32,
            clock: d.u32()? as i32,
            notify: d.u32()?,
            signo: d.u32()? as i32,
            value: d.u64()?,
            tid: d.u32()? as i32,
            interval: d.u64()?,
            left: d.u64()?,
        };
        let signal_ok = t.notify == SIGEV_NONE || (1..=64).contains(&t.signo);
        if !(0..=MAX_ID).contains(&t.id)
            || out.last().is_some_and(|p| p.id >= t.id)
            || !clock_ok(t.clock)
            || ![SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID].contains(&t.notify)
            || !signal_ok
            || (t.notify == SIGEV_THREAD_ID) != (t.tid > 0)
            || t.interval > i64::MAX as u64
            || t.left > i64::MAX as u64
        {
            return Err(d.bad_at(rec, format!("POSIX timer record {} is not valid", t.id)));
        }
        out.push(t);
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[PTimer]) -> Vec<String> {
    all.iter()
        .map(|t| {
            let how = match t.notify {
                SIGEV_NONE => "no signal".to_string(),
                SIGEV_THREAD_ID => format!("signal {} value {:#x} to thread {}", t.signo, t.value, t.tid),
                _ => format!("signal {} value {:#x}", t.signo, t.value),
            };
            let armed = if t.left == 0 {
                "disarmed".to_string()
            } else {
                format!("{}.{:09} s left, every {}.{:09} s", t.left / NS, t.left % NS, t.interval / NS, t.interval % NS)
            };
            format!("ptimer:    id {} clock {}, {how}, {armed}", t.id, clock_name(t.clock))
        })
        .collect()
}

/// Creates every timer under its own id in the restored process of `threads` threads and arms
/// it. `tid_of` maps a checkpointed thread's tid to its tid now (the restorer runs in the
/// restored processes' pid namespace: as they see it). Its signals are blocked by now: a timer
/// that fires before the process runs leaves its signal pending.
pub fn restore(c: &mut Ctl, all: &[PTimer], threads: usize, tid_of: &dyn Fn(i32) -> Option<i32>) -> Result<()> {
    if all.is_empty() {
        return Ok(());
    }
    let pid = c.pid();
    let thread = |tid: i32, what: &str| {
        tid_of(tid).ok_or_else(|| Error::Refused(format!("{what} names thread {tid}, which the image does not hold")))
    };
    // Ids by request where the kernel takes them; otherwise its next id is moved along.
    let by_request = c.prctl_raw(PR_TIMER_CREATE_RESTORE_IDS, [1, 0, 0, 0])? == 0;
    for t in all {
        let what = format!("POSIX timer {} of pid {pid}", t.id);
        let tid = match t.notify {
            SIGEV_THREAD_ID => thread(t.tid, &what)?,
            _ => 0,
        };
        let clock = match cpu_clock(t.clock) {
            Some((0, true, _)) if threads > 1 => {
                return Err(Error::Refused(format!(
                    "{what} is on the CPU clock of the thread that made it, in a process of {threads} threads, which no crs writes: the image is damaged"
                )));
            }
            Some((0, _, _)) | None => t.clock,
            Some((n, is_thread, which)) => make_cpu_clock(thread(n, &what)?, is_thread, which),
        };
        // struct sigevent: sigev_value, sigev_signo, sigev_notify, then the union (_tid first).
        let mut sev = [0u8; 64];
        sev[..8].copy_from_slice(&t.value.to_le_bytes());
        sev[8..12].copy_from_slice(&t.signo.to_le_bytes());
        sev[12..16].copy_from_slice(&t.notify.to_le_bytes());
        sev[16..20].copy_from_slice(&tid.to_le_bytes());
        let got = loop {
            let id = c.timer_create_raw(clock, &sev, t.id)?;
            if id < 0 {
                return Err(Error::sys("timer_create", what, Errno::from_raw(-id as i32)));
            }
            let id = id as i32;
            if by_request || id >= t.id {
                break id;
            }
            c.timer_delete(id, &what)?;
        };
        if got != t.id {
            return Err(Error::not_here(
                format!("{what} cannot have its id back (the kernel gave {got})"),
                "this kernel hands out timer ids its own way; Linux 6.14 and later take them by request",
            ));
        }
        if t.left > 0 {
            c.timer_settime(t.id, [t.interval / NS, t.interval % NS, t.left / NS, t.left % NS], &what)?;
        }
    }
    if by_request {
        c.prctl_raw(PR_TIMER_CREATE_RESTORE_IDS, [0, 0, 0, 0])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_round_trip() {
        let text = "ID: 2\nsignal: 35/0000000000000abc\nnotify: signal/tid.18373\nClockID: 7\n\
                    ID: 1\nsignal: 34/0000000000000000\nnotify: none/pid.18373\nClockID: 0\n\
                    ID: 0\nsignal: 34/0000000000000abc\nnotify: signal/pid.18373\nClockID: 1\n";
        let all = parse(text).unwrap();
        assert_eq!(
            all.iter().map(|t| (t.id, t.notify, t.tid, t.clock)).collect::<Vec<_>>(),
            vec![(0, SIGEV_SIGNAL, 0, 1), (1, SIGEV_NONE, 0, 0), (2, SIGEV_THREAD_ID, 18373, 7)]
        );
        assert_eq!((all[0].signo, all[0].value), (34, 0xabc));
        assert_eq!(decode(&encode(&all), 0).unwrap(), all);
        let mut bad = all.clone();
        bad[2].clock = -1; // a CPU clock of no kind (3)
        assert!(decode(&encode(&bad), 0).is_err());
        assert!(describe(&all)[2].contains("signal 35 value 0xabc to thread 18373, disarmed"));
    }

    #[test]
    fn cpu_clocks_are_told_apart_and_each_kept_or_refused() {
        // haproxy's watchdog: pthread_getcpuclockid of thread 20659 (as /proc/PID/timers shows).
        assert_eq!(cpu_clock(-165274), Some((20659, true, 2)));
        assert_eq!(make_cpu_clock(20659, true, 2), -165274);
        assert_eq!(cpu_clock(PROCESS_CPU), Some((0, false, 2)));
        assert_eq!(cpu_clock(-2), Some((0, true, 2)));
        assert_eq!(cpu_clock(1), None);
        let timer =
            |id, clock| PTimer { id, clock, notify: SIGEV_NONE, signo: 0, value: 0, tid: 0, interval: 0, left: 0 };
        let all = [
            timer(0, make_cpu_clock(11, true, 0)),
            timer(1, make_cpu_clock(10, false, 1)),
            timer(2, PROCESS_CPU),
            timer(3, make_cpu_clock(99, false, 2)),
            timer(4, make_cpu_clock(99, true, 2)),
            timer(5, -2),
        ];
        let why = unfit(10, &all, &[10, 11]);
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[0].starts_with("its POSIX timer 3 is on another process's CPU clock (CPU time of pid 99)"));
        assert!(why[1].contains("timer 4 is on another process's CPU clock (CPU time of thread 99)"));
        assert!(why[2].contains("timer 5 is on the CPU clock of the thread that made it"));
        // Alone, a thread's own clock is the only thread's.
        assert!(unfit(10, &all[5..], &[10]).is_empty());
    }
}
