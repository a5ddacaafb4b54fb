//! Post-copy (migrate --post-copy): the processes run at the destination before their memory
//! is there. The image leaves out the pages of their private anonymous memory (kept runs, see
//! engine::checkpoint::PostCopy); once the destination runs them (Running), the source sends
//! them from the processes, still frozen here: process by process, its smallest mappings first
//! (see [`Proc::look`]), and first of all those the destination asks for (Want), which a
//! thread there waits for (engine::lazy).
//! The source's End says the last page went; the destination's AllIn that every page is in.
//! Only then is the process here killed.
//!
//! Until the source has sent its last page, the destination cannot have them all: a failure
//! (the link breaks, the destination dies, either side's timeout) leaves the process running
//! here again, and the destination kills its copy as soon as it sees the link broken or silent
//! for its --timeout: what the copy did meanwhile is lost. After the last page, a lost AllIn is
//! the same doubt as a lost Running: the process here stays stopped (see Left::StoppedHere).
//!
//! A page a process waits for would queue behind the stream (what the socket holds here, what
//! the destination has received and not read yet): with a key, a second connection, made
//! before the freeze (migration::client, server), carries the Wants and the pages asked for,
//! and the source writes the stream without blocking, so a Want waits at most for the frame
//! being read from the process's memory. Where it cannot be made, both share the one.
//!
//! Frames: Want (destination to source) u32 pid, u32 0, u64 address, u64 length (the process
//! and the pages' addresses as the image has them); Member (source to destination) u32 pid:
//! the Pages that follow are that process's; Pages as a live migration's (engine::precopy),
//! but that a run whose last word is ZERO has no data: its pages hold nothing here (the image
//! leaves whole mappings to be sent later, unlooked at: the page tables are walked here once
//! the process runs there, LOOK_PAGES at a time); End; AllIn.

use crate::engine::precopy::put_runs;
use crate::error::{Error, Result};
use crate::net::pace::Paced;
use crate::net::{Conn, Kind, NetError, Partial};
use crate::ptrace::pagemap::Pagemap;
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const PAGE: u64 = crate::crf::PAGE_SIZE as u64;
/// Most pages in one Pages frame (512 KiB).
const FRAME_PAGES: u64 = 128;
/// Most pages in one frame on the main connection while the destination asks for pages
/// (128 KiB): a page asked for waits for the frame each end is busy with, sealing or
/// opening it. After a migration a process wants pages in bursts (it catches up on what it
/// missed while frozen): with frames of 512 KiB, a writer at 10 MB/s stalled 40-50 ms on
/// this VM (median of 5), with 128 KiB 16-24 ms; the bulk goes about a fifth slower in them.
const QUICK_FRAME_PAGES: u64 = 32;
/// How long the main connection keeps to small frames after a Want.
const QUICK_FOR: Duration = Duration::from_millis(100);
/// Most bytes the socket holds unsent while pages follow.
const NOTSENT: libc::c_int = 128 << 10;
/// Most pages looked at in the page table at once (64 MiB, a fraction of a millisecond):
/// between two looks, a Want is answered.
const LOOK_PAGES: u64 = 16384;
/// The flag of a run of a Pages frame whose pages are zero: no data follows for it.
pub const ZERO: u32 = 1;

/// What the source sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Pages sent, and of them those the destination asked for first.
    pub pages: u64,
    pub wanted: u64,
    /// The pages asked for went back on a second connection.
    pub second: bool,
    /// From Running to AllIn.
    pub took: Duration,
}

