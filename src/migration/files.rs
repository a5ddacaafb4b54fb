//! The files a migrating process maps privately, and which of them the destination holds the
//! very same of (Files and Have frames): their unmodified pages stay out of the image, as with
//! `--no-libs`, and the restore maps the destination's own. An executable of 90 MB (Node.js)
//! then costs no frozen time.

use crate::crf::{Dec, Enc};
use crate::error::{Error, Result};
use crate::net::NetError;
use crate::res::fileid::FileId;

/// Most files a Files frame may name.
const MAX_FILES: usize = 4096;

/// The regular files `pid` maps privately, by the name it maps them under, each once.
pub fn mapped(pid: i32) -> Vec<FileId> {
    let Ok(maps) = crate::ptrace::procfs::read_maps(pid) else { return Vec::new() };
    let mut out: Vec<FileId> = Vec::new();
    for m in maps.iter().filter(|m| !m.shared && m.name.starts_with('/') && !m.name.ends_with(" (deleted)")) {
        if out.len() == MAX_FILES || out.iter().any(|f| f.path == m.name) {
            continue;
        }
        // The very file mapped (its map_files link, where we may read it), as the checkpoint
        // names it: a process in another mount namespace sees other files under its paths.
        let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let id = FileId::of(&link, &m.name, true).or_else(|_| FileId::of(&m.name, &m.name, true));
        if let Ok(id) = id.filter_regular().filter_same(m) {
            out.push(id);
        }
    }
    out
}

/// [`mapped`] of each of the processes `pids` (a tree: its root may be a shell or su, and the
/// program its child), each file once. A path under which two of them map different files
/// is left out: their pages go in the image.
pub fn mapped_all(pids: &[i32]) -> Vec<FileId> {
    let mut out: Vec<FileId> = Vec::new();
    let mut differ: Vec<String> = Vec::new();
    for &pid in pids {
        for id in mapped(pid) {
            match out.iter().find(|f| f.path == id.path) {
                Some(f) if (f.dev, f.ino) != (id.dev, id.ino) => differ.push(id.path),
                Some(_) => {}
                None => out.push(id),
            }
        }
    }
    out.retain(|f| !differ.contains(&f.path));
    out.truncate(MAX_FILES);
    out
}

trait Regular {
    fn filter_regular(self) -> std::io::Result<FileId>;
    /// The file the mapping `m` maps (its device and inode), not another under its name.
    fn filter_same(self, m: &crate::ptrace::procfs::MapEntry) -> std::io::Result<FileId>;
}

impl Regular for std::io::Result<FileId> {
    fn filter_regular(self) -> std::io::Result<FileId> {
        self.and_then(|id| {
            if id.file_type() == libc::S_IFREG {
                Ok(id)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"))
            }
        })
    }
    fn filter_same(self, m: &crate::ptrace::procfs::MapEntry) -> std::io::Result<FileId> {
        self.and_then(|id| {
            let (maj, min) = m.dev;
            if libc::major(id.dev) == maj && libc::minor(id.dev) == min && id.ino == m.inode {
                Ok(id)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "another file"))
            }
        })
    }
}

/// The Files frame: the source's boot id, then the files.
pub fn encode(boot_id: &str, ids: &[FileId]) -> Vec<u8> {
    let mut e = Enc::new();
    e.str(boot_id).u32(ids.len() as u32);
    for id in ids {
        id.encode(&mut e);
    }
    e.into_bytes()
}

