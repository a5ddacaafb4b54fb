//! INETSOCKS: the TCP and UDP sockets (IPv4 and IPv6) a restore makes again by itself, with
//! nothing of a peer's to restore: a TCP socket listening, bound or just made, and a UDP
//! socket, bound or not, connected or not. Per socket: its family and type, its local
//! address (as getsockname gives it), a connected UDP socket's peer, a listener's backlog (as
//! sock_diag says: listen(2) keeps it nowhere else), and every socket option of a known list
//! whose value differs from a fresh socket's of the same kind (SO_REUSEADDR, SO_REUSEPORT,
//! TCP_NODELAY, keepalive and its times, buffer sizes, IPV6_V6ONLY, IP_FREEBIND, the congestion
//! control...). The fds are FILES records of kind KIND_INET naming the socket's inode.
//!
//! A restore makes each socket in the restorer before the processes exist, sets its options,
//! binds it, and listens (or connects, for UDP); every process holding it inherits it and
//! dups it to its fds, as a fork would have shared it. When root restores another user's
//! image, the sockets are made with no effective capability but those the image's process
//! had and `rstrt --user-caps` grants: an image cannot get a privileged port or SO_MARK its
//! owner could not have had.
//!
//! Left out, and said at checkpoint: connections a listener had not accepted yet, but with
//! --tcp-established where the kernel can put them back (res::tcpqueue; their clients see a
//! reset once they send), and datagrams queued at a UDP socket (dropped, as UDP
//! may). Not carried: multicast group memberships and source filters (the kernel shows them
//! per interface, not per socket), BPF programs attached to a socket (refused when a classic
//! filter is present), SO_REUSEPORT groups' BPF steering, and corked UDP output not yet sent.
//! A socket any process outside the checkpoint holds too is refused, naming the holder.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A socket that is only made (not bound).
pub const NEW: u8 = 0;
/// Bound to its local address, not listening (nor, for UDP, connected).
pub const BOUND: u8 = 1;
/// A TCP socket listening.
pub const LISTEN: u8 = 2;
/// A UDP socket connected to `peer`.
pub const CONNECTED: u8 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opt {
    pub level: i32,
    pub name: i32,
    /// As getsockopt gave it (SO_SNDBUF and SO_RCVBUF: the kernel's doubled value).
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sock {
    pub ino: u64,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// SOCK_STREAM (TCP) or SOCK_DGRAM (UDP).
    pub ty: u32,
    pub state: u8,
    /// The local address, a sockaddr_in or sockaddr_in6 as getsockname gave it.
    pub local: Vec<u8>,
    /// A connected UDP socket's peer, likewise; empty otherwise.
    pub peer: Vec<u8>,
    /// A listener's backlog.
    pub backlog: u32,
    /// The options whose value differs from a fresh socket's, in the order they are set.
    pub opts: Vec<Opt>,
}

/// The options crs reads and sets again, in the order a restore sets them (all before bind).
const OPTS: &[(i32, i32, &str)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR"),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, "SO_REUSEPORT"),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE"),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, "SO_BROADCAST"),
    (libc::SOL_SOCKET, libc::SO_DONTROUTE, "SO_DONTROUTE"),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, "SO_OOBINLINE"),
    (libc::SOL_SOCKET, libc::SO_SNDBUF, "SO_SNDBUF"),
    (libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF"),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, "SO_RCVLOWAT"),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, "SO_PRIORITY"),
    (libc::SOL_SOCKET, libc::SO_MARK, "SO_MARK"),
    (libc::SOL_SOCKET, libc::SO_LINGER, "SO_LINGER"),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, "SO_RCVTIMEO"),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, "SO_SNDTIMEO"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, "SO_TIMESTAMP"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS"),
    (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, "SO_RXQ_OVFL"),
    (libc::SOL_SOCKET, libc::SO_BINDTODEVICE, "SO_BINDTODEVICE"),
    (libc::SOL_SOCKET, libc::SO_INCOMING_CPU, "SO_INCOMING_CPU"),
    (libc::SOL_SOCKET, libc::SO_MAX_PACING_RATE, "SO_MAX_PACING_RATE"),
    (libc::SOL_SOCKET, libc::SO_ZEROCOPY, "SO_ZEROCOPY"),
    (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS"),
    (libc::IPPROTO_IP, libc::IP_TTL, "IP_TTL"),
    (libc::IPPROTO_IP, libc::IP_FREEBIND, "IP_FREEBIND"),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT, "IP_TRANSPARENT"),
    (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT"),
    (libc::IPPROTO_IP, libc::IP_RECVERR, "IP_RECVERR"),
    (libc::IPPROTO_IP, libc::IP_PKTINFO, "IP_PKTINFO"),
    (libc::IPPROTO_IP, libc::IP_RECVTTL, "IP_RECVTTL"),
    (libc::IPPROTO_IP, libc::IP_RECVTOS, "IP_RECVTOS"),
    (libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR"),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, "IP_MTU_DISCOVER"),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, "IP_MULTICAST_TTL"),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, "IP_MULTICAST_LOOP"),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, "IP_MULTICAST_ALL"),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY"),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS"),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS"),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, "IPV6_MULTICAST_HOPS"),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, "IPV6_MULTICAST_LOOP"),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, "IPV6_RECVTCLASS"),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR, "IPV6_RECVERR"),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, "IPV6_MTU_DISCOVER"),
    (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, "IPV6_FREEBIND"),
    (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, "IPV6_TRANSPARENT"),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY"),
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG, "TCP_MAXSEG"),
    (libc::IPPROTO_TCP, libc::TCP_CORK, "TCP_CORK"),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT, "TCP_SYNCNT"),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2, "TCP_LINGER2"),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT"),
    (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, "TCP_WINDOW_CLAMP"),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION, "TCP_CONGESTION"),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"),
    (libc::IPPROTO_TCP, libc::TCP_FASTOPEN, "TCP_FASTOPEN"),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT"),
    (libc::IPPROTO_UDP, libc::UDP_CORK, "UDP_CORK"),
    (libc::IPPROTO_UDP, libc::UDP_SEGMENT, "UDP_SEGMENT"),
    (libc::IPPROTO_UDP, libc::UDP_GRO, "UDP_GRO"),
];

