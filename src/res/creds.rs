//! Credentials: who a restored process is, and who may ask for that.
//!
//! The ids themselves travel in HEAD (four uids, four gids, the supplementary groups). This file
//! holds everything that turns them into a process, because a mistake here hands out root:
//! - the rules on whose image a caller may restore ([`check_caller`], [`check_user_claims`]);
//! - [`AsOwner`]: our own thread checks the image's files with the owner's file-system ids, so
//!   that root never stats or opens a path an image names on the owner's behalf;
//! - [`restore`], which sets the ids inside the restored child before it opens anything, and
//!   [`session_keyring`], which gives it a session keyring of its own that its threads share,
//!   and [`verify`], which reads them back from /proc
//!   and fails unless they are exactly the image's: a set*id call that quietly leaves an id
//!   unchanged can never go unnoticed.

use super::head::Header;
use crate::error::{Error, Result};
use crate::ptrace::calls::Calls;
use crate::ptrace::{Ctl, procfs};

/// Whether we run with root's effective uid.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether we are an ordinary user with capabilities: in a user namespace of our own (rstrt
/// --pidns), where they reach no further than the namespaces we made. A process restored
/// there must not keep them: it gets the image's sets (none, for an ordinary user's).
pub fn user_with_caps() -> bool {
    // Not in the initial user namespace (its uid_map is the whole range, as itself): a user
    // with capabilities there (ambient ones, a service's) is an ordinary restorer.
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    if map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"] {
        return false;
    }
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim);
    !is_root() && eff.is_some_and(|v| !u64::from_str_radix(v, 16).is_ok_and(|v| v == 0))
}

/// An unprivileged caller restores only its own processes: every id of the image must be its
/// real uid or gid (it cannot set others). Root may restore any image it trusts.
pub fn check_caller(h: &Header) -> Result<()> {
    if is_root() {
        return Ok(());
    }
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    let wrong = h.uid_gids().find(|&(name, v)| v != if name.contains("uid") { uid } else { gid });
    if let Some((name, v)) = wrong {
        return Err(Error::Permission(format!(
            "the image's {name} is {v}; as uid {uid} gid {gid} you may only restore your own processes (root restores any)"
        )));
    }
    Ok(())
}

/// The rule for an image another party hands to a privileged restorer (a user's image file
/// restored by root, an image sent to restartd): every uid must be `uid`, and every gid and
/// supplementary group one that user has on this node (/etc/passwd and /etc/group). A user
/// may not make their process come back as someone else, nor in a group they are not in.
pub fn check_user_claims(h: &Header, uid: u32, whose: &str) -> Result<()> {
    if let Some((name, v)) = h.ids().take(4).find(|&(_, v)| v != uid) {
        return Err(Error::Permission(format!(
            "{whose} belongs to uid {uid} but its {name} is {v}; refusing (an image may not choose who it runs as)"
        )));
    }
    let allowed = user_groups(uid);
    if let Some((name, g)) = h.ids().skip(4).find(|(_, g)| !allowed.contains(g)) {
        return Err(Error::Permission(format!(
            "{whose} belongs to uid {uid} but its {name} is {g}, a group that user is not in here (/etc/passwd, /etc/group)"
        )));
    }
    Ok(())
}

/// The rule for a process that is not root, whoever sends it: its gids and groups must be
/// groups that one of its uids has on this node. (A key holder may say which user a process
/// belongs to, but not put it in a group that user is not in, such as shadow.)
pub fn check_groups(h: &Header) -> Result<()> {
    let mut uids = h.uids.to_vec();
    uids.dedup();
    let allowed: Vec<u32> = uids.iter().flat_map(|&u| user_groups(u)).collect();
    if let Some((name, g)) = h.ids().skip(4).find(|(_, g)| !allowed.contains(g)) {
        return Err(Error::Permission(format!(
            "process {}'s {name} is {g}, a group its user (uid {}) is not in here (/etc/passwd, /etc/group)",
            h.pid, h.uids[0]
        )));
    }
    Ok(())
}

/// The groups `uid` has on this node: its primary group (/etc/passwd) and every group of
/// /etc/group that lists it. Empty for a uid /etc/passwd does not know.
pub fn user_groups(uid: u32) -> Vec<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some((name, primary)) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse() == Ok(uid)).then(|| (f[0].to_string(), f[3].parse::<u32>().ok()))
    }) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = primary.into_iter().collect();
    for l in std::fs::read_to_string("/etc/group").unwrap_or_default().lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4
            && f[3].split(',').any(|m| m == name)
            && let Ok(g) = f[2].parse()
        {
            out.push(g);
        }
    }
    out
}

