//! TREESHM: MAP_SHARED anonymous memory that more than one process of the tree maps (what a
//! fork leaves shared: nginx's zones, a pre-forked server's scoreboard, a parent and its
//! workers' counters). Each such object is listed once, with its size; each mapping of it
//! carries VMA_TREE_SHM and the object's identity (`file.dev`, `file.ino`), and its pages
//! come with the first process that has them (a later one's leave out what an earlier one
//! stored: engine::checkpoint::write). A restore makes each object in the restorer
//! before the processes exist (MAP_SHARED anonymous memory of its own, taken as a file through
//! /proc/self/map_files, so it reads "/dev/zero (deleted)" as before), and every mapping of it
//! maps that file: the processes share it again.

use super::fileid::FileId;
use super::image::ProcessState;
use super::memory::{KIND_SHMEM, VMA_TREE_SHM};
use crate::crf::{Dec, Enc, PAGE_SIZE, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::os::fd::{FromRawFd, OwnedFd};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obj {
    pub dev: u64,
    pub ino: u64,
    /// Bytes: enough for every mapping of it (its offset plus its length).
    pub size: u64,
}

/// The most one object may be (the image's processes map it; a restore makes it first).
pub const MAX_SIZE: u64 = 1 << 46;

/// Finds the shared anonymous memory more than one of the frozen processes maps, marks each
/// of their mappings of it, and returns the objects.
pub fn collect(states: &mut [ProcessState]) -> Result<Vec<Obj>> {
    // (dev, ino) of every shared anonymous mapping, by process and start address.
    let mut seen: Vec<(usize, u64, u64, u64)> = Vec::new();
    // (As the collection saw them: a read of each process's maps again cost 0.7 ms each.)
    for (i, st) in states.iter().enumerate() {
        for v in st.vmas.iter().filter(|v| v.kind == KIND_SHMEM) {
            let (dev, ino) = v.shm_id.ok_or_else(|| {
                Error::Proc(format!("pid {}: shared memory {:#x}-{:#x} without its inode", st.head.pid, v.start, v.end))
            })?;
            seen.push((i, v.start, dev, ino));
        }
    }
    let mut out: Vec<Obj> = Vec::new();
    for &(i, start, dev, ino) in &seen {
        let shared = seen.iter().any(|s| s.0 != i && (s.2, s.3) == (dev, ino));
        if !shared {
            continue;
        }
        let Some(v) = states[i].vmas.iter_mut().find(|v| v.start == start) else { continue };
        let end = v.pgoff * PAGE_SIZE as u64 + v.len();
        v.flags |= VMA_TREE_SHM;
        let mode = libc::S_IFREG | 0o600;
        v.file = Some(FileId { path: v.name.clone(), mode, dev, ino, size: end, ..Default::default() });
        match out.iter_mut().find(|o| (o.dev, o.ino) == (dev, ino)) {
            Some(o) => o.size = o.size.max(end),
            None => out.push(Obj { dev, ino, size: end }),
        }
    }
    Ok(out)
}

/// Makes object `o` here: shared anonymous memory of its size, as a file. Returns it, and a
/// note when it had to be a memfd (taking the memory as a file through /proc/self/map_files
/// needs CAP_SYS_ADMIN).
pub fn create_here(o: &Obj) -> Result<(OwnedFd, Option<String>)> {
    let len = o.size as usize;
    // SAFETY: a fresh anonymous shared mapping of our own, unmapped below; nothing else uses it.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(Error::sys("mmap (shared memory of the tree)", format!("{len} bytes"), Errno::last()));
    }
    let start = at as u64;
    let link = format!("/proc/self/map_files/{:x}-{:x}\0", start, start + len as u64);
    // SAFETY: open reads a NUL-terminated path that lives across the call.
    let raw = unsafe { libc::open(link.as_ptr().cast(), libc::O_RDWR | libc::O_CLOEXEC) };
    let err = Errno::last();
    // SAFETY: the mapping made above, ours alone; the file (if opened) keeps the memory.
    unsafe { libc::munmap(at, len) };
    if raw >= 0 {
        // SAFETY: `raw` was just opened and is ours alone.
        return Ok((unsafe { OwnedFd::from_raw_fd(raw) }, None));
    }
    if !matches!(err, Errno::EPERM | Errno::EACCES) {
        return Err(Error::sys("open", link.trim_end_matches('\0'), err));
    }
    // SAFETY: memfd_create reads a NUL-terminated name; ftruncate takes integers.
    let raw = unsafe { libc::memfd_create(c"crs-shm".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(Error::sys("memfd_create", "shared memory of the tree", Errno::last()));
    }
    // SAFETY: as above.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ftruncate takes integers, on our own fd.
    if unsafe { libc::ftruncate(raw, o.size as libc::off_t) } != 0 {
        return Err(Error::sys("ftruncate", "shared memory of the tree", Errno::last()));
    }
    let note = format!(
        "shared memory of {} KiB is a memfd now (shared anonymous memory needs CAP_SYS_ADMIN to be made again): a later checkpoint refuses it",
        o.size / 1024
    );
    Ok((fd, Some(note)))
}

pub fn encode(all: &[Obj]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(all.len() as u32);
    for o in all {
        e.u64(o.dev).u64(o.ino).u64(o.size);
    }
    e.into_bytes()
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<Vec<Obj>> {
    let mut d = Dec::new(b, at, "TREESHM");
    let n = d.count(24)?;
    let mut out: Vec<Obj> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let o = Obj { dev: d.u64()?, ino: d.u64()?, size: d.u64()? };
        if o.size == 0 || o.size > MAX_SIZE || !o.size.is_multiple_of(PAGE_SIZE as u64) {
            return Err(d.bad_at(rec, format!("shared memory of {} bytes", o.size)));
        }
        if out.iter().any(|x| (x.dev, x.ino) == (o.dev, o.ino)) {
            return Err(d.bad_at(rec, format!("shared memory {}:{} twice", o.dev, o.ino)));
        }
        out.push(o);
    }
    d.finish()?;
    Ok(out)
}

/// crfinfo's lines.
pub fn describe(all: &[Obj]) -> Vec<String> {
    all.iter().map(|o| format!("shm:       shared memory of the tree, {} KiB (ino {})", o.size / 1024, o.ino)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_made_as_anonymous_memory() {
        let all = vec![Obj { dev: 1, ino: 2, size: 8192 }];
        assert_eq!(decode(&encode(&all), 0).unwrap(), all);
        assert!(decode(&encode(&[Obj { dev: 1, ino: 2, size: 100 }]), 0).is_err());
        let (fd, note) = create_here(&all[0]).unwrap();
        let name = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))).unwrap();
        // As root, the memory of a MAP_SHARED|MAP_ANONYMOUS mapping; else a memfd, said so.
        match note {
            None => assert_eq!(name.to_string_lossy(), "/dev/zero (deleted)"),
            Some(n) => assert!(n.contains("memfd"), "{n}"),
        }
    }
}
