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

/// What a file is now, to tell later whether it changed: its device and inode, size, and
/// modification and change times (a write changes the ctime, within the timestamp tick).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stamp {
    pub fn of(md: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
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
        Ok(FileId { build_id, ..FileId::from_metadata(path, &md) })
    }

    /// The identity `md` says, recorded under the name `path`; no build-id.
    fn from_metadata(path: &str, md: &std::fs::Metadata) -> FileId {
        FileId {
            path: path.to_string(),
            mode: md.mode(),
            size: md.size(),
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
            dev: md.dev(),
            ino: md.ino(),
            rdev: md.rdev(),
            build_id: Vec::new(),
        }
    }

    /// [`FileId::of`] with its build-id of a mapped file `path`, and whether the file is an
    /// ELF file (read in the same look). Within a [`Remembered`] scope, a file seen already
    /// (the same inode, size and mtime) is not read again: only looked at.
    pub fn of_mapped(path: &str) -> std::io::Result<(FileId, bool)> {
        let f = open_path_only(path)?;
        let md = f.metadata()?;
        let mut id = FileId::from_metadata(path, &md);
        if !md.is_file() {
            return Ok((id, false));
        }
        let key = (id.dev, id.ino, id.size, id.mtime_sec, id.mtime_nsec);
        let known = MEMO.with(|m| m.borrow().as_ref().and_then(|m| m.iter().find(|e| e.0 == key).cloned()));
        let (elf, build_id) = match known {
            Some((_, elf, build_id)) => (elf, build_id),
            None => {
                let (elf, build_id) = read_elf(&reopen(&f)?);
                let build_id = build_id.unwrap_or_default();
                MEMO.with(|m| {
                    if let Some(m) = m.borrow_mut().as_mut() {
                        m.push((key, elf, build_id.clone()));
                    }
                });
                (elf, build_id)
            }
        };
        id.build_id = build_id;
        Ok((id, elf))
    }

    /// Identity from a stat of `path` without opening it (for files we may not open, e.g. a
    /// write-only log); no build-id.
    pub fn stat(path: &str) -> std::io::Result<FileId> {
        Ok(FileId::from_metadata(path, &std::fs::metadata(path)?))
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

/// Mapped files' ELF looks, by (dev, ino, size, mtime sec, nsec): whether ELF, build-id. Kept
/// on this thread while a [`Remembered`] lives (None otherwise).
type Memo = Vec<((u64, u64, u64, i64, i64), bool, Vec<u8>)>;

thread_local! {
    static MEMO: std::cell::RefCell<Option<Memo>> = const { std::cell::RefCell::new(None) };
}

/// While it lives, [`FileId::of_mapped`] reads each file once on this thread: a checkpoint
/// looks at the mapped files before the freeze and again frozen (16 files, 0.3 ms for `sleep`).
pub struct Remembered(bool);

impl Remembered {
    pub fn scope() -> Remembered {
        Remembered(MEMO.with(|m| {
            let mut m = m.borrow_mut();
            let outer = m.is_none();
            if outer {
                *m = Some(Vec::new());
            }
            outer
        }))
    }
}

impl Drop for Remembered {
    fn drop(&mut self) {
        // The outermost scope ends it (a checkpoint within another's scope keeps it).
        if self.0 {
            MEMO.with(|m| m.borrow_mut().take());
        }
    }
}

/// Reads the NT_GNU_BUILD_ID note of a 64-bit little-endian ELF file.
pub fn elf_build_id(f: &File) -> Option<Vec<u8>> {
    read_elf(f).1
}

/// Whether `f` begins as an ELF file does, and the NT_GNU_BUILD_ID note of a 64-bit
/// little-endian one. Reads its first 4 KiB, which hold the program headers and the note as
/// linkers lay them out, and more only where they do not.
fn read_elf(f: &File) -> (bool, Option<Vec<u8>>) {
    let mut head = vec![0u8; 4096];
    let mut got = 0;
    while got < head.len() {
        match f.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    head.truncate(got);
    let elf = head.starts_with(b"\x7fELF");
    (elf, elf.then(|| build_id_in(f, &head)).flatten())
}

/// The bytes [at, at + len) of `f`: from `head` (its first bytes) when they hold them.
fn bytes_at(f: &File, head: &[u8], at: u64, len: usize) -> Option<Vec<u8>> {
    let end = at.checked_add(len as u64)?;
    if end <= head.len() as u64 {
        return Some(head[at as usize..end as usize].to_vec());
    }
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, at).ok()?;
    Some(b)
}

fn build_id_in(f: &File, head: &[u8]) -> Option<Vec<u8>> {
    let eh = head.get(..64)?;
    if eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4])) as u64;
    let u64at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let phoff = u64at(eh, 32);
    let phentsize = u16at(eh, 54);
    let phnum = u16at(eh, 56).min(256);
    // (56 bytes as linkers write them: a table of larger entries, read at once, is bounded.)
    if !(56..=256).contains(&phentsize) {
        return None;
    }
    let table = bytes_at(f, head, phoff, (phnum * phentsize) as usize)?;
    for ph in table.chunks_exact(phentsize as usize) {
        if u32at(ph, 0) != 4 {
            continue; // not PT_NOTE
        }
        let (off, size) = (u64at(ph, 8), u64at(ph, 32).min(1 << 16));
        let notes = bytes_at(f, head, off, size as usize)?;
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

    /// A 64-bit little-endian ELF file whose program headers begin at `phoff` and whose
    /// one PT_NOTE, at `note_at`, holds GNU build-id `id`.
    fn fake_elf(phoff: u64, note_at: u64, id: &[u8]) -> Vec<u8> {
        let mut note = Vec::new();
        note.extend(4u32.to_le_bytes());
        note.extend((id.len() as u32).to_le_bytes());
        note.extend(3u32.to_le_bytes());
        note.extend(b"GNU\0");
        note.extend(id);
        let mut f = vec![0u8; (note_at as usize + note.len()).max(phoff as usize + 2 * 56)];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[32..40].copy_from_slice(&phoff.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        // A PT_LOAD, then the PT_NOTE.
        let ph = phoff as usize;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        let ph = ph + 56;
        f[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&note_at.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        f[note_at as usize..note_at as usize + note.len()].copy_from_slice(&note);
        f
    }

    fn temp_file(name: &str, bytes: &[u8]) -> String {
        let path = std::env::temp_dir().join(format!("crs-fileid-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn build_ids_are_found_in_the_first_page_and_beyond_it() {
        for (name, phoff, note_at) in
            [("near", 64, 512), ("far", 8192, 12290), ("table across", 4050, 8000), ("note across", 64, 4090)]
        {
            let path = temp_file(name, &fake_elf(phoff, note_at, &[0xab, 1, 2, 3, 4]));
            let f = File::open(&path).unwrap();
            assert_eq!(read_elf(&f), (true, Some(vec![0xab, 1, 2, 3, 4])), "{name}");
            let (id, elf) = FileId::of_mapped(&path).unwrap();
            assert!(elf, "{name}");
            assert_eq!(id.build_id, vec![0xab, 1, 2, 3, 4], "{name}");
            std::fs::remove_file(&path).unwrap();
        }
        let path = temp_file("text", b"#!/bin/sh\necho not an ELF file\n");
        assert_eq!(read_elf(&File::open(&path).unwrap()), (false, None));
        assert!(!FileId::of_mapped(&path).unwrap().1);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_remembered_file_is_read_again_once_it_changed() {
        let _scope = Remembered::scope();
        let path = temp_file("changed", &fake_elf(64, 512, &[1, 1, 1, 1]));
        assert_eq!(FileId::of_mapped(&path).unwrap().0.build_id, vec![1, 1, 1, 1]);
        // A new file in its place (another inode): its own build-id, not the one remembered.
        let other = temp_file("changed.new", &fake_elf(64, 512, &[2, 2, 2, 2]));
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(FileId::of_mapped(&path).unwrap().0.build_id, vec![2, 2, 2, 2]);
        std::fs::remove_file(&path).unwrap();
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
