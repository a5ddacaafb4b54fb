//! VMAS: every mapping, as /proc/PID/smaps shows it, and how a restore rebuilds it: at its
//! address, with its protection, from its file when the file here is the same, anonymous
//! otherwise; the vdso/vvar areas must be this kernel's.

use crate::crf::{Dec, Enc, PAGE_SIZE, Result as CrfResult};
use crate::error::{Error, Result};
use crate::ptrace::calls::Calls;
use crate::ptrace::procfs::MapEntry;
use crate::ptrace::{Ctl, RemoteAddr, mem};
use crate::res::fileid::FileId;
use log::debug;
use std::os::unix::fs::FileExt;

pub const KIND_ANON: u8 = 1;
pub const KIND_HEAP: u8 = 2;
pub const KIND_STACK: u8 = 3;
pub const KIND_FILE: u8 = 4;
pub const KIND_SHMEM: u8 = 5;
pub const KIND_VDSO: u8 = 6;
pub const KIND_VVAR: u8 = 7;

pub const VMA_SHARED: u32 = 1;
pub const VMA_GROWSDOWN: u32 = 2;
pub const VMA_NORESERVE: u32 = 4;
/// A private file mapping whose unmodified pages were stored too (self-contained image).
pub const VMA_FILE_COPY: u32 = 8;
/// A shared file mapping of a file opened for writing (VM_MAYWRITE: mprotect may add
/// PROT_WRITE), though it may be mapped read-only now.
pub const VMA_MAY_WRITE: u32 = 1 << 4;
/// MAP_DROPPABLE: the kernel may drop its pages under memory pressure.
pub const VMA_DROPPABLE: u32 = 1 << 5;
/// What madvise and mlock set on a mapping, as /proc/PID/smaps's VmFlags show them, with the
/// call that sets each back (mlock's two are handled by `advise_all` itself).
pub const ADVICE: [(u32, &str, i32, &str); 8] = [
    (1 << 8, "dd", libc::MADV_DONTDUMP, "MADV_DONTDUMP"),
    (1 << 9, "dc", libc::MADV_DONTFORK, "MADV_DONTFORK"),
    (1 << 10, "hg", libc::MADV_HUGEPAGE, "MADV_HUGEPAGE"),
    (VMA_NOHUGEPAGE, "nh", libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"),
    (VMA_WIPEONFORK, "wf", libc::MADV_WIPEONFORK, "MADV_WIPEONFORK"),
    (1 << 13, "mg", libc::MADV_MERGEABLE, "MADV_MERGEABLE"),
    (VMA_LOCKED, "lo", 0, "mlock"),
    (VMA_LOCKONFAULT, "lf", 0, "mlock2(MLOCK_ONFAULT)"),
];
pub const VMA_NOHUGEPAGE: u32 = 1 << 11;
pub const VMA_WIPEONFORK: u32 = 1 << 12;
pub const VMA_LOCKED: u32 = 1 << 14;
pub const VMA_LOCKONFAULT: u32 = 1 << 15;
/// A mapping of a regular file unlinked since: the image carries the file (DELETED, by
/// `file.dev`/`file.ino`), and a restore maps the file it made again.
pub const VMA_DELETED: u32 = 1 << 6;
/// Shared anonymous memory that other processes of the tree map too: TREESHM holds the object
/// (`file.dev`, `file.ino`), which a restore makes once and maps in each.
pub const VMA_TREE_SHM: u32 = 1 << 7;
/// A mapping of a memfd: the image carries the memfd (MEMFDS, by `file.dev`/`file.ino`), and
/// a restore maps the one it made again.
pub const VMA_MEMFD: u32 = 1 << 16;
/// An attachment of System V shared memory (shmat): SYSVIPC holds the segment, whose id is
/// `file.ino`; a restore attaches it again (the piece at offset 0 attaches the whole segment,
/// the others are its parts, protected as they were).
pub const VMA_SYSV: u32 = 1 << 17;
/// A VMA_FILE_COPY mapping whose unmodified pages an earlier process of the image stored
/// (it maps the same part of the same file: a tree's binary and libraries are stored once);
/// a restore that cannot map the file itself writes that process's copy of them.
pub const VMA_COPY_ELSEWHERE: u32 = 1 << 18;
/// (Version 6.) A private anonymous mapping of a process after the first whose kept runs
/// with RUN_SHARED are pages sent ahead of an earlier process of the image, the first that
/// holds an area of the same range (a live migration of a tree, whose processes share them
/// since a fork): the restore moves that process's held area into place, and its own kept
/// pages over it.
pub const VMA_KEPT_FIRST: u32 = 1 << 19;
/// (Version 10.) A private anonymous mapping without access (PROT_NONE) and with no page in
/// memory or swap: a reservation (a database's or a runtime's, up to terabytes). A restore
/// maps it as it is, never writable: a writable private mapping is charged against the
/// commit limit, and one of terabytes is refused. The image holds no page of it.
pub const VMA_EMPTY: u32 = 1 << 20;
/// The mappings of something a restore makes again before it maps it.
pub const VMA_REMADE: u32 = VMA_DELETED | VMA_TREE_SHM | VMA_MEMFD;
/// Every flag an image may carry.
const VMA_ALL: u32 = (1 << 21) - 1;

/// mmap's MAP_DROPPABLE (Linux 6.11), not yet in libc.
const MAP_DROPPABLE: i32 = 0x08;

/// Highest user address on x86_64 with 5-level paging.
const USER_TOP: u64 = 1 << 56;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC
    pub prot: u32,
    pub flags: u32,
    pub kind: u8,
    /// File offset in pages.
    pub pgoff: u64,
    /// "[heap]", "[vdso]", a path...
    pub name: String,
    pub file: Option<FileId>,
    /// The bytes of the [vdso], to check that this kernel's vdso is the same.
    pub content: Vec<u8>,
    /// At checkpoint only (not in the image): smaps showed no page of it resident or
    /// swapped, so that its pagemap need not be read (64 threads have 64 stacks, mostly
    /// unused, and 64 malloc arenas reserved).
    pub untouched: bool,
    /// At checkpoint only (not in the image): smaps showed pages of it another process maps
    /// too (see [`crate::ptrace::procfs::MapEntry::shares`]).
    pub shares: bool,
    /// At checkpoint only (not in the image): the device and inode of shared anonymous
    /// memory (KIND_SHMEM), which tell apart the objects behind such mappings.
    pub shm_id: Option<(u64, u64)>,
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    pub fn is_special(&self) -> bool {
        self.kind == KIND_VDSO || self.kind == KIND_VVAR
    }
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            KIND_ANON => "anon",
            KIND_HEAP => "heap",
            KIND_STACK => "stack",
            KIND_FILE => "file",
            KIND_SHMEM => "shmem",
            KIND_VDSO => "vdso",
            KIND_VVAR => "vvar",
            _ => "?",
        }
    }
    pub fn prot_string(&self) -> String {
        let b = |f: u32, c: char| if self.prot & f != 0 { c } else { '-' };
        let s = if self.flags & VMA_SHARED != 0 { 's' } else { 'p' };
        format!(
            "{}{}{}{s}",
            b(libc::PROT_READ as u32, 'r'),
            b(libc::PROT_WRITE as u32, 'w'),
            b(libc::PROT_EXEC as u32, 'x')
        )
    }
}

