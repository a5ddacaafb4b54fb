//! Pre-copy, for a live migration: the pages of a process's private anonymous memory sent
//! ahead while it runs, in rounds, so that the final image (made once it is frozen) carries
//! only what changed since: its other pages are kept runs (crf::pages::RUN_KEPT) that the
//! destination already holds.
//!
//! The source ([`Source`]) tracks the process's writes with userfaultfd write-protection
//! (ptrace::wp). Each round it follows the process's mappings, tracks the new ones, and sends
//! the pages that hold data and that the destination does not hold as they are now: those
//! written since the last round, and those never sent. Writes during a round are found by
//! the next one; the last, taken frozen, decides what is kept.
//!
//! The destination ([`Store`]) holds what it is sent in one mapping of its own per area (a
//! whole private anonymous mapping of the process, the same size), so that the restore can
//! move each into place with mremap, no page copied: the restored process is forked from the
//! holder and inherits them. Both sides follow the same rule when the process's mappings
//! change ([`Area`] exact match; pages of a changed area carried over where old and new
//! overlap), so that the source always knows which pages the destination holds.
//!
//! The same Store holds, for the restore of a tree, the pages its processes share since a
//! fork (res::treecow): every process inherits it, and each moves into place the areas it
//! maps, so that they share those pages again.
//!
//! A tree's processes are tracked each with its own Source, and their rounds go one after the
//! other, each process's frames after a Member frame naming it; the destination holds a Store
//! per process ([`Stores`]). Each restored process inherits them all (forked from the holder
//! or from its restored parent, which is one until it is restored), moves its own out of the
//! way of its mappings ([`Store::clear_there`]) and into place, and drops the others. An area
//! is held where the process has it when nothing of the holder's is there (`map_local`):
//! inherited in place, it needs no move (a runtime's heap is hundreds of areas, and each move
//! costs 8-17 us).
//!
//! Pages a process shares since a fork with an earlier one of the tree (its base for that
//! area: the first that holds it with the same range) are sent once: its rounds leave out
//! those the base's held pages stand for ([`Source::same_as`]), the image says to take the
//! base's (RUN_SHARED: [`Precopied::kept_all`]), and its restore moves the base's area into
//! place, its own kept pages over it ([`Part`],
//! [`Store::copy_aside`]), so that the processes share those pages again.
//!
//! The private mappings of files the destination of a live migration lacks go ahead as areas
//! too ([`Source::carry_files`]): the image would carry their pages, and the restore make
//! them anonymous memory; it moves the area into place instead, and the image keeps the
//! unmodified pages, if the file is the same at the freeze as when they began to go (a
//! restore that finds the file after all maps it, and lets the area go).
//!
//! What is never pre-copied (sent whole in the final image, as without --live): stacks
//! (MAP_GROWSDOWN), System V shared memory, memfds, other file mappings, droppable memory;
//! the processes of a tree forked once the rounds began. The MAP_SHARED anonymous memory the
//! processes share goes ahead another way, by content (engine::shmahead).

use super::layout::{find_free, intersect, minus};
use super::pagestates::States;
use super::shmahead::ShmSource;
use crate::crf::PAGE_SIZE;
use crate::error::{Error, Result};
use crate::ptrace::procfs::{self, MapEntry};
use crate::ptrace::wp::{self, Tracker};
use crate::res::fileid::Stamp;
use crate::res::image::ProcessState;
use crate::res::memory::{self, Vma};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PAGE: u64 = PAGE_SIZE as u64;
/// Pages sent in one frame: 1 MiB of data.
const FRAME_PAGES: usize = 256;

/// A private anonymous mapping whose pages are sent ahead, as the destination holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    pub start: u64,
    pub end: u64,
    /// MAP_NORESERVE: the holder's mapping has it too, and the restored one.
    pub noreserve: bool,
}

impl Area {
    fn pages(&self) -> usize {
        ((self.end - self.start) / PAGE) as usize
    }
}

/// Whether a mapping of the image is one whose pages may have been sent ahead: the same test
/// on both sides ([`eligible_map`] and [`Source::tracks`] for a running process).
pub fn eligible(v: &Vma) -> bool {
    memory::private_anon(v) || file_copy(v)
}

/// A private mapping of a file whose unmodified pages the image stores (VMA_FILE_COPY, not
/// left to an earlier process's copy): a live migration to a node without the file sends its
/// pages ahead as an area (see [`Source::carry_files`]), and a restore without the file moves
/// them into place, anonymous memory as it would be without them.
fn file_copy(v: &Vma) -> bool {
    let not = memory::VMA_SHARED | memory::VMA_COPY_ELSEWHERE | memory::VMA_REMADE | memory::VMA_SYSV;
    v.kind == memory::KIND_FILE
        && v.flags & (not | memory::VMA_FILE_COPY) == memory::VMA_FILE_COPY
        && v.prot & libc::PROT_READ as u32 != 0
}

/// The area of an eligible mapping.
pub fn area_of(v: &Vma) -> Area {
    Area { start: v.start, end: v.end, noreserve: v.flags & memory::VMA_NORESERVE != 0 }
}

/// Whether an area held (sent ahead) becomes mapping `v` of the frozen process: the eligible
/// mapping it begins, of the same kind. Its end may differ: a heap grown or shrunk at its end
/// since the last round (brk) keeps the pages that went ahead, and the image carries the rest.
fn becomes(a: &Area, v: &Vma) -> bool {
    eligible(v) && v.start == a.start && area_of(v).noreserve == a.noreserve
}

/// [`eligible`] for a mapping of a running process, as smaps shows it, less what may not be
/// accessed (PROT_NONE): an address space reserved that way (mariadbd reserves 8 TiB, Go and
/// Java their heaps) costs nothing to carry frozen, but its tracking and every look at it
/// would cost with its size (two seconds of freeze for 8 TiB). Made accessible since, it is
/// a mapping the next round tracks (the destination holds only what the rounds sent).
fn eligible_map(m: &MapEntry) -> bool {
    let anon = m.name.is_empty() || m.name == "[heap]" || m.name.starts_with("[anon:");
    anon && m.inode == 0
        && (m.read || m.write || m.exec)
        && !m.shared
        && m.pkey == 0
        && !m.vmflags.iter().any(|f| untracked(f))
}

/// The VmFlags of mappings never sent ahead: stacks, droppable, hugetlb, shadow stacks,
/// sealed, device memory, and those a userfaultfd of the process's own handles.
fn untracked(flag: &str) -> bool {
    ["gd", "dp", "ht", "ss", "sl", "pf", "io", "um", "ui"].contains(&flag)
}

/// The smallest mapping of a file the destination lacks whose pages go ahead: a quarter of a
/// MiB, some 0.25 ms of the freeze at 1 GB/s. (A python pool of four under pyenv, whose
/// interpreter restartd does not see, sent its 40 small modules' mappings each as an area,
/// and froze 10 ms longer, not shorter: each area is moved out of the way in each process.)
const FILE_AREA_MIN: u64 = 256 << 10;

/// A file the destination of a live migration lacks (see [`Source::carry_files`]).
#[derive(Clone, Copy, Debug)]
struct Lacking {
    dev: u64,
    ino: u64,
    size: u64,
}

/// The file process `pid` maps at `range` (device and inode `id`, `path`), as it is now:
/// looked at through /proc/PID/map_files (root), else by its path, if that is the very inode.
/// Found the same at the freeze as when its pages began to go ahead, the pages that went
/// unmodified are still the file's.
fn stamp(pid: i32, (start, end): (u64, u64), path: &str, id: (u64, u64)) -> Option<Stamp> {
    let link = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    let m = std::fs::metadata(link).or_else(|_| std::fs::metadata(path)).ok()?;
    Some(Stamp::of(&m)).filter(|s| (s.dev, s.ino) == id)
}

/// The device number of mapping `m`'s file.
fn dev_of(m: &MapEntry) -> u64 {
    libc::makedev(m.dev.0, m.dev.1)
}

/// Joins in `maps` (smaps, in order) the eligible mappings side by side that `now` (the maps
/// read since) shows as one: the first's, to the end of the last. Any other difference is
/// left for the next look.
fn joined(maps: &mut Vec<MapEntry>, now: &[MapEntry]) {
    let mut i = 0;
    while i < maps.len() {
        // (`now` is in address order, as /proc lists it.)
        let at = now.binary_search_by_key(&maps[i].start, |n| n.start).ok();
        let whole = at.map(|k| now[k].end).filter(|&e| e > maps[i].end);
        let Some(end) = whole.filter(|_| eligible_map(&maps[i])) else {
            i += 1;
            continue;
        };
        // The ones that follow, each where the last ended, up to that end exactly.
        let mut j = i + 1;
        while j < maps.len() && maps[j].start == maps[j - 1].end && maps[j - 1].end < end && eligible_map(&maps[j]) {
            j += 1;
        }
        if maps[j - 1].end == end {
            let rest: Vec<MapEntry> = maps.drain(i + 1..j).collect();
            let m = &mut maps[i];
            m.end = end;
            // Pages shared with another process anywhere in it are (see Source::round).
            m.shares |= rest.iter().any(|r| r.shares);
            m.untouched &= rest.iter().all(|r| r.untouched);
        }
        i += 1;
    }
}

/// Areas frame: u32 count, then per area u64 start, u64 end, u32 flags (bit 0: noreserve;
/// bit 1: huge pages allowed, a hint, see [`Store::pages`]), u32 zero.
pub fn encode_areas(areas: &[(Area, bool)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + areas.len() * 24);
    b.extend((areas.len() as u32).to_le_bytes());
    for (a, huge) in areas {
        b.extend(a.start.to_le_bytes());
        b.extend(a.end.to_le_bytes());
        b.extend((a.noreserve as u32 | (*huge as u32) << 1).to_le_bytes());
        b.extend(0u32.to_le_bytes());
    }
    b
}

pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// Reads an Areas frame: areas in order, page-aligned, not overlapping, in user space.
pub fn decode_areas(b: &[u8]) -> std::result::Result<Vec<(Area, bool)>, String> {
    let n = le32(b, 0) as usize;
    if b.len() != 4 + n * 24 {
        return Err(format!("an Areas frame of {} bytes for {n} areas", b.len()));
    }
    let mut out: Vec<(Area, bool)> = Vec::with_capacity(n);
    for i in 0..n {
        let at = 4 + i * 24;
        let flags = le32(b, at + 16);
        let a = Area { start: le64(b, at), end: le64(b, at + 8), noreserve: flags & 1 != 0 };
        let ok = a.start.is_multiple_of(PAGE)
            && a.end.is_multiple_of(PAGE)
            && a.start < a.end
            && a.end <= 1 << 56
            && out.last().is_none_or(|p| p.0.end <= a.start);
        if !ok {
            return Err(format!("area {:#x}-{:#x} is not a mapping's", a.start, a.end));
        }
        out.push((a, flags & 2 != 0));
    }
    Ok(out)
}

/// A Pages frame: u32 run count, u32 zero, per run u64 address, u32 pages, u32 zero; then the
/// pages' data, in order.
fn pages_header(runs: &[(u64, u64)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + runs.len() * 16);
    put_runs(&mut b, runs, 0);
    b
}

/// Appends the head of a Pages frame of `runs` (start, end) to `b`, each run's last word
/// `flag` (0; a post-copy's ZERO, migration::postcopy).
pub fn put_runs(b: &mut Vec<u8>, runs: &[(u64, u64)], flag: u32) {
    b.extend((runs.len() as u32).to_le_bytes());
    b.extend(0u32.to_le_bytes());
    for &(s, e) in runs {
        b.extend(s.to_le_bytes());
        b.extend((((e - s) / PAGE) as u32).to_le_bytes());
        b.extend(flag.to_le_bytes());
    }
}

/// The frames a round sends (the protocol's Member, Areas and Pages): Member (the pid, u32
/// little-endian) before each process's Areas and Pages; then Caught (empty), which returns
/// once the other end holds everything sent (a destination that answers; an image at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    Member,
    Areas,
    Pages,
    /// Pages of the tree's shared memory (engine::shmahead).
    Shm,
    Caught,
}

/// What one round sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Round {
    pub pages: u64,
    pub took: Duration,
    /// Pages left out: an earlier process's, which the destination holds already.
    pub same: u64,
}

/// The source side: the process's writes tracked, and which pages the destination holds.
pub struct Source {
    pid: i32,
    /// When the process started (procfs::Stat::starttime): its pid, reused, is another's.
    start: u64,
    /// Dropped with the Source: the process is left with no trace of it (unregistering
    /// costs 7 ms a GiB, which the freeze does not wait for).
    tracker: Tracker,
    /// The last round is taken: the process is frozen.
    frozen: bool,
    /// Then, the pages of the ranges tracked that hold data (sorted runs): a page sent and
    /// dropped since (MADV_DONTNEED), and not touched again, is not written, and not here.
    data: Vec<(u64, u64)>,
    /// Per area the destination holds, by start: a flag per page, set when it holds the page
    /// as it is now.
    held: BTreeMap<u64, (Area, Vec<bool>)>,
    pub rounds: Vec<Round>,
    /// The buffer Pages frames are read into and sent from.
    frame: Vec<u8>,
    /// The areas as last sent, with their hints.
    sent: Vec<(Area, bool)>,
    /// This round's pages a fork left shared (sorted ranges), read without pinning them.
    shared: Vec<(u64, u64)>,
    /// The pages the last round left out as the very pages of an earlier process's (see
    /// [`Source::same_as`]), less those written since (sorted ranges).
    same: Vec<(u64, u64)>,
    /// Whose, per area (by start).
    same_base: BTreeMap<u64, i32>,
    /// The files the destination lacks, whose private mappings go ahead too (a live
    /// migration's: see [`Source::carry_files`]).
    lacking: Vec<Lacking>,
    /// Of those, the ones whose pages began to go, as they were then.
    stamps: Vec<Stamp>,
    /// The areas that are mappings of those files (by start), as of the last round.
    file_areas: std::collections::BTreeSet<u64>,
    /// Only those go ahead (a post-copy's: see [`Source::files_only`]).
    only_files: bool,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source(pid {}, {} areas, {} rounds)", self.pid, self.held.len(), self.rounds.len())
    }
}

/// The first fd of process `pid` that is a userfaultfd, if any.
fn own_uffd(pid: i32) -> Option<i32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    dir.flatten().find_map(|e| {
        let target = std::fs::read_link(e.path()).ok()?;
        (target.as_os_str() == "anon_inode:[userfaultfd]").then(|| e.file_name().to_str()?.parse().ok())?
    })
}

impl Source {
    /// Starts tracking the writes of process `pid` (a userfaultfd made in it, taken out: it
    /// is frozen for that moment). A kernel without asynchronous write-protection is
    /// [`Error::NotHere`].
    pub fn arm(pid: i32) -> Result<Source> {
        wp::available().map_err(|why| Error::not_here(format!("tracking the writes of pid {pid}"), why))?;
        // A process with a userfaultfd of its own is not tracked: its ranges and ours would
        // meet (EBUSY for it), and the checkpoint refuses it at the freeze anyway.
        let uffd = super::checkpoint::in_process(pid, |c| match own_uffd(pid) {
            Some(fd) => Err(Error::not_here(
                format!("tracking the writes of pid {pid}"),
                format!("it has a userfaultfd of its own (fd {fd})"),
            )),
            None => wp::uffd_of(c),
        })?;
        let tracker = Tracker::new(pid, uffd, &[])?;
        let start = procfs::read_stat(pid)?.starttime;
        Ok(Source {
            pid,
            start,
            tracker,
            frozen: false,
            data: Vec::new(),
            held: BTreeMap::new(),
            rounds: Vec::new(),
            frame: Vec::new(),
            shared: Vec::new(),
            same: Vec::new(),
            same_base: BTreeMap::new(),
            sent: Vec::new(),
            lacking: Vec::new(),
            stamps: Vec::new(),
            file_areas: Default::default(),
            only_files: false,
        })
    }

