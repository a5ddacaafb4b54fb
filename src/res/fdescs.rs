//! FDESCS: open file descriptions that more than one fd holds (dup'ed fds of one process, as
//! `prog > log 2>&1` makes; fds a script's children inherited from it), which share one
//! offset and one set of status flags. Reopened once per fd, they would each get an offset of
//! their own, and two writers would overwrite each other. An epoll instance inherited across
//! a fork is one too: two would each wake on their own. Found at checkpoint with kcmp(2)
//! among the files of a kind with the same inode; each is listed once, with
//! every (pid, fd) that holds it. A restore opens it once, in the restorer, before it creates
//! the processes, which inherit it and dup it to each fd that held it.

use super::files::{self, Fd, KIND_DIR, KIND_FILE};
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desc {
    /// The first holder's FILES record: what to open, with which flags, at which offset.
    pub file: Fd,
    /// Every (pid, fd) that holds it, the first one first.
    pub holders: Vec<(i32, i32)>,
}

/// The kinds of file a description may be: an epoll instance is one too (see res::epoll).
const KINDS: [u8; 7] =
    [KIND_FILE, KIND_DIR, files::KIND_DELETED, files::KIND_MEMFD, files::KIND_TTY, files::KIND_PTS, files::KIND_EPOLL];

/// The most holders a description may list.
const MAX_HOLDERS: usize = 1 << 16;

/// How fd `a` of process `pa` and fd `b` of `pb` compare as open file descriptions: Equal
/// when they are one, else in an order kcmp(2) keeps for as long as both exist.
fn order(pa: i32, a: i32, pb: i32, b: i32) -> Result<std::cmp::Ordering> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes integers and reads nothing of ours.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pa, pb, KCMP_FILE, a as libc::c_long, b as libc::c_long) };
    let what = || format!("fd {a} of pid {pa}, fd {b} of pid {pb}");
    match r {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        r if r < 0 => Err(Error::sys("kcmp (do two fds share a file description?)", what(), Errno::last())),
        _ => Err(Error::Proc(format!("kcmp gave two files no order: {}", what()))),
    }
}

/// The descriptions more than one fd of the frozen processes holds, each process given as
/// (pid, its fds). Each fd is looked up among the descriptions found so far of its inode,
/// kept in kcmp's order: a prefork server's hundred epoll instances (all of one anonymous
/// inode) cost some seven comparisons each, not a hundred.
pub fn collect(procs: &[(i32, &[Fd])]) -> Result<Vec<Desc>> {
    let mut all: Vec<(i32, &Fd)> = Vec::new();
    for &(pid, fds) in procs {
        all.extend(fds.iter().filter(|f| KINDS.contains(&f.kind)).map(|f| (pid, f)));
    }
    // Per inode, its descriptions in kcmp's order: each the indices in `all` of its fds.
    let mut by_inode: std::collections::HashMap<(u64, u64), Vec<Vec<usize>>> = std::collections::HashMap::new();
    for (i, &(pid, f)) in all.iter().enumerate() {
        let found = by_inode.entry((f.id.dev, f.id.ino)).or_default();
        let (mut lo, mut hi) = (0, found.len());
        let mut at = None;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (rp, rf) = all[found[mid][0]];
            match order(rp, rf.fd, pid, f.fd)? {
                std::cmp::Ordering::Equal => {
                    at = Some(mid);
                    break;
                }
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        match at {
            Some(k) => found[k].push(i),
            None => found.insert(lo, vec![i]),
        }
    }
    // In the order of their first holders.
    let mut held: Vec<Vec<usize>> = by_inode.into_values().flatten().filter(|h| h.len() > 1).collect();
    held.sort_unstable_by_key(|h| h[0]);
    Ok(held
        .into_iter()
        .map(|h| Desc { file: all[h[0]].1.clone(), holders: h.iter().map(|&i| (all[i].0, all[i].1.fd)).collect() })
        .collect())
}

/// The fds (image fd, inherited fd) of process `pid` that hold one of `descs`, opened at
/// `opened` (in the same order).
pub fn held_by(pid: i32, descs: &[Desc], opened: &[i32]) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for (d, &raw) in descs.iter().zip(opened) {
        out.extend(d.holders.iter().filter(|h| h.0 == pid).map(|h| (h.1, raw)));
    }
    out
}

/// Opens description `d` here (the caller holds the image owner's file-system ids), with its
/// status flags and offset; through `via` rather than its path when given (a deleted file or
/// a memfd, made again; the job's terminal, on rstrt's).
pub fn open_here(d: &Desc, via: Option<&str>) -> Result<OwnedFd> {
    let f = &d.file;
    let what = format!("fd {} {}", f.fd, f.id.path);
    if f.kind == files::KIND_EPOLL {
        // Its registrations are made by the processes, once their fds exist (res::epoll).
        // SAFETY: epoll_create1 takes a flag and returns a new fd, ours alone.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(Error::sys("epoll_create1", what, Errno::last()));
        }
        // SAFETY: `raw` was just made and is ours alone.
        return Ok(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    if matches!(f.kind, files::KIND_DELETED | files::KIND_MEMFD | files::KIND_TTY | files::KIND_PTS) && via.is_none() {
        return Err(Error::Refused(format!("{what}: the image does not hold this file: it is damaged")));
    }
    let reopen = files::reopen_flags(f.flags);
    let flags = reopen as i32 | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let path = std::ffi::CString::new(via.unwrap_or(&f.id.path))
        .map_err(|_| Error::Refused(format!("{what}: a NUL in it")))?;
    // SAFETY: open reads a NUL-terminated path that lives across the call.
    let raw = unsafe { libc::open(path.as_ptr(), flags) };
    if raw < 0 {
        let e = Errno::last();
        return Err(match e {
            Errno::EACCES | Errno::EPERM => Error::Permission(format!(
                "the image's {what} cannot be reopened as its owner: {} (opened with privileges the process dropped since, or its mode changed): give its owner access to it, and restore again",
                e.desc()
            )),
            e => Error::sys("open", what, e),
        });
    }
    // SAFETY: `raw` was just opened and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: fcntl and lseek take integers, on our own fd.
    unsafe {
        if files::settable(reopen) && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, reopen as libc::c_int) < 0 {
            return Err(Error::sys("fcntl(F_SETFL)", what, Errno::last()));
        }
        if f.pos > 0 && libc::lseek(fd.as_raw_fd(), f.pos as libc::off_t, libc::SEEK_SET) < 0 {
            return Err(Error::sys("lseek", what, Errno::last()));
        }
    }
    Ok(fd)
}

