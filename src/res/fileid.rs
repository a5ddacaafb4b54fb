//! The identity of a file a process uses (an open fd, a mapped library): what rstrt compares
//! on the restoring node before it trusts the file to hold what the process had.

use crate::crf::{Dec, Enc, Result as CrfResult};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileId {
    pub path: String,
    pub mode: u32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
    /// ELF NT_GNU_BUILD_ID, empty when the file has none.
    pub build_id: Vec<u8>,
}

/// `path` opened with O_PATH: looked at, not opened for I/O (no side effects, whatever it is).
fn open_path_only(path: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_NOCTTY).open(path)
}

/// Opens for reading the very inode an O_PATH file names, whatever its path names by now.
fn reopen(f: &File) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// Opens `path` for reading only if it is a regular file (a FIFO or a device is never opened).
pub fn open_regular(path: &str) -> std::io::Result<File> {
    let f = open_path_only(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    reopen(&f)
}

/// Whether the caller may execute the file `f` with its file-system ids (a thread that took
/// another user's, see creds::AsOwner, asks for that user).
pub fn may_execute(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(path) = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())) else { return false };
    // SAFETY: faccessat reads a NUL-terminated path that outlives the call.
    unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::X_OK, libc::AT_EACCESS) == 0 }
}

impl FileId {
    /// Identity of the file at `open_path` (which may be a /proc magic link), recorded under the
    /// name `path`. Only a regular file is ever opened for reading (for its ELF build-id): the
    /// path is first opened with O_PATH, which has no side effects, so a FIFO or a device an
    /// image names is looked at but never opened.
    pub fn of(open_path: &str, path: &str, with_build_id: bool) -> std::io::Result<FileId> {
        let f = open_path_only(open_path)?;
        let md = f.metadata()?;
        let build_id =
            if with_build_id && md.is_file() { elf_build_id(&reopen(&f)?).unwrap_or_default() } else { Vec::new() };
        Ok(FileId {
            path: path.to_string(),
            mode: md.mode(),
            size: md.size(),
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            dev: md.dev(),
            ino: md.ino(),
            rdev: md.rdev(),
            build_id,
        })
    }

    /// Identity from a stat of `path` without opening it (for files we may not open, e.g. a
    /// write-only log); no build-id.
    pub fn stat(path: &str) -> std::io::Result<FileId> {
        let md = std::fs::metadata(path)?;
        Ok(FileId {
            path: path.to_string(),
            mode: md.mode(),
            size: md.size(),
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            dev: md.dev(),
            ino: md.ino(),
            rdev: md.rdev(),
            build_id: Vec::new(),
        })
    }

    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn encode(&self, e: &mut Enc) {
        e.str(&self.path).u32(self.mode).u64(self.size).i64(self.mtime_sec).i64(self.mtime_nsec);
        e.u64(self.dev).u64(self.ino).u64(self.rdev).bytes(&self.build_id);
    }

    pub fn decode(d: &mut Dec) -> CrfResult<FileId> {
        Ok(FileId {
            path: d.str()?,
            mode: d.u32()?,
            size: d.u64()?,
            mtime_sec: d.i64()?,
            mtime_nsec: d.i64()?,
            dev: d.u64()?,
            ino: d.u64()?,
            rdev: d.u64()?,
            build_id: d.bytes()?.to_vec(),
        })
    }

    /// Is the local file `now` the file a mapping came from? Mapped code must be the very same
    /// bytes: same size, same build-id (or, without one, same mtime), and on the same boot of
    /// the same node the same inode.
    pub fn same_content(&self, now: &FileId, same_boot: bool) -> Result<(), String> {
        if now.file_type() != self.file_type() {
            return Err("is no longer the same kind of file".into());
        }
        if now.size != self.size {
            return Err(format!("has size {} (was {})", now.size, self.size));
        }
        if !self.build_id.is_empty() {
            if now.build_id != self.build_id {
                return Err(format!("has build-id {} (was {})", hex(&now.build_id), hex(&self.build_id)));
            }
        } else if (now.mtime_sec, now.mtime_nsec) != (self.mtime_sec, self.mtime_nsec) {
            return Err("was modified (mtime differs)".into());
        }
        if same_boot && (now.dev, now.ino) != (self.dev, self.ino) {
            return Err("was replaced (different inode)".into());
        }
        Ok(())
    }