    /// Sends ahead only the pages of the files the destination lacks (see
    /// [`Source::carry_files`]): a post-copy's, whose other pages follow once the process runs
    /// there.
    pub fn files_only(&mut self) {
        self.only_files = true;
    }

    /// The destination of this live migration lacks `files` (that the process maps, see
    /// migration::files): their unmodified pages go ahead too, as areas of their own, each
    /// private mapping of them that may be read; those pages the process has not written at
    /// the freeze stay out of its image (memory::dump_pages: its unmodified pages, kept runs
    /// with RUN_FILE_COPY), if the file is then found as it was when they began to go (same
    /// inode, size, mtime and ctime). Restored where the file is not, such a mapping is
    /// anonymous memory holding those pages, as it is when the image carries them; where it
    /// is (restartd looks as nobody, the restore as the owner), the file.
    pub fn carry_files(&mut self, files: &[crate::res::fileid::FileId]) {
        self.lacking = files.iter().map(|f| Lacking { dev: f.dev, ino: f.ino, size: f.size }).collect();
    }

    /// The file the destination lacks that `m` privately maps, if it is one whose pages go
    /// ahead: a mapping of FILE_AREA_MIN or more (each area costs the restore of every
    /// process of a tree a remote call or two; a small one goes in the image, frozen).
    fn lacking_of(&self, m: &MapEntry) -> Option<Lacking> {
        if m.shared || m.inode == 0 || !m.read || m.pkey != 0 || m.vmflags.iter().any(|f| untracked(f)) {
            return None;
        }
        if m.len() < FILE_AREA_MIN {
            return None;
        }
        self.lacking.iter().find(|l| (l.dev, l.ino) == (dev_of(m), m.inode)).copied()
    }

    /// Whether the rounds send mapping `m`'s pages.
    fn tracks(&self, m: &MapEntry) -> bool {
        (eligible_map(m) && !self.only_files) || self.lacking_of(m).is_some()
    }

    /// Before mappings of files the destination lacks are first tracked (those of `maps`
    /// within `fresh`): each file looked at (see [`stamp`]), then its pages, up to the end
    /// of the file, brought into the process's page table, read through /proc/PID/mem (not
    /// pinned: a page it shares since a fork stays shared). Tracking protects only the pages
    /// there: one brought in later would count as written, and go twice.
    fn begin_files(&mut self, maps: &[MapEntry], fresh: &[(u64, u64)]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let pid = self.pid;
        let mut mem: Option<std::fs::File> = None;
        let mut buf = Vec::new();
        for m in maps {
            let Some(l) = self.lacking_of(m) else { continue };
            let within = intersect(fresh, &[(m.start, m.end)]);
            if within.is_empty() {
                continue;
            }
            if !self.stamps.iter().any(|s| (s.dev, s.ino) == (l.dev, l.ino)) {
                match stamp(pid, (m.start, m.end), &m.name, (l.dev, l.ino)) {
                    Some(s) => self.stamps.push(s),
                    // (Unmapped meanwhile, or another file under that name by now: its pages
                    // go, but none is kept at the freeze.)
                    None => continue,
                }
            }
            // Past the file's last page the mapping cannot be read (SIGBUS).
            let end = m.start.saturating_add(l.size.saturating_sub(m.offset).div_ceil(PAGE) * PAGE).min(m.end);
            let f = match &mut mem {
                Some(f) => f,
                slot => {
                    let path = format!("/proc/{pid}/mem");
                    slot.insert(std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?)
                }
            };
            for (s, e) in intersect(&within, &[(m.start, end)]) {
                let mut at = s;
                while at < e {
                    let n = (e - at).min(FRAME_PAGES as u64 * PAGE) as usize;
                    buf.resize(n, 0);
                    // (A range unmapped meanwhile: the next round finds the change.)
                    if f.read_exact_at(&mut buf, at).is_err() {
                        break;
                    }
                    at += n as u64;
                }
            }
        }
        Ok(())
    }

    /// Whether the file that mapping `v` of the frozen process maps is as it was when its
    /// pages began to go ahead.
    fn file_unchanged(&self, v: &Vma) -> bool {
        let Some(f) = &v.file else { return false };
        let then = self.stamps.iter().find(|s| (s.dev, s.ino) == (f.dev, f.ino));
        then.is_some_and(|then| stamp(self.pid, (v.start, v.end), &f.path, (f.dev, f.ino)).as_ref() == Some(then))
    }