/// While alive, this thread (only this one: raw syscalls, which glibc would otherwise apply
/// to every thread) accesses files with the image owner's file-system ids and groups, so that
/// checks of the paths an image names see only what the owner may see, and open nothing the
/// owner could not. A no-op unless we are root and the image is not.
pub struct AsOwner {
    groups: Option<Vec<libc::gid_t>>,
}

impl AsOwner {
    pub fn enter(h: &Header) -> Result<AsOwner> {
        if !is_root() || h.uids[3] == 0 {
            return Ok(AsOwner { groups: None });
        }
        let saved = nix::unistd::getgroups().map_err(|e| Error::sys("getgroups", "rstrt", e))?;
        let guard = AsOwner { groups: Some(saved.iter().map(|g| g.as_raw()).collect()) };
        // SAFETY: setgroups reads h.groups.len() gids from a live slice; setfsgid and setfsuid
        // take integers. All three change only this thread's credentials.
        let r = unsafe { libc::syscall(libc::SYS_setgroups, h.groups.len(), h.groups.as_ptr()) };
        if r != 0 {
            return Err(Error::sys(
                "setgroups",
                format!("{} groups of the image", h.groups.len()),
                nix::errno::Errno::last(),
            ));
        }
        // SAFETY: as above.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, h.gids[3]);
            libc::syscall(libc::SYS_setfsuid, h.uids[3]);
        }
        // setfs*id report nothing useful on failure: ask (an invalid id changes nothing).
        // SAFETY: as above.
        let (fsuid, fsgid) = unsafe {
            (libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32, libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32)
        };
        if (fsuid, fsgid) != (h.uids[3], h.gids[3]) {
            return Err(Error::Proc(format!(
                "could not take the image's file-system ids {}/{} to check its files (have {fsuid}/{fsgid})",
                h.uids[3], h.gids[3]
            )));
        }
        Ok(guard)
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        let Some(groups) = self.groups.take() else { return };
        // SAFETY: as in `enter`; back to our own effective ids and groups.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, libc::geteuid());
            libc::syscall(libc::SYS_setfsgid, libc::getegid());
            libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
        }
    }
}

/// Sets the image's supplementary groups and all its uids and gids (dropping root's
/// capabilities when the image was not root), gives it a session keyring of its own if `join`
/// (when [`session_keyring`] could not give the process one to share), then reads all of it
/// back. Called before the child opens anything.
/// `keep`: the process's permitted set is to outlive the uid change (PR_SET_KEEPCAPS), for
/// res::caps to cut it to the image's at the end (root restoring a user's process that had
/// capabilities); its effective set is empty meanwhile all the same.
/// Returns what it found to drop, for [`calls`] in the process's other threads: they were
/// made from this one before, so they hold what it held.
pub fn restore(c: &mut Ctl, h: &Header, keep: bool, join: bool) -> Result<Option<Keepers>> {
    let pid = c.pid();
    let keepers = if h.uids.iter().all(|&u| u != 0) { Some(keepers(c)?) } else { None };
    // In one go where the scratch area is executable (five syscalls, each alone two context
    // switches): a call after one that fails runs all the same, and the restore fails on the
    // first failure (the process is killed, never run).
    let area = c.scratch.clone();
    c.run_at_once(&calls(h, keep, keepers, join), &area)?;
    verify(pid, h, if keep { Stage::Keeping } else { Stage::All })?;
    Ok(keepers)
}

/// What [`restore`] runs in each task: `keepers` (the securebits and capabilities the task
/// holds, for an image that was not root) dropped first, a session keyring of its own joined
/// last if `join`; [`verify`] reads the result back.
pub fn calls(h: &Header, keep: bool, keepers: Option<Keepers>, join: bool) -> Calls {
    let mut l = Calls::new();
    if let Some(k) = keepers {
        k.drop(&mut l);
        if keep {
            l.prctl(libc::PR_SET_KEEPCAPS, [1, 0, 0, 0], "prctl(PR_SET_KEEPCAPS)", "until the end of the restore");
        }
    }
    l.setgroups(&h.groups);
    let [r, e, s, fs] = h.gids;
    l.setresgid([r, e, s]);
    let [r, e, s, _] = h.uids;
    l.setresuid([r, e, s]);
    l.setfs_ids(h.uids[3], fs);
    if join {
        new_session_keyring(&mut l);
    }
    l
}

