//! What a pipe or socket fd is, and who is at its other end: "a TCP socket listening on
//! 127.0.0.1:8089", "a unix stream socket connected to pid 812 (sshd)", "a pipe's read end,
//! its write end held by pid 90 (bash)". A refusal names fds this way, and so does ckpt when
//! it carries an fd as a stub. Read from /proc (the process's own network namespace), the
//! socket's xattr and, for a unix socket's peer, the sock_diag netlink interface.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;

/// "pid 90 (bash)".
pub fn who(pid: i32) -> String {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("pid {pid} ({})", crate::text::printable(comm.trim()))
}

/// Every fd of every process, by what it refers to ("pipe:[123]", a path), with
/// its access mode once read (it never changes for an open file): one walk of /proc.
type Index = std::collections::HashMap<std::ffi::OsString, Vec<(i32, i32, std::cell::Cell<Option<u32>>)>>;

fn walk() -> Index {
    let mut out = Index::new();
    let Ok(procs) = fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Some(other) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else { continue };
        for f in fds.flatten() {
            let Some(n) = f.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if let Ok(t) = fs::read_link(f.path()) {
                out.entry(t.into_os_string()).or_default().push((other, n, std::cell::Cell::new(None)));
            }
        }
    }
    out
}

thread_local! {
    /// The walk a [`Snapshot`] keeps: None without one; Some(None) until first needed.
    static WALKED: std::cell::RefCell<Option<Option<std::rc::Rc<Index>>>> = const { std::cell::RefCell::new(None) };
}

/// While it lives, every lookup of who holds a pipe or socket uses one walk of /proc, taken
/// when first needed: a checkpoint of a tree asks for each fd of each process, and a walk
/// reads every fd of every process on the node (48,000 readlinks for 64 processes with a
/// pipe each). What other processes do meanwhile is seen as of that walk.
pub struct Snapshot {
    outer: bool,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let outer = WALKED.with(|w| {
            let mut w = w.borrow_mut();
            let none = w.is_none();
            if none {
                *w = Some(None);
            }
            none
        });
        Snapshot { outer }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if self.outer {
            WALKED.with(|w| *w.borrow_mut() = None);
        }
    }
}

/// The walk of the current Snapshot, or a fresh one.
fn index() -> std::rc::Rc<Index> {
    WALKED.with(|w| {
        let mut w = w.borrow_mut();
        match &mut *w {
            Some(Some(i)) => i.clone(),
            Some(slot) => slot.insert(std::rc::Rc::new(walk())).clone(),
            None => std::rc::Rc::new(walk()),
        }
    })
}

/// The other processes (or other fds of `pid`) that hold `link` ("pipe:[123]",
/// "socket:[456]"), with the access mode each holds it in. crs itself, which may hold a copy
/// to look at, is not one.
fn holders(link: &str, pid: i32, fd: i32) -> Vec<(i32, i32, u32)> {
    let idx = index();
    let Some(all) = idx.get(std::ffi::OsStr::new(link)) else { return Vec::new() };
    let me = std::process::id() as i32;
    all.iter()
        .filter(|h| (h.0, h.1) != (pid, fd) && (h.0 != me || pid == me))
        .map(|(other, n, mode)| {
            let m = mode.get().unwrap_or_else(|| {
                let info = fs::read_to_string(format!("/proc/{other}/fdinfo/{n}")).unwrap_or_default();
                let flags = crate::ptrace::procfs::parse_fdinfo(&info).map_or(0, |(_, f)| f);
                flags & libc::O_ACCMODE as u32
            });
            mode.set(Some(m));
            (*other, *n, m)
        })
        .collect()
}

/// "pid 90 (bash), pid 91 (cat)"; "itself (fd 4)" for the process's own fds.
fn name_holders(h: &[(i32, i32, u32)], pid: i32) -> String {
    let mut seen = BTreeSet::new();
    let named: Vec<String> = h
        .iter()
        .filter(|(p, n, _)| seen.insert(if *p == pid { (*p, *n) } else { (*p, -1) }))
        .map(|&(p, n, _)| if p == pid { format!("itself (fd {n})") } else { who(p) })
        .collect();
    named.join(", ")
}