/// A whole private anonymous mapping (anonymous memory or the heap; not a stack, droppable
/// memory or a file's private copy): one a restore may make by moving pages already held into
/// place (engine::precopy::Store).
pub fn private_anon(v: &Vma) -> bool {
    matches!(v.kind, KIND_ANON | KIND_HEAP)
        && v.file.is_none()
        && v.flags & (VMA_SHARED | VMA_GROWSDOWN | VMA_DROPPABLE | VMA_SYSV | VMA_REMADE) == 0
}

/// The mm layout PR_SET_MM_MAP restores (what /proc/PID/stat, cmdline, environ, auxv show).
/// crfinfo's lines: every mapping, with the bytes of its pages the image holds (`stored`, by
/// mapping start).
pub fn describe_vmas(vmas: &[Vma], stored: &std::collections::BTreeMap<u64, u64>, page_bytes: u64) -> Vec<String> {
    let mut out = vec![format!("memory:    {} mappings, {} bytes of pages stored", vmas.len(), page_bytes)];
    for m in vmas {
        let b = stored.get(&m.start).copied().unwrap_or(0);
        let mut extra = match &m.file {
            Some(f) if !f.build_id.is_empty() => format!(" build-id {}", crate::res::fileid::hex(&f.build_id)),
            _ => String::new(),
        };
        let mut advice: Vec<&str> = ADVICE.iter().filter(|a| m.flags & a.0 != 0).map(|a| a.3).collect();
        if m.flags & VMA_COPY_ELSEWHERE != 0 {
            advice.push("unmodified pages with an earlier process");
        }
        if m.flags & VMA_KEPT_FIRST != 0 {
            advice.push("shares pages held as an earlier process's");
        }
        if !advice.is_empty() {
            extra.push_str(&format!(" [{}]", advice.join(" ")));
        }
        out.push(format!(
            "  {:012x}-{:012x} {} {:<5} {:>10} {}{}",
            m.start,
            m.end,
            m.prot_string(),
            m.kind_name(),
            b,
            m.name,
            extra
        ));
    }
    out
}

