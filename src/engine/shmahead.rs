//! The tree's shared memory (res::treeshm: MAP_SHARED anonymous memory that several of its
//! processes map) sent ahead by a live migration while the processes run, so that the
//! freeze carries only what changed since.
//!
//! Its writes cannot be tracked as a process's private memory is (precopy::Source): write
//! protection belongs to a page table, and a process of the tree forked since the rounds
//! began, or one that cannot be tracked, would write the object unseen. So the source
//! ([`ShmSource`]) compares contents: it keeps, per page of each object, a 64-bit hash of
//! what the destination holds ([`page_hash`]; the destination makes the object zero), reads
//! the object each round through the processes that map it, and sends the pages whose hash
//! changed. At the freeze it reads it once more: the pages whose hash is still the one held
//! are kept runs of the image (crf::pages::RUN_KEPT in VMA_TREE_SHM mappings), the others go
//! in it as without --live. That last look costs the freeze a read of the object, not its
//! transfer.
//!
//! The destination ([`Held`]) makes each object as a restore makes it (treeshm::create_here)
//! when it is first named, and writes the pages it is sent into it; the restore takes it as
//! that object (engine::inherit), pages and all.
//!
//! Shm frame: u64 dev | u64 ino | u64 size (the object's, in bytes), then a Pages frame's runs
//! and data (precopy::put_runs), each run's address an offset in the object.

use super::layout::{intersect, minus};
use super::precopy::{Frame, le32, le64, put_runs};
use crate::crf::PAGE_SIZE;
use crate::error::{Error, Result};
use crate::ptrace::pagemap::join;
use crate::ptrace::{mem, procfs};
use crate::res::image::ProcessState;
use crate::res::memory::VMA_TREE_SHM;
use crate::res::treeshm::{self, Obj};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

const PAGE: u64 = PAGE_SIZE as u64;
/// Pages read, compared and (those changed) sent at a time: 1 MiB.
const CHUNK_PAGES: u64 = 256;
/// Most objects a destination holds.
const MAX_OBJECTS: usize = 4096;

/// An object: the device and inode its mappings show.
type Id = (u64, u64);

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// A 64-bit hash of a page (xxh64's rounds over four lanes, and its final mix): two pages
/// that differ hash alike with a chance of about 2^-64.
pub fn page_hash(p: &[u8]) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    let mut v = [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)];
    for c in p.chunks_exact(32) {
        for (k, l) in v.iter_mut().enumerate() {
            *l = l.wrapping_add(word(&c[k * 8..]).wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1);
        }
    }
    let mut h = v[0].rotate_left(1).wrapping_add(v[1].rotate_left(7));
    h = h.wrapping_add(v[2].rotate_left(12)).wrapping_add(v[3].rotate_left(18));
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

fn zero_hash() -> u64 {
    page_hash(&[0u8; PAGE_SIZE])
}

/// Where a process maps (part of) an object: the mapping, and its offset in the object.
#[derive(Clone, Copy, Debug)]
struct Window {
    pid: i32,
    start: u64,
    end: u64,
    off: u64,
}

/// The offsets `wins` show, each once: (window, from, to), the first window that shows them.
fn cover(wins: &[Window]) -> Vec<(Window, u64, u64)> {
    let mut done: Vec<(u64, u64)> = Vec::new();
    let mut out = Vec::new();
    for w in wins {
        let fresh = minus(&[(w.off, w.off + (w.end - w.start))], &done);
        out.extend(fresh.iter().map(|&(s, e)| (*w, s, e)));
        done.extend(fresh);
        done.sort_unstable();
    }
    out
}

/// Shared anonymous memory, as vmas::classify tells it (KIND_SHMEM).
fn is_shm(m: &procfs::MapEntry) -> bool {
    let name = m.name.as_str();
    m.shared && m.inode != 0 && (name.is_empty() || name == "/dev/zero (deleted)" || name.starts_with("[anon_shmem:"))
}

