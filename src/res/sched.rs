//! SCHED: how the process is scheduled, on the CPU and for I/O: its policy and priority, nice
//! value, reset-on-fork and utilisation clamps (all of struct sched_attr), the CPUs it may run
//! on, its I/O priority and its timer slack. Read from outside (sched_getattr,
//! sched_getaffinity, ioprio_get) and, for the timer slack, asked of the process itself; set
//! back from inside the restored process once it has its user's ids and resource limits, so it
//! gets exactly what that user may set here (a nice value below RLIMIT_NICE's, a real-time
//! policy without RLIMIT_RTPRIO, an RT I/O class without CAP_SYS_ADMIN are refused by name, never
//! quietly weakened). An affinity that was every CPU of its node is recorded as such: it gets
//! every CPU of the restoring node.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use crate::ptrace::calls::Calls;
use nix::errno::Errno;

/// The struct sched_attr of sched_getattr/sched_setattr (SCHED_ATTR_SIZE_VER1: with clamps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}

const ATTR_SIZE: u32 = 56;
const SCHED_FLAG_RESET_ON_FORK: u64 = 1;
const SCHED_FLAG_UTIL_CLAMP: u64 = 0x20 | 0x40;
const SCHED_DEADLINE: u32 = 6;
/// The most CPUs an affinity mask here may name.
const MAX_CPUS: usize = 8192;

impl Attr {
    fn to_bytes(self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(ATTR_SIZE).u32(self.policy).u64(self.flags).u32(self.nice as u32).u32(self.priority);
        e.u64(self.runtime).u64(self.deadline).u64(self.period).u32(self.util_min).u32(self.util_max);
        e.into_bytes()
    }

    fn from_bytes(b: &[u8]) -> Option<Attr> {
        let mut d = Dec::new(b, 0, "sched_attr");
        let _size = d.u32().ok()?;
        Some(Attr {
            policy: d.u32().ok()?,
            flags: d.u64().ok()?,
            nice: d.u32().ok()? as i32,
            priority: d.u32().ok()?,
            runtime: d.u64().ok()?,
            deadline: d.u64().ok()?,
            period: d.u64().ok()?,
            util_min: d.u32().ok()?,
            util_max: d.u32().ok()?,
        })
    }

    /// "SCHED_BATCH nice 5", "SCHED_FIFO priority 10, reset-on-fork"...
    pub fn show(&self) -> String {
        let name = match self.policy {
            0 => "SCHED_OTHER".to_string(),
            1 => "SCHED_FIFO".into(),
            2 => "SCHED_RR".into(),
            3 => "SCHED_BATCH".into(),
            5 => "SCHED_IDLE".into(),
            6 => "SCHED_DEADLINE".into(),
            p => format!("policy {p}"),
        };
        let mut s = match self.policy {
            1 | 2 => format!("{name} priority {}", self.priority),
            6 => format!("{name} runtime {} deadline {} period {} ns", self.runtime, self.deadline, self.period),
            _ => format!("{name} nice {}", self.nice),
        };
        if self.flags & SCHED_FLAG_RESET_ON_FORK != 0 {
            s.push_str(", reset-on-fork");
        }
        if (self.util_min, self.util_max) != (0, 1024) {
            s.push_str(&format!(", utilisation clamp {}-{}", self.util_min, self.util_max));
        }
        s
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sched {
    pub attr: Attr,
    /// The CPUs it may run on, as a bitmap of 64-bit words; empty for "every CPU of its node".
    pub cpus: Vec<u64>,
    /// ioprio_get's value: class << 13 | level.
    pub ioprio: u32,
    /// PR_GET_TIMERSLACK, in nanoseconds.
    pub timer_slack: u64,
}

fn getattr(pid: i32) -> Result<Attr> {
    let mut b = [0u8; ATTR_SIZE as usize];
    // SAFETY: sched_getattr writes at most `size` (56) bytes into `b`.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, pid, b.as_mut_ptr(), ATTR_SIZE, 0) };
    if rc != 0 {
        return Err(Error::sys("sched_getattr", format!("pid {pid}"), Errno::last()));
    }
    let mut a = Attr::from_bytes(&b).ok_or_else(|| Error::Proc("sched_getattr: short struct".into()))?;
    // An older kernel (no clamps) leaves them 0: the defaults then.
    if a.util_max == 0 {
        a.util_max = 1024;
    }
    Ok(a)
}

fn getaffinity(pid: i32) -> Result<Vec<u64>> {
    let mut words = vec![0u64; MAX_CPUS / 64];
    // SAFETY: sched_getaffinity writes at most the given byte count into `words`.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getaffinity, pid, words.len() * 8, words.as_mut_ptr()) };
    if rc < 0 {
        return Err(Error::sys("sched_getaffinity", format!("pid {pid}"), Errno::last()));
    }
    // The kernel returns the bytes it wrote; the rest is 0 anyway. Trailing zero words go.
    while words.last() == Some(&0) {
        words.pop();
    }
    Ok(words)
}

fn getioprio(pid: i32) -> Result<u32> {
    // SAFETY: ioprio_get takes no pointer.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, pid) };
    if rc < 0 {
        return Err(Error::sys("ioprio_get", format!("pid {pid}"), Errno::last()));
    }
    Ok(rc as u32)
}

/// The online CPUs, as a bitmap of 64-bit words (read once: a checkpoint asks it for every
/// thread).
fn online_cpus() -> &'static [u64] {
    static ONLINE: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    ONLINE.get_or_init(read_online_cpus)
}

fn read_online_cpus() -> Vec<u64> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut words = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else { continue };
        for cpu in a..=b.min(MAX_CPUS - 1) {
            if words.len() <= cpu / 64 {
                words.resize(cpu / 64 + 1, 0);
            }
            words[cpu / 64] |= 1 << (cpu % 64);
        }
    }
    words
}

