//! Everything that stops a process from being checkpointed, all of it at once: a refusal
//! names every reason (each fd, mapping, child, lock...), not only the first, and
//! `ckpt --check` lists them touching nothing. What /proc/PID/status says is checked here; the
//! fds and mappings by the resources that save them (res::files, res::memory).

use crate::error::{Error, Result};
use crate::ptrace::calls::{Answers, Calls, Q};
use crate::ptrace::procfs;
use crate::ptrace::tracee::Tracee;

const PR_GET_IO_FLUSHER: i32 = 58;

/// The checks /proc/PID/status answers; `traced` once we trace the process ourselves.
pub fn status(pid: i32, status: &str, traced: bool) -> Result<()> {
    let field = |k| procfs::status_field(status, k).unwrap_or("");
    if field("State").starts_with('Z') || field("State").starts_with('X') {
        return Err(Error::Refused(format!("pid {pid} is a zombie; there is nothing left to checkpoint")));
    }
    if field("Tgid") != pid.to_string() {
        return Err(Error::Refused(format!(
            "pid {pid} is a thread of process {}; checkpoint the process",
            field("Tgid")
        )));
    }
    let tracer = field("TracerPid");
    if !traced && tracer != "0" && !tracer.is_empty() {
        return Err(Error::Refused(format!(
            "pid {pid} is already traced by pid {tracer} (a debugger?); detach it first"
        )));
    }
    let uid = procfs::status_ids(status, "Uid").unwrap_or([0; 4]);
    let me = nix::unistd::geteuid().as_raw();
    if me != 0 && uid.iter().any(|&u| u != me) {
        return Err(Error::Permission(format!(
            "pid {pid} belongs to uid {}; you (uid {me}) may not checkpoint it: run as its owner or as root",
            uid[0]
        )));
    }
    // From here on, what crs cannot handle yet: every reason is named.
    let mut why = Vec::new();
    // Seccomp filters are read and restored by root (res::seccomp); strict mode is not.
    match field("Seccomp") {
        "0" | "" => {}
        "1" => why.push("it runs in seccomp strict mode (SECCOMP_MODE_STRICT), which crs does not restore".into()),
        _ if !crate::res::seccomp::can_suspend() => why.push(
            "it runs under a seccomp filter, which only root may checkpoint (PTRACE_SECCOMP_GET_FILTER, PTRACE_O_SUSPEND_SECCOMP)"
                .into(),
        ),
        _ => {}
    }
    // What cannot be read is not taken for the default: a check that cannot be made refuses.
    // A process whose every uid is 0 may have any (res::caps brings them back); the bounding
    // set comes back for every process.
    let all_root = uid.iter().all(|&u| u == 0) && procfs::status_ids(status, "Uid").is_some();
    let caps_default = |k| {
        let (Ok(v), Ok(full)) = (u64::from_str_radix(field(k), 16), u64::from_str_radix(field("CapBnd"), 16)) else {
            return false;
        };
        match k {
            "CapInh" | "CapAmb" => v == 0,
            _ if uid[1] == 0 => v == full,
            _ => v == 0,
        }
    };
    // A user's process may hold capabilities (a unit's AmbientCapabilities=): they come back
    // when root restores it. One whose uids mix 0 and others is refused.
    let mixed = !all_root && uid.contains(&0);
    let sets = ["CapInh", "CapPrm", "CapEff", "CapAmb"];
    if !all_root && !sets.iter().all(|k| u64::from_str_radix(field(k), 16).is_ok()) {
        why.push(format!("its capabilities cannot be read (CapInh/CapPrm/CapEff/CapAmb in /proc/{pid}/status)"));
    } else if mixed && !sets.iter().all(|k| caps_default(k)) {
        why.push(format!(
            "its uids mix 0 and others and it holds non-default capabilities (see CapInh/CapPrm/CapEff/CapAmb in /proc/{pid}/status)"
        ));
    }
    // x86: a shadow stack (CET) or linear address masking (LAM) the process turned on.
    let features = field("x86_Thread_features");
    if !features.is_empty() && features != "0" && !features.chars().all(char::is_whitespace) {
        why.push(format!("it uses x86 thread features ({features}: a shadow stack?), which crs does not restore"));
    }
    let untag = field("untag_mask");
    if !untag.is_empty() && u64::from_str_radix(untag.trim_start_matches("0x"), 16).is_ok_and(|m| m != u64::MAX) {
        why.push(format!("it uses linear address masking (untag_mask {untag}), which crs does not restore"));
    }
    let threads: u64 = field("Threads").parse().map_err(|_| {
        Error::Proc(format!(
            "/proc/{pid}/status: no Threads line that parses; cannot tell whether pid {pid} is single-threaded"
        ))
    })?;
    if threads == 0 {
        why.push(format!("/proc/{pid}/status says it has no thread"));
    }
    Error::blocked(pid, why)
}