pub fn encode_vmas(vmas: &[Vma]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(vmas.len() as u32);
    for v in vmas {
        e.u64(v.start).u64(v.end).u32(v.prot).u32(v.flags).u8(v.kind).u64(v.pgoff).str(&v.name);
        e.u8(v.file.is_some() as u8);
        if let Some(f) = &v.file {
            f.encode(&mut e);
        }
        e.bytes(&v.content);
    }
    e.into_bytes()
}

pub fn decode_vmas(b: &[u8], at: u64) -> CrfResult<Vec<Vma>> {
    let mut d = Dec::new(b, at, "VMAS");
    let n = d.count(42)?;
    let mut out: Vec<Vma> = Vec::with_capacity(n);
    for _ in 0..n {
        let rec = d.offset();
        let mut v = Vma {
            start: d.u64()?,
            end: d.u64()?,
            prot: d.u32()?,
            flags: d.u32()?,
            kind: d.u8()?,
            pgoff: d.u64()?,
            name: d.str()?,
            ..Default::default()
        };
        v.file = if d.u8()? != 0 { Some(FileId::decode(&mut d)?) } else { None };
        v.content = d.bytes()?.to_vec();
        let page = PAGE_SIZE as u64;
        let ok = v.start.is_multiple_of(page)
            && v.end.is_multiple_of(page)
            && v.start < v.end
            && v.end <= USER_TOP
            && out.last().is_none_or(|p| p.end <= v.start)
            && (KIND_ANON..=KIND_VVAR).contains(&v.kind)
            && v.prot & !7 == 0
            && v.flags & !VMA_ALL == 0
            // A file: a file mapping's, or the tree's shared memory's identity.
            && (v.kind == KIND_FILE || v.flags & VMA_TREE_SHM != 0) == v.file.is_some()
            && (v.flags & VMA_TREE_SHM == 0 || v.kind == KIND_SHMEM)
            // Only regular files are mapped, by absolute path: never a device or a FIFO an
            // image names.
            && v.file.as_ref().is_none_or(|f| f.file_type() == libc::S_IFREG && f.path.starts_with('/'))
            // The pages of a shared file mapping are the file's: the image never carries them.
            && !(v.flags & VMA_SHARED != 0 && v.flags & VMA_FILE_COPY != 0)
            // Pages stored elsewhere are a file copy's, of a file the image names.
            && (v.flags & VMA_COPY_ELSEWHERE == 0 || (v.flags & VMA_FILE_COPY != 0 && v.kind == KIND_FILE))
            // Pages held as an earlier process's only where a restore may move them in.
            && (v.flags & VMA_KEPT_FIRST == 0 || private_anon(&v))
            // A reservation is private anonymous memory without access, and never held pages.
            && (v.flags & VMA_EMPTY == 0 || (private_anon(&v) && v.prot == 0 && v.flags & VMA_KEPT_FIRST == 0));
        if !ok {
            return Err(d.bad_at(rec, format!("invalid mapping {:#x}-{:#x} kind {}", v.start, v.end, v.kind)));
        }
        out.push(v);
    }
    d.finish()?;
    Ok(out)
}

fn prot_of(m: &MapEntry) -> u32 {
    (if m.read { libc::PROT_READ } else { 0 }
        | if m.write { libc::PROT_WRITE } else { 0 }
        | if m.exec { libc::PROT_EXEC } else { 0 }) as u32
}

/// Turns /proc/PID/smaps into the VMA list, refusing, naming every one, what cannot be
/// restored. `no_copy(path)` says whether the unmodified pages of a mapped file are left out
/// (--no-binary, --no-libs).
pub fn classify(pid: i32, maps: &[MapEntry], no_copy: &dyn Fn(&str, bool) -> bool) -> Result<Vec<Vma>> {
    let mut out = Vec::with_capacity(maps.len());
    let mut blocked = Vec::new();
    // Each mapped file is looked at once (a library has four or five mappings; its build-id
    // takes a dozen reads), however many mappings it has.
    let mut seen = Vec::new();
    for m in maps {
        match classify_one(pid, m, no_copy, &mut seen)? {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(why) => blocked.push(why),
        }
    }
    Error::blocked(pid, blocked)?;
    Ok(out)
}