    /// [`Source::arm`] for `pid` and each of its live descendants (`alone`: none), the root
    /// first. The root's NotHere is the caller's; a descendant that cannot be tracked (a
    /// userfaultfd of its own) or that ends meanwhile is left out, and copied frozen, said in
    /// `ahead.frozen_throughout`.
    pub fn arm_tree(pid: i32, alone: bool, ahead: &mut Ahead) -> Result<Vec<Source>> {
        let mut srcs = vec![Source::arm(pid)?];
        let kids = if alone { Vec::new() } else { crate::res::tree::walk(pid).split_off(1) };
        for k in kids.into_iter().filter(|&k| !ended(k, None)) {
            match Source::arm(k) {
                Ok(s) => srcs.push(s),
                Err(e @ Error::NotHere { .. }) => ahead.frozen_throughout.push(format!("{e}")),
                Err(_) if ended(k, None) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(srcs)
    }

    fn tracker(&mut self) -> Result<&mut Tracker> {
        match self.frozen {
            false => Ok(&mut self.tracker),
            true => Err(Error::Proc("pre-copy after the last round".into())),
        }
    }

    /// The areas now held, in order.
    fn areas(&self) -> Vec<Area> {
        self.held.values().map(|h| h.0).collect()
    }

    /// Bytes the destination holds.
    pub fn held_bytes(&self) -> u64 {
        self.held.values().map(|h| h.1.iter().filter(|&&x| x).count() as u64).sum::<u64>() * PAGE
    }

    /// Follows the process's areas now, as [`Store::follow`] does with the areas it is sent:
    /// returns them when they changed (the caller sends them before any page of the round).
    /// What a lost range holds now is unknown: it is sent again.
    fn follow(&mut self, areas: &[(Area, bool)], lost: &[(u64, u64)]) -> Option<Vec<(Area, bool)>> {
        self.forget(lost);
        if self.sent == areas {
            return None;
        }
        let mut next = BTreeMap::new();
        for &(a, _) in areas {
            let bits = match self.held.get(&a.start) {
                Some((old, bits)) if *old == a => bits.clone(),
                _ => {
                    let mut bits = vec![false; a.pages()];
                    for (old, obits) in self.held.values().filter(|(o, _)| o.end > a.start && o.start < a.end) {
                        let (s, e) = (old.start.max(a.start), old.end.min(a.end));
                        let (from, to) = (((s - old.start) / PAGE) as usize, ((s - a.start) / PAGE) as usize);
                        let n = ((e - s) / PAGE) as usize;
                        bits[to..to + n].copy_from_slice(&obits[from..from + n]);
                    }
                    bits
                }
            };
            next.insert(a.start, (a, bits));
        }
        self.held = next;
        self.sent = areas.to_vec();
        Some(self.sent.clone())
    }

    /// The destination no longer holds `ranges` as they are (written, or lost).
    fn forget(&mut self, ranges: &[(u64, u64)]) {
        if !self.same.is_empty() && !ranges.is_empty() {
            self.same = minus(&self.same, ranges);
        }
        for &(s, e) in ranges {
            for (a, bits) in self.held.values_mut().filter(|(a, _)| a.end > s && a.start < e) {
                let (from, to) =
                    (((s.max(a.start) - a.start) / PAGE) as usize, ((e.min(a.end) - a.start) / PAGE) as usize);
                bits[from..to].iter_mut().for_each(|b| *b = false);
            }
        }
    }

    /// One round: follows the mappings, tracks new ones, sends (`send(areas, pages)`: an
    /// Areas frame when they changed, then Pages frames) the pages that hold data and that the
    /// destination does not hold as they are. Returns what it sent.
    /// With `earlier` (the tree's processes whose rounds went before; a live migration's),
    /// the pages that are the very pages one of those has at the same addresses, held by the
    /// destination as they are, are left out (see [`Source::same_as`]): the destination
    /// takes that one's (see [`Precopied::kept_all`]).
    pub fn round(
        &mut self,
        send: &mut dyn FnMut(Frame, &mut [u8]) -> Result<()>,
        earlier: &mut [Source],
    ) -> Result<Round> {
        let t0 = Instant::now();
        let pid = self.pid;
        let mut maps = procfs::read_smaps(pid)?;
        let taken = self.tracker()?.take()?;
        self.forget(&taken.written);
        let spans: Vec<(u64, u64)> = maps.iter().filter(|m| self.tracks(m)).map(|m| (m.start, m.end)).collect();
        let fresh = minus(&spans, self.tracker()?.ranges());
        if !self.lacking.is_empty() {
            self.begin_files(&maps, &fresh)?;
        }
        // Tracked from now on; what they hold now is sent below (the destination holds none of it).
        if !self.tracker()?.add(&fresh)?.is_empty() {
            // Registered, a range may have become one mapping with a tracked one beside it (a
            // heap grown since the last round, whose flags now agree with the rest): the
            // mappings as they are now, or the freeze would find one where two areas went.
            joined(&mut maps, &procfs::read_maps(pid)?);
        }
        let readable: Vec<(u64, u64)> =
            maps.iter().filter(|m| self.tracks(m) && m.read).map(|m| (m.start, m.end)).collect();
        self.file_areas = maps.iter().filter(|m| !eligible_map(m) && self.tracks(m)).map(|m| m.start).collect();
        let huge =
            procfs::read_status(pid).ok().and_then(|s| procfs::status_field(&s, "THP_enabled").map(|v| v == "1"));
        let areas: Vec<(Area, bool)> = maps
            .iter()
            .filter(|m| self.tracks(m))
            .map(|m| {
                let a = Area { start: m.start, end: m.end, noreserve: m.has_flag("nr") };
                (a, huge.unwrap_or(false) && !m.has_flag("nh") && eligible_map(m))
            })
            .collect();
        if let Some(now) = self.follow(&areas, &taken.lost) {
            send(Frame::Areas, &mut encode_areas(&now)[..])?;
        }
        // Pages shared with another process (the tree's children) are read through
        // /proc/PID/mem: pinned by process_vm_readv, each would become the process's own copy.
        self.shared.clear();
        let sharing: Vec<(u64, u64)> =
            maps.iter().filter(|m| m.shares && self.tracks(m) && m.read).map(|m| (m.start, m.end)).collect();
        for (start, end) in sharing {
            let sh = self.tracker()?.pagemap().shared_anon(start, end)?;
            self.shared.extend(sh);
        }
        let mut want: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &readable {
            let data = self
                .tracker()?
                .pagemap()
                .with_data(s, e)
                .map_err(|e| Error::io(format!("PAGEMAP_SCAN (pid {pid})"), e))?;
            let (a, bits) = match self.held.get(&s) {
                Some(h) => h,
                None => continue,
            };
            // Runs never span two areas (the destination holds each apart).
            let first = want.len();
            for (ds, de) in data {
                let mut p = ds;
                while p < de {
                    let i = ((p - a.start) / PAGE) as usize;
                    if !bits.get(i).copied().unwrap_or(true) {
                        let n = want.len();
                        match want.last_mut() {
                            Some(w) if w.1 == p && n > first => w.1 = p + PAGE,
                            _ => want.push((p, p + PAGE)),
                        }
                    }
                    p += PAGE;
                }
            }
        }
        self.same = self.same_as(earlier, &want)?;
        if !self.same.is_empty() {
            want = minus(&want, &self.same);
        }
        let same = self.same.iter().map(|r| (r.1 - r.0) / PAGE).sum();
        let mut sent = 0u64;
        let mut batch: Vec<(u64, u64)> = Vec::new();
        let mut n = 0usize;
        let mut flush = |batch: &mut Vec<(u64, u64)>, me: &mut Source| -> Result<u64> {
            if batch.is_empty() {
                return Ok(0);
            }
            let got = me.send_batch(batch, send)?;
            batch.clear();
            Ok(got)
        };
        for &(s, e) in &want {
            let mut at = s;
            while at < e {
                let take = ((e - at) / PAGE).min((FRAME_PAGES - n) as u64);
                batch.push((at, at + take * PAGE));
                n += take as usize;
                at += take * PAGE;
                if n == FRAME_PAGES {
                    sent += flush(&mut batch, self)?;
                    n = 0;
                }
            }
        }
        sent += flush(&mut batch, self)?;
        let r = Round { pages: sent, took: t0.elapsed(), same };
        self.rounds.push(r);
        Ok(r)
    }

    /// Reads `runs` from the process and sends them as one Pages frame; marks them held.
    /// Runs unmapped meanwhile are left out (the next round finds the change). Returns the
    /// pages sent.
    fn send_batch(&mut self, runs: &[(u64, u64)], send: &mut dyn FnMut(Frame, &mut [u8]) -> Result<()>) -> Result<u64> {
        let pid = self.pid;
        let total: u64 = runs.iter().map(|r| r.1 - r.0).sum();
        let header = pages_header(runs);
        let (head, mut len) = (header.len(), header.len() + total as usize);
        // One buffer for every frame, in memory already: a fresh megabyte each would be
        // faulted in page by page, and zeroed, before the pages are read into it.
        let mut frame = std::mem::take(&mut self.frame);
        if frame.len() < len {
            frame.resize(len, 0);
        }
        frame[..head].copy_from_slice(&header);
        let iov: Vec<(u64, usize)> = runs.iter().map(|&(s, e)| (s, (e - s) as usize)).collect();
        let read =
            |iov: &[(u64, usize)], buf: &mut [u8]| crate::ptrace::mem::read_runs_unpinned(pid, iov, buf, &self.shared);
        let runs: Vec<(u64, u64)> = if read(&iov, &mut frame[head..len]).is_ok() {
            runs.to_vec()
        } else {
            // One of them went away: each alone, those that still read.
            let mut ok = Vec::new();
            let mut data = Vec::new();
            for &(s, e) in runs {
                let mut b = vec![0u8; (e - s) as usize];
                if read(&[(s, b.len())], &mut b).is_ok() {
                    ok.push((s, e));
                    data.extend(b);
                }
            }
            let mut f = pages_header(&ok);
            f.extend(data);
            len = f.len();
            frame = f;
            ok
        };
        if runs.is_empty() {
            return Ok(0);
        }
        let sent = send(Frame::Pages, &mut frame[..len]);
        self.frame = frame;
        sent?;
        self.mark_held(&runs);
        Ok(runs.iter().map(|r| (r.1 - r.0) / PAGE).sum())
    }

    /// The destination holds `runs` (sorted ranges) as they are now.
    fn mark_held(&mut self, runs: &[(u64, u64)]) {
        for &(s, e) in runs {
            for (a, bits) in self.held.values_mut().filter(|(a, _)| a.end > s && a.start < e) {
                let (from, to) =
                    (((s.max(a.start) - a.start) / PAGE) as usize, ((e.min(a.end) - a.start) / PAGE) as usize);
                bits[from..to].iter_mut().for_each(|b| *b = true);
            }
        }
    }

    /// Of `want` (sorted ranges this round would send, each within one area), the pages that
    /// are the very pages the first of `earlier` that holds the area with the same range (its
    /// base, noted in `same_base`) has at the same addresses (the same frame: they share it
    /// since a fork), where the destination holds the base's page: it has those pages
    /// already, as they are. (A page both map is unchanged since the fork: a write by either
    /// would have made a copy; and the base has mapped it since it sent it, for it cannot map
    /// it again. Which pages are the same the frame numbers say, which only root sees:
    /// without them, none is.) Sorted ranges.
    fn same_as(&mut self, earlier: &mut [Source], want: &[(u64, u64)]) -> Result<Vec<(u64, u64)>> {
        self.same_base.clear();
        let shared = intersect(want, &self.shared);
        let mut out: Vec<(u64, u64)> = Vec::new();
        if shared.is_empty() {
            return Ok(out);
        }
        // (Not a file's: its pages are each process's own to send, see Precopied::kept_all.)
        for (&start, (a, _)) in self.held.iter().filter(|(s, _)| !self.file_areas.contains(s)) {
            let lo = shared.partition_point(|r| r.1 <= a.start);
            if shared.get(lo).is_none_or(|r| r.0 >= a.end) {
                continue;
            }
            let held_so = |f: &&mut Source| f.held.get(&start).is_some_and(|(fa, _)| fa == a);
            let Some(base) = earlier.iter_mut().find(held_so) else { continue };
            let bits = &base.held[&start].1;
            // (Kept apart from the last area's, which may lie right before this one.)
            let mut mine: Vec<(u64, u64)> = Vec::new();
            for &(s, e) in shared[lo..].iter().take_while(|r| r.0 < a.end) {
                let (s, e) = (s.max(a.start), e.min(a.end));
                let i0 = ((s - a.start) / PAGE) as usize;
                if !bits[i0..i0 + ((e - s) / PAGE) as usize].iter().any(|&b| b) {
                    continue;
                }
                // (Both run: neither is frozen before the last round. A base that ended since
                // its round shares nothing: the next round lets it go.)
                let Ok(theirs) = base.tracker.pagemap().shared_frames(s, e) else { break };
                let ours = self.tracker.pagemap().shared_frames(s, e)?;
                for (k, (o, t)) in ours.iter().zip(&theirs).enumerate() {
                    if *o != 0 && o == t && bits[i0 + k] {
                        let p = s + k as u64 * PAGE;
                        crate::ptrace::pagemap::join(&mut mine, p, p + PAGE);
                    }
                }
            }
            if !mine.is_empty() {
                self.same_base.insert(start, base.pid);
                out.extend(mine);
            }
        }
        Ok(out)
    }

    /// What a round now would send, in bytes: the pages written since the last round (found,
    /// and protected again: the next round sends them) and those never sent, that hold data.
    pub fn left_bytes(&mut self) -> Result<u64> {
        let pid = self.pid;
        let taken = self.tracker()?.take()?;
        self.forget(&taken.written);
        self.forget(&taken.lost);
        let areas: Vec<Area> = self.areas();
        let mut left = 0;
        let mut all = Vec::new();
        for a in areas {
            let data = self.tracker()?.pagemap().with_data(a.start, a.end);
            let data = data.map_err(|e| Error::io(format!("PAGEMAP_SCAN (pid {pid})"), e))?;
            let bits = &self.held[&a.start].1;
            for &(s, e) in &data {
                let (i, j) = (((s - a.start) / PAGE) as usize, ((e - a.start) / PAGE) as usize);
                left += bits[i..j].iter().filter(|&&x| !x).count() as u64 * PAGE;
            }
            all.extend(data);
        }
        // (Not those an earlier process's held pages stand for, as they are.)
        left -= intersect(&all, &self.same).iter().map(|r| r.1 - r.0).sum::<u64>().min(left);
        Ok(left)
    }

    /// The process is frozen: the last writes are taken. The tracking itself ends when the
    /// Source is dropped, once the process is let go or killed.
    pub fn freeze(&mut self) -> Result<()> {
        let taken = self.tracker()?.take_last()?;
        self.forget(&taken.written);
        self.forget(&taken.lost);
        self.data = taken.data;
        self.frozen = true;
        Ok(())
    }

    /// Mappings of the process as smaps shows them, without the mark of our own tracking
    /// ("uw" on the ranges we registered, or did and let go since: the look may be older than
    /// that, and the frozen comparison of the flags runs beside the last look at the pages):
    /// what they are without it. A mapping that overlaps one of ours is ours whole (a mapping
    /// has one userfaultfd: the kernel grows a heap registered with ours, brk after brk, under
    /// the same registration). A range registered by the process itself keeps its mark.
    pub fn unmark(&self, maps: &mut [MapEntry]) {
        let ours: Vec<(u64, u64)> = self.tracker.ever_ours().copied().collect();
        for m in maps.iter_mut() {
            if ours.iter().any(|&(s, e)| s < m.end && m.start < e) {
                m.vmflags.retain(|f| f != "uw");
            } else if m.has_flag("uw") {
                log::debug!("pid {}: {:#x}-{:#x} uw, not ours: {:x?}", self.pid, m.start, m.end, ours);
            }
        }
    }

    /// For the frozen process's mappings `vmas` (after [`Source::freeze`]): the sorted ranges
    /// whose pages the destination holds as they are: held, not written since they went, and
    /// holding data now (the last look, at the freeze: a page dropped since it went and not
    /// touched again counts as not written). memory::dump_pages writes them as kept runs
    /// without looking at them again.
    pub fn kept(&mut self, vmas: &[Vma]) -> Result<Vec<(u64, u64)>> {
        if !self.frozen {
            return Err(Error::Proc("pre-copy: kept pages asked for before the last round".into()));
        }
        let pid = self.pid;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for v in vmas.iter().filter(|v| eligible(v)) {
            let Some((a, bits)) = self.held.get(&v.start).filter(|(a, _)| becomes(a, v)) else { continue };
            // A file's pages that went unmodified are its content then (and the area, as the
            // last round saw it, that file's mapping).
            if file_copy(v) && !(self.file_areas.contains(&v.start) && self.file_unchanged(v)) {
                log::debug!("pid {pid}: {} changed since its pages went ahead", v.name);
                continue;
            }
            let first = out.len();
            let mut d = self.data.partition_point(|r| r.1 <= a.start);
            let within = ((v.end.min(a.end) - a.start) / PAGE) as usize;
            for (i, _) in bits.iter().enumerate().take(within).filter(|(_, b)| **b) {
                let p = a.start + i as u64 * PAGE;
                while d < self.data.len() && self.data[d].1 <= p {
                    d += 1;
                }
                if self.data.get(d).is_none_or(|r| r.0 > p) {
                    continue;
                }
                let n = out.len();
                match out.last_mut() {
                    Some(w) if w.1 == p && n > first => w.1 = p + PAGE,
                    _ => out.push((p, p + PAGE)),
                }
            }
        }
        log::debug!(
            "pid {pid}: {} of {} bytes held kept",
            out.iter().map(|r| r.1 - r.0).sum::<u64>(),
            self.held_bytes()
        );
        Ok(out)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// What the rounds of a pre-copy sent.
#[derive(Clone, Debug, Default)]
pub struct Ahead {
    /// Per round: pages sent, and how long it took.
    pub rounds: Vec<(u64, Duration)>,
    /// Why the rounds stopped before what was left fit the downtime, if they did.
    pub gave_up: Option<String>,
    /// Why there was no pre-copy at all (a kernel that cannot track writes).
    pub not_live: Option<String>,
    /// The processes of the tree whose memory was not copied ahead (copied frozen), and why.
    pub frozen_throughout: Vec<String>,
    /// The processes whose memory was copied ahead, the root first.
    pub tracked: Vec<i32>,
    /// Pages of the root's descendants the last round left out: the very pages of an
    /// earlier process's at the same addresses (they share them since a fork), which the
    /// destination holds as that one's.
    pub same: u64,
    /// The objects of shared memory the rounds sent, and their bytes (engine::shmahead).
    pub shm: (usize, u64),
}

/// Most rounds of a pre-copy, and of one followed by a post-copy.
const MAX_ROUNDS: usize = 30;

/// Err once a process's areas have changed more than rounds change them: `n` Areas frames
/// (or PREAREAS sections), at most one a round and an empty one once it ended. Each change
/// copies what the old areas held into the new ones.
fn changes_within_rounds(n: usize) -> Result<()> {
    match n > MAX_ROUNDS + 1 {
        true => Err(Error::Refused(format!(
            "the areas of a process sent ahead changed {n} times: more than rounds of a live migration send"
        ))),
        false => Ok(()),
    }
}
const HYBRID_ROUNDS: usize = 2;

/// Whether process `pid` (started at `start`, when given) has ended: its pid gone, a
/// zombie's, or another process's. Its rounds end with it.
fn ended(pid: i32, start: Option<u64>) -> bool {
    let gone = |s: procfs::Stat| s.state == 'Z' || s.state == 'X' || start.is_some_and(|t| t != s.starttime);
    procfs::read_stat(pid).map_or(true, gone)
}

impl Source {
    fn ended(&self) -> bool {
        ended(self.pid, Some(self.start))
    }
}

/// One round of every process of `srcs` (the first: the tree's root), each after a Member
/// frame. A process other than the first that ended meanwhile leaves the rounds (it is not
/// in the image), and its areas go (an Areas frame of none): the destination holds nothing
/// more of it.
/// With `same`, a process's pages that are an earlier one's are left out (see
/// [`Source::round`]).
fn round_all(
    srcs: &mut Vec<Source>,
    (same, shm): (bool, Option<&mut ShmSource>),
    send: &mut dyn FnMut(Frame, &mut [u8]) -> Result<()>,
) -> Result<Round> {
    let t0 = Instant::now();
    let (mut pages, mut left_out) = (0, 0);
    let mut i = 0;
    while i < srcs.len() {
        let pid = srcs[i].pid;
        send(Frame::Member, &mut (pid as u32).to_le_bytes())?;
        let at = if same { i } else { 0 };
        let (earlier, rest) = srcs.split_at_mut(at);
        let me = &mut rest[i - at];
        // (Ended, its pid may be another process's by now: not that one's pages.)
        let r = match me.ended() {
            false => me.round(send, earlier),
            true => Err(Error::Proc(format!("pid {pid} ended"))),
        };
        match r {
            Ok(r) => (pages, left_out) = (pages + r.pages, left_out + r.same),
            Err(e) if i > 0 && srcs[i].ended() => {
                log::debug!("pid {pid} ended during the pre-copy ({e}): no more rounds of it");
                send(Frame::Areas, &mut encode_areas(&[])[..])?;
                srcs.remove(i);
                continue;
            }
            Err(e) => return Err(e),
        }
        i += 1;
    }
    // Then the memory they share (each Shm frame names its object, of no process alone).
    if let Some(shm) = shm {
        let pids: Vec<i32> = srcs.iter().map(|s| s.pid).collect();
        pages += shm.round(&pids, send)?;
    }
    // Over once the destination holds it all: what the processes write meanwhile counts in
    // the round (a round ended at the socket would leave it to the freeze), and so does the
    // time the destination takes in the rate.
    send(Frame::Caught, &mut [])?;
    Ok(Round { pages, took: t0.elapsed(), same: left_out })
}

/// [`Source::left_bytes`] of every process of `srcs` (one that ended has none: the next round
/// lets it go).
fn left_all(srcs: &mut [Source], shm: Option<&ShmSource>) -> Result<u64> {
    let mut left = shm.map_or(0, ShmSource::left_bytes);
    for (i, s) in srcs.iter_mut().enumerate() {
        match s.left_bytes() {
            Ok(b) => left += b,
            Err(_) if i > 0 && s.ended() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(left)
}

/// The rounds of a pre-copy of the processes of `srcs` (the tree's root first; `send`: a live
/// migration's link, a checkpoint's image), while they run, until what a last round would
/// carry takes at most a tenth of `budget` at the rate the rounds went, or half of it once
/// rounds stop getting shorter (the rest is for the rest of the freeze: the processes' other
/// state, the restore there); or until it is clear it never will (they write faster than
/// `send` carries, or MAX_ROUNDS: said in `ahead.gave_up`, with `rest`, what becomes of the
/// rest). With `post` (the hybrid mode: what is left follows once the processes run there),
/// HYBRID_ROUNDS at most: the first sends their memory, the next what they wrote meanwhile.
/// `same`: a live migration's destination, which takes pages the processes share as the
/// earlier one's: they are left out (see [`Source::round`]). `shm`: a live migration's, which
/// sends the memory they share (engine::shmahead) too.
pub fn rounds(
    srcs: &mut Vec<Source>,
    (budget, post, same): (Duration, bool, bool),
    mut shm: Option<&mut ShmSource>,
    send: &mut dyn FnMut(Frame, &mut [u8]) -> Result<()>,
    rest: &str,
    ahead: &mut Ahead,
) -> Result<()> {
    let root = srcs.first().map(|s| s.pid).ok_or_else(|| Error::Proc("a pre-copy of no process".into()))?;
    let who = |n: usize| match n {
        1 => format!("pid {root}"),
        n => format!("pid {root} and its {} descendants", n - 1),
    };
    let mut rate = 0f64;
    let mut stalled = 0;
    let mut last_left = u64::MAX;
    loop {
        let r = round_all(srcs, (same, shm.as_deref_mut()), send)?;
        ahead.tracked = srcs.iter().map(|s| s.pid).collect();
        ahead.shm = shm.as_deref().map_or((0, 0), ShmSource::objects);
        ahead.same = r.same;
        ahead.rounds.push((r.pages, r.took));
        let bytes = r.pages * PAGE;
        // The rate of a round big enough to tell (or the first).
        if bytes >= 4 << 20 || rate == 0.0 {
            rate = rate.max(bytes as f64 / r.took.as_secs_f64().max(1e-6));
        }
        let left = left_all(srcs, shm.as_deref())?;
        let need = Duration::from_secs_f64(left as f64 / rate.max(1.0));
        log::debug!(
            "{}: round {}: {} pages in {:.1} ms; {left} bytes written meanwhile, {:.1} ms at {:.0} MB/s",
            who(srcs.len()),
            ahead.rounds.len(),
            r.pages,
            r.took.as_secs_f64() * 1e3,
            need.as_secs_f64() * 1e3,
            rate / 1e6
        );
        // Another round while it makes the last one markedly shorter: the freeze costs more
        // than the memory left (the destination forks the holder of what was sent ahead).
        if need <= budget / 10 || (post && ahead.rounds.len() >= HYBRID_ROUNDS) {
            return Ok(());
        }
        // Written during the round about as fast as it went: no round will be shorter.
        stalled = if left as f64 >= 0.5 * last_left.min(bytes.max(PAGE)) as f64 { stalled + 1 } else { 0 };
        last_left = left;
        if (stalled >= 2 || ahead.rounds.len() >= MAX_ROUNDS) && need <= budget / 2 {
            return Ok(());
        }
        if stalled >= 3 || ahead.rounds.len() >= MAX_ROUNDS {
            ahead.gave_up = Some(format!(
                "{} {} about as fast as it is copied ({:.0} MB/s): the last {} MiB {rest}",
                who(srcs.len()),
                if srcs.len() == 1 { "writes its memory" } else { "write their memory" },
                rate / 1e6,
                left >> 20
            ));
            return Ok(());
        }
    }
}

/// The sources of a live migration (a process and its descendants, or some of them), for the
/// checkpoint that ends it (ckpt's Options carry it).
#[derive(Clone)]
pub struct Precopied {
    srcs: std::sync::Arc<std::sync::Mutex<Vec<Source>>>,
    /// The pids of the processes whose Source [`Precopied::freeze`] dropped (not frozen, or
    /// ended): the destination may hold their last areas still (see [`Precopied::kept_all`]).
    dropped: std::sync::Arc<std::sync::Mutex<Vec<i32>>>,
    /// The reader takes the pages a process shares with an earlier one since a fork as that
    /// one's ([`Precopied::kept_all`]).
    shares: bool,
    /// The memory the processes share, sent ahead (a live migration's).
    shm: std::sync::Arc<std::sync::Mutex<Option<ShmSource>>>,
    /// Its comparison once the processes are frozen, running beside their collection.
    shm_compare: std::sync::Arc<std::sync::Mutex<Option<std::thread::JoinHandle<Result<()>>>>>,
}

impl std::fmt::Debug for Precopied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Precopied")
    }
}

impl Precopied {
    /// The sources after their rounds. `shares`: the rounds left out the pages a process
    /// shares with an earlier one (see [`Source::round`]), which the reader of the image
    /// (a live migration's destination, or a restore that holds the pages copied ahead:
    /// crf::pages::PREMEMBER_HOLD) takes as that one's. `shm`: the memory they share, if
    /// the rounds sent it.
    pub fn new(srcs: Vec<Source>, shares: bool, shm: Option<ShmSource>) -> Precopied {
        let srcs = std::sync::Arc::new(std::sync::Mutex::new(srcs));
        let shm = std::sync::Arc::new(std::sync::Mutex::new(shm));
        Precopied { srcs, dropped: Default::default(), shares, shm, shm_compare: Default::default() }
    }

    /// Processes `pids` were just frozen: the memory they share is compared with what the
    /// destination holds (ShmSource::compare) on a thread of its own, beside their
    /// collection, which [`Precopied::kept_all`] waits for. (Without such a thread, kept_all
    /// compares it itself.)
    pub fn compare_shm(&self, pids: &[i32]) {
        let has = self.shm.lock().is_ok_and(|s| s.as_ref().is_some_and(|s| s.objects().0 > 0));
        if !has {
            return;
        }
        let (shm, pids) = (self.shm.clone(), pids.to_vec());
        let spawned = std::thread::Builder::new().name("crs-shm".into()).spawn(move || {
            let mut shm = shm.lock().map_err(|_| Error::Proc("pre-copy state poisoned".into()))?;
            shm.as_mut().map_or(Ok(()), |s| s.compare(&pids))
        });
        if let (Ok(h), Ok(mut at)) = (spawned, self.shm_compare.lock()) {
            *at = Some(h);
        }
    }
    fn with<T>(&self, f: impl FnOnce(&mut Vec<Source>) -> Result<T>) -> Result<T> {
        let mut s = self.srcs.lock().map_err(|_| Error::Proc("pre-copy state poisoned".into()))?;
        f(&mut s)
    }
    /// See [`Source::freeze`], for each tracked process of the frozen ones, `pids`; the
    /// others (ended since the last round) are dropped.
    pub fn freeze(&self, pids: &[i32]) -> Result<()> {
        let mut gone = Vec::new();
        self.with(|srcs| {
            srcs.retain(|s| match pids.contains(&s.pid) && !s.ended() {
                true => true,
                false => {
                    gone.push(s.pid);
                    false
                }
            });
            srcs.iter_mut().try_for_each(|s| s.freeze())
        })?;
        let mut d = self.dropped.lock().map_err(|_| Error::Proc("pre-copy state poisoned".into()))?;
        d.extend(gone);
        Ok(())
    }
    /// See [`Source::unmark`], for process `pid` if it is tracked.
    pub fn unmark(&self, pid: i32, maps: &mut [MapEntry]) -> Result<()> {
        self.with(|srcs| {
            if let Some(s) = srcs.iter().find(|s| s.pid == pid) {
                s.unmark(maps);
            }
            Ok(())
        })
    }
    /// See [`Source::kept`]; nothing for a process that is not tracked.
    pub fn kept(&self, pid: i32, vmas: &[Vma]) -> Result<Vec<(u64, u64)>> {
        self.with(|srcs| match srcs.iter_mut().find(|s| s.pid == pid) {
            Some(s) => s.kept(vmas),
            None => Ok(Vec::new()),
        })
    }

    /// For the frozen processes of `states` (the first one first): per process,
    /// [`Source::kept`]; after the first, with a live migration's, also the pages the rounds
    /// left out as an earlier process's (see [`Source::round`]) that it has not written
    /// since and that hold data, where that process's page is kept, in a mapping the held
    /// area becomes: the image says to take those as that process's (RUN_SHARED, in mappings
    /// marked VMA_KEPT_FIRST), so that the restored processes share them again, and they
    /// never went twice. That process is the image's first before this one that holds an
    /// area of the same range, as a restore finds it (an area whose rounds took another
    /// process's pages shares none).
    /// And the pages of the memory they share (VMA_TREE_SHM) that the destination holds as
    /// they are (engine::shmahead), in every mapping of it.
    pub fn kept_all(&self, states: &mut [ProcessState]) -> Result<Vec<Kept>> {
        let mut out = self.kept_own(states)?;
        let running = self.shm_compare.lock().map_err(|_| Error::Proc("pre-copy state poisoned".into()))?.take();
        if let Some(h) = running {
            h.join().unwrap_or_else(|_| Err(Error::Proc("comparing the shared memory failed".into())))?;
        }
        let mut shm = self.shm.lock().map_err(|_| Error::Proc("pre-copy state poisoned".into()))?;
        if let Some(shm) = shm.as_mut() {
            for (k, more) in out.iter_mut().zip(shm.kept(states)?) {
                if !more.is_empty() {
                    k.kept.extend(more);
                    k.kept.sort_unstable();
                }
            }
        }
        Ok(out)
    }

    /// [`Precopied::kept_all`] of their own memory.
    fn kept_own(&self, states: &mut [ProcessState]) -> Result<Vec<Kept>> {
        let mut out = Vec::with_capacity(states.len());
        for st in states.iter() {
            out.push(Kept { kept: self.kept(st.head.pid, &st.vmas)?, shared: Vec::new() });
        }
        if !self.shares || states.len() < 2 {
            return Ok(out);
        }
        // A process of the image with the pid of one whose tracking ended at the freeze (the
        // pid reused since): the destination may hold that one's last areas under it, and
        // take them for a base where we see none. Nothing is shared then (it never is, but
        // for such a race).
        let dropped = self.dropped.lock().map_err(|_| Error::Proc("pre-copy state poisoned".into()))?.clone();
        if states.iter().any(|st| dropped.contains(&st.head.pid)) {
            return Ok(out);
        }
        let areas: Vec<BTreeMap<u64, Area>> =
            states.iter().map(|st| self.areas_of(st.head.pid)).collect::<Result<_>>()?;
        // (Their own: an earlier process's pages held as yet another's are not its to lend.)
        let own: Vec<Vec<(u64, u64)>> = out.iter().map(|k| k.kept.clone()).collect();
        for i in 1..states.len() {
            let pid = states[i].head.pid;
            let (same, bases) = self.with(|srcs| {
                Ok(srcs
                    .iter()
                    .find(|s| s.pid == pid)
                    .map(|s| (intersect(&s.same, &s.data), s.same_base.clone()))
                    .unwrap_or_default())
            })?;
            if same.is_empty() {
                continue;
            }
            let (before, after) = states.split_at_mut(i);
            let k = &mut out[i];
            for v in after[0].vmas.iter_mut().filter(|v| memory::private_anon(v)) {
                let Some(a) = areas[i].get(&v.start).filter(|a| becomes(a, v)) else { continue };
                // The base as the restore finds it: the first earlier process with an area
                // held that becomes this mapping (Store::becomes), which must be the very one
                // the rounds compared with, holding the same range.
                let becomes_too = |j: &usize| areas[*j].get(&a.start).is_some_and(|x| x.noreserve == a.noreserve);
                let Some(j) = (0..i).find(becomes_too) else { continue };
                if areas[j].get(&a.start) != Some(a) || bases.get(&a.start) != Some(&before[j].head.pid) {
                    continue;
                }
                let here = intersect(&intersect(&same, &own[j]), &[(a.start, v.end.min(a.end))]);
                if !here.is_empty() {
                    v.flags |= memory::VMA_KEPT_FIRST;
                    k.shared.extend(here);
                }
            }
            if !k.shared.is_empty() {
                let mut all = [k.kept.as_slice(), k.shared.as_slice()].concat();
                all.sort_unstable();
                k.kept = all;
            }
            log::debug!(
                "pid {pid}: {} bytes kept as an earlier process's",
                k.shared.iter().map(|r| r.1 - r.0).sum::<u64>()
            );
        }
        Ok(out)
    }

    /// The areas the destination holds of process `pid`, by start (none if it is not tracked).
    fn areas_of(&self, pid: i32) -> Result<BTreeMap<u64, Area>> {
        self.with(|srcs| {
            Ok(srcs
                .iter()
                .find(|s| s.pid == pid)
                .map(|s| s.held.iter().map(|(k, (a, _))| (*k, *a)).collect())
                .unwrap_or_default())
        })
    }
}

/// What the destination holds of a frozen process's pages (sorted ranges of addresses): all
/// of them (kept runs), and of those, the ones it holds as an earlier process's.
#[derive(Clone, Debug, Default)]
pub struct Kept {
    pub kept: Vec<(u64, u64)>,
    pub shared: Vec<(u64, u64)>,
}

/// One area held at the destination: a mapping of ours, and per page 0 (nothing), 1 (as
/// received), and during the restore 2 (kept), 3 (written over by the image) or 4 (not in
/// the restored process: its mapping differs), kept as runs (an area may be vast and sparse).
struct Held {
    area: Area,
    /// Our mapping's address.
    local: u64,
    /// Its address in the process being restored, which inherited it (see
    /// [`Store::clear_there`]).
    there: u64,
    state: States,
    /// The source allows huge pages here (see [`Store::pages`]).
    huge: bool,
    /// The huge pages of the area (2 MiB, aligned in the process) collapsed already, by
    /// address.
    collapsed: std::collections::BTreeSet<u64>,
    /// Left where it is in the restored process, its kept pages to be copied over an earlier
    /// process's held pages moved in place of it (see [`Part`]).
    aside: bool,
}

/// Which of a restored process's mappings a store's areas become (see [`Store::move_into`]):
/// its own store's, all but those marked VMA_KEPT_FIRST, whose pages partly are an earlier
/// process's; an earlier process's store's, those of them it is the base of (by start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part<'a> {
    Own,
    Base(&'a [u64]),
}

impl Part<'_> {
    fn takes(self, p: &memory::Plan) -> bool {
        match self {
            Part::Own => p.vma.flags & memory::VMA_KEPT_FIRST == 0,
            Part::Base(starts) => starts.contains(&p.vma.start),
        }
    }
}

/// A huge page (PMD) on x86_64.
const HUGE: u64 = 2 << 20;

/// Most bytes the areas sent ahead of a process may span: x86_64's user address space.
const MAX_SPAN: u64 = 1 << 47;

impl Held {
    fn new(area: Area, huge: bool, in_place: bool) -> Result<Held> {
        let local = map_local(area, huge, in_place)?;
        Ok(Held {
            area,
            local,
            there: local,
            state: States::default(),
            huge,
            collapsed: Default::default(),
            aside: false,
        })
    }

    /// The index of the page at `addr` (inside the area).
    fn page(&self, addr: u64) -> usize {
        ((addr - self.area.start) / PAGE) as usize
    }

    /// Pages [s, e) of the process's (inside the area) take state `v`.
    fn set(&mut self, s: u64, e: u64, v: u8) {
        let (i, j) = (self.page(s), self.page(e));
        self.state.set(i, j, v);
    }

    /// Once every page of a huge page of the process's has arrived: made one huge page here
    /// (MADV_COLLAPSE, which leaves the mapping's own THP setting as it was), so that the
    /// fork of the restore copies one entry for it, not 512, and mremap moves it whole. A
    /// partly received one stays small pages: a huge one would hold memory the process never
    /// had. Failures (THP off here, no huge page free) leave small pages, as they were.
    fn collapse(&mut self, from: u64, to: u64) {
        const MADV_COLLAPSE: i32 = 25;
        let first = from / HUGE * HUGE;
        let mut c = first;
        while c < to {
            let whole = c >= self.area.start && c + HUGE <= self.area.end;
            if whole && !self.collapsed.contains(&c) {
                let p = self.page(c);
                if self.state.all(p, p + (HUGE / PAGE) as usize, |x| x == 1) {
                    self.collapsed.insert(c);
                    // SAFETY: madvise on a whole huge page inside our own mapping; it changes
                    // how the pages are held, not what they hold.
                    unsafe {
                        libc::madvise(
                            (self.local + (c - self.area.start)) as *mut libc::c_void,
                            HUGE as usize,
                            MADV_COLLAPSE,
                        )
                    };
                }
            }
            c += HUGE;
        }
    }
}

/// The destination side: the pages sent ahead, in mappings of ours shaped as the process's.
pub struct Store {
    held: BTreeMap<u64, Held>,
    /// Most bytes of pages held (what arrived, not the areas' size: a sparse area of many GiB
    /// that a runtime reserved costs what was written of it).
    limit: u64,
    /// Bytes of pages held now ([`Store::held_bytes`], kept up to date).
    bytes_held: u64,
    /// Bytes of pages held for the other processes of its tree, within the same limit.
    others: u64,
    /// Bytes of pages received.
    pub received: u64,
    /// Our mappings are still ours: not yet let go (see [`Store::leave`]).
    here: bool,
    /// Our mappings are still there (let go, they stay until [`Store::unmap`]).
    mapped: bool,
    /// Each area is mapped where the process has it if it may (see [`map_local`]).
    in_place: bool,
    /// Areas frames followed: at most one a round, and one once the process ended.
    follows: usize,
}

/// A mapping of ours for `area`: where the process has it if nothing of ours is there (the
/// restored process, which inherits it, then has it in place: see [`Store::in_place`]), else
/// placed as the area is within huge pages (the same offset from a 2 MiB boundary), so that
/// a huge page here is one there, when `huge`.
fn map_local(area: Area, huge: bool, in_place: bool) -> Result<u64> {
    let len = area.end - area.start;
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if area.noreserve { libc::MAP_NORESERVE } else { 0 };
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let (low, high) = stack_zone();
    if !in_place || (area.end > low && area.start < high) {
        return map_anywhere(area, huge, flags);
    }
    // SAFETY: a new anonymous mapping that replaces nothing (NOREPLACE): it fails, or lands at
    // the area's address, where nothing of ours is.
    let p = unsafe {
        libc::mmap(area.start as *mut libc::c_void, len as usize, rw, flags | libc::MAP_FIXED_NOREPLACE, -1, 0)
    } as u64;
    if p == area.start {
        return Ok(p);
    }
    if p != libc::MAP_FAILED as u64 {
        // A kernel that took the address as a hint (before Linux 4.17).
        unmap_local(p, len);
    }
    map_anywhere(area, huge, flags)
}

/// Where our main thread's stack is and may grow (RLIMIT_STACK, at least 8 MiB, at most 1
/// GiB, and the kernel's guard gap below it): no area is held there in place, or the stack
/// could not grow. Empty if our stack is not found.
fn stack_zone() -> (u64, u64) {
    static ZONE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    *ZONE.get_or_init(|| {
        let maps = procfs::read_maps(std::process::id() as i32).unwrap_or_default();
        let Some(s) = maps.iter().find(|m| m.name == "[stack]") else { return (0, 0) };
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit fills the rlimit we own.
        let limit = match unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut r) } {
            0 => r.rlim_cur,
            _ => 0,
        };
        let room = limit.clamp(8 << 20, 1 << 30) + (1 << 20);
        (s.end.saturating_sub(room), s.end)
    })
}

/// [`map_local`] where the kernel finds room, with mmap `flags`.
fn map_anywhere(area: Area, huge: bool, flags: i32) -> Result<u64> {
    let len = area.end - area.start;
    let extra = if huge { HUGE } else { 0 };
    // SAFETY: a new anonymous mapping at an address the kernel chooses: it touches nothing of
    // ours.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), (len + extra) as usize, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0)
    } as u64;
    if p == libc::MAP_FAILED as u64 {
        return Err(Error::sys("mmap", format!("{len} bytes for pages sent ahead"), nix::errno::Errno::last()));
    }
    if !huge {
        return Ok(p);
    }
    let at = p + (area.start % HUGE + HUGE - p % HUGE) % HUGE;
    // What lies before and after the placed mapping goes back.
    if at > p {
        unmap_local(p, at - p);
    }
    if p + extra > at {
        unmap_local(at + len, p + extra - at);
    }
    Ok(at)
}

