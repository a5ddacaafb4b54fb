//! UNIXPAIRS: connected pairs of unnamed unix sockets (socketpair(2): stream, datagram or
//! seqpacket) whose two ends are both held inside the checkpoint, by one process or by
//! several of the tree (a parent and its worker, libevent's signal pair, Python's duplex
//! multiprocessing.Pipe). Each pair is listed once, with what is queued for reading at each end,
//! message by message, and each end's buffer sizes; the fds are FILES records of kind
//! KIND_UNIXPAIR naming their socket's inode. The queues are copied without being consumed:
//! an end is taken into crs (pidfd_getfd) and peeked at with SO_PEEK_OFF, whose old value is
//! put back. A restore makes each pair in the restorer before the processes exist, refills
//! both queues, and every process inherits the pair and dups its ends to its fds.
//! A connection to a listening socket the checkpoint holds is such a pair too (UNIXCONNS),
//! and so is a stream or seqpacket socket whose peer was closed (the peer's inode is 0: a
//! restore closes that end once the queue is filled, and reads see end of file after it).
//! Refused: a message carrying fds or credentials (SCM_RIGHTS in flight), an end shut down,
//! another named socket, a pair with an end held outside the checkpoint.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct End {
    pub ino: u64,
    /// What a read at this end would return, message by message (one chunk for a stream).
    pub queued: Vec<Vec<u8>>,
    pub sndbuf: u32,
    pub rcvbuf: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pair {
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub ty: u32,
    pub ends: [End; 2],
}

/// The most bytes one end's queue may hold in an image.
const MAX_QUEUE: usize = 64 << 20;

fn sys(call: &str, what: &str) -> Error {
    Error::sys(call, what, Errno::last())
}

fn getsockopt_int(fd: RawFd, opt: i32, what: &str) -> Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into `v` and its size into `len`.
    if unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len) } != 0 {
        return Err(sys("getsockopt", what));
    }
    Ok(v)
}

fn setsockopt_int(fd: RawFd, opt: i32, v: i32, what: &str) -> Result<()> {
    // SAFETY: setsockopt reads one int from `v`.
    if unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&v as *const libc::c_int).cast(), 4) } != 0 {
        return Err(sys("setsockopt", what));
    }
    Ok(())
}

/// The type and queue of the socket end `fd` of frozen process `pid` holds, copied without
/// consuming anything.
pub fn collect_end(pid: i32, fd: i32, ino: u64) -> Result<(u32, End)> {
    let what = format!("socket:[{ino}] (fd {fd} of pid {pid})");
    let ours = crate::ptrace::procfs::getfd(pid, fd, &what)?;
    let s = ours.as_raw_fd();
    let ty = getsockopt_int(s, libc::SO_TYPE, &what)? as u32;
    let sndbuf = getsockopt_int(s, libc::SO_SNDBUF, &what)? as u32;
    let rcvbuf = getsockopt_int(s, libc::SO_RCVBUF, &what)? as u32;
    let old_off = getsockopt_int(s, libc::SO_PEEK_OFF, &what)?;
    setsockopt_int(s, libc::SO_PEEK_OFF, 0, &what)?;
    let peeked = peek_all(s, ty, &what);
    // The process's own peek offset back, whatever happened.
    let back = setsockopt_int(s, libc::SO_PEEK_OFF, old_off, &what);
    let queued = peeked?;
    back?;
    // Half the kernel's doubled value: what setsockopt was (or would be) given.
    Ok((ty, End { ino, queued, sndbuf: sndbuf / 2, rcvbuf: rcvbuf / 2 }))
}