/// One mapping: the VMA to save, none (the vsyscall page), or why it cannot be.
fn classify_one(
    pid: i32,
    m: &MapEntry,
    no_copy: &dyn Fn(&str, bool) -> bool,
    seen: &mut Vec<(String, FileId, bool)>,
) -> Result<std::result::Result<Option<Vma>, String>> {
    let refuse = |what: &str| Ok(Err(format!("mapping {:#x}-{:#x} {} is {what}", m.start, m.end, m.name)));
    if m.name == "[vsyscall]" {
        return Ok(Ok(None));
    }
    if m.has_flag("ht") {
        return refuse("hugetlbfs memory");
    }
    if m.pkey != 0 {
        return refuse(&format!("tagged with memory protection key {} (pkey_mprotect)", m.pkey));
    }
    for (flag, what) in [
        ("um", "registered with a userfaultfd"),
        ("uw", "registered with a userfaultfd"),
        ("ui", "registered with a userfaultfd"),
        ("ss", "a shadow stack"),
        ("sl", "sealed (mseal)"),
        ("pf", "a PFN mapping of a device"),
        ("io", "device I/O memory"),
    ] {
        if m.has_flag(flag) && !m.is_vdso_or_vvar() {
            return refuse(what);
        }
    }
    let mut v = Vma {
        start: m.start,
        end: m.end,
        prot: prot_of(m),
        kind: KIND_ANON,
        pgoff: m.offset / PAGE_SIZE as u64,
        name: m.name.clone(),
        untouched: m.untouched,
        shares: m.shares,
        ..Default::default()
    };
    if m.shared {
        v.flags |= VMA_SHARED;
    }
    if m.has_flag("gd") {
        v.flags |= VMA_GROWSDOWN;
    }
    if m.has_flag("nr") {
        v.flags |= VMA_NORESERVE;
    }
    if m.has_flag("dp") {
        v.flags |= VMA_DROPPABLE;
    }
    for (bit, flag, _, _) in ADVICE {
        // The kernel marks its own special areas "dd"; they are not the process's advice.
        if m.has_flag(flag) && !m.is_vdso_or_vvar() {
            v.flags |= bit;
        }
    }
    // Older kernels (Debian 12's 6.1) have no mnemonic for VM_LOCKONFAULT and show "??":
    // on a locked mapping, that is what it is.
    if m.has_flag("lo") && m.has_flag("??") && !m.is_vdso_or_vvar() {
        v.flags |= VMA_LOCKONFAULT;
    }
    let name = m.name.as_str();
    let kind = match name {
        "[vdso]" => KIND_VDSO,
        n if n.starts_with("[vvar") => KIND_VVAR,
        "[heap]" => KIND_HEAP,
        "[stack]" => KIND_STACK,
        "" if m.shared => KIND_SHMEM,
        "" => KIND_ANON,
        "/dev/zero (deleted)" if m.shared => KIND_SHMEM,
        n if n.starts_with("[anon_shmem:") => KIND_SHMEM,
        n if n.starts_with("[anon:") => KIND_ANON,
        n if n.starts_with("/SYSV") && n.ends_with(" (deleted)") && m.shared => {
            v.flags |= VMA_SYSV;
            KIND_FILE
        }
        n if crate::res::memfd::name_of(n).is_some() => {
            v.flags |= VMA_MEMFD;
            KIND_FILE
        }
        n if n.ends_with(" (deleted)") && crate::res::deleted::unlinked(n).is_none() => {
            return refuse("a mapping of a deleted special file");
        }
        n if n.ends_with(" (deleted)") => {
            v.flags |= VMA_DELETED;
            KIND_FILE
        }
        n if n.starts_with('/') => KIND_FILE,
        _ => return refuse("a special mapping"),
    };
    v.kind = kind;
    if v.prot == 0 && m.untouched && private_anon(&v) {
        v.flags |= VMA_EMPTY;
    }
    if v.kind == KIND_SHMEM {
        v.shm_id = Some((libc::makedev(m.dev.0, m.dev.1), m.inode));
    }
    if v.flags & VMA_SYSV != 0 {
        // Its file's inode number is the segment's id.
        let (maj, min) = m.dev;
        let mode = libc::S_IFREG | 0o600;
        v.file = Some(FileId {
            path: name.to_string(),
            mode,
            dev: libc::makedev(maj, min),
            ino: m.inode,
            ..Default::default()
        });
        if m.has_flag("mw") {
            v.flags |= VMA_MAY_WRITE;
        }
    } else if v.flags & (VMA_DELETED | VMA_MEMFD) != 0 {
        // Nothing names it but the mapping itself (reading that link needs CAP_SYS_ADMIN).
        let path = if v.flags & VMA_MEMFD != 0 { name } else { crate::res::deleted::unlinked(name).unwrap_or(name) };
        let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let id = match FileId::of(&link, path, false) {
            Ok(id) if id.file_type() == libc::S_IFREG => id,
            Ok(_) => return refuse("a mapping of a deleted file that is not a regular one"),
            Err(e) => {
                return Ok(Err(format!("mapping {:#x}-{:#x} of deleted file {path}: {link}: {e}", m.start, m.end)));
            }
        };
        if !m.shared && !no_copy(path, false) {
            v.flags |= VMA_FILE_COPY;
        }
        if m.shared && m.has_flag("mw") {
            v.flags |= VMA_MAY_WRITE;
        }
        v.file = Some(id);
    } else if v.kind == KIND_FILE {
        let (id, elf) = match seen.iter().find(|s| s.0 == name) {
            Some((_, id, elf)) => (id.clone(), *elf),
            None => {
                let (id, elf) = match FileId::of_mapped(name) {
                    Ok(x) => x,
                    Err(e) => return Ok(Err(format!("mapped file {name}: {e}"))),
                };
                seen.push((name.to_string(), id.clone(), elf));
                (id, elf)
            }
        };
        let (maj, min) = m.dev;
        if libc::major(id.dev) != maj || libc::minor(id.dev) != min || id.ino != m.inode {
            return refuse("a file that was replaced on disk after it was mapped");
        }
        if id.file_type() == libc::S_IFCHR && !m.shared {
            // A private mapping of /dev/zero is plain anonymous memory.
            v.kind = KIND_ANON;
            v.name.clear();
        } else {
            if id.file_type() != libc::S_IFREG {
                return refuse("a mapping of a device or special file");
            }
            if !m.shared && !no_copy(name, elf) {
                v.flags |= VMA_FILE_COPY;
            }
            if m.shared && m.has_flag("mw") {
                v.flags |= VMA_MAY_WRITE;
            }
            v.file = Some(id);
        }
    }
    if v.kind == KIND_VDSO {
        v.content = vec![0u8; v.len() as usize];
        mem::read_runs(pid, &[(v.start, v.len() as usize)], &mut v.content)?;
    }
    debug!("vma {:#x}-{:#x} {} {} {}", v.start, v.end, v.prot_string(), v.kind_name(), v.name);
    Ok(Ok(Some(v)))
}