/// Whether every holder of pipe `link` ("pipe:[123]", or a FIFO's path; held by `pid` as
/// `fd`) is one of the processes `within` (`pid` among them): a pipe entirely inside the
/// checkpoint. An end nobody holds any more is inside too: a restore closes it again (a read
/// end whose writers are all gone reads end of file, as make's jobserver pipe does).
pub fn pipe_inside(within: &[i32], pid: i32, fd: i32, link: &str) -> bool {
    let h = holders(link, pid, fd);
    if !h.iter().all(|x| x.0 == pid || within.contains(&x.0)) {
        return false;
    }
    if !link.starts_with("pipe:") {
        return true;
    }
    // No holder of the other end seen: closed, or held by a process whose fds we may not
    // read (an ordinary user's ckpt, a pipe another user reads): the pipe itself says which.
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let flags = crate::ptrace::procfs::parse_fdinfo(&info).map_or(0, |(_, f)| f) & libc::O_ACCMODE as u32;
    let other = if flags == libc::O_RDONLY as u32 { libc::O_WRONLY as u32 } else { libc::O_RDONLY as u32 };
    h.iter().any(|x| x.2 == other || x.2 == libc::O_RDWR as u32) || !other_end_open(pid, fd, flags)
}

/// Whether the other end of the pipe that `pid` holds as `fd` (opened with access mode
/// `mode`) is open anywhere, asked of a copy of the fd: a write end with no reader polls
/// POLLERR, a read end with no writer POLLHUP. Without a copy (pidfd_getfd refused), false:
/// what the walk of /proc saw stands.
fn other_end_open(pid: i32, fd: i32, mode: u32) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(ours) = crate::ptrace::procfs::getfd(pid, fd, "a pipe") else { return false };
    let (events, closed) =
        if mode == libc::O_RDONLY as u32 { (libc::POLLIN, libc::POLLHUP) } else { (libc::POLLOUT, libc::POLLERR) };
    let mut p = libc::pollfd { fd: ours.as_raw_fd(), events, revents: 0 };
    // SAFETY: poll reads and writes one pollfd, ours; timeout 0.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n >= 0 && p.revents & closed == 0
}

/// Every socket a process other than `pid` and those `within` (and crs) holds, by inode,
/// with its holders named ("pid 1 (systemd)"): one walk of /proc for all of a process's
/// sockets.
pub fn sockets_held_outside(within: &[i32], pid: i32) -> std::collections::HashMap<u64, String> {
    let mut by: std::collections::HashMap<u64, Vec<i32>> = std::collections::HashMap::new();
    let me = std::process::id() as i32;
    for (t, hs) in index().iter() {
        let ino = t.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok());
        let Some(ino) = ino else { continue };
        for &(other, _, _) in hs {
            if other == me || other == pid || within.contains(&other) {
                continue;
            }
            let h = by.entry(ino).or_default();
            if !h.contains(&other) {
                h.push(other);
            }
        }
    }
    by.into_iter().map(|(ino, h)| (ino, h.iter().map(|&p| who(p)).collect::<Vec<_>>().join(", "))).collect()
}

