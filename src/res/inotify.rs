//! INOTIFY: the watches of the process's inotify instances: per instance fd, every watch with
//! its descriptor (wd), its mask and the path of what it watches. The fds are FILES records
//! (KIND_INOTIFY); a restore creates them with the other fds, then adds the watches here.
//!
//! fdinfo names a watched inode only by device and file handle: crs opens the handle
//! (open_by_handle_at, which needs CAP_DAC_READ_SEARCH) on the process's mount of that device
//! and takes the path the kernel gives it. A watch whose file is gone is refused by name, as
//! are events queued and not yet read (crs cannot copy them without taking them from the
//! process). A restore gets each wd back by adding watches in wd order, removing each one that
//! comes out too low (the kernel hands out wds in turn); the IN_IGNORED events that removal
//! queues, and any event on the watched files while the restore runs, are read away before
//! the process runs.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::Ctl;
use crate::res::files::{Fd, KIND_INOTIFY};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The mask bits a watch keeps: the events, IN_EXCL_UNLINK and IN_ONESHOT.
const MASK: u32 = 0x0000_0fff | 0x0400_0000 | 0x8000_0000;
const IN_DONT_FOLLOW: u32 = 0x0200_0000;
/// The highest wd a restore reaches by adding and removing watches in turn.
const MAX_WD: i32 = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub wd: i32,
    pub mask: u32,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inotify {
    pub fd: i32,
    /// In wd order.
    pub watches: Vec<Watch>,
}

/// One fdinfo line: "inotify wd:2 ino:263 sdev:fe00000 mask:80000002 ignored_mask:0
/// fhandle-bytes:8 fhandle-type:1 f_handle:6302000000000000" (wd, sdev and mask in hex).
#[derive(Debug, PartialEq, Eq)]
pub struct Mark {
    pub wd: i32,
    pub sdev: u32,
    pub mask: u32,
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

pub fn parse(info: &str) -> Option<Vec<Mark>> {
    let mut out = Vec::new();
    for l in info.lines().filter_map(|l| l.strip_prefix("inotify ")) {
        let field = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k));
        let hex = |k: &str| field(k).and_then(|v| u64::from_str_radix(v, 16).ok());
        // No handle at all when the file system cannot make one (then `handle` is empty).
        let h = field("f_handle:").unwrap_or("");
        let handle = (0..h.len() / 2)
            .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        out.push(Mark {
            wd: hex("wd:")? as i32,
            sdev: hex("sdev:")? as u32,
            mask: hex("mask:")? as u32 & MASK,
            handle_type: hex("fhandle-type:").unwrap_or(0) as i32,
            handle,
        });
    }
    out.sort_by_key(|m| m.wd);
    Some(out)
}