/// The readable windows of processes `pids` onto shared anonymous memory, by object: those
/// more than one of them maps (a process that ended is passed over).
fn windows(pids: &[i32]) -> BTreeMap<Id, Vec<Window>> {
    let mut seen: BTreeMap<Id, (Vec<i32>, Vec<Window>)> = BTreeMap::new();
    for &pid in pids {
        let Ok(maps) = procfs::read_maps(pid) else { continue };
        for m in maps.iter().filter(|m| is_shm(m)) {
            let e = seen.entry((libc::makedev(m.dev.0, m.dev.1), m.inode)).or_default();
            if !e.0.contains(&pid) {
                e.0.push(pid);
            }
            if m.read {
                e.1.push(Window { pid, start: m.start, end: m.end, off: m.offset });
            }
        }
    }
    seen.into_iter().filter(|(_, (p, _))| p.len() > 1).map(|(id, (_, w))| (id, w)).collect()
}

/// An object mapped here, read-only, through a process's /proc/PID/map_files (which needs
/// CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE): its pages are compared where they lie, and its
/// holes (lseek SEEK_DATA) are not read at all. Without it, each round reads the object
/// through the processes (process_vm_readv), some three times slower, and a read of a hole
/// gives the object a page there.
struct View {
    fd: OwnedFd,
    at: usize,
    len: usize,
}

