//! TCPCONNS: established TCP connections (ckpt --tcp-established), taken and made again with
//! TCP_REPAIR, as CRIU does: per connection its addresses, both sequence numbers, both queues
//! (what was received and not read; what was written and not acknowledged, with how much of
//! it was not sent yet), the options the handshake agreed (MSS, window scaling, SACK,
//! timestamps, with the timestamp clock), the window, and the socket options that differ from
//! a fresh socket's. Their fds are FILES records of kind KIND_INET, like those of INETSOCKS.
//!
//! While the queues are read, and until the restored process runs (or the checkpointed one
//! runs on), no packet of the peer's may reach the connection: one the kernel would take after
//! the queues were read would be lost, and one reaching no socket would be answered with a
//! reset. So a checkpoint blocks them first with an nftables table of its own in the process's
//! network namespace (`Lock`), and puts each socket in repair mode, where it sends nothing and
//! closes silently. With ckpt --kill the table stays, its name in the image, and the
//! restore removes it once the connections are made again and out of repair mode; otherwise
//! the checkpoint takes the sockets out of repair mode and removes it.
//!
//! A restore makes each connection in the restorer, in repair mode: bound, its sequence
//! numbers set, "connected" without a packet, its options, timestamp and window set, the
//! received bytes put back in its receive queue, the sent ones in its send queue, then the
//! unsent ones sent as new data. It leaves repair mode when the processes are let run.
//! Buffer sizes come back as they were, fixed (SO_SNDBUF and SO_RCVBUF set: the kernel's
//! autotuning is off for the connection from then on).
//! Root only (TCP_REPAIR takes CAP_NET_ADMIN); root restores them for its own images only
//! (a user's image could forge any connection from any port).
//!
//! The connections waiting in a listener's queue are taken here too (`Frozen::adopt`: crs
//! accepts them, before the block, and reads them with the others) and go back in their
//! listener's queue through res::tcpqueue: at the release of a restore (once the service
//! address is here), or of a checkpoint whose processes run on or that failed.

use super::inet::{self, Opt};
use super::tcpqueue::{self, Queued};
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;
pub const TCPI_OPT_ECN: u8 = 8;
pub const TCPI_OPT_USEC_TS: u8 = 64;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
/// The most bytes of one queue, and of all queues, in an image (whose TCPCONNS section holds
/// them all, within crf::MAX_SECTION).
const MAX_QUEUE: usize = 16 << 20;
const MAX_QUEUES: usize = 56 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub ino: u64,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Local and peer addresses, as getsockname and getpeername give them.
    pub local: Vec<u8>,
    pub peer: Vec<u8>,
    /// The sequence number after the last byte written (write_seq) and after the last byte
    /// received (rcv_nxt).
    pub snd_seq: u32,
    pub rcv_seq: u32,
    /// The send queue: written, not acknowledged; its last `unsent` bytes not sent yet.
    pub sent: Vec<u8>,
    pub unsent: u32,
    /// The receive queue: received, not read.
    pub received: Vec<u8>,
    pub mss: u32,
    /// TCP_INFO's tcpi_options (TCPI_OPT_TIMESTAMPS 1, SACK 2, WSCALE 4).
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// The connection's timestamp clock (TCP_TIMESTAMP).
    pub timestamp: u32,
    /// TCP_REPAIR_WINDOW: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
    /// SO_SNDBUF and SO_RCVBUF as getsockopt gives them (the kernel's doubled values).
    pub sndbuf: u32,
    pub rcvbuf: u32,
    pub opts: Vec<Opt>,
    /// Its TCP state, when it was closed in one direction or both (FIN_WAIT1, FIN_WAIT2,
    /// CLOSE_WAIT, LAST_ACK, CLOSING; 0 when established): `snd_seq` and `rcv_seq` leave out
    /// the FINs, which the restore sends again (shutdown) and puts back (see
    /// [`Repaired::release`]).
    pub state: u8,
}

/// Whether a connection in TCP state `state` had its peer's FIN, and had sent its own.
fn fins(state: u8) -> (bool, bool) {
    use inet::{TCP_CLOSE_WAIT, TCP_CLOSING, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK};
    (
        matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING),
        matches!(state, TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING),
    )
}

/// The connections of an image, and the nftables table that blocks their packets, left by
/// ckpt --kill for the restore to remove (empty when there is none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conns {
    pub lock: String,
    pub conns: Vec<Conn>,
}

fn sys(call: &str, what: &str) -> Error {
    Error::sys(call, what, Errno::last())
}

fn set(s: RawFd, name: i32, v: i32, what: &str) -> Result<()> {
    inet::set_int(s, libc::IPPROTO_TCP, name, v, what)
}

fn set_bytes(s: RawFd, name: i32, v: &[u8], what: &str, call: &str) -> Result<()> {
    // SAFETY: setsockopt reads v.len() bytes from a live buffer.
    if unsafe { libc::setsockopt(s, libc::IPPROTO_TCP, name, v.as_ptr().cast(), v.len() as libc::socklen_t) } != 0 {
        return Err(sys(call, what));
    }
    Ok(())
}

fn ioctl_int(s: RawFd, req: libc::c_ulong, what: &str, call: &str) -> Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: these ioctls write one int into `n`.
    if unsafe { libc::ioctl(s, req, &mut n) } != 0 {
        return Err(sys(call, what));
    }
    Ok(n.max(0) as u32)
}