fn unmap_local(at: u64, len: u64) {
    // SAFETY: `at` is a mapping of `len` bytes this store made and owns; nothing else points
    // into it.
    unsafe { libc::munmap(at as *mut libc::c_void, len as usize) };
}

/// Whether held area `h` is one of the image's mappings (`plans`, sorted): the same range
/// and kind, which it then becomes.
/// The image's mapping that held area `h` becomes, if any (see [`becomes`]); not a mapping
/// of a file made from the file here (the same after all: see [`Source::carry_files`]).
fn matched<'a>(h: &Held, plans: &'a [memory::Plan]) -> Option<&'a memory::Plan> {
    let i = plans.partition_point(|p| p.vma.end <= h.area.start);
    plans.get(i).filter(|p| becomes(&h.area, &p.vma) && !(p.from_file && p.vma.kind == memory::KIND_FILE))
}

impl Store {
    pub fn new(limit: u64) -> Store {
        Store {
            held: BTreeMap::new(),
            limit,
            bytes_held: 0,
            others: 0,
            received: 0,
            here: true,
            mapped: true,
            in_place: true,
            follows: 0,
        }
    }

    /// The areas the process has now (an Areas frame): those held already stay, a changed one
    /// gets the pages of the old ones where they overlap, the others go.
    pub fn follow(&mut self, areas: &[(Area, bool)]) -> Result<()> {
        self.ours()?;
        // Each change of an area copies what it holds of the old one: bounded, so that a
        // crafted image of many small Areas cannot make that a great deal of copying.
        self.follows += 1;
        changes_within_rounds(self.follows)?;
        // What arrives counts against the limit (see [`Store::pages`]); the areas only map
        // address space, which one process cannot have more of than its own.
        let total = areas.iter().try_fold(0u64, |t, (a, _)| t.checked_add(a.end.checked_sub(a.start)?));
        if total.is_none_or(|t| t > MAX_SPAN) {
            return Err(Error::Refused(format!(
                "the areas sent ahead span more than a process's address space ({MAX_SPAN} bytes)"
            )));
        }
        let mut old = std::mem::take(&mut self.held);
        for &(a, huge) in areas {
            if old.get(&a.start).is_some_and(|h| h.area == a)
                && let Some(mut h) = old.remove(&a.start)
            {
                h.huge = huge && h.local % HUGE == a.start % HUGE;
                self.held.insert(a.start, h);
                continue;
            }
            let mut h = Held::new(a, huge, self.in_place)?;
            // Carried over from the old areas: the very pages the source counts as held.
            // (The old areas are apart, as these are: those that meet it, walking down.)
            for (_, o) in old.range(..a.end).rev().take_while(|(_, o)| o.area.end > a.start) {
                let (s, e) = (o.area.start.max(a.start), o.area.end.min(a.end));
                for (i, j) in o.state.runs_within(o.page(s), o.page(e), 1) {
                    let from = o.area.start + i as u64 * PAGE;
                    let to = from + (j - i) as u64 * PAGE;
                    // SAFETY: both runs lie inside mappings this store owns ([from, to) is
                    // within both areas), which do not overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            (o.local + (from - o.area.start)) as *const u8,
                            (h.local + (from - a.start)) as *mut u8,
                            (to - from) as usize,
                        )
                    };
                    h.set(from, to, 1);
                }
            }
            if h.huge {
                h.collapse(a.start, a.end);
            }
            self.held.insert(a.start, h);
        }
        for h in old.into_values() {
            unmap_local(h.local, h.area.end - h.area.start);
        }
        self.bytes_held = self.held_bytes();
        Ok(())
    }

    /// Bytes of the pages held.
    pub fn held_bytes(&self) -> u64 {
        self.held.values().map(|h| h.state.count() as u64).sum::<u64>() * PAGE
    }

    /// A Pages frame: each run must lie in one area held.
    pub fn pages(&mut self, b: &[u8]) -> Result<()> {
        self.ours()?;
        let bad = |what: String| Error::Net(crate::net::NetError::Protocol(format!("pages sent ahead: {what}")));
        let n = le32(b, 0) as usize;
        let head = 8 + n * 16;
        if b.len() < head {
            return Err(bad(format!("a frame of {} bytes for {n} runs", b.len())));
        }
        // Checked whole first, then copied, then collapsed into huge pages where they may be.
        let mut off = head;
        let mut copies: Vec<(usize, u64, usize)> = Vec::with_capacity(n); // from, to, len
        let mut runs = Vec::with_capacity(n);
        // Pages held from now on that were not (at most: runs that overlap count twice).
        let mut more = 0u64;
        for i in 0..n {
            let (s, np) = (le64(b, 8 + i * 16), le32(b, 16 + i * 16) as u64);
            let e = s.saturating_add(np * PAGE);
            let h = self.held.range(..=s).next_back().map(|x| x.1).filter(|h| h.area.start <= s && e <= h.area.end);
            let Some(h) = h.filter(|_| s.is_multiple_of(PAGE) && np > 0) else {
                return Err(bad(format!("run {s:#x}+{np} pages lies outside the areas")));
            };
            let len = (np * PAGE) as usize;
            if b.len() < off + len {
                return Err(bad("data shorter than its runs".into()));
            }
            copies.push((off, h.local + (s - h.area.start), len));
            runs.push((h.area.start, s, e));
            more += np * PAGE - h.state.count_within(h.page(s), h.page(e)) as u64 * PAGE;
            off += len;
        }
        if off != b.len() {
            return Err(bad("data longer than its runs".into()));
        }
        let total = self.others + self.bytes_held + more;
        if total > self.limit {
            return Err(Error::Refused(format!(
                "the pages sent ahead ({total} bytes) exceed this restartd's limit ({} bytes)",
                self.limit
            )));
        }
        const MADV_POPULATE_WRITE: i32 = 23;
        for &(from, to, len) in &copies {
            // SAFETY: `to` and `len` lie inside an area's mapping, ours, and `from` and `len`
            // inside `b` (both checked above). The pages are faulted in first, in one call
            // (Linux 5.14+; a failure leaves them to the copy's own faults, one at a time,
            // which costs a third more).
            unsafe {
                libc::madvise(to as *mut libc::c_void, len, MADV_POPULATE_WRITE);
                std::ptr::copy_nonoverlapping(b.as_ptr().add(from), to as *mut u8, len)
            };
        }
        self.bytes_held += more;
        let total = off - head;
        for (area, s, e) in runs {
            let Some(h) = self.held.get_mut(&area) else { continue };
            h.set(s, e, 1);
            if h.huge {
                h.collapse(s, e);
            }
        }
        self.received += total as u64;
        // The source stops its rounds well before this (engine::precopy, MAX_ROUNDS).
        if self.received > 32 * self.limit.min(1 << 40) {
            return Err(Error::Refused(format!(
                "{} bytes sent ahead: more than rounds of a live migration send",
                self.received
            )));
        }
        Ok(())
    }

    /// The pages the processes of a tree share (res::treecow), held for a restore: its
    /// areas made, then [`Store::put`] for each TREEPAGES batch.
    pub fn shared(areas: &[crate::res::treecow::Area]) -> Result<Store> {
        let total: u64 = areas.iter().map(|a| a.end - a.start).sum();
        let mut st = Store::new(total);
        // (Every process's mappings are cleared of them before they are forked: see
        // restore::shared_pages.)
        st.in_place = false;
        let areas: Vec<(Area, bool)> =
            areas.iter().map(|a| (Area { start: a.start, end: a.end, noreserve: a.noreserve }, false)).collect();
        st.follow(&areas)?;
        Ok(st)
    }

    /// A TREEPAGES batch: each run, of shared pages (no flag), must lie in one area held, and
    /// come once.
    pub fn put(&mut self, runs: &[crate::crf::pages::Run], data: &[u8], at: u64) -> Result<()> {
        self.ours()?;
        let mut off = 0usize;
        for r in runs {
            let (s, e) = (r.addr, r.addr + r.len() as u64);
            let h = self.held.range_mut(..=s).next_back().map(|x| x.1).filter(|h| e <= h.area.end);
            let fresh = |h: &Held| h.state.all(h.page(s), h.page(e), |x| x == 0);
            let Some(h) = h.filter(|h| r.flags == 0 && fresh(h)) else {
                return Err(Error::Image(crate::crf::CrfError::Bad {
                    offset: at,
                    what: format!("shared pages {s:#x}-{e:#x} lie outside the TREECOW areas, or come twice"),
                }));
            };
            let src = data.get(off..off + r.len()).ok_or_else(|| {
                Error::Image(crate::crf::CrfError::Bad {
                    offset: at,
                    what: "shared pages shorter than their runs".into(),
                })
            })?;
            // SAFETY: [s, e) lies inside the area (checked above), whose mapping of `len`
            // bytes at `local` is ours.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), (h.local + (s - h.area.start)) as *mut u8, r.len()) };
            h.set(s, e, 1);
            off += r.len();
            self.received += r.len() as u64;
        }
        Ok(())
    }

    /// Before the next process of the tree takes its pages: every page held counts as held
    /// again (the last process kept or wrote over its own copies, not ours).
    pub fn rearm(&mut self) {
        for h in self.held.values_mut() {
            h.state.map_all(|x| x.min(1));
            h.there = h.local;
            h.aside = false;
        }
    }

    /// Before the restored process is forked: moves every mapping of ours that overlaps one
    /// of the image's `vmas` elsewhere (in our own address space, pages and all), so that the
    /// process's mappings can be made where they were.
    pub fn clear_of(&mut self, vmas: &[Vma]) -> Result<()> {
        let ranges: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
        // (One where the first process has it, which becomes that very mapping, stays: see
        // `in_place`. The first process has no mapping an earlier one's pages make.)
        let stays = |h: &Held| {
            h.local == h.area.start
                && vmas.iter().any(|v| {
                    becomes(&h.area, v)
                        && v.end == h.area.end
                        && memory::private_anon(v)
                        && v.flags & memory::VMA_KEPT_FIRST == 0
                })
        };
        let stays: Vec<u64> = self.held.values().filter(|h| stays(h)).map(|h| h.area.start).collect();
        self.clear_of_ranges_but(&ranges, &stays)
    }

    /// [`Store::clear_of`] for every range of `ranges`.
    pub fn clear_of_ranges(&mut self, ranges: &[(u64, u64)]) -> Result<()> {
        self.clear_of_ranges_but(ranges, &[])
    }

    /// [`Store::clear_of_ranges`], but for the areas that begin at one of `stays`.
    fn clear_of_ranges_but(&mut self, ranges: &[(u64, u64)], stays: &[u64]) -> Result<()> {
        self.ours()?;
        let in_way = |h: &Held| {
            let len = h.area.end - h.area.start;
            !stays.contains(&h.area.start) && ranges.iter().any(|v| v.1 > h.local && v.0 < h.local + len)
        };
        // (Our own maps, hundreds of lines with as many areas, are read only if one must move.)
        if !self.held.values().any(in_way) {
            return Ok(());
        }
        let me = std::process::id() as i32;
        let mut avoid: Vec<(u64, u64)> = ranges.to_vec();
        avoid.extend(procfs::read_maps(me)?.iter().map(|m| (m.start, m.end)));
        for h in self.held.values_mut() {
            let len = h.area.end - h.area.start;
            if !in_way(h) {
                continue;
            }
            // Claimed first (MAP_FIXED_NOREPLACE): another thread of ours may have mapped
            // something there since our maps were read.
            let to = loop {
                // At the same offset from a huge page boundary as it is now.
                let free = find_free(&avoid, len + HUGE)
                    .ok_or_else(|| Error::Refused("no room to move the pages sent ahead".into()))?;
                let to = free + (h.local % HUGE + HUGE - free % HUGE) % HUGE;
                avoid.push((free, free + len + HUGE));
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE;
                // SAFETY: a new mapping that replaces nothing (NOREPLACE): it fails, or lands
                // at `to`, where nothing of ours is.
                let got = unsafe { libc::mmap(to as *mut libc::c_void, len as usize, libc::PROT_NONE, flags, -1, 0) };
                if got as u64 == to {
                    break to;
                }
                if got != libc::MAP_FAILED {
                    // An old kernel that took the address as a hint.
                    unmap_local(got as u64, len);
                }
            };
            // SAFETY: moves our own mapping over `to`, which we have just claimed.
            let r = unsafe {
                libc::mremap(
                    h.local as *mut libc::c_void,
                    len as usize,
                    len as usize,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    to as *mut libc::c_void,
                )
            };
            if r == libc::MAP_FAILED {
                let e = nix::errno::Errno::last();
                unmap_local(to, len);
                return Err(Error::sys("mremap", format!("pages sent ahead to {to:#x}"), e));
            }
            h.local = to;
            h.there = to;
        }
        Ok(())
    }

    /// In the restored process (`c`), which inherited our mappings where we have them: moves
    /// those that overlap one of `ranges` (its mappings to be) elsewhere in it, where nothing
    /// of `avoid` (all it maps and will map) is; each is then at [`Store::ranges`] there. For
    /// a tree's processes after the first, whose mappings were not known before they were
    /// forked (the first's are cleared of in our own address space first: see
    /// [`Store::clear_of`]).
    /// One that is in place already, to become the mapping there that `part` takes of it,
    /// stays (see [`Store::in_place`]); `plans` is sorted by address.
    pub fn clear_there(
        &mut self,
        c: &mut crate::ptrace::Ctl,
        (ranges, plans, part): (&[(u64, u64)], &[memory::Plan], Part),
        avoid: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let mut l = crate::ptrace::calls::Calls::new();
        for h in self.held.values_mut() {
            let len = h.area.end - h.area.start;
            if Self::in_place(h, plans, part) || !ranges.iter().any(|v| v.1 > h.there && v.0 < h.there + len) {
                continue;
            }
            let free = find_free(avoid, len + HUGE)
                .ok_or_else(|| Error::Refused("no room to move the pages sent ahead in the restored process".into()))?;
            let to = free + (h.there % HUGE + HUGE - free % HUGE) % HUGE;
            avoid.push((free, free + len + HUGE));
            l.mremap(h.there, len, to);
            h.there = to;
        }
        if l.is_empty() {
            return Ok(());
        }
        let area = c.scratch.clone();
        c.run_at_once(&l, &area).map(drop)
    }

    /// Whether held area `h` is where the restored process has it, and becomes that mapping
    /// (of those `part` takes, see [`Store::move_into`]), as big: it needs no move. (Placed
    /// so by [`map_local`]; each move costs 8-17 us, and a runtime's heap is hundreds of
    /// areas.)
    fn in_place(h: &Held, plans: &[memory::Plan], part: Part) -> bool {
        let len = h.area.end - h.area.start;
        matched(h, plans).filter(|p| part.takes(p)).is_some_and(|p| h.there == p.vma.start && p.vma.len() == len)
    }

    /// Our mappings as the restored process has them, as (start, end): its to keep until it
    /// moves them.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut r: Vec<(u64, u64)> =
            self.held.values().map(|h| (h.there, h.there + h.area.end - h.area.start)).collect();
        r.sort_unstable();
        r
    }

    /// Err once our mappings went ([`Store::leave`]): nothing may be written to them then.
    fn ours(&self) -> Result<()> {
        match self.here {
            true => Ok(()),
            false => Err(Error::Proc("the pages sent ahead were let go already".into())),
        }
    }

    /// Once the processes to be restored are forked (each inherited our mappings): ours go.
    /// Held on, each page the restore or the process then writes would be a copy, shared as
    /// it is with us (a huge page split first), where, ours gone, it is the process's alone.
    /// What is known of the pages stays, for the restore.
    pub fn leave(&mut self) {
        self.let_go();
        self.unmap();
    }

    /// Nothing more goes in or comes out of our mappings, which stay until [`Store::unmap`].
    fn let_go(&mut self) {
        self.here = false;
    }

    /// Our mappings go, once let go (see [`Store::leave`]).
    fn unmap(&mut self) {
        if !self.here && std::mem::take(&mut self.mapped) {
            for h in self.held.values() {
                unmap_local(h.local, h.area.end - h.area.start);
            }
        }
    }

    /// Whether an area held here becomes mapping `p` of the image (see [`becomes`]).
    pub fn becomes(&self, p: &memory::Plan) -> bool {
        self.held.get(&p.vma.start).is_some_and(|h| becomes(&h.area, &p.vma))
    }

    /// The image's mappings (`plans`, sorted) that an area held here becomes, of those `part`
    /// takes: sorted ranges.
    pub fn moved(&self, plans: &[memory::Plan], part: Part) -> Vec<(u64, u64)> {
        self.held
            .values()
            .filter_map(|h| matched(h, plans))
            .filter(|p| part.takes(p))
            .map(|p| (p.vma.start, p.vma.end))
            .collect()
    }

    /// In the restored process (`c`), its pages moved into place: each area held that
    /// becomes one of the image's mappings (see [`becomes`]) that `part` takes is moved
    /// there, made that mapping's size (map_all left its range free: see [`Store::moved`]);
    /// of its own store (`Part::Own`), one that becomes a mapping an earlier process's take is
    /// left aside, for [`Store::copy_aside`]; the others are unmapped. `plans` is sorted by
    /// address.
    pub fn move_into(&mut self, c: &mut crate::ptrace::Ctl, plans: &[memory::Plan], part: Part) -> Result<()> {
        let mut l = crate::ptrace::calls::Calls::new();
        for h in self.held.values_mut() {
            let (there, len) = (h.there, h.area.end - h.area.start);
            match matched(h, plans) {
                Some(p) if part.takes(p) => {
                    let size = p.vma.end - p.vma.start;
                    if !Self::in_place(h, plans, part) {
                        l.mremap_resized(there, len, size, h.area.start);
                    }
                    // Past the end of a mapping that shrank: not the process's any more.
                    let within = (size.min(len) / PAGE) as usize;
                    h.state.map(within, usize::MAX, |_| 4);
                }
                Some(_) if part == Part::Own => h.aside = true,
                _ => {
                    l.munmap(there, len);
                    // Gone from this process (a tree's next one has them still: see `rearm`).
                    h.state.map_all(|_| 4);
                }
            }
        }
        let area = c.scratch.clone();
        c.run_at_once(&l, &area).map(drop)
    }

    /// Once the image's pages are in: the kept pages of the areas left aside (see
    /// [`Store::move_into`]) are copied over an earlier process's, moved into their place,
    /// and the areas go. In process `c`, whose pid is `pid` here. Returns what it wrote, for
    /// those processes' stores ([`Store::written`]).
    pub fn copy_aside(&mut self, c: &mut crate::ptrace::Ctl, pid: i32) -> Result<Vec<(u64, usize, usize)>> {
        // In batches of up to 4 MiB: each read in one go, each written with one call.
        const BATCH: usize = 1024;
        let mut l = crate::ptrace::calls::Calls::new();
        let (mut buf, mut written) = (Vec::new(), Vec::new());
        for h in self.held.values_mut().filter(|h| h.aside) {
            let at = |i: usize| h.area.start + i as u64 * PAGE;
            let mut runs: Vec<(u64, u64)> = h.state.runs_of(2).map(|(i, j)| (at(i), at(j))).collect();
            let mut k = 0;
            while k < runs.len() {
                let (mut batch, mut pages) = (Vec::new(), 0usize);
                while k < runs.len() && pages < BATCH {
                    let (s, e) = runs[k];
                    let take = (((e - s) / PAGE) as usize).min(BATCH - pages);
                    batch.push((s, take * PAGE as usize));
                    pages += take;
                    match s + (take as u64) * PAGE {
                        at if at < e => runs[k].0 = at,
                        _ => k += 1,
                    }
                }
                buf.resize(pages * PAGE as usize, 0);
                // Read where they lie aside, through /proc/PID/mem (all of them "shared"):
                // process_vm_readv would pin them, and so give the process a copy of each
                // (shared, as they are, with the processes restored next).
                let from: Vec<(u64, usize)> = batch.iter().map(|&(s, n)| (h.there + (s - h.area.start), n)).collect();
                let all: Vec<(u64, u64)> = from.iter().map(|&(s, n)| (s, s + n as u64)).collect();
                crate::ptrace::mem::read_runs_unpinned(pid, &from, &mut buf, &all)?;
                crate::ptrace::mem::write_runs(pid, &batch, &buf)?;
                written.extend(batch.iter().map(|&(s, n)| (s, n, 0)));
            }
            l.munmap(h.there, h.area.end - h.area.start);
            h.state.map_all(|_| 4);
            h.aside = false;
        }
        let area = c.scratch.clone();
        c.run_at_once(&l, &area).map(|_| written)
    }

    /// Kept runs of the image, `runs` (start, end): each must be pages held as received.
    pub fn keep(&mut self, runs: &[(u64, u64)]) -> Result<()> {
        for &(s, e) in runs {
            let h = self.held.range_mut(..=s).next_back().map(|x| x.1).filter(|h| e <= h.area.end);
            let ok = h.is_some_and(|h| {
                let ok = h.state.all(h.page(s), h.page(e), |x| x == 1 || x == 2);
                h.set(s, e, 2);
                ok
            });
            if !ok {
                return Err(Error::Refused(format!(
                    "the image keeps pages {s:#x}-{e:#x} as sent ahead, which did not arrive: it restores only from a live migration that sent them"
                )));
            }
        }
        Ok(())
    }

    /// Pages the image writes: not to be dropped.
    pub fn written(&mut self, targets: &[(u64, usize, usize)]) {
        for &(s, len, _) in targets {
            let e = s + len as u64;
            for h in self.held.values_mut().filter(|h| h.area.end > s && h.area.start < e) {
                let (i, j) = (h.page(s.max(h.area.start)), h.page(e.min(h.area.end)));
                h.state.map(i, j, |x| if x == 1 { 3 } else { x });
            }
        }
    }

    /// After the image's pages: every page held that the image neither kept nor wrote held
    /// nothing at the freeze, and is dropped in the restored process (it reads as zero).
    pub fn drop_stale(&self, c: &mut crate::ptrace::Ctl) -> Result<()> {
        let mut l = crate::ptrace::calls::Calls::new();
        for h in self.held.values() {
            for (i, j) in h.state.runs_of(1) {
                let at = h.area.start + i as u64 * PAGE;
                l.madvise(
                    crate::ptrace::RemoteAddr(at),
                    (j - i) as u64 * PAGE,
                    libc::MADV_DONTNEED,
                    "madvise(MADV_DONTNEED)",
                );
            }
        }
        let area = c.scratch.clone();
        c.run_at_once(&l, &area).map(drop)
    }
}