/// Closes the fds a peek at a message carrying SCM_RIGHTS gave us (the kernel installs them
/// even for MSG_PEEK): copies of the sender's files that crs must not keep open.
fn close_passed(msg: &libc::msghdr) {
    // SAFETY: `msg` is the header recvmsg filled: its control buffer and length are ours and
    // hold whole cmsg headers as the kernel wrote them; the CMSG macros stay within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const i32;
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<i32>();
                for i in 0..n {
                    libc::close(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}

/// Every message queued at socket `s` (its peek offset at 0), without consuming any.
fn peek_all(s: RawFd, ty: u32, what: &str) -> Result<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut ctl = [0u8; 256];
    loop {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctl.as_mut_ptr().cast();
        msg.msg_controllen = ctl.len();
        // SAFETY: recvmsg writes at most the buffers' lengths into them.
        let n = unsafe { libc::recvmsg(s, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            match Errno::last() {
                Errno::EAGAIN => return Ok(out),
                e => return Err(Error::sys("recvmsg(MSG_PEEK)", what, e)),
            }
        }
        if msg.msg_controllen > 0 || msg.msg_flags & libc::MSG_CTRUNC != 0 {
            close_passed(&msg);
            return Err(Error::Refused(format!(
                "{what} has a message carrying fds or credentials queued (SCM_RIGHTS), which crs does not restore"
            )));
        }
        let n = n as usize;
        if n == 0 {
            if ty == libc::SOCK_STREAM as u32 {
                return Ok(out); // end of file: the other end shut down (refused elsewhere)
            }
            return Err(Error::Refused(format!("{what} has an empty message queued, which crs does not restore")));
        }
        // A datagram larger than the buffer: peek it whole.
        if msg.msg_flags & libc::MSG_TRUNC != 0 && buf.len() < MAX_QUEUE {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        total += n;
        if total > MAX_QUEUE {
            return Err(Error::Refused(format!("{what} has more than {MAX_QUEUE} bytes queued")));
        }
        if ty == libc::SOCK_STREAM as u32 && !out.is_empty() {
            out[0].extend_from_slice(&buf[..n]);
        } else {
            out.push(buf[..n].to_vec());
        }
    }
}

/// Makes pair `p` here, for the processes created after to inherit: a socketpair of its type,
/// each end's queue filled through the other end, its buffer sizes set. Returns the two ends,
/// close-on-exec, in the order of `p.ends`.
pub fn create_here(p: &Pair) -> Result<[OwnedFd; 2]> {
    let what = format!("socket pair [{}, {}]", p.ends[0].ino, p.ends[1].ino);
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two fds into `fds`.
    if unsafe { libc::socketpair(libc::AF_UNIX, p.ty as i32 | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(sys("socketpair", &what));
    }
    // SAFETY: both fds were just made and are ours alone.
    let ends = unsafe { [OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])] };
    fill(p, ends, &what)
}

/// Makes the connection `p` was again: a socket of its type connected to listener `l`
/// (already made here, at `lfd`), and the end `l` accepts, which the image knew as socket
/// `accepted`; then both queues filled, as a socketpair's. Returns the two ends in the order
/// of `p.ends`.
pub fn connect_here(p: &Pair, accepted: u64, l: &Listening, lfd: RawFd) -> Result<[OwnedFd; 2]> {
    let what =
        format!("connection [{}, {}] to {}", p.ends[0].ino, p.ends[1].ino, crate::text::printable(&name_of(&l.name)));
    let client = connect_to(l, &what)?;
    // SAFETY: accept4 takes the listener's fd and no address buffers; the fd is owned below.
    let raw = unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if raw < 0 {
        return Err(sys("accept4", &what));
    }
    // SAFETY: just accepted, ours alone.
    let server = unsafe { OwnedFd::from_raw_fd(raw) };
    let ends = if p.ends[0].ino == accepted { [server, client] } else { [client, server] };
    fill(p, ends, &what)
}

/// Makes waiting connection `c` again: a socket connected to listener `l`, left for the
/// processes to accept. Returns the connecting end.
pub fn wait_here(c: &Conn, l: &Listening) -> Result<OwnedFd> {
    let what = format!("connection {} waiting on {}", c.ino, crate::text::printable(&name_of(&l.name)));
    let fd = connect_to(l, &what)?;
    if c.rcvbuf > 0 {
        let _ = setsockopt_int(fd.as_raw_fd(), libc::SO_RCVBUF, c.rcvbuf as i32, &what);
    }
    if c.sndbuf > 0 {
        let _ = setsockopt_int(fd.as_raw_fd(), libc::SO_SNDBUF, c.sndbuf as i32, &what);
    }
    Ok(fd)
}

/// A socket of `l`'s type connected to `l`'s name (without waiting: `l`'s backlog has room
/// for every connection the image had waiting).
fn connect_to(l: &Listening, what: &str) -> Result<OwnedFd> {
    let flags = l.ty as i32 | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socket takes integers; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if raw < 0 {
        return Err(sys("socket", what));
    }
    // SAFETY: just made, ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let (a, len) = sockaddr(&l.name, what)?;
    // SAFETY: connect reads `len` bytes of a live sockaddr_un.
    if unsafe { libc::connect(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) } != 0 {
        return Err(sys("connect", what));
    }
    // Blocking again, as sockets are made (the process's fd gets its own flags later).
    // SAFETY: fcntl takes integers.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_RDWR) } != 0 {
        return Err(sys("fcntl(F_SETFL)", what));
    }
    Ok(fd)
}

/// Fills both queues of pair `p`, made as `ends`, and sets each end's buffer sizes.
fn fill(p: &Pair, ends: [OwnedFd; 2], what: &str) -> Result<[OwnedFd; 2]> {
    let what = what.to_string();
    for (i, e) in p.ends.iter().enumerate() {
        let (me, other) = (ends[i].as_raw_fd(), ends[1 - i].as_raw_fd());
        // Room for the queue in the writer's buffer while it is refilled (root may go past
        // the system's limit), then each end's own sizes.
        let need: usize = e.queued.iter().map(|m| m.len() + 512).sum();
        if need > 0 {
            let _ = setsockopt_int(other, libc::SO_SNDBUFFORCE, (need * 2).min(i32::MAX as usize) as i32, &what);
        }
        for m in &e.queued {
            // SAFETY: send reads m.len() bytes from a live slice.
            let n = unsafe { libc::send(other, m.as_ptr().cast(), m.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n != m.len() as isize {
                let why = if n < 0 { Errno::last().desc().to_string() } else { format!("{n} bytes taken") };
                return Err(Error::not_here(
                    format!("{what}: its queued messages do not fit here"),
                    format!("{} of {} bytes: {why} (net.unix.max_dgram_qlen?)", m.len(), e.queued.len()),
                ));
            }
        }
        if e.rcvbuf > 0 {
            let _ = setsockopt_int(me, libc::SO_RCVBUF, e.rcvbuf as i32, &what);
        }
    }
    for (i, e) in p.ends.iter().enumerate() {
        if e.sndbuf > 0 {
            let _ = setsockopt_int(ends[i].as_raw_fd(), libc::SO_SNDBUF, e.sndbuf as i32, &what);
        }
    }
    Ok(ends)
}

pub fn encode(all: &[Pair]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for p in all {
        e.u32(p.ty);
        for end in &p.ends {
            e.u64(end.ino).u32(end.sndbuf).u32(end.rcvbuf);
            e.u32(end.queued.len() as u32);
            for m in &end.queued {
                // A stream's queue may pass the 1 MiB of a byte field: in pieces.
                let pieces: Vec<&[u8]> = m.chunks(1 << 20).collect();
                e.u32(pieces.len() as u32);
                for c in pieces {
                    e.bytes(c);
                }
            }
        }
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Pair>> {
    let mut d = Dec::new(b, at, "UNIXPAIRS");
    let n = d.count(4 + 2 * 20)?;
    let mut out: Vec<Pair> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let mut p = Pair { ty: d.u32()?, ..Default::default() };
        for end in p.ends.iter_mut() {
            end.ino = d.u64()?;
            end.sndbuf = d.u32()?;
            end.rcvbuf = d.u32()?;
            let m = d.count(4)?;
            for _ in 0..m {
                let k = d.count(4)?;
                let mut msg = Vec::new();
                for _ in 0..k {
                    msg.extend_from_slice(d.bytes()?);
                }
                end.queued.push(msg);
            }
        }
        let types = [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].map(|t| t as u32);
        // Inode 0: a peer closed before the checkpoint (nothing queued at it).
        let inos: Vec<u64> = out.iter().flat_map(|q| q.ends.iter().map(|e| e.ino)).filter(|&i| i != 0).collect();
        let closed = p.ends[1].ino == 0 && p.ends[1].queued.is_empty() && p.ty != libc::SOCK_DGRAM as u32;
        if !types.contains(&p.ty)
            || p.ends[0].ino == 0
            || (p.ends[1].ino == 0 && !closed)
            || p.ends[0].ino == p.ends[1].ino
            || p.ends.iter().any(|e| inos.contains(&e.ino))
        {
            return Err(d.bad_at(rec, format!("socket pair of type {} [{}, {}]", p.ty, p.ends[0].ino, p.ends[1].ino)));
        }
        out.push(p);
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[Pair]) -> Vec<String> {
    let kind = |t: u32| match t as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        _ => "seqpacket",
    };
    all.iter()
        .map(|p| {
            let q = |e: &End| {
                if e.ino == 0 {
                    return "closed".to_string();
                }
                format!(
                    "{} ({} messages, {} bytes queued)",
                    e.ino,
                    e.queued.len(),
                    e.queued.iter().map(Vec::len).sum::<usize>()
                )
            };
            format!("unixpair:  {} [{}, {}]", kind(p.ty), q(&p.ends[0]), q(&p.ends[1]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_copied_without_consuming_and_made_again() {
        for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
            let mut fds = [0; 2];
            // SAFETY: socketpair writes two fds.
            assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) }, 0);
            // SAFETY: ours alone.
            let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            for m in [&b"one"[..], b"two!"] {
                assert_eq!(nix::unistd::write(&b, m).unwrap(), m.len());
            }
            let me = std::process::id() as i32;
            let (t, end) = collect_end(me, a.as_raw_fd(), 1).unwrap();
            assert_eq!(t, ty as u32);
            let want: Vec<Vec<u8>> = if ty == libc::SOCK_STREAM {
                vec![b"onetwo!".to_vec()]
            } else {
                vec![b"one".to_vec(), b"two!".to_vec()]
            };
            assert_eq!(end.queued, want);
            // Still there for the process.
            let mut buf = [0u8; 16];
            assert_eq!(nix::unistd::read(&a, &mut buf).unwrap(), if ty == libc::SOCK_STREAM { 7 } else { 3 });
            let p = Pair { ty: ty as u32, ends: [End { ino: 1, ..end }, End { ino: 2, ..Default::default() }] };
            assert_eq!(decode(&encode(std::slice::from_ref(&p)), 0).unwrap(), vec![p.clone()]);
            let [x, _y] = create_here(&p).unwrap();
            assert_eq!(nix::unistd::read(&x, &mut buf).unwrap(), if ty == libc::SOCK_STREAM { 7 } else { 3 });
        }
    }
}

/// A named unix socket listening (stream or seqpacket), with no connection waiting, whose
/// every holder is in the checkpoint (the listening socket of a pre-forked server's parent and
/// workers). Its fds are KIND_UNIXLISTEN records naming its inode. A restore binds a socket
/// of its type to the same name again (a path left behind by the checkpointed process, a
/// socket file nobody listens on, is removed first) and listens with the same backlog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    pub ino: u64,
    pub ty: u32,
    /// sun_path as bound: a path, or an abstract name beginning with a NUL byte.
    pub name: Vec<u8>,
    pub backlog: u32,
    /// A path's socket file: its permission bits, owner and group (version 9), which the
    /// restore gives the file it binds (a server's clients of other users must be able to
    /// connect: postgres makes it 0777).
    pub file: Option<(u32, u32, u32)>,
}

/// UNIXCONNS: a connection to a listener the checkpoint holds (a pre-forked server's
/// clients, when they are in the checkpoint too). Accepted: its pair is in UNIXPAIRS, and a
/// restore makes it by connecting to the listener and accepting, so each end has its name
/// (getsockname, getpeername) back. Waiting: not accepted yet, nothing sent; a restore
/// connects again, and leaves it for the processes to accept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    /// The listener's inode (UNIXLISTEN).
    pub listener: u64,
    /// Accepted: the accepted end's inode. Waiting: the connecting end's.
    pub ino: u64,
    pub accepted: bool,
    /// A waiting connection's connecting end's buffer sizes (an accepted one's are its pair's).
    pub sndbuf: u32,
    pub rcvbuf: u32,
}

pub fn encode_conns(all: &[Conn]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for c in all {
        e.u64(c.listener).u64(c.ino).u8(c.accepted as u8).u32(c.sndbuf).u32(c.rcvbuf);
    }
    e.into_bytes()
}

pub fn decode_conns(b: &[u8], at: u64) -> CrfResult<Vec<Conn>> {
    let mut d = Dec::new(b, at, "UNIXCONNS");
    let n = d.count(25)?;
    let mut out: Vec<Conn> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let (listener, ino, accepted) = (d.u64()?, d.u64()?, d.u8()?);
        let c = Conn { listener, ino, accepted: accepted == 1, sndbuf: d.u32()?, rcvbuf: d.u32()? };
        if accepted > 1 || out.iter().any(|o| o.ino == c.ino) {
            return Err(d.bad_at(rec, format!("connection {} to listener {}", c.ino, c.listener)));
        }
        out.push(c);
    }
    d.finish()?;
    Ok(out)
}

pub fn describe_conns(all: &[Conn]) -> Vec<String> {
    all.iter()
        .map(|c| {
            let how = if c.accepted { "accepted as" } else { "waiting, from" };
            format!("unixconn:  to listener {}, {how} socket {}", c.listener, c.ino)
        })
        .collect()
}

fn name_of(n: &[u8]) -> String {
    match n.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(n.split(|&b| b == 0).next().unwrap_or_default()).into_owned(),
    }
}

