//! MMSTRUCT, VMAS and PAGES: the address space. Every mapping is recreated at its address with
//! its protection; file mappings are mapped from their file when the file on this node is the
//! same, anonymous otherwise; page contents come from the image in batches; the vdso/vvar areas
//! of this kernel are moved to where the process had them (same kernel build only).

use super::fileid::FileId;
use super::image::{Scope, SectionDef};
use crate::crf::Tag;
use crate::crf::pages::{self, RUN_FILE_COPY, Run};
use crate::crf::{Dec, Enc, PAGE_SIZE, Result as CrfResult, Sink, Writer};
use crate::error::{Error, Result};
use crate::ptrace::procfs::MapEntry;
use crate::ptrace::{Ctl, RemoteAddr, mem};
use log::debug;
use nix::errno::Errno;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

/// MMSTRUCT: the mm layout (code, data, brk, stack, arguments, environment, auxv, exe).
pub const MMSTRUCT: SectionDef = SectionDef {
    tag: Tag(3),
    name: "MMSTRUCT",
    scope: Scope::Process,
    required: true,
    layout: true,
    encode: |st| vec![st.mm.encode()],
    decode: |b, at, st| {
        st.mm = MmStruct::decode(b, at)?;
        Ok(())
    },
    describe: |v| {
        let m = &v.st.mm;
        vec![
            format!(
                "mm:        code {:#x}-{:#x} data {:#x}-{:#x} brk {:#x}-{:#x} stack {:#x}",
                m.start_code, m.end_code, m.start_data, m.end_data, m.start_brk, m.brk, m.start_stack
            ),
            format!(
                "           args {:#x}-{:#x} env {:#x}-{:#x} auxv {} bytes",
                m.arg_start,
                m.arg_end,
                m.env_start,
                m.env_end,
                m.auxv.len()
            ),
        ]
    },
};

/// VMAS: every mapping; the page batches that follow fill them.
pub const VMAS: SectionDef = SectionDef {
    tag: Tag(4),
    name: "VMAS",
    scope: Scope::Process,
    required: true,
    layout: true,
    encode: |st| vec![encode_vmas(&st.vmas)],
    decode: |b, at, st| {
        st.vmas = decode_vmas(b, at)?;
        Ok(())
    },
    describe: |v| {
        let mut out = vec![format!("memory:    {} mappings, {} bytes of pages stored", v.st.vmas.len(), v.page_bytes)];
        for m in &v.st.vmas {
            let b = v.stored.get(&m.start).copied().unwrap_or(0);
            let extra = match &m.file {
                Some(f) if !f.build_id.is_empty() => format!(" build-id {}", super::fileid::hex(&f.build_id)),
                _ => String::new(),
            };
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
    },
};

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

/// The mm layout PR_SET_MM_MAP restores (what /proc/PID/stat, cmdline, environ, auxv show).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MmStruct {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u8>,
    pub exe: Option<FileId>,
}