    /// Is the local file `now` still the file an fd had open? It may have grown (a log), but a
    /// truncated or replaced file, or another kind of file, is refused.
    pub fn still_usable(&self, now: &FileId, same_boot: bool) -> Result<(), String> {
        if now.file_type() != self.file_type() {
            return Err("is no longer the same kind of file".into());
        }
        if self.file_type() == libc::S_IFCHR && now.rdev != self.rdev {
            return Err("is a different device".into());
        }
        if self.file_type() == libc::S_IFREG && now.size < self.size {
            return Err(format!("shrank to {} bytes (was {})", now.size, self.size));
        }
        if same_boot && self.file_type() != libc::S_IFCHR && (now.dev, now.ino) != (self.dev, self.ino) {
            return Err("was replaced (different inode)".into());
        }
        Ok(())
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads the NT_GNU_BUILD_ID note of a 64-bit little-endian ELF file.
pub fn elf_build_id(f: &File) -> Option<Vec<u8>> {
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).ok()?;
    if &eh[0..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4])) as u64;
    let u64at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let phoff = u64at(&eh, 32);
    let phentsize = u16at(&eh, 54);
    let phnum = u16at(&eh, 56).min(256);
    if phentsize < 56 {
        return None;
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.read_exact_at(&mut ph, phoff + i * phentsize).ok()?;
        if u32at(&ph, 0) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64at(&ph, 8), u64at(&ph, 32).min(1 << 16));
        let mut notes = vec![0u8; size as usize];
        f.read_exact_at(&mut notes, off).ok()?;
        let mut p = 0usize;
        while p + 12 <= notes.len() {
            let namesz = u32at(&notes, p) as usize;
            let descsz = u32at(&notes, p + 4) as usize;
            let ty = u32at(&notes, p + 8);
            let name_at = p + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let end = desc_at + descsz.div_ceil(4) * 4;
            if desc_at + descsz > notes.len() {
                break;
            }
            if ty == 3 && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
                return Some(notes[desc_at..desc_at + descsz].to_vec());
            }
            p = end;
        }
    }
    None
}

/// The boot id of this kernel; identical boot ids mean "same node, same boot".
pub fn boot_id() -> String {
    let mut s = String::new();
    let _ = File::open("/proc/sys/kernel/random/boot_id").and_then(|mut f| f.read_to_string(&mut s));
    s.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = FileId {
            path: "/bin/x".into(),
            mode: 0o100755,
            size: 9,
            mtime_sec: -1,
            mtime_nsec: 5,
            dev: 1,
            ino: 2,
            rdev: 3,
            build_id: vec![1, 2],
        };
        let mut e = Enc::new();
        id.encode(&mut e);
        let b = e.into_bytes();
        let mut d = Dec::new(&b, 0, "T");
        assert_eq!(FileId::decode(&mut d).unwrap(), id);
        d.finish().unwrap();
    }

    #[test]
    fn our_own_binary_has_a_build_id() {
        let f = File::open("/proc/self/exe").unwrap();
        // Rust binaries are linked with a GNU build-id by gcc/ld on Debian.
        let _ = elf_build_id(&f);
    }

    #[test]
    fn grown_log_is_fine_shrunk_is_not() {
        let old = FileId { path: "/l".into(), mode: 0o100644, size: 100, ..Default::default() };
        let grown = FileId { size: 150, mtime_sec: 9, ..old.clone() };
        let shrunk = FileId { size: 10, ..old.clone() };
        assert!(old.still_usable(&grown, true).is_ok());
        assert!(old.still_usable(&shrunk, true).is_err());
        assert!(old.same_content(&grown, true).is_err());
    }
}