/// What a thread of the process has of its own in /proc/PID/task/TID/status, unlike its
/// leader (`leader`: the leader's status): credentials, capabilities, seccomp, no_new_privs,
/// x86 thread features. A restore gives every thread the leader's.
pub fn thread(pid: i32, tid: i32, leader: &str) -> Result<(Vec<String>, bool)> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let own = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], false)), // it exited
        Err(e) => return Err(Error::io(path, e)),
    };
    // Signals queued for the thread itself (not for its process): none, most often.
    let pending = procfs::status_field(&own, "SigPnd").is_none_or(|m| !m.trim_start_matches('0').is_empty());
    let keys = ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"];
    let differ: Vec<&str> = keys
        .into_iter()
        .chain(["x86_Thread_features"])
        .filter(|k| procfs::status_field(&own, k) != procfs::status_field(leader, k))
        .collect();
    let reasons = match differ.len() {
        0 => vec![],
        _ => {
            vec![format!("its thread {tid} has its own {} (see {path}), which crs does not restore", differ.join(", "))]
        }
    };
    Ok((reasons, pending))
}

/// Memory areas with a NUMA policy of their own (mbind), from /proc/PID/numa_maps (absent
/// without NUMA support: then there is none).
pub fn numa(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap_or_default();
    let bound: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (addr, policy) = (w.next()?, w.next()?);
            (policy != "default").then(|| format!("{addr} {policy}"))
        })
        .collect();
    match bound.len() {
        0 => vec![],
        _ => vec![format!("memory at {} has a NUMA policy (mbind), which crs does not restore yet", bound.join(", "))],
    }
}

/// Its POSIX timers (timer_create) crs cannot restore, from /proc/PID/timers.
pub fn timers(pid: i32) -> Vec<String> {
    crate::res::ptimers::refusals(pid)
}

/// Namespaces it does not share with us: it would come back in ours. (Not the mount
/// namespace: files are found by path wherever the restore runs, and `ip netns exec` gives
/// every command a mount namespace of its own. Nor the IPC namespace: every System V object
/// in it is then the tree's, and a restore makes a new one; see res::sysv.)
pub fn namespaces(pid: i32) -> Vec<String> {
    let other: Vec<String> = ["net", "pid", "uts", "user", "time", "cgroup"]
        .iter()
        .filter_map(|ns| {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()?;
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).ok()?;
            (theirs != ours).then(|| theirs.to_string_lossy().into_owned())
        })
        .collect();
    match other.len() {
        0 => vec![],
        _ => vec![format!(
            "it is in other namespaces than crs ({}), which crs does not restore: run crs in them",
            other.join(", ")
        )],
    }
}

/// All that the process's relations and kernel objects say against it (children, timers,
/// namespaces, and NUMA policies unless `numa` is false). Its file locks are found with its
/// fds (res::files).
pub fn relations(pid: i32, numa: bool) -> Vec<String> {
    let numa = if numa { self::numa(pid) } else { vec![] };
    [timers(pid), namespaces(pid), numa].concat()
}

/// Whether the work on a frozen process, after a look at it running, reads its NUMA
/// policies again: numa_maps walks every page (17 ms a GiB), where time counts, so only on a
/// machine with more than one node (on one, a policy set in between could only name node 0).
pub fn numa_again() -> bool {
    std::fs::read_to_string("/sys/devices/system/node/possible").map_or(true, |n| n.trim() != "0")
}

