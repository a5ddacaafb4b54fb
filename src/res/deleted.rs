//! DELETED: files that were unlinked while the processes still had them open or mapped (a
//! temporary file, a POSIX semaphore or shared memory object in /dev/shm after sem_unlink or
//! shm_unlink: Python's multiprocessing makes such semaphores). Nothing on disk names them any
//! more, so the image carries their contents, up to a limit, once per file however many fds
//! and mappings of however many processes use it. A restore makes each again, in the
//! restorer, before it creates the processes: under its old name when that is free (so
//! /proc/PID/maps and fd links read as before, "(deleted)" included), filled, then unlinked;
//! every process inherits it and reopens it through /proc/self/fd for its fds and mappings.

use super::fileid::FileId;
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// Its identity on the checkpointing node, as fds and mappings name it.
    pub dev: u64,
    pub ino: u64,
    /// Its path when it was unlinked (without " (deleted)").
    pub path: String,
    /// Its permission bits and sticky bit: a set-user-ID or set-group-ID bit is not carried
    /// (the restorer, root, would make such a file for an image).
    pub mode: u32,
    pub data: Vec<u8>,
}

/// The most the image carries of deleted files, all together (one section).
pub const MAX_TOTAL: u64 = 48 << 20;
/// A chunk of contents (a CRF byte field holds at most 1 MiB).
const CHUNK: usize = 1 << 20;

/// The path a link to a deleted file names, without its " (deleted)".
pub fn unlinked(name: &str) -> Option<&str> {
    let p = name.strip_suffix(" (deleted)")?;
    let special = p.starts_with("/SYSV") || p.starts_with("/memfd:") || p == "/dev/zero" || !p.starts_with('/');
    (!special).then_some(p)
}

/// Reads deleted file `path` (as it was named) through `link` (/proc/PID/fd/N or
/// /proc/PID/map_files/A-B), refusing past `limit` bytes.
pub fn collect(link: &str, path: &str, limit: u64) -> Result<Deleted> {
    let mut f = std::fs::File::open(link).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Error::Refused(format!(
            "deleted file {path} cannot be read through {link} (reading a mapping's file needs CAP_SYS_ADMIN: run ckpt as root)"
        )),
        _ => Error::io(link, e),
    })?;
    let id = FileId::of(link, path, false).map_err(|e| Error::io(link, e))?;
    if id.file_type() != libc::S_IFREG {
        return Err(Error::Refused(format!("deleted {path} is not a regular file")));
    }
    if id.size > limit {
        return Err(Error::Refused(format!(
            "deleted file {path} holds {} bytes, more than the {limit} the image may carry of deleted files (ckpt --deleted-max)",
            id.size
        )));
    }
    let mut data = Vec::with_capacity(id.size as usize);
    f.read_to_end(&mut data).map_err(|e| Error::io(link, e))?;
    Ok(Deleted { dev: id.dev, ino: id.ino, path: path.to_string(), mode: id.mode & 0o1777, data })
}

/// Makes `d` again here (the caller holds the image owner's file-system ids): under its old
/// name when that is free, else beside it; filled and unlinked. Returns the open file, and the
/// name it had when that is not the old one.
pub fn create_here(d: &Deleted) -> Result<(OwnedFd, Option<String>)> {
    let dir = std::path::Path::new(&d.path).parent().map(|p| p.to_path_buf()).unwrap_or_default();
    if !dir.is_dir() {
        return Err(Error::not_here(
            format!("deleted file {} cannot be made again", d.path),
            format!("its directory {} is not here", dir.display()),
        ));
    }
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let mut name = d.path.clone();
    let mut other = None;
    let mut raw = -1;
    for n in 0..100 {
        if n > 0 {
            name = format!("{}.crs{}-{n}", d.path, std::process::id());
            other = Some(name.clone());
        }
        let c = std::ffi::CString::new(name.as_str())
            .map_err(|_| Error::Refused(format!("deleted file {}: a NUL in its name", d.path)))?;
        // SAFETY: open reads a NUL-terminated path that lives across the call.
        raw = unsafe { libc::open(c.as_ptr(), flags, d.mode as libc::c_uint) };
        if raw >= 0 || Errno::last() != Errno::EEXIST {
            break;
        }
    }
    if raw < 0 {
        return Err(Error::sys("open (making a deleted file again)", &name, Errno::last()));
    }
    // SAFETY: `raw` was just opened and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let unlinked = std::fs::remove_file(&name).map_err(|e| Error::io(&name, e));
    let f = std::fs::File::from(fd.try_clone().map_err(|e| Error::io(&name, e))?);
    unlinked?;
    std::io::Write::write_all(&mut &f, &d.data).map_err(|e| Error::io(&name, e))?;
    // SAFETY: fchmod takes integers: the mode the umask may have cut.
    if unsafe { libc::fchmod(fd.as_raw_fd(), d.mode) } != 0 {
        return Err(Error::sys("fchmod", &name, Errno::last()));
    }
    Ok((fd, other))
}

pub fn encode(all: &[Deleted]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for d in all {
        e.u64(d.dev).u64(d.ino).str(&d.path).u32(d.mode).u64(d.data.len() as u64);
        let chunks = d.data.chunks(CHUNK);
        e.u32(chunks.len() as u32);
        for c in chunks {
            e.bytes(c);
        }
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Deleted>> {
    let mut d = Dec::new(b, at, "DELETED");
    let n = d.count(8 + 8 + 4 + 4 + 8 + 4)?;
    let mut out: Vec<Deleted> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let (dev, ino, path, mode, len) = (d.u64()?, d.u64()?, d.str()?, d.u32()?, d.u64()?);
        let m = d.count(4)?;
        let mut data = Vec::new();
        for _ in 0..m {
            data.extend_from_slice(d.bytes()?);
        }
        if data.len() as u64 != len || !path.starts_with('/') || mode & !0o1777 != 0 {
            return Err(d.bad_at(rec, format!("deleted file {path}: {len} bytes said, {} found", data.len())));
        }
        if out.iter().any(|o| (o.dev, o.ino) == (dev, ino)) {
            return Err(d.bad_at(rec, format!("deleted file {path} twice")));
        }
        out.push(Deleted { dev, ino, path, mode, data });
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[Deleted]) -> Vec<String> {
    all.iter().map(|d| format!("deleted:   {} mode {:o}, {} bytes", d.path, d.mode, d.data.len())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_a_file_made_again() {
        assert_eq!(unlinked("/dev/shm/sem.x (deleted)"), Some("/dev/shm/sem.x"));
        assert_eq!(unlinked("/dev/zero (deleted)"), None);
        assert_eq!(unlinked("/memfd:x (deleted)"), None);
        assert_eq!(unlinked("/tmp/a"), None);
        let dir = std::env::temp_dir().join(format!("deleted.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = Deleted {
            dev: 1,
            ino: 2,
            path: dir.join("gone").to_string_lossy().into_owned(),
            mode: 0o640,
            data: vec![7; CHUNK + 5],
        };
        assert_eq!(decode(&encode(std::slice::from_ref(&d)), 0).unwrap(), vec![d.clone()]);
        let (fd, other) = create_here(&d).unwrap();
        assert!(other.is_none() && !std::path::Path::new(&d.path).exists());
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        assert_eq!(std::fs::read_link(&link).unwrap().to_string_lossy(), format!("{} (deleted)", d.path));
        let back = collect(&link, &d.path, MAX_TOTAL).unwrap();
        assert_eq!((back.data.len(), back.mode), (d.data.len(), 0o640));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