/// Takes from `left` (start -> end) at most `max` pages of what lies in [from, to), first
/// ones first.
fn take(left: &mut BTreeMap<u64, u64>, from: u64, to: u64, max: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut budget = max * PAGE;
    let first = left.range(..=from).next_back().filter(|(_, e)| **e > from).map(|(s, _)| *s);
    let keys: Vec<u64> = first.into_iter().chain(left.range(from..to).map(|(s, _)| *s)).collect();
    for s in keys {
        if budget == 0 {
            break;
        }
        let Some(e) = left.remove(&s) else { continue };
        let (a, b) = (s.max(from), e.min(to));
        let b = b.min(a + budget);
        if s < a {
            left.insert(s, a);
        }
        if b < e {
            left.insert(b, e);
        }
        if a < b {
            out.push((a, b));
            budget -= b - a;
        }
    }
    out
}

/// A process frozen here whose pages follow: its memory, through /proc/PID/mem (it reads
/// protected pages too, and pins none), and what is left to send of it.
struct Proc {
    pid: i32,
    mem: std::fs::File,
    /// What the image left to send later, not looked at yet: the pages there that hold data
    /// go to `left` once looked at, and the destination is told the others are zero.
    unseen: BTreeMap<u64, u64>,
    left: BTreeMap<u64, u64>,
    /// Everything the image left to send later, sent or not.
    all: BTreeMap<u64, u64>,
    pagemap: Pagemap,
}

impl Proc {
    fn done(&self) -> bool {
        self.left.is_empty() && self.unseen.is_empty()
    }

    /// Up to `max` pages of [a, b) still to send, data read here or not (a page of `unseen`
    /// reads as zero where it holds none).
    fn take(&mut self, a: u64, b: u64, max: u64) -> Vec<(u64, u64)> {
        let mut out = take(&mut self.left, a, b, max);
        let had: u64 = out.iter().map(|(a, b)| (b - a) / PAGE).sum();
        out.extend(take(&mut self.unseen, a, b, max - had));
        out.sort_unstable();
        out
    }

    /// Up to `max` pages of [a, b) that the image left to send later, sent already or not:
    /// a page sent on the main connection may still be on its way there behind megabytes of
    /// others (the destination's receive buffer), while a process waits for it.
    fn again(&self, a: u64, b: u64, max: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if a >= b {
            return out;
        }
        let mut budget = max * PAGE;
        let first = self.all.range(..=a).next_back();
        for (&s, &e) in first.into_iter().chain(self.all.range(a + 1..b)) {
            let (x, y) = (s.max(a), e.min(b));
            let y = y.min(x + budget);
            if x < y {
                out.push((x, y));
                budget -= y - x;
            }
            if budget == 0 {
                break;
            }
        }
        out
    }

    /// Looks at `max` pages of `unseen`, its smallest runs first (of those equally small, the
    /// lowest): those that hold data go to `left`, sent before the next look; returns the
    /// others, as runs. Small mappings first: a stack, thread-local storage, an allocator's
    /// bookkeeping, an array of a megabyte are what a process touches as soon as it runs, and
    /// they take little time, where the memory of a large mapping is the bulk (a writer at
    /// 10 MB/s into a GiB, with its bookkeeping in a MiB of its own, waited for that MiB at
    /// nearly every write until it came, after the GiB).
    fn look(&mut self, max: u64) -> Result<Vec<(u64, u64)>> {
        let mut by_size: Vec<(u64, u64)> = self.unseen.iter().map(|(s, e)| (*s, *e)).collect();
        by_size.sort_unstable_by_key(|&(s, e)| (e - s, s));
        let mut budget = max * PAGE;
        let mut picked = Vec::new();
        for (s, e) in by_size {
            if budget == 0 {
                break;
            }
            let e = e.min(s + budget);
            budget -= e - s;
            picked.extend(take(&mut self.unseen, s, e, (e - s) / PAGE));
        }
        picked.sort_unstable();
        let mut zero = Vec::new();
        for (a, b) in picked {
            let mut at = a;
            for (s, e) in self.pagemap.own_data(a, b)? {
                if at < s {
                    zero.push((at, s));
                }
                self.left.insert(s, e);
                at = e;
            }
            if at < b {
                zero.push((at, b));
            }
        }
        Ok(zero)
    }
}