/// The questions for what only the frozen process itself can tell: its security bits, a NUMA
/// policy, the I/O flusher flag.
pub fn ask(l: &mut Calls) -> Asked {
    Asked {
        securebits: l.ask_prctl(libc::PR_GET_SECUREBITS, 0),
        mempolicy: l.ask_mempolicy(),
        io_flusher: l.ask_prctl(PR_GET_IO_FLUSHER, 0),
    }
}

/// The questions of [`ask`].
pub struct Asked {
    securebits: Q,
    mempolicy: Q,
    io_flusher: Q,
}

impl Asked {
    /// Its PR_GET_SECUREBITS.
    pub fn securebits(&self, a: &Answers) -> Result<u32> {
        a.ok(self.securebits, "prctl(PR_GET_SECUREBITS)", "query").map(|b| b as u32)
    }

    /// The reasons against the process among the answers and what its leader `t` shows
    /// (syscall user dispatch). Its security bits come back (res::caps) unless its uids mix 0
    /// and others (`mixed`).
    pub fn reasons(&self, a: &Answers, t: &Tracee, mixed: bool) -> Result<Vec<String>> {
        let mut why = Vec::new();
        let securebits = self.securebits(a)?;
        if securebits != 0 && mixed {
            why.push(format!(
                "it has security bits {securebits:#x} set (PR_SET_SECUREBITS, PR_SET_KEEPCAPS) and uids that mix 0 and others, which crs does not restore"
            ));
        }
        let mode = match a.raw(self.mempolicy) {
            0 => a.u32(self.mempolicy),
            e if e == -(libc::ENOSYS as i64) => 0,
            _ => a.ok(self.mempolicy, "get_mempolicy", "its policy").map(|_| 0)?,
        };
        if mode != 0 {
            why.push(format!(
                "it has a NUMA memory policy (set_mempolicy mode {mode:#x}), which crs does not restore yet"
            ));
        }
        if t.syscall_user_dispatch()? {
            why.push("it uses syscall user dispatch (PR_SET_SYSCALL_USER_DISPATCH), which crs does not restore".into());
        }
        // Only a process with CAP_SYS_RESOURCE may ask (EPERM otherwise), and only such a
        // process can have set it.
        if a.raw(self.io_flusher) == 1 {
            why.push("it is an I/O flusher (PR_SET_IO_FLUSHER), which crs does not restore yet".into());
        }
        Ok(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_text(threads: &str, cap: &str) -> String {
        format!(
            "Name:\tx\nState:\tS (sleeping)\nTgid:\t7\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nThreads:\t{threads}\nSeccomp:\t0\nNoNewPrivs:\t0\nCapInh:\t0000000000000000\nCapPrm:\t{cap}\nCapEff:\t{cap}\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n"
        )
    }

    #[test]
    fn a_status_that_cannot_be_read_refuses() {
        let full = "000001ffffffffff";
        // Run as root (CI): a process of root's with root's capabilities passes.
        if nix::unistd::geteuid().is_root() {
            assert!(status(7, &status_text("1", full), false).is_ok());
        }
        let e = status(7, &status_text("", full), false).unwrap_err().to_string();
        assert!(e.contains("no Threads line"), "{e}");
        let e = status(7, &status_text("many", full), false).unwrap_err().to_string();
        assert!(e.contains("no Threads line"), "{e}");
        if nix::unistd::geteuid().is_root() {
            assert!(status(7, &status_text("2", full), false).is_ok(), "threads are no reason");
        }
        // A root process's capabilities come back (res::caps); a user's unreadable ones refuse.
        assert!(status(7, &status_text("1", "?"), false).is_ok() || !nix::unistd::geteuid().is_root());
        let user = |t: String| t.replace("Uid:\t0\t0\t0\t0", "Uid:\t1000\t1000\t1000\t1000");
        assert!(status(7, &user(status_text("1", "?")), false).is_err());
        // Every reason at once (no_new_privs and, for root, seccomp filters are restored: no
        // reason).
        if nix::unistd::geteuid().is_root() {
            let t = user(status_text("3", "?"))
                .replace("Seccomp:\t0", "Seccomp:\t1")
                .replace("NoNewPrivs:\t0", "NoNewPrivs:\t1");
            match status(7, &t, false) {
                Err(Error::Blocked { reasons, .. }) => assert_eq!(reasons.len(), 2, "{reasons:?}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