impl View {
    /// Object `size` bytes long, as window `w` shows it; None if it may not be opened so.
    fn open(w: &Window, size: u64) -> Option<View> {
        let path = format!("/proc/{}/map_files/{:x}-{:x}\0", w.pid, w.start, w.end);
        // SAFETY: open reads a NUL-terminated path that lives across the call.
        let raw = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` was just opened and is ours alone.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        // SAFETY: a zeroed stat is a valid value of a plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into the stat buffer we pass, on our own fd.
        if unsafe { libc::fstat(raw, &mut st) } != 0 || (st.st_size as u64) < size {
            return None;
        }
        // SAFETY: a read-only shared mapping of our own fd, of no more than its size; unmapped
        // on drop, and only ever read.
        let at = unsafe { libc::mmap(std::ptr::null_mut(), size as usize, libc::PROT_READ, libc::MAP_SHARED, raw, 0) };
        if at == libc::MAP_FAILED {
            return None;
        }
        Some(View { fd, at: at as usize, len: size as usize })
    }

    /// The page-aligned ranges of [from, to) that hold pages (in memory or in swap).
    fn data(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let fd = self.fd.as_raw_fd();
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut at = from;
        while at < to {
            // SAFETY: lseek takes integers, on our own fd.
            let d = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
            if d < 0 || d as u64 >= to {
                break;
            }
            // SAFETY: as above.
            let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
            let h = if h < 0 { to } else { (h as u64).min(to) };
            let (s, e) = ((d as u64) & !(PAGE - 1), (h.div_ceil(PAGE) * PAGE).min(to));
            match out.last_mut() {
                Some(l) if l.1 >= s => l.1 = e.max(l.1),
                _ => out.push((s, e)),
            }
            at = e.max(at + PAGE);
        }
        out
    }

    fn bytes(&self, from: u64, len: usize) -> &[u8] {
        // SAFETY: [from, from + len) lies within our mapping (callers stay within `len`),
        // which lives as long as self; shared memory others write meanwhile reads as some
        // bytes, and a round compares and sends the bytes it read.
        unsafe { std::slice::from_raw_parts((self.at + from as usize) as *const u8, len) }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: our own mapping, made in View::open, used by no one past this.
        unsafe { libc::munmap(self.at as *mut libc::c_void, self.len) };
    }
}

/// Part of an object, as read: its pages, or pages known to be zero (a hole).
enum Chunk<'a> {
    Data(&'a [u8]),
    Zero(u64),
}

/// [from, to) cut into pieces of at most CHUNK_PAGES: (start, length).
fn cut(from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> {
    (from..to).step_by((CHUNK_PAGES * PAGE) as usize).map(move |a| (a, (to - a).min(CHUNK_PAGES * PAGE)))
}

/// Calls `f(offset, chunk)` for the object's pages [0, size) that `view` or `wins` show, at
/// most CHUNK_PAGES at a time. A window that no longer reads as it did is left (the caller
/// looks again later).
fn each_chunk(
    (view, wins, size): (Option<&View>, &[Window], u64),
    buf: &mut Vec<u8>,
    f: &mut dyn FnMut(u64, Chunk) -> Result<()>,
) -> Result<()> {
    if let Some(v) = view {
        let mut at = 0;
        for (s, e) in v.data(0, size) {
            for (a, n) in cut(at, s) {
                f(a, Chunk::Zero(n / PAGE))?;
            }
            for (a, n) in cut(s, e) {
                f(a, Chunk::Data(v.bytes(a, n as usize)))?;
            }
            at = e;
        }
        for (a, n) in cut(at, size) {
            f(a, Chunk::Zero(n / PAGE))?;
        }
        return Ok(());
    }
    for (w, s, e) in cover(wins) {
        for (a, n) in cut(s, e) {
            if buf.len() < n as usize {
                buf.resize(n as usize, 0);
            }
            let b = &mut buf[..n as usize];
            if mem::read_runs(w.pid, &[(w.start + (a - w.off), b.len())], b).is_err() {
                break;
            }
            f(a, Chunk::Data(b))?;
        }
    }
    Ok(())
}

/// One object as the source sees it.
struct Tracked {
    size: u64,
    /// Per page, the hash of what the destination holds.
    held: Vec<u64>,
    /// Its size changed since it was first sent: no longer sent, nothing of it kept.
    dropped: bool,
    view: Option<View>,
}

/// The source side: the objects sent ahead.
#[derive(Default)]
pub struct ShmSource {
    objs: BTreeMap<Id, Tracked>,
    /// The chunk read, and the frame sent.
    buf: Vec<u8>,
    frame: Vec<u8>,
    /// Pages the last round sent.
    last: u64,
    /// Per object, the offsets whose pages the destination holds as they are, found by
    /// [`ShmSource::compare`] once the processes were frozen.
    frozen: Option<BTreeMap<Id, Vec<(u64, u64)>>>,
}

impl std::fmt::Debug for ShmSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShmSource({} objects)", self.objs.len())
    }
}

/// A Shm frame's head: the object, then the runs.
fn frame_head(frame: &mut Vec<u8>, (dev, ino): Id, size: u64, runs: &[(u64, u64)]) {
    frame.clear();
    frame.extend(dev.to_le_bytes());
    frame.extend(ino.to_le_bytes());
    frame.extend(size.to_le_bytes());
    put_runs(frame, runs, 0);
}

impl ShmSource {
    /// One round, of the objects the processes `pids` share now: sends (`send`, Shm frames)
    /// the pages whose content is not what the destination holds, and an empty frame for an
    /// object seen for the first time with nothing to send (the destination makes it).
    /// Returns the pages sent.
    pub fn round(&mut self, pids: &[i32], send: &mut dyn FnMut(Frame, &mut [u8]) -> Result<()>) -> Result<u64> {
        let zero = zero_hash();
        let mut sent = 0u64;
        let ShmSource { objs, buf, frame, last, frozen } = self;
        // (The processes run: what a freeze found is past.)
        *frozen = None;
        for (id, wins) in windows(pids) {
            let size = wins.iter().map(|w| w.off + (w.end - w.start)).max().unwrap_or(0);
            let known = objs.contains_key(&id);
            let o = objs.entry(id).or_insert_with(|| Tracked {
                size,
                held: vec![zero; (size / PAGE) as usize],
                dropped: false,
                view: wins.first().and_then(|w| View::open(w, size)),
            });
            if o.size != size && !o.dropped {
                log::debug!("shared memory {id:?}: {} bytes, then {size}: sent while frozen", o.size);
                o.dropped = true;
            }
            if o.dropped || size == 0 {
                continue;
            }
            let mut named = known;
            let Tracked { held, view, .. } = o;
            let mut one = |at: u64, c: Chunk| -> Result<()> {
                let first = (at / PAGE) as usize;
                let fresh: Vec<(usize, u64)> = match &c {
                    Chunk::Data(b) => b
                        .chunks_exact(PAGE_SIZE)
                        .enumerate()
                        .map(|(k, p)| (k, page_hash(p)))
                        .filter(|&(k, h)| h != held[first + k])
                        .collect(),
                    Chunk::Zero(n) => {
                        (0..*n as usize).filter(|&k| held[first + k] != zero).map(|k| (k, zero)).collect()
                    }
                };
                if fresh.is_empty() && named {
                    return Ok(());
                }
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for &(k, _) in &fresh {
                    let off = at + k as u64 * PAGE;
                    join(&mut runs, off, off + PAGE);
                }
                frame_head(frame, id, size, &runs);
                for &(k, _) in &fresh {
                    match &c {
                        Chunk::Data(b) => frame.extend_from_slice(&b[k * PAGE_SIZE..(k + 1) * PAGE_SIZE]),
                        Chunk::Zero(_) => frame.resize(frame.len() + PAGE_SIZE, 0),
                    }
                }
                send(Frame::Shm, &mut frame[..])?;
                named = true;
                for &(k, h) in &fresh {
                    held[first + k] = h;
                }
                sent += fresh.len() as u64;
                Ok(())
            };
            each_chunk((view.as_ref(), &wins, size), buf, &mut one)?;
            if !named {
                frame_head(frame, id, size, &[]);
                send(Frame::Shm, &mut frame[..])?;
            }
        }
        *last = sent;
        Ok(sent)
    }

    /// What a round now would send, by the last: the pages it sent (all of an object's
    /// content, the first time; then what the processes wrote in a round's time).
    pub fn left_bytes(&self) -> u64 {
        self.last * PAGE
    }

    /// Objects sent ahead, and their bytes.
    pub fn objects(&self) -> (usize, u64) {
        let live = self.objs.values().filter(|o| !o.dropped);
        live.fold((0, 0), |(n, b), o| (n + 1, b + o.size))
    }

    /// Processes `pids` are frozen: the objects change no more (but through a process outside
    /// the tree). Finds, per object, the offsets whose pages the destination holds as they
    /// are now (their hash is the one held). It reads each object once; the freeze runs it
    /// beside the collection of the processes (see [`super::precopy::Precopied::compare_shm`]).
    pub fn compare(&mut self, pids: &[i32]) -> Result<()> {
        let t0 = std::time::Instant::now();
        let zero = zero_hash();
        let ShmSource { objs, buf, frozen, .. } = self;
        // (Through the processes, where the object is not mapped here.)
        let wins = match objs.values().any(|o| o.view.is_none()) {
            true => windows(pids),
            false => BTreeMap::new(),
        };
        let mut found = BTreeMap::new();
        for (id, o) in objs.iter().filter(|(_, o)| !o.dropped) {
            let w = wins.get(id).map_or(&[][..], |w| w.as_slice());
            // (A window that shows the object grown or shrunk since: nothing of it is kept.)
            if o.view.is_none() && w.iter().any(|w| w.off + (w.end - w.start) > o.size) {
                continue;
            }
            let mut same: Vec<(u64, u64)> = Vec::new();
            // (A window that does not read keeps nothing.)
            let mut one = |at: u64, c: Chunk| -> Result<()> {
                let first = (at / PAGE) as usize;
                let mut mark = |k: usize, h: u64| {
                    if o.held.get(first + k) == Some(&h) {
                        let off = at + k as u64 * PAGE;
                        join(&mut same, off, off + PAGE);
                    }
                };
                match c {
                    Chunk::Data(b) => b.chunks_exact(PAGE_SIZE).enumerate().for_each(|(k, p)| mark(k, page_hash(p))),
                    Chunk::Zero(n) => (0..n as usize).for_each(|k| mark(k, zero)),
                }
                Ok(())
            };
            each_chunk((o.view.as_ref(), w, o.size), buf, &mut one)?;
            same.sort_unstable();
            log::debug!(
                "shared memory of {} bytes: {} bytes held as they are ({:.1} ms)",
                o.size,
                same.iter().map(|r| r.1 - r.0).sum::<u64>(),
                t0.elapsed().as_secs_f64() * 1e3
            );
            found.insert(*id, same);
        }
        *frozen = Some(found);
        Ok(())
    }

    /// For the frozen processes of `states` (their tree's shared memory collected, the
    /// first's TREESHM): per process, the sorted ranges of its addresses whose pages the
    /// destination holds as they are now ([`ShmSource::compare`], made now if it was not).
    pub fn kept(&mut self, states: &[ProcessState]) -> Result<Vec<Vec<(u64, u64)>>> {
        let mut out = vec![Vec::new(); states.len()];
        let Some(first) = states.first() else { return Ok(out) };
        if self.frozen.is_none() {
            self.compare(&states.iter().map(|st| st.head.pid).collect::<Vec<_>>())?;
        }
        let frozen = self.frozen.as_ref().ok_or_else(|| Error::Proc("shared memory not compared".into()))?;
        for ob in &first.tree_shm {
            let Some(o) = self.objs.get(&(ob.dev, ob.ino)).filter(|o| !o.dropped && o.size == ob.size) else {
                continue;
            };
            let Some(same) = frozen.get(&(ob.dev, ob.ino)) else { continue };
            let of_it = |v: &&crate::res::memory::Vma| {
                v.flags & VMA_TREE_SHM != 0 && v.file.as_ref().is_some_and(|f| (f.dev, f.ino) == (ob.dev, ob.ino))
            };
            // (Only where the image maps it, as far as it maps it.)
            let same = intersect(same, &[(0, o.size)]);
            for (i, st) in states.iter().enumerate() {
                for v in st.vmas.iter().filter(of_it) {
                    let base = v.pgoff * PAGE;
                    for (s, e) in intersect(&same, &[(base, base + (v.end - v.start))]) {
                        out[i].push((v.start + (s - base), v.start + (e - base)));
                    }
                }
            }
        }
        out.iter_mut().for_each(|o| o.sort_unstable());
        Ok(out)
    }
}

/// One object at the destination: made, and written as its pages came.
pub struct Held {
    pub obj: Obj,
    pub fd: OwnedFd,
    /// Why it is a memfd, if it is (treeshm::create_here).
    pub note: Option<String>,
    /// Offsets received (sorted, apart).
    got: Vec<(u64, u64)>,
}

/// A Shm frame (or PRESHM section) checked: its object, its runs (offsets) and where its data
/// begins.
pub struct Parsed {
    pub obj: Obj,
    pub runs: Vec<(u64, u64)>,
    head: usize,
}

/// Checks a Shm frame (or PRESHM section).
pub fn parse(b: &[u8]) -> Result<Parsed> {
    let bad = |what: String| Error::Net(crate::net::NetError::Protocol(format!("shared memory sent ahead: {what}")));
    let (dev, ino, size) = (le64(b, 0), le64(b, 8), le64(b, 16));
    let n = le32(b, 24) as usize;
    let head = 32usize.saturating_add(n.saturating_mul(16));
    if b.len() < head {
        return Err(bad(format!("a frame of {} bytes for {n} runs", b.len())));
    }
    if size == 0 || !size.is_multiple_of(PAGE) || size > treeshm::MAX_SIZE {
        return Err(bad(format!("an object of {size} bytes")));
    }
    let mut runs: Vec<(u64, u64)> = Vec::with_capacity(n);
    for i in 0..n {
        let (s, np) = (le64(b, 32 + i * 16), le32(b, 40 + i * 16) as u64);
        let e = s.saturating_add(np * PAGE);
        if !s.is_multiple_of(PAGE) || np == 0 || e > size || runs.last().is_some_and(|l| l.1 > s) {
            return Err(bad(format!("run {s:#x}+{np} pages of an object of {size} bytes")));
        }
        runs.push((s, e));
    }
    let data: u64 = runs.iter().map(|r| r.1 - r.0).sum();
    if b.len() as u64 != head as u64 + data {
        return Err(bad(format!("{} bytes of data for runs of {data}", b.len() - head)));
    }
    Ok(Parsed { obj: Obj { dev, ino, size }, runs, head })
}

/// A Shm frame (or PRESHM section): the object made the first time it is named (at most
/// MAX_OBJECTS), its pages written into it. `room`: the bytes the destination's limit
/// leaves. Returns the bytes of pages it holds now that it did not.
pub fn receive(objs: &mut Vec<Held>, b: &[u8], room: u64) -> Result<u64> {
    let bad = |what: String| Error::Net(crate::net::NetError::Protocol(format!("shared memory sent ahead: {what}")));
    let Parsed { obj: Obj { dev, ino, size }, runs, head } = parse(b)?;
    let data: u64 = runs.iter().map(|r| r.1 - r.0).sum();
    let k = match objs.iter().position(|h| (h.obj.dev, h.obj.ino) == (dev, ino)) {
        Some(k) if objs[k].obj.size != size => {
            return Err(bad(format!("an object of {} bytes named again with {size}", objs[k].obj.size)));
        }
        Some(k) => k,
        None if objs.len() >= MAX_OBJECTS => {
            return Err(Error::Refused(format!("more than {MAX_OBJECTS} objects of shared memory sent ahead")));
        }
        None => {
            let obj = Obj { dev, ino, size };
            let (fd, note) = treeshm::create_here(&obj)?;
            objs.push(Held { obj, fd, note, got: Vec::new() });
            objs.len() - 1
        }
    };
    let h = &mut objs[k];
    let more = data - intersect(&runs, &h.got).iter().map(|r| r.1 - r.0).sum::<u64>();
    if more > room {
        return Err(Error::Refused(format!(
            "the shared memory sent ahead ({more} bytes more) exceeds this restartd's limit (--max-image-size)"
        )));
    }
    let mut at = head;
    for &(s, e) in &runs {
        let len = (e - s) as usize;
        let mut done = 0usize;
        while done < len {
            let part = &b[at + done..at + len];
            // SAFETY: pwrite reads `part`, which lives across the call, into our own fd.
            let w = unsafe {
                libc::pwrite(h.fd.as_raw_fd(), part.as_ptr().cast(), part.len(), (s + done as u64) as libc::off_t)
            };
            if w <= 0 {
                let err = if w < 0 { nix::errno::Errno::last() } else { nix::errno::Errno::ENOSPC };
                return Err(Error::sys("pwrite (shared memory sent ahead)", format!("{size} bytes"), err));
            }
            done += w as usize;
        }
        at += len;
    }
    let mut got = [h.got.as_slice(), runs.as_slice()].concat();
    got.sort_unstable();
    h.got.clear();
    for (s, e) in got {
        match h.got.last_mut() {
            Some(l) if l.1 >= s => l.1 = l.1.max(e),
            _ => h.got.push((s, e)),
        }
    }
    Ok(more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_that_differ_hash_apart() {
        let mut p = vec![0u8; PAGE_SIZE];
        let z = page_hash(&p);
        assert_eq!(z, zero_hash());
        let mut seen = std::collections::HashSet::new();
        seen.insert(z);
        for i in 0..PAGE_SIZE {
            p[i] = 1;
            assert!(seen.insert(page_hash(&p)), "byte {i}");
            p[i] = 0;
        }
    }

    #[test]
    fn offsets_are_read_once_through_the_first_window() {
        let w = |pid, off, pages| Window { pid, start: 0x10000, end: 0x10000 + pages * PAGE, off: off * PAGE };
        let got = cover(&[w(1, 2, 4), w(2, 0, 8)]);
        let got: Vec<(i32, u64, u64)> = got.iter().map(|(w, s, e)| (w.pid, s / PAGE, e / PAGE)).collect();
        assert_eq!(got, vec![(1, 2, 6), (2, 0, 2), (2, 6, 8)]);
    }

    /// Both ways of reading an object agree: through a view (its holes zero, unread) and
    /// through a window (every page read).
    #[test]
    fn an_object_reads_the_same_through_a_view_and_a_window() {
        let len = 8 * PAGE_SIZE;
        // SAFETY: a fresh shared anonymous mapping of our own, unmapped at the end.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        // SAFETY: within the mapping above.
        unsafe {
            *(at as *mut u8).add(PAGE_SIZE + 3) = 7;
            *(at as *mut u8).add(5 * PAGE_SIZE) = 9;
        }
        let w = Window { pid: std::process::id() as i32, start: at as u64, end: at as u64 + len as u64, off: 0 };
        let read = |view: Option<&View>| {
            let mut pages: Vec<u64> = Vec::new();
            let mut holes = 0;
            let mut buf = Vec::new();
            each_chunk((view, &[w], len as u64), &mut buf, &mut |_, c| {
                match c {
                    Chunk::Data(b) => pages.extend(b.chunks_exact(PAGE_SIZE).map(page_hash)),
                    Chunk::Zero(n) => {
                        holes += n;
                        pages.extend(std::iter::repeat_n(zero_hash(), n as usize));
                    }
                }
                Ok(())
            })
            .unwrap();
            (pages, holes)
        };
        // (As root: the view needs CAP_SYS_ADMIN. Looked at first: a read through the window
        // gives the holes pages.)
        let view = View::open(&w, len as u64);
        let viewed = view.as_ref().map(|v| {
            assert_eq!(v.data(0, len as u64), vec![(PAGE, 2 * PAGE), (5 * PAGE, 6 * PAGE)]);
            read(Some(v))
        });
        let (through, none) = read(None);
        assert_eq!((through.len(), none), (8, 0));
        assert_eq!(through.iter().filter(|&&h| h != zero_hash()).count(), 2);
        if let Some((pages, holes)) = viewed {
            assert_eq!((pages, holes), (through, 6));
        }
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(at, len) };
    }

    fn frame(size: u64, runs: &[(u64, u64)], byte: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(7u64.to_le_bytes());
        f.extend(9u64.to_le_bytes());
        f.extend(size.to_le_bytes());
        put_runs(&mut f, runs, 0);
        let data: u64 = runs.iter().map(|r| r.1 - r.0).sum();
        f.extend(std::iter::repeat_n(byte, data as usize));
        f
    }

    #[test]
    fn an_object_is_made_and_written_as_its_pages_come() {
        let mut objs = Vec::new();
        let size = 8 * PAGE;
        assert_eq!(receive(&mut objs, &frame(size, &[], 0), 1 << 20).unwrap(), 0);
        assert_eq!(receive(&mut objs, &frame(size, &[(PAGE, 3 * PAGE)], 5), 1 << 20).unwrap(), 2 * PAGE);
        // Again: held already, nothing more.
        assert_eq!(receive(&mut objs, &frame(size, &[(2 * PAGE, 3 * PAGE)], 6), 1 << 20).unwrap(), 0);
        assert_eq!(objs.len(), 1);
        let mut b = vec![0u8; size as usize];
        // SAFETY: pread into our own buffer from our own fd.
        let r = unsafe { libc::pread(objs[0].fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
        assert_eq!(r, size as isize);
        assert!(b[..PAGE_SIZE].iter().all(|&x| x == 0));
        assert!(b[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&x| x == 5));
        assert!(b[2 * PAGE_SIZE..3 * PAGE_SIZE].iter().all(|&x| x == 6));
        // Past the room left, past its size, another size, data short: refused.
        assert!(receive(&mut objs, &frame(size, &[(4 * PAGE, 6 * PAGE)], 1), PAGE).is_err());
        assert!(receive(&mut objs, &frame(size, &[(7 * PAGE, 9 * PAGE)], 1), 1 << 20).is_err());
        assert!(receive(&mut objs, &frame(2 * size, &[], 1), 1 << 20).is_err());
        let mut f = frame(size, &[(0, PAGE)], 1);
        f.pop();
        assert!(receive(&mut objs, &f, 1 << 20).is_err());
    }
}
