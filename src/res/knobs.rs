//! KNOBS: process-wide settings other subsystems keep for the process, each a number: its
//! OOM-killer adjustment, audit login uid, child-subreaper flag, membarrier registrations,
//! which memory a core dump holds (coredump_filter),
//! KSM merging of all its memory, machine-check kill policy, TSC access and speculation
//! controls. One table ([`KNOBS`]) says how each is read from the frozen process, set back in
//! the restored one, and shown. The section stores (key, value) pairs: a knob this kernel
//! cannot report is left out (and then not restored: see man/ckpt.1), and a key this crs does
//! not know refuses the image.
//!
//! Each is set from inside the restored process, as its user, once its ids and limits are in
//! place: what that user may not set (an oom_score_adj below its floor, KSM merging without
//! CAP_SYS_RESOURCE) refuses the restore by name. The login uid is the exception: only root
//! may set it, so for anyone else it stays the restorer's and the restore says so. A thread's
//! own knobs set with one prctl go to the other threads in their lists of syscalls
//! ([`ForThreads`]).

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use crate::ptrace::calls::{Answers, Calls, Q};
use nix::errno::Errno;

/// One knob: how it is read (None: this kernel cannot tell), set, and shown; its default
/// (crfinfo shows only the others).
pub struct Knob {
    pub key: u32,
    pub name: &'static str,
    /// How it is read: one plain prctl (which many threads can be asked at once), or more.
    get: Get,
    set: Set,
    default: u64,
    /// Each thread has its own (the others are the process's or its memory's).
    pub per_task: bool,
}

/// How a knob is set.
#[derive(Clone, Copy)]
enum Set {
    /// Through the task, which may read first.
    With(fn(&mut Ctl, u64) -> Result<Applied>),
    /// A thread's own, asked with one prctl (`Get::Ask`) and set with at most one: what gives
    /// a task with value `now` (as asked) the value `v`. The process's other threads, made
    /// from its leader before, hold what the leader held: the same calls serve them.
    Plan(Plan),
}

/// What gives a task whose value is `now` (second) the value `v` (first), added to its list.
type Plan = fn(u64, u64, &mut Calls);

/// How a knob is read.
#[derive(Clone, Copy)]
enum Get {
    Ask(Ask),
    /// From the task's /proc files, by its id: from any thread of crs, no syscall run in it.
    Proc(fn(i32) -> Option<u64>),
}

/// A knob asked with one syscall: a prctl answered in its return value (`Returns(option,
/// arg)`) or through an int it is pointed at (`IntAt(option)`), or membarrier's registrations
/// (`Membarrier`). EINVAL or ENODEV: this kernel cannot tell (any error, of membarrier: before
/// Linux 6.3 a process cannot be asked).
#[derive(Clone, Copy, Debug)]
pub enum Ask {
    Returns(i32, u64),
    IntAt(i32),
    Membarrier,
}

impl Ask {
    /// The syscall, with `slot` where an IntAt answer goes.
    pub fn call(self, slot: crate::ptrace::RemoteAddr) -> (i64, [u64; 6]) {
        match self {
            Ask::Returns(op, arg) => (libc::SYS_prctl, [op as u64, arg, 0, 0, 0, 0]),
            Ask::IntAt(op) => (libc::SYS_prctl, [op as u64, slot.0, 0, 0, 0, 0]),
            Ask::Membarrier => (libc::SYS_membarrier, [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, 0, 0, 0]),
        }
    }

    /// The question, added to a list.
    fn ask(self, l: &mut Calls) -> Q {
        match self {
            Ask::Returns(op, arg) => l.ask_prctl(op, arg),
            Ask::IntAt(op) => l.ask_prctl_out(op, 4),
            Ask::Membarrier => l.ask_membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS),
        }
    }

    /// The answer, from the raw result and the int at the slot (`int`, read only for IntAt).
    pub fn answer(self, raw: i64, int: impl FnOnce() -> Result<u32>, who: i32) -> Result<Option<u64>> {
        match (self, raw) {
            (Ask::Membarrier, r) => Ok((r >= 0).then_some(r as u64 & MEMBARRIER_REGISTER)),
            (Ask::Returns(..), r) if r >= 0 => Ok(Some(r as u64)),
            (Ask::IntAt(_), r) if r >= 0 => Ok(Some(int()? as u64)),
            (_, e) if e == -(libc::EINVAL as i64) || e == -(libc::ENODEV as i64) => Ok(None),
            (Ask::Returns(op, _) | Ask::IntAt(op), e) => {
                Err(Error::sys(format!("prctl({op})"), format!("thread {who}"), Errno::from_raw(-e as i32)))
            }
        }
    }
}