/// What holds local port `port` in our network namespace: the processes with a TCP or UDP
/// socket on it, named, and the closed TCP connections on it still closing, counted; empty when
/// nothing is found.
pub fn inet_port_holders(port: u16) -> String {
    let (mut h, mut time_wait) = (Vec::new(), 0);
    for file in ["tcp", "tcp6", "udp", "udp6"] {
        let text = fs::read_to_string(format!("/proc/self/net/{file}")).unwrap_or_default();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f.get(1).and_then(|a| a.rsplit_once(':')).and_then(|p| u16::from_str_radix(p.1, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            match f.get(9).and_then(|i| i.parse::<u64>().ok()) {
                Some(0) if file.starts_with("tcp") => time_wait += 1,
                Some(ino) if ino != 0 => h.extend(holders(&format!("socket:[{ino}]"), 0, -1)),
                _ => {}
            }
        }
    }
    let mut said = name_holders(&h, 0);
    if time_wait > 0 {
        if !said.is_empty() {
            said += " and ";
        }
        said += &format!(
            "{time_wait} closed connections still closing (FIN_WAIT, TIME_WAIT), which keep a listener without SO_REUSEADDR out for up to 60 s"
        );
    }
    said
}

/// A pipe fd: which end, and who holds the other.
pub fn pipe(pid: i32, fd: i32, link: &str, flags: u32) -> String {
    let reading = flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32;
    let (mine, other, want) = if reading {
        ("read end", "write end", libc::O_WRONLY as u32)
    } else {
        ("write end", "read end", libc::O_RDONLY as u32)
    };
    let h: Vec<_> = holders(link, pid, fd).into_iter().filter(|x| x.2 == want).collect();
    match h.len() {
        0 if link.starts_with("pipe:") && other_end_open(pid, fd, flags & libc::O_ACCMODE as u32) => {
            format!("a pipe's {mine}, its {other} held by a process crs may not look at (another user's)")
        }
        0 => format!("a pipe's {mine}, its {other} closed"),
        _ => format!("a pipe's {mine}, its {other} held by {}", name_holders(&h, pid)),
    }
}

/// A socket fd, by protocol, state and address.
pub fn socket(pid: i32, fd: i32, link: &str) -> String {
    let proto = sock_proto(pid, fd).unwrap_or_default();
    let ino: u64 = link.trim_start_matches("socket:[").trim_end_matches(']').parse().unwrap_or(0);
    let inet = |file: &str, kind: &str| inet_socket(pid, file, ino).map(|d| format!("a {kind} socket {d}"));
    let found = match proto.as_str() {
        "TCP" => inet("tcp", "TCP"),
        "TCPv6" => inet("tcp6", "TCP"),
        "UDP" | "UDP-Lite" => inet("udp", "UDP"),
        "UDPv6" | "UDPLITEv6" => inet("udp6", "UDP"),
        "RAW" => inet("raw", "raw IP"),
        "RAWv6" => inet("raw6", "raw IP"),
        p if p.starts_with("UNIX") => unix_socket(pid, fd, ino),
        "NETLINK" => Some(format!("a netlink socket{}", netlink_protocol(pid, ino))),
        "PACKET" => Some("a packet socket".into()),
        _ => None,
    };
    found.unwrap_or_else(|| match proto.as_str() {
        "" => "a socket".into(),
        p => format!("a {p} socket"),
    })
}

/// The socket's protocol name, as its "system.sockprotoname" xattr says ("TCP", "UNIX-STREAM").
pub fn sock_proto(pid: i32, fd: i32) -> Option<String> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both names are NUL-terminated and getxattr writes at most buf.len() bytes.
    let n =
        unsafe { libc::getxattr(path.as_ptr(), c"system.sockprotoname".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&buf[..n as usize]).trim_end_matches('\0').to_string())
}

/// "0100007F:1F99" (or 32 hex digits for IPv6) as an address and port.
fn inet_addr(s: &str) -> Option<String> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let words: Vec<u32> =
        (0..a.len() / 8).map(|i| u32::from_str_radix(&a[8 * i..8 * i + 8], 16)).collect::<Result<_, _>>().ok()?;
    Some(match words[..] {
        [w] => format!("{}:{port}", std::net::Ipv4Addr::from(w.swap_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
            }
            format!("[{}]:{port}", std::net::Ipv6Addr::from(bytes))
        }
        _ => return None,
    })
}

/// Finds inode `ino` in /proc/PID/net/FILE: "listening on A", "connected A -> B"...
fn inet_socket(pid: i32, file: &str, ino: u64) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/{file}")).ok()?;
    let line = text.lines().skip(1).find(|l| l.split_whitespace().nth(9).and_then(|i| i.parse().ok()) == Some(ino))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, remote, st) = (inet_addr(f[1])?, inet_addr(f[2])?, u8::from_str_radix(f[3], 16).ok()?);
    let tcp = file.starts_with("tcp");
    Some(match st {
        0x0A if tcp => format!("listening on {local}"),
        0x01 if tcp => format!("connected {local} -> {remote}"),
        0x07 if tcp => format!("bound to {local}, not connected"),
        0x01 => format!("on {local}, connected to {remote}"),
        0x07 => format!("bound to {local}"),
        // (The state is named by the reason that follows.)
        _ if tcp => format!("on {local} -> {remote}"),
        s => format!("on {local} -> {remote} (state {s:#x})"),
    })
}

/// A unix socket's line of /proc/PID/net/unix.
struct UnixLine {
    listening: bool,
    /// SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET.
    ty: u32,
    /// Its name, as /proc shows it ("@..." for an abstract one), when bound.
    path: Option<String>,
    /// St 01: SS_UNCONNECTED.
    unconnected: bool,
}