/// The address of unix socket name `name` (sun_path as bound), and its length.
fn sockaddr(name: &[u8], what: &str) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid; the name is copied in below, bounds checked.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.is_empty() || name.len() > a.sun_path.len() {
        return Err(Error::Refused(format!("{what}: a name of {} bytes", name.len())));
    }
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    Ok((a, (std::mem::size_of::<libc::sa_family_t>() + name.len()) as libc::socklen_t))
}

/// A socket file whose owner and group are not among the image's first process's ids: given
/// them once a later process of the tree whose ids they are is read and checked
/// ([`Unowned::give`]), else named in a note ([`Unowned::note`]).
pub struct Unowned {
    /// The file (O_PATH), as it was bound.
    file: OwnedFd,
    uid: u32,
    gid: u32,
    /// Its owner and group now.
    now: (u32, u32),
    what: String,
}

impl Unowned {
    /// Gives the file its owner and group if they are among the ids of process `head`; false
    /// if they are not.
    pub fn give(&self, head: &crate::res::head::Header, notes: &mut Vec<String>) -> bool {
        if !theirs(head, self.uid, self.gid) {
            return false;
        }
        // SAFETY: fchownat with AT_EMPTY_PATH changes the inode our fd holds; the empty path
        // is a NUL-terminated string that lives across the call.
        if unsafe { libc::fchownat(self.file.as_raw_fd(), c"".as_ptr(), self.uid, self.gid, libc::AT_EMPTY_PATH) } != 0
        {
            notes.push(self.note());
        }
        true
    }