/// The knobs each thread has of its own that one prctl asks: (key, how).
pub fn thread_asks() -> impl Iterator<Item = (u32, Ask)> {
    KNOBS.iter().filter(|k| k.per_task).filter_map(|k| match k.get {
        Get::Ask(a) => Some((k.key, a)),
        _ => None,
    })
}

/// The knobs thread `tid` has of its own that its /proc files show: (key, value). With
/// [`thread_asks`], all of a thread's knobs (test `thread_knobs_are_asked_or_read`).
pub fn thread_read(tid: i32) -> Vec<(u32, u64)> {
    let read = KNOBS.iter().filter(|k| k.per_task).filter_map(|k| match k.get {
        Get::Proc(f) => f(tid).map(|v| (k.key, v)),
        _ => None,
    });
    read.collect()
}

/// What setting a knob came to.
pub enum Applied {
    Done,
    /// Left as the restorer's, with the reason (said, never silent).
    Kept(String),
}

const PR_SPEC_PRCTL: u64 = 1;
const PR_SPEC_STATES: u64 = 2 | 4 | 8 | 16;
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// The REGISTER_* commands: global expedited, private expedited, its sync-core and rseq kinds.
const MEMBARRIER_REGISTER: u64 = (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8);
const PR_SET_MEMORY_MERGE: i32 = 67;
const PR_GET_MEMORY_MERGE: i32 = 68;

/// A prctl that sets; EPERM refuses the restore, naming the knob and what would allow it
/// (`needs`, empty when nothing would).
fn prctl_set(c: &mut Ctl, op: i32, args: [u64; 4], name: &str, needs: &str) -> Result<Applied> {
    let mut l = Calls::new();
    prctl_plan(&mut l, op, args, name, needs);
    c.run(&l).map(|_| Applied::Done)
}

/// [`prctl_set`] as a call of a list.
fn prctl_plan(l: &mut Calls, op: i32, args: [u64; 4], name: &str, needs: &str) {
    let (name, needs) = (name.to_string(), needs.to_string());
    l.prctl_checked(op, args, move |r, who| match r {
        0.. => Ok(()),
        e if !needs.is_empty() && (e == -(libc::EPERM as i64) || e == -(libc::EACCES as i64)) => Err(Error::Refused(
            format!("the process had {name} {}, which its user may not set here ({needs})", args[0]),
        )),
        e => Err(Error::sys(format!("prctl({name})"), who.to_string(), Errno::from_raw(-e as i32))),
    });
}

/// A /proc/PID file holding one number.
fn proc_number(pid: i32, file: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?.trim().parse().ok()
}

/// /proc/PID/coredump_filter, in hex there.
fn coredump_filter(pid: i32) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/coredump_filter")).ok()?;
    u64::from_str_radix(t.trim(), 16).ok()
}

/// Writes `v` to /proc/`file` ("self/oom_score_adj", "thread-self/loginuid": a login uid is
/// the thread's own) from inside the process: the kernel checks what its user may write there.
/// Raw result of the write (negative errno).
fn proc_write(c: &mut Ctl, file: &str, v: &str) -> Result<i64> {
    let path = format!("/proc/{file}");
    let fd = match c.open(&path, libc::O_WRONLY | libc::O_CLOEXEC, &path) {
        Ok(fd) => fd,
        Err(Error::Sys { errno, .. }) => return Ok(-(errno as i64)),
        Err(e) => return Err(e),
    };
    let r = c.write_raw(fd, v.as_bytes());
    c.close(fd, &path)?;
    r
}

/// A speculation control `which` set to `v` in a task where it is `now`.
fn spec_plan(which: u64, v: u64, now: u64, l: &mut Calls) {
    // Only a state the process chose through prctl is its own; the rest is the CPU's and the
    // kernel's (not affected, forced by the command line), which the restoring node decides.
    if v & PR_SPEC_PRCTL == 0 || v & PR_SPEC_STATES == now & PR_SPEC_STATES {
        return;
    }
    let name = ["speculative store bypass control", "indirect branch speculation control", "L1D flush control"]
        [which.min(2) as usize];
    let state = v & PR_SPEC_STATES;
    l.prctl_checked(libc::PR_SET_SPECULATION_CTRL, [which, state, 0, 0], move |r, _| match r {
        0.. => Ok(()),
        e => Err(Error::not_here(
            format!("the process had {name} {state:#x} (PR_SET_SPECULATION_CTRL)"),
            format!("this kernel refuses it ({})", Errno::from_raw(-e as i32).desc()),
        )),
    });
}