/// Whether the file at `path` begins as an ELF file does; None when it cannot be read.
pub fn elf_magic(path: &str) -> Option<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut m = [0u8; 4];
    // Non-blocking: the path may have been replaced by a FIFO since the mapping was classified.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path);
    f.and_then(|f| f.read_exact_at(&mut m, 0)).ok().map(|()| &m == b"\x7fELF")
}

/// The lowest address an unprivileged process may map (vm.mmap_min_addr; 64 KiB if unknown).
pub fn mmap_min_addr() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/mmap_min_addr").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(65536)
}

/// A mapping as the restore will create it.
pub struct Plan {
    pub vma: Vma,
    /// Map the file (it is the same here) rather than anonymous memory.
    pub from_file: bool,
    /// For a deleted file: the fd of the file the restorer made again, inherited by the
    /// process (set by the restore once it made it).
    pub reopen: Option<i32>,
}

/// Decides, before anything is created, how each mapping is rebuilt on this node, and refuses
/// an image whose files or vdso do not fit.
pub fn plan(vmas: &[Vma], same_boot: bool, local_specials: &[MapEntry], local_vdso: &[u8]) -> Result<Vec<Plan>> {
    let mut out = Vec::with_capacity(vmas.len());
    let specials: Vec<&Vma> = vmas.iter().filter(|v| v.is_special()).collect();
    if !specials.is_empty() {
        let same_layout = specials.len() == local_specials.len()
            && specials.iter().all(|v| local_specials.iter().any(|l| l.name == v.name && l.len() == v.len()));
        let vdso_same = specials.iter().filter(|v| v.kind == KIND_VDSO).all(|v| v.content == local_vdso);
        if !same_layout || !vdso_same {
            let names: Vec<String> = specials.iter().map(|v| format!("{} {}K", v.name, v.len() / 1024)).collect();
            return Err(Error::Refused(format!(
                "the image's vdso ({}) differs from this kernel's: restart it on a node running the kernel build it was checkpointed on",
                names.join(", ")
            )));
        }
    }
    // Each file looked at once, however many of its mappings the image has (a library has
    // four or five).
    let mut seen: std::collections::HashMap<&str, std::result::Result<FileId, String>> = Default::default();
    for v in vmas {
        let mut from_file = false;
        if v.flags & (VMA_REMADE | VMA_SYSV) != 0 {
            // The restore makes the file (or the shared memory) again from the image.
            out.push(Plan { vma: v.clone(), from_file: true, reopen: None });
            continue;
        }
        if let Some(f) = &v.file {
            let now = seen
                .entry(f.path.as_str())
                .or_insert_with(|| FileId::of(&f.path, &f.path, true).map_err(|e| e.to_string()));
            let why = match now {
                Ok(now) => f.same_content(now, same_boot).err(),
                Err(e) => Some(e.clone()),
            };
            match why {
                None => from_file = true,
                Some(_) if v.flags & VMA_FILE_COPY != 0 => {} // the image has the pages
                Some(why) => {
                    // A shared mapping's pages are the file's: never in any image.
                    let without = if v.flags & VMA_SHARED != 0 {
                        "and the process maps it shared (MAP_SHARED), whose pages are the file's own, never in an image"
                    } else {
                        "and the image was made without its pages (--no-binary/--no-libs)"
                    };
                    return Err(Error::not_here(
                        format!("mapped file {} is not the same here, {without}", f.path),
                        format!("it {why}; the image needs the very same file"),
                    ));
                }
            }
        }
        out.push(Plan { vma: v.clone(), from_file, reopen: None });
    }
    Ok(out)
}

