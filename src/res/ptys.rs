//! PTYS: pseudo-terminal pairs the checkpoint holds whole: a process of the tree holds the
//! master (a tmux or screen server, `script`, an expect-like driver), and every process that
//! holds the slave open or has it as its controlling terminal is in the tree too.
//!
//! Each pair is carried once, with the slave's modes and window size, the session it is the
//! controlling terminal of and that session's foreground group, and the bytes in flight both
//! ways: typed into the master and not yet read from the slave, written to the slave and not
//! yet read from the master. Those are read out of the frozen pair (the slave switched to raw
//! mode meanwhile, so that a line not yet ended is read too) and, when the processes run on,
//! written back the same way.
//!
//! A restore opens /dev/ptmx until it gets the pair's number (holding the lower free ones
//! meanwhile), or says which number it got when that one is taken; fills the pair; and gives
//! the session leader its controlling terminal before it forks its children, who inherit it.
//! Input typed but not yet read comes back readable as it was, except that in canonical mode
//! a line not yet ended becomes readable at once, as if ended (the kernel offers no way to
//! put it back half-typed).

use super::terminal::{self, Modes};
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::procfs;
use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The major number of every pty slave (devpts).
const SLAVE_MAJOR: u32 = 136;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pty {
    /// Its number: the slave is /dev/pts/N.
    pub index: u32,
    pub modes: Modes,
    /// The image's pid of the session leader it is the controlling terminal of (0: none).
    pub session: i32,
    /// That session's foreground process group (the image's pid; 0: none).
    pub foreground: i32,
    /// Written to the master, not yet read from the slave.
    pub input: Vec<u8>,
    /// Written to the slave, not yet read from the master.
    pub output: Vec<u8>,
}

/// Whether an fd whose /proc link reads `target` is a pty master.
pub fn is_master(target: &str) -> bool {
    target == "/dev/ptmx" || target == "/dev/pts/ptmx"
}

/// A master's pty number, from its fdinfo.
pub fn master_index(info: &str) -> Option<u32> {
    procfs::status_field(info, "tty-index")?.parse().ok()
}

/// A slave's pty number, from its device number.
pub fn slave_index(rdev: u64) -> Option<u32> {
    (libc::major(rdev) == SLAVE_MAJOR).then(|| libc::minor(rdev))
}

/// A pty pair: the devpts instance its slave lives in (st_dev: a container's /dev/pts is
/// another than the host's) and its number there.
pub type PtyId = (u64, u32);

/// The pair of master fd `fd` of process `pid`: its slave looked at (TIOCGPTPEER with
/// O_PATH: not opened as a terminal) through a copy of the fd. None when crs may not take it.
pub fn master_id(pid: i32, fd: i32) -> Option<PtyId> {
    let m = procfs::getfd(pid, fd, "a pty master").ok()?;
    let flags = libc::O_PATH | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as its argument and returns a new fd.
    let fd = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd nobody else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = nix::sys::stat::fstat(&slave).ok()?;
    slave_index(st.st_rdev).map(|n| (st.st_dev, n))
}

/// The pty masters process `pid` holds: (fd, pair).
fn masters_of(pid: i32) -> Vec<(i32, PtyId)> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if !std::fs::read_link(e.path()).is_ok_and(|t| t.to_str().is_some_and(is_master)) {
            continue;
        }
        out.extend(master_id(pid, fd).map(|id| (fd, id)));
    }
    out
}