/// The destination of a live migration: what was sent ahead of each process of the tree, a
/// [`Store`] each, by its pid at the source (Member frames say whose the next ones are).
pub struct Stores {
    by_pid: BTreeMap<i32, Store>,
    /// Most bytes of areas held, all processes together.
    limit: u64,
    current: Option<i32>,
    /// The tree's shared memory sent ahead (engine::shmahead), the bytes of its pages held,
    /// and the bytes of it received.
    shm: Vec<super::shmahead::Held>,
    shm_held: u64,
    shm_received: u64,
    /// [`Stores::leave`] keeps our mappings until [`Stores::unmap`] (see [`Stores::unmap_later`]).
    later: bool,
}

/// Most processes of a tree whose pages are sent ahead.
const MAX_MEMBERS: usize = 1 << 14;

impl Stores {
    pub fn new(limit: u64) -> Stores {
        Stores {
            by_pid: BTreeMap::new(),
            limit,
            current: None,
            shm: Vec::new(),
            shm_held: 0,
            shm_received: 0,
            later: false,
        }
    }

    /// The pages a running checkpoint copied of its processes, by pid.
    pub fn held(stores: Vec<(i32, Store)>) -> Stores {
        let limit = stores.iter().map(|s| s.1.limit).max().unwrap_or(0);
        let by_pid = stores.into_iter().collect();
        Stores { by_pid, limit, current: None, shm: Vec::new(), shm_held: 0, shm_received: 0, later: false }
    }