/// Creates every non-special mapping inside the child (whose own mappings are gone by now).
/// Mappings that receive pages are made writable first; `protect` sets the final protections.
/// `moved`: the exact ranges (sorted) of mappings made otherwise (moved in whole, see engine::precopy),
/// left out here. Made in two goes a group (each remote syscall alone costs two context
/// switches: 4 ms for a small C program's 25 mappings of files, one at a time): the group's
/// files opened, then its mappings made and the files closed. Each mapping of a file opens
/// it anew, as it did one at a time: two mappings side by side of one open file would
/// become one (the kernel merges them), where the process had two.
pub fn map_all(c: &mut Ctl, plans: &[Plan], moved: &[(u64, u64)]) -> Result<()> {
    // Files open at once in the child, at most: its limit on open files is rstrt's until
    // step 7.
    const FILES_AT_ONCE: usize = 64;
    let made_here = |p: &&Plan| !p.vma.is_special() && moved.binary_search(&(p.vma.start, p.vma.end)).is_err();
    let mut group: Vec<(&Plan, Option<(String, i32)>)> = Vec::new();
    let mut files = 0;
    for p in plans.iter().filter(made_here) {
        let v = &p.vma;
        if v.flags & VMA_SYSV != 0 {
            attach(c, v)?;
            continue;
        }
        let file = opened(p)?;
        if file.is_some() && files == FILES_AT_ONCE {
            make(c, &group)?;
            group.clear();
            files = 0;
        }
        files += file.is_some() as usize;
        group.push((p, file));
    }
    make(c, &group)
}

/// The file (path, open flags) a plan's mapping is made from, if any.
fn opened(p: &Plan) -> Result<Option<(String, i32)>> {
    let v = &p.vma;
    let shared = v.flags & VMA_SHARED != 0;
    if p.reopen.is_none() && !(v.kind == KIND_FILE && (p.from_file || shared)) {
        return Ok(None);
    }
    let path = match p.reopen {
        Some(fd) => format!("/proc/self/fd/{fd}"),
        None if v.flags & VMA_REMADE != 0 => {
            return Err(Error::Refused(format!("{:#x}-{:#x}: deleted file {} not made again", v.start, v.end, v.name)));
        }
        None => v.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
    };
    // Writable if it was opened so, even if mapped read-only now: mprotect may make it
    // writable later.
    let writable = v.prot & libc::PROT_WRITE as u32 != 0 || v.flags & VMA_MAY_WRITE != 0;
    let mode = if shared && writable { libc::O_RDWR } else { libc::O_RDONLY };
    // Non-blocking, for a path that names a FIFO by now (its mmap then fails).
    Ok(Some((path, mode | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)))
}