/// Socket `ino`'s line of `text` (/proc/PID/net/unix).
fn unix_line(text: &str, ino: u64) -> Option<UnixLine> {
    let line = text.lines().skip(1).find(|l| l.split_whitespace().nth(6).and_then(|i| i.parse().ok()) == Some(ino))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Some(UnixLine {
        listening: u32::from_str_radix(f.get(3)?, 16).ok()? & 0x10000 != 0,
        ty: u32::from_str_radix(f.get(4)?, 16).ok()?,
        path: f.get(7).map(|p| p.to_string()),
        unconnected: f.get(5) == Some(&"01"),
    })
}

/// /proc/PID/net/unix: the unix sockets of `pid`'s network namespace.
fn net_unix(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/net/unix")).ok()
}

/// A unix socket from /proc/PID/net/unix, and its peer's holder through sock_diag.
fn unix_socket(pid: i32, fd: i32, ino: u64) -> Option<String> {
    let l = unix_line(&net_unix(pid)?, ino)?;
    let kind = match l.ty as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "",
    };
    let at = l.path.as_ref().map(|p| format!(" on {}", crate::text::printable(p))).unwrap_or_default();
    if l.listening {
        return Some(format!("a unix {kind} socket listening{at}"));
    }
    let peer = unix_peer(ino).map(|p| {
        let h = holders(&format!("socket:[{p}]"), pid, fd);
        match h.is_empty() {
            true => format!(" connected to socket {p}, which no process holds"),
            false => format!(" connected to {}", name_holders(&h, pid)),
        }
    });
    let unknown = match peer {
        None if !unix_diag_works() => {
            " (crs cannot tell its peer: the kernel's unix_diag is not loaded; modprobe unix_diag)".to_string()
        }
        _ => String::new(),
    };
    Some(format!("a unix {kind} socket{at}{}{unknown}", peer.unwrap_or_default()))
}

/// Whether sock_diag answers for unix sockets here (Debian loads unix_diag on demand; a
/// system without modules may lack it): asked once, of a socket pair of our own.
pub fn unix_diag_works() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WORKS.get_or_init(|| {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::fs::MetadataExt;
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds, owned below.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0
        {
            return false;
        }
        // SAFETY: both were just made and are ours alone.
        let (a, _b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&a));
        fs::metadata(link).is_ok_and(|m| unix_peer(m.ino()).is_some())
    })
}

/// The inode of unix socket `ino`'s peer (sock_diag, UNIX_DIAG_PEER), if it has one.
fn unix_peer(ino: u64) -> Option<u64> {
    unix_diag(ino).and_then(|d| d.0)
}