/// A Pages frame that says `runs` of a process are zero: runs flagged ZERO, no data; 5 bytes
/// left for the header.
fn zero_frame(runs: &[(u64, u64)]) -> Vec<u8> {
    let mut frame = vec![0u8; 5];
    put_runs(&mut frame, runs, ZERO);
    frame
}

/// A Pages frame of `chunk` of `p`, 5 bytes left for the header (Conn::seal), in `frame` (a
/// buffer sent before: its memory is faulted in already).
fn pages_frame(p: &Proc, chunk: &[(u64, u64)], mut frame: Vec<u8>) -> Result<Vec<u8>> {
    let pages: u64 = chunk.iter().map(|(a, b)| (b - a) / PAGE).sum();
    frame.clear();
    frame.reserve(5 + 8 + 16 * chunk.len() + (pages * PAGE) as usize + crate::net::TAG_LEN);
    frame.resize(5, 0);
    put_runs(&mut frame, chunk, 0);
    let head = frame.len();
    frame.resize(head + (pages * PAGE) as usize, 0);
    let mut at = head;
    for &(a, b) in chunk {
        let n = (b - a) as usize;
        std::os::unix::fs::FileExt::read_exact_at(&p.mem, &mut frame[at..at + n], a)
            .map_err(|e| Error::io(format!("/proc/{}/mem at {a:#x}", p.pid), e))?;
        at += n;
    }
    Ok(frame)
}

/// One connection's frames: sealed, and preceded by a Member frame when the process is not
/// that of the frame before on it.
struct Channel {
    member: Option<i32>,
}

impl Channel {
    fn seal(
        &mut self,
        c: &mut Conn<TcpStream>,
        pid: i32,
        mut frame: Vec<u8>,
    ) -> std::result::Result<Vec<u8>, NetError> {
        let mut out = Vec::new();
        if self.member != Some(pid) {
            out.extend([0u8; 5]);
            out.extend((pid as u32).to_le_bytes());
            c.seal(Kind::Member, &mut out)?;
            self.member = Some(pid);
        }
        c.seal(Kind::Pages, &mut frame)?;
        if out.is_empty() {
            return Ok(frame);
        }
        out.extend_from_slice(&frame);
        Ok(out)
    }
}

/// A Want frame: (pid, start, end), whole pages (a peer's frame must not make us read past
/// ours).
fn parse_want(msg: &[u8]) -> Option<(i32, u64, u64)> {
    if msg.len() != 24 {
        return None;
    }
    let w = |i: usize| u64::from_le_bytes(msg[i..i + 8].try_into().unwrap_or([0; 8]));
    let (a, n) = (w(8) & !(PAGE - 1), w(16));
    Some((w(0) as u32 as i32, a, a.saturating_add(n).saturating_add(PAGE - 1) & !(PAGE - 1)))
}

/// Writes what `c` can take now of `out[*at..]` (MSG_DONTWAIT: the socket stays blocking for
/// the reads). Ok(false): it takes nothing now.
fn write_some(c: &Conn<TcpStream>, out: &[u8], at: &mut usize) -> std::result::Result<bool, NetError> {
    let rest = &out[*at..];
    // SAFETY: send reads `rest`, ours, for its length.
    let n = unsafe {
        libc::send(
            c.s.as_raw_fd(),
            rest.as_ptr() as *const libc::c_void,
            rest.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        *at += n as usize;
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(false),
        _ => Err(NetError::Io(e)),
    }
}

/// How much lower than the pages asked for the rest of them go (nice values): the process
/// there waits for the first, not for the others, and on CPUs it shares with the copy
/// (both nodes on one host, a busy source) those go first. Measured with both nodes on 2
/// CPUs (bench/live.sh, a writer at 10 MB/s), the longest stall of the process halved, the
/// copy as long.
const BULK_NICE: i32 = 5;

/// This thread's priority: its own while it waits and answers what is asked for, lower while it
/// makes a frame of the rest ([`BULK_NICE`]). Only where it may go back ([`may_raise_to`]):
/// a user's thread may lower its priority but not raise it again.
struct Priority {
    base: Option<i32>,
    low: bool,
}

impl Priority {
    fn new() -> Priority {
        Priority { base: crate::engine::urgent::nice().filter(|&b| may_raise_to(b)), low: false }
    }

    fn low(&mut self, low: bool) {
        let Some(base) = self.base.filter(|_| self.low != low) else { return };
        let n = if low { (base + BULK_NICE).min(19) } else { base };
        // SAFETY: setpriority takes integers; `who` 0 is this thread.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } == 0 {
            self.low = low;
        } else {
            self.base = None;
        }
    }
}