    fn bad(what: String) -> Error {
        Error::Net(crate::net::NetError::Protocol(format!("pages sent ahead: {what}")))
    }

    /// A Member frame: the frames that follow are of that process.
    pub fn member(&mut self, b: &[u8]) -> Result<()> {
        let pid = match <[u8; 4]>::try_from(b).map(u32::from_le_bytes) {
            Ok(p) if p > 0 && p <= i32::MAX as u32 => p as i32,
            _ => return Err(Self::bad(format!("a Member frame of {} bytes, or of pid 0", b.len()))),
        };
        if !self.by_pid.contains_key(&pid) && self.by_pid.len() >= MAX_MEMBERS {
            return Err(Error::Refused(format!("pages sent ahead of more than {MAX_MEMBERS} processes")));
        }
        self.by_pid.entry(pid).or_insert_with(|| Store::new(self.limit));
        self.current = Some(pid);
        Ok(())
    }

    /// The current process's store, told what the others hold of the limit.
    fn current(&mut self) -> Result<&mut Store> {
        let pid = self.current.ok_or_else(|| Self::bad("areas or pages before any Member frame".into()))?;
        let others: u64 =
            self.by_pid.iter().filter(|(p, _)| **p != pid).map(|(_, s)| s.bytes_held).sum::<u64>() + self.shm_held;
        let st = self.by_pid.get_mut(&pid).ok_or_else(|| Self::bad("no such member".into()))?;
        st.others = others;
        Ok(st)
    }

    /// An Areas frame, for the current process: [`Store::follow`].
    pub fn follow(&mut self, areas: &[(Area, bool)]) -> Result<()> {
        self.current()?.follow(areas)
    }

    /// A Pages frame, for the current process: [`Store::pages`], within what the others leave
    /// of the limit.
    pub fn pages(&mut self, b: &[u8]) -> Result<()> {
        self.current()?.pages(b)
    }

    /// A Shm frame: pages of the tree's shared memory (engine::shmahead::receive), within
    /// what the processes' pages leave of the limit.
    pub fn shm(&mut self, b: &[u8]) -> Result<()> {
        let held: u64 = self.by_pid.values().map(|s| s.bytes_held).sum::<u64>() + self.shm_held;
        self.shm_held += super::shmahead::receive(&mut self.shm, b, self.limit.saturating_sub(held))?;
        self.shm_received += b.len() as u64;
        if self.shm_received > 32 * self.limit.min(1 << 40) {
            return Err(Error::Refused(format!(
                "{} bytes of shared memory sent ahead: more than rounds of a live migration send",
                self.shm_received
            )));
        }
        Ok(())
    }

    /// The tree's shared memory sent ahead, for the restore to take (engine::inherit).
    pub fn take_shm(&mut self) -> Vec<super::shmahead::Held> {
        std::mem::take(&mut self.shm)
    }

    /// Bytes of pages received, all processes together.
    pub fn received(&self) -> u64 {
        self.by_pid.values().map(|s| s.received).sum::<u64>() + self.shm_received
    }

    /// [`Store::leave`] for every process; our mappings stay if asked to
    /// ([`Stores::unmap_later`]).
    pub fn leave(&mut self) {
        match self.later {
            true => self.by_pid.values_mut().for_each(Store::let_go),
            false => self.by_pid.values_mut().for_each(Store::leave),
        }
    }

    /// [`Stores::leave`] keeps our mappings, to be unmapped by [`Stores::unmap`] (or the
    /// drop) once the restored processes run: unmapping what they inherited costs about
    /// what forking it did (6 ms for 150 MB of small pages), which then does not count in
    /// their freeze. Until then each page the restore writes over one held is a copy (a
    /// live migration's last pages: a few hundred).
    pub fn unmap_later(&mut self) {
        self.later = true;
    }

    /// Our mappings go, once let go ([`Stores::leave`]).
    pub fn unmap(&mut self) {
        self.by_pid.values_mut().for_each(Store::unmap);
    }

    /// What was sent ahead of process `pid` (its pid at the source).
    pub fn get_mut(&mut self, pid: i32) -> Option<&mut Store> {
        self.by_pid.get_mut(&pid)
    }

    /// What was sent ahead of process `pid`, and of each of `earlier` (others), in that
    /// order (those sent nothing left out).
    pub fn with_earlier(&mut self, pid: i32, earlier: &[i32]) -> (Option<&mut Store>, Vec<&mut Store>) {
        let mut own = None;
        let mut theirs: Vec<(usize, &mut Store)> = Vec::new();
        for (p, s) in self.by_pid.iter_mut() {
            if *p == pid {
                own = Some(s);
            } else if let Some(k) = earlier.iter().position(|e| e == p) {
                theirs.push((k, s));
            }
        }
        theirs.sort_unstable_by_key(|t| t.0);
        (own, theirs.into_iter().map(|t| t.1).collect())
    }
}

/// The pages a running checkpoint copied before the freeze, where they lie in the image: per
/// range of the process's addresses, the stream offset of their last copy. What a [`Store`]
/// holds, without holding it: a restore from a mapped image writes them from there, as it
/// writes the image's other pages.
#[derive(Debug, Default)]
pub struct Offsets {
    /// The areas of the last PREAREAS, in order.
    areas: Vec<Area>,
    /// start -> (end, offset of the page at start), apart, inside the areas.
    runs: BTreeMap<u64, (u64, u64)>,
    /// Bytes of pages recorded, copies of the same page too.
    received: u64,
    /// PREPAGES sections not checked yet (stream offset, length, CRC): for [`Checker`], while
    /// the restore goes on.
    pub unchecked: Vec<(u64, usize, u32)>,
}

impl Offsets {
    /// The areas from now on: what lies outside them goes (as [`Store::follow`]).
    fn follow(&mut self, areas: &[(Area, bool)]) {
        self.areas = areas.iter().map(|a| a.0).collect();
        let old = std::mem::take(&mut self.runs);
        for (s, (e, off)) in old {
            // The areas are in order and apart (decode_areas): those that meet [s, e).
            let first = self.areas.partition_point(|a| a.end <= s);
            for a in self.areas[first..].iter().take_while(|a| a.start < e) {
                let (from, to) = (s.max(a.start), e.min(a.end));
                self.runs.insert(from, (to, off + (from - s)));
            }
        }
    }

    /// A PREPAGES section's payload, at stream offset `at`: its `head` (the runs) and the
    /// length of its data. Each run lies in one area, and replaces what was there.
    fn record(&mut self, b: &[u8], data_len: u64, at: u64) -> std::result::Result<(), String> {
        let n = le32(b, 0) as usize;
        let head = 8 + n * 16;
        if b.len() < head {
            return Err(format!("{} bytes for {n} runs", b.len()));
        }
        let mut off = head as u64;
        for i in 0..n {
            let (s, np) = (le64(b, 8 + i * 16), le32(b, 16 + i * 16) as u64);
            let e = s.saturating_add(np * PAGE);
            let i = self.areas.partition_point(|a| a.end <= s);
            if !s.is_multiple_of(PAGE) || np == 0 || !self.areas.get(i).is_some_and(|a| a.start <= s && e <= a.end) {
                return Err(format!("run {s:#x}+{np} pages lies outside the areas"));
            }
            self.cut(s, e);
            self.runs.insert(s, (e, at + off));
            off += np * PAGE;
            self.received += np * PAGE;
        }
        if off != head as u64 + data_len {
            return Err(format!("{data_len} bytes of data for runs of {}", off - head as u64));
        }
        Ok(())
    }

    /// Forgets [s, e).
    fn cut(&mut self, s: u64, e: u64) {
        let first = self.runs.range(..s).next_back().filter(|(_, (re, _))| *re > s).map(|(k, _)| *k);
        let keys: Vec<u64> = first.into_iter().chain(self.runs.range(s..e).map(|(k, _)| *k)).collect();
        for k in keys {
            let Some((re, off)) = self.runs.remove(&k) else { continue };
            if k < s {
                self.runs.insert(k, (s, off));
            }
            if re > e {
                self.runs.insert(e, (re, off + (e - k)));
            }
        }
    }