/// Makes the mappings of `group` (each with the file it is made from, if any: path, open
/// flags): opens the files in one go, then makes the mappings and closes the files in another.
/// A failure leaves files open in the child, which a failed restore kills.
fn make(c: &mut Ctl, group: &[(&Plan, Option<(String, i32)>)]) -> Result<()> {
    if group.is_empty() {
        return Ok(());
    }
    let area = c.scratch.clone();
    let mut opens = Calls::new();
    for (path, flags) in group.iter().filter_map(|g| g.1.as_ref()) {
        opens.open(path, *flags, path);
    }
    let fds = c.run_at_once(&opens, &area)?;
    let mut next = fds.iter();
    let mut maps = Calls::new();
    for (p, file) in group {
        let v = &p.vma;
        let shared = v.flags & VMA_SHARED != 0;
        let mut flags = libc::MAP_FIXED_NOREPLACE
            | match () {
                _ if shared => libc::MAP_SHARED,
                _ if v.flags & VMA_DROPPABLE != 0 => MAP_DROPPABLE,
                _ => libc::MAP_PRIVATE,
            };
        if v.flags & VMA_GROWSDOWN != 0 {
            flags |= libc::MAP_GROWSDOWN;
        }
        if v.flags & VMA_NORESERVE != 0 {
            flags |= libc::MAP_NORESERVE;
        }
        let what = format!("{:#x}-{:#x} {}", v.start, v.end, v.name);
        // Writable while its pages are written (protect_all sets its own protection after),
        // but for a reservation, which gets none.
        let prot = match () {
            _ if v.kind == KIND_FILE && shared => v.prot,
            _ if v.flags & VMA_EMPTY != 0 => v.prot,
            _ => (libc::PROT_READ | libc::PROT_WRITE) as u32,
        };
        match file {
            Some(_) => {
                let fd = *next.next().ok_or_else(|| Error::Proc(format!("{what}: its file was not opened")))?;
                maps.mmap_at(v.start, v.len(), prot, flags, Some(fd as i32), v.pgoff * PAGE_SIZE as u64, what)
            }
            None => maps.mmap_anon_at(v.start, v.len(), prot, flags, what),
        };
    }
    for (&fd, (path, _)) in fds.iter().zip(group.iter().filter_map(|g| g.1.as_ref())) {
        maps.close(fd as i32, path);
    }
    c.run_at_once(&maps, &area).map(drop)
}

/// One piece of an attachment of System V shared memory: the piece at offset 0 attaches the
/// whole segment (which SYSVIPC made again, with its id) at its address, read-only unless it
/// was attached for writing; every piece then gets its own protection.
fn attach(c: &mut Ctl, v: &Vma) -> Result<()> {
    let what = format!("{:#x}-{:#x} {}", v.start, v.end, v.name);
    let writable = v.prot & libc::PROT_WRITE as u32 != 0 || v.flags & VMA_MAY_WRITE != 0;
    let given = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ } as u32;
    if v.pgoff == 0 {
        let id = v.file.as_ref().map_or(-1, |f| f.ino as i32);
        let flags = if writable { 0 } else { libc::SHM_RDONLY };
        if c.shmat(id, RemoteAddr(v.start), flags, &what)? != RemoteAddr(v.start) {
            return Err(Error::Proc(format!("shmat {what} in pid {} landed elsewhere", c.pid())));
        }
    }
    if v.prot != given {
        c.mprotect(RemoteAddr(v.start), v.len(), v.prot)?;
    }
    Ok(())
}

/// Sets the final protection of every mapping that was made writable for filling.
pub fn protect_all(c: &mut Ctl, plans: &[Plan]) -> Result<()> {
    let mut l = Calls::new();
    for p in plans.iter().filter(|p| !p.vma.is_special()) {
        let v = &p.vma;
        if (v.kind == KIND_FILE && v.flags & VMA_SHARED != 0) || v.prot == (libc::PROT_READ | libc::PROT_WRITE) as u32 {
            continue;
        }
        l.mprotect(RemoteAddr(v.start), v.len(), v.prot);
    }
    let area = c.scratch.clone();
    c.run_at_once(&l, &area).map(drop)
}

