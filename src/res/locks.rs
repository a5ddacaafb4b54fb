//! LOCKS: the file locks a process holds, by the fd its fdinfo shows each on: flock(2) locks
//! and open file description locks (F_OFD_SETLK), which belong to the fd's description, and
//! POSIX record locks (F_SETLK), which belong to the process; each shared or exclusive, over
//! a byte range. A restore takes each again from inside the process once its fds are back,
//! without waiting: a lock someone else took meanwhile fails the restore, naming the holder,
//! rather than let the process run believing it holds what it does not. Leases, delegations
//! and mandatory locks are refused at checkpoint.

use super::files::Fd;
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use nix::errno::Errno;

pub const FLOCK: u8 = 1;
pub const POSIX: u8 = 2;
pub const OFD: u8 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub fd: i32,
    pub kind: u8,
    pub write: bool,
    pub start: u64,
    /// The last byte locked; u64::MAX: to the end of the file, however it grows.
    pub end: u64,
}

fn kind_name(k: u8) -> &'static str {
    match k {
        FLOCK => "flock",
        POSIX => "POSIX",
        _ => "OFD",
    }
}

/// The locks of fd `fd`, from its fdinfo text; Err names one crs cannot take again.
pub fn parse(fd: i32, info: &str) -> std::result::Result<Vec<Lock>, String> {
    let mut out = Vec::new();
    for l in info.lines().filter_map(|l| l.strip_prefix("lock:")) {
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:123 0 EOF"
        let f: Vec<&str> = l.split_whitespace().collect();
        let [_, kind, how, mode, _, _, start, end, ..] = f.as_slice() else {
            return Err(format!("holds a lock its fdinfo shows as {:?}", l.trim()));
        };
        let what = format!("{kind} {mode} {start}-{end}");
        let kind = match *kind {
            "FLOCK" => FLOCK,
            "POSIX" => POSIX,
            "OFDLCK" => OFD,
            _ => return Err(format!("holds a {} ({what}), which crs does not restore", kind.to_lowercase())),
        };
        if *how != "ADVISORY" {
            return Err(format!("holds a {how} lock ({what}), which crs does not restore"));
        }
        let write = match *mode {
            "WRITE" => true,
            "READ" => false,
            _ => return Err(format!("holds a lock in mode {mode} ({what}), which crs does not restore")),
        };
        let (Ok(start), Ok(end)) =
            (start.parse::<u64>(), if *end == "EOF" { Ok(u64::MAX) } else { end.parse::<u64>() })
        else {
            return Err(format!("holds a lock whose range its fdinfo shows as {start}-{end}"));
        };
        out.push(Lock { fd, kind, write, start, end });
    }
    Ok(out)
}

/// The locks the frozen process `pid` holds on `fds`.
pub fn collect(pid: i32, fds: &[Fd]) -> Result<Vec<Lock>> {
    let mut out = Vec::new();
    for f in fds {
        let path = format!("/proc/{pid}/fdinfo/{}", f.fd);
        let info = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        out.extend(
            parse(f.fd, &info).map_err(|why| Error::Blocked { pid, reasons: vec![format!("fd {} {why}", f.fd)] })?,
        );
    }
    Ok(out)
}

/// Who holds a lock on the file of `fd` in process `pid` now, from /proc/locks.
fn holder(pid: i32, fd: i32) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) else { return "another process".into() };
    let (maj, min) = (libc::major(m.dev()), libc::minor(m.dev()));
    let key = format!("{maj:02x}:{min:02x}:{}", m.ino());
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let Some(i) = f.iter().position(|w| *w == key)
            && let Some(p) = f.get(i.wrapping_sub(1)).and_then(|p| p.parse::<i32>().ok())
            && p != pid
            && p > 0
        {
            return super::endpoints::who(p);
        }
    }
    "another process".into()
}

/// Takes every lock again, inside the restored process, its fds back already.
pub fn restore(c: &mut Ctl, locks: &[Lock], fds: &[Fd]) -> Result<()> {
    let pid = c.pid();
    for l in locks {
        let path = fds.iter().find(|f| f.fd == l.fd).map_or("?", |f| f.id.path.as_str());
        let what = format!(
            "fd {} ({path}): its {} {} lock on {}-{}",
            l.fd,
            kind_name(l.kind),
            if l.write { "write" } else { "read" },
            l.start,
            if l.end == u64::MAX { "EOF".to_string() } else { l.end.to_string() }
        );
        let r = if l.kind == FLOCK {
            let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
            c.r.raw(libc::SYS_flock, [l.fd as u64, op as u64, 0, 0, 0, 0])?
        } else {
            // struct flock: l_type, l_whence (shorts), l_start, l_len, l_pid.
            let mut e = Enc::new();
            let ty = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as u16;
            let len = if l.end == u64::MAX { 0 } else { l.end - l.start + 1 };
            e.u32(ty as u32 | (libc::SEEK_SET as u32) << 16).u32(0).u64(l.start).u64(len).u32(0).u32(0);
            let at = c.scratch.put(pid, 0, &e.into_bytes())?;
            let cmd = if l.kind == POSIX { libc::F_SETLK } else { libc::F_OFD_SETLK };
            c.r.raw(libc::SYS_fcntl, [l.fd as u64, cmd as u64, at.0, 0, 0, 0])?
        };
        if r < 0 {
            let e = Errno::from_raw(-r as i32);
            if matches!(e, Errno::EAGAIN | Errno::EACCES) {
                return Err(Error::Refused(format!(
                    "{what} is held by {} now: the restore cannot take it back (end that process first, or restore elsewhere)",
                    holder(pid, l.fd)
                )));
            }
            return Err(Error::sys(format!("taking a lock (in pid {pid})"), what, e));
        }
    }
    Ok(())
}

pub fn encode(all: &[Lock]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for l in all {
        e.u32(l.fd as u32).u8(l.kind).u8(l.write as u8).u64(l.start).u64(l.end);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Lock>> {
    let mut d = Dec::new(b, at, "LOCKS");
    let n = d.count(22)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let l = Lock { fd: d.u32()? as i32, kind: d.u8()?, write: d.u8()? != 0, start: d.u64()?, end: d.u64()? };
        if l.fd < 0 || !(FLOCK..=OFD).contains(&l.kind) || l.end < l.start || l.start > i64::MAX as u64 {
            return Err(d.bad_at(rec, format!("invalid lock (fd {}, kind {}, {}-{})", l.fd, l.kind, l.start, l.end)));
        }
        out.push(l);
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[Lock]) -> Vec<String> {
    all.iter()
        .map(|l| {
            let end = if l.end == u64::MAX { "EOF".to_string() } else { l.end.to_string() };
            let mode = if l.write { "write" } else { "read" };
            format!("lock:      fd {} {} {mode} {}-{end}", l.fd, kind_name(l.kind), l.start)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_parse_and_round_trip() {
        let info = "pos:\t0\nflags:\t02\nlock:\t1: FLOCK  ADVISORY  WRITE 12 08:01:5 0 EOF\nlock:\t2: POSIX  ADVISORY  READ 12 08:01:5 10 19\nlock:\t3: OFDLCK ADVISORY  WRITE -1 08:01:5 100 EOF\n";
        let l = parse(3, info).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[1], Lock { fd: 3, kind: POSIX, write: false, start: 10, end: 19 });
        assert_eq!(decode(&encode(&l), 0).unwrap(), l);
        let e = parse(3, "lock:\t1: LEASE  ACTIVE    READ 12 08:01:5 0 EOF\n").unwrap_err();
        assert!(e.contains("lease"), "{e}");
    }
}
