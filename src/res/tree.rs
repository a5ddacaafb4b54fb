//! TREE: the processes an image holds when it holds more than one. `ckpt PID` takes PID and
//! all its descendants: each live one is a block of its own in the image (HEAD to the rest of
//! its sections), in the order of this list, parents before their children; a zombie (a child
//! that exited and was not reaped yet) is only a line here, with the status its parent will
//! reap. The list says how the members are related (parent, process group, session), which a
//! restore rebuilds before anything of theirs is read: every member is forked by its restored
//! parent, sessions are re-made by their leaders (setsid) or inherited, groups re-joined.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::Result;
use crate::ptrace::procfs;
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// A zombie: its wait status (as waitpid reports it).
    pub zombie: Option<i32>,
    /// A zombie's name (what ps shows of it; version 9), empty otherwise.
    pub comm: String,
}

/// The most processes an image holds (a restore forks them with the restorer's privileges).
pub const MAX_MEMBERS: usize = 4096;

/// The children of `pid` (of all its threads), in pid order.
pub fn children(pid: i32) -> Vec<i32> {
    let mut kids = BTreeSet::new();
    let dir = format!("/proc/{pid}/task");
    for t in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        kids.extend(list.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
    }
    kids.into_iter().collect()
}

/// `root` and its descendants, parents before children (breadth first, each one's children in
/// pid order), as /proc shows them now.
pub fn walk(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        for k in children(out[i]) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
        i += 1;
    }
    out
}

/// What /proc says of member `pid`.
pub fn member(pid: i32) -> Result<Member> {
    let s = procfs::read_stat(pid)?;
    let zombie = (s.state == 'Z').then_some(s.exit_code);
    // (At most 15 bytes, as the kernel keeps it; a name read lossily may have grown.)
    let mut comm = if zombie.is_some() { s.comm } else { String::new() };
    while comm.len() > 15 {
        comm.pop();
    }
    Ok(Member { pid, ppid: s.ppid, pgid: s.pgid, sid: s.sid, zombie, comm })
}

/// "pid 12 (sh)".
fn who(pid: i32) -> String {
    crate::res::endpoints::who(pid)
}

/// Why the relations of `members` (root first) could not be rebuilt, one reason each: a
/// member's session must be its own (it is the leader) or its parent's (inherited at fork),
/// and its process group its own, the root's, or one whose leader is a member.
pub fn check(members: &[Member]) -> Vec<String> {
    let mut why = Vec::new();
    let Some(root) = members.first() else { return why };
    for m in &members[1..] {
        let Some(parent) = members.iter().find(|p| p.pid == m.ppid) else {
            why.push(format!("{}'s parent {} is not in the checkpoint", who(m.pid), m.ppid));
            continue;
        };
        if m.sid != m.pid && m.sid != parent.sid {
            why.push(format!(
                "{} is in session {}, not its own nor its parent's ({}), which crs cannot rebuild",
                who(m.pid),
                m.sid,
                parent.sid
            ));
        }
        let led = members.iter().any(|l| l.pid == m.pgid && l.sid == m.sid);
        if m.pgid != m.pid && m.pgid != root.pgid && !led {
            why.push(format!(
                "{} is in process group {}, whose leader is not in the checkpoint, which crs cannot rebuild",
                who(m.pid),
                m.pgid
            ));
        }
    }
    why
}

/// Whether signal `sig`'s default action ends a process.
fn ends_by_default(sig: i32) -> bool {
    let ignored_or_stops = [
        libc::SIGCHLD,
        libc::SIGCONT,
        libc::SIGSTOP,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGURG,
        libc::SIGWINCH,
    ];
    (1..=64).contains(&sig) && !ignored_or_stops.contains(&sig)
}