fn decode(b: &[u8]) -> std::result::Result<(String, Vec<FileId>), String> {
    let mut d = Dec::new(b, 0, "Files");
    let boot = d.str().map_err(|e| e.to_string())?;
    let n = d.count(60).map_err(|e| e.to_string())?;
    if n > MAX_FILES {
        return Err(format!("{n} files named, more than {MAX_FILES}"));
    }
    let ids = (0..n)
        .map(|_| FileId::decode(&mut d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    d.finish().map_err(|e| e.to_string())?;
    Ok((boot, ids))
}

/// At the destination: the Have frame for a Files frame, one byte per file, 1 where this node
/// holds the same file at the same path (what a restore checks before it maps a file instead
/// of the image's copy). Only files anyone may read are looked at: a peer learns nothing of
/// the others.
pub fn have(files: &[u8]) -> Result<Vec<u8>> {
    let (boot, ids) = decode(files).map_err(|e| Error::Net(NetError::Protocol(e)))?;
    let same_boot = boot == crate::res::fileid::boot_id();
    // Looked at as nobody (this thread's file-system ids): a file, or a directory on its way,
    // that not anyone may read or search is not even opened.
    let _nobody = AsNobody::enter();
    Ok(ids
        .iter()
        .map(|id| {
            let here =
                id.path.starts_with('/').then(|| FileId::of(&id.path, &id.path, true).filter_regular().ok()).flatten();
            here.filter(|now| now.mode & 0o004 != 0).is_some_and(|now| id.same_content(&now, same_boot).is_ok()) as u8
        })
        .collect())
}

/// This thread's file-system ids set to nobody's (65534) for as long as it lives.
struct AsNobody(Option<(u32, u32)>);

impl AsNobody {
    fn enter() -> AsNobody {
        // SAFETY: setfsuid/setfsgid change this thread's file-system ids only; -1 only asks.
        unsafe {
            let (uid, gid) = (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX));
            libc::setfsgid(65534);
            libc::setfsuid(65534);
            AsNobody(Some((uid as u32, gid as u32)))
        }
    }
}

impl Drop for AsNobody {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.0.take() {
            // SAFETY: as above, back to what they were.
            unsafe {
                libc::setfsuid(uid);
                libc::setfsgid(gid);
            }
        }
    }
}

/// At the source: the paths of `ids` the destination says it holds (`have`).
pub fn held(ids: &[FileId], have: &[u8]) -> Vec<String> {
    ids.iter().zip(have).filter(|(_, h)| **h == 1).map(|(id, _)| id.path.clone()).collect()
}

/// At the source: those of `ids` the destination does not say it holds (`have`).
pub fn lacking(ids: &[FileId], have: &[u8]) -> Vec<FileId> {
    ids.iter().zip(have).filter(|(_, h)| **h != 1).map(|(id, _)| id.clone()).collect()
}

/// For the crd backend, whose module leaves out the unmodified pages of the executable
/// (CRD_NO_BINARY_FILE) or of every other ELF file mapped privately (CRD_NO_SHARED_LIBRARIES),
/// not of files named one by one: whether the destination holds the executable `pid` maps,
/// and whether it holds every other ELF file of `ids` (a file not known to be ELF or not
/// counts as one). `held`: the paths the destination holds (see [`held`]).
pub fn held_wholesale(pid: i32, ids: &[FileId], held: &[String]) -> (bool, bool) {
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).ok().map(|m| (m.dev(), m.ino()));
    let is_exe = |id: &FileId| exe == Some((id.dev, id.ino));
    let there = |id: &FileId| held.contains(&id.path);
    let elf = |id: &FileId| crate::res::memory::elf_magic(&id.path) != Some(false);
    let binary = ids.iter().any(|id| is_exe(id) && there(id));
    let libs = ids.iter().filter(|id| !is_exe(id)).all(|id| there(id) || !elf(id));
    (binary, libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree's files are its processes' together: a child's program is among them.
    #[test]
    fn a_trees_files_are_those_of_each_of_its_processes() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let kid = child.id() as i32;
        // (Until it has executed sleep, it maps our program.)
        let sleep = |ids: &[FileId]| ids.iter().any(|i| i.path.ends_with("/sleep"));
        for _ in 0..200 {
            if sleep(&mapped(kid)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let me = std::process::id() as i32;
        let all = mapped_all(&[me, kid]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!sleep(&mapped(me)) && sleep(&all), "{all:?}");
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(all.iter().any(|i| std::path::Path::new(&i.path) == exe), "{all:?}");
        let mut paths: Vec<&str> = all.iter().map(|i| i.path.as_str()).collect();
        paths.sort_unstable();
        let n = paths.len();
        paths.dedup();
        assert_eq!(n, paths.len(), "a file twice: {paths:?}");
    }

    #[test]
    fn a_process_maps_its_program_and_this_node_has_it() {
        let me = std::process::id() as i32;
        let ids = mapped(me);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(ids.iter().any(|i| std::path::Path::new(&i.path) == exe), "{ids:?}");
        let frame = encode(&crate::res::fileid::boot_id(), &ids);
        let h = have(&frame).unwrap();
        assert_eq!(h.len(), ids.len());
        // Our own program is the same file here (world-readable or not, it is in our tree).
        let mut changed = ids.clone();
        for c in changed.iter_mut() {
            c.size += 1;
        }
        let h2 = have(&encode("another boot", &changed)).unwrap();
        assert!(h2.iter().all(|&b| b == 0), "a file of another size is not the same");
        assert!(have(&[1, 2, 3]).is_err());
    }
}