pub const KNOBS: &[Knob] = &[
    Knob {
        key: 1,
        name: "oom_score_adj",
        get: Get::Proc(|tid| proc_number(tid, "oom_score_adj").map(|v| v as u64)),
        set: Set::With(|c, v| {
            let v = v as i64;
            if proc_number(c.pid(), "oom_score_adj") == Some(v) {
                return Ok(Applied::Done);
            }
            match proc_write(c, "self/oom_score_adj", &v.to_string())? {
                r if r >= 0 => Ok(Applied::Done),
                e if e == -(libc::EACCES as i64) || e == -(libc::EPERM as i64) => Err(Error::Refused(format!(
                    "the process had oom_score_adj {v}, below what its user may set here (CAP_SYS_RESOURCE)"
                ))),
                e => Err(Error::sys("write /proc/self/oom_score_adj", v.to_string(), Errno::from_raw(-e as i32))),
            }
        }),
        default: 0,
        per_task: false,
    },
    Knob {
        key: 2,
        name: "loginuid",
        get: Get::Proc(|tid| proc_number(tid, "loginuid").map(|v| v as u64)),
        set: Set::With(|c, v| {
            let now = proc_number(c.pid(), "loginuid");
            if now == Some(v as i64) {
                return Ok(Applied::Done);
            }
            match proc_write(c, "thread-self/loginuid", &v.to_string())? {
                r if r >= 0 => Ok(Applied::Done),
                e => Ok(Applied::Kept(format!(
                    "its audit login uid stays {} (the image has {v}; setting it needs CAP_AUDIT_CONTROL: {})",
                    now.map_or("unknown".to_string(), |n| n.to_string()),
                    Errno::from_raw(-e as i32).desc()
                ))),
            }
        }),
        default: u32::MAX as u64,
        per_task: true,
    },
    Knob {
        key: 3,
        name: "child subreaper",
        get: Get::Ask(Ask::IntAt(libc::PR_GET_CHILD_SUBREAPER)),
        set: Set::With(|c, v| prctl_set(c, libc::PR_SET_CHILD_SUBREAPER, [v, 0, 0, 0], "child subreaper", "")),
        default: 0,
        per_task: false,
    },
    Knob {
        key: 4,
        name: "membarrier registrations",
        get: Get::Ask(Ask::Membarrier),
        set: Set::With(|c, v| {
            // Only registrations: an image's other bits would run barriers, not register.
            for bit in (0..16).map(|b| 1u64 << b).filter(|b| v & b & MEMBARRIER_REGISTER != 0) {
                let r = c.membarrier_raw(bit)?;
                if r < 0 {
                    return Err(Error::not_here(
                        format!("the process was registered for membarrier command {bit:#x}"),
                        format!("this kernel refuses it ({})", Errno::from_raw(-r as i32).desc()),
                    ));
                }
            }
            Ok(Applied::Done)
        }),
        default: 0,
        per_task: false,
    },
    Knob {
        key: 5,
        name: "KSM merging of all memory",
        get: Get::Ask(Ask::Returns(PR_GET_MEMORY_MERGE, 0)),
        set: Set::With(|c, v| match v {
            0 => Ok(Applied::Done),
            _ => prctl_set(c, PR_SET_MEMORY_MERGE, [1, 0, 0, 0], "PR_SET_MEMORY_MERGE", "CAP_SYS_RESOURCE"),
        }),
        default: 0,
        per_task: false,
    },
    Knob {
        key: 6,
        name: "machine-check kill policy",
        get: Get::Ask(Ask::Returns(libc::PR_MCE_KILL_GET, 0)),
        set: Set::Plan(|v, _, l| {
            if v != 2 {
                prctl_plan(l, libc::PR_MCE_KILL, [libc::PR_MCE_KILL_SET as u64, v, 0, 0], "PR_MCE_KILL", "");
            }
        }),
        default: 2,
        per_task: true,
    },
    Knob {
        key: 7,
        name: "TSC access",
        get: Get::Ask(Ask::IntAt(libc::PR_GET_TSC)),
        set: Set::Plan(|v, _, l| prctl_plan(l, libc::PR_SET_TSC, [v, 0, 0, 0], "PR_SET_TSC", "")),
        default: libc::PR_TSC_ENABLE as u64,
        per_task: true,
    },
    Knob {
        key: 8,
        name: "speculative store bypass",
        get: Get::Ask(Ask::Returns(libc::PR_GET_SPECULATION_CTRL, 0)),
        set: Set::Plan(|v, now, l| spec_plan(0, v, now, l)),
        default: 0,
        per_task: true,
    },
    Knob {
        key: 9,
        name: "indirect branch speculation",
        get: Get::Ask(Ask::Returns(libc::PR_GET_SPECULATION_CTRL, 1)),
        set: Set::Plan(|v, now, l| spec_plan(1, v, now, l)),
        default: 0,
        per_task: true,
    },
    Knob {
        key: 10,
        name: "L1D flush",
        get: Get::Ask(Ask::Returns(libc::PR_GET_SPECULATION_CTRL, 2)),
        set: Set::Plan(|v, now, l| spec_plan(2, v, now, l)),
        default: 0,
        per_task: true,
    },
    Knob {
        key: 11,
        name: "coredump_filter",
        get: Get::Proc(coredump_filter),
        set: Set::With(|c, v| {
            if coredump_filter(c.pid()) == Some(v) {
                return Ok(Applied::Done);
            }
            match proc_write(c, "self/coredump_filter", &format!("{v:#x}"))? {
                r if r >= 0 => Ok(Applied::Done),
                e => Err(Error::sys("write /proc/self/coredump_filter", format!("{v:#x}"), Errno::from_raw(-e as i32))),
            }
        }),
        default: 0x33,
        per_task: false,
    },
];

