//! Post-copy (migrate --post-copy): the processes run at the destination before their memory
//! is there. The image leaves out the pages of their private anonymous memory (kept runs, see
//! engine::checkpoint::PostCopy); once the destination runs them (Running), the source sends
//! them from the processes, still frozen here: process by process in address order, and first
//! those the destination asks for (Want), which a thread there waits for (engine::lazy).
//! The source's End says the last page went; the destination's AllIn that every page is in.
//! Only then is the process here killed.
//!
//! Until the source has sent its last page, the destination cannot have them all: a failure
//! (the link breaks, the destination dies, either side's timeout) leaves the process running
//! here again, and the destination kills its copy as soon as it sees the link broken or silent
//! for its --timeout: what the copy did meanwhile is lost. After the last page, a lost AllIn is
//! the same doubt as a lost Running: the process here stays stopped (see Left::StoppedHere).
//!
//! Frames: Want (destination to source) u32 pid, u32 0, u64 address, u64 length (the process
//! and the pages' addresses as the image has them); Member (source to destination) u32 pid:
//! the Pages that follow are that process's; Pages as a live migration's (engine::precopy);
//! End; AllIn.

use crate::error::{Error, Result};
use crate::net::pace::Paced;
use crate::net::{Conn, Kind, NetError};
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const PAGE: u64 = crate::crf::PAGE_SIZE as u64;
/// Most pages in one Pages frame (512 KiB).
const FRAME_PAGES: u64 = 128;
/// Most bytes the socket holds unsent while pages follow.
const NOTSENT: libc::c_int = 128 << 10;

/// What the source sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Pages sent, and of them those the destination asked for first.
    pub pages: u64,
    pub wanted: u64,
    /// From Running to AllIn.
    pub took: Duration,
}

/// Whether `fd` has something to read, within `ms` milliseconds.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one pollfd of ours.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            n if n >= 0 => return n > 0,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
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

