//! EPOLL: the interest lists of the process's epoll instances: per epoll fd, every registered
//! fd with its events (EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE included) and its 64-bit data, as
//! /proc/PID/fdinfo/FD shows them. The epoll fds themselves are FILES records (KIND_EPOLL); a
//! restore creates them with the other fds, then registers every target once all fds exist.
//! Readiness is not saved: the kernel checks each target when it is added, so what was ready
//! (even edge-triggered and not yet collected) is ready again.
//!
//! An instance several processes of a tree hold (inherited across a fork: a server's child
//! saving its data, say) is one file description (FDESCS): made once, in the restorer, which
//! the processes inherit. Each registration is made once, by the first holder that has its
//! file open at the fd it was registered as (kcmp KCMP_EPOLL_TFD tells): its EPOLL record
//! lists it, the other holders' do not. A child that closed a registered fd its parent still
//! has open is restored so; one none of them has open is refused, by name.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use nix::errno::Errno;

/// One registration: the fd it was added as, its events and its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
}

/// An epoll instance: its fd and its interest list (the registrations this process makes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Epoll {
    pub fd: i32,
    pub targets: Vec<Target>,
    /// At checkpoint only (not in the image): every registration, in the kernel's order, each
    /// with whether this process has its file open at its fd; see [`share`].
    pub listed: Vec<(Target, bool)>,
}

const EPOLLWAKEUP: u32 = 1 << 29;

/// Parses an epoll fd's fdinfo: "tfd:        4 events: 80000019 data:                4  pos:0
/// ino:9c0a8 sdev:f", one line per registration. Returns each with the target's inode.
pub fn parse(info: &str) -> Option<Vec<(Target, u64)>> {
    let mut out = Vec::new();
    for l in info.lines().filter(|l| l.starts_with("tfd:")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        let field = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1));
        let tfd = field("tfd:")?.parse().ok()?;
        let events = u32::from_str_radix(field("events:")?, 16).ok()?;
        let data = u64::from_str_radix(field("data:")?, 16).ok()?;
        let ino = w.iter().find_map(|x| x.strip_prefix("ino:")).and_then(|i| u64::from_str_radix(i, 16).ok())?;
        out.push((Target { tfd, events, data }, ino));
    }
    Some(out)
}

/// What is wrong with a registration, checked at checkpoint: EPOLLWAKEUP would be dropped
/// silently by a kernel that does not let the restorer have it.
pub fn refusal(epfd: i32, t: &Target) -> Option<String> {
    (t.events & EPOLLWAKEUP != 0)
        .then(|| format!("epoll fd {epfd} watches fd {} with EPOLLWAKEUP, which crs does not restore", t.tfd))
}

/// A registration none of the processes holding its instance has open at its fd.
/// `sharers`: the processes that share the instance, when more than this one.
fn closed(epfd: i32, t: &Target, sharers: &str) -> String {
    format!(
        "epoll fd {epfd} watches a file as fd {} that is no longer open at that number{sharers}, which crs cannot restore",
        t.tfd
    )
}

/// The interest list of every epoll fd among `fds` of process `pid`; refuses, naming each,
/// registrations crs cannot restore. A registration whose fd is not open here on the file
/// registered is not among `targets`: another process holding the instance may have it (see
/// [`share`], which refuses it otherwise). `running`: the process runs (a precheck), and may
/// close an fd, or open another at its number, as we read: such an fd is passed over here
/// (the checkpoint reads them again frozen).
pub fn collect(pid: i32, fds: &[crate::res::files::Fd], running: bool) -> Result<Vec<Epoll>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut why = Vec::new();
    for f in fds.iter().filter(|f| f.kind == crate::res::files::KIND_EPOLL) {
        let Some(parsed) = crate::res::files::fdinfo(pid, f.fd, running, "epoll", parse)? else { continue };
        let mut ep = Epoll { fd: f.fd, ..Default::default() };
        for (t, ino) in parsed {
            let here = std::fs::metadata(format!("/proc/{pid}/fd/{}", t.tfd)).ok().map(|m| m.ino()) == Some(ino);
            if let Some(r) = refusal(f.fd, &t) {
                why.push(r);
            }
            if here {
                ep.targets.push(t);
            }
            ep.listed.push((t, here));
        }
        out.push(ep);
    }
    Error::blocked(pid, why)?;
    Ok(out)
}

/// Whether fd `fd` of process `pid` is the file of registration `tfd` (the `toff`th of those
/// at that fd) of epoll fd `epfd` of process `ep_pid`.
fn is_target(pid: i32, fd: i32, ep_pid: i32, epfd: i32, tfd: i32, toff: u64) -> Result<bool> {
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u64,
    }
    let slot = Slot { efd: epfd as u32, tfd: tfd as u32, toff };
    // SAFETY: kcmp reads the slot we own, which lives across the call; the rest are integers.
    let r =
        unsafe { libc::syscall(libc::SYS_kcmp, pid, ep_pid, KCMP_EPOLL_TFD, fd as libc::c_long, &slot as *const Slot) };
    match Errno::last() {
        _ if r >= 0 => Ok(r == 0),
        // Not open at that number there, or no such registration.
        Errno::EBADF | Errno::ENOENT => Ok(false),
        e => Err(Error::sys(
            "kcmp(KCMP_EPOLL_TFD)",
            format!("fd {fd} of pid {pid}, epoll fd {epfd} of pid {ep_pid} watching fd {tfd}"),
            e,
        )),
    }
}