/// Gives every mapping back its name (PR_SET_VMA_ANON_NAME) and what madvise and mlock had
/// set on it (VmFlags), once its pages are in and the process has its user's ids and limits
/// (locking needs RLIMIT_MEMLOCK). Returns what it could not give back: a name, on a kernel
/// that cannot name memory.
pub fn advise_all(c: &mut Ctl, plans: &[Plan]) -> Result<Vec<String>> {
    let mut l = Calls::new();
    // Which calls name a mapping, which one: a failure there is a note, not an error.
    let mut named = Vec::new();
    for v in plans.iter().map(|p| &p.vma).filter(|v| !v.is_special()) {
        let at = RemoteAddr(v.start);
        // A name given with PR_SET_VMA_ANON_NAME: "[anon:NAME]", "[anon_shmem:NAME]".
        let anon_name = v.name.strip_prefix("[anon:").or_else(|| v.name.strip_prefix("[anon_shmem:"));
        if let Some(name) = anon_name.and_then(|n| n.strip_suffix(']')) {
            named.push((l.len(), v));
            l.set_anon_name(at, v.len(), name);
        }
        for (bit, _, advice, call) in ADVICE {
            if v.flags & bit == 0 || bit == VMA_LOCKED || bit == VMA_LOCKONFAULT {
                continue;
            }
            l.madvise(at, v.len(), advice, &format!("madvise({call})"));
        }
        if v.flags & (VMA_LOCKED | VMA_LOCKONFAULT) != 0 {
            let onfault = if v.flags & VMA_LOCKONFAULT != 0 { libc::MLOCK_ONFAULT } else { 0 };
            let (start, end) = (v.start, v.end);
            let locked = format!(
                "mapping {start:#x}-{end:#x} {} was locked in memory (mlock), more than its user may lock here (RLIMIT_MEMLOCK)",
                v.name
            );
            l.mlock2(at, v.len(), onfault, move |r, who| match r {
                0.. => Ok(()),
                e if [libc::EPERM, libc::ENOMEM, libc::EAGAIN].iter().any(|&x| e == -(x as i64)) => {
                    Err(Error::Refused(locked.clone()))
                }
                e => Err(Error::sys(
                    format!("mlock2 (in {who})"),
                    format!("{start:#x}-{end:#x}"),
                    nix::errno::Errno::from_raw(-e as i32),
                )),
            });
        }
    }
    let area = c.scratch.clone();
    let r = c.run_at_once(&l, &area)?;
    let notes = named
        .into_iter()
        .filter_map(|(i, v)| r.get(i).filter(|&&e| e < 0).map(|&e| (v, e)))
        .map(|(v, e)| {
            format!(
                "mapping {:#x}-{:#x} lost its name {} (PR_SET_VMA_ANON_NAME: {})",
                v.start,
                v.end,
                crate::text::printable(&v.name),
                nix::errno::Errno::from_raw(-e as i32).desc()
            )
        })
        .collect();
    Ok(notes)
}

/// Checks a batch's runs against the plan and returns the (address, length) ranges to write and
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmas_round_trip() {
        let v = vec![
            Vma {
                start: 0x1000,
                end: 0x3000,
                prot: 5,
                flags: VMA_FILE_COPY,
                kind: KIND_FILE,
                pgoff: 2,
                name: "/bin/x".into(),
                file: Some(FileId { path: "/bin/x".into(), mode: libc::S_IFREG | 0o755, ..Default::default() }),
                content: vec![],
                untouched: false,
                shares: false,
                shm_id: None,
            },
            Vma {
                start: 0x3000,
                end: 0x4000,
                prot: 3,
                flags: 0,
                kind: KIND_HEAP,
                pgoff: 0,
                name: "[heap]".into(),
                file: None,
                content: vec![],
                untouched: false,
                shares: false,
                shm_id: None,
            },
            Vma {
                start: 0x7000,
                end: 0x9000,
                prot: 5,
                flags: 0,
                kind: KIND_VDSO,
                pgoff: 0,
                name: "[vdso]".into(),
                file: None,
                content: vec![1, 2, 3],
                untouched: false,
                shares: false,
                shm_id: None,
            },
        ];
        assert_eq!(decode_vmas(&encode_vmas(&v), 0).unwrap(), v);
        let mut bad = v.clone();
        bad[1].start = 0x2000; // overlaps
        assert!(decode_vmas(&encode_vmas(&bad), 0).is_err());
        // A shared mapping whose pages the image says it carries, or a relative path: refused.
        let mut bad = v.clone();
        bad[0].flags = VMA_SHARED | VMA_FILE_COPY;
        assert!(decode_vmas(&encode_vmas(&bad), 0).is_err());
        let mut bad = v.clone();
        bad[0].file.as_mut().unwrap().path = "bin/x".into();
        assert!(decode_vmas(&encode_vmas(&bad), 0).is_err());
        // A mapping of a FIFO or a device is never taken from an image.
        for mode in [libc::S_IFIFO, libc::S_IFCHR, libc::S_IFBLK, libc::S_IFDIR] {
            let mut bad = v.clone();
            bad[0].file.as_mut().unwrap().mode = mode | 0o644;
            assert!(decode_vmas(&encode_vmas(&bad), 0).is_err());
        }
        // A reservation: private anonymous memory without access; not a file's, not writable.
        let mut resv = v.clone();
        (resv[1].prot, resv[1].flags) = (0, VMA_EMPTY);
        assert_eq!(decode_vmas(&encode_vmas(&resv), 0).unwrap(), resv);
        for (i, prot) in [(0, 0), (1, 3)] {
            let mut bad = v.clone();
            (bad[i].prot, bad[i].flags) = (prot, VMA_EMPTY);
            assert!(decode_vmas(&encode_vmas(&bad), 0).is_err(), "{:?}", bad[i]);
        }
    }
}