/// The pairs whose master one of `tree` holds.
pub fn masters(tree: &[i32]) -> Vec<PtyId> {
    let mut out: Vec<PtyId> = tree.iter().flat_map(|&p| masters_of(p)).map(|m| m.1).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether the slave `/dev/pts/N` that process `pid` sees (in its mount namespace) is in
/// devpts instance `dev`; true when that cannot be told (a conflict is then assumed).
fn sees(pid: i32, dev: u64, n: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/root/dev/pts/{n}")).map_or(true, |m| m.dev() == dev)
}

/// Why the pairs `ptys` (whose masters `tree` holds) are not the checkpoint's alone:
/// processes outside it that hold either end or have the slave as controlling terminal (in
/// the same devpts instance: pty 0 of a container's /dev/pts is not the host's).
pub fn outside(tree: &[i32], ptys: &[PtyId]) -> Vec<String> {
    let mut why = Vec::new();
    if ptys.is_empty() {
        return why;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return why };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if tree.contains(&pid) {
            continue;
        }
        let who = super::endpoints::who(pid);
        let ctty = terminal::controlling(pid).and_then(slave_index);
        if let Some(n) = ctty.filter(|&n| ptys.iter().any(|&(d, m)| m == n && sees(pid, d, n))) {
            why.push(format!("pty {n} (/dev/pts/{n}) is the controlling terminal of {who}, outside the checkpoint"));
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        let mut named = Vec::new();
        for f in fds.flatten() {
            let Ok(target) = std::fs::read_link(f.path()) else { continue };
            let Some(target) = target.to_str() else { continue };
            let index = |n: u32| ptys.iter().any(|p| p.1 == n);
            let id = match target.strip_prefix("/dev/pts/").and_then(|n| n.parse::<u32>().ok()) {
                Some(n) if index(n) => {
                    use std::os::unix::fs::MetadataExt;
                    // The slave's own instance (its st_dev); unknown: the first pair of its number.
                    let dev = std::fs::metadata(f.path()).map(|m| m.dev()).ok();
                    dev.map(|d| (d, n)).or_else(|| ptys.iter().copied().find(|p| p.1 == n))
                }
                None if is_master(target) => {
                    let fd = f.file_name().to_string_lossy().parse::<i32>().unwrap_or(-1);
                    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
                    match master_index(&info).filter(|&n| index(n)) {
                        Some(n) => master_id(pid, fd).or_else(|| ptys.iter().copied().find(|p| p.1 == n)),
                        None => None,
                    }
                }
                _ => None,
            };
            if let Some(id) = id.filter(|id| ptys.contains(id) && !named.contains(id)) {
                named.push(id);
                let n = id.1;
                why.push(format!("pty {n} (/dev/pts/{n}) is open in {who} too, outside the checkpoint"));
            }
        }
    }
    why
}

/// A frozen pair whose bytes in flight were read out: written back (`put_back`) when the
/// processes run on.
pub struct Drained {
    master: OwnedFd,
    slave: OwnedFd,
    pty: Pty,
}

impl Drained {
    /// Puts the bytes back where they were, the modes as they were.
    pub fn put_back(&self) -> Result<()> {
        fill(self.master.as_raw_fd(), self.slave.as_raw_fd(), &self.pty, false)
    }
}

fn ioctl_int(fd: RawFd, req: libc::c_ulong, call: &str, what: &str) -> Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int into `v`, which we own.
    if unsafe { libc::ioctl(fd, req, &mut v) } != 0 {
        return Err(Error::sys(call, what, Errno::last()));
    }
    Ok(v)
}

/// The slave of master `fd`, opened without taking it as a controlling terminal.
fn peer(master: RawFd, what: &str) -> Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags as its argument and returns a new fd.
    let fd = unsafe { libc::ioctl(master, libc::TIOCGPTPEER, flags) };
    if fd < 0 {
        return Err(Error::sys("ioctl(TIOCGPTPEER)", what, Errno::last()));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the pairs whose masters `holders` hold ((pid, fd, number), the processes frozen),
/// of the processes `members` ((pid, pgid, sid)). Each pair read out is pushed on `drained`
/// first, so that the caller puts its bytes back whatever happens next.
pub fn collect(
    holders: &[(i32, i32, u32)],
    members: &[(i32, i32, i32)],
    drained: &mut Vec<Drained>,
) -> Result<Vec<Pty>> {
    let mut out: Vec<Pty> = Vec::new();
    for &(pid, fd, index) in holders {
        if out.iter().any(|p| p.index == index) {
            continue;
        }
        let what = format!("pty {index} (fd {fd} of pid {pid})");
        let master = procfs::getfd(pid, fd, &what)?;
        if ioctl_int(master.as_raw_fd(), libc::TIOCGPKT, "ioctl(TIOCGPKT)", &what)? != 0 {
            return Err(Error::Refused(format!("{what} is in packet mode (TIOCPKT), which crs does not restore")));
        }
        if ioctl_int(master.as_raw_fd(), libc::TIOCGPTLCK, "ioctl(TIOCGPTLCK)", &what)? != 0 {
            return Err(Error::Refused(format!("{what} is still locked: its slave was never unlocked (unlockpt)")));
        }
        let slave = peer(master.as_raw_fd(), &what)?;
        let modes = Modes::read(slave.as_raw_fd(), &what)?;
        let st = nix::sys::stat::fstat(&slave).map_err(|e| Error::sys("fstat", what.as_str(), e))?;
        // The session it is the controlling terminal of: its leader must be in the tree.
        let mut session = 0;
        for &(m, _, sid) in members {
            if terminal::controlling(m) != Some(st.st_rdev) {
                continue;
            }
            if !members.iter().any(|x| x.0 == sid) {
                return Err(Error::Refused(format!(
                    "{what} is the controlling terminal of pid {m}, whose session leader (pid {sid}) is not in the checkpoint"
                )));
            }
            session = sid;
        }
        // Its foreground group (the master may ask), when it is one of the tree's.
        let fg = ioctl_int(master.as_raw_fd(), libc::TIOCGPGRP, "ioctl(TIOCGPGRP)", &what).unwrap_or(0);
        let foreground = if session != 0 && members.iter().any(|x| x.1 == fg) { fg } else { 0 };
        let mut pty = Pty { index, modes, session, foreground, ..Default::default() };
        // The bytes in flight, the slave raw meanwhile (a line not yet ended is read too).
        modes.raw().set(slave.as_raw_fd(), &what)?;
        let read = drain(slave.as_raw_fd(), &what).and_then(|input| Ok((input, drain(master.as_raw_fd(), &what)?)));
        let back = modes.set(slave.as_raw_fd(), &what);
        let (input, output) = read?;
        back?;
        (pty.input, pty.output) = (input, output);
        drained.push(Drained { master, slave, pty: pty.clone() });
        out.push(pty);
    }
    Ok(out)
}

/// Everything `fd` has to read now (FIONREAD tells how much, so no read waits).
fn drain(fd: RawFd, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let n = ioctl_int(fd, libc::FIONREAD, "ioctl(FIONREAD)", what)?;
        if n <= 0 {
            return Ok(out);
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: `buf` has room for n bytes.
        let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match got {
            0 => return Ok(out),
            g if g > 0 => out.extend_from_slice(&buf[..g as usize]),
            _ if Errno::last() == Errno::EAGAIN => return Ok(out),
            _ => return Err(Error::sys("read", what, Errno::last())),
        }
    }
}

fn write_all(fd: RawFd, mut b: &[u8], what: &str) -> Result<()> {
    let t0 = std::time::Instant::now();
    while !b.is_empty() {
        // SAFETY: `b` is valid for its length.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n > 0 {
            b = &b[n as usize..];
        } else if n < 0 && Errno::last() == Errno::EAGAIN && t0.elapsed().as_secs() < 2 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        } else {
            return Err(Error::sys("write", what, Errno::last()));
        }
    }
    Ok(())
}