    /// Where the pages of `ranges` (sorted) lie: (address, length, stream offset), in order;
    /// Err with the first range it does not hold all of.
    pub fn pieces(&self, ranges: &[(u64, u64)]) -> std::result::Result<Vec<Piece>, (u64, u64)> {
        let mut out = Vec::new();
        for &(s, e) in ranges {
            let mut at = s;
            while at < e {
                let Some((&k, &(re, off))) = self.runs.range(..=at).next_back().filter(|(_, (re, _))| *re > at) else {
                    return Err((s, e));
                };
                let to = re.min(e);
                out.push((at, (to - at) as usize, off + (at - k)));
                at = to;
            }
        }
        Ok(out)
    }

    /// Bytes of the pages held.
    pub fn held_bytes(&self) -> u64 {
        self.runs.iter().map(|(s, (e, _))| e - s).sum()
    }
}

/// Checks the CRCs of sections of a mapped image on a thread of its own; [`Checker::finish`]
/// (or the drop) waits for it.
pub struct Checker {
    thread: Option<std::thread::JoinHandle<Option<u64>>>,
}

/// The stream offset of the first of `sections` (stream offset, length, CRC) of `image`
/// (whose first byte is at stream offset `base`) that does not check.
fn first_bad(image: &[u8], base: u64, sections: &[(u64, usize, u32)]) -> Option<u64> {
    sections.iter().find_map(|&(off, n, crc)| {
        let from = off.checked_sub(base)? as usize;
        match image.get(from..from + n) {
            Some(d) if crc32fast::hash(d) == crc => None,
            _ => Some(off),
        }
    })
}

fn damaged_at(offset: u64) -> Error {
    Error::Image(crate::crf::CrfError::Bad {
        offset,
        what: "pages copied while the process ran: section checksum mismatch".into(),
    })
}

impl Checker {
    /// Checks `sections` (stream offset, length, CRC) of `image`, whose first byte is at
    /// stream offset `base`: on a thread, or here if none is to be had (Err: one does not
    /// check).
    ///
    /// # Safety
    /// `image` must stay mapped and unchanged until the Checker is finished or dropped.
    pub unsafe fn start(image: &[u8], base: u64, sections: Vec<(u64, usize, u32)>) -> Result<Checker> {
        let (at, len) = (image.as_ptr() as usize, image.len());
        let spawned = std::thread::Builder::new().spawn({
            let sections = sections.clone();
            move || {
                // SAFETY: the caller keeps `image` as it is until the thread is joined.
                let image = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
                first_bad(image, base, &sections)
            }
        });
        match spawned {
            Ok(t) => Ok(Checker { thread: Some(t) }),
            Err(_) => match first_bad(image, base, &sections) {
                None => Ok(Checker { thread: None }),
                Some(off) => Err(damaged_at(off)),
            },
        }
    }

