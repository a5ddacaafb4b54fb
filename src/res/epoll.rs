//! EPOLL: the interest lists of the process's epoll instances: per epoll fd, every registered
//! fd with its events (EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE included) and its 64-bit data, as
//! /proc/PID/fdinfo/FD shows them. The epoll fds themselves are FILES records (KIND_EPOLL); a
//! restore creates them with the other fds, then registers every target once all fds exist.
//! Readiness is not saved: the kernel checks each target when it is added, so what was ready
//! (even edge-triggered and not yet collected) is ready again.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;

/// One registration: the fd it was added as, its events and its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
}

/// An epoll instance: its fd and its interest list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoll {
    pub fd: i32,
    pub targets: Vec<Target>,
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

/// What is wrong with a registration, checked at checkpoint: its fd must still be open on the
/// very file registered (`ino_now`: that fd's inode now, None if closed), and EPOLLWAKEUP
/// would be dropped silently by a kernel that does not let the restorer have it.
pub fn refusal(epfd: i32, t: &Target, ino: u64, ino_now: Option<u64>) -> Option<String> {
    if ino_now != Some(ino) {
        return Some(format!(
            "epoll fd {epfd} watches a file as fd {} that is no longer open at that number, which crs cannot restore",
            t.tfd
        ));
    }
    (t.events & EPOLLWAKEUP != 0)
        .then(|| format!("epoll fd {epfd} watches fd {} with EPOLLWAKEUP, which crs does not restore", t.tfd))
}

/// The interest list of every epoll fd among `fds` of process `pid`; refuses, naming each,
/// registrations crs cannot restore. `running`: the process runs (a precheck), and may close
/// an fd, or open another at its number, as we read: such an fd, or a registration whose fd
/// changed, is passed over here (the checkpoint reads them again frozen).
pub fn collect(pid: i32, fds: &[crate::res::files::Fd], running: bool) -> Result<Vec<Epoll>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut why = Vec::new();
    for f in fds.iter().filter(|f| f.kind == crate::res::files::KIND_EPOLL) {
        let Some(parsed) = crate::res::files::fdinfo(pid, f.fd, running, "epoll", parse)? else { continue };
        let mut targets = Vec::with_capacity(parsed.len());
        for (t, ino) in parsed {
            let now = std::fs::metadata(format!("/proc/{pid}/fd/{}", t.tfd)).ok().map(|m| m.ino());
            match refusal(f.fd, &t, ino, now) {
                Some(_) if running && now != Some(ino) => {}
                Some(r) => why.push(r),
                None => targets.push(t),
            }
        }
        out.push(Epoll { fd: f.fd, targets });
    }
    Error::blocked(pid, why)?;
    Ok(out)
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
        out.push(Epoll { fd, targets });
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
        let all = vec![Epoll { fd: 3, targets: vec![p[0].0] }];
        assert_eq!(decode(&encode(&all), 0).unwrap(), all);
        let bad = vec![Epoll { fd: 3, targets: vec![Target { tfd: 4, events: EPOLLWAKEUP, data: 0 }] }];
        assert!(decode(&encode(&bad), 0).is_err());
        assert!(refusal(3, &p[0].0, 0x9c0a8, None).is_some());
        assert!(refusal(3, &p[0].0, 0x9c0a8, Some(0x9c0a8)).is_none());
    }
}