/// The path of the inode behind a file handle on device `sdev` (the kernel's encoding: major
/// above bit 20), opened through process `pid`'s mount of that device; or why not.
fn resolve(pid: i32, m: &Mark) -> std::result::Result<String, String> {
    if m.handle.is_empty() {
        return Err("its file system gives no file handle, by which crs would find its path".into());
    }
    let (major, minor) = (m.sdev >> 20, m.sdev & 0xf_ffff);
    let path = format!("/proc/{pid}/mountinfo");
    let info = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // "36 35 98:0 /root /mnt rw - ext4 /dev/sda1 rw": a mount of the whole device is best.
    let mounts: Vec<(&str, &str)> = info
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.get(2)? == &format!("{major}:{minor}")).then(|| Some((*w.get(3)?, *w.get(4)?)))?
        })
        .collect();
    let (_, mount) = mounts
        .iter()
        .find(|(root, _)| *root == "/")
        .or(mounts.first())
        .ok_or_else(|| format!("no mount of its device {major}:{minor} is in the process's view"))?;
    let mount = crate::text::unescape_mountinfo(mount);
    let mount_path = format!("/proc/{pid}/root{mount}");
    let dir = nix::fcntl::open(
        mount_path.as_str(),
        // Not O_PATH: open_by_handle_at does not take one.
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("open {mount_path}: {}", e.desc()))?;
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes.
    let mut fh = Vec::with_capacity(8 + m.handle.len());
    fh.extend_from_slice(&(m.handle.len() as u32).to_le_bytes());
    fh.extend_from_slice(&m.handle_type.to_le_bytes());
    fh.extend_from_slice(&m.handle);
    let flags = libc::O_PATH | libc::O_CLOEXEC;
    // SAFETY: `fh` is a complete struct file_handle the kernel only reads; `dir` is our fd.
    let fd = unsafe { libc::syscall(libc::SYS_open_by_handle_at, dir.as_raw_fd(), fh.as_ptr(), flags) };
    if fd < 0 {
        return Err(match Errno::last() {
            Errno::EPERM => "its path can only be found with CAP_DAC_READ_SEARCH: run ckpt as root".into(),
            Errno::ESTALE | Errno::ENOENT => "the watched file is gone".into(),
            e => format!("open_by_handle_at on {mount_path}: {}", e.desc()),
        });
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| e.to_string())?;
    let p = link.to_string_lossy().into_owned();
    if p.ends_with(" (deleted)") || !p.starts_with('/') {
        return Err(format!("the watched file is gone ({p})"));
    }
    Ok(p)
}

/// The watches of every inotify instance among `fds` of process `pid`; refuses, naming each,
/// a watch whose file is gone or cannot be named, and unread events. `running`: the process
/// runs (a precheck), and an fd closed as we read, or another opened at its number, is
/// passed over here (the checkpoint reads it again frozen).
pub fn collect(pid: i32, fds: &[Fd], running: bool) -> Result<Vec<Inotify>> {
    let mut out = Vec::new();
    let mut why = Vec::new();
    for f in fds.iter().filter(|f| f.kind == KIND_INOTIFY) {
        let Some(marks) = crate::res::files::fdinfo(pid, f.fd, running, "inotify", parse)? else { continue };
        let ours = match crate::ptrace::procfs::getfd(pid, f.fd, "inotify") {
            Ok(o) => o,
            Err(Error::Sys { errno: Errno::EBADF, .. }) if running => continue,
            Err(e) => return Err(e),
        };
        // Running, the number may name another file by now.
        if running && nix::sys::stat::fstat(&ours).map_or(true, |st| st.st_ino != f.id.ino) {
            continue;
        }
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        if unsafe { libc::ioctl(ours.as_raw_fd(), libc::FIONREAD, &mut queued) } == 0 && queued > 0 {
            why.push(format!(
                "fd {} is an inotify instance with {queued} bytes of events not yet read, which crs cannot carry: checkpoint it once it has read them",
                f.fd
            ));
        }
        let mut watches = Vec::with_capacity(marks.len());
        for m in marks {
            match resolve(pid, &m) {
                Ok(path) => watches.push(Watch { wd: m.wd, mask: m.mask, path }),
                Err(e) => {
                    why.push(format!("fd {} is an inotify instance whose watch {} cannot be restored: {e}", f.fd, m.wd))
                }
            }
        }
        out.push(Inotify { fd: f.fd, watches });
    }
    Error::blocked(pid, why)?;
    Ok(out)
}

