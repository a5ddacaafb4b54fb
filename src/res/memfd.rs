//! MEMFDS: the memfds (memfd_create) the processes hold open or mapped — Wayland and systemd
//! pass buffers in them, sandboxes seal them. Nothing on disk holds them, so the image carries
//! each once, however many fds and mappings of however many processes use it: its name, its
//! permission bits, its seals, its size and the runs of data in it (holes stay holes). A
//! restore makes each again in the restorer before it creates the processes — memfd_create
//! with the same name (so fd links and /proc/PID/maps read as before), filled, its mode set,
//! then sealed as it was — and every process reopens it through /proc/self/fd for its fds and
//! mappings, as it does deleted files. Its contents count against `ckpt --deleted-max`, with
//! the deleted files'.
//!
//! Refused by name: a memfd of huge pages (MFD_HUGETLB: it would come back with small pages
//! and a different size rule), and one sealed F_SEAL_FUTURE_WRITE that a process still maps
//! writable (no new writable mapping of it can be made).

use super::fileid::FileId;
use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memfd {
    /// Its identity on the checkpointing node, as fds and mappings name it.
    pub dev: u64,
    pub ino: u64,
    /// The name memfd_create was given (the link reads "/memfd:NAME (deleted)").
    pub name: String,
    /// Its permission bits (0777, or 0666 for MFD_NOEXEC_SEAL).
    pub mode: u32,
    /// F_GET_SEALS: F_SEAL_SEAL (sealing not allowed), SHRINK, GROW, WRITE, FUTURE_WRITE, EXEC.
    pub seals: u32,
    pub size: u64,
    /// The runs of data; what lies between reads as zeros.
    pub runs: Vec<super::runs::Run>,
}

/// F_SEAL_FUTURE_WRITE and F_SEAL_EXEC (newer than the libc crate's list).
const F_SEAL_FUTURE_WRITE: u32 = 0x10;
const F_SEAL_EXEC: u32 = 0x20;
const SEALS_ALL: u32 = 0x3f;
/// memfd_create's MFD_NOEXEC_SEAL and MFD_EXEC (Linux 6.3).
const MFD_NOEXEC_SEAL: libc::c_uint = 0x8;
const MFD_EXEC: libc::c_uint = 0x10;
/// The longest name memfd_create takes (249 bytes, NAME_MAX less "memfd:").
const NAME_MAX: usize = 249;

/// The name of a memfd as an fd link or a mapping names it ("/memfd:NAME (deleted)").
pub fn name_of(link_target: &str) -> Option<&str> {
    link_target.strip_prefix("/memfd:")?.strip_suffix(" (deleted)")
}

/// Reads memfd `id` through `link` (/proc/PID/fd/N or /proc/PID/map_files/A-B), refusing past
/// `limit` bytes of data. `mapped_writable`: a process maps it MAP_SHARED and writable.
pub fn collect(link: &str, id: &FileId, limit: u64, mapped_writable: bool) -> Result<Memfd> {
    let what = format!("memfd {}", id.path);
    let f = std::fs::File::open(link).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Error::Refused(format!(
            "{what} cannot be read through {link} (reading a mapping's file needs CAP_SYS_ADMIN: run ckpt as root)"
        )),
        _ => Error::io(link, e),
    })?;
    let fd = f.as_raw_fd();
    // SAFETY: fstatfs writes one statfs into the zeroed struct we own.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` is open for the call.
    if unsafe { libc::fstatfs(fd, &mut sfs) } != 0 {
        return Err(Error::sys("fstatfs", link, Errno::last()));
    }
    if sfs.f_type == libc::HUGETLBFS_MAGIC {
        return Err(Error::Refused(format!("{what} is of huge pages (MFD_HUGETLB), which crs does not restore")));
    }
    // SAFETY: fcntl(F_GET_SEALS) takes an fd and returns an int.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(Error::sys("fcntl(F_GET_SEALS)", link, Errno::last()));
    }
    let seals = seals as u32;
    if seals & F_SEAL_FUTURE_WRITE != 0 && mapped_writable {
        return Err(Error::Refused(format!(
            "{what} is sealed F_SEAL_FUTURE_WRITE and still mapped writable: its mapping cannot be made again"
        )));
    }
    let size = f.metadata().map_err(|e| Error::io(link, e))?.len();
    let mut total = 0u64;
    let runs = super::runs::read(&f, size, link, &mut |n| {
        total += n as u64;
        if total > limit {
            return Err(Error::Refused(format!(
                "{what} holds more data than the {limit} bytes the image may still carry of deleted files and memfds (ckpt --deleted-max)"
            )));
        }
        Ok(())
    })?;
    let name = name_of(&id.path).unwrap_or(&id.path).to_string();
    Ok(Memfd { dev: id.dev, ino: id.ino, name, mode: id.mode & 0o777, seals, size, runs })
}