impl MmStruct {
    fn fields(&self) -> [u64; 11] {
        [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        for v in self.fields() {
            e.u64(v);
        }
        e.bytes(&self.auxv);
        e.u8(self.exe.is_some() as u8);
        if let Some(x) = &self.exe {
            x.encode(&mut e);
        }
        e.into_bytes()
    }

    pub fn decode(b: &[u8], at: u64) -> CrfResult<MmStruct> {
        let mut d = Dec::new(b, at, "MMSTRUCT");
        let mut f = [0u64; 11];
        for v in f.iter_mut() {
            *v = d.u64()?;
        }
        let auxv = d.bytes()?.to_vec();
        if auxv.len() % 16 != 0 || auxv.len() > 512 {
            return Err(d.bad_at(at, format!("auxv of {} bytes is not valid", auxv.len())));
        }
        let exe = if d.u8()? != 0 { Some(FileId::decode(&mut d)?) } else { None };
        if let Some(x) = exe.as_ref().filter(|x| x.file_type() != libc::S_IFREG) {
            return Err(d.bad_at(at, format!("the executable {} is not a regular file", x.path)));
        }
        d.finish()?;
        let [
            start_code,
            end_code,
            start_data,
            end_data,
            start_brk,
            brk,
            start_stack,
            arg_start,
            arg_end,
            env_start,
            env_end,
        ] = f;
        Ok(MmStruct {
            start_code,
            end_code,
            start_data,
            end_data,
            start_brk,
            brk,
            start_stack,
            arg_start,
            arg_end,
            env_start,
            env_end,
            auxv,
            exe,
        })
    }

    /// PR_SET_MM_MAP inside the restored child. Returns whether /proc/PID/exe names the image's
    /// executable. `exe` is the executable as the child has it open (the restorer opened it
    /// before the child was forked; see engine::restore), when the link may be set at all.
    /// Changing the exe link needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), an executable
    /// file, and the old exe unmapped; when it fails the rest is set without it.
    pub fn restore(&self, c: &mut Ctl, exe: Option<i32>) -> Result<bool> {
        let pid = c.pid();
        let auxv_at = c.scratch.put(pid, 512, &self.auxv)?;
        // The child was forked from rstrt: its exe is ours. If that is already the image's
        // executable (a restored crs), there is nothing to change.
        let ours = std::fs::metadata("/proc/self/exe").ok().map(|m| (m.dev(), m.ino()));
        let already = self.exe.as_ref().is_some_and(|x| ours == Some((x.dev, x.ino)));
        let exe_fd: i64 = match exe {
            Some(fd) if !already => fd as i64,
            _ => -1,
        };
        let set = |c: &mut Ctl, fd: i64| -> Result<i64> {
            let mut e = Enc::new();
            for v in self.fields() {
                e.u64(v);
            }
            e.u64(auxv_at.0).u32(self.auxv.len() as u32).u32(fd as u32);
            let map = c.scratch.put(pid, 0, e.as_slice())?;
            c.prctl_raw(libc::PR_SET_MM, [libc::PR_SET_MM_MAP as u64, map.0, e.len() as u64, 0])
        };
        let mut r = set(c, exe_fd)?;
        let mut exe_set = already || (exe_fd >= 0 && r == 0);
        if exe_fd >= 0 && r < 0 {
            // EPERM (no capability), EBUSY (old exe still mapped), EACCES (not executable here):
            // the exe link is the one thing we can go without.
            r = set(c, -1)?;
            exe_set = false;
        }
        if r < 0 {
            let what = format!("brk {:#x}..{:#x}", self.start_brk, self.brk);
            return Err(Error::sys(format!("prctl(PR_SET_MM_MAP) (in pid {pid})"), what, Errno::from_raw(-r as i32)));
        }
        Ok(exe_set)
    }
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
            && v.flags & !15 == 0
            && (v.kind == KIND_FILE) == v.file.is_some()
            // Only regular files are mapped: never a device or a FIFO an image names.
            && v.file.as_ref().is_none_or(|f| f.file_type() == libc::S_IFREG);
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

/// Turns /proc/PID/smaps into the VMA list, refusing what cannot be restored. `no_copy(path)`
/// says whether the unmodified pages of a mapped file are left out (--no-binary, --no-libs).
pub fn classify(pid: i32, maps: &[MapEntry], no_copy: &dyn Fn(&str, bool) -> bool) -> Result<Vec<Vma>> {
    let mut out = Vec::with_capacity(maps.len());
    for m in maps {
        let refuse = |what: &str| {
            Error::Refused(format!(
                "pid {pid}: mapping {:#x}-{:#x} {} is {what}; crs cannot checkpoint that yet",
                m.start, m.end, m.name
            ))
        };
        if m.name == "[vsyscall]" {
            continue;
        }
        if m.has_flag("ht") {
            return Err(refuse("hugetlbfs memory"));
        }
        let mut v = Vma {
            start: m.start,
            end: m.end,
            prot: prot_of(m),
            kind: KIND_ANON,
            pgoff: m.offset / PAGE_SIZE as u64,
            name: m.name.clone(),
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
        let name = m.name.as_str();
        v.kind = match name {
            "[vdso]" => KIND_VDSO,
            n if n.starts_with("[vvar") => KIND_VVAR,
            "[heap]" => KIND_HEAP,
            "[stack]" => KIND_STACK,
            "" if m.shared => KIND_SHMEM,
            "" => KIND_ANON,
            "/dev/zero (deleted)" if m.shared => KIND_SHMEM,
            n if n.starts_with("[anon_shmem:") => KIND_SHMEM,
            n if n.starts_with("[anon:") => KIND_ANON,
            n if n.starts_with("/SYSV") => return Err(refuse("System V shared memory")),
            n if n.starts_with("/memfd:") => return Err(refuse("a memfd")),
            n if n.ends_with(" (deleted)") => return Err(refuse("a mapping of a deleted file")),
            n if n.starts_with('/') => KIND_FILE,
            _ => return Err(refuse("a special mapping")),
        };
        if v.kind == KIND_FILE {
            let id = FileId::of(name, name, true)
                .map_err(|e| Error::Refused(format!("pid {pid}: mapped file {name}: {e}")))?;
            let (maj, min) = m.dev;
            if libc::major(id.dev) != maj || libc::minor(id.dev) != min || id.ino != m.inode {
                return Err(refuse("a file that was replaced on disk after it was mapped"));
            }
            if id.file_type() == libc::S_IFCHR && !m.shared {
                // A private mapping of /dev/zero is plain anonymous memory.
                v.kind = KIND_ANON;
                v.name.clear();
            } else {
                if id.file_type() != libc::S_IFREG {
                    return Err(refuse("a mapping of a device or special file"));
                }
                if !m.shared && !no_copy(name, is_elf(name)) {
                    v.flags |= VMA_FILE_COPY;
                }
                v.file = Some(id);
            }
        }
        if v.kind == KIND_VDSO {
            v.content = vec![0u8; v.len() as usize];
            mem::read_runs(pid, &[(v.start, v.len() as usize)], &mut v.content)?;
        }
        debug!("vma {:#x}-{:#x} {} {} {}", v.start, v.end, v.prot_string(), v.kind_name(), v.name);
        out.push(v);
    }
    Ok(out)
}

fn is_elf(path: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let mut m = [0u8; 4];
    // Non-blocking: the path may have been replaced by a FIFO since the mapping was classified.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path);
    f.and_then(|f| f.read_exact_at(&mut m, 0)).is_ok() && &m == b"\x7fELF"
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Which pages of `v` go into the image, as (first page index, count, flags) runs.
fn page_runs(pagemap: &File, v: &Vma) -> Result<Vec<Run>> {
    if v.is_special() || (v.kind == KIND_FILE && v.flags & VMA_SHARED != 0) {
        return Ok(Vec::new());
    }
    let npages = (v.len() / PAGE_SIZE as u64) as usize;
    // For a file mapping: pages wholly past the end of the file cannot be read (SIGBUS).
    let file_pages = v.file.as_ref().map(|f| f.size.div_ceil(PAGE_SIZE as u64).saturating_sub(v.pgoff) as usize);
    let copy = v.flags & VMA_FILE_COPY != 0 && v.prot & libc::PROT_READ as u32 != 0;
    let mut runs: Vec<Run> = Vec::new();
    let mut ent = vec![0u8; 8 * 65536];
    let mut i = 0usize;
    while i < npages {
        let n = (npages - i).min(65536);
        let addr = v.start + (i * PAGE_SIZE) as u64;
        let buf = &mut ent[..n * 8];
        pagemap
            .read_exact_at(buf, addr / PAGE_SIZE as u64 * 8)
            .map_err(|e| Error::io(format!("pagemap at {addr:#x}"), e))?;
        for k in 0..n {
            let e = u64::from_le_bytes(buf[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8]));
            let idx = i + k;
            let touched = e & (PM_PRESENT | PM_SWAP) != 0;
            let flags = match v.kind {
                KIND_FILE if touched && e & PM_FILE == 0 => Some(0), // modified (copied on write)
                KIND_FILE if copy && file_pages.is_some_and(|fp| idx < fp) => Some(RUN_FILE_COPY),
                KIND_FILE => None,
                // Shared memory may hold pages only another process (a child) touched, which
                // our page table does not show: take all of it.
                KIND_SHMEM => Some(0),
                _ if touched => Some(0),
                _ => None,
            };
            let Some(flags) = flags else { continue };
            let a = v.start + (idx * PAGE_SIZE) as u64;
            match runs.last_mut() {
                Some(r) if r.flags == flags && r.addr + r.len() as u64 == a => r.npages += 1,
                _ => runs.push(Run { addr: a, npages: 1, flags }),
            }
        }
        i += n;
    }
    Ok(runs)
}

/// One batch to dump: its runs, and for each whether the process may read it (else the pages
/// come through /proc/PID/mem).
struct BatchPlan {
    runs: Vec<Run>,
    readable: Vec<bool>,
    pages: usize,
}

/// Splits the pages to store into batches of at most MAX_BATCH_PAGES.
/// Pages per PAGES section written: 1 MiB. Big enough that per-batch costs vanish, small
/// enough that the buffers a stream passes through (two here, a few frames on each side of a
/// migration) cost little to fault in for a small process. The format allows up to
/// MAX_BATCH_PAGES.
const DUMP_BATCH_PAGES: usize = 256;

fn plan_batches(pid: i32, vmas: &[Vma]) -> Result<Vec<BatchPlan>> {
    let pm_path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&pm_path).map_err(|e| Error::io(&pm_path, e))?;
    let mut out = Vec::new();
    let mut cur = BatchPlan { runs: Vec::new(), readable: Vec::new(), pages: 0 };
    for v in vmas {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        for mut r in page_runs(&pagemap, v)? {
            while r.npages > 0 {
                let take = (r.npages as usize).min(DUMP_BATCH_PAGES - cur.pages) as u32;
                cur.runs.push(Run { addr: r.addr, npages: take, flags: r.flags });
                cur.readable.push(readable);
                cur.pages += take as usize;
                r.addr += take as u64 * PAGE_SIZE as u64;
                r.npages -= take;
                if cur.pages == DUMP_BATCH_PAGES {
                    out.push(std::mem::replace(
                        &mut cur,
                        BatchPlan { runs: Vec::new(), readable: Vec::new(), pages: 0 },
                    ));
                }
            }
        }
    }
    if cur.pages > 0 {
        out.push(cur);
    }
    Ok(out)
}

/// Reads one batch's pages: readable runs in one process_vm_readv, the rest through
/// /proc/PID/mem.
fn read_batch(pid: i32, b: &BatchPlan, data: &mut [u8]) -> Result<()> {
    let mut off = 0usize;
    let mut iov: Vec<(u64, usize)> = Vec::new();
    let mut iov_at = 0usize;
    let flush = |iov: &mut Vec<(u64, usize)>, at: usize, data: &mut [u8]| -> Result<()> {
        let len: usize = iov.iter().map(|x| x.1).sum();
        mem::read_runs(pid, iov, &mut data[at..at + len])?;
        iov.clear();
        Ok(())
    };
    for (r, &ok) in b.runs.iter().zip(&b.readable) {
        if ok {
            if iov.is_empty() {
                iov_at = off;
            }
            iov.push((r.addr, r.len()));
        } else {
            if !iov.is_empty() {
                flush(&mut iov, iov_at, data)?;
            }
            mem::read_proc_mem(pid, r.addr, &mut data[off..off + r.len()])?;
        }
        off += r.len();
    }
    if !iov.is_empty() {
        flush(&mut iov, iov_at, data)?;
    }
    Ok(())
}

/// Writes the pages of every mapping in batches; returns the number of pages. A second thread
/// reads the next batch from the process while this one checksums and writes the last. Each
/// batch's buffer is given to the output whole (a migration sends it as a frame, uncopied);
/// the outputs hand buffers back for the reader to fill again.
pub fn dump_pages<W: Sink>(pid: i32, vmas: &[Vma], w: &mut Writer<W>) -> Result<u64> {
    use std::sync::mpsc::sync_channel;
    let batches = plan_batches(pid, vmas)?;
    let total: u64 = batches.iter().map(|b| b.pages as u64).sum();
    std::thread::scope(|s| {
        let (full_tx, full_rx) = sync_channel::<Result<Vec<u8>>>(1);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(2);
        for _ in 0..2 {
            let _ = free_tx.send(vec![0u8; DUMP_BATCH_PAGES * PAGE_SIZE]);
        }
        let plans = &batches;
        s.spawn(move || {
            for b in plans {
                let Ok(mut buf) = free_rx.recv() else { return };
                let n = b.pages * PAGE_SIZE;
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                buf.truncate(n);
                let r = read_batch(pid, b, &mut buf).map(|_| buf);
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        for b in &batches {
            let buf = full_rx.recv().map_err(|_| Error::Proc("page reader stopped".into()))??;
            let back = pages::give_batch(w, &b.runs, buf).map_err(|e| Error::io("image", e))?;
            // The reader always gets a buffer for its next batch; at most two wait for it (a
            // blocking send could deadlock against a reader waiting to hand over a batch).
            let next = back.unwrap_or_else(|| vec![0u8; DUMP_BATCH_PAGES * PAGE_SIZE]);
            let _ = free_tx.try_send(next);
        }
        Ok(total)
    })
}

/// A mapping as the restore will create it.
pub struct Plan {
    pub vma: Vma,
    /// Map the file (it is the same here) rather than anonymous memory.
    pub from_file: bool,
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
    for v in vmas {
        let mut from_file = false;
        if let Some(f) = &v.file {
            let why = match FileId::of(&f.path, &f.path, true) {
                Ok(now) => f.same_content(&now, same_boot).err(),
                Err(e) => Some(e.to_string()),
            };
            match why {
                None => from_file = true,
                Some(_) if v.flags & VMA_FILE_COPY != 0 => {} // the image has the pages
                Some(why) => {
                    return Err(Error::not_here(
                        format!(
                            "mapped file {} is not the same here, and the image was made without its pages (--no-binary/--no-libs)",
                            f.path
                        ),
                        format!("it {why}; the image needs the very same file"),
                    ));
                }
            }
        }
        out.push(Plan { vma: v.clone(), from_file });
    }
    Ok(out)
}

/// Creates every non-special mapping inside the child (whose own mappings are gone by now).
/// Mappings that receive pages are made writable first; `protect` sets the final protections.
pub fn map_all(c: &mut Ctl, plans: &[Plan]) -> Result<()> {
    let pid = c.pid();
    for p in plans.iter().filter(|p| !p.vma.is_special()) {
        let v = &p.vma;
        let shared = v.flags & VMA_SHARED != 0;
        let mut flags = libc::MAP_FIXED_NOREPLACE | if shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        if v.flags & VMA_GROWSDOWN != 0 {
            flags |= libc::MAP_GROWSDOWN;
        }
        if v.flags & VMA_NORESERVE != 0 {
            flags |= libc::MAP_NORESERVE;
        }
        let what = format!("{:#x}-{:#x} {}", v.start, v.end, v.name);
        let shared_file = v.kind == KIND_FILE && shared;
        let prot = if shared_file { v.prot } else { (libc::PROT_READ | libc::PROT_WRITE) as u32 };
        let mut fd = None;
        if v.kind == KIND_FILE && (p.from_file || shared) {
            let path = &v.file.as_ref().map(|f| f.path.clone()).unwrap_or_default();
            let mode = if shared && v.prot & libc::PROT_WRITE as u32 != 0 { libc::O_RDWR } else { libc::O_RDONLY };
            // Non-blocking, for a path that names a FIFO by now (its mmap then fails).
            fd = Some(c.open(path, mode | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY, path)?);
        } else {
            flags |= libc::MAP_ANONYMOUS;
        }
        let off = if fd.is_some() { v.pgoff * PAGE_SIZE as u64 } else { 0 };
        let got = c.mmap(RemoteAddr(v.start), v.len(), prot as i32, flags, fd, off, &what);
        if let Some(fd) = fd {
            c.close(fd, &what)?;
        }
        if got? != RemoteAddr(v.start) {
            return Err(Error::Proc(format!("mmap {what} in pid {pid} landed elsewhere")));
        }
    }
    Ok(())
}

/// Sets the final protection of every mapping that was made writable for filling.
pub fn protect_all(c: &mut Ctl, plans: &[Plan]) -> Result<()> {
    for p in plans.iter().filter(|p| !p.vma.is_special()) {
        let v = &p.vma;
        if (v.kind == KIND_FILE && v.flags & VMA_SHARED != 0) || v.prot == (libc::PROT_READ | libc::PROT_WRITE) as u32 {
            continue;
        }
        c.mprotect(RemoteAddr(v.start), v.len(), v.prot)?;
    }
    Ok(())
}

/// Checks a batch's runs against the plan and returns the (address, length) ranges to write and
/// the offsets of their data in the batch; file-copy runs of file-backed mappings are skipped.
pub fn batch_targets(plans: &[Plan], runs: &[Run], at: u64) -> Result<Vec<(u64, usize, usize)>> {
    let mut out = Vec::with_capacity(runs.len());
    let mut off = 0usize;
    for r in runs {
        let end = r.addr + r.len() as u64;
        let i = plans.partition_point(|p| p.vma.end <= r.addr);
        let p = plans.get(i).filter(|p| p.vma.start <= r.addr && end <= p.vma.end);
        let Some(p) = p else {
            return Err(Error::Image(crate::crf::CrfError::Bad {
                offset: at,
                what: format!("page run {:#x}-{end:#x} lies outside every mapping", r.addr),
            }));
        };
        let v = &p.vma;
        if v.is_special() || (v.kind == KIND_FILE && v.flags & VMA_SHARED != 0) {
            return Err(Error::Image(crate::crf::CrfError::Bad {
                offset: at,
                what: format!("page run {:#x} targets a {} mapping", r.addr, v.kind_name()),
            }));
        }
        if !(r.flags & RUN_FILE_COPY != 0 && p.from_file) {
            out.push((r.addr, r.len(), off));
        }
        off += r.len();
    }
    Ok(out)
}

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
            },
        ];
        assert_eq!(decode_vmas(&encode_vmas(&v), 0).unwrap(), v);
        let mut bad = v.clone();
        bad[1].start = 0x2000; // overlaps
        assert!(decode_vmas(&encode_vmas(&bad), 0).is_err());
        // A mapping of a FIFO or a device is never taken from an image.
        for mode in [libc::S_IFIFO, libc::S_IFCHR, libc::S_IFBLK, libc::S_IFDIR] {
            let mut bad = v.clone();
            bad[0].file.as_mut().unwrap().mode = mode | 0o644;
            assert!(decode_vmas(&encode_vmas(&bad), 0).is_err());
        }
    }

    #[test]
    fn mm_round_trip() {
        let m = MmStruct {
            start_code: 1,
            end_code: 2,
            start_data: 3,
            end_data: 4,
            start_brk: 5,
            brk: 6,
            start_stack: 7,
            arg_start: 8,
            arg_end: 9,
            env_start: 10,
            env_end: 11,
            auxv: vec![0; 32],
            exe: None,
        };
        assert_eq!(MmStruct::decode(&m.encode(), 0).unwrap(), m);
    }

    #[test]
    fn runs_outside_mappings_are_refused() {
        let plans = vec![Plan {
            vma: Vma { start: 0x1000, end: 0x3000, prot: 3, kind: KIND_ANON, ..Default::default() },
            from_file: false,
        }];
        assert!(batch_targets(&plans, &[Run { addr: 0x2000, npages: 1, flags: 0 }], 64).is_ok());
        assert!(batch_targets(&plans, &[Run { addr: 0x2000, npages: 2, flags: 0 }], 64).is_err());
        let e = batch_targets(&plans, &[Run { addr: 0x5000, npages: 1, flags: 0 }], 64).unwrap_err();
        assert!(e.to_string().contains("offset 64"), "{e}");
    }
}