pub fn encode(all: &[Member]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for m in all {
        e.u32(m.pid as u32).u32(m.ppid as u32).u32(m.pgid as u32).u32(m.sid as u32);
        e.u8(m.zombie.is_some() as u8).u32(m.zombie.unwrap_or(0) as u32);
    }
    // (Version 9: the zombies' names, after the processes.)
    let named: Vec<&Member> = all.iter().filter(|m| m.zombie.is_some() && !m.comm.is_empty()).collect();
    if !named.is_empty() {
        e.u32(named.len() as u32);
        for m in named {
            e.u32(m.pid as u32).bytes(m.comm.as_bytes());
        }
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Member>> {
    let mut d = Dec::new(b, at, "TREE");
    let n = d.count(21)?;
    if n > MAX_MEMBERS {
        return Err(d.bad_at(at, format!("{n} processes; crs restores at most {MAX_MEMBERS}")));
    }
    let mut out: Vec<Member> = Vec::with_capacity(n);
    for i in 0..n {
        let (pid, ppid, pgid, sid) = (d.u32()? as i32, d.u32()? as i32, d.u32()? as i32, d.u32()? as i32);
        let zombie = d.u8()? != 0;
        let status = d.u32()? as i32;
        let m = Member { pid, ppid, pgid, sid, zombie: zombie.then_some(status), comm: String::new() };
        if m.pid <= 0 || out.iter().any(|o| o.pid == m.pid) {
            return Err(d.bad_at(at, format!("process {i}: pid {} again or not a pid", m.pid)));
        }
        // Parents come before their children; the root is alive.
        let parent = out.iter().find(|p| p.pid == m.ppid);
        if i > 0 && parent.is_none_or(|p| p.zombie.is_some()) {
            return Err(d.bad_at(at, format!("pid {}: its parent {} is not a live process before it", m.pid, m.ppid)));
        }
        if i == 0 && zombie {
            return Err(d.bad_at(at, "the first process is a zombie".to_string()));
        }
        // A restore makes the zombie die of the same signal: one whose default is to end it.
        if zombie && libc::WIFSIGNALED(status) && !ends_by_default(libc::WTERMSIG(status)) {
            return Err(d.bad_at(at, format!("pid {}: a zombie killed by signal {}", m.pid, libc::WTERMSIG(status))));
        }
        out.push(m);
    }
    // (Version 9: the zombies' names.)
    if d.remaining() > 0 {
        let k = d.count(8)?;
        for _ in 0..k {
            let rec = d.offset();
            let (pid, name) = (d.u32()? as i32, d.bytes()?);
            let m = out.iter_mut().find(|m| m.pid == pid && m.zombie.is_some() && m.comm.is_empty());
            match (m, std::str::from_utf8(name)) {
                (Some(m), Ok(n)) if !n.is_empty() && n.len() < 16 && !n.contains('\0') => m.comm = n.to_string(),
                _ => {
                    return Err(
                        d.bad_at(rec, format!("a name for pid {pid}, which is no zombie of the tree or has one"))
                    );
                }
            }
        }
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[Member]) -> Vec<String> {
    all.iter()
        .map(|m| {
            let z = match m.zombie {
                Some(s) if libc::WIFSIGNALED(s) => format!(", zombie killed by signal {}", libc::WTERMSIG(s)),
                Some(s) => format!(", zombie exited {}", libc::WEXITSTATUS(s)),
                None => String::new(),
            };
            let name = if m.comm.is_empty() { String::new() } else { format!(", named {}", m.comm) };
            format!("tree:      pid {} parent {} group {} session {}{z}{name}", m.pid, m.ppid, m.pgid, m.sid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pid: i32, ppid: i32, pgid: i32, sid: i32) -> Member {
        Member { pid, ppid, pgid, sid, zombie: None, comm: String::new() }
    }

    #[test]
    fn round_trip_and_order() {
        let all = vec![m(10, 1, 10, 10), m(11, 10, 10, 10), Member { zombie: Some(3 << 8), ..m(12, 11, 12, 10) }];
        assert_eq!(decode(&encode(&all), 0).unwrap(), all);
        // A zombie's name; none for a live process.
        let mut named = all.clone();
        named[2].comm = "worker".into();
        assert_eq!(decode(&encode(&named), 0).unwrap(), named);
        let mut b = encode(&all);
        b.extend(1u32.to_le_bytes());
        b.extend(11u32.to_le_bytes());
        b.extend(4u32.to_le_bytes());
        b.extend(b"live");
        assert!(decode(&b, 0).is_err(), "a name for a live process");
        // A child before its parent, a zombie's child, a zombie root.
        assert!(decode(&encode(&[all[0].clone(), all[2].clone(), all[1].clone()]), 0).is_err());
        let mut z = all.clone();
        z.push(m(13, 12, 10, 10));
        assert!(decode(&encode(&z), 0).is_err());
        assert!(decode(&encode(&all[2..]), 0).is_err());
        // A zombie 'killed' by a signal that ends nobody: its restore would wait forever.
        let mut w = all.clone();
        w[2].zombie = Some(libc::SIGCHLD);
        assert!(decode(&encode(&w), 0).is_err());
    }

    #[test]
    fn sessions_and_groups_that_cannot_be_rebuilt_are_named() {
        // A shell script's tree: everyone in the outer group and session.
        assert!(check(&[m(10, 1, 5, 4), m(11, 10, 5, 4), m(12, 11, 5, 4)]).is_empty());
        // setsid bash -c 'a | b': bash leads; a pipeline of its own group.
        assert!(check(&[m(10, 1, 10, 10), m(11, 10, 11, 10), m(12, 10, 11, 10)]).is_empty());
        // A grandchild in a session of its grandparent's, its parent having left it.
        let why = check(&[m(10, 1, 10, 10), m(11, 10, 11, 11), m(12, 11, 10, 10)]);
        assert_eq!(why.len(), 1, "{why:?}");
        // A group led from outside.
        let why = check(&[m(10, 1, 5, 4), m(11, 10, 7, 4)]);
        assert!(why[0].contains("process group 7"), "{why:?}");
    }
}