/// What would let capabilities outlive setresuid, which the child may have inherited from a
/// restorer started with them (a service with AmbientCapabilities, say): ambient
/// capabilities, the inheritable set, and the securebits that keep capabilities across a
/// uid change. All cleared while the child is still root.
#[derive(Clone, Copy)]
pub struct Keepers {
    securebits: bool,
    /// capget's words, when the inheritable set is not empty.
    caps: Option<[u32; 6]>,
}

fn keepers(c: &mut Ctl) -> Result<Keepers> {
    let securebits = c.prctl(libc::PR_GET_SECUREBITS, [0; 4], "prctl(PR_GET_SECUREBITS)", "query")? != 0;
    let caps = c.capget()?;
    Ok(Keepers { securebits, caps: (caps[2] != 0 || caps[5] != 0).then_some(caps) })
}

impl Keepers {
    fn drop(&self, l: &mut Calls) {
        let clear = [libc::PR_CAP_AMBIENT_CLEAR_ALL as u64, 0, 0, 0];
        l.prctl(libc::PR_CAP_AMBIENT, clear, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)", "restore");
        if self.securebits {
            l.prctl(libc::PR_SET_SECUREBITS, [0; 4], "prctl(PR_SET_SECUREBITS)", "none");
        }
        if let Some(mut caps) = self.caps {
            caps[2] = 0;
            caps[5] = 0;
            l.capset(caps);
        }
    }
}

const KEYCTL_GET_KEYRING_ID: u64 = 0;
const KEYCTL_JOIN_SESSION_KEYRING: u64 = 1;
const KEY_SPEC_SESSION_KEYRING: i64 = -3;

const KEYCTL_CHOWN: u64 = 4;

/// The child inherited our session keyring, and with it every key of the restorer's session:
/// it joins a new, empty one, before its other threads are made from it, so that they share
/// it as a process's threads do; made by root, it is then given to the image's user
/// (KEYCTL_CHOWN), who would have made it. Whether that worked: otherwise each task joins one
/// of its own with its ids ([`calls`] with `join`), owned right but not shared. Without
/// keyrings in the kernel there is nothing to leave behind.
pub fn session_keyring(c: &mut Ctl, h: &Header) -> Result<bool> {
    let area = c.scratch.clone();
    let mut l = Calls::new();
    new_session_keyring(&mut l);
    let r = c.run_at_once(&l, &area)?.first().copied().unwrap_or(-(libc::ENOSYS as i64));
    if r < 0 {
        return Ok(true); // no keyrings (ENOSYS): nothing to share
    }
    let mut l = Calls::new();
    l.keyctl_checked(KEYCTL_CHOWN, [r as u64, h.uids[0] as u64, h.gids[0] as u64, 0], |_, _| Ok(()));
    let chown = c.run_at_once(&l, &area)?.first().copied().unwrap_or(-(libc::EINVAL as i64));
    if chown < 0 {
        log::debug!(
            "pid {}: its session keyring {r} stays root's ({}): each thread joins one of its own",
            c.pid(),
            nix::errno::Errno::from_raw(-chown as i32).desc()
        );
    }
    Ok(chown >= 0)
}

/// A new, empty session keyring joined, made with the task's ids; not the restorer's.
fn new_session_keyring(l: &mut Calls) {
    // SAFETY: keyctl(GET_KEYRING_ID) takes integers and touches no memory of ours.
    let ours = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) };
    l.keyctl_checked(KEYCTL_JOIN_SESSION_KEYRING, [0; 4], move |r, who| {
        if r == -(libc::ENOSYS as i64) {
            return Ok(());
        }
        if r < 0 {
            let e = nix::errno::Errno::from_raw(-r as i32);
            return Err(Error::sys(
                format!("keyctl(KEYCTL_JOIN_SESSION_KEYRING) (in {who})"),
                "a new session keyring",
                e,
            ));
        }
        if ours == r {
            return Err(Error::Proc(format!("{who} still shares the restorer's session keyring {r}")));
        }
        Ok(())
    });
}

/// What [`verify`] compares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Every id and group, and no capability left to a process that was not root.
    All,
    /// An unprivileged restore, whose child keeps the ids it inherited from us: every id, and
    /// no capability; not the groups, which only root can set (the process has the caller's).
    Inherited,
    /// Every id and group, and no effective capability: a permitted set kept for res::caps.
    Keeping,
}

/// Reads the credentials of `pid` from /proc/PID/status and fails unless they are the
/// image's. Ids that differ are named; so is a capability a non-root process kept.
pub fn verify(pid: i32, h: &Header, stage: Stage) -> Result<()> {
    verify_in(&procfs::read_status(pid)?, pid, h, stage)
}