/// "TCP connection 10.0.0.1:6379 -> 10.0.0.9:51234".
pub fn name(local: &[u8], peer: &[u8]) -> String {
    let a = |b: &[u8]| inet::addr_of(b).map_or_else(|| "?".into(), |a| a.to_string());
    format!("TCP connection {} -> {}", a(local), a(peer))
}

/// Puts socket `s` in repair mode (or out of it).
fn repair(s: RawFd, on: bool, what: &str) -> Result<()> {
    match set(s, TCP_REPAIR, on as i32, what) {
        Err(Error::Sys { errno: Errno::EPERM, .. }) => Err(Error::Permission(format!(
            "{what}: TCP_REPAIR takes CAP_NET_ADMIN: established connections are root's to checkpoint and restore"
        ))),
        r => r,
    }
}

/// The first `len` bytes of queue `q` of socket `s` (in repair mode), without taking them.
fn peek_queue(s: RawFd, q: i32, len: u32, what: &str) -> Result<(u32, Vec<u8>)> {
    set(s, TCP_REPAIR_QUEUE, q, what)?;
    let seq = inet::int_opt(s, libc::IPPROTO_TCP, TCP_QUEUE_SEQ, what)? as u32;
    if len as usize > MAX_QUEUE {
        return Err(Error::Refused(format!("{what} has more than {MAX_QUEUE} bytes queued")));
    }
    let mut buf = vec![0u8; len as usize];
    if len > 0 {
        // SAFETY: recv writes at most buf.len() bytes into `buf`.
        let n = unsafe { libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n != len as isize {
            return Err(Error::Proc(format!("{what}: peeking at its queue gave {n} bytes of {len}")));
        }
    }
    Ok((seq, buf))
}

/// Puts socket `s` in repair mode.
pub fn repair_on(s: RawFd, what: &str) -> Result<()> {
    repair(s, true, what)
}

/// Connection `ino`, whose socket is `s` (crs's copy, already in repair mode, its packets
/// blocked).
pub fn collect(s: RawFd, ino: u64) -> Result<Conn> {
    collect_in(s, ino, false).map(|c| c.0)
}

/// Connection `ino` taken from a listener's queue, whose socket is `s` (as for `collect`),
/// and whether its peer had closed its side (its FIN counted in `rcv_seq`). Nothing accepted
/// it, so nothing wrote to it.
pub fn collect_queued(s: RawFd, ino: u64) -> Result<(Conn, bool)> {
    let (c, fin) = collect_in(s, ino, true)?;
    if !c.sent.is_empty() {
        let what = name(&c.local, &c.peer);
        return Err(Error::Proc(format!("{what} has bytes to send, though it waited to be accepted")));
    }
    Ok((c, fin))
}

fn collect_in(s: RawFd, ino: u64, queued: bool) -> Result<(Conn, bool)> {
    let what0 = format!("socket:[{ino}]");
    let local = inet::name_of(s, false).ok_or_else(|| sys("getsockname", &what0))?;
    let peer = inet::name_of(s, true).ok_or_else(|| sys("getpeername", &what0))?;
    let what = name(&local, &peer);
    let info =
        inet::getsockopt(s, libc::IPPROTO_TCP, libc::TCP_INFO).ok_or_else(|| sys("getsockopt(TCP_INFO)", &what))?;
    let st = info.first().copied().unwrap_or(0);
    let fin = queued && st == inet::TCP_CLOSE_WAIT;
    let carried = if queued { fin || st == inet::TCP_ESTABLISHED } else { inet::is_connection_state(st) };
    if !carried || info.len() < 8 {
        return Err(Error::Proc(format!("{what} is no longer established")));
    }
    // Closed one way or both (not waiting: those are ESTABLISHED or CLOSE_WAIT, `fin`).
    let (fin_in, fin_out) = if queued { (false, false) } else { fins(st) };
    // Its own FIN not acknowledged yet: it is in the send queue's count (and among the unsent
    // bytes while it waits behind them), though not among its bytes.
    let fin_queued = fin_out && st != inet::TCP_FIN_WAIT2;
    let family = inet::int_opt(s, libc::SOL_SOCKET, libc::SO_DOMAIN, &what)? as u16;
    let outq = ioctl_int(s, libc::TIOCOUTQ, &what, "ioctl(SIOCOUTQ)")?.saturating_sub(fin_queued as u32);
    let unsent = ioctl_int(s, SIOCOUTQNSD, &what, "ioctl(SIOCOUTQNSD)")?.saturating_sub(fin_queued as u32);
    let inq = ioctl_int(s, libc::FIONREAD, &what, "ioctl(SIOCINQ)")?;
    let (rcv_seq, received) = peek_queue(s, TCP_RECV_QUEUE, inq, &what)?;
    let (snd_seq, sent) = peek_queue(s, TCP_SEND_QUEUE, outq, &what)?;
    // (The sequence numbers after each FIN: taken back, for the restore to send them again.)
    let (rcv_seq, snd_seq) = (rcv_seq.wrapping_sub(fin_in as u32), snd_seq.wrapping_sub(fin_out as u32));
    set(s, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, &what)?;
    let int = |level, name| inet::int_opt(s, level, name, &what);
    let mut window = [0u8; 20];
    let mut len = window.len() as libc::socklen_t;
    // SAFETY: getsockopt writes exactly 20 bytes (the length it insists on) into `window`.
    let r = unsafe { libc::getsockopt(s, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, window.as_mut_ptr().cast(), &mut len) };
    if r != 0 || len != 20 {
        return Err(sys("getsockopt(TCP_REPAIR_WINDOW)", &what));
    }
    let w = |i: usize| u32::from_ne_bytes([window[4 * i], window[4 * i + 1], window[4 * i + 2], window[4 * i + 3]]);
    // Where the window was last offered from (rcv_wup) may count the peer's FIN: no further
    // than what the restore receives before it (the kernel refuses a window past rcv_nxt).
    let after = |a: u32, b: u32| (a.wrapping_sub(b) as i32) > 0;
    let rcv_wup = if after(w(4), rcv_seq) { rcv_seq } else { w(4) };
    let conn = Conn {
        ino,
        family,
        snd_seq,
        rcv_seq,
        unsent: unsent.min(sent.len() as u32),
        sent,
        received,
        mss: int(libc::IPPROTO_TCP, libc::TCP_MAXSEG)? as u32,
        options: info[5],
        snd_wscale: info[6] & 0xf,
        rcv_wscale: info[6] >> 4,
        timestamp: int(libc::IPPROTO_TCP, TCP_TIMESTAMP)? as u32,
        window: [w(0), w(1), w(2), w(3), rcv_wup],
        sndbuf: int(libc::SOL_SOCKET, libc::SO_SNDBUF)? as u32,
        rcvbuf: int(libc::SOL_SOCKET, libc::SO_RCVBUF)? as u32,
        opts: inet::options(s, family, libc::SOCK_STREAM as u32, true, &what)?,
        local,
        peer,
        state: if fin_in || fin_out { st } else { 0 },
    };
    Ok((conn, fin))
}

/// Makes connection `c` here, in repair mode (it leaves it in [`Repaired::release`]).
pub fn create_here(c: &Conn, free: Option<std::net::IpAddr>) -> Result<OwnedFd> {
    let what = name(&c.local, &c.peer);
    let fd = inet::fresh(c.family, libc::SOCK_STREAM as u32, &what)?;
    let s = fd.as_raw_fd();
    repair(s, true, &what)?;
    // SO_REUSEADDR after repair mode, which binds whatever holds the port (the listener).
    inet::set_options(s, &c.opts, &[(libc::SOL_SOCKET, libc::SO_REUSEADDR)], &what)?;
    // Room for both queues, whatever the fresh socket's buffers.
    let force = |name, v: u32, need: usize| {
        let v = (v / 2).max(need as u32).min(i32::MAX as u32) as i32;
        inet::set_int(s, libc::SOL_SOCKET, name, v, &what)
    };
    force(libc::SO_SNDBUFFORCE, c.sndbuf, c.sent.len())?;
    force(libc::SO_RCVBUFFORCE, c.rcvbuf, c.received.len())?;
    // From an address this node does not have yet, the route to the peer takes
    // IP_TRANSPARENT, for the connect only.
    let transparent = inet::is_free(&c.local, free);
    let (tlevel, tname) = match c.family as i32 {
        libc::AF_INET6 => (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT),
        _ => (libc::IPPROTO_IP, libc::IP_TRANSPARENT),
    };
    if transparent {
        inet::set_int(s, tlevel, tname, 1, &what)?;
    }
    inet::bind(s, &c.local, free, &what)?;
    set(s, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, &what)?;
    set(s, TCP_QUEUE_SEQ, c.rcv_seq.wrapping_sub(c.received.len() as u32) as i32, &what)?;
    set(s, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, &what)?;
    set(s, TCP_QUEUE_SEQ, c.snd_seq.wrapping_sub(c.sent.len() as u32) as i32, &what)?;
    // SAFETY: connect reads c.peer.len() bytes of a live sockaddr; in repair mode it sends
    // nothing and makes the socket established.
    if unsafe { libc::connect(s, c.peer.as_ptr().cast(), c.peer.len() as libc::socklen_t) } != 0 {
        return Err(match Errno::last() {
            Errno::EADDRNOTAVAIL | Errno::EADDRINUSE => Error::Refused(format!(
                "{what} exists here already (the checkpointed process, still running, holds it): a connection can be in one place only"
            )),
            e => Error::sys("connect (TCP_REPAIR)", &what, e),
        });
    }
    if transparent {
        inet::set_int(s, tlevel, tname, 0, &what)?;
    }
    let mut opts: Vec<(u32, u32)> = vec![(TCPOPT_MAXSEG, c.mss)];
    if c.options & TCPI_OPT_SACK != 0 {
        opts.push((TCPOPT_SACK_PERM, 0));
    }
    if c.options & TCPI_OPT_WSCALE != 0 {
        opts.push((TCPOPT_WINDOW, c.snd_wscale as u32 | (c.rcv_wscale as u32) << 16));
    }
    if c.options & TCPI_OPT_TIMESTAMPS != 0 {
        opts.push((TCPOPT_TIMESTAMP, 0));
    }
    let bytes: Vec<u8> = opts.iter().flat_map(|(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes())).collect();
    set_bytes(s, TCP_REPAIR_OPTIONS, &bytes, &what, "setsockopt(TCP_REPAIR_OPTIONS)")?;
    if c.options & TCPI_OPT_TIMESTAMPS != 0 {
        set(s, TCP_TIMESTAMP, c.timestamp as i32, &what)?;
    }
    set(s, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, &what)?;
    send_all(s, &c.received, &what)?;
    set(s, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, &what)?;
    let sent = c.sent.len() - c.unsent as usize;
    send_all(s, &c.sent[..sent], &what)?;
    // The window once the queues are in (the kernel checks it against what was received).
    let w: Vec<u8> = c.window.iter().flat_map(|v| v.to_ne_bytes()).collect();
    set_bytes(s, TCP_REPAIR_WINDOW, &w, &what, "setsockopt(TCP_REPAIR_WINDOW)")?;
    if c.unsent > 0 {
        // Never sent: sent now as new data (its peer's answers are blocked until the release).
        repair(s, false, &what)?;
        send_all(s, &c.sent[sent..], &what)?;
        repair(s, true, &what)?;
    }
    set(s, TCP_REPAIR_QUEUE, TCP_NO_QUEUE, &what)?;
    Ok(fd)
}

fn send_all(s: RawFd, mut data: &[u8], what: &str) -> Result<()> {
    while !data.is_empty() {
        let chunk = data.len().min(1 << 20);
        // SAFETY: send reads `chunk` bytes of a live buffer.
        let n = unsafe { libc::send(s, data.as_ptr().cast(), chunk, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n <= 0 {
            return Err(Error::sys("send (TCP_REPAIR)", format!("{what}, {} bytes left", data.len()), Errno::last()));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// A connection a restore made: its socket, SO_REUSEADDR as it was, its name, and what its
/// FINs need again at the release (closed one way or both).
struct Made {
    fd: OwnedFd,
    reuse: i32,
    what: String,
    closing: Option<Closing>,
}

/// A connection closed one way or both: whether it shuts its side down again, and the FIN of
/// its peer's it gets again, if any: a segment from the peer (`from`) at the sequence number
/// the FIN had, acknowledging where the send queue begins (no more than the peer had).
struct Closing {
    shut: bool,
    fin: Option<(std::net::SocketAddr, std::net::SocketAddr, u32, u32, u16)>,
}

/// The connections a restore made, in repair mode, until the processes are let run, and
/// those it puts back in their listeners' queues then.
#[derive(Default)]
pub struct Repaired {
    socks: Vec<Made>,
    /// Those that waited, their program being attached meanwhile (on a thread of its own: it
    /// takes milliseconds the restore goes on with).
    queued: Option<std::thread::JoinHandle<Result<tcpqueue::PutBack>>>,
    /// The checkpoint's table (the image names it), still here after `ckpt -k` on this node.
    lock: String,
    /// Ours: their packets blocked here from before the sockets exist until the release, or
    /// until this is dropped (a failed restore).
    guard: Option<Lock>,
}

impl Repaired {
    pub fn new(lock: &str) -> Repaired {
        Repaired { lock: lock.to_string(), ..Default::default() }
    }

    /// Blocks the packets of `conns` and `queued` in our network namespace until the
    /// release. On another node (a migration, its address moved here before the release), a
    /// peer's packet would otherwise reach a socket still in repair mode, half made, and the
    /// connection stall, or reach the listener of one not back in its queue yet, which would
    /// reset it.
    pub fn block(&mut self, conns: &[Conn], queued: &[Queued]) -> Result<()> {
        let ends: Vec<(Vec<u8>, Vec<u8>)> =
            conns.iter().chain(queued.iter().map(|q| &q.conn)).map(|c| (c.local.clone(), c.peer.clone())).collect();
        let t = std::time::Instant::now();
        self.guard = Some(Lock::new(std::process::id() as i32, &ends, false)?);
        log::debug!(
            "{} connections and {} waiting: blocked in {:.1} ms",
            conns.len(),
            queued.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
        if !queued.is_empty() {
            let queued = queued.to_vec();
            self.queued = Some(std::thread::spawn(move || tcpqueue::PutBack::prepare(queued)));
        }
        Ok(())
    }

    /// Keeps `fd` (a copy of connection `c`'s socket) for the release.
    pub fn push(&mut self, fd: OwnedFd, c: &Conn) -> Result<()> {
        let what = name(&c.local, &c.peer);
        let (fin_in, fin_out) = fins(c.state);
        let fin = match (inet::addr_of(&c.local), inet::addr_of(&c.peer)) {
            _ if !fin_in => None,
            (Some(l), Some(p)) => {
                let wscale = if c.options & TCPI_OPT_WSCALE != 0 { c.snd_wscale } else { 0 };
                let window = (c.window[1] >> wscale).min(u16::MAX as u32) as u16;
                let una = c.snd_seq.wrapping_sub(c.sent.len() as u32);
                Some((tcpqueue::plain(p), tcpqueue::plain(l), c.rcv_seq, una, window))
            }
            _ => return Err(Error::Proc(format!("{what}: an address crs does not know"))),
        };
        let closing = (fin_in || fin_out).then_some(Closing { shut: fin_out, fin });
        self.socks.push(Made { fd, reuse: inet::reuseaddr(&c.opts), what, closing });
        Ok(())
    }

    /// The connections that waited go back in their listeners' queues (the service address
    /// is here by now), then the others leave repair mode (each sends a window probe),
    /// SO_REUSEADDR as it was, those whose peer had closed get its FIN again (a packet of
    /// ours, which the block lets through), then the block on their packets is lifted: the
    /// connections carry on, and those that had closed their side close it again (their FIN
    /// sent again, which the peer had or takes now).
    pub fn release(self) -> Result<()> {
        if let Some(p) = self.queued {
            let t = std::time::Instant::now();
            let p = p.join().unwrap_or_else(|_| Err(Error::Proc("the thread preparing the put-back failed".into())))?;
            let n = p.len();
            p.send()?;
            log::debug!("{n} waiting connections back in their queues in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        }
        for m in &self.socks {
            repair(m.fd.as_raw_fd(), false, &m.what)?;
            inet::set_int(m.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, m.reuse, &m.what)?;
        }
        for m in &self.socks {
            if let Some(fin) = m.closing.as_ref().and_then(|c| c.fin) {
                fin_again(m.fd.as_raw_fd(), fin, &m.what)?;
            }
        }
        // Both tables in one run of nft (each run takes about 10 ms, the processes waiting).
        let mut tables = Vec::new();
        if !self.lock.is_empty() {
            tables.push(self.lock.clone());
        }
        if let Some(mut g) = self.guard {
            g.armed = false;
            tables.push(std::mem::take(&mut g.table));
        }
        let t = std::time::Instant::now();
        let r = unlock_in(&tables, None);
        log::debug!("packet blocks lifted in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        for m in self.socks.iter().filter(|m| m.closing.as_ref().is_some_and(|c| c.shut)) {
            // SAFETY: shutdown takes integers, on our own copy of the socket.
            if unsafe { libc::shutdown(m.fd.as_raw_fd(), libc::SHUT_WR) } != 0 {
                return Err(sys("shutdown(SHUT_WR)", &m.what));
            }
        }
        r
    }
}

/// A connection (restored, out of repair mode, socket `s`) gets its peer's FIN again (see
/// [`Closing`]), through a raw socket (marked: crs's blocks let it pass). It is there once
/// the connection shows it (CLOSE_WAIT).
fn fin_again(
    s: RawFd,
    (from, to, seq, ack, window): (std::net::SocketAddr, std::net::SocketAddr, u32, u32, u16),
    what: &str,
) -> Result<()> {
    tcpqueue::send_segment(from, to, seq, ack, tcpqueue::ACK | tcpqueue::FIN, window, what)?;
    let t = std::time::Instant::now();
    loop {
        let st = inet::getsockopt(s, libc::IPPROTO_TCP, libc::TCP_INFO).and_then(|i| i.first().copied());
        if st.is_some_and(|st| st != inet::TCP_ESTABLISHED && st != inet::TCP_FIN_WAIT1) {
            return Ok(());
        }
        if t.elapsed() > std::time::Duration::from_millis(500) {
            return Err(Error::Proc(format!("{what}: its peer's FIN, sent again, did not reach it")));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// A connection a checkpoint took out of a listener's queue: crs's socket of it, and what
/// was read of it (once its packets are blocked).
struct Taken {
    fd: OwnedFd,
    listener: u64,
    ino: u64,
    read: Option<Queued>,
}

/// The connections a checkpoint froze: crs's copies of their sockets, in repair mode, those
/// it took out of listeners' queues, and the table blocking their packets.
#[derive(Default)]
pub struct Frozen {
    socks: Vec<OwnedFd>,
    queued: Vec<Taken>,
    /// The processes' network namespace, where the queued connections go back.
    ns: Option<std::fs::File>,
    lock: Option<Lock>,
}

impl Frozen {
    /// Takes the connections waiting in the queue of `listener` (crs's copy of socket `ino`
    /// of frozen process `pid`), for `take` to read; how many. They go back in it when the
    /// process runs on (`release`).
    pub fn adopt(&mut self, pid: i32, listener: RawFd, ino: u64) -> Result<usize> {
        if self.ns.is_none() {
            let path = format!("/proc/{pid}/ns/net");
            self.ns = Some(std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?);
        }
        let what = format!("the listener socket:[{ino}] of pid {pid}");
        let mut n = 0;
        loop {
            if !inet::readable(listener) {
                return Ok(n);
            }
            // SAFETY: accept4 with no address to fill; the fd is owned at once.
            let raw =
                unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
            if raw < 0 {
                return match Errno::last() {
                    Errno::EAGAIN | Errno::ECONNABORTED => Ok(n),
                    e => Err(Error::sys("accept4", &what, e)),
                };
            }
            // SAFETY: just accepted, ours alone.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let st = nix::sys::stat::fstat(&fd).map_err(|e| Error::sys("fstat", &what, e))?;
            self.queued.push(Taken { fd, listener: ino, ino: st.st_ino, read: None });
            n += 1;
        }
    }

    /// Blocks the packets of connections `which` (socket, inode) of `pid` and of those
    /// adopted, puts each in repair mode and reads it. Returns the connections, those that
    /// waited, and what was left out (a waiting connection its client had reset).
    pub fn take(&mut self, pid: i32, which: Vec<(OwnedFd, u64)>) -> Result<(Vec<Conn>, Vec<Queued>, Vec<String>)> {
        let mut ends = Vec::new();
        let socks = which.iter().map(|(s, ino)| (s, *ino)).chain(self.queued.iter().map(|t| (&t.fd, t.ino)));
        for (s, ino) in socks {
            let what = format!("socket:[{ino}]");
            let Some(local) = inet::name_of(s.as_raw_fd(), false) else { return Err(sys("getsockname", &what)) };
            // A waiting connection its client reset has no peer any more.
            if let Some(peer) = inet::name_of(s.as_raw_fd(), true) {
                ends.push((local, peer));
            }
        }
        let t = std::time::Instant::now();
        self.lock = Some(Lock::new(pid, &ends, true)?);
        let locked = t.elapsed();
        let mut out = Vec::new();
        for (s, ino) in which {
            let what = format!("socket:[{ino}]");
            repair(s.as_raw_fd(), true, &what)?;
            self.socks.push(s);
            let last = self.socks.len() - 1;
            out.push(collect(self.socks[last].as_raw_fd(), ino)?);
        }
        let mut notes = Vec::new();
        for t in &mut self.queued {
            t.read = read_queued(t)?;
            if t.read.is_none() {
                notes.push(format!(
                    "a connection waiting on the listener socket:[{}] is left out: its client had reset it",
                    t.listener
                ));
            }
        }
        let queued: Vec<Queued> = self.queued.iter().filter_map(|t| t.read.clone()).collect();
        log::debug!(
            "{} connections and {} waiting: blocked in {:.1} ms, read {:.1} ms after",
            out.len(),
            queued.len(),
            locked.as_secs_f64() * 1e3,
            (t.elapsed() - locked).as_secs_f64() * 1e3
        );
        let total: usize =
            out.iter().chain(queued.iter().map(|q| &q.conn)).map(|c| c.sent.len() + c.received.len()).sum();
        if total > MAX_QUEUES {
            return Err(Error::Refused(format!(
                "the established connections have {} MiB queued, more than the {} MiB an image carries",
                total >> 20,
                MAX_QUEUES >> 20
            )));
        }
        Ok((out, queued, notes))
    }

    /// The checkpoint failed, or the processes run on: the connections carry on, those that
    /// waited back in their listeners' queues.
    pub fn release(self) -> Result<()> {
        let mut r = Ok(());
        for s in &self.socks {
            r = r.and(repair(s.as_raw_fd(), false, "a connection"));
        }
        let mut back = Vec::new();
        for mut t in self.queued {
            // Taken but not read yet (the checkpoint failed in between): read now.
            let q = match t.read.take() {
                Some(q) => Ok(Some(q)),
                None => repair(t.fd.as_raw_fd(), true, "a waiting connection").and_then(|()| read_queued(&t)),
            };
            // In repair mode it closes without a packet (else with one: it is lost anyway).
            drop(t.fd);
            match q {
                Ok(q) => back.extend(q),
                Err(e) => {
                    r = r.and(Err(Error::Proc(format!(
                        "a connection waiting on the listener socket:[{}] is lost, its client sees a reset: {e}",
                        t.listener
                    ))))
                }
            }
        }
        if !back.is_empty() {
            let n = back.len();
            let put = inet::in_netns(self.ns.as_ref(), || tcpqueue::put_back_all(back));
            r = r.and(put.map_err(|e| {
                Error::Proc(format!("of the {n} connections waiting to be accepted, some are lost: {e}"))
            }));
        }
        match self.lock {
            Some(l) => r.and(l.remove()),
            None => r,
        }
    }

    /// The processes are killed: their connections close silently (in repair mode), and the
    /// block stays for the restore to lift. Returns the table's name.
    pub fn keep(mut self) -> String {
        self.socks.clear();
        self.queued.clear();
        self.lock.take().map(|l| l.keep()).unwrap_or_default()
    }

    /// The table's name (empty without connections).
    pub fn lock_name(&self) -> String {
        self.lock.as_ref().map(|l| l.table.clone()).unwrap_or_default()
    }
}

/// Waiting connection `t` (its socket in repair mode), or None when its client had reset it.
fn read_queued(t: &Taken) -> Result<Option<Queued>> {
    let s = t.fd.as_raw_fd();
    if inet::name_of(s, true).is_none() {
        return Ok(None);
    }
    repair(s, true, &format!("socket:[{}]", t.ino))?;
    let (conn, fin) = collect_queued(s, t.ino)?;
    Ok(Some(Queued { listener: t.listener, fin, conn }))
}

/// An nftables table in a process's network namespace (sets of addresses and ports, a rule
/// for each) that drops every packet to the connections' local ends from their peers (on
/// input, and on output for a peer on this very node), and for a checkpoint every packet
/// they send, until removed. A connection in repair
/// mode still transmits what its pacing timer releases (tcp_write_xmit only holds back while
/// the send queue is being repaired): a segment that reached the peer after the checkpoint
/// read the queue would be one the restored connection sends as new, behind what the peer
/// acknowledges, and the connection would stall on challenge ACKs.
pub struct Lock {
    table: String,
    /// The namespace, held open: the table goes even if the process is gone by then.
    ns: std::fs::File,
    armed: bool,
}

/// "10.0.0.9 . 10.0.0.1 . 51234 . 6379": the packets from `from` to `to` as an element of a
/// set of (saddr, daddr, sport, dport), and whether it is an IPv4 one (an IPv4 address mapped
/// in IPv6 as IPv4).
fn element(from: &[u8], to: &[u8]) -> Option<(String, bool)> {
    let (p, l) = (inet::addr_of(from)?, inet::addr_of(to)?);
    let v4 = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        ip => ip,
    };
    let (lip, pip) = (v4(l.ip()), v4(p.ip()));
    Some((format!("{pip} . {lip} . {} . {}", p.port(), l.port()), lip.is_ipv4()))
}

/// Runs `nft -f -` with `script`, in network namespace `ns` (None: ours).
fn nft(script: &str, ns: Option<&std::fs::File>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("nft");
    cmd.args(["-f", "-"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::piped());
    if let Some(ns) = ns.map(|f| f.as_raw_fd()) {
        // SAFETY: setns is async-signal-safe and changes only the child's namespace.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::Refused(
            "established TCP connections are held still with nftables: install nft (apt install nftables)".into(),
        ),
        _ => Error::io("nft", e),
    })?;
    let fed = child.stdin.take().map(|mut i| i.write_all(script.as_bytes()));
    let out = child.wait_with_output().map_err(|e| Error::io("nft", e))?;
    if !out.status.success() || fed.is_some_and(|r| r.is_err()) {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Proc(format!("nft: {}", crate::text::printable(err.lines().next().unwrap_or("failed")))));
    }
    Ok(())
}

/// Removes table `table` from our network namespace, if it is there.
pub fn unlock(table: &str) -> Result<()> {
    unlock_in(&[table.to_string()], None)
}

/// Removes tables `tables` from network namespace `ns` (None: ours), those that are there, in
/// one run of nft. Without nft there is none of crs's to remove.
fn unlock_in(tables: &[String], ns: Option<&std::fs::File>) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    // Added (a no-op if it is there) then deleted: "destroy" would do, but nft has it from
    // 1.0.8 only.
    let script: String = tables.iter().map(|t| format!("add table inet {t}\ndelete table inet {t}\n")).collect();
    match nft(&script, ns) {
        Err(Error::Refused(_)) if !nft_here() => Ok(()),
        r => r,
    }
}

/// Whether an nft program is on the PATH.
fn nft_here() -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file()))
}

impl Lock {
    /// `outgoing`: the connections' own packets too.
    fn new(pid: i32, ends: &[(Vec<u8>, Vec<u8>)], outgoing: bool) -> Result<Lock> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let table = format!("crs_{pid}_{:x}", nanos as u64);
        let mut script = format!(
            "add table inet {table}\n\
             add chain inet {table} i {{ type filter hook input priority -300; policy accept; }}\n\
             add chain inet {table} o {{ type filter hook output priority -300; policy accept; }}\n"
        );
        // What puts a waiting connection back in its listener's queue passes (res::tcpqueue).
        for chain in ["i", "o"] {
            let (mask, mark) = (tcpqueue::MARK_MASK, tcpqueue::MARK);
            script += &format!("add rule inet {table} {chain} meta mark & {mask:#x} == {mark:#x} accept\n");
        }
        // Sets of the packets to drop, by family: to the local ends ("to", on input, and on
        // output for a peer on this node), and (`outgoing`) from them ("from", on output).
        let mut sets: [Vec<String>; 4] = Default::default(); // to4, to6, from4, from6
        for (l, p) in ends {
            let unknown = || Error::Proc(format!("{}: an address crs does not know", name(l, p)));
            let (e, v4) = element(p, l).ok_or_else(unknown)?;
            sets[!v4 as usize].push(e);
            if outgoing {
                let (e, v4) = element(l, p).ok_or_else(unknown)?;
                sets[2 + !v4 as usize].push(e);
            }
        }
        for (i, elements) in sets.iter().enumerate().filter(|s| !s.1.is_empty()) {
            let (set, fam) = (["to4", "to6", "from4", "from6"][i], ["ip", "ip6"][i % 2]);
            let ty = ["ipv4_addr", "ipv6_addr"][i % 2];
            script += &format!("add set inet {table} {set} {{ type {ty} . {ty} . inet_service . inet_service; }}\n");
            for chunk in elements.chunks(256) {
                script += &format!("add element inet {table} {set} {{ {} }}\n", chunk.join(", "));
            }
            let m = format!("{fam} saddr . {fam} daddr . tcp sport . tcp dport @{set} drop");
            let chains: &[&str] = if i < 2 { &["i", "o"] } else { &["o"] };
            for c in chains {
                script += &format!("add rule inet {table} {c} {m}\n");
            }
        }
        let path = format!("/proc/{pid}/ns/net");
        let ns = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        nft(&script, Some(&ns))?;
        Ok(Lock { table, ns, armed: true })
    }

    fn remove(mut self) -> Result<()> {
        self.armed = false;
        unlock_in(std::slice::from_ref(&self.table), Some(&self.ns))
    }

    fn keep(mut self) -> String {
        self.armed = false;
        std::mem::take(&mut self.table)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.armed {
            let _ = unlock_in(std::slice::from_ref(&self.table), Some(&self.ns));
        }
    }
}

/// A queue as chunks of at most a field's length: a count, then each.
fn chunks(e: &mut Enc, data: &[u8]) {
    let n = data.len().div_ceil(crate::crf::MAX_FIELD);
    e.u32(n as u32);
    for c in data.chunks(crate::crf::MAX_FIELD) {
        e.bytes(c);
    }
}

fn unchunk(d: &mut Dec) -> CrfResult<Vec<u8>> {
    let at = d.offset();
    let n = d.count(4)?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend_from_slice(d.bytes()?);
        if out.len() > MAX_QUEUE {
            return Err(d.bad_at(at, format!("a queue of more than {MAX_QUEUE} bytes")));
        }
    }
    Ok(out)
}

pub fn encode(c: &Conns) -> Vec<u8> {
    let mut e = Enc::new();
    e.str(&c.lock).u32(c.conns.len() as u32);
    for c in &c.conns {
        encode_conn(&mut e, c);
    }
    // (Version 11: the connections closed one way or both, with their states.)
    let closing: Vec<&Conn> = c.conns.iter().filter(|c| c.state != 0).collect();
    if !closing.is_empty() {
        e.u32(closing.len() as u32);
        for c in closing {
            e.u64(c.ino).u8(c.state);
        }
    }
    e.into_bytes()
}

/// One connection's record (TCPCONNS's, and TCPQUEUED's after its listener).
pub fn encode_conn(e: &mut Enc, c: &Conn) {
    e.u64(c.ino).u32(c.family as u32).bytes(&c.local).bytes(&c.peer).u32(c.snd_seq).u32(c.rcv_seq);
    chunks(e, &c.sent);
    e.u32(c.unsent);
    chunks(e, &c.received);
    e.u32(c.mss).u8(c.options).u8(c.snd_wscale);
    e.u8(c.rcv_wscale).u32(c.timestamp);
    for w in c.window {
        e.u32(w);
    }
    e.u32(c.sndbuf).u32(c.rcvbuf);
    inet::encode_opts(e, &c.opts);
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Conns> {
    let mut d = Dec::new(b, at, "TCPCONNS");
    let lock = d.str()?;
    // Only a table of crs's own: a restore removes it, as root.
    let plain = lock.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') && lock.len() <= 64;
    if !(lock.is_empty() || plain && lock.starts_with("crs_")) {
        return Err(d.bad_at(at, "a lock table name that is not one of crs's (crs_...)".into()));
    }
    let n = d.count(60)?;
    let mut conns: Vec<Conn> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let c = decode_conn(&mut d)?;
        if conns.iter().any(|o| o.ino == c.ino) {
            return Err(d.bad_at(rec, format!("connection {}", c.ino)));
        }
        conns.push(c);
    }
    if d.remaining() > 0 {
        let k = d.count(9)?;
        for _ in 0..k {
            let rec = d.offset();
            let (ino, state) = (d.u64()?, d.u8()?);
            let c = conns.iter_mut().find(|c| c.ino == ino && c.state == 0);
            let (fin_in, fin_out) = fins(state);
            match c {
                Some(c) if fin_in || fin_out => c.state = state,
                _ => return Err(d.bad_at(rec, format!("the closing state {state} of connection {ino}"))),
            }
        }
    }
    d.finish()?;
    Ok(Conns { lock, conns })
}

/// One connection's record, checked.
pub fn decode_conn(d: &mut Dec) -> CrfResult<Conn> {
    let rec = d.offset();
    let (ino, family) = (d.u64()?, d.u32()?);
    let (local, peer) = (d.bytes()?.to_vec(), d.bytes()?.to_vec());
    let (snd_seq, rcv_seq) = (d.u32()?, d.u32()?);
    let (sent, unsent, received) = (unchunk(d)?, d.u32()?, unchunk(d)?);
    let (mss, options, snd_wscale, rcv_wscale, timestamp) = (d.u32()?, d.u8()?, d.u8()?, d.u8()?, d.u32()?);
    let window = [d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u32()?];
    let (sndbuf, rcvbuf) = (d.u32()?, d.u32()?);
    let opts = inet::decode_opts(d, &format!("connection {ino}"))?;
    let c = Conn {
        ino,
        family: family as u16,
        local,
        peer,
        snd_seq,
        rcv_seq,
        sent,
        unsent,
        received,
        mss,
        options,
        snd_wscale,
        rcv_wscale,
        timestamp,
        window,
        sndbuf,
        rcvbuf,
        opts,
        state: 0,
    };
    let fam = |a: &[u8]| inet::addr_of(a).is_some() && a.get(..2) == Some(&c.family.to_ne_bytes()[..]);
    let ok = matches!(family as i32, libc::AF_INET | libc::AF_INET6)
        && fam(&c.local)
        && fam(&c.peer)
        && c.unsent as usize <= c.sent.len()
        && c.snd_wscale <= 14
        && c.rcv_wscale <= 14;
    if !ok {
        return Err(d.bad_at(rec, format!("connection {ino}")));
    }
    Ok(c)
}

pub fn describe(c: &Conns) -> Vec<String> {
    let mut out: Vec<String> = c
        .conns
        .iter()
        .map(|c| {
            let closed = match fins(c.state) {
                (true, true) => "; closed both ways",
                (true, false) => "; its peer closed its side",
                (false, true) => "; it closed its side",
                (false, false) => "",
            };
            format!(
                "tcpconn:   {} {}: {} bytes received unread, {} sent unacknowledged, {} unsent; mss {}{closed}",
                c.ino,
                name(&c.local, &c.peer),
                c.received.len(),
                c.sent.len() - c.unsent as usize,
                c.unsent,
                c.mss
            )
        })
        .collect();
    if !c.lock.is_empty() {
        out.push(format!("tcplock:   their packets are blocked by nftables table inet {}", c.lock));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_states_round_trip_and_only_those() {
        let addr = |port: u16| inet::sockaddr(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let c = |ino, state| Conn {
            ino,
            family: libc::AF_INET as u16,
            local: addr(80),
            peer: addr(4000 + ino as u16),
            sent: vec![1, 2, 3],
            unsent: 1,
            state,
            ..Default::default()
        };
        let all = Conns {
            lock: "crs_1_2".into(),
            conns: vec![c(1, 0), c(2, inet::TCP_CLOSE_WAIT), c(3, inet::TCP_FIN_WAIT2)],
        };
        assert_eq!(decode(&encode(&all), 0).unwrap(), all);
        // A version 10 image (no states) reads as established connections.
        let plain = Conns { conns: vec![c(1, 0)], ..all.clone() };
        assert_eq!(decode(&encode(&plain), 0).unwrap(), plain);
        for bad in [inet::TCP_ESTABLISHED, 7, 10, 12] {
            let b = Conns { conns: vec![c(1, bad)], ..all.clone() };
            assert!(decode(&encode(&b), 0).is_err(), "state {bad}");
        }
    }
}