/// Puts `p`'s bytes in flight into the pair (`master`, `slave`), which is raw meanwhile, then
/// gives the slave `p`'s modes (and window size, with `winsize`).
fn fill(master: RawFd, slave: RawFd, p: &Pty, winsize: bool) -> Result<()> {
    let what = format!("pty {}", p.index);
    p.modes.raw().set(slave, &what)?;
    // The modes come back whatever happens to the bytes.
    let r = put(master, slave, p, &what);
    p.modes.set(slave, &what)?;
    r?;
    if winsize {
        p.modes.set_winsize(slave, &what)?;
    }
    Ok(())
}

/// Writes `p`'s bytes into the raw pair and waits until they are in.
fn put(master: RawFd, slave: RawFd, p: &Pty, what: &str) -> Result<()> {
    write_all(master, &p.input, what)?;
    write_all(slave, &p.output, what)?;
    // The kernel passes them on asynchronously: they must be in before the modes change.
    let t0 = std::time::Instant::now();
    loop {
        let inn = ioctl_int(slave, libc::FIONREAD, "ioctl(FIONREAD)", what)?;
        let out = ioctl_int(master, libc::FIONREAD, "ioctl(FIONREAD)", what)?;
        if inn as usize >= p.input.len() && out as usize >= p.output.len() {
            return Ok(());
        }
        if t0.elapsed().as_secs() >= 2 {
            return Err(Error::Proc(format!("{what}: the bytes written back did not arrive")));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A pair made again by the restorer.
pub struct Made {
    /// The image's number for it.
    pub index: u32,
    pub master: OwnedFd,
    /// Held until the processes have their own (a pair whose slave no one holds reads EIO).
    pub slave: OwnedFd,
    /// Its slave's path here.
    pub path: String,
}

/// Opens /dev/ptmx (the caller holds the image owner's file-system ids, who then owns the
/// slave).
fn open_ptmx() -> Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: open reads a NUL-terminated literal.
    let fd = unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::sys("open", "/dev/ptmx", Errno::last()));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes every pair of `ptys` again, each with its number when that is free here (otherwise
/// said in `notes`), filled with its bytes in flight and given its modes and window size.
pub fn create_here(ptys: &[Pty], notes: &mut Vec<String>) -> Result<Vec<Made>> {
    let mut order: Vec<&Pty> = ptys.iter().collect();
    order.sort_by_key(|p| p.index);
    // The lower free numbers, held while a higher one is sought (the kernel gives the lowest).
    let mut spare: Vec<OwnedFd> = Vec::new();
    let mut out = Vec::new();
    for p in order {
        let (master, got) = loop {
            let (m, last) = match open_ptmx() {
                Ok(m) => (m, false),
                // Out of fds (or ptys) while seeking: the highest one held will do.
                Err(e) => match spare.pop() {
                    Some(m) => (m, true),
                    None => return Err(e),
                },
            };
            let got = ioctl_int(m.as_raw_fd(), libc::TIOCGPTN, "ioctl(TIOCGPTN)", "/dev/ptmx")? as u32;
            if got < p.index && spare.len() < 512 && !last {
                spare.push(m);
                continue;
            }
            break (m, got);
        };
        if got != p.index {
            notes.push(format!("pty {} is in use here: it is pty {got} (/dev/pts/{got})", p.index));
        }
        let what = format!("pty {got}");
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads one int, which lives across the call.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
            return Err(Error::sys("ioctl(TIOCSPTLCK)", what, Errno::last()));
        }
        let slave = peer(master.as_raw_fd(), &what)?;
        fill(master.as_raw_fd(), slave.as_raw_fd(), p, true)?;
        out.push(Made { index: p.index, master, slave, path: format!("/dev/pts/{got}") });
    }
    Ok(out)
}

pub fn encode(all: &[Pty]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for p in all {
        e.u32(p.index);
        p.modes.encode(&mut e);
        e.u32(p.session as u32).u32(p.foreground as u32).bytes(&p.input).bytes(&p.output);
    }
    e.into_bytes()
}

/// The most bytes a pty holds in flight one way (the n_tty buffer, with room to spare).
const MAX_IN_FLIGHT: usize = 1 << 16;

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Pty>> {
    let mut d = Dec::new(b, at, "PTYS");
    let n = d.count(4 + 52 + 8 + 8)?;
    let mut out: Vec<Pty> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let index = d.u32()?;
        let modes = Modes::decode(&mut d)?;
        let p = Pty {
            index,
            modes,
            session: d.u32()? as i32,
            foreground: d.u32()? as i32,
            input: d.bytes()?.to_vec(),
            output: d.bytes()?.to_vec(),
        };
        if index >= 1 << 20
            || out.iter().any(|o| o.index == index)
            || p.session < 0
            || p.foreground < 0
            || (p.session == 0 && p.foreground != 0)
            || p.input.len() > MAX_IN_FLIGHT
            || p.output.len() > MAX_IN_FLIGHT
        {
            return Err(d.bad_at(rec, format!("invalid pty record (pty {index})")));
        }
        out.push(p);
    }
    d.finish()?;
    Ok(out)
}

pub fn describe(all: &[Pty]) -> Vec<String> {
    all.iter()
        .map(|p| {
            let session = match p.session {
                0 => String::new(),
                s => format!(", terminal of session {s} (foreground group {})", p.foreground),
            };
            format!(
                "pty:       /dev/pts/{} ({}){session}, {} bytes typed and {} shown unread",
                p.index,
                p.modes.describe(),
                p.input.len(),
                p.output.len()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_round_trips_with_its_bytes_in_flight() {
        let mut notes = Vec::new();
        // A pair of our own, with bytes both ways, read out as a checkpoint would.
        let m = open_ptmx().unwrap();
        let unlock: libc::c_int = 0;
        // SAFETY: as in create_here.
        assert_eq!(unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSPTLCK, &unlock) }, 0);
        let s = peer(m.as_raw_fd(), "test").unwrap();
        let modes = Modes::read(s.as_raw_fd(), "test").unwrap();
        write_all(m.as_raw_fd(), b"typed, no newline", "test").unwrap();
        write_all(s.as_raw_fd(), b"shown\r\n", "test").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        modes.raw().set(s.as_raw_fd(), "test").unwrap();
        let input = drain(s.as_raw_fd(), "test").unwrap();
        let output = drain(m.as_raw_fd(), "test").unwrap();
        modes.set(s.as_raw_fd(), "test").unwrap();
        assert_eq!(input, b"typed, no newline");
        // The output as the slave's modes made it (ONLCR), and the echo of what was typed.
        let has = |b: &[u8]| output.windows(b.len()).any(|w| w == b);
        assert!(has(b"shown\r\r\n") && has(b"typed, no newline"), "{output:?}");
        let p = Pty { index: 7, modes, session: 0, foreground: 0, input, output: output.clone() };
        assert_eq!(decode(&encode(std::slice::from_ref(&p)), 0).unwrap(), vec![p.clone()]);
        // Made again: the same bytes wait on each side.
        let made = create_here(std::slice::from_ref(&p), &mut notes).unwrap();
        let (m2, s2) = (made[0].master.as_raw_fd(), made[0].slave.as_raw_fd());
        p.modes.raw().set(s2, "test").unwrap();
        assert_eq!(drain(s2, "test").unwrap(), b"typed, no newline");
        assert_eq!(drain(m2, "test").unwrap(), output);
    }
}