pub fn encode(all: &[Desc]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for d in all {
        files::encode_one(&mut e, &d.file);
        e.u32(d.holders.len() as u32);
        for &(pid, fd) in &d.holders {
            e.u32(pid as u32).u32(fd as u32);
        }
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Desc>> {
    let mut d = Dec::new(b, at, "FDESCS");
    let n = d.count(18 + 4 + 16)?;
    let mut out: Vec<Desc> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let file = files::decode_one(&mut d)?;
        let m = d.count(8)?;
        if !(2..=MAX_HOLDERS).contains(&m) || !KINDS.contains(&file.kind) {
            return Err(d.bad_at(rec, format!("a description of kind {} held {m} times", file.kind)));
        }
        let mut holders: Vec<(i32, i32)> = Vec::with_capacity(m);
        for _ in 0..m {
            let h = (d.u32()? as i32, d.u32()? as i32);
            // An fd holds one description.
            if h.0 <= 0 || h.1 < 0 || holders.contains(&h) || out.iter().any(|o| o.holders.contains(&h)) {
                return Err(d.bad_at(rec, format!("fd {} of pid {} held twice or invalid", h.1, h.0)));
            }
            holders.push(h);
        }
        out.push(Desc { file, holders });
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[Desc]) -> Vec<String> {
    all.iter()
        .map(|d| {
            let by: Vec<String> = d.holders.iter().map(|(p, f)| format!("pid {p} fd {f}")).collect();
            format!(
                "shared:    {} flags {:#o} pos {}, held by {}",
                d.file.id.path,
                d.file.flags,
                d.file.pos,
                by.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_of_one_inode_are_told_apart() {
        use std::os::unix::fs::MetadataExt;
        let path = std::env::temp_dir().join(format!("fdescs-order.{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        let me = std::process::id() as i32;
        // The file opened five times, two of those dup'ed twice and once.
        let opened: Vec<std::fs::File> = (0..5).map(|_| std::fs::File::open(&path).unwrap()).collect();
        let dups = [
            nix::unistd::dup(&opened[1]).unwrap(),
            nix::unistd::dup(&opened[1]).unwrap(),
            nix::unistd::dup(&opened[3]).unwrap(),
        ];
        let md = std::fs::metadata(&path).unwrap();
        let fd = |n: i32| Fd {
            fd: n,
            kind: KIND_FILE,
            flags: 0,
            cloexec: false,
            pos: 0,
            id: crate::res::fileid::FileId { dev: md.dev(), ino: md.ino(), ..Default::default() },
        };
        let mut fds: Vec<Fd> = opened.iter().map(|f| fd(f.as_raw_fd())).collect();
        fds.extend(dups.iter().map(|d| fd(d.as_raw_fd())));
        let found = collect(&[(me, &fds)]).unwrap();
        let _ = std::fs::remove_file(&path);
        let holders = |f: &std::fs::File, more: &[&OwnedFd]| {
            let mut h = vec![(me, f.as_raw_fd())];
            h.extend(more.iter().map(|d| (me, d.as_raw_fd())));
            h
        };
        let want = vec![holders(&opened[1], &[&dups[0], &dups[1]]), holders(&opened[3], &[&dups[2]])];
        assert_eq!(found.iter().map(|d| d.holders.clone()).collect::<Vec<_>>(), want);
    }

    #[test]
    fn round_trip_and_a_dup_found_by_kcmp() {
        let f = std::fs::File::create(std::env::temp_dir().join(format!("fdescs.{}", std::process::id()))).unwrap();
        let dup = nix::unistd::dup(&f).unwrap();
        let me = std::process::id() as i32;
        let fds = files::scan(me, &files::Stubs::default(), &[], Default::default());
        // The harness may hold fds scan refuses; then only the codec is checked.
        if let Ok(fds) = fds {
            let found = collect(&[(me, &fds)]).unwrap();
            let ours = found.iter().find(|d| d.holders.contains(&(me, f.as_raw_fd()))).expect("the dup");
            assert!(ours.holders.contains(&(me, dup.as_raw_fd())), "{ours:?}");
        }
        let d = Desc {
            file: Fd {
                fd: 1,
                kind: KIND_FILE,
                flags: 1,
                cloexec: false,
                pos: 9,
                id: crate::res::fileid::FileId { path: "/tmp/log".into(), ..Default::default() },
            },
            holders: vec![(10, 1), (10, 2), (11, 1)],
        };
        assert_eq!(decode(&encode(std::slice::from_ref(&d)), 0).unwrap(), vec![d.clone()]);
        let mut twice = d.clone();
        twice.holders.push((10, 2));
        assert!(decode(&encode(&[twice]), 0).is_err());
    }
}