/// A unix socket connected to a peer outside the checkpoint, to be connected again to the
/// same name (ckpt --unix-reconnect): its type and its peer's name (sun_path as bound: a
/// path, or an abstract name beginning with a NUL byte). Err: why it cannot be.
pub fn unix_reconnectable(pid: i32, fd: i32, ino: u64) -> std::result::Result<(u32, String), String> {
    let l = unix_line(&net_unix(pid).unwrap_or_default(), ino).ok_or("crs cannot find it in /proc/net/unix")?;
    if l.listening || l.unconnected {
        return Err("it is not connected".into());
    }
    if l.path.is_some() {
        return Err("it is bound to a name of its own, which --unix-reconnect does not bind again".into());
    }
    let peer = unix_peer(ino).ok_or("crs cannot tell its peer (unix_diag)")?;
    let name = unix_diag_full(peer).and_then(|d| d.name).filter(|n| !n.is_empty());
    let name = name.ok_or("its peer has no name to connect to again")?;
    let name = String::from_utf8(name).map_err(|_| "its peer's name is not UTF-8".to_string())?;
    use std::os::fd::AsRawFd;
    let ours = crate::ptrace::procfs::getfd(pid, fd, "a unix socket").map_err(|e| e.to_string())?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`.
    if unsafe { libc::ioctl(ours.as_raw_fd(), libc::FIONREAD, &mut n) } == 0 && n > 0 {
        return Err(format!("{n} bytes sent to it are unread, which connecting again would lose"));
    }
    Ok((l.ty, name))
}

/// What a unix socket the checkpoint holds whole is connected to (UNIXPAIRS, UNIXCONNS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The other end of a pair (made by socketpair, or by a connect that listener `via`
    /// accepted: then `accepted` says which end the accepted one is, this or the peer).
    Socket { ino: u64, via: Option<(u64, bool)> },
    /// A connection listener `listener` has not accepted yet (the peer has no inode yet).
    Waiting { listener: u64 },
    /// A stream or seqpacket connection whose peer was closed: reads get what is queued,
    /// then end of file.
    Closed,
}

/// What listens on unix socket path `path` in our network namespace: the processes that
/// hold the socket, named (empty if none does: it is being closed); None when nothing listens
/// there.
pub fn unix_listener_holders(path: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/net/unix").ok()?;
    let ino = listener_named(&text, path)?;
    Some(name_holders(&holders(&format!("socket:[{ino}]"), 0, -1), 0))
}

/// The listening unix socket of /proc/PID/net/unix named `path`, if one.
fn listener_named(text: &str, path: &str) -> Option<u64> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let listening = u32::from_str_radix(f.get(3)?, 16).ok()? & 0x10000 != 0;
        (listening && f.get(7) == Some(&path)).then(|| f.get(6)?.parse().ok())?
    })
}

/// The type of socket `ino` if it is a unix socket made and nothing more: unbound,
/// unconnected, not listening (a client between socket and connect).
pub fn unix_fresh(pid: i32, ino: u64) -> Option<u32> {
    let me = unix_line(&net_unix(pid)?, ino)?;
    let unconnected = me.unconnected && !me.listening && me.path.is_none();
    let types = [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].map(|t| t as u32);
    (unconnected && types.contains(&me.ty) && unix_diag(ino)?.0.is_none()).then_some(me.ty)
}

/// Whether socket `ino`, held by `pid` as `fd`, is one end of a connected pair of unix sockets
/// whose two ends only processes in `within` (`pid` among them) hold, neither shut down nor
/// listening: a socketpair, or a connection to a listener held in the checkpoint, accepted or
/// still waiting (with nothing sent yet: the waiting end's data cannot be read). Both ends of
/// a socketpair are unnamed; of a connection, the accepted end has the listener's name.
pub fn unix_pair(within: &[i32], pid: i32, fd: i32, ino: u64) -> Option<Peer> {
    let text = net_unix(pid)?;
    let me = unix_line(&text, ino)?;
    if me.listening {
        return None;
    }
    let inside = |h: &[(i32, i32, u32)]| h.iter().all(|x| x.0 == pid || within.contains(&x.0));
    let held_inside = |l: u64| {
        let h = holders(&format!("socket:[{l}]"), 0, -1);
        !h.is_empty() && inside(&h)
    };
    let (peer, shut) = unix_diag(ino)?;
    let peer = peer?;
    if !inside(&holders(&format!("socket:[{ino}]"), pid, fd)) {
        return None;
    }
    // The peer was closed: the kernel shut this end down both ways (SHUTDOWN_MASK), and the
    // peer has no inode any more.
    if peer == 0 && shut == 3 && me.ty != libc::SOCK_DGRAM as u32 {
        return Some(Peer::Closed);
    }
    if shut != 0 {
        return None;
    }
    // An accepted end: named as its listener, which the checkpoint holds.
    let accepted = |line: &UnixLine| -> Option<Option<u64>> {
        match &line.path {
            None => Some(None),
            Some(p) => listener_named(&text, p).filter(|&l| held_inside(l)).map(Some),
        }
    };
    let mine = accepted(&me)?;
    if peer == 0 {
        // The listener's embryo: a connection not accepted yet. Its listener is the one
        // the checkpoint holds with connections waiting; it must be the only such.
        if mine.is_some() {
            return None;
        }
        let waiting: Vec<u64> = text
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let listening = u32::from_str_radix(f.get(3)?, 16).ok()? & 0x10000 != 0;
                let i: u64 = f.get(6)?.parse().ok()?;
                (listening && held_inside(i) && unix_diag_full(i)?.rq?.0 > 0).then_some(i)
            })
            .collect();
        return match waiting[..] {
            [listener] if sent_nothing(pid, fd) => Some(Peer::Waiting { listener }),
            _ => None,
        };
    }
    let (_, peer_shut) = unix_diag(peer)?;
    let theirs = accepted(&unix_line(&text, peer)?)?;
    if peer_shut != 0 || !held_inside(peer) || (mine.is_some() && theirs.is_some()) {
        return None;
    }
    let via = match (mine, theirs) {
        (Some(l), _) => Some((l, true)),
        (_, Some(l)) => Some((l, false)),
        _ => None,
    };
    Some(Peer::Socket { ino: peer, via })
}

/// Whether the socket `pid` holds as `fd` has nothing sent that its peer has not read
/// (SIOCOUTQ on a copy of it).
fn sent_nothing(pid: i32, fd: i32) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(ours) = crate::ptrace::procfs::getfd(pid, fd, "a waiting connection") else { return false };
    let mut n: libc::c_int = -1;
    // SAFETY: SIOCOUTQ writes one int into `n`.
    unsafe { libc::ioctl(ours.as_raw_fd(), libc::TIOCOUTQ, &mut n) == 0 && n == 0 }
}

/// A listening unix socket the checkpoint holds whole (UNIXPAIRS' listeners): its type, its
/// name (a path, or an abstract name beginning with a NUL byte) and its backlog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub ty: u32,
    pub name: Vec<u8>,
    pub backlog: u32,
    /// Connections waiting to be accepted (each must be from a process of the checkpoint).
    pub waiting: u32,
    /// Its socket file's permission bits, owner and group (a path whose file is the one it
    /// bound).
    pub file: Option<(u32, u32, u32)>,
}

/// Whether socket `ino`, held by `pid` as `fd`, is a named unix socket listening, which only
/// processes in `within` hold.
pub fn unix_listener(within: &[i32], pid: i32, fd: i32, ino: u64) -> Option<Listener> {
    let UnixLine { listening, ty, .. } = unix_line(&net_unix(pid)?, ino)?;
    if !listening || !(ty == libc::SOCK_STREAM as u32 || ty == libc::SOCK_SEQPACKET as u32) {
        return None;
    }
    let d = unix_diag_full(ino)?;
    let (pending, backlog) = d.rq?;
    let mut name = d.name?;
    // A path bound relative to the cwd of its time: found from the process's cwd now, and
    // only if the socket file there is the one it bound (its inode, UNIX_DIAG_VFS).
    if name.first().is_some_and(|&b| b != 0 && b != b'/') {
        use std::os::unix::fs::MetadataExt;
        let rel = name.split(|&b| b == 0).next().unwrap_or_default();
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        let abs = cwd.join(std::ffi::OsStr::from_bytes(rel));
        let (vfs_ino, _) = d.vfs?;
        if fs::metadata(&abs).ok()?.ino() != vfs_ino as u64 {
            return None;
        }
        name = abs.as_os_str().as_bytes().to_vec();
        name.push(0);
        if name.len() > 108 {
            return None;
        }
    }
    let inside = holders(&format!("socket:[{ino}]"), pid, fd).iter().all(|x| x.0 == pid || within.contains(&x.0));
    // The socket file, seen from the process's root, if it is the one it bound.
    let file = (name.first() == Some(&b'/')).then_some(()).and_then(|()| {
        use std::os::unix::fs::MetadataExt;
        let path = std::ffi::OsStr::from_bytes(name.split(|&b| b == 0).next().unwrap_or_default());
        let m = fs::symlink_metadata(format!("/proc/{pid}/root{}", path.to_string_lossy())).ok()?;
        let (vfs_ino, _) = d.vfs?;
        (m.ino() == vfs_ino as u64 && m.mode() & libc::S_IFMT == libc::S_IFSOCK)
            .then(|| (m.mode() & 0o7777, m.uid(), m.gid()))
    });
    (inside && !name.is_empty()).then_some(Listener { ty, name, backlog, waiting: pending, file })
}

/// What sock_diag says of unix socket `ino`: its peer's inode and its shutdown bits.
fn unix_diag(ino: u64) -> Option<(Option<u64>, u8)> {
    unix_diag_full(ino).map(|d| (d.peer, d.shut))
}

struct Diag {
    peer: Option<u64>,
    shut: u8,
    /// (connections waiting, backlog) of a listening socket; bytes queued otherwise.
    rq: Option<(u32, u32)>,
    /// The bound name (sun_path as given), if any.
    name: Option<Vec<u8>>,
    /// The socket file's (inode, device) on disk, for a path.
    vfs: Option<(u32, u32)>,
}

/// sock_diag's answer for unix socket `ino`.
fn unix_diag_full(ino: u64) -> Option<Diag> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_NAME: u32 = 1;
    const UDIAG_SHOW_PEER: u32 = 4;
    const UDIAG_SHOW_RQLEN: u32 = 16;
    const UDIAG_SHOW_VFS: u32 = 2;
    const UNIX_DIAG_VFS: u16 = 1;
    const UNIX_DIAG_NAME: u16 = 0;
    const UNIX_DIAG_RQLEN: u16 = 4;
    const UNIX_DIAG_PEER: u16 = 2;
    const UNIX_DIAG_SHUTDOWN: u16 = 6;
    // SAFETY: socket() takes no pointers; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 4) };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // nlmsghdr (16) + unix_diag_req (24): one socket by inode, with its peer.
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&[0; 8]); // seq, pid
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&(ino as u32).to_ne_bytes());
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    // SAFETY: `req` is a live buffer of the length given.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } != req.len() as isize {
        return None;
    }
    let mut buf = [0u8; 8192];
    // SAFETY: recv writes at most buf.len() bytes into `buf`.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let b = buf.get(..usize::try_from(n).ok()?)?;
    let u16_at = |o: usize| b.get(o..o + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let u32_at = |o: usize| b.get(o..o + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]));
    if u16_at(4)? != SOCK_DIAG_BY_FAMILY {
        return None; // NLMSG_ERROR: no such socket
    }
    let end = (u32_at(0)? as usize).min(b.len());
    // Attributes follow the 16-byte unix_diag_msg, each 4-byte aligned.
    let mut d = Diag { peer: None, shut: 0, rq: None, name: None, vfs: None };
    let mut at = 16 + 16;
    while at + 4 <= end {
        let (len, ty) = (u16_at(at)? as usize, u16_at(at + 2)?);
        if len < 4 {
            break;
        }
        match ty {
            UNIX_DIAG_PEER => d.peer = u32_at(at + 4).map(u64::from),
            UNIX_DIAG_SHUTDOWN => d.shut = *b.get(at + 4)?,
            UNIX_DIAG_RQLEN => d.rq = Some((u32_at(at + 4)?, u32_at(at + 8)?)),
            UNIX_DIAG_NAME => d.name = Some(b.get(at + 4..at + len)?.to_vec()),
            UNIX_DIAG_VFS => d.vfs = Some((u32_at(at + 4)?, u32_at(at + 8)?)),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Some(d)
}

/// " (NETLINK_ROUTE)" and the like, from /proc/PID/net/netlink.
fn netlink_protocol(pid: i32, ino: u64) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
    let proto = text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(9).and_then(|i| i.parse::<u64>().ok()) == Some(ino)).then(|| f.get(1)?.parse::<u32>().ok())?
    });
    match proto {
        Some(0) => " (NETLINK_ROUTE)".into(),
        Some(9) => " (NETLINK_AUDIT)".into(),
        Some(15) => " (NETLINK_KOBJECT_UEVENT)".into(),
        Some(16) => " (NETLINK_GENERIC)".into(),
        Some(p) => format!(" (protocol {p})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses() {
        assert_eq!(inet_addr("0100007F:1F99").unwrap(), "127.0.0.1:8089");
        assert_eq!(inet_addr("00000000000000000000000001000000:0016").unwrap(), "[::1]:22");
    }

    #[test]
    fn our_own_sockets_and_pipes() {
        let me = std::process::id() as i32;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let d = socket(
            me,
            l.as_raw_fd(),
            &fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap().to_string_lossy(),
        );
        assert_eq!(d, format!("a TCP socket listening on 127.0.0.1:{port}"));
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let link = fs::read_link(format!("/proc/self/fd/{}", a.as_raw_fd())).unwrap();
        let d = socket(me, a.as_raw_fd(), &link.to_string_lossy());
        assert_eq!(d, format!("a unix stream socket connected to itself (fd {})", b.as_raw_fd()));
        let (r, w) = nix::unistd::pipe().unwrap();
        let link = fs::read_link(format!("/proc/self/fd/{}", r.as_raw_fd())).unwrap();
        let d = pipe(me, r.as_raw_fd(), &link.to_string_lossy(), libc::O_RDONLY as u32);
        assert_eq!(d, format!("a pipe's read end, its write end held by itself (fd {})", w.as_raw_fd()));
        drop(w);
        assert_eq!(pipe(me, r.as_raw_fd(), &link.to_string_lossy(), 0), "a pipe's read end, its write end closed");
    }
}
