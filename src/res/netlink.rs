//! NETLINK_ROUTE sockets made again (FILES kind KIND_NETLINK): the one netlink socket crs
//! re-creates, as it holds no state but what a restore can set: its type, its port id, the
//! multicast groups it listens to (link, address and route changes...), its netlink flags and
//! its receive buffer. Only one with no message waiting to be read and no dump under way:
//! such a message would be lost. Other netlink protocols (audit, uevents, generic netlink,
//! sock_diag), packet and raw sockets stay refused, by name.

use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use std::os::fd::AsRawFd;

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
/// The boolean netlink options carried, by bit: (bit, option, name).
const FLAGS: [(u64, i32, &str); 7] = [
    (0, 3, "NETLINK_PKTINFO"),
    (1, 4, "NETLINK_BROADCAST_ERROR"),
    (2, 5, "NETLINK_NO_ENOBUFS"),
    (3, 8, "NETLINK_LISTEN_ALL_NSID"),
    (4, 10, "NETLINK_CAP_ACK"),
    (5, 11, "NETLINK_EXT_ACK"),
    (6, 12, "NETLINK_GET_STRICT_CHK"),
];

/// What a restore needs of a NETLINK_ROUTE socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// SOCK_RAW or SOCK_DGRAM.
    pub ty: u32,
    /// Its port id (0: never bound).
    pub port: u32,
    /// The multicast groups it listens to: bit i for group i + 1 (groups 1 to 64).
    pub groups: u64,
    /// FLAGS set, by bit.
    pub flags: u64,
    /// SO_RCVBUF as getsockopt gives it (the kernel's doubled value).
    pub rcvbuf: u32,
}

/// Whether fd `fd` of `pid` (socket `ino`) is a NETLINK_ROUTE socket crs makes again: None when
/// it is no NETLINK_ROUTE socket; otherwise what it is, or why it cannot be.
pub fn classify(pid: i32, fd: i32, ino: u64) -> Option<std::result::Result<Route, String>> {
    let s = crate::ptrace::procfs::getfd(pid, fd, "a netlink socket").ok()?;
    let int = |level, name| super::inet::int_opt(s.as_raw_fd(), level, name, "a netlink socket").ok();
    if int(libc::SOL_SOCKET, libc::SO_DOMAIN)? != libc::AF_NETLINK
        || int(libc::SOL_SOCKET, libc::SO_PROTOCOL)? != libc::NETLINK_ROUTE
    {
        return None;
    }
    let ty = int(libc::SOL_SOCKET, libc::SO_TYPE)? as u32;
    // /proc/PID/net/netlink: sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode.
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
    let line = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(9).and_then(|i| i.parse::<u64>().ok()) == Some(ino));
    let Some(f) = line else {
        return Some(Err("crs cannot find it in /proc/net/netlink".into()));
    };
    if f.get(4).is_some_and(|r| *r != "0") {
        return Some(Err("with messages waiting to be read, which a new socket would not have".into()));
    }
    if f.get(6).is_some_and(|d| *d != "0") {
        return Some(Err("with a dump under way".into()));
    }
    let peer = super::inet::name_of(s.as_raw_fd(), true);
    if peer.is_some_and(|p| p.get(4..12).is_some_and(|b| b.iter().any(|&x| x != 0))) {
        return Some(Err("connected to another port, which crs does not restore".into()));
    }
    let me = super::inet::name_of(s.as_raw_fd(), false).unwrap_or_default();
    let port = me.get(4..8).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let mut groups = me.get(8..12).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u64);
    if let Some(list) = super::inet::getsockopt(s.as_raw_fd(), SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS) {
        for (i, w) in list.chunks_exact(4).enumerate().take(2) {
            groups |= (u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64) << (32 * i);
        }
        if list.chunks_exact(4).skip(2).any(|w| w.iter().any(|&b| b != 0)) {
            return Some(Err("listening to a multicast group above 64".into()));
        }
    }
    let mut flags = 0;
    for (bit, opt, _) in FLAGS {
        if int(SOL_NETLINK, opt).unwrap_or(0) != 0 {
            flags |= 1 << bit;
        }
    }
    let rcvbuf = int(libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0) as u32;
    Some(Ok(Route { ty, port, groups, flags, rcvbuf }))
}

/// "NETLINK_ROUTE, port 812, groups 1 5".
pub fn describe(r: &Route) -> String {
    let groups: Vec<String> = (0..64).filter(|i| r.groups & (1 << i) != 0).map(|i| (i + 1).to_string()).collect();
    let flags: Vec<&str> = FLAGS.iter().filter(|f| r.flags & (1 << f.0) != 0).map(|f| f.2).collect();
    format!("NETLINK_ROUTE, port {}, groups [{}], flags [{}]", r.port, groups.join(" "), flags.join(" "))
}

/// Makes socket `r` again in the process `c` stands for: returns its fd there.
pub fn restore(c: &mut Ctl, r: &Route, what: &str) -> Result<i32> {
    let s = c.socket(libc::AF_NETLINK, r.ty as i32, libc::NETLINK_ROUTE, what)?;
    if r.rcvbuf > 0 {
        c.setsockopt_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF, (r.rcvbuf / 2) as i32, what)?;
    }
    for (bit, opt, name) in FLAGS {
        if r.flags & (1 << bit) != 0 {
            c.setsockopt_int(s, SOL_NETLINK, opt, 1, &format!("{what} ({name})"))?;
        }
    }
    if r.port != 0 || r.groups != 0 {
        let mut a = (libc::AF_NETLINK as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&[0, 0]);
        a.extend_from_slice(&r.port.to_ne_bytes());
        a.extend_from_slice(&(r.groups as u32).to_ne_bytes());
        c.bind_raw(s, &a, what).map_err(|e| match e {
            Error::Sys { errno: nix::errno::Errno::EADDRINUSE, .. } => Error::Refused(format!(
                "{what}: its netlink port {} is taken here (by a socket of another process)",
                r.port
            )),
            e => e,
        })?;
    }
    for g in 32..64 {
        if r.groups & (1 << g) != 0 {
            c.setsockopt_int(s, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g + 1, what)?;
        }
    }
    Ok(s)
}