/// Whether this thread may raise its priority to nice `n` again once it lowered it:
/// CAP_SYS_NICE in its effective set (root, but not in a user namespace without it), or an
/// RLIMIT_NICE that allows `n`.
fn may_raise_to(n: i32) -> bool {
    const CAP_SYS_NICE: u32 = 23;
    let eff = std::fs::read_to_string("/proc/thread-self/status").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    });
    if eff.is_some_and(|e| e & (1 << CAP_SYS_NICE) != 0) {
        return true;
    }
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills one struct rlimit of ours.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut r) } == 0;
    // (The lowest nice value it allows is 20 - rlim_cur.)
    ok && 20 - (r.rlim_cur.min(40) as i32) <= n
}

impl Drop for Priority {
    fn drop(&mut self) {
        self.low(false);
    }
}

/// The source's side, once the destination said Running: sends `runs` (start, end) of each
/// frozen process (by pid), the wanted ones first, then End, and waits for AllIn. The pages
/// asked for on `urgent` (the second connection, when there is one) go back on it at once;
/// the others follow on `c`, written as it takes them, so a Want is never kept waiting by a
/// frame the destination is slow to take. Err with whether the last page had gone (then the
/// destination may run on with them all).
pub fn send(
    c: &mut Conn<TcpStream>,
    mut urgent: Option<Conn<TcpStream>>,
    runs: &[(i32, Vec<(u64, u64)>)],
    timeout: Duration,
    flags: &crate::engine::vmflags::FlagsLater,
) -> std::result::Result<Sent, (Error, bool)> {
    let t0 = Instant::now();
    // A page a process waits for goes after what the socket holds and has not sent yet: hold
    // little of that (TCP_NOTSENT_LOWAT: what is in flight on a long link is not limited).
    let small: libc::c_int = NOTSENT;
    // SAFETY: setsockopt reads one int of ours; a failure leaves the socket as it was.
    unsafe {
        libc::setsockopt(
            c.s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &small as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let mut procs = Vec::with_capacity(runs.len());
    for (pid, r) in runs.iter().filter(|r| !r.1.is_empty()) {
        let path = format!("/proc/{pid}/mem");
        let mem = std::fs::File::open(&path).map_err(|e| (Error::io(&path, e), false))?;
        let pagemap = Pagemap::open(*pid).map_err(|e| (e, false))?;
        let all: BTreeMap<u64, u64> = r.iter().copied().collect();
        procs.push(Proc { pid: *pid, mem, unseen: all.clone(), left: BTreeMap::new(), all, pagemap });
    }
    // Wants that came on `c` (no second connection): answered on it, before the rest.
    let mut wants: std::collections::VecDeque<(i32, u64, u64)> = Default::default();
    let mut sent = Sent { second: urgent.is_some(), ..Sent::default() };
    let mut msg = Vec::new();
    let fd = c.s.as_raw_fd();
    let mut ended = false;
    let (mut main, mut side) = (Channel { member: None }, Channel { member: None });
    // The frame being written on `c`, and how much of it is; the last one sent on `urgent`.
    let (mut out, mut at) = (Vec::new(), 0usize);
    let mut side_buf = Vec::new();
    let net = |e: NetError, ended: bool| (Error::Net(e), ended);
    let mut idle = Instant::now();
    // When the last Want came (long ago at first: the bulk goes in large frames until the
    // process there asks for something).
    let mut asked: Option<Instant> = None;
    // Whether the mappings' flags were found the same frozen as before the freeze: compared
    // from now on, as the copy there runs (not during the freeze, whose every millisecond the
    // process waits: the comparison reads the frozen smaps, 12-16 ms a GiB); a difference stops
    // the post-copy before its last page.
    flags.check().map_err(|e| (e, false))?;
    let mut checked = false;
    let mut priority = Priority::new();
    loop {
        priority.low(false);
        if !checked && flags.done() {
            flags.wait().map_err(|e| (e, false))?;
            checked = true;
        }
        let pending = at < out.len();
        let mut fds =
            vec![libc::pollfd { fd, events: libc::POLLIN | if pending { libc::POLLOUT } else { 0 }, revents: 0 }];
        // (Not once its End went: what comes on it then is a Want of a page on its way.)
        if let Some(u) = urgent.as_ref().filter(|_| !ended) {
            fds.push(libc::pollfd { fd: u.s.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        // Nothing to write but what waits for the socket: wait for it, or for the
        // destination; once the last page went, for its AllIn; else look and go on.
        let wait = if ended || pending { timeout.as_millis().clamp(1, i32::MAX as u128) as i32 } else { 0 };
        // SAFETY: `fds` is an array of pollfd of ours, of that length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err((Error::io("poll (post-copy)", e), ended));
        }
        if n == 0 && wait > 0 {
            let what = if ended { "say it had every page" } else { "take more pages" };
            let e = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the destination did not {what} within {} s", timeout.as_secs()),
            );
            return Err(net(NetError::Io(e), ended));
        }
        // A page a process there waits for: back on the second connection at once.
        if fds.get(1).is_some_and(|f| f.revents != 0)
            && let Some(u) = urgent.as_mut()
        {
            let k = u.recv(&mut msg).map_err(|e| net(e, ended))?;
            let Some((pid, a, b)) = parse_want(&msg).filter(|_| k == Kind::Want) else {
                return Err(net(
                    NetError::Protocol(format!("expected Want on the second connection, got {k:?}")),
                    ended,
                ));
            };
            asked = Some(Instant::now());
            if let Some(p) = procs.iter_mut().find(|p| p.pid == pid) {
                let mut chunk = p.take(a, b, FRAME_PAGES);
                // The page the process waits for (the first), if it went on the main
                // connection already: again, here (the destination ignores a page it has).
                if chunk.first().is_none_or(|c| c.0 != a) {
                    let mut first = p.again(a, a.saturating_add(PAGE).min(b), 1);
                    first.append(&mut chunk);
                    chunk = first;
                }
                if !chunk.is_empty() {
                    let pages: u64 = chunk.iter().map(|(a, b)| (b - a) / PAGE).sum();
                    let frame = pages_frame(p, &chunk, std::mem::take(&mut side_buf)).map_err(|e| (e, false))?;
                    let wire = side.seal(u, pid, frame).map_err(|e| net(e, false))?;
                    std::io::Write::write_all(&mut u.s, &wire).map_err(|e| net(NetError::Io(e), false))?;
                    side_buf = wire;
                    sent.pages += pages;
                    sent.wanted += pages;
                }
            }
            continue;
        }
        if fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match c.recv(&mut msg).map_err(|e| net(e, ended))? {
                Kind::Want => match parse_want(&msg) {
                    Some(w) => {
                        asked = Some(Instant::now());
                        wants.push_back(w)
                    }
                    None => return Err(net(NetError::Protocol(format!("a Want of {} bytes", msg.len())), ended)),
                },
                Kind::AllIn => {
                    if !ended {
                        if let Some(u) = urgent.as_mut() {
                            u.send(Kind::End, &[]).map_err(|e| net(e, true))?;
                        }
                        c.send(Kind::End, &[]).map_err(|e| net(e, true))?;
                    }
                    sent.took = t0.elapsed();
                    return Ok(sent);
                }
                k => return Err(net(NetError::Protocol(format!("expected Want or AllIn, got {k:?}")), ended)),
            }
            continue;
        }
        if pending {
            if write_some(c, &out, &mut at).map_err(|e| net(e, false))? {
                idle = Instant::now();
            } else if idle.elapsed() >= timeout {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the destination took no page for {} s", timeout.as_secs()),
                );
                return Err(net(NetError::Io(e), false));
            }
            continue;
        }
        if ended {
            continue;
        }
        if procs.iter().all(Proc::done) {
            if !checked {
                flags.wait().map_err(|e| (e, false))?;
                checked = true;
            }
            // Every page went: on the second connection first, which the destination
            // reads until its End too. (It stays open until AllIn: the destination may still
            // ask on it for a page on its way, and must not find it closed.)
            if let Some(u) = urgent.as_mut() {
                u.send(Kind::End, &[]).map_err(|e| net(e, false))?;
            }
            c.send(Kind::End, &[]).map_err(|e| net(e, false))?;
            ended = true;
            continue;
        }
        // The next frame: pages asked for on this connection first, then those looked at.
        let mut chunk = Vec::new();
        let mut who = 0;
        let mut wanted = false;
        while let Some(&(pid, a, b)) = wants.front() {
            if let Some(i) = procs.iter().position(|p| p.pid == pid) {
                chunk = procs[i].take(a, b, FRAME_PAGES);
                who = i;
            }
            if chunk.is_empty() {
                wants.pop_front();
            } else {
                wanted = true;
                break;
            }
        }
        if chunk.is_empty() {
            who = procs.iter().position(|p| !p.done()).unwrap_or(0);
            if procs[who].left.is_empty() {
                // The next part of its memory to look at: what holds no data is zero there.
                let zero = procs[who].look(LOOK_PAGES).map_err(|e| (e, false))?;
                if !zero.is_empty() {
                    out = main.seal(c, procs[who].pid, zero_frame(&zero)).map_err(|e| net(e, false))?;
                    at = 0;
                }
                continue;
            }
            priority.low(true);
            let first = procs[who].left.keys().next().copied().unwrap_or(0);
            let max = if asked.is_some_and(|t| t.elapsed() < QUICK_FOR) { QUICK_FRAME_PAGES } else { FRAME_PAGES };
            chunk = take(&mut procs[who].left, first, u64::MAX, max);
        }
        let pages: u64 = chunk.iter().map(|(a, b)| (b - a) / PAGE).sum();
        // (`out` went whole: its buffer takes the next frame.)
        let frame = pages_frame(&procs[who], &chunk, std::mem::take(&mut out)).map_err(|e| (e, false))?;
        out = main.seal(c, procs[who].pid, frame).map_err(|e| net(e, false))?;
        at = 0;
        sent.pages += pages;
        if wanted {
            sent.wanted += pages;
        }
    }
}

/// The destination's side: the connections to the source, for the page server
/// (engine::lazy): the migration's own, and the second one of the pages asked for, if made.
pub struct Link {
    c: Conn<Paced>,
    urgent: Option<Conn<Paced>>,
    /// Each connection's End came (the second's, or there is none).
    ended: [bool; 2],
    /// What has come of each connection's next frame.
    parts: [Partial; 2],
    /// Bytes of Pages frames that may still come, and the limit they count against.
    room: u64,
    limit: u64,
}

impl Link {
    /// `room`: what restartd's limit (`limit`, --max-image-size) leaves of the image once its
    /// `bytes` came: the pages that follow count against it too.
    pub fn new(c: Conn<Paced>, urgent: Option<Conn<Paced>>, (limit, bytes): (u64, u64)) -> Link {
        let none = urgent.is_none();
        Link { c, urgent, ended: [false, none], parts: Default::default(), room: limit.saturating_sub(bytes), limit }
    }

    /// The next frame on the first connection or the second, once whole (see
    /// [`crate::engine::lazy::Link::next`]); with `wait`, waits for it.
    fn frame(&mut self, urgent: bool, buf: &mut Vec<u8>, wait: bool) -> Result<Option<crate::engine::lazy::Arrived>> {
        use crate::engine::lazy::Arrived;
        let c = if urgent { self.urgent.as_mut() } else { Some(&mut self.c) };
        let Some(c) = c else { return Ok(None) };
        let fd = c.s.stream().as_raw_fd();
        let part = &mut self.parts[urgent as usize];
        // (With `wait`, only once whole.)
        let Some(got) = c.recv_some(fd, part, buf, wait).map_err(Error::Net)? else {
            return Ok(Some(Arrived::NotYet));
        };
        match got {
            (Kind::Pages, n) => {
                // (What a Pages frame holds cannot be known before it comes: the image leaves
                // whole mappings to send later, holes and all.)
                self.room = self.room.checked_sub(n as u64).ok_or_else(|| {
                    Error::Refused(format!(
                        "the pages the post-copy sends exceed this restartd's limit ({} bytes with the image, --max-image-size)",
                        self.limit
                    ))
                })?;
                Ok(Some(Arrived::Pages(n)))
            }
            (Kind::Member, 4) => {
                let pid = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                if pid == 0 || pid > i32::MAX as u32 {
                    return Err(Error::Net(NetError::Protocol(format!("a Member frame of pid {pid}"))));
                }
                Ok(Some(Arrived::Member(pid as i32)))
            }
            (Kind::End, _) => {
                self.ended[urgent as usize] = true;
                Ok(None)
            }
            (k, _) => Err(Error::Net(NetError::Protocol(format!("expected Pages, Member or End, got {k:?}")))),
        }
    }
}

impl crate::engine::lazy::Link for Link {
    fn fds(&self) -> (i32, Option<i32>) {
        let u = self.urgent.as_ref().filter(|_| !self.ended[1]).map(|u| u.s.stream().as_raw_fd());
        (self.c.s.stream().as_raw_fd(), u)
    }

    fn want(&mut self, who: i32, addr: u64, len: u64) -> Result<()> {
        let mut p = [0u8; 24];
        p[..4].copy_from_slice(&(who as u32).to_le_bytes());
        p[8..16].copy_from_slice(&addr.to_le_bytes());
        p[16..].copy_from_slice(&len.to_le_bytes());
        let c = if self.ended[1] { &mut self.c } else { self.urgent.as_mut().unwrap_or(&mut self.c) };
        c.send(Kind::Want, &p).map_err(Error::Net)
    }

    fn next(&mut self, urgent: bool, buf: &mut Vec<u8>) -> Result<Option<crate::engine::lazy::Arrived>> {
        self.frame(urgent, buf, false)
    }

    fn ended(&self) -> bool {
        self.ended == [true, true]
    }

    fn all_in(&mut self) -> Result<()> {
        self.c.send(Kind::AllIn, &[]).map_err(Error::Net)?;
        // What the source sent before it read AllIn, up to its End, on each connection.
        let mut buf = Vec::new();
        for urgent in [true, false] {
            while !self.ended[urgent as usize] {
                self.frame(urgent, &mut buf, true)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page asked for again: only within what the image left to send later, whether it
    /// went already or not, and no more than asked.
    #[test]
    fn a_page_asked_again_lies_within_what_was_left_to_send() {
        let p = PAGE;
        let me = std::process::id() as i32;
        let all: BTreeMap<u64, u64> = [(10 * p, 20 * p), (30 * p, 40 * p)].into_iter().collect();
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let pagemap = Pagemap::open(me).unwrap();
        let pr = Proc { pid: me, mem, unseen: BTreeMap::new(), left: BTreeMap::new(), all, pagemap };
        assert_eq!(pr.again(15 * p, 16 * p, 1), vec![(15 * p, 16 * p)]);
        assert_eq!(pr.again(25 * p, 26 * p, 1), vec![], "between runs");
        assert_eq!(pr.again(18 * p, 33 * p, 100), vec![(18 * p, 20 * p), (30 * p, 33 * p)]);
        assert_eq!(pr.again(18 * p, 33 * p, 3), vec![(18 * p, 20 * p), (30 * p, 31 * p)]);
        assert_eq!(pr.again(5 * p, 5 * p, 1), vec![]);
        assert_eq!(pr.again(40 * p, 41 * p, 1), vec![], "past the last run");
    }

    /// The bulk looks at the smallest runs first, up to as many pages as it may, and leaves
    /// the rest of the large ones for later; pages without data go as zero.
    #[test]
    fn the_smallest_runs_are_looked_at_first() {
        let me = std::process::id() as i32;
        let len = 96 * PAGE as usize;
        let base = crate::ptrace::pagemap::tests::fresh(len);
        let b = base as u64;
        let page = |i: u64| b + i * PAGE;
        // A large run of 64 pages (every one written), a small one of 4 (the first 3 written).
        for i in (0..64).chain(80..83) {
            // SAFETY: within the mapping.
            unsafe { *((page(i)) as *mut u8) = 1 };
        }
        let all: BTreeMap<u64, u64> = [(page(0), page(64)), (page(80), page(84))].into_iter().collect();
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let pagemap = Pagemap::open(me).unwrap();
        let mut pr = Proc { pid: me, mem, unseen: all.clone(), left: BTreeMap::new(), all, pagemap };
        let zero = pr.look(10).unwrap();
        assert_eq!(zero, vec![(page(83), page(84))]);
        assert_eq!(pr.left.clone().into_iter().collect::<Vec<_>>(), vec![(page(0), page(6)), (page(80), page(83))]);
        assert_eq!(pr.unseen.clone().into_iter().collect::<Vec<_>>(), vec![(page(6), page(64))]);
        // SAFETY: our mapping, no longer used.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    }

    /// The bulk goes lower and back where the thread may raise itself again; elsewhere its
    /// priority is left alone (it could not come back).
    #[test]
    fn the_bulk_goes_lower_and_back_only_where_it_may() {
        let nice = || crate::engine::urgent::nice().unwrap();
        let base = nice();
        let mut p = Priority::new();
        p.low(true);
        let low = nice();
        p.low(false);
        assert_eq!(nice(), base);
        if may_raise_to(base) {
            assert_eq!(low, (base + BULK_NICE).min(19));
            p.low(true);
            drop(p);
            assert_eq!(nice(), base, "dropped, it is back");
        } else {
            assert_eq!(low, base);
        }
    }

    #[test]
    fn take_cuts_what_is_asked_and_keeps_the_rest() {
        let p = PAGE;
        let mut left: BTreeMap<u64, u64> = [(0, 10 * p), (20 * p, 30 * p)].into_iter().collect();
        assert_eq!(take(&mut left, 5 * p, 22 * p, 100), vec![(5 * p, 10 * p), (20 * p, 22 * p)]);
        assert_eq!(left.clone().into_iter().collect::<Vec<_>>(), vec![(0, 5 * p), (22 * p, 30 * p)]);
        assert_eq!(take(&mut left, 0, u64::MAX, 3), vec![(0, 3 * p)]);
        assert_eq!(take(&mut left, 40 * p, 50 * p, 3), vec![]);
        assert_eq!(left.into_iter().collect::<Vec<_>>(), vec![(3 * p, 5 * p), (22 * p, 30 * p)]);
    }
}