/// The most bytes of one option's value.
const MAX_OPT: usize = 64;

pub(super) fn opt_name(level: i32, name: i32) -> String {
    match OPTS.iter().find(|o| (o.0, o.1) == (level, name)) {
        Some(o) => o.2.into(),
        None => format!("socket option {level}/{name}"),
    }
}

fn sys(call: &str, what: &str) -> Error {
    Error::sys(call, what, Errno::last())
}

/// Option `name` of `level` as the kernel gives it, or None where this socket has no such
/// option.
pub(super) fn getsockopt(s: RawFd, level: i32, name: i32) -> Option<Vec<u8>> {
    let mut buf = [0u8; MAX_OPT];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`, and the length into `len`.
    let r = unsafe { libc::getsockopt(s, level, name, buf.as_mut_ptr().cast(), &mut len) };
    (r == 0).then(|| buf[..(len as usize).min(MAX_OPT)].to_vec())
}

pub(super) fn int_opt(s: RawFd, level: i32, name: i32, what: &str) -> Result<i32> {
    let v =
        getsockopt(s, level, name).ok_or_else(|| sys("getsockopt", &format!("{} of {what}", opt_name(level, name))))?;
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Proc(format!("{what}: getsockopt {} gave {} bytes", opt_name(level, name), v.len())))?;
    Ok(i32::from_ne_bytes(b))
}

/// The family, type and protocol of socket `s`, if it is a TCP or UDP socket.
fn kind(s: RawFd) -> Option<(u16, u32)> {
    let int = |name| int_opt(s, libc::SOL_SOCKET, name, "a socket").ok();
    let family = int(libc::SO_DOMAIN)?;
    let (ty, proto) = (int(libc::SO_TYPE)?, int(libc::SO_PROTOCOL)?);
    let known = matches!(family, libc::AF_INET | libc::AF_INET6)
        && matches!((ty, proto), (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP));
    known.then_some((family as u16, ty as u32))
}

/// A TCP socket's state (TCP_INFO's first byte: 7 closed, 10 listening).
pub(super) fn tcp_state(s: RawFd) -> Option<u8> {
    getsockopt(s, libc::IPPROTO_TCP, libc::TCP_INFO)?.first().copied()
}

/// Whether a closed TCP socket (its TCP_INFO `info`) had a connection, or tried one (a client
/// whose connect was refused, a connection reset): tcpi_pmtu (bytes 60-63), which the
/// connection's route set, is never 0 then.
fn connection_ended(info: &[u8]) -> bool {
    info.first() == Some(&TCP_CLOSE) && info.get(60..64).is_some_and(|b| b.iter().any(|&x| x != 0))
}

pub(super) const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

/// getsockname (`peer` false) or getpeername of `s`: the sockaddr's bytes, or None when it has
/// no peer.
pub(super) fn name_of(s: RawFd, peer: bool) -> Option<Vec<u8>> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut a: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut a as *mut libc::sockaddr_storage).cast();
    // SAFETY: both write at most `len` bytes into `a`.
    let r = unsafe { if peer { libc::getpeername(s, p, &mut len) } else { libc::getsockname(s, p, &mut len) } };
    if r != 0 {
        return None;
    }
    // SAFETY: `a` is a live value of at least `len` bytes (the kernel never says more).
    let bytes = unsafe { std::slice::from_raw_parts((&a as *const libc::sockaddr_storage).cast::<u8>(), len as usize) };
    Some(bytes.to_vec())
}

/// A sockaddr_in or sockaddr_in6's address and port, as the standard library has them.
pub fn addr_of(b: &[u8]) -> Option<std::net::SocketAddr> {
    let family = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match (family as i32, b.len()) {
        (libc::AF_INET, 16) => {
            let ip: [u8; 4] = b[4..8].try_into().ok()?;
            Some(std::net::SocketAddr::from((ip, port)))
        }
        (libc::AF_INET6, 28) => {
            let ip: [u8; 16] = b[8..24].try_into().ok()?;
            let scope = u32::from_ne_bytes(b[24..28].try_into().ok()?);
            let flow = u32::from_be_bytes(b[4..8].try_into().ok()?);
            Some(std::net::SocketAddr::V6(std::net::SocketAddrV6::new(ip.into(), port, flow, scope)))
        }
        _ => None,
    }
}

/// The sockaddr_in or sockaddr_in6 of `a`, as bytes.
pub fn sockaddr(a: std::net::SocketAddr) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    match a {
        std::net::SocketAddr::V4(v) => {
            b.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b.extend_from_slice(&v.port().to_be_bytes());
            b.extend_from_slice(&v.ip().octets());
            b.extend_from_slice(&[0; 8]);
        }
        std::net::SocketAddr::V6(v) => {
            b.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b.extend_from_slice(&v.port().to_be_bytes());
            b.extend_from_slice(&v.flowinfo().to_be_bytes());
            b.extend_from_slice(&v.ip().octets());
            b.extend_from_slice(&v.scope_id().to_ne_bytes());
        }
    }
    b
}

/// "TCP socket listening on 0.0.0.0:6379", "UDP socket on [::]:53 connected to ...".
pub fn describe_one(s: &Sock) -> String {
    let proto = if s.ty == libc::SOCK_STREAM as u32 { "TCP" } else { "UDP" };
    let local = addr_of(&s.local).map_or_else(|| "?".into(), |a| a.to_string());
    match s.state {
        LISTEN => format!("{proto} socket listening on {local}"),
        BOUND => format!("{proto} socket bound to {local}"),
        CONNECTED => {
            let peer = addr_of(&s.peer).map_or_else(|| "?".into(), |a| a.to_string());
            format!("{proto} socket on {local} connected to {peer}")
        }
        _ => format!("{proto} socket, unbound"),
    }
}

/// Whether the address part of a sockaddr is the wildcard and its port 0: nothing was bound.
fn unbound(b: &[u8]) -> bool {
    addr_of(b).is_none_or(|a| a.port() == 0 && a.ip().is_unspecified())
}

/// Whether fd `fd` of `pid` (socket `ino`) is a socket crs carries (this kind, or with
/// `established` (ckpt --tcp-established) an established TCP connection, res::tcpconn): None
/// when it is not a TCP or UDP socket; otherwise Ok, or why crs cannot carry it.
/// `outside(ino)`: the processes outside the checkpoint that hold socket `ino`, named.
pub fn classify(
    pid: i32,
    fd: i32,
    ino: u64,
    established: bool,
    outside: &dyn Fn(u64) -> Option<String>,
) -> Option<std::result::Result<(), String>> {
    let s = crate::ptrace::procfs::getfd(pid, fd, "a socket").ok()?;
    let (_, ty) = kind(s.as_raw_fd())?;
    let state = if ty == libc::SOCK_STREAM as u32 { tcp_state(s.as_raw_fd())? } else { TCP_CLOSE };
    match state {
        TCP_CLOSE | TCP_LISTEN => {}
        st if is_connection_state(st) && established => {}
        TCP_ESTABLISHED => return Some(Err("which only ckpt --tcp-established carries".into())),
        st if is_connection_state(st) => {
            let name = TCP_STATES.get(st as usize).copied().unwrap_or("?");
            let how = match st {
                TCP_CLOSE_WAIT => "its peer closed, the process not yet",
                TCP_FIN_WAIT1 | TCP_FIN_WAIT2 => "the process shut it down for writing",
                _ => "closed both ways, still held",
            };
            return Some(Err(format!("a connection {how} ({name}), which only ckpt --tcp-established carries")));
        }
        st => {
            let name = TCP_STATES.get(st as usize).copied().unwrap_or("?");
            // (A moment's state: a client's connect under way.)
            return Some(Err(format!(
                "a connection being made ({name}), which crs does not restore (checkpoint again once it is made)"
            )));
        }
    }
    if let Some(holders) = outside(ino) {
        return Some(Err(format!("held also by {holders}, outside the checkpoint")));
    }
    if getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER).is_some_and(|_| filter_len(s.as_raw_fd()) > 0) {
        return Some(Err("it has a BPF filter attached (SO_ATTACH_FILTER), which crs does not restore".into()));
    }
    Some(Ok(()))
}

/// Whether `s` is a TCP connection crs carries (ckpt --tcp-established): established, or
/// closed in one direction or both while its socket is still held (res::tcpconn).
pub fn is_established(s: RawFd) -> bool {
    kind(s).is_some_and(|k| k.1 == libc::SOCK_STREAM as u32) && tcp_state(s).is_some_and(is_connection_state)
}

pub(super) const TCP_FIN_WAIT1: u8 = 4;
pub(super) const TCP_FIN_WAIT2: u8 = 5;
pub(super) const TCP_CLOSE_WAIT: u8 = 8;
pub(super) const TCP_LAST_ACK: u8 = 9;
pub(super) const TCP_CLOSING: u8 = 11;

/// The TCP states of a connection res::tcpconn carries.
pub(super) fn is_connection_state(st: u8) -> bool {
    [TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING].contains(&st)
}

/// The kernel's TCP states, by number.
const TCP_STATES: [&str; 13] = [
    "?",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];

/// How many instructions the classic BPF filter on `s` has (0: none).
fn filter_len(s: RawFd) -> u32 {
    let mut len: libc::socklen_t = 0;
    // SAFETY: with a length of 0, SO_GET_FILTER writes only the filter's length into `len`.
    let r = unsafe { libc::getsockopt(s, libc::SOL_SOCKET, libc::SO_GET_FILTER, std::ptr::null_mut(), &mut len) };
    if r == 0 { len } else { 0 }
}

/// A fresh socket of `family` and `ty`, to compare options with.
pub(super) fn fresh(family: u16, ty: u32, what: &str) -> Result<OwnedFd> {
    // SAFETY: socket takes integers; the fd is owned below.
    let raw = unsafe { libc::socket(family as i32, ty as i32 | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(sys("socket", what));
    }
    // SAFETY: just made, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Socket `ino`, fd `fd` of frozen process `pid`: its state, address, backlog and options.
/// What a restore will not have goes to `notes`: a listener's waiting connections unless
/// `queue` says None (they are carried), with why they are not.
pub fn collect(
    pid: i32,
    fd: i32,
    ino: u64,
    queue: &dyn Fn() -> Option<String>,
    notes: &mut Vec<String>,
) -> Result<Sock> {
    let what = format!("socket:[{ino}] (fd {fd} of pid {pid})");
    let ours = crate::ptrace::procfs::getfd(pid, fd, &what)?;
    let s = ours.as_raw_fd();
    let (family, ty) = kind(s).ok_or_else(|| Error::Proc(format!("{what} is no longer a TCP or UDP socket")))?;
    let local = name_of(s, false).ok_or_else(|| sys("getsockname", &what))?;
    let mut sock = Sock { ino, family, ty, local, ..Default::default() };
    let tcp = ty == libc::SOCK_STREAM as u32;
    let info = if tcp { getsockopt(s, libc::IPPROTO_TCP, libc::TCP_INFO) } else { None };
    let ended = info.as_deref().is_some_and(connection_ended);
    sock.state = match (tcp, info.as_ref().and_then(|i| i.first().copied())) {
        (true, Some(TCP_LISTEN)) => LISTEN,
        // Its address was the connection's (an accepted one's is the listener's): a new
        // socket, as a bind to it would fail beside the listener, or hold a port for nothing.
        (true, Some(TCP_CLOSE)) if ended => NEW,
        (true, Some(TCP_CLOSE)) | (false, _) => {
            if let Some(peer) = (!tcp).then(|| name_of(s, true)).flatten() {
                sock.peer = peer;
                CONNECTED
            } else if unbound(&sock.local) {
                NEW
            } else {
                BOUND
            }
        }
        _ => return Err(Error::Proc(format!("{what} is connected by now"))),
    };
    if addr_of(&sock.local).is_none() || (sock.state == CONNECTED && addr_of(&sock.peer).is_none()) {
        return Err(Error::Proc(format!("{what}: an address crs does not know")));
    }
    if ended {
        let any: std::net::IpAddr = match family as i32 {
            libc::AF_INET6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
            _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
        };
        sock.local = sockaddr((any, 0).into());
    }
    sock.opts = options(s, family, ty, ended, &what)?;
    let desc = describe_one(&sock);
    if ended {
        notes.push(format!(
            "pid {pid} fd {fd}: a TCP connection that ended (reset, refused or closed) comes back as a new {desc}, unbound: it reads ENOTCONN where it read the connection's end or error"
        ));
    }
    if sock.state == LISTEN {
        let (waiting, backlog) = diag_listener(pid, family, ino).map_err(|e| match e {
            Error::Sys { call, errno, .. } => Error::sys(call, format!("the backlog of {what}"), errno),
            e => e,
        })?;
        sock.backlog = backlog;
        if let Some(why) = (waiting > 0).then(queue).flatten() {
            notes.push(format!(
                "{waiting} connections waiting on the {desc} are left out (their clients see a reset once they send): {why}"
            ));
        }
    } else if !tcp {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into `n`.
        if unsafe { libc::ioctl(s, libc::FIONREAD, &mut n) } == 0 && n > 0 {
            notes.push(format!("the datagrams queued at the {desc} are left out (dropped, as UDP may)"));
        }
    }
    Ok(sock)
}

/// The options of socket `s` (of `family` and `ty`) whose value differs from a fresh socket's.
/// `established`: but those the kernel sets for a connection by itself (the MSS, the window
/// clamp and the buffer sizes, which res::tcpconn carries apart).
pub(super) fn options(s: RawFd, family: u16, ty: u32, established: bool, what: &str) -> Result<Vec<Opt>> {
    let base = defaults(family, ty, what)?;
    let mut out = Vec::new();
    // Multicast is not TCP's (and an accepted socket's multicast TTL is its SYN's TTL).
    let multicast = [
        libc::IP_MULTICAST_TTL,
        libc::IP_MULTICAST_LOOP,
        libc::IP_MULTICAST_ALL,
        libc::IPV6_MULTICAST_HOPS,
        libc::IPV6_MULTICAST_LOOP,
    ];
    let stream = ty == libc::SOCK_STREAM as u32;
    for &(level, name, _) in OPTS {
        if stream && matches!(level, libc::IPPROTO_IP | libc::IPPROTO_IPV6) && multicast.contains(&name) {
            continue;
        }
        // Options of another protocol, which the kernel refuses to say (a syscall each, a
        // thousand connections a checkpoint).
        let other = match level {
            libc::IPPROTO_IPV6 => family != libc::AF_INET6 as u16,
            libc::IPPROTO_TCP => !stream,
            libc::IPPROTO_UDP => stream,
            _ => false,
        };
        if other {
            continue;
        }
        let own = [
            (libc::IPPROTO_TCP, libc::TCP_MAXSEG),
            (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP),
            (libc::SOL_SOCKET, libc::SO_SNDBUF),
            (libc::SOL_SOCKET, libc::SO_RCVBUF),
        ];
        if established && own.contains(&(level, name)) {
            continue;
        }
        let Some(v) = getsockopt(s, level, name) else { continue };
        if (level, name) == (libc::IPPROTO_TCP, libc::TCP_MAXSEG) && !user_mss(&v) {
            continue;
        }
        if base.iter().find(|b| (b.0, b.1) == (level, name)).and_then(|b| b.2.as_ref()) != Some(&v) {
            out.push(Opt { level, name, value: v });
        }
    }
    Ok(out)
}

/// Whether TCP_MAXSEG's value `v` may be one a program set. A socket that never connected
/// says the MSS it was given (or the default, 536); one that connected, or tried to (a client
/// that retries after ECONNREFUSED, a connection reset), says the last connection's MSS, which
/// may lie past what setsockopt takes (88 to 32767: 32768 over loopback), and which the
/// kernel works out again for the next connection.
fn user_mss(v: &[u8]) -> bool {
    let mss = v.get(..4).and_then(|b| b.try_into().ok()).map(i32::from_ne_bytes);
    mss.is_some_and(|m| (88..=32767).contains(&m))
}

type Defaults = Vec<(i32, i32, Option<Vec<u8>>)>;
type DefaultsCache = Vec<((u16, u32), std::sync::Arc<Defaults>)>;

/// Every option of OPTS as a fresh socket of `family` and `ty` has it, read once per kind.
fn defaults(family: u16, ty: u32, what: &str) -> Result<std::sync::Arc<Defaults>> {
    static CACHE: std::sync::Mutex<DefaultsCache> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = cache.iter().find(|c| c.0 == (family, ty)) {
        return Ok(d.1.clone());
    }
    let base = fresh(family, ty, what)?;
    let d: Defaults = OPTS.iter().map(|&(l, n, _)| (l, n, getsockopt(base.as_raw_fd(), l, n))).collect();
    let d = std::sync::Arc::new(d);
    cache.push(((family, ty), d.clone()));
    Ok(d)
}

/// Sets `opts` on socket `raw`, in order, but for those `skip` names.
pub(super) fn set_options(raw: RawFd, opts: &[Opt], skip: &[(i32, i32)], what: &str) -> Result<()> {
    for o in opts.iter().filter(|o| !skip.contains(&(o.level, o.name))) {
        let mut v = o.value.clone();
        // getsockopt gives the kernel's doubled buffer size; setsockopt takes half of it.
        if o.level == libc::SOL_SOCKET && matches!(o.name, libc::SO_SNDBUF | libc::SO_RCVBUF) && v.len() == 4 {
            let n = i32::from_ne_bytes([v[0], v[1], v[2], v[3]]) / 2;
            v = n.to_ne_bytes().to_vec();
        }
        // SAFETY: setsockopt reads v.len() bytes from a live buffer.
        let r = unsafe { libc::setsockopt(raw, o.level, o.name, v.as_ptr().cast(), v.len() as libc::socklen_t) };
        if r != 0 {
            let e = Errno::last();
            let name = opt_name(o.level, o.name);
            return Err(match (o.name, e) {
                (libc::SO_BINDTODEVICE, Errno::ENODEV) => Error::Refused(format!(
                    "{what}: it was bound to interface {} (SO_BINDTODEVICE), which this node does not have",
                    crate::text::printable(&String::from_utf8_lossy(v.split(|&b| b == 0).next().unwrap_or_default()))
                )),
                (_, Errno::EPERM | Errno::EACCES) => Error::Permission(format!(
                    "{what}: setting {name} takes a capability the restore does not have for this image"
                )),
                _ => Error::sys("setsockopt", format!("{name} of the {what}"), e),
            });
        }
    }
    Ok(())
}

/// The value of option SO_REUSEADDR in `opts` (0 when it is not there: a fresh socket's).
pub(super) fn reuseaddr(opts: &[Opt]) -> i32 {
    let o = opts.iter().find(|o| (o.level, o.name) == (libc::SOL_SOCKET, libc::SO_REUSEADDR));
    o.and_then(|o| Some(i32::from_ne_bytes(o.value.get(..4)?.try_into().ok()?))).unwrap_or(0)
}

pub(super) fn encode_opts(e: &mut Enc, opts: &[Opt]) {
    e.u32(opts.len() as u32);
    for o in opts {
        e.u32(o.level as u32).u32(o.name as u32).bytes(&o.value);
    }
}

pub(super) fn decode_opts(d: &mut Dec, what: &str) -> CrfResult<Vec<Opt>> {
    let at = d.offset();
    let n = d.count(12)?;
    let mut opts = Vec::with_capacity(n);
    for _ in 0..n {
        let o = Opt { level: d.u32()? as i32, name: d.u32()? as i32, value: d.bytes()?.to_vec() };
        if !OPTS.iter().any(|k| (k.0, k.1) == (o.level, o.name)) || o.value.len() > MAX_OPT {
            return Err(d.bad_at(at, format!("{what}: option {}/{} of {} bytes", o.level, o.name, o.value.len())));
        }
        opts.push(o);
    }
    Ok(opts)
}

/// (connections waiting, backlog) of listening TCP socket `ino` of `pid`, from sock_diag in
/// the process's network namespace.
fn diag_listener(pid: i32, family: u16, ino: u64) -> Result<(u32, u32)> {
    let mut found = None;
    diag_dump(pid, family, 1 << TCP_LISTEN, |m| {
        // inet_diag_msg: rqueue at 56, wqueue at 60, inode at 68.
        if m.u32_at(68).map(u64::from) == Some(ino) {
            found = Some((m.u32_at(56).unwrap_or(0), m.u32_at(60).unwrap_or(0)));
        }
        found.is_none()
    })?;
    found.ok_or_else(|| Error::Proc(format!("sock_diag does not list socket:[{ino}] as listening")))
}

/// The most bytes received by a connection of `family` to local `port` that no process
/// holds yet (one waiting in a listener's queue: no inode), in the network namespace of
/// `pid`.
pub fn most_waiting(pid: i32, family: u16, port: u16) -> Result<u32> {
    const TCP_CLOSE_WAIT: u32 = 8;
    let mut most = 0;
    diag_dump(pid, family, 1 << TCP_ESTABLISHED | 1 << TCP_CLOSE_WAIT, |m| {
        // The socket's own port first in the sockid, at 4, in network order.
        let theirs = m.0.get(4..6).map(|p| u16::from_be_bytes([p[0], p[1]]));
        if theirs == Some(port) && m.u32_at(68) == Some(0) {
            most = most.max(m.u32_at(56).unwrap_or(0));
        }
        true
    })?;
    Ok(most)
}

/// An inet_diag_msg.
struct DiagMsg<'a>(&'a [u8]);

impl DiagMsg<'_> {
    fn u32_at(&self, o: usize) -> Option<u32> {
        self.0.get(o..o + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
    }
}

/// Each TCP socket of `family` in one of `states` (a mask of 1 << state) in the network
/// namespace of `pid`, from sock_diag, to `each` while it says go on.
fn diag_dump(pid: i32, family: u16, states: u32, mut each: impl FnMut(&DiagMsg) -> bool) -> Result<()> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    let sock = netlink_in(pid)?;
    // nlmsghdr (16) + inet_diag_req_v2 (56): every TCP socket of `family` in `states`.
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&[0; 8]); // seq, pid
    req.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&[0; 48]); // inet_diag_sockid: any
    // SAFETY: `req` is a live buffer of the length given.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } != req.len() as isize {
        return Err(sys("send(SOCK_DIAG_BY_FAMILY)", &format!("pid {pid}'s network namespace")));
    }
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: recv writes at most buf.len() bytes into `buf`.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let b = match usize::try_from(n) {
            Ok(n) if n > 0 => &buf[..n],
            _ => return Err(sys("recv(SOCK_DIAG_BY_FAMILY)", &format!("pid {pid}'s network namespace"))),
        };
        let u16_at = |o: usize| b.get(o..o + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
        let u32_at = |o: usize| b.get(o..o + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]));
        let mut at = 0;
        while let (Some(len), Some(ty)) = (u32_at(at), u16_at(at + 4)) {
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    return Err(Error::Refused(
                        "sock_diag does not list TCP sockets here, which crs reads a listener's backlog from: load the kernel's tcp_diag (modprobe tcp_diag)".into(),
                    ));
                }
                _ => {}
            }
            if len < 16 {
                return Ok(());
            }
            let end = (at + len as usize).min(b.len());
            if !each(&DiagMsg(b.get(at + 16..end).unwrap_or(&[]))) {
                return Ok(());
            }
            at += (len as usize + 3) & !3;
        }
    }
}

/// Whether socket `s` has something to read (a listener: a connection to accept) now.
pub fn readable(s: RawFd) -> bool {
    let mut p = libc::pollfd { fd: s, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes one live pollfd.
    (unsafe { libc::poll(&mut p, 1, 0) }) > 0 && p.revents & libc::POLLIN != 0
}

/// The state and the bytes to read (the FIN counted) of the TCP socket of `family` from
/// `local` to `peer` (sockaddrs) in our network namespace, from sock_diag; None when there is
/// none.
pub fn diag_one(family: u16, local: &[u8], peer: &[u8]) -> Result<Option<(u8, u32)>> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    let (Some(l), Some(p)) = (addr_of(local), addr_of(peer)) else {
        return Ok(None);
    };
    let sock = netlink_here()?;
    let ip = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => [&a.octets()[..], &[0; 12]].concat(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    // nlmsghdr (16) + inet_diag_req_v2 (56): that one socket, in any state.
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&[0; 8]); // seq, pid
    req.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&l.port().to_be_bytes());
    req.extend_from_slice(&p.port().to_be_bytes());
    req.extend_from_slice(&ip(l.ip()));
    req.extend_from_slice(&ip(p.ip()));
    req.extend_from_slice(&[0; 4]); // interface
    req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    let what = format!("sock_diag of {l} -> {p}");
    // SAFETY: `req` is a live buffer of the length given.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } != req.len() as isize {
        return Err(sys("send(SOCK_DIAG_BY_FAMILY)", &what));
    }
    let mut buf = vec![0u8; 1 << 12];
    // SAFETY: recv writes at most buf.len() bytes into `buf`.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let b = match usize::try_from(n) {
        Ok(n) if n >= 20 => &buf[..n],
        _ => return Err(sys("recv(SOCK_DIAG_BY_FAMILY)", &what)),
    };
    let u32_at = |o: usize| b.get(o..o + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]));
    if u16::from_ne_bytes([b[4], b[5]]) == NLMSG_ERROR {
        return match u32_at(16).map(|e| -(e as i32)) {
            Some(libc::ENOENT) => Ok(None),
            Some(e) => Err(Error::sys("SOCK_DIAG_BY_FAMILY", &what, Errno::from_raw(e))),
            None => Err(Error::Proc(format!("{what}: a short answer"))),
        };
    }
    match (b.get(17), u32_at(16 + 56)) {
        (Some(&state), Some(rq)) => Ok(Some((state, rq))),
        _ => Err(Error::Proc(format!("{what}: a short answer"))),
    }
}

/// A sock_diag netlink socket in our network namespace.
fn netlink_here() -> Result<OwnedFd> {
    // SAFETY: socket takes integers; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 4) };
    if raw < 0 {
        return Err(sys("socket(AF_NETLINK, NETLINK_SOCK_DIAG)", "sock_diag"));
    }
    // SAFETY: just made, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A sock_diag netlink socket in the network namespace of `pid`.
fn netlink_in(pid: i32) -> Result<OwnedFd> {
    let theirs = format!("/proc/{pid}/ns/net");
    let file = std::fs::File::open(&theirs).map_err(|e| Error::io(&theirs, e))?;
    in_netns(Some(&file), netlink_here)
}

/// Runs `f` in the network namespace `ns` (None: ours), on a thread of its own when it is
/// not ours.
pub fn in_netns<T: Send>(ns: Option<&std::fs::File>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let Some(ns) = ns else { return f() };
    let id = |m: std::io::Result<std::fs::Metadata>| m.ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    if id(std::fs::metadata("/proc/self/ns/net")) == id(ns.metadata()) {
        return f();
    }
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // SAFETY: setns takes an fd we hold open and a flag; it moves only this thread,
            // which ends with `f`.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(sys("setns(CLONE_NEWNET)", "the process's network namespace"));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Proc("the thread entering the network namespace failed".into())))
    })
}

/// Makes socket `s` here, for the processes created after to inherit: options, bind, then
/// listen or connect. Returns it, close-on-exec. The caller holds the image owner's
/// file-system ids and, for another user's image, no effective capability it must not use.
pub fn create_here(s: &Sock, free: Option<std::net::IpAddr>) -> Result<OwnedFd> {
    let what = describe_one(s);
    let fd = fresh(s.family, s.ty, &what)?;
    let raw = fd.as_raw_fd();
    set_options(raw, &s.opts, &[], &what)?;
    if s.state != NEW {
        // A TCP port the checkpointed process's own closed connections still hold (TIME_WAIT)
        // takes SO_REUSEADDR to bind again, which the process may not have had: set for the
        // bind, then back to the image's. A live listener on it is refused all the same.
        let tcp = s.ty == libc::SOCK_STREAM as u32;
        let had = reuseaddr(&s.opts);
        if tcp && had == 0 {
            set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, &what)?;
        }
        bind(raw, &s.local, free, &what)?;
        if tcp && had == 0 {
            set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0, &what)?;
        }
    }
    match s.state {
        // SAFETY: listen takes integers.
        LISTEN if unsafe { libc::listen(raw, s.backlog as i32) } != 0 => {
            return Err(match Errno::last() {
                Errno::EADDRINUSE => in_use(&s.local, &what),
                e => Error::sys("listen", &what, e),
            });
        }
        // SAFETY: connect reads s.peer.len() bytes of a live sockaddr.
        CONNECTED if unsafe { libc::connect(raw, s.peer.as_ptr().cast(), s.peer.len() as libc::socklen_t) } != 0 => {
            return Err(sys("connect", &what));
        }
        _ => {}
    }
    Ok(fd)
}

pub(super) fn set_int(raw: RawFd, level: i32, name: i32, v: i32, what: &str) -> Result<()> {
    // SAFETY: setsockopt reads one int.
    if unsafe { libc::setsockopt(raw, level, name, (&v as *const i32).cast(), 4) } != 0 {
        return Err(sys("setsockopt", &format!("{} of the {what}", opt_name(level, name))));
    }
    Ok(())
}

/// Address `addr` is taken here: by whom.
fn in_use(addr: &[u8], what: &str) -> Error {
    let at = addr_of(addr).map_or_else(|| "?".into(), |a| a.to_string());
    let holders = super::endpoints::inet_port_holders(addr_of(addr).map_or(0, |a| a.port()));
    let by = if holders.is_empty() { String::new() } else { format!(" (by {holders})") };
    Error::Refused(format!("{what}: {at} is in use here{by}: stop what holds it, or restore on another node"))
}

/// Whether sockaddr `addr` is on address `free` (IPv4, or mapped in IPv6).
pub(super) fn is_free(addr: &[u8], free: Option<std::net::IpAddr>) -> bool {
    // An IPv4 address mapped in IPv6 is the IPv4 one.
    let plain = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        ip => ip,
    };
    free.is_some() && addr_of(addr).map(|a| plain(a.ip())) == free
}

/// Binds `raw` to `addr`; with IP_FREEBIND for the bind when it is `free`, an address this
/// node does not have yet.
pub(super) fn bind(raw: RawFd, addr: &[u8], free: Option<std::net::IpAddr>, what: &str) -> Result<()> {
    let freebind = is_free(addr, free);
    let (level, name) = match addr_of(addr) {
        Some(std::net::SocketAddr::V6(_)) => (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND),
        _ => (libc::IPPROTO_IP, libc::IP_FREEBIND),
    };
    let had = if freebind { int_opt(raw, level, name, what)? } else { 0 };
    if freebind {
        set_int(raw, level, name, 1, what)?;
    }
    // SAFETY: bind reads addr.len() bytes of a live sockaddr.
    let r = unsafe { libc::bind(raw, addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
    let e = Errno::last();
    if freebind {
        set_int(raw, level, name, had, what)?;
    }
    if r == 0 {
        return Ok(());
    }
    let at = addr_of(addr).map_or_else(|| "?".into(), |a| a.to_string());
    Err(match e {
        Errno::EADDRINUSE => in_use(addr, what),
        Errno::EADDRNOTAVAIL => Error::Refused(format!(
            "{what}: this node has no address {}: add it (ip addr add), or restore where it is",
            addr_of(addr).map_or_else(|| "?".into(), |a| a.ip().to_string())
        )),
        Errno::EACCES | Errno::EPERM => Error::Permission(format!(
            "{what}: binding {at} takes a capability (CAP_NET_BIND_SERVICE) the restore does not have for this image"
        )),
        e => Error::sys("bind", format!("{what} ({at})"), e),
    })
}

pub fn encode(all: &[Sock]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for s in all {
        e.u64(s.ino).u32(s.family as u32).u32(s.ty).u8(s.state).bytes(&s.local).bytes(&s.peer).u32(s.backlog);
        encode_opts(&mut e, &s.opts);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Sock>> {
    let mut d = Dec::new(b, at, "INETSOCKS");
    let n = d.count(33)?;
    let mut out: Vec<Sock> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let (ino, family, ty, state) = (d.u64()?, d.u32()?, d.u32()?, d.u8()?);
        let (local, peer, backlog) = (d.bytes()?.to_vec(), d.bytes()?.to_vec(), d.u32()?);
        let opts = decode_opts(&mut d, &format!("socket {ino}"))?;
        let s = Sock { ino, family: family as u16, ty, state, local, peer, backlog, opts };
        let fam = |a: &[u8]| addr_of(a).is_some() && a.get(..2) == Some(&s.family.to_ne_bytes()[..]);
        let ok = matches!(family as i32, libc::AF_INET | libc::AF_INET6)
            && matches!(ty as i32, libc::SOCK_STREAM | libc::SOCK_DGRAM)
            && state <= CONNECTED
            && fam(&s.local)
            && (state == CONNECTED) != s.peer.is_empty()
            && (state != CONNECTED || (fam(&s.peer) && ty == libc::SOCK_DGRAM as u32))
            && (state != LISTEN || ty == libc::SOCK_STREAM as u32)
            && !out.iter().any(|o| o.ino == ino);
        if !ok {
            return Err(d.bad_at(rec, format!("socket {ino} of family {family}, type {ty}, state {state}")));
        }
        out.push(s);
    }
    d.finish()?;
    Ok(out)
}

pub fn describe(all: &[Sock]) -> Vec<String> {
    all.iter()
        .map(|s| {
            let opts: Vec<String> = s.opts.iter().map(|o| opt_name(o.level, o.name)).collect();
            let backlog = if s.state == LISTEN { format!(", backlog {}", s.backlog) } else { String::new() };
            let opts = if opts.is_empty() { String::new() } else { format!("; {}", opts.join(" ")) };
            format!("inet:      {} {}{backlog}{opts}", s.ino, describe_one(s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(s: &OwnedFd) -> (i32, i32, u64) {
        use std::os::unix::fs::MetadataExt;
        let fd = s.as_raw_fd();
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        (std::process::id() as i32, fd, ino)
    }

    fn set(s: &OwnedFd, level: i32, name: i32, v: i32) {
        // SAFETY: setsockopt reads one int.
        assert_eq!(unsafe { libc::setsockopt(s.as_raw_fd(), level, name, (&v as *const i32).cast(), 4) }, 0);
    }

    #[test]
    fn a_listener_and_a_udp_socket_come_back_with_their_address_backlog_and_options() {
        let l = fresh(libc::AF_INET6 as u16, libc::SOCK_STREAM as u32, "test").unwrap();
        set(&l, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        set(&l, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1);
        set(&l, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77);
        set(&l, libc::SOL_SOCKET, libc::SO_RCVBUF, 50000);
        let sa = sockaddr(std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)));
        bind(l.as_raw_fd(), &sa, None, "test").unwrap();
        // SAFETY: listen takes integers.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 9) }, 0);
        let (pid, fd, ino) = own(&l);
        assert_eq!(classify(pid, fd, ino, false, &|_| None), Some(Ok(())));
        let mut notes = Vec::new();
        let s = collect(pid, fd, ino, &|| Some(String::new()), &mut notes).unwrap();
        assert_eq!((s.state, s.backlog), (LISTEN, 9));
        let names: Vec<String> = s.opts.iter().map(|o| opt_name(o.level, o.name)).collect();
        for n in ["SO_REUSEADDR", "IPV6_V6ONLY", "TCP_KEEPIDLE", "SO_RCVBUF"] {
            assert!(names.iter().any(|x| x == n), "{names:?}");
        }
        assert_eq!(decode(&encode(std::slice::from_ref(&s)), 0).unwrap(), vec![s.clone()]);
        // Made again on the same address, once the first is closed.
        drop(l);
        let again = create_here(&s, None).unwrap();
        let (p2, f2, i2) = own(&again);
        let s2 = collect(p2, f2, i2, &|| Some(String::new()), &mut notes).unwrap();
        assert_eq!(Sock { ino: s.ino, ..s2 }, s);

        let u = fresh(libc::AF_INET as u16, libc::SOCK_DGRAM as u32, "test").unwrap();
        set(&u, libc::SOL_SOCKET, libc::SO_BROADCAST, 1);
        let peer = sockaddr(std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
        // SAFETY: connect reads peer.len() bytes of a live sockaddr.
        assert_eq!(unsafe { libc::connect(u.as_raw_fd(), peer.as_ptr().cast(), peer.len() as u32) }, 0);
        let (pid, fd, ino) = own(&u);
        let s = collect(pid, fd, ino, &|| Some(String::new()), &mut notes).unwrap();
        assert_eq!(s.state, CONNECTED);
        assert_eq!(addr_of(&s.peer), Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9))));
        drop(u);
        let again = create_here(&s, None).unwrap();
        let (p2, f2, i2) = own(&again);
        assert_eq!(Sock { ino: s.ino, ..collect(p2, f2, i2, &|| Some(String::new()), &mut notes).unwrap() }, s);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn a_damaged_record_is_refused() {
        let s = Sock {
            ino: 5,
            family: libc::AF_INET as u16,
            ty: libc::SOCK_DGRAM as u32,
            state: LISTEN,
            local: sockaddr(std::net::SocketAddr::from(([0, 0, 0, 0], 53))),
            ..Default::default()
        };
        assert!(decode(&encode(&[s]), 0).is_err());
    }
}