/// For the tree's frozen processes (`procs`: each pid with its instances, from [`collect`])
/// and the descriptions several fds hold (`descs`): each registration of an instance held
/// more than once goes to the first holder that has its file at its fd (the only one that
/// makes it at the restore); one that none has, or of an instance held once that its process
/// does not have, is refused, naming the process.
pub fn share(procs: &mut [(i32, &mut Vec<Epoll>)], descs: &[crate::res::fdescs::Desc]) -> Result<()> {
    for d in descs.iter().filter(|d| d.file.kind == crate::res::files::KIND_EPOLL) {
        let (p0, e0) = d.holders[0];
        let find = |procs: &[(i32, &mut Vec<Epoll>)], (pid, fd): (i32, i32)| {
            procs.iter().position(|p| p.0 == pid).and_then(|i| Some((i, procs[i].1.iter().position(|e| e.fd == fd)?)))
        };
        // (A holder of which collect found no instance had it closed meanwhile: none then.)
        let Some((i0, k0)) = find(procs, (p0, e0)) else { continue };
        let list: Vec<Target> = procs[i0].1[k0].listed.iter().map(|l| l.0).collect();
        let mut each: Vec<Vec<Target>> = vec![Vec::new(); d.holders.len()];
        let mut why = Vec::new();
        // Per fd number, the registrations at it so far (kcmp tells them apart by their place).
        let mut at_fd: std::collections::HashMap<i32, u64> = std::collections::HashMap::new();
        for t in &list {
            let toff = *at_fd.entry(t.tfd).and_modify(|n| *n += 1).or_insert(0);
            let mut by = None;
            for (h, &(pid, _)) in d.holders.iter().enumerate() {
                if is_target(pid, t.tfd, p0, e0, t.tfd, toff)? {
                    by = Some(h);
                    break;
                }
            }
            match by {
                Some(h) => each[h].push(*t),
                None => {
                    let mut pids: Vec<String> = d.holders.iter().map(|h| h.0.to_string()).collect();
                    pids.dedup();
                    why.push(closed(e0, t, &format!(" in pids {}, which share it", pids.join(", "))));
                }
            }
        }
        Error::blocked(p0, why)?;
        for (&holder, targets) in d.holders.iter().zip(each) {
            if let Some((i, k)) = find(procs, holder) {
                let ep = &mut procs[i].1[k];
                ep.targets = targets;
                ep.listed.iter_mut().for_each(|l| l.1 = true);
            }
        }
    }
    for (pid, eps) in procs.iter() {
        let why: Vec<String> =
            eps.iter().flat_map(|e| e.listed.iter().filter(|l| !l.1).map(|l| closed(e.fd, &l.0, ""))).collect();
        Error::blocked(*pid, why)?;
    }
    Ok(())
}

pub fn encode(all: &[Epoll]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for ep in all {
        e.u32(ep.fd as u32).u32(ep.targets.len() as u32);
        for t in &ep.targets {
            e.u32(t.tfd as u32).u32(t.events).u64(t.data);
        }
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Epoll>> {
    let mut d = Dec::new(b, at, "EPOLL");
    let n = d.count(8)?;
    let mut out: Vec<Epoll> = Vec::with_capacity(n);
    for _ in 0..n {
        let fd = d.u32()? as i32;
        let m = d.count(16)?;
        let mut targets = Vec::with_capacity(m);
        for _ in 0..m {
            let t = Target { tfd: d.u32()? as i32, events: d.u32()?, data: d.u64()? };
            if t.tfd < 0 || t.tfd > 1 << 20 || t.events & EPOLLWAKEUP != 0 {
                return Err(d.bad_at(at, format!("epoll fd {fd}: registration of fd {} is not valid", t.tfd)));
            }
            targets.push(t);
        }
        if !(0..=1 << 20).contains(&fd) || out.iter().any(|e| e.fd == fd) {
            return Err(d.bad_at(at, format!("epoll fd {fd} is not valid")));
        }
        out.push(Epoll { fd, targets, listed: Vec::new() });
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[Epoll]) -> Vec<String> {
    all.iter()
        .map(|ep| {
            let t: Vec<String> =
                ep.targets.iter().map(|t| format!("fd {} events {:#x} data {:#x}", t.tfd, t.events, t.data)).collect();
            format!("epoll:     fd {} watches [{}]", ep.fd, t.join(", "))
        })
        .collect()
}

/// Registers every target in its epoll instance, inside the restored process (all its fds
/// exist by now).
pub fn restore(c: &mut Ctl, all: &[Epoll]) -> Result<()> {
    // In one go: a server's epoll may watch thousands of connections.
    let mut l = crate::ptrace::calls::Calls::new();
    for ep in all {
        for t in &ep.targets {
            let mut e = Enc::new();
            // struct epoll_event is packed on x86_64: u32 events, u64 data.
            e.u32(t.events).u64(t.data);
            l.epoll_ctl_add(ep.fd, t.tfd, e.as_slice(), &format!("epoll fd {} fd {}", ep.fd, t.tfd));
        }
    }
    if !l.is_empty() {
        let area = c.scratch.clone();
        c.run_at_once(&l, &area)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_round_trip() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1030\ntfd:        4 events: 80000019 data:                4  pos:0 ino:9c0a8 sdev:f\n";
        let p = parse(info).unwrap();
        assert_eq!(p, vec![(Target { tfd: 4, events: 0x8000_0019, data: 4 }, 0x9c0a8)]);
        let all = vec![Epoll { fd: 3, targets: vec![p[0].0], ..Default::default() }];
        assert_eq!(decode(&encode(&all), 0).unwrap(), all);
        let wake = Target { tfd: 4, events: EPOLLWAKEUP, data: 0 };
        let bad = vec![Epoll { fd: 3, targets: vec![wake], ..Default::default() }];
        assert!(decode(&encode(&bad), 0).is_err());
        assert!(refusal(3, &wake).is_some());
        assert!(refusal(3, &p[0].0).is_none());
    }
}