/// Makes `m` again here (the caller holds the image owner's file-system ids, who then owns
/// it): the same name, contents, mode and seals. Returns it open.
pub fn create_here(m: &Memfd) -> Result<OwnedFd> {
    let what = format!("memfd {}", m.name);
    let name =
        std::ffi::CString::new(m.name.as_str()).map_err(|_| Error::Refused(format!("{what}: a NUL in its name")))?;
    // Executable as it was: on a kernel whose vm.memfd_noexec makes memfds non-executable by
    // default, only MFD_EXEC keeps it so (a kernel before 6.3 knows neither flag).
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    let extra = if m.mode & 0o111 != 0 {
        MFD_EXEC
    } else if m.seals & F_SEAL_EXEC != 0 {
        MFD_NOEXEC_SEAL
    } else {
        0
    };
    // SAFETY: memfd_create reads a NUL-terminated name that lives across the call.
    let mut raw = unsafe { libc::memfd_create(name.as_ptr(), base | extra) };
    if raw < 0 && Errno::last() == Errno::EINVAL && extra == MFD_EXEC {
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if raw < 0 {
        return Err(Error::sys("memfd_create", &what, Errno::last()));
    }
    // SAFETY: `raw` was just made and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let f = std::fs::File::from(fd.try_clone().map_err(|e| Error::io(&what, e))?);
    f.set_len(m.size).map_err(|e| Error::io(&what, e))?;
    for (at, data) in &m.runs {
        f.write_all_at(data, *at).map_err(|e| Error::io(&what, e))?;
    }
    // SAFETY: fchmod takes integers.
    if unsafe { libc::fchmod(fd.as_raw_fd(), m.mode) } != 0 {
        return Err(Error::sys("fchmod", &what, Errno::last()));
    }
    if m.seals != 0 {
        // SAFETY: fcntl(F_ADD_SEALS) takes an fd and an int.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, m.seals as libc::c_int) } != 0 {
            let e = Errno::last();
            return Err(Error::not_here(
                format!("{what} cannot be sealed {:#x} as it was", m.seals),
                format!("fcntl(F_ADD_SEALS): {} (F_SEAL_EXEC needs Linux 6.3)", e.desc()),
            ));
        }
    }
    Ok(fd)
}

pub fn encode(all: &[Memfd]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for m in all {
        e.u64(m.dev).u64(m.ino).str(&m.name).u32(m.mode).u32(m.seals).u64(m.size);
        super::runs::encode(&mut e, &m.runs);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Memfd>> {
    let mut d = Dec::new(b, at, "MEMFDS");
    let n = d.count(8 + 8 + 4 + 4 + 4 + 8 + 4)?;
    let mut out: Vec<Memfd> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let (dev, ino, name, mode, seals, size) = (d.u64()?, d.u64()?, d.str()?, d.u32()?, d.u32()?, d.u64()?);
        let runs = super::runs::decode(&mut d, size)?;
        let ok = name.len() <= NAME_MAX && mode & !0o777 == 0 && seals & !SEALS_ALL == 0;
        let Some(runs) = runs.filter(|_| ok) else {
            return Err(d.bad_at(rec, format!("memfd {name}: invalid name, mode, seals or contents")));
        };
        if out.iter().any(|o| (o.dev, o.ino) == (dev, ino)) {
            return Err(d.bad_at(rec, format!("memfd {name} twice")));
        }
        out.push(Memfd { dev, ino, name, mode, seals, size, runs });
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[Memfd]) -> Vec<String> {
    let seal_names = [
        (1, "seal"),
        (2, "shrink"),
        (4, "grow"),
        (8, "write"),
        (F_SEAL_FUTURE_WRITE, "future-write"),
        (F_SEAL_EXEC, "exec"),
    ];
    all.iter()
        .map(|m| {
            let seals: Vec<&str> = seal_names.iter().filter(|s| m.seals & s.0 != 0).map(|s| s.1).collect();
            let data = super::runs::len(&m.runs);
            let sealed = if seals.is_empty() { String::new() } else { format!(", sealed {}", seals.join(",")) };
            format!("memfd:     {} mode {:o}, {} bytes ({data} of data){sealed}", m.name, m.mode, m.size)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    const CHUNK: usize = 1 << 20;

    #[test]
    fn a_sealed_sparse_memfd_round_trips_and_is_made_again() {
        assert_eq!(name_of("/memfd:buf (deleted)"), Some("buf"));
        assert_eq!(name_of("/dev/shm/x (deleted)"), None);
        let m = Memfd {
            dev: 1,
            ino: 2,
            name: "crs test".into(),
            mode: 0o600,
            seals: libc::F_SEAL_SHRINK as u32 | libc::F_SEAL_GROW as u32,
            size: 3 * CHUNK as u64,
            runs: vec![(0, vec![1; 10]), (CHUNK as u64, vec![2; CHUNK + 7])],
        };
        assert_eq!(decode(&encode(std::slice::from_ref(&m)), 0).unwrap(), vec![m.clone()]);
        let fd = create_here(&m).unwrap();
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let target = std::fs::read_link(&link).unwrap().to_string_lossy().into_owned();
        assert_eq!(target, "/memfd:crs test (deleted)");
        let id = FileId::of(&link, &target, false).unwrap();
        let back = collect(&link, &id, 1 << 30, false).unwrap();
        assert_eq!((back.seals, back.mode, back.size), (m.seals, 0o600, m.size));
        // The runs come back as the file has them: whole pages of data.
        let data: Vec<u8> = back.runs.iter().flat_map(|r| r.1.iter().copied()).collect();
        assert!(data.starts_with(&[1; 10]) && data.windows(CHUNK + 7).any(|w| w.iter().all(|&b| b == 2)));
        assert!(collect(&link, &id, 100, false).is_err());
    }
}