/// "0-3,6".
fn cpu_list(words: &[u64]) -> String {
    let cpus: Vec<usize> = (0..words.len() * 64).filter(|&c| words[c / 64] & (1 << (c % 64)) != 0).collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { cpus[i].to_string() } else { format!("{}-{}", cpus[i], cpus[j]) });
        i = j + 1;
    }
    parts.join(",")
}

fn show_ioprio(p: u32) -> String {
    let level = p & 0x1fff;
    match p >> 13 {
        0 => "none".into(),
        1 => format!("realtime {level}"),
        2 => format!("best-effort {level}"),
        3 => "idle".into(),
        c => format!("class {c} level {level}"),
    }
}

impl Sched {
    /// All of it but the timer slack (which only the thread can tell), of task `tid`, read
    /// from outside.
    pub fn read(tid: i32, timer_slack: u64) -> Result<Sched> {
        let cpus = getaffinity(tid)?;
        let cpus = if cpus == online_cpus() { vec![] } else { cpus };
        Ok(Sched { attr: getattr(tid)?, cpus, ioprio: getioprio(tid)?, timer_slack })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        let a = &self.attr;
        e.u32(a.policy).u64(a.flags).u32(a.nice as u32).u32(a.priority);
        e.u64(a.runtime).u64(a.deadline).u64(a.period).u32(a.util_min).u32(a.util_max);
        e.u32(self.ioprio).u64(self.timer_slack).u32(self.cpus.len() as u32);
        for w in &self.cpus {
            e.u64(*w);
        }
        e.into_bytes()
    }

    pub fn decode(b: &[u8], at: u64) -> CrfResult<Sched> {
        let mut d = Dec::new(b, at, "SCHED");
        let attr = Attr {
            policy: d.u32()?,
            flags: d.u64()?,
            nice: d.u32()? as i32,
            priority: d.u32()?,
            runtime: d.u64()?,
            deadline: d.u64()?,
            period: d.u64()?,
            util_min: d.u32()?,
            util_max: d.u32()?,
        };
        let (ioprio, timer_slack) = (d.u32()?, d.u64()?);
        let n = d.count(8)?;
        if n > MAX_CPUS / 64 {
            return Err(d.bad_at(at, format!("an affinity mask of {n} words")));
        }
        let cpus = (0..n).map(|_| d.u64()).collect::<CrfResult<Vec<u64>>>()?;
        d.finish()?;
        let bad = if !(-20..=19).contains(&attr.nice) {
            Some(format!("nice {} is not valid", attr.nice))
        } else if attr.policy > SCHED_DEADLINE || attr.policy == 4 {
            Some(format!("scheduling policy {} is not valid", attr.policy))
        } else if attr.flags & !SCHED_FLAG_RESET_ON_FORK != 0 {
            Some(format!("scheduling flags {:#x} are not valid", attr.flags))
        } else if attr.priority > 99 || attr.util_min > attr.util_max || attr.util_max > 1024 {
            Some("a priority or utilisation clamp out of range".into())
        } else if ioprio >> 13 > 3 {
            Some(format!("I/O priority {ioprio:#x} is not valid"))
        } else if !cpus.is_empty() && cpus.iter().all(|&w| w == 0) {
            Some("an affinity mask with no CPU".into())
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(d.bad_at(at, why));
        }
        Ok(Sched { attr, cpus, ioprio, timer_slack })
    }

    /// crfinfo's line.
    pub fn describe(&self) -> Vec<String> {
        vec![format!("sched:     {}", self.show_all())]
    }

    fn show_all(&self) -> String {
        let cpus =
            if self.cpus.is_empty() { "every CPU".to_string() } else { format!("CPUs {}", cpu_list(&self.cpus)) };
        format!("{}, {cpus}, I/O {}, timer slack {} ns", self.attr.show(), show_ioprio(self.ioprio), self.timer_slack)
    }