    pub fn note(&self) -> String {
        format!(
            "{}: its file is uid {}'s and gid {}'s here, not uid {}'s and gid {}'s (not ours to give)",
            self.what, self.now.0, self.now.1, self.uid, self.gid
        )
    }
}

/// Whether `uid` and `gid` are among the ids of process `head`.
fn theirs(head: &crate::res::head::Header, uid: u32, gid: u32) -> bool {
    head.uids.contains(&uid) && (head.gids.contains(&gid) || head.groups.contains(&gid))
}

/// Makes listener `l` here (the caller holds the image owner's file-system ids, for a path),
/// its socket file as it was (`head`: the image's first process; what cannot be so goes to
/// `notes`). A file of another owner than the first process's ids is returned, to be given
/// once a process it belongs to is known.
pub fn listen_here(
    l: &Listening,
    head: &crate::res::head::Header,
    notes: &mut Vec<String>,
) -> Result<(OwnedFd, Option<Unowned>)> {
    let what = format!("unix socket listening on {}", crate::text::printable(&name_of(&l.name)));
    // SAFETY: socket takes integers; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_UNIX, l.ty as i32 | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(sys("socket", &what));
    }
    // SAFETY: just made, ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let (a, len) = sockaddr(&l.name, &what)?;
    let bind = |a: &libc::sockaddr_un| {
        // SAFETY: bind reads `len` bytes of a live sockaddr_un.
        unsafe { libc::bind(fd.as_raw_fd(), (a as *const libc::sockaddr_un).cast(), len) }
    };
    if bind(&a) != 0 {
        let e = Errno::last();
        // A path the checkpointed process left behind: a socket file nobody listens on.
        let path = (l.name[0] != 0).then(|| {
            use std::os::unix::ffi::OsStrExt;
            let n = l.name.split(|&b| b == 0).next().unwrap_or_default();
            std::path::PathBuf::from(std::ffi::OsStr::from_bytes(n))
        });
        // (A listener of this network namespace is seen in /proc/net/unix, with who holds
        // it: connecting to it to find out would hand it a connection that closes at once.
        // One in another is found by connecting, which fails on a file nobody listens on.)
        let here = path.as_ref().and_then(|p| super::endpoints::unix_listener_holders(&p.to_string_lossy()));
        let stale = e == Errno::EADDRINUSE
            && here.is_none()
            && path.as_ref().is_some_and(|p| {
                use std::os::unix::fs::FileTypeExt;
                std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
                    && std::os::unix::net::UnixStream::connect(p)
                        .is_err_and(|e| e.raw_os_error() == Some(libc::ECONNREFUSED))
            });
        if !stale {
            let by = match here.as_deref() {
                Some("") | None => "is it in use?".to_string(),
                Some(h) => format!("{h} listens on it: stop it, or restore on another node"),
            };
            return Err(Error::Refused(format!("{what}: bind: {} ({by})", e.desc())));
        }
        if let Some(p) = &path {
            std::fs::remove_file(p).map_err(|e| Error::io(p.to_string_lossy().as_ref(), e))?;
        }
        if bind(&a) != 0 {
            return Err(sys("bind", &what));
        }
    }
    // SAFETY: listen takes integers.
    if unsafe { libc::listen(fd.as_raw_fd(), l.backlog as i32) } != 0 {
        return Err(sys("listen", &what));
    }
    let unowned = match l.file {
        Some(f) => file_as_it_was(l, f, head, &what, notes)?,
        None => None,
    };
    Ok((fd, unowned))
}