pub fn encode(all: &[Inotify]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for i in all {
        e.u32(i.fd as u32).u32(i.watches.len() as u32);
        for w in &i.watches {
            e.u32(w.wd as u32).u32(w.mask).str(&w.path);
        }
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Inotify>> {
    let mut d = Dec::new(b, at, "INOTIFY");
    let n = d.count(8)?;
    let mut out: Vec<Inotify> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let fd = d.u32()? as i32;
        let m = d.count(12)?;
        let mut watches: Vec<Watch> = Vec::with_capacity(m);
        for _ in 0..m {
            let w = Watch { wd: d.u32()? as i32, mask: d.u32()?, path: d.str()? };
            if w.wd < 1
                || w.wd > MAX_WD
                || w.mask & !MASK != 0
                || !w.path.starts_with('/')
                || watches.last().is_some_and(|p| p.wd >= w.wd)
            {
                return Err(d.bad_at(rec, format!("inotify fd {fd}: watch {} is not valid", w.wd)));
            }
            watches.push(w);
        }
        if !(0..=1 << 20).contains(&fd) || out.iter().any(|i| i.fd == fd) {
            return Err(d.bad_at(rec, format!("inotify fd {fd} is not valid")));
        }
        out.push(Inotify { fd, watches });
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[Inotify]) -> Vec<String> {
    all.iter()
        .map(|i| {
            let w: Vec<String> = i
                .watches
                .iter()
                .map(|w| format!("wd {} mask {:#x} {}", w.wd, w.mask, crate::text::printable(&w.path)))
                .collect();
            format!("inotify:   fd {} watches [{}]", i.fd, w.join(", "))
        })
        .collect()
}

/// Adds every watch to its instance (created empty with the other fds), each under its own
/// wd, then reads away the events that made.
pub fn restore(c: &mut Ctl, all: &[Inotify]) -> Result<()> {
    for i in all {
        let mut done: Vec<i32> = Vec::with_capacity(i.watches.len());
        for w in &i.watches {
            let what = format!("inotify fd {} watch {} ({})", i.fd, w.wd, w.path);
            loop {
                let r = c.inotify_add_watch_raw(i.fd, &w.path, w.mask | IN_DONT_FOLLOW)?;
                if r < 0 {
                    let e = Errno::from_raw(-r as i32);
                    return Err(match e {
                        Errno::ENOENT => Error::not_here(format!("{what}: the watched path is gone"), e.desc()),
                        Errno::EACCES => Error::Permission(format!("{what}: the image's user may not watch it")),
                        _ => Error::sys("inotify_add_watch", what, e),
                    });
                }
                let got = r as i32;
                if got == w.wd {
                    break;
                }
                if got > w.wd || done.contains(&got) {
                    return Err(Error::Refused(format!(
                        "{what}: the kernel gave wd {got}: another watch of the image names the same file"
                    )));
                }
                c.inotify_rm_watch(i.fd, got, &what)?;
            }
            done.push(w.wd);
        }
        // The removals queued IN_IGNORED events the process never asked for.
        let what = format!("inotify fd {}", i.fd);
        loop {
            let n = c.fionread(i.fd, &what)?;
            if n == 0 {
                break;
            }
            let r = c.read_discard_raw(i.fd, n as u64)?;
            if r <= 0 {
                return Err(Error::sys("read", what, Errno::from_raw(-r as i32)));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_round_trip() {
        let info = "pos:\t0\nflags:\t04000\nmnt_id:\t17\nino:\t1030\n\
            inotify wd:a ino:263 sdev:fe00000 mask:80000002 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:6302000000000000\n\
            inotify wd:1 ino:3c4a7 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000\n";
        let m = parse(info).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].wd, m[0].mask, m[0].sdev), (1, 0x300, 0xfe0_0000));
        assert_eq!((m[1].wd, m[1].mask, m[1].handle_type), (10, 0x8000_0002, 1));
        assert_eq!(m[1].handle, vec![0x63, 0x02, 0, 0, 0, 0, 0, 0]);
        let all = vec![Inotify {
            fd: 6,
            watches: vec![
                Watch { wd: 1, mask: 0x300, path: "/tmp".into() },
                Watch { wd: 10, mask: 0x8000_0002, path: "/etc/hostname".into() },
            ],
        }];
        assert_eq!(decode(&encode(&all), 0).unwrap(), all);
        let mut bad = all.clone();
        bad[0].watches.swap(0, 1);
        assert!(decode(&encode(&bad), 0).is_err());
    }
}