    /// Sets, inside the restored process (its user's ids and resource limits in place), what
    /// differs from what it inherited from us. What its user may not set refuses the restore.
    /// Returns the timer slack the process had before, which threads made from it have too.
    pub fn restore(&self, c: &mut Ctl) -> Result<u64> {
        let slack = c.prctl(libc::PR_GET_TIMERSLACK, [0; 4], "prctl(PR_GET_TIMERSLACK)", "query")?;
        c.run(&self.calls(c.pid(), slack)?)?;
        Ok(slack)
    }

    /// What [`Sched::restore`] runs in task `tid`, whose timer slack is `slack`: a call for
    /// each setting that differs from the task's now (read here).
    pub fn calls(&self, tid: i32, slack: u64) -> Result<Calls> {
        let mut l = Calls::new();
        let denied = |what: String, how: &str| {
            let why = format!("the process had {what}, which its user may not set here ({how})");
            move || Error::Refused(why.clone())
        };
        let other = |call: &'static str, what: String| {
            move |e: i64, who: &str| Error::sys(format!("{call} (in {who})"), what.clone(), Errno::from_raw(-e as i32))
        };
        if slack != self.timer_slack {
            l.prctl(libc::PR_SET_TIMERSLACK, [self.timer_slack, 0, 0, 0], "prctl(PR_SET_TIMERSLACK)", "restore");
        }
        if !self.cpus.is_empty() && getaffinity(tid)? != self.cpus {
            let mut bytes = Vec::with_capacity(self.cpus.len() * 8);
            for w in &self.cpus {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
            let offline = format!("the process was bound to CPUs {} (sched_setaffinity)", cpu_list(&self.cpus));
            let failed = other("sched_setaffinity", format!("CPUs {}", cpu_list(&self.cpus)));
            l.sched_setaffinity(&bytes, move |r, who| match r {
                0.. => Ok(()),
                e if e == -(libc::EINVAL as i64) => Err(Error::not_here(
                    offline.clone(),
                    "none of them is online here; restore it on a node that has them",
                )),
                e => Err(failed(e, who)),
            });
        }
        if getioprio(tid)? != self.ioprio {
            let refused = denied(format!("I/O priority {}", show_ioprio(self.ioprio)), "CAP_SYS_ADMIN");
            let failed = other("ioprio_set", show_ioprio(self.ioprio));
            l.ioprio_set(self.ioprio, move |r, who| match r {
                0.. => Ok(()),
                e if e == -(libc::EPERM as i64) => Err(refused()),
                e => Err(failed(e, who)),
            });
        }
        let now = getattr(tid)?;
        if now != self.attr {
            let mut want = self.attr;
            if (want.util_min, want.util_max) != (now.util_min, now.util_max) {
                want.flags |= SCHED_FLAG_UTIL_CLAMP;
            }
            let how = match want.policy {
                1 | 2 => "RLIMIT_RTPRIO or CAP_SYS_NICE",
                SCHED_DEADLINE => "CAP_SYS_NICE",
                _ => "RLIMIT_NICE or CAP_SYS_NICE",
            };
            let refused = denied(self.attr.show(), how);
            let failed = other("sched_setattr", self.attr.show());
            l.sched_setattr(&want.to_bytes(), move |r, who| match r {
                0.. => Ok(()),
                e if e == -(libc::EPERM as i64) => Err(refused()),
                e => Err(failed(e, who)),
            });
        }
        Ok(l)
    }
}

/// crfinfo's lines for TSCHED: each thread's scheduling, by tid.
pub fn describe_threads(all: &[Sched], threads: &[super::thread::ThreadInfo]) -> Vec<String> {
    all.iter()
        .enumerate()
        .map(|(i, s)| {
            let tid = threads.get(i).map_or("?".to_string(), |t| t.tid.to_string());
            format!("tsched:    thread {tid}: {}", s.show_all())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_values() {
        let s = Sched {
            attr: Attr { policy: 3, nice: 5, util_max: 1024, flags: 1, ..Default::default() },
            cpus: vec![0b101],
            ioprio: 2 << 13 | 6,
            timer_slack: 123_456,
        };
        assert_eq!(Sched::decode(&s.encode(), 0).unwrap(), s);
        assert_eq!(cpu_list(&[0b1011, 1]), "0-1,3,64");
        assert!(s.describe()[0].contains("SCHED_BATCH nice 5, reset-on-fork, CPUs 0,2, I/O best-effort 6"));
        for bad in [
            Sched { attr: Attr { nice: 20, ..s.attr }, ..s.clone() },
            Sched { attr: Attr { policy: 7, ..s.attr }, ..s.clone() },
            Sched { attr: Attr { flags: 2, ..s.attr }, ..s.clone() },
            Sched { cpus: vec![0], ..s.clone() },
            Sched { ioprio: 4 << 13, ..s.clone() },
        ] {
            assert!(Sched::decode(&bad.encode(), 0).is_err(), "{bad:?}");
        }
        let me = getattr(0).unwrap();
        assert!(me.util_max <= 1024);
    }
}