    /// Ok once every section checked; the first that did not, as a damaged image.
    pub fn finish(mut self) -> Result<()> {
        match self.thread.take().map(|t| t.join()) {
            None | Some(Ok(None)) => Ok(()),
            Some(Ok(Some(offset))) => Err(damaged_at(offset)),
            Some(Err(_)) => Err(Error::Proc("the checksum thread panicked".into())),
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pages held in the image: address, length, stream offset.
pub type Piece = (u64, usize, u64);

/// Where a restore keeps the pages a running checkpoint copied before the freeze.
pub enum Copied {
    /// In mappings of its own, moved into place (an image read as a stream).
    Held(Store),
    /// In the image, where they are (a mapped image: crf::Whole).
    InImage(Offsets),
    /// In the image, read and checked when a lazy restore serves them: the PREPAGES sections'
    /// data passed over, in order.
    Later(Offsets, Vec<crate::crf::pages::Deferred>),
}

/// How [`read_ahead`] keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Where they lie if the whole image is in memory, else in a Store.
    Auto,
    /// Where they lie, read and checked (crfinfo).
    Look,
    /// Where they lie, passed over (rstrt --lazy, from a file).
    Later,
}

impl Copied {
    /// Bytes of pages read, copies of the same page too.
    pub fn received(&self) -> u64 {
        match self {
            Copied::Held(s) => s.received,
            Copied::InImage(o) | Copied::Later(o, _) => o.received,
        }
    }

    /// Bytes of the pages held: the last copy of each.
    pub fn held_bytes(&self) -> u64 {
        match self {
            Copied::Held(s) => s.held_bytes(),
            Copied::InImage(o) | Copied::Later(o, _) => o.held_bytes(),
        }
    }
}

/// What the PREAREAS and PREPAGES sections of an image hold, per process: by its pid in the
/// image, 0 for the first process (an image without PREMEMBER sections, a version 4 one's).
pub type CopiedAll = Vec<(i32, Copied)>;

/// What an image of a running checkpoint holds of what was copied before the freeze.
#[derive(Default)]
pub struct ReadAhead {
    /// Each process's pages (PREMEMBER, PREAREAS, PREPAGES).
    pub copied: CopiedAll,
    /// The tree's shared memory (PRESHM), each object made and written (not with
    /// [`Keep::Look`]).
    pub shm: Vec<super::shmahead::Held>,
    /// Bytes of pages of it.
    pub shm_bytes: u64,
}

/// Reads the PREMEMBER, PREAREAS, PREPAGES and PRESHM sections an image of a running checkpoint
/// begins with (engine::checkpoint's `running_checkpoint`), each checked before it is used
/// (with [`Keep::Later`], a PREPAGES's data when it is read): kept as `how` says, per
/// process; the shared memory written into objects made for it (engine::shmahead).
/// Returns them (empty: the image has no such section) and the first section after.
pub fn read_ahead<R: crate::crf::Input>(
    rd: &mut crate::crf::Reader<R>,
    how: Keep,
) -> Result<(ReadAhead, Option<crate::crf::Section>)> {
    use crate::crf::{CrfError, Tag};
    const WHAT: &str = "pages copied while the process ran";
    let mut all: CopiedAll = Vec::new();
    let (mut shm, mut shm_bytes) = (Vec::new(), 0u64);
    // PREAREAS read, per process of `all`.
    let mut changes: Vec<usize> = Vec::new();
    // The process the sections are of, as its index in `all`.
    let mut current: Option<usize> = None;
    let mut buf = Vec::new();
    let t0 = Instant::now();
    let mapped = rd.window(0, 0).is_some();
    // The processes share pages the image stores once: every one's are held here, in the
    // image's order (crf::pages::PREMEMBER_HOLD; the first PREMEMBER says it).
    let mut hold = None;
    loop {
        let sec = rd.next_section()?;
        let ahead = |t: Tag| [Tag::PREAREAS, Tag::PREPAGES, Tag::PREMEMBER, Tag::PRESHM].contains(&t);
        let Some(s) = sec.filter(|s| ahead(s.tag)) else {
            log::debug!("{WHAT}: read in {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
            return Ok((ReadAhead { copied: all, shm, shm_bytes }, sec));
        };
        let bad = |what: String| Error::Image(CrfError::Bad { offset: s.offset, what: format!("{WHAT}: {what}") });
        if s.tag == Tag::PREMEMBER && hold.is_none() {
            hold = Some(s.flags & crate::crf::pages::PREMEMBER_HOLD != 0);
        }
        let fresh = || match how {
            Keep::Auto | Keep::Later if hold == Some(true) => Copied::Held(Store::new(1 << 47)),
            Keep::Auto if !mapped => Copied::Held(Store::new(1 << 47)),
            Keep::Later => Copied::Later(Offsets::default(), Vec::new()),
            _ => Copied::InImage(Offsets::default()),
        };
        if s.tag == Tag::PREMEMBER {
            let mut b = [0u8; 4];
            if s.len != 4 {
                return Err(bad(format!("a PREMEMBER of {} bytes", s.len)));
            }
            rd.read_exact_at(&mut b, WHAT)?;
            if crc32fast::hash(&b) != s.crc {
                return Err(bad("section checksum mismatch".into()));
            }
            let pid = u32::from_le_bytes(b);
            if pid == 0 || pid > i32::MAX as u32 || all.first().is_some_and(|a| a.0 == 0) {
                return Err(bad(format!("a PREMEMBER of pid {pid}, or after sections of no process")));
            }
            let pid = pid as i32;
            current = Some(match all.iter().position(|a| a.0 == pid) {
                Some(i) => i,
                None if all.len() >= MAX_MEMBERS => return Err(bad(format!("more than {MAX_MEMBERS} processes"))),
                None => {
                    all.push((pid, fresh()));
                    changes.push(0);
                    all.len() - 1
                }
            });
            continue;
        }
        // The tree's shared memory: of no process alone.
        if s.tag == Tag::PRESHM {
            let n = s.len as usize;
            if buf.len() < n && rd.window(s.offset, n).is_none() {
                buf.resize(n, 0);
            }
            let data = rd.data(&mut buf, n, WHAT)?;
            if crc32fast::hash(data) != s.crc {
                return Err(bad("section checksum mismatch".into()));
            }
            let p = super::shmahead::parse(data).map_err(|e| bad(e.to_string()))?;
            shm_bytes += p.runs.iter().map(|r| r.1 - r.0).sum::<u64>();
            // (What it writes is as much as the image holds.)
            if how != Keep::Look {
                super::shmahead::receive(&mut shm, data, u64::MAX).map_err(|e| match e {
                    Error::Net(crate::net::NetError::Protocol(w)) => bad(w),
                    e => e,
                })?;
            }
            continue;
        }
        // Sections of no PREMEMBER: the first process's.
        let i = *current.get_or_insert_with(|| {
            all.push((0, fresh()));
            changes.push(0);
            0
        });
        let c = &mut all[i].1;
        let n = s.len as usize;
        if let (Copied::Later(o, later), true) = (&mut *c, s.tag == Tag::PREPAGES) {
            // The runs, read; the data, passed over.
            let mut head = vec![0u8; 8];
            rd.read_exact_at(&mut head, WHAT)?;
            let runs = le32(&head, 0) as usize;
            if 8 + runs * 16 > n {
                return Err(bad(format!("{runs} runs in {n} bytes")));
            }
            head.resize(8 + runs * 16, 0);
            rd.read_exact_at(&mut head[8..], WHAT)?;
            let d = crate::crf::pages::Deferred::after_head(&s, &head, "PREPAGES");
            o.record(&head, d.data_len as u64, s.offset).map_err(bad)?;
            if !rd.pass(d.data_len as u64)? {
                return Err(Error::Proc(format!("{WHAT}: the image cannot be passed over (not a file)")));
            }
            later.push(d);
            continue;
        }
        if buf.len() < n && rd.window(s.offset, n).is_none() {
            buf.resize(n, 0);
        }
        let data = rd.data(&mut buf, n, WHAT)?;
        // Pages in a mapped image are checked beside the restore (a Checker), before the
        // processes run: a third of its time for 1 GiB, read alone first.
        let beside = how == Keep::Auto && s.tag == Tag::PREPAGES && matches!(c, Copied::InImage(_));
        if beside && let Copied::InImage(o) = &mut *c {
            o.unchecked.push((s.offset, n, s.crc));
        } else if crc32fast::hash(data) != s.crc {
            return Err(bad("section checksum mismatch".into()));
        }
        let damaged = |e: Error| match e {
            Error::Net(crate::net::NetError::Protocol(w)) => bad(w),
            e => e,
        };
        if s.tag == Tag::PREAREAS {
            changes[i] += 1;
            changes_within_rounds(changes[i])?;
            // Small pages, as a restore without them makes: made huge pages here (a copy
            // each) they would cost more than the fork they spare.
            let areas: Vec<(Area, bool)> =
                decode_areas(data).map_err(bad)?.into_iter().map(|(a, _)| (a, false)).collect();
            match c {
                Copied::Held(st) => st.follow(&areas).map_err(damaged)?,
                Copied::InImage(o) | Copied::Later(o, _) => o.follow(&areas),
            }
        } else {
            match c {
                Copied::Held(st) => st.pages(data).map_err(damaged)?,
                Copied::InImage(o) | Copied::Later(o, _) => {
                    let head = (8 + le32(data, 0) as usize * 16).min(data.len());
                    o.record(&data[..head], (data.len() - head) as u64, s.offset).map_err(bad)?
                }
            }
        }
    }
}

/// Our mappings go with the Store. After a restore the restored process has its own (it was
/// forked with them): the caller drops the Store once it runs, so that the restore never waits
/// for the freeing (some 9 ms a GiB of small pages), and the process's first writes until then
/// copy the few pages they touch.
impl Drop for Store {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Pages frame of `runs` (address, pages), each page's data its address's byte.
    fn frame(runs: &[(u64, u32)]) -> Vec<u8> {
        let r: Vec<(u64, u64)> = runs.iter().map(|&(a, n)| (a, a + n as u64 * PAGE)).collect();
        let mut b = pages_header(&r);
        for &(a, n) in runs {
            for p in 0..n as u64 {
                b.extend(std::iter::repeat_n((a / PAGE + p) as u8, PAGE as usize));
            }
        }
        b
    }

    fn rec(o: &mut Offsets, b: &[u8], at: u64) -> std::result::Result<(), String> {
        let head = (8 + le32(b, 0) as usize * 16).min(b.len());
        o.record(&b[..head], (b.len() - head) as u64, at)
    }

    /// Offsets hold what a Store would: the last copy of each page, the areas followed, and
    /// say which kept pages they lack.
    #[test]
    fn offsets_keep_the_last_copy_of_each_page_in_the_areas() {
        let area = |s: u64, e: u64| (Area { start: s * PAGE, end: e * PAGE, noreserve: false }, false);
        let mut o = Offsets::default();
        o.follow(&[area(0, 16), area(32, 40)]);
        // Pages 0-7 at 1000; then 2-3 again at 9000; page 33 at 20000.
        let f = frame(&[(0, 8)]);
        rec(&mut o, &f, 1000).unwrap();
        let head = f.len() as u64 - 8 * PAGE;
        rec(&mut o, &frame(&[(2 * PAGE, 2), (33 * PAGE, 1)]), 9000).unwrap();
        let h2 = 8 + 2 * 16;
        let p = o.pieces(&[(0, 8 * PAGE), (33 * PAGE, 34 * PAGE)]).unwrap();
        assert_eq!(
            p,
            vec![
                (0, 2 * PAGE as usize, 1000 + head),
                (2 * PAGE, 2 * PAGE as usize, 9000 + h2),
                (4 * PAGE, 4 * PAGE as usize, 1000 + head + 4 * PAGE),
                (33 * PAGE, PAGE as usize, 9000 + h2 + 2 * PAGE),
            ]
        );
        assert_eq!(o.held_bytes(), 9 * PAGE);
        assert_eq!(o.pieces(&[(7 * PAGE, 9 * PAGE)]), Err((7 * PAGE, 9 * PAGE)));
        // A run outside the areas, or data that does not match the runs, is refused.
        assert!(rec(&mut o, &frame(&[(20 * PAGE, 1)]), 0).is_err());
        let mut short = frame(&[(PAGE, 1)]);
        short.pop();
        assert!(rec(&mut o, &short, 0).is_err());
        // The areas change: what lies outside the new ones goes, the rest stays.
        o.follow(&[area(4, 12)]);
        assert_eq!(
            o.pieces(&[(4 * PAGE, 8 * PAGE)]).unwrap(),
            vec![(4 * PAGE, 4 * PAGE as usize, 1000 + head + 4 * PAGE)]
        );
        assert!(o.pieces(&[(2 * PAGE, 3 * PAGE)]).is_err());
        assert_eq!(o.held_bytes(), 4 * PAGE);
    }

    /// Anonymous mappings (`name` for all) as maps lists them.
    fn maps(ranges: &[(u64, u64)], name: &str) -> Vec<MapEntry> {
        let text: String = ranges.iter().map(|(s, e)| format!("{s:x}-{e:x} rw-p 00000000 00:00 0 {name}\n")).collect();
        procfs::parse_smaps(&text).unwrap()
    }

    /// A heap grown since the last round, registered: the kernel made one mapping of it.
    #[test]
    fn mappings_the_kernel_joined_are_joined() {
        let mut m = maps(&[(0x1000, 0x3000), (0x3000, 0x8000), (0x8000, 0x9000), (0x20000, 0x21000)], "[heap]");
        m[1].shares = true;
        joined(&mut m, &maps(&[(0x1000, 0x8000), (0x8000, 0x9000), (0x20000, 0x22000)], "[heap]"));
        let got: Vec<(u64, u64)> = m.iter().map(|m| (m.start, m.end)).collect();
        // The one grown past what smaps showed is left for the next look.
        assert_eq!(got, [(0x1000, 0x8000), (0x8000, 0x9000), (0x20000, 0x21000)]);
        assert!(m[0].shares, "the pages a fork left shared in the part joined are forgotten");
        // Not joined: a mapping of a file between, or an end that falls inside one.
        let mut m = maps(&[(0x1000, 0x3000), (0x3000, 0x8000)], "");
        m[1].inode = 7;
        joined(&mut m, &maps(&[(0x1000, 0x8000)], ""));
        assert_eq!(m.len(), 2);
        let mut m = maps(&[(0x1000, 0x3000), (0x3000, 0x8000)], "");
        joined(&mut m, &maps(&[(0x1000, 0x5000)], ""));
        assert_eq!(m.iter().map(|m| (m.start, m.end)).collect::<Vec<_>>(), [(0x1000, 0x3000), (0x3000, 0x8000)]);
    }

    #[test]
    fn ranges_minus_ranges() {
        assert_eq!(minus(&[(0, 100)], &[(10, 20), (30, 40)]), vec![(0, 10), (20, 30), (40, 100)]);
        assert_eq!(minus(&[(0, 100)], &[(0, 100)]), vec![]);
        assert_eq!(minus(&[(0, 10), (20, 30)], &[(5, 25)]), vec![(0, 5), (25, 30)]);
        assert_eq!(minus(&[(0, 10)], &[]), vec![(0, 10)]);
    }

    #[test]
    fn areas_round_trip_and_bad_ones_are_refused() {
        let a = vec![
            (Area { start: 0x1000, end: 0x5000, noreserve: true }, false),
            (Area { start: 0x8000, end: 0x9000, noreserve: false }, true),
        ];
        assert_eq!(decode_areas(&encode_areas(&a)).unwrap(), a);
        let overlap = vec![a[0], (Area { start: 0x4000, end: 0x6000, noreserve: false }, false)];
        assert!(decode_areas(&encode_areas(&overlap)).is_err());
        assert!(decode_areas(&encode_areas(&a)[..10]).is_err());
    }

    /// The source and the store follow a change of areas by the same rule: what the source
    /// counts as held is what the store has.
    /// A store holding area `start`-`end`, and the pages of `run`, each of them `byte`s.
    fn store_with(start: u64, end: u64, run: (u64, u64), byte: u8) -> Store {
        let mut st = Store::new(1 << 30);
        st.follow(&[(Area { start, end, noreserve: false }, false)]).unwrap();
        let mut frame = pages_header(&[run]);
        frame.extend(std::iter::repeat_n(byte, (run.1 - run.0) as usize));
        st.pages(&frame).unwrap();
        st
    }

    #[test]
    fn store_carries_pages_over_as_the_source_counts_them() {
        let mut st = store_with(0x10000, 0x14000, (0x11000, 0x13000), 7);
        assert_eq!(st.received, 2 * PAGE);
        // The area grows: the pages received stay, at the same addresses.
        let b = Area { start: 0x10000, end: 0x18000, noreserve: false };
        st.follow(&[(b, false)]).unwrap();
        let h = &st.held[&0x10000];
        assert_eq!((0..4).map(|i| h.state.get(i)).collect::<Vec<_>>(), [0, 1, 1, 0]);
        // SAFETY: page 1 of the store's own mapping.
        assert_eq!(unsafe { *((h.local + PAGE) as *const u8) }, 7);
        // A run outside every area is refused.
        let mut out = pages_header(&[(0x30000, 0x31000)]);
        out.extend(vec![0u8; PAGE as usize]);
        assert!(st.pages(&out).is_err());
        // So is one whose end lies past the top of the address space (not wrapped round).
        let mut wraps = 1u32.to_le_bytes().to_vec();
        wraps.extend(0u32.to_le_bytes());
        wraps.extend((u64::MAX - PAGE + 1).to_le_bytes());
        wraps.extend(2u32.to_le_bytes());
        wraps.extend(0u32.to_le_bytes());
        wraps.extend(vec![0u8; 2 * PAGE as usize]);
        assert!(st.pages(&wraps).is_err());
        // Kept pages must have arrived.
        assert!(st.keep(&[(0x11000, 0x13000)]).is_ok());
        assert!(st.keep(&[(0x13000, 0x14000)]).is_err());
    }

    /// Let go with its unmapping left for later (a live migration's, until the process runs):
    /// nothing more goes in at once, the mapping goes only when unmapped, and once.
    #[test]
    fn stores_let_go_for_later_keep_their_mappings_until_unmapped() {
        let st = store_with(0x10000, 0x14000, (0x11000, 0x12000), 7);
        let local = st.held[&0x10000].local;
        let mine =
            |at: u64| procfs::read_maps(std::process::id() as i32).unwrap().iter().any(|m| m.start <= at && at < m.end);
        let mut all = Stores::held(vec![(1, st)]);
        all.unmap_later();
        all.leave();
        assert!(mine(local), "the mapping went with the store let go");
        let mut frame = pages_header(&[(0x11000, 0x12000)]);
        frame.extend(std::iter::repeat_n(7u8, PAGE as usize));
        assert!(all.get_mut(1).is_some_and(|s| s.pages(&frame).is_err()), "a store let go takes more pages");
        all.unmap();
        assert!(!mine(local), "the store's mapping is still here once unmapped");
        // Unmapped again (and dropped), it unmaps nothing more: the range is another's now.
        let fl = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
        // SAFETY: a new page where the store's mapping was, replacing nothing (NOREPLACE).
        let again = unsafe { libc::mmap(local as *mut libc::c_void, PAGE as usize, libc::PROT_READ, fl, -1, 0) };
        assert_eq!(again as u64, local);
        all.unmap();
        drop(all);
        assert!(mine(local), "the range was unmapped twice");
        // SAFETY: the page mapped above, ours.
        unsafe { libc::munmap(again, PAGE as usize) };
    }

    /// Let go once the processes are forked: our mapping is gone, what is known of the
    /// pages stays, and nothing more may be put in it.
    #[test]
    fn a_store_let_go_holds_no_mapping_and_takes_no_more() {
        let mut st = store_with(0x10000, 0x14000, (0x11000, 0x12000), 7);
        let a = Area { start: 0x10000, end: 0x14000, noreserve: false };
        let mut frame = pages_header(&[(0x11000, 0x12000)]);
        frame.extend(std::iter::repeat_n(7u8, PAGE as usize));
        let local = st.held[&0x10000].local;
        let mine =
            |at: u64| procfs::read_maps(std::process::id() as i32).unwrap().iter().any(|m| m.start <= at && at < m.end);
        assert!(mine(local));
        st.leave();
        assert!(!mine(local), "the store's mapping is still here");
        assert!(st.pages(&frame).is_err() && st.follow(&[(a, false)]).is_err());
        assert!(st.keep(&[(0x11000, 0x12000)]).is_ok(), "what arrived is forgotten");
        // Dropped, it unmaps nothing more (the range may be another mapping's by then).
        let fl = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
        // SAFETY: a new page where the store's mapping was, replacing nothing (NOREPLACE).
        let again = unsafe { libc::mmap(local as *mut libc::c_void, PAGE as usize, libc::PROT_READ, fl, -1, 0) };
        assert_eq!(again as u64, local);
        drop(st);
        assert!(mine(local), "the store unmapped what is not its own any more");
        // SAFETY: the test's own page.
        unsafe { libc::munmap(again, PAGE as usize) };
    }

    /// A mapping of ours sits as the process's area does within huge pages; a huge page of
    /// it received whole becomes one huge page here (THP allowing), one partly received does
    /// not.
    #[test]
    fn whole_huge_pages_received_are_collapsed() {
        let mut st = Store::new(1 << 30);
        let a = Area { start: 0x4000_0000 + HUGE - 3 * PAGE, end: 0x4000_0000 + 4 * HUGE, noreserve: false };
        st.follow(&[(a, true)]).unwrap();
        let local = st.held[&a.start].local;
        assert_eq!(local % HUGE, a.start % HUGE, "not placed as the area is within huge pages");
        // The first whole huge page of the area, all of it; the next, all but one page.
        let whole = a.start + 3 * PAGE;
        let mut frame = pages_header(&[(whole, whole + HUGE), (whole + HUGE, whole + 2 * HUGE - PAGE)]);
        frame.extend(std::iter::repeat_n(5u8, (2 * HUGE - PAGE) as usize));
        st.pages(&frame).unwrap();
        let h = &st.held[&a.start];
        assert_eq!(h.collapsed.iter().copied().collect::<Vec<_>>(), vec![whole]);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
        if thp.contains("[never]") {
            return;
        }
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let mut huge_kb = 0;
        for l in smaps.lines() {
            if let Some((range, _)) = l.split_once(' ').filter(|(r, _)| r.contains('-')) {
                let start = u64::from_str_radix(range.split('-').next().unwrap_or(""), 16).unwrap_or(0);
                inside = start >= local && start < local + (a.end - a.start);
            } else if inside && let Some(v) = l.strip_prefix("AnonHugePages:") {
                huge_kb += v.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap();
            }
        }
        assert_eq!(huge_kb, 2048, "the whole huge page received is not one here");
        // SAFETY: a page of the store's own mapping.
        assert_eq!(unsafe { *((local + 3 * PAGE + HUGE - 1) as *const u8) }, 5);
    }

    /// An image may declare a vast sparse area (64 TiB here, as MAP_NORESERVE): holding it,
    /// growing it and asking what it holds costs what arrived, not its size; and its areas
    /// change at most once a round.
    #[test]
    fn a_vast_sparse_area_costs_what_arrived() {
        let t0 = Instant::now();
        let (start, end) = (1u64 << 40, 1u64 << 46);
        let mut st = Store::new(1 << 47);
        let area = |end: u64| [(Area { start, end, noreserve: true }, false)];
        st.follow(&area(end)).unwrap();
        let mut frame = pages_header(&[(end - 2 * PAGE, end)]);
        frame.extend(std::iter::repeat_n(9u8, 2 * PAGE as usize));
        st.pages(&frame).unwrap();
        // Grown: the old area's pages are carried over; shrunk back, too.
        st.follow(&area(end + PAGE)).unwrap();
        st.follow(&area(end)).unwrap();
        assert_eq!(st.held_bytes(), 2 * PAGE);
        assert!(st.keep(&[(end - 2 * PAGE, end)]).is_ok());
        st.rearm();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?} for a sparse area", t0.elapsed());
        let h = &st.held[&start];
        // SAFETY: the last page of the store's own mapping, carried over twice.
        assert_eq!(unsafe { *((h.local + (end - start) - 1) as *const u8) }, 9);
        while st.follows < MAX_ROUNDS + 1 {
            st.follow(&area(end)).unwrap();
        }
        let e = st.follow(&area(end)).unwrap_err().to_string();
        assert!(e.contains("changed 32 times"), "{e}");
    }

    /// The pages of a tree's TREEPAGES: only inside the areas, each once; a process's kept
    /// runs must be among them; the next process may keep them again.
    #[test]
    fn shared_pages_are_held_once_and_kept_by_each_process() {
        use crate::crf::pages::Run;
        let a = crate::res::treecow::Area { start: 0x10000, end: 0x14000, noreserve: false };
        let mut st = Store::shared(&[a]).unwrap();
        let page = vec![3u8; PAGE as usize];
        st.put(&[Run { addr: 0x11000, npages: 1, flags: 0 }], &page, 0).unwrap();
        assert!(st.put(&[Run { addr: 0x11000, npages: 1, flags: 0 }], &page, 0).is_err(), "twice");
        assert!(st.put(&[Run { addr: 0x20000, npages: 1, flags: 0 }], &page, 0).is_err(), "outside");
        assert!(st.put(&[Run { addr: 0x12000, npages: 1, flags: 2 }], &page, 0).is_err(), "a flag");
        assert!(st.put(&[Run { addr: 0x12000, npages: 2, flags: 0 }], &page, 0).is_err(), "short");
        st.keep(&[(0x11000, 0x12000)]).unwrap();
        assert!(st.keep(&[(0x12000, 0x13000)]).is_err());
        st.rearm();
        st.keep(&[(0x11000, 0x12000)]).unwrap();
        // SAFETY: a page of the store's own mapping.
        assert_eq!(unsafe { *((st.held[&0x10000].local + PAGE) as *const u8) }, 3);
    }

    /// An area is held where the process has it when that is free here; one that becomes
    /// the very mapping the image has there stays for the restore, one the image maps
    /// otherwise there (grown) moves out of its way, its pages with it; one whose place is
    /// taken here is held elsewhere.
    #[test]
    fn an_area_is_held_in_place_and_stays_only_for_its_very_mapping() {
        // A free range of ours, for the process's area.
        let probe = map_anywhere(
            Area { start: 0, end: 8 * PAGE, noreserve: false },
            false,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        )
        .unwrap();
        unmap_local(probe, 8 * PAGE);
        let (start, end) = (probe + 2 * PAGE, probe + 4 * PAGE);
        let mut st = store_with(start, end, (start, start + PAGE), 5);
        assert_eq!(st.held[&start].local, start, "not held in place");
        let vma = |end| Vma { start, end, kind: memory::KIND_ANON, ..Default::default() };
        st.clear_of(&[vma(end)]).unwrap();
        assert_eq!(st.held[&start].local, start, "moved out of its own mapping's way");
        st.clear_of(&[vma(end + PAGE)]).unwrap();
        let moved = st.held[&start].local;
        assert!(moved + 2 * PAGE <= start || moved >= end + PAGE, "{moved:#x} still in the grown mapping's way");
        // SAFETY: the store's own mapping, where it is now.
        assert_eq!(unsafe { *(moved as *const u8) }, 5);
        // Its place taken (by the store's own mapping of the first), a second is held elsewhere.
        let mut other = Store::new(1 << 30);
        other.follow(&[(Area { start: moved, end: moved + PAGE, noreserve: false }, false)]).unwrap();
        assert_ne!(other.held[&moved].local, moved, "held over a mapping of ours");
    }

    /// Never in place where our main thread's stack may grow: it could not grow any more.
    #[test]
    fn no_area_is_held_where_our_stack_may_grow() {
        let maps = procfs::read_maps(std::process::id() as i32).unwrap();
        let stack = maps.iter().find(|m| m.name == "[stack]").expect("no [stack] of ours");
        let (low, high) = stack_zone();
        assert!(low < stack.start && high == stack.end, "{low:#x}-{high:#x} for {:#x}", stack.start);
        let start = stack.start - 64 * PAGE;
        let st = store_with(start, start + 2 * PAGE, (start, start + PAGE), 1);
        let local = st.held[&start].local;
        assert!(local + 2 * PAGE <= low || local >= high, "held at {local:#x}, where our stack grows");
    }

    /// A mapping of ours where the image has one moves elsewhere, its pages with it.
    #[test]
    fn store_moves_out_of_the_images_way() {
        let mut st = store_with(0x10000, 0x12000, (0x11000, 0x12000), 9);
        let local = st.held[&0x10000].local;
        let image = Vma { start: local + PAGE, end: local + 8 * PAGE, kind: memory::KIND_ANON, ..Default::default() };
        st.clear_of(std::slice::from_ref(&image)).unwrap();
        let moved = st.held[&0x10000].local;
        assert!(moved + 2 * PAGE <= image.start || moved >= image.end, "{moved:#x} still overlaps");
        // SAFETY: page 1 of the store's own mapping, where it is now.
        assert_eq!(unsafe { *((moved + PAGE + 5) as *const u8) }, 9);
    }
}