/// [`verify`] of task `tid` whose /proc status is `status`.
pub fn verify_in(status: &str, tid: i32, h: &Header, stage: Stage) -> Result<()> {
    verify_status(status, h, stage)
        .map_err(|why| Error::Proc(format!("pid {tid} did not take the image's credentials: {why}; nothing of it ran")))
}

fn verify_status(status: &str, h: &Header, stage: Stage) -> std::result::Result<(), String> {
    let ids = |key: &str| procfs::status_ids(status, key).ok_or(format!("no {key} line in /proc/PID/status"));
    let (uids, gids) = (ids("Uid")?, ids("Gid")?);
    let mut groups: Vec<u32> = procfs::status_field(status, "Groups")
        .unwrap_or("")
        .split_whitespace()
        .map(|g| g.parse().map_err(|_| format!("Groups line: {g:?}")))
        .collect::<std::result::Result<_, _>>()?;
    let have = Header { uids, gids, groups: groups.clone(), ..Header::default() };
    for ((name, want), (_, got)) in h.uid_gids().zip(have.uid_gids()) {
        if want != got {
            return Err(format!("its {name} is {got}, the image says {want}"));
        }
    }
    let mut want = h.groups.clone();
    want.sort_unstable();
    groups.sort_unstable();
    if want != groups && stage != Stage::Inherited {
        return Err(format!("its supplementary groups are {groups:?}, the image says {want:?}"));
    }
    if h.uids.iter().all(|&u| u != 0) {
        let keys: &[&str] =
            if stage == Stage::Keeping { &["CapEff"] } else { &["CapInh", "CapPrm", "CapEff", "CapAmb"] };
        for &key in keys {
            let v = procfs::status_field(status, key).and_then(|v| u64::from_str_radix(v, 16).ok());
            if v != Some(0) {
                return Err(format!(
                    "it kept capabilities ({key} {})",
                    procfs::status_field(status, key).unwrap_or("?")
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(uid: &str, gid: &str, groups: &str, cap: &str) -> String {
        format!(
            "Name:\tx\nUid:\t{uid}\nGid:\t{gid}\nGroups:\t{groups}\nCapInh:\t0000000000000000\nCapPrm:\t{cap}\nCapEff:\t{cap}\nCapAmb:\t0000000000000000\n"
        )
    }

    fn head() -> Header {
        Header { pid: 9, uids: [1000; 4], gids: [100; 4], groups: vec![100, 27], ..Header::default() }
    }

    #[test]
    fn exact_credentials_pass() {
        let st = status("1000\t1000\t1000\t1000", "100\t100\t100\t100", "27 100 ", "0000000000000000");
        assert_eq!(verify_status(&st, &head(), Stage::All), Ok(()));
    }

    #[test]
    fn a_kept_id_group_or_capability_is_named() {
        let zero = "0000000000000000";
        let st = status("1000\t1000\t0\t1000", "100\t100\t100\t100", "27 100", zero);
        assert_eq!(verify_status(&st, &head(), Stage::All), Err("its saved uid is 0, the image says 1000".into()));
        let st = status("1000\t1000\t1000\t1000", "100\t100\t100\t0", "27 100", zero);
        assert!(verify_status(&st, &head(), Stage::All).unwrap_err().contains("filesystem gid is 0"));
        let st = status("1000\t1000\t1000\t1000", "100\t100\t100\t100", "0 27 100", zero);
        assert!(verify_status(&st, &head(), Stage::All).unwrap_err().contains("supplementary groups"));
        // An unprivileged restore cannot set groups: only the ids count.
        assert_eq!(verify_status(&st, &head(), Stage::Inherited), Ok(()));
        let st = status("1000\t1000\t1000\t1000", "100\t100\t100\t100", "27 100", "000001ffffffffff");
        assert!(verify_status(&st, &head(), Stage::All).unwrap_err().contains("kept capabilities"));
    }

    #[test]
    fn named_ids() {
        let mut h = head();
        h.groups = vec![100, 42];
        let e = check_user_claims(&Header { uids: [1000, 1000, 0, 1000], ..h.clone() }, 1000, "x").unwrap_err();
        assert!(e.to_string().contains("saved uid is 0"), "{e}");
        // A uid /etc/passwd does not know has no groups at all.
        h.uids = [4_000_000; 4];
        let e = check_user_claims(&h, 4_000_000, "x").unwrap_err();
        assert!(e.to_string().contains("gid is 100"), "{e}");
    }
}