/// The source's side, once the destination said Running: sends `runs` (start, end) of each
/// frozen process (by pid), the wanted ones first, then End, and waits for AllIn. Err with
/// whether the last page had gone (then the destination may run on with them all).
pub fn send(
    c: &mut Conn<TcpStream>,
    runs: &[(i32, Vec<(u64, u64)>)],
    timeout: Duration,
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
    // Per process: its memory, through /proc/PID/mem (it reads protected pages too, and pins
    // none), and what is left to send of it.
    let mut procs = Vec::with_capacity(runs.len());
    for (pid, r) in runs.iter().filter(|r| !r.1.is_empty()) {
        let path = format!("/proc/{pid}/mem");
        let mem = std::fs::File::open(&path).map_err(|e| (Error::io(&path, e), false))?;
        let left: BTreeMap<u64, u64> = r.iter().copied().collect();
        procs.push((*pid, mem, left));
    }
    let mut wants: std::collections::VecDeque<(i32, u64, u64)> = Default::default();
    let mut sent = Sent::default();
    let mut frame = Vec::new();
    let mut msg = Vec::new();
    let fd = c.s.as_raw_fd();
    let mut ended = false;
    // The process the destination takes Pages frames for.
    let mut member: Option<i32> = None;
    let net = |e: NetError, ended: bool| (Error::Net(e), ended);
    loop {
        // What the destination says: at once while there is something to send; once the
        // last page went, its AllIn, within the timeout.
        let wait = if ended { timeout.as_millis().clamp(1, i32::MAX as u128) as i32 } else { 0 };
        if readable(fd, wait) {
            match c.recv(&mut msg).map_err(|e| net(e, ended))? {
                Kind::Want if msg.len() == 24 => {
                    let w = |i: usize| u64::from_le_bytes(msg[i..i + 8].try_into().unwrap_or([0; 8]));
                    let pid = w(0) as u32 as i32;
                    // Whole pages (a peer's frame must not make us read past ours).
                    let (a, n) = (w(8) & !(PAGE - 1), w(16));
                    wants.push_back((pid, a, a.saturating_add(n).saturating_add(PAGE - 1) & !(PAGE - 1)));
                }
                Kind::AllIn => {
                    if !ended {
                        c.send(Kind::End, &[]).map_err(|e| net(e, true))?;
                    }
                    sent.took = t0.elapsed();
                    return Ok(sent);
                }
                k => return Err(net(NetError::Protocol(format!("expected Want or AllIn, got {k:?}")), ended)),
            }
            continue;
        }
        if ended {
            let e = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the destination did not say it had every page within {} s", timeout.as_secs()),
            );
            return Err(net(NetError::Io(e), true));
        }
        if procs.iter().all(|p| p.2.is_empty()) {
            c.send(Kind::End, &[]).map_err(|e| net(e, false))?;
            ended = true;
            continue;
        }
        let mut chunk = Vec::new();
        let mut who = 0;
        let mut wanted = false;
        while let Some(&(pid, a, b)) = wants.front() {
            if let Some(i) = procs.iter().position(|p| p.0 == pid) {
                chunk = take(&mut procs[i].2, a, b, FRAME_PAGES);
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
            who = procs.iter().position(|p| !p.2.is_empty()).unwrap_or(0);
            let first = procs[who].2.keys().next().copied().unwrap_or(0);
            chunk = take(&mut procs[who].2, first, u64::MAX, FRAME_PAGES);
        }
        let (pid, mem) = (procs[who].0, &procs[who].1);
        if member != Some(pid) {
            c.send(Kind::Member, &(pid as u32).to_le_bytes()).map_err(|e| net(e, false))?;
            member = Some(pid);
        }
        let pages: u64 = chunk.iter().map(|(a, b)| (b - a) / PAGE).sum();
        frame.clear();
        frame.extend((chunk.len() as u32).to_le_bytes());
        frame.extend(0u32.to_le_bytes());
        for &(a, b) in &chunk {
            frame.extend(a.to_le_bytes());
            frame.extend((((b - a) / PAGE) as u32).to_le_bytes());
            frame.extend(0u32.to_le_bytes());
        }
        let head = frame.len();
        frame.resize(head + (pages * PAGE) as usize, 0);
        let mut at = head;
        for &(a, b) in &chunk {
            let n = (b - a) as usize;
            std::os::unix::fs::FileExt::read_exact_at(mem, &mut frame[at..at + n], a)
                .map_err(|e| (Error::io(format!("/proc/{pid}/mem at {a:#x}"), e), false))?;
            at += n;
        }
        c.send_in_place(Kind::Pages, &mut frame).map_err(|e| net(e, false))?;
        sent.pages += pages;
        if wanted {
            sent.wanted += pages;
        }
    }
}

/// The destination's side: the connection to the source, for the page server (engine::lazy).
pub struct Link {
    c: Conn<Paced>,
    ended: bool,
}

impl Link {
    pub fn new(c: Conn<Paced>) -> Link {
        Link { c, ended: false }
    }
}

impl crate::engine::lazy::Link for Link {
    fn fd(&self) -> i32 {
        self.c.s.stream().as_raw_fd()
    }

    fn want(&mut self, who: i32, addr: u64, len: u64) -> Result<()> {
        let mut p = [0u8; 24];
        p[..4].copy_from_slice(&(who as u32).to_le_bytes());
        p[8..16].copy_from_slice(&addr.to_le_bytes());
        p[16..].copy_from_slice(&len.to_le_bytes());
        self.c.send(Kind::Want, &p).map_err(Error::Net)
    }

    fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<crate::engine::lazy::Arrived>> {
        use crate::engine::lazy::Arrived;
        match self.c.recv_into(buf).map_err(Error::Net)? {
            (Kind::Pages, n) => Ok(Some(Arrived::Pages(n))),
            (Kind::Member, 4) => {
                let pid = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                if pid == 0 || pid > i32::MAX as u32 {
                    return Err(Error::Net(NetError::Protocol(format!("a Member frame of pid {pid}"))));
                }
                Ok(Some(Arrived::Member(pid as i32)))
            }
            (Kind::End, _) => {
                self.ended = true;
                Ok(None)
            }
            (k, _) => Err(Error::Net(NetError::Protocol(format!("expected Pages, Member or End, got {k:?}")))),
        }
    }

    fn all_in(&mut self) -> Result<()> {
        self.c.send(Kind::AllIn, &[]).map_err(Error::Net)?;
        // What the source sent before it read AllIn, up to its End.
        let mut buf = Vec::new();
        while !self.ended {
            self.next(&mut buf)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