fn knob(key: u32) -> Option<&'static Knob> {
    KNOBS.iter().find(|k| k.key == key)
}

/// Every knob this kernel reports for the frozen process, by key.
/// The questions for the knobs the process itself must tell.
pub fn ask(l: &mut Calls) -> Asked {
    Asked(
        KNOBS
            .iter()
            .map(|k| match k.get {
                Get::Ask(a) => Some(a.ask(l)),
                Get::Proc(_) => None,
            })
            .collect(),
    )
}

/// The questions of [`ask`], per knob (None: read from /proc).
pub struct Asked(Vec<Option<Q>>);

impl Asked {
    /// The knobs of process `pid`: (key, value), as answered or read; those this kernel cannot
    /// tell are left out.
    pub fn knobs(&self, a: &Answers, pid: i32) -> Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        for (k, q) in KNOBS.iter().zip(&self.0) {
            let v = match (k.get, q) {
                (Get::Ask(ask), Some(q)) => ask.answer(a.raw(*q), || Ok(a.u32(*q)), pid)?,
                (Get::Proc(f), _) => f(pid),
                (Get::Ask(_), None) => None,
            };
            if let Some(v) = v {
                out.push((k.key, v));
            }
        }
        Ok(out)
    }
}

pub fn encode(knobs: &[(u32, u64)]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(knobs.len() as u32);
    for &(k, v) in knobs {
        e.u32(k).u64(v);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<(u32, u64)>> {
    let mut d = Dec::new(b, at, "KNOBS");
    let n = d.count(12)?;
    let mut out: Vec<(u32, u64)> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let (k, v) = (d.u32()?, d.u64()?);
        if knob(k).is_none() {
            return Err(d.bad_at(rec, format!("knob {k} is unknown to this crs: restore it with a newer one")));
        }
        if out.last().is_some_and(|&(p, _)| p >= k) {
            return Err(d.bad_at(rec, format!("knob {k} out of order")));
        }
        out.push((k, v));
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's line: the knobs not at their default.
pub fn describe(knobs: &[(u32, u64)]) -> Vec<String> {
    let set: Vec<String> = knobs
        .iter()
        .filter_map(|&(k, v)| knob(k).filter(|d| d.default != v).map(|d| (d, v)))
        .map(|(d, v)| if d.key == 1 { format!("{} {}", d.name, v as i64) } else { format!("{} {v:#x}", d.name) })
        .collect();
    match set.len() {
        0 => vec![],
        _ => vec![format!("knobs:     {}", set.join(", "))],
    }
}

/// Sets every knob inside the restored process. Returns what stayed the restorer's, and why,
/// and what its other threads need of it: those a thread has of its own. The process must be
/// dumpable for its /proc files to be its own: the caller sets its dumpable flag afterwards.
pub fn restore(c: &mut Ctl, knobs: &[(u32, u64)]) -> Result<(Vec<String>, ForThreads)> {
    // The knobs set by plan (a thread's own, each a prctl of its own that no other knob
    // changes) are asked in one go with the dumpable flag, and set in another, run from the
    // scratch area where it is executable: each syscall run alone in the process costs two
    // context switches (seven of them, 0.2 ms, for `sleep`'s three speculation knobs).
    let planned: Vec<(Plan, Ask, u64)> = knobs
        .iter()
        .filter_map(|&(k, v)| match knob(k).map(|d| (d.set, d.get)) {
            Some((Set::Plan(plan), Get::Ask(a))) => Some((plan, a, v)),
            _ => None,
        })
        .collect();
    let area = c.scratch.clone();
    let mut l = Calls::new();
    l.prctl(libc::PR_SET_DUMPABLE, [1, 0, 0, 0], "prctl(PR_SET_DUMPABLE)", "for its /proc files");
    let asked: Vec<Q> = planned.iter().map(|(_, a, _)| a.ask(&mut l)).collect();
    let answers = c.ask_at_once(&l, &area)?;
    let mut kept = Vec::new();
    for &(k, v) in knobs {
        let Some(d) = knob(k) else { continue };
        match (d.set, d.get) {
            (Set::With(set), _) => {
                if let Applied::Kept(why) = set(c, v)? {
                    kept.push(why);
                }
            }
            (Set::Plan(_), Get::Ask(_)) => {}
            (Set::Plan(_), _) => return Err(Error::Proc(format!("knob {} is set by plan but not asked", d.name))),
        }
    }
    let mut threads = ForThreads(Vec::new());
    let mut set = Calls::new();
    for (&(plan, a, v), q) in planned.iter().zip(asked) {
        let now = a.answer(answers.raw(q), || Ok(answers.u32(q)), c.pid())?.unwrap_or(0);
        plan(v, now, &mut set);
        threads.0.push((plan, v, now));
    }
    if !set.is_empty() {
        c.run_at_once(&set, &area)?;
    }
    Ok((kept, threads))
}

/// The knobs a thread has of its own that one prctl sets, as the leader found them: the same
/// calls for each of the process's other threads, made from the leader before its knobs were
/// set, and which hold what it held then.
pub struct ForThreads(Vec<(Plan, u64, u64)>);

impl ForThreads {
    /// Adds a thread's calls to its list.
    pub fn calls(&self, l: &mut Calls) {
        for &(plan, v, now) in &self.0 {
            plan(v, now, l);
        }
    }
}

/// [`restore`] of the other knobs each thread has of its own (the login uid), in the other
/// thread `c` drives (whose process is dumpable by then). Returns what stayed the restorer's.
pub fn restore_per_task(c: &mut Ctl, knobs: &[(u32, u64)]) -> Result<Vec<String>> {
    let mut kept = Vec::new();
    for &(k, v) in knobs {
        if let Some(Set::With(set)) = knob(k).filter(|d| d.per_task).map(|d| d.set)
            && let Applied::Kept(why) = set(c, v)?
        {
            kept.push(why);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_keys() {
        let k = vec![(1, (-500i64) as u64), (3, 1), (4, 1 << 4), (7, 2)];
        assert_eq!(decode(&encode(&k), 0).unwrap(), k);
        assert!(describe(&k)[0].contains("oom_score_adj -500, child subreaper 0x1"), "{:?}", describe(&k));
        assert!(decode(&encode(&[(99, 1)]), 0).is_err());
        assert!(decode(&encode(&[(3, 1), (1, 0)]), 0).is_err());
        let keys: Vec<u32> = KNOBS.iter().map(|k| k.key).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    /// A checkpoint reads the other threads' knobs through thread_asks and thread_read only:
    /// one read any other way would be left out for them.
    #[test]
    fn thread_knobs_are_asked_or_read() {
        let read = KNOBS.iter().filter(|k| k.per_task && matches!(k.get, Get::Proc(_))).count();
        assert_eq!(KNOBS.iter().filter(|k| k.per_task).count(), thread_asks().count() + read);
        // A knob set by plan is a thread's own, asked with one prctl.
        assert!(KNOBS.iter().all(|k| !matches!(k.set, Set::Plan(_)) || (k.per_task && matches!(k.get, Get::Ask(_)))));
    }
}