/// Gives the socket file of listener `l`, just bound, the permission bits it had (but the
/// special ones), and its owner and group if they differ and are among the ids of `head`'s
/// process (an image names no one else's); else returns it, for a later process's ids.
fn file_as_it_was(
    l: &Listening,
    (mode, uid, gid): (u32, u32, u32),
    head: &crate::res::head::Header,
    what: &str,
    notes: &mut Vec<String>,
) -> Result<Option<Unowned>> {
    let path = l.name.split(|&b| b == 0).next().unwrap_or_default();
    let c = std::ffi::CString::new(path).map_err(|_| Error::Refused(format!("{what}: a path with a NUL byte")))?;
    // The file itself, as a path (no symlink followed: one swapped in since would lead our
    // chmod elsewhere), and only if it is a socket.
    // SAFETY: open reads a NUL-terminated path that lives across the call.
    let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(sys("open (O_PATH)", what));
    }
    // SAFETY: just opened, ours alone.
    let file = unsafe { OwnedFd::from_raw_fd(raw) };
    let now = nix::sys::stat::fstat(&file).map_err(|e| Error::sys("fstat", what, e))?;
    if now.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Error::Refused(format!("{what}: its path no longer names a socket")));
    }
    let by_fd = std::ffi::CString::new(format!("/proc/self/fd/{raw}")).map_err(|_| Error::Proc("fd path".into()))?;
    // SAFETY: fchmodat reads a NUL-terminated path that lives across the call; it leads to
    // the inode our fd holds.
    if unsafe { libc::fchmodat(libc::AT_FDCWD, by_fd.as_ptr(), mode & 0o777, 0) } != 0 {
        return Err(sys("chmod", what));
    }
    if (now.st_uid, now.st_gid) == (uid, gid) {
        return Ok(None);
    }
    let u = Unowned { file, uid, gid, now: (now.st_uid, now.st_gid), what: what.to_string() };
    Ok((!u.give(head, notes)).then_some(u))
}

pub fn encode_listening(all: &[Listening]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for l in all {
        e.u64(l.ino).u32(l.ty).bytes(&l.name).u32(l.backlog);
    }
    // (Version 9: the socket files, after the listeners.)
    let files: Vec<(u64, (u32, u32, u32))> = all.iter().filter_map(|l| Some((l.ino, l.file?))).collect();
    if !files.is_empty() {
        e.u32(files.len() as u32);
        for (ino, (mode, uid, gid)) in files {
            e.u64(ino).u32(mode).u32(uid).u32(gid);
        }
    }
    e.into_bytes()
}

pub fn decode_listening(b: &[u8], at: u64) -> CrfResult<Vec<Listening>> {
    let mut d = Dec::new(b, at, "UNIXLISTEN");
    let n = d.count(20)?;
    let mut out: Vec<Listening> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let l = Listening { ino: d.u64()?, ty: d.u32()?, name: d.bytes()?.to_vec(), backlog: d.u32()?, file: None };
        let types = [libc::SOCK_STREAM as u32, libc::SOCK_SEQPACKET as u32];
        if !types.contains(&l.ty) || l.name.is_empty() || l.name.len() > 108 || out.iter().any(|o| o.ino == l.ino) {
            return Err(d.bad_at(rec, format!("listening socket {} of type {}", l.ino, l.ty)));
        }
        out.push(l);
    }
    // (Version 9: the socket files of paths, each once.)
    if d.remaining() > 0 {
        let m = d.count(20)?;
        for _ in 0..m {
            let rec = d.offset();
            let (ino, mode, uid, gid) = (d.u64()?, d.u32()?, d.u32()?, d.u32()?);
            let l = out.iter_mut().find(|l| l.ino == ino && l.file.is_none() && l.name.first() == Some(&b'/'));
            match l {
                Some(l) if mode <= 0o7777 => l.file = Some((mode, uid, gid)),
                _ => return Err(d.bad_at(rec, format!("the socket file of listener {ino}, mode {mode:o}"))),
            }
        }
    }
    d.finish()?;
    Ok(out)
}

pub fn describe_listening(all: &[Listening]) -> Vec<String> {
    all.iter()
        .map(|l| {
            let file = l.file.map_or(String::new(), |(m, u, g)| format!(", file mode {m:o} uid {u} gid {g}"));
            format!("listen:    unix socket {} on {}, backlog {}{file}", l.ino, name_of(&l.name), l.backlog)
        })
        .collect()
}
