//! PAGES: page contents, in batches. A checkpoint reads the present and swapped pages of
//! each mapping (pagemap) while it writes the last batch; a restore writes each batch into
//! the process as it arrives.

use super::vmas::*;
use crate::crf::pages::{self, RUN_FILE_COPY, RUN_KEPT, RUN_LATER, RUN_SHARED, Run};
use crate::crf::{PAGE_SIZE, Sink, Writer};
use crate::error::{Error, Result};
use crate::ptrace::mem;
use crate::ptrace::pagemap::Pagemap;

/// Which pages of `v` go into the image, as runs of (address, count, flags); those of an
/// anonymous mapping that lie in `kept` (sorted ranges of pages with data the receiver of a
/// live migration holds already, or a post-copy's sent later) as kept runs, without data, not
/// looked at: a page table walk is for the process to wait for where it is frozen. (Those of
/// a post-copy become later runs: the source sends them once the process runs, those that
/// hold data, and says the others are zero, migration::postcopy.)
fn page_runs(pagemap: &mut Pagemap, v: &Vma, kept: &[(u64, u64)]) -> Result<Vec<Run>> {
    if v.is_special() || (v.kind == KIND_FILE && v.flags & VMA_SHARED != 0) {
        return Ok(Vec::new());
    }
    let page = PAGE_SIZE as u64;
    let copy =
        v.flags & VMA_FILE_COPY != 0 && v.flags & VMA_COPY_ELSEWHERE == 0 && v.prot & libc::PROT_READ as u32 != 0;
    // Nothing in memory or swap: no page to store (shared memory is taken whole, a copied
    // file's pages come from the file).
    if v.untouched && v.kind != KIND_SHMEM && !copy {
        return Ok(Vec::new());
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut push = |from: u64, to: u64, flags: u32| {
        if from >= to {
            return;
        }
        let n = ((to - from) / page) as u32;
        match runs.last_mut() {
            Some(r) if r.flags == flags && r.addr + r.len() as u64 == from => r.npages += n,
            _ => runs.push(Run { addr: from, npages: n, flags }),
        }
    };
    match v.kind {
        // Shared memory may hold pages only another process (a child) touched, which our
        // page table does not show: take all of it, but for what lies in `kept` (the tree's
        // shared memory a live migration sent ahead, unchanged: engine::shmahead).
        KIND_SHMEM => {
            for (s, e, k) in by_kept(v, kept) {
                push(s, e, if k { RUN_KEPT } else { 0 });
            }
        }
        // A file's private mapping: the pages it changed (copied on write) are its own; with
        // copy, the others up to the end of the file come from the file (past it they cannot
        // be read: SIGBUS). With copy, what lies in `kept` went ahead: a live migration to a
        // node without the file (engine::precopy::Source::carry_files).
        KIND_FILE => {
            let file_end = match (copy, &v.file) {
                (true, Some(f)) => {
                    let pages = f.size.div_ceil(page).saturating_sub(v.pgoff);
                    v.start.saturating_add(pages.saturating_mul(page)).min(v.end)
                }
                _ => v.start,
            };
            // Of those, its unmodified pages are kept (RUN_FILE_COPY too: a destination with
            // the same file after all maps it); those it changed go here, as ever.
            let stretches = if copy { by_kept(v, kept) } else { vec![(v.start, v.end, false)] };
            for (s, e, k) in stretches {
                let unmodified = if k { RUN_FILE_COPY | RUN_KEPT } else { RUN_FILE_COPY };
                let mut at = s;
                for t in pagemap.touched(s, e)?.into_iter().filter(|t| !t.file) {
                    push(at, t.start.min(file_end), unmodified);
                    push(t.start, t.end, 0);
                    at = t.end;
                }
                push(at, e.min(file_end), unmodified);
            }
        }
        // Anonymous memory: the zero page is not stored (it reads as zero anyway). What lies
        // in `kept` is not looked at: pages with data that the receiver holds as they are
        // (sent while the process ran and not written since: a page dropped since, with
        // MADV_DONTNEED, counts as written, and is looked at here; or a tree's pages shared
        // since a fork, found in memory), or a post-copy's, sent later. A walk of a GiB of page
        // table costs some 4 ms of the freeze on this VM.
        _ => {
            for (s, e, k) in by_kept(v, kept) {
                match k {
                    true => push(s, e, RUN_KEPT),
                    false => pagemap.own_data(s, e)?.into_iter().for_each(|(s, e)| push(s, e, 0)),
                }
            }
        }
    }
    Ok(runs)
}

/// Mapping `v` cut by the sorted ranges `kept`: its stretches in order, each with whether it
/// lies in them.
fn by_kept(v: &Vma, kept: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let mut at = v.start;
    for &(ks, ke) in kept[kept.partition_point(|r| r.1 <= v.start)..].iter().take_while(|r| r.0 < v.end) {
        let (ks, ke) = (ks.max(v.start), ke.min(v.end));
        if at < ks {
            out.push((at, ks, false));
        }
        out.push((ks, ke, true));
        at = ke;
    }
    if at < v.end {
        out.push((at, v.end, false));
    }
    out
}

/// A range of addresses: [start, end).
pub type Span = (u64, u64);

/// Kept runs within `ranges` (sorted) get `flag` too (RUN_LATER: sent later; RUN_SHARED: held
/// as an earlier process's), cut at its edges.
fn mark_kept(runs: Vec<Run>, ranges: &[(u64, u64)], flag: u32) -> Vec<Run> {
    if ranges.is_empty() {
        return runs;
    }
    let page = PAGE_SIZE as u64;
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        if r.flags != RUN_KEPT {
            out.push(r);
            continue;
        }
        let end = r.addr + r.len() as u64;
        let mut at = r.addr;
        while at < end {
            let i = ranges.partition_point(|l| l.1 <= at);
            let (to, flags) = match ranges.get(i) {
                Some(&(ls, le)) if ls <= at => (le.min(end), RUN_KEPT | flag),
                Some(&(ls, _)) => (ls.min(end), RUN_KEPT),
                None => (end, RUN_KEPT),
            };
            out.push(Run { addr: at, npages: ((to - at) / page) as u32, flags });
            at = to;
        }
    }
    out
}

/// The pages of a process [`dump_pages`] does not store, as sorted ranges of addresses.
#[derive(Clone, Copy, Default)]
pub struct NotStored<'a> {
    /// Those the receiver holds (or gets later): kept runs, not looked at.
    pub kept: &'a [Span],
    /// Of those, the ones a post-copy's source sends once the process runs (RUN_LATER).
    pub later: &'a [Span],
    /// Of those, an earlier process's pages sent ahead, which this one shares (RUN_SHARED).
    pub shared: &'a [Span],
    /// Not stored at all: memory this process shares with an earlier one of the tree
    /// (TREE_SHM), which stored those pages of it; they are there once it is restored.
    pub omit: &'a [Span],
}

/// `runs` without what lies in the sorted ranges `omit` (kept runs stay whole).
fn leave_out(runs: Vec<Run>, omit: &[Span]) -> Vec<Run> {
    if omit.is_empty() {
        return runs;
    }
    let page = PAGE_SIZE as u64;
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        if r.flags & RUN_KEPT != 0 {
            out.push(r);
            continue;
        }
        let (mut at, end) = (r.addr, r.addr + r.len() as u64);
        let from = omit.partition_point(|o| o.1 <= at);
        for &(s, e) in &omit[from..] {
            if s >= end {
                break;
            }
            if s > at {
                out.push(Run { addr: at, npages: ((s - at) / page) as u32, flags: r.flags });
            }
            at = at.max(e);
            if at >= end {
                break;
            }
        }
        if at < end {
            out.push(Run { addr: at, npages: ((end - at) / page) as u32, flags: r.flags });
        }
    }
    out
}

/// One batch to dump: its runs, and for each whether the process may read it (else the pages
/// come through /proc/PID/mem).
#[derive(Default)]
struct BatchPlan {
    runs: Vec<Run>,
    readable: Vec<bool>,
    pages: usize,
}

/// Pages per PAGES section written: 1 MiB. Big enough that per-batch costs vanish, small
/// enough that the buffers a stream passes through (two here, a few frames on each side of a
/// migration) cost little to fault in for a small process. The format allows up to
/// MAX_BATCH_PAGES.
const DUMP_BATCH_PAGES: usize = 256;

/// Most runs in one batch written.
const DUMP_BATCH_RUNS: usize = 1024;

/// Pages in the first batch; each next one holds twice as many, up to DUMP_BATCH_PAGES. The
/// output waits for the first batch read, and reading the first MiB of a small process (its
/// files' pages, faulted in on the way) takes as long as writing it (0.45 ms on a slow VM).
const FIRST_BATCH_PAGES: usize = 32;

/// Splits the pages to store into batches of at most DUMP_BATCH_PAGES pages of data.
fn plan_batches(pid: i32, vmas: &[Vma], not: NotStored) -> Result<Vec<BatchPlan>> {
    let mut pagemap = Pagemap::open(pid)?;
    let mut out: Vec<BatchPlan> = Vec::new();
    let most = |n: usize| DUMP_BATCH_PAGES.min(FIRST_BATCH_PAGES << n.min(8));
    let mut cur = BatchPlan::default();
    for v in vmas {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        let runs = mark_kept(page_runs(&mut pagemap, v, not.kept)?, not.later, RUN_LATER);
        let runs = leave_out(mark_kept(runs, not.shared, RUN_SHARED), not.omit);
        // Pages a fork left shared are read through /proc/PID/mem: process_vm_readv pins
        // them, and the kernel then gives the process a copy of each (FAULT_FLAG_UNSHARE),
        // so that a checkpoint would leave a pre-forked server's workers taking their memory
        // once each.
        // (Of the pages it reads: kept runs are not read, and looking at all of a GiB that
        // is kept would cost some 10 ms of the freeze.)
        let mut shared = Vec::new();
        if v.shares && readable && v.kind != KIND_SHMEM {
            // (Runs a little apart looked at in one read: a page the looks find between
            // them, kept, is not read anyway.)
            const GAP: u64 = 1 << 20;
            let mut read: Vec<(u64, u64)> = Vec::new();
            for r in runs.iter().filter(|r| r.flags & RUN_KEPT == 0) {
                let end = r.addr + r.len() as u64;
                match read.last_mut() {
                    Some(l) if r.addr.saturating_sub(l.1) <= GAP => l.1 = end,
                    _ => read.push((r.addr, end)),
                }
            }
            for (s, e) in read {
                shared.extend(pagemap.shared_anon(s, e)?);
            }
        }
        for (r, readable) in split_shared(runs, &shared, readable) {
            add_run(&mut out, &mut cur, r, readable, &most);
        }
    }
    if !cur.runs.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Adds run `r` (`readable` or not) to `cur`, the batch being planned, cut where a batch is
/// full: `most(n)` pages of data for the n-th batch of `out`, or DUMP_BATCH_RUNS runs. A kept
/// run (no data) goes whole.
fn add_run(out: &mut Vec<BatchPlan>, cur: &mut BatchPlan, mut r: Run, readable: bool, most: &dyn Fn(usize) -> usize) {
    let kept = r.flags & RUN_KEPT != 0;
    if !kept && r.npages == 0 {
        return;
    }
    loop {
        let take = if kept { r.npages } else { (r.npages as usize).min(most(out.len()) - cur.pages) as u32 };
        cur.runs.push(Run { addr: r.addr, npages: take, flags: r.flags });
        cur.readable.push(readable);
        if !kept {
            cur.pages += take as usize;
        }
        r.addr += take as u64 * PAGE_SIZE as u64;
        r.npages -= take;
        if cur.pages == most(out.len()) || cur.runs.len() == DUMP_BATCH_RUNS {
            out.push(std::mem::take(cur));
        }
        if r.npages == 0 {
            return;
        }
    }
}

/// Splits `runs` where they cross the sorted ranges `shared`: each piece with whether
/// process_vm_readv may read it (`readable`, and not shared).
fn split_shared(runs: Vec<Run>, shared: &[(u64, u64)], readable: bool) -> Vec<(Run, bool)> {
    if shared.is_empty() {
        return runs.into_iter().map(|r| (r, readable)).collect();
    }
    let page = PAGE_SIZE as u64;
    let mut out = Vec::with_capacity(runs.len());
    let mut k = 0;
    for r in runs {
        let end = r.addr + r.len() as u64;
        let mut at = r.addr;
        while at < end {
            while k < shared.len() && shared[k].1 <= at {
                k += 1;
            }
            let (to, ok) = match shared.get(k) {
                Some(&(s, e)) if s <= at => (e.min(end), false),
                Some(&(s, _)) => (s.min(end), readable),
                None => (end, readable),
            };
            out.push((Run { addr: at, npages: ((to - at) / page) as u32, flags: r.flags }, ok));
            at = to;
        }
    }
    out
}

/// Reads one batch's pages: readable runs in one process_vm_readv, the rest through
/// /proc/PID/mem.
fn read_batch(pid: i32, b: &BatchPlan, data: &mut [u8]) -> Result<()> {
    let mut procmem: Option<std::fs::File> = None;
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
        if r.flags & RUN_KEPT != 0 {
            continue;
        }
        if ok {
            if iov.is_empty() {
                iov_at = off;
            }
            iov.push((r.addr, r.len()));
        } else {
            if !iov.is_empty() {
                flush(&mut iov, iov_at, data)?;
            }
            let path = || format!("/proc/{pid}/mem");
            let f = match &procmem {
                Some(f) => f,
                None => procmem.insert(std::fs::File::open(path()).map_err(|e| Error::io(path(), e))?),
            };
            std::os::unix::fs::FileExt::read_exact_at(f, &mut data[off..off + r.len()], r.addr)
                .map_err(|e| Error::io(format!("{} at {:#x}", path(), r.addr), e))?;
        }
        off += r.len();
    }
    if !iov.is_empty() {
        flush(&mut iov, iov_at, data)?;
    }
    Ok(())
}

/// A mapping whose unmodified pages (file-copy runs) a held image reads from its file once the
/// processes run again (see crf::Writer::hold): the file, opened while they are frozen, and
/// where in it the mapping begins.
#[derive(Clone)]
pub struct CopySource {
    pub start: u64,
    pub end: u64,
    /// The file offset of `start`.
    pub base: u64,
    pub src: std::sync::Arc<crate::crf::FileSource>,
}

/// Writes the pages of every mapping in batches; returns the number of pages. A second thread
/// reads the next batch from the process while this one checksums and writes the last. Each
/// batch's buffer is given to the output whole (a migration sends it as a frame, uncopied);
/// the outputs hand buffers back for the reader to fill again. A held output (`w.holding()`)
/// keeps each batch instead, its file-copy runs of the mappings in `sources` (sorted) read from
/// their files later.
/// `spare`: buffers to read batches into, faulted in already (see [`warm_buffers`]); it gets
/// them back at the end, for the next process.
/// `not.kept`: sorted ranges whose pages the receiver of a live migration holds already (empty
/// otherwise): written as kept runs, without data, and not counted; of them, those in
/// `not.later` (a post-copy) as runs sent later, which it returns too, as (start, end) ranges:
/// the pages in memory or in swap there (one look at the page tables for both); those in
/// `not.shared` as held as an earlier process's. The pages in `not.omit` are not stored at all.
/// Returns, third, the ranges of pages it stored of memory shared in the tree (TREE_SHM).
pub fn dump_pages<W: Sink>(
    pid: i32,
    vmas: &[Vma],
    not: NotStored,
    w: &mut Writer<W>,
    spare: &mut Vec<Vec<u8>>,
    sources: &[CopySource],
) -> Result<(u64, Vec<Span>, Vec<Span>)> {
    let batches = plan_batches(pid, vmas, not)?;
    let shm: Vec<Span> = vmas.iter().filter(|v| v.flags & VMA_TREE_SHM != 0).map(|v| (v.start, v.end)).collect();
    let mut tree_shm: Vec<Span> = Vec::new();
    for r in batches.iter().flat_map(|b| b.runs.iter()).filter(|r| r.flags & RUN_KEPT == 0) {
        let i = shm.partition_point(|v| v.1 <= r.addr);
        if shm.get(i).is_some_and(|v| v.0 <= r.addr) {
            tree_shm.push((r.addr, r.addr + r.len() as u64));
        }
    }
    dump_planned(pid, batches, w, spare, sources).map(|(total, after)| (total, after, tree_shm))
}

/// The mapping of `sources` whose file run `r` (a file-copy run) is read from later.
fn source_of<'a>(sources: &'a [CopySource], r: &Run) -> Option<&'a CopySource> {
    let i = sources.partition_point(|s| s.end <= r.addr);
    sources.get(i).filter(|s| r.flags & RUN_FILE_COPY != 0 && s.start <= r.addr)
}

/// [`dump_planned`] into a held Writer: each batch kept, the pages read from the process now,
/// its file-copy runs of a mapping in `sources` left to be read from the file (at once, should
/// the Writer stop holding on the way: crf::Writer::section_pieces).
fn dump_held<W: Sink>(pid: i32, batches: &[BatchPlan], w: &mut Writer<W>, sources: &[CopySource]) -> Result<()> {
    use crate::crf::Piece;
    for b in batches {
        let mut read = BatchPlan::default();
        let mut pieces: Vec<Piece> = Vec::new();
        for (r, &ok) in b.runs.iter().zip(&b.readable) {
            if r.flags & RUN_KEPT != 0 {
                continue;
            }
            match (source_of(sources, r), pieces.last_mut()) {
                (Some(s), Some(Piece::File { src, pos, len }))
                    if std::sync::Arc::ptr_eq(src, &s.src) && *pos + *len as u64 == s.base + (r.addr - s.start) =>
                {
                    *len += r.len()
                }
                (Some(s), _) => {
                    pieces.push(Piece::File { src: s.src.clone(), pos: s.base + (r.addr - s.start), len: r.len() })
                }
                (None, last) => {
                    read.runs.push(*r);
                    read.readable.push(ok);
                    read.pages += r.npages as usize;
                    match last {
                        Some(Piece::Data(n)) => *n += r.len(),
                        _ => pieces.push(Piece::Data(r.len())),
                    }
                }
            }
        }
        let mut data = vec![0u8; read.pages * PAGE_SIZE];
        read_batch(pid, &read, &mut data)?;
        pages::batch_of_pieces(w, &b.runs, data, pieces).map_err(|e| Error::io("image", e))?;
    }
    Ok(())
}

/// [`dump_pages`] once its batches are planned.
fn dump_planned<W: Sink>(
    pid: i32,
    batches: Vec<BatchPlan>,
    w: &mut Writer<W>,
    spare: &mut Vec<Vec<u8>>,
    sources: &[CopySource],
) -> Result<(u64, Vec<Span>)> {
    use std::sync::mpsc::sync_channel;
    let total: u64 = batches.iter().map(|b| b.pages as u64).sum();
    let small = total as usize <= SMALL_DUMP_PAGES;
    let batches = if small { resplit(batches, SMALL_BATCH_PAGES) } else { batches };
    let mut after: Vec<(u64, u64)> = Vec::new();
    for r in batches.iter().flat_map(|b| b.runs.iter()).filter(|r| r.flags & RUN_LATER != 0) {
        let end = r.addr + r.len() as u64;
        match after.last_mut() {
            Some(l) if l.1 == r.addr => l.1 = end,
            _ => after.push((r.addr, end)),
        }
    }
    // Where each batch will lie, announced first (a lazy restore from a file passes over
    // them all at once).
    if !batches.is_empty() {
        let runs: Vec<&[Run]> = batches.iter().map(|b| &b.runs[..]).collect();
        pages::write_plan(w, &runs).map_err(|e| Error::io("image", e))?;
    }
    // Held, the pages read from the process now are kept in fresh memory until it runs again:
    // a copy that costs about as much as writing them (and more than writing them from the
    // two buffers reused here). Worth it for a few MiB (a running checkpoint's last delta)
    // before the pages left in files; past what the Writer may hold, it writes all it held
    // and the rest goes as without it.
    if w.holding() {
        let own: usize = batches
            .iter()
            .flat_map(|b| b.runs.iter())
            .filter(|r| r.flags & RUN_KEPT == 0 && source_of(sources, r).is_none())
            .map(|r| r.len())
            .sum();
        if w.may_hold(own) {
            return dump_held(pid, &batches, w, sources).map(|_| (total, after));
        }
        w.release().map_err(|e| Error::io("image", e))?;
    }
    if small {
        return dump_inline(pid, &batches, w, spare).map(|_| (total, after));
    }
    std::thread::scope(|s| {
        let (full_tx, full_rx) = sync_channel::<Result<Vec<u8>>>(1);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(2);
        for _ in 0..2 {
            let _ = free_tx.send(spare.pop().unwrap_or_else(|| vec![0u8; DUMP_BATCH_PAGES * PAGE_SIZE]));
        }
        let plans = &batches;
        let reader = s.spawn(move || {
            for b in plans {
                let Ok(mut buf) = free_rx.recv() else { return free_rx };
                let n = b.pages * PAGE_SIZE;
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                buf.truncate(n);
                let r = read_batch(pid, b, &mut buf).map(|_| buf);
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return free_rx;
                }
            }
            free_rx
        });
        for b in &batches {
            let buf = full_rx.recv().map_err(|_| Error::Proc("page reader stopped".into()))??;
            let back = pages::give_batch(w, &b.runs, buf).map_err(|e| Error::io("image", e))?;
            // The reader always gets a buffer for its next batch; at most two wait for it (a
            // blocking send could deadlock against a reader waiting to hand over a batch).
            let next = back.unwrap_or_else(|| vec![0u8; DUMP_BATCH_PAGES * PAGE_SIZE]);
            let _ = free_tx.try_send(next);
        }
        drop(free_tx);
        if let Ok(free_rx) = reader.join() {
            spare.extend(free_rx.try_iter());
        }

        Ok((total, after))
    })
}

/// At most this many pages to store (4 MiB), a process's are read and written by one thread,
/// batch after batch: a second thread's reads cost less than the handing over of each batch
/// between the two (a thread that waits for the other is woken 0.1-0.2 ms later on a slow VM,
/// where its CPU sleeps meanwhile).
const SMALL_DUMP_PAGES: usize = 1024;

/// Pages in a batch of a small dump (at most SMALL_DUMP_PAGES), read and written by one
/// thread through one buffer: its pages are faulted in as it is first filled, 1.1-1.4 ms a
/// MiB of fresh memory on a slow VM, where a checkpoint of `sleep` stores 2.7 MB. Growing
/// batches serve only the overlap of two threads.
const SMALL_BATCH_PAGES: usize = 64;

/// `batches` cut again into batches of at most `most` pages of data each.
fn resplit(batches: Vec<BatchPlan>, most: usize) -> Vec<BatchPlan> {
    let mut out = Vec::with_capacity(batches.len());
    let mut cur = BatchPlan::default();
    for (r, readable) in batches.into_iter().flat_map(|b| b.runs.into_iter().zip(b.readable)) {
        add_run(&mut out, &mut cur, r, readable, &|_| most);
    }
    if !cur.runs.is_empty() {
        out.push(cur);
    }
    out
}

/// [`dump_pages`]' batches read and written here, one after another.
fn dump_inline<W: Sink>(pid: i32, batches: &[BatchPlan], w: &mut Writer<W>, spare: &mut Vec<Vec<u8>>) -> Result<()> {
    let mut buf = spare.pop().unwrap_or_default();
    let most = batches.iter().map(|b| b.pages * PAGE_SIZE).max().unwrap_or(0);
    buf.reserve(most.saturating_sub(buf.len()));
    for b in batches {
        let n = b.pages * PAGE_SIZE;
        if buf.len() < n {
            buf.resize(n, 0);
        }
        buf.truncate(n);
        read_batch(pid, b, &mut buf)?;
        buf = pages::give_batch(w, &b.runs, buf).map_err(|e| Error::io("image", e))?.unwrap_or_default();
    }
    spare.push(buf);
    Ok(())
}

/// Writes the pages the processes of a tree share (res::treecow) as TREEPAGES batches: per
/// process (`sources`: pid, the runs to read from it, in order), its runs, read from it.
/// Returns the number of pages.
pub fn dump_shared<W: Sink>(sources: &[(i32, &[Run])], w: &mut Writer<W>, spare: &mut Vec<Vec<u8>>) -> Result<u64> {
    let mut total = 0;
    for &(pid, runs) in sources {
        // Read through /proc/PID/mem, which leaves them shared (see plan_batches).
        let mut cur = BatchPlan::default();
        let mut flush = |cur: &mut BatchPlan| -> Result<()> {
            if cur.runs.is_empty() {
                return Ok(());
            }
            let mut buf = spare.pop().unwrap_or_default();
            buf.resize(cur.pages * PAGE_SIZE, 0);
            read_batch(pid, cur, &mut buf)?;
            let back = pages::give_batch_as(w, crate::crf::Tag::TREEPAGES, &cur.runs, buf)
                .map_err(|e| Error::io("image", e))?;
            spare.extend(back);
            total += cur.pages as u64;
            *cur = BatchPlan::default();
            Ok(())
        };
        for r in runs {
            let mut r = *r;
            while r.npages > 0 {
                let take = (r.npages as usize).min(DUMP_BATCH_PAGES - cur.pages) as u32;
                cur.runs.push(Run { addr: r.addr, npages: take, flags: 0 });
                cur.readable.push(false);
                cur.pages += take as usize;
                r.addr += take as u64 * PAGE_SIZE as u64;
                r.npages -= take;
                if cur.pages == DUMP_BATCH_PAGES || cur.runs.len() == DUMP_BATCH_RUNS {
                    flush(&mut cur)?;
                }
            }
        }
        flush(&mut cur)?;
    }
    Ok(total)
}

/// [`warm_buffers`] made on a thread of their own, beside the work that comes before the freeze
/// (a precheck, on the other CPU): 0.9 ms of page faults for a checkpoint of `sleep` on a slow
/// VM, a tenth of it.
pub struct Warming(Option<std::thread::JoinHandle<Vec<Vec<u8>>>>);

impl Warming {
    /// Begins making the buffers, on another CPU than this thread's where it may: the
    /// scheduler may queue a new thread behind its parent, which then waits for it (at the
    /// first syscall that reschedules), and nothing is gained.
    pub fn begin() -> Warming {
        use std::os::unix::thread::JoinHandleExt;
        let h = std::thread::Builder::new().name("warm".into()).spawn(warm_buffers).ok();
        if let Some(h) = &h {
            // SAFETY: sched_getaffinity/sched_getcpu fill a cpu_set_t we own;
            // pthread_setaffinity_np gets the handle of a thread we have not joined (it lives
            // until then) and that set.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                let here = libc::sched_getcpu();
                if here >= 0 && libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) == 0 {
                    libc::CPU_CLR(here as usize, &mut set);
                    if libc::CPU_COUNT(&set) > 0 {
                        libc::pthread_setaffinity_np(h.as_pthread_t(), std::mem::size_of_val(&set), &set);
                    }
                }
            }
        }
        Warming(h)
    }

    /// None begun: [`Warming::take`] makes them itself.
    pub fn here() -> Warming {
        Warming(None)
    }

    /// The buffers, warm: once the thread has made them, or made here if it could not start.
    pub fn take(self) -> Vec<Vec<u8>> {
        self.0.and_then(|h| h.join().ok()).unwrap_or_else(warm_buffers)
    }
}

/// Two buffers for [`dump_pages`], their pages faulted in: made before the process is frozen.
/// Reading pages into a buffer whose pages are not in memory yet costs three times as long
/// (each page faulted in on the way: 0.4 ms a MiB more on this VM).
pub fn warm_buffers() -> Vec<Vec<u8>> {
    const MADV_POPULATE_WRITE: i32 = 23;
    let len = DUMP_BATCH_PAGES * PAGE_SIZE;
    (0..2)
        .map(|_| {
            let mut b = vec![0u8; len];
            // The pages wholly inside it (the allocator's header may share the first one).
            let start = (b.as_ptr() as usize).next_multiple_of(PAGE_SIZE);
            let end = (b.as_ptr() as usize + len) / PAGE_SIZE * PAGE_SIZE;
            // SAFETY: the range lies inside `b`, which we own; MADV_POPULATE_WRITE faults its
            // pages in as a write would, without changing a byte (Linux 5.14+).
            let populated = end > start
                && unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE) } == 0;
            if !populated {
                // Older kernels: a write to each page (volatile, so that it stays).
                for p in b.chunks_mut(PAGE_SIZE) {
                    // SAFETY: `p` is a non-empty slice of `b`.
                    unsafe { std::ptr::write_volatile(p.as_mut_ptr(), 0) };
                }
            }
            b
        })
        .collect()
}

/// The runs of a batch that a restore does not write, by why (see [`batch_targets`]).
#[derive(Default)]
pub struct NotWritten {
    /// Kept runs: pages the restorer holds for the process.
    pub kept: Vec<Span>,
    /// Kept runs a post-copy's source sends later.
    pub later: Vec<Span>,
    /// Kept runs held as an earlier process's.
    pub shared: Vec<Span>,
    /// Kept runs of the tree's shared memory (VMA_TREE_SHM), whose object holds them.
    pub in_object: Vec<Span>,
}

impl NotWritten {
    pub fn clear(&mut self) {
        for v in [&mut self.kept, &mut self.later, &mut self.shared, &mut self.in_object] {
            v.clear();
        }
    }
}

/// Checks a batch's runs against the plan and returns the (address, length) ranges to write and
/// the offsets of their data in the batch; file-copy runs of file-backed mappings are skipped,
/// the others it does not write go to `not`.
pub fn batch_targets(plans: &[Plan], runs: &[Run], at: u64, not: &mut NotWritten) -> Result<Vec<(u64, usize, usize)>> {
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
        if v.flags & VMA_EMPTY != 0 {
            return Err(Error::Image(crate::crf::CrfError::Bad {
                offset: at,
                what: format!("page run {:#x} targets a reservation that holds no page (VMA_EMPTY)", r.addr),
            }));
        }
        if r.flags & RUN_SHARED != 0 && v.flags & VMA_KEPT_FIRST == 0 {
            return Err(Error::Image(crate::crf::CrfError::Bad {
                offset: at,
                what: format!("page run {:#x} is held as an earlier process's in a mapping not marked so", r.addr),
            }));
        }
        if r.flags & RUN_LATER != 0 {
            not.later.push((r.addr, end));
        } else if r.flags & RUN_SHARED != 0 {
            not.shared.push((r.addr, end));
        } else if r.flags & RUN_KEPT != 0 && v.flags & VMA_TREE_SHM != 0 {
            not.in_object.push((r.addr, end));
        } else if r.flags & RUN_KEPT != 0 && p.from_file {
            // A file's unmodified pages sent ahead, where the same file is mapped: its own.
            if r.flags & RUN_FILE_COPY == 0 {
                return Err(Error::Image(crate::crf::CrfError::Bad {
                    offset: at,
                    what: format!("page run {:#x} is kept in a mapping made from its file", r.addr),
                }));
            }
        } else if r.flags & RUN_KEPT != 0 {
            not.kept.push((r.addr, end));
        } else if !(r.flags & RUN_FILE_COPY != 0 && p.from_file) {
            out.push((r.addr, r.len(), off));
        }
        off += r.data_len();
    }
    Ok(out)
}

/// Writes a batch's data to its targets (from [`batch_targets`]): those in `fill`'s ranges
/// with UFFDIO_COPY, the others with process_vm_writev, contiguous data in one call.
pub fn write_batch(pid: i32, fill: Option<&Fill>, targets: &[(u64, usize, usize)], data: &[u8]) -> Result<()> {
    let mut i = 0;
    while i < targets.len() {
        let (at, len, start) = targets[i];
        if let Some(f) = fill.filter(|f| f.covers(at, len)) {
            f.write(pid, at, &data[start..start + len])?;
            i += 1;
            continue;
        }
        let mut j = i;
        let mut end = start;
        let mut iov = Vec::new();
        while j < targets.len() && targets[j].2 == end && !fill.is_some_and(|f| f.covers(targets[j].0, targets[j].1)) {
            iov.push((targets[j].0, targets[j].1));
            end += targets[j].1;
            j += 1;
        }
        mem::write_runs(pid, &iov, &data[start..end])?;
        i = j;
    }
    Ok(())
}

/// A restored process's fresh private anonymous mappings, registered with a userfaultfd of its
/// own while its pages are written, so that they are written with UFFDIO_COPY: each page made
/// from the image's bytes, where process_vm_writev has the kernel zero it first and then copy
/// (a 1 GiB fill took about a quarter less time on the VM measured, bench/RESULTS.md; a
/// layout of lone pages, one call each, about 5% more). The
/// userfaultfd is for faults raised in user mode only, and the process runs nothing while it
/// is open: a page of those ranges that something else touches (a write of ours through
/// process_vm_writev) fails with EFAULT rather than waits. Dropping it unregisters them all.
pub struct Fill {
    uffd: std::os::fd::OwnedFd,
    /// Registered ranges, sorted.
    ranges: Vec<(u64, u64)>,
}

/// Fewest bytes of mappings worth a userfaultfd: below, its syscalls cost more than they save.
const FILL_MIN: u64 = 4 << 20;

impl Fill {
    /// For process `c` (stopped, its mappings made): its private anonymous mappings in `plans`
    /// but those holding pages already (`moved`: sorted ranges of pages sent ahead), those
    /// mlock populates, and, where the kernel gives anonymous memory transparent huge pages
    /// on first touch, those that may have some (process_vm_writev's faults make huge pages
    /// there; UFFDIO_COPY would make small ones). None where there are none, or no userfaultfd
    /// is to be had: the pages are then written with process_vm_writev.
    pub fn new(c: &mut crate::ptrace::Ctl, plans: &[Plan], moved: &[(u64, u64)]) -> Option<Fill> {
        use crate::ptrace::uffd;
        let overlaps = |s: u64, e: u64| {
            let i = moved.partition_point(|m| m.1 <= s);
            moved.get(i).is_some_and(|m| m.0 < e)
        };
        let mut wanted: Vec<&Plan> = plans
            .iter()
            .filter(|p| private_anon(&p.vma) && !p.from_file)
            .filter(|p| p.vma.flags & (VMA_LOCKED | VMA_LOCKONFAULT | VMA_EMPTY) == 0)
            .filter(|p| !overlaps(p.vma.start, p.vma.end))
            .collect();
        let enough = |w: &[&Plan]| w.iter().map(|p| p.vma.len()).sum::<u64>() >= FILL_MIN;
        if !enough(&wanted) {
            return None;
        }
        if thp_on_touch() {
            wanted.retain(|p| p.vma.flags & VMA_NOHUGEPAGE != 0);
            if !enough(&wanted) {
                return None;
            }
        }
        let pid = c.pid();
        let fd = match uffd::made_in(c, libc::O_CLOEXEC | uffd::USER_MODE_ONLY) {
            Ok(fd) => fd,
            Err(e) => {
                log::debug!("pid {pid}: pages written with process_vm_writev: {e}");
                return None;
            }
        };
        if let Err(e) = uffd::api(&fd, 0) {
            log::debug!("pid {pid}: pages written with process_vm_writev: UFFDIO_API: {e}");
            return None;
        }
        let ranges: Vec<(u64, u64)> = wanted
            .into_iter()
            .map(|p| (p.vma.start, p.vma.end))
            .filter(|&(s, e)| match uffd::register(&fd, s, e, uffd::MODE_MISSING) {
                Ok(()) => true,
                Err(err) => {
                    log::debug!("pid {pid}: {s:#x}-{e:#x} written with process_vm_writev: UFFDIO_REGISTER: {err}");
                    false
                }
            })
            .collect();
        (!ranges.is_empty()).then_some(Fill { uffd: fd, ranges })
    }

    /// Whether [at, at + len) lies in one registered range.
    fn covers(&self, at: u64, len: usize) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= at);
        self.ranges.get(i).is_some_and(|r| r.0 <= at && at + len as u64 <= r.1)
    }

    /// Writes `data` at `at` (in a registered range) in process `pid`: a page there already
    /// (EEXIST) is written over with process_vm_writev, as is the rest where the range is
    /// registered no more.
    fn write(&self, pid: i32, at: u64, data: &[u8]) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mut done = 0usize;
        while done < data.len() {
            let (n, e) = crate::ptrace::uffd::copy(self.uffd.as_raw_fd(), at + done as u64, &data[done..]);
            done += n as usize;
            let Some(e) = e else { break };
            if n > 0 {
                continue;
            }
            let here = at + done as u64;
            match e.raw_os_error() {
                Some(libc::EAGAIN) => {}
                Some(libc::EEXIST) => {
                    let page = &data[done..(done + PAGE_SIZE).min(data.len())];
                    mem::write_runs(pid, &[(here, page.len())], page)?;
                    done += page.len();
                }
                Some(libc::ENOENT) | Some(libc::EINVAL) => {
                    mem::write_runs(pid, &[(here, data.len() - done)], &data[done..])?;
                    break;
                }
                _ => {
                    return Err(Error::io(
                        format!("UFFDIO_COPY of {} bytes to {here:#x} (pid {pid})", data.len() - done),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether this kernel gives a private anonymous mapping huge pages on first touch without
/// madvise: transparent huge pages "always", for 2 MiB or for another size (mTHP, whose
/// "inherit" follows the 2 MiB setting).
fn thp_on_touch() -> bool {
    const THP: &str = "/sys/kernel/mm/transparent_hugepage";
    let always = |path: &std::path::Path| std::fs::read_to_string(path).is_ok_and(|s| s.contains("[always]"));
    always(std::path::Path::new(&format!("{THP}/enabled")))
        || std::fs::read_dir(THP)
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.file_name().to_string_lossy().starts_with("hugepages-") && always(&d.path().join("enabled")))
}

/// The file range [from, to) whose unmodified pages a VMA_FILE_COPY mapping `v` stores: its
/// part of the file, up to the file's last page.
pub fn copy_range(v: &Vma) -> Option<(u64, u64)> {
    let page = PAGE_SIZE as u64;
    let f = v.file.as_ref()?;
    let from = v.pgoff.checked_mul(page)?;
    let to = from.checked_add(v.len())?.min(f.size.next_multiple_of(page));
    (to > from).then_some((from, to))
}

/// Most bytes of file copies a restore keeps for the later processes of a tree.
const MAX_FILE_COPIES: usize = 1 << 30;

/// The unmodified pages of mapped files as the image stored them, for a restore that cannot
/// map those files here (they changed): a mapping that left them to an earlier process's
/// (VMA_COPY_ELSEWHERE) gets that process's copy. By (dev, ino, page offset in the file).
#[derive(Default)]
pub struct FileCopies(std::collections::HashMap<(u64, u64, u64), Vec<u8>>);

impl FileCopies {
    /// Keeps the file-copy pages of batch `runs` (data `data`) that go to mappings not made
    /// from their file. Refuses to keep more than MAX_FILE_COPIES bytes.
    pub fn keep(&mut self, plans: &[Plan], runs: &[Run], data: &[u8]) -> Result<()> {
        let page = PAGE_SIZE as u64;
        let mut off = 0usize;
        for r in runs {
            let i = plans.partition_point(|p| p.vma.end <= r.addr);
            if r.flags & (RUN_FILE_COPY | RUN_KEPT) == RUN_FILE_COPY
                && let Some(p) = plans.get(i).filter(|p| !p.from_file && p.vma.start <= r.addr)
                && let Some(f) = &p.vma.file
            {
                for k in 0..r.npages as u64 {
                    let at = off + (k * page) as usize;
                    let Some(bytes) = data.get(at..at + PAGE_SIZE) else { break };
                    let file_off = p.vma.pgoff * page + (r.addr - p.vma.start) + k * page;
                    self.0.insert((f.dev, f.ino, file_off), bytes.to_vec());
                }
                if self.0.len() * PAGE_SIZE > MAX_FILE_COPIES {
                    return Err(Error::Refused(format!(
                        "the image's copies of files that changed here exceed {} MiB: restore it where its programs and libraries are the same",
                        MAX_FILE_COPIES >> 20
                    )));
                }
            }
            off += r.data_len();
        }
        Ok(())
    }

    /// Writes into process `pid` the unmodified pages of its mappings that left them to an
    /// earlier process and are not made from their file (before its own pages: those it
    /// changed come after, over them).
    pub fn write_into(&self, pid: i32, plans: &[Plan]) -> Result<()> {
        let page = PAGE_SIZE as u64;
        for p in plans.iter().filter(|p| p.vma.flags & VMA_COPY_ELSEWHERE != 0 && !p.from_file) {
            let (Some(f), Some((from, to))) = (&p.vma.file, copy_range(&p.vma)) else { continue };
            let mut at = from;
            while at < to {
                let bytes = self.0.get(&(f.dev, f.ino, at)).ok_or_else(|| {
                    Error::Refused(format!(
                        "the image leaves the unmodified pages of {} at {:#x} to another process's copy, which it does not hold: it is damaged",
                        f.path,
                        p.vma.start + (at - from)
                    ))
                })?;
                mem::write_runs(pid, &[(p.vma.start + (at - from), PAGE_SIZE)], bytes)?;
                at += page;
            }
        }
        Ok(())
    }
}

/// A batch's data for [`Writers`]: a buffer of ours, or where the image lies in memory for
/// the whole restore (a mapped file).
pub enum Data {
    Owned(Vec<u8>),
    Lasting(Lasting),
}

/// Data in memory that outlives every writer (see [`crate::crf::Input::lasting`]).
pub struct Lasting {
    ptr: *const u8,
    len: usize,
}

// SAFETY: a Lasting is only made (by `Lasting::of`) from a slice that stays valid and
// unchanged for the whole restore, and only read.
unsafe impl Send for Lasting {}

impl Lasting {
    /// # Safety
    /// `data` must stay valid and unchanged until every [`Writers`] it is given to finished.
    pub unsafe fn of(data: &[u8]) -> Lasting {
        Lasting { ptr: data.as_ptr(), len: data.len() }
    }
}

struct Job {
    targets: Vec<(u64, usize, usize)>,
    data: Data,
    /// Told once the job is written (see [`Writers::write_now`]).
    done: Option<std::sync::mpsc::SyncSender<()>>,
}

/// `targets` (address, length, data offset; whole pages) cut into at most `n` parts of about
/// as many bytes each, in order.
fn split(targets: &[(u64, usize, usize)], n: usize) -> Vec<Vec<(u64, usize, usize)>> {
    let total: usize = targets.iter().map(|t| t.1).sum();
    let share = (total / n.max(1)).next_multiple_of(PAGE_SIZE).max(PAGE_SIZE);
    let mut out = vec![Vec::new()];
    let mut room = share;
    for &(mut at, mut len, mut off) in targets {
        while len > 0 {
            if room == 0 {
                out.push(Vec::new());
                room = share;
            }
            let take = len.min(room);
            if let Some(part) = out.last_mut() {
                part.push((at, take, off));
            }
            (at, len, off, room) = (at + take as u64, len - take, off + take, room - take);
        }
    }
    out
}

/// Threads that write a restored process's page batches while the restore reads and checks
/// the next ones: the first-touch fill of the process's memory (every page zeroed by the
/// kernel, then copied into) runs on every CPU, not only on the restore's. They start once
/// INLINE_BYTES have been written here: a small process's pages cost less to write than
/// threads cost to start and to hand batches to.
pub struct Writers<'s, 'e> {
    scope: &'s std::thread::Scope<'s, 'e>,
    pid: i32,
    fill: Option<&'s Fill>,
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    /// The threads' ends of the channels, until they start.
    ends: Option<(std::sync::mpsc::Receiver<Job>, std::sync::mpsc::SyncSender<Vec<u8>>)>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    made: usize,
    /// Bytes written here so far, before the threads start.
    inline: usize,
    /// A buffer given back unused.
    spare: Option<Vec<u8>>,
    failed: std::sync::Arc<std::sync::Mutex<Option<Error>>>,
    threads: Vec<std::thread::ScopedJoinHandle<'s, ()>>,
}

/// Most buffers of a batch's size the writers use (each MAX_BATCH_PAGES pages).
const WRITE_BUFFERS: usize = 4;

/// Bytes of pages written by the restoring thread itself before the writers start (4 MiB:
/// `sleep` has 0.5 MiB; three threads cost 0.3 ms of CPU to start, with their malloc arenas).
const INLINE_BYTES: usize = 4 << 20;

impl<'s, 'e> Writers<'s, 'e> {
    /// Writers for process `pid`, with UFFDIO_COPY where `fill` has registered its memory.
    pub fn start(scope: &'s std::thread::Scope<'s, 'e>, pid: i32, fill: Option<&'s Fill>) -> Writers<'s, 'e> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(2);
        let (back, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(WRITE_BUFFERS);
        Writers {
            scope,
            pid,
            fill,
            jobs: Some(jobs),
            ends: Some((rx, back)),
            free,
            made: 0,
            inline: 0,
            spare: None,
            failed: Default::default(),
            threads: Vec::new(),
        }
    }

    /// Whether a batch of `targets` is written here: until INLINE_BYTES are, or when no thread
    /// can be had. Past them, the threads start.
    fn here(&mut self, targets: &[(u64, usize, usize)]) -> bool {
        if self.inline < INLINE_BYTES {
            self.inline += targets.iter().map(|t| t.1).sum::<usize>();
            return true;
        }
        if let Some((rx, back)) = self.ends.take() {
            self.spawn(rx, back);
        }
        self.threads.is_empty()
    }

    fn spawn(&mut self, rx: std::sync::mpsc::Receiver<Job>, back: std::sync::mpsc::SyncSender<Vec<u8>>) {
        use std::sync::{Arc, Mutex};
        let n = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 3);
        let rx = Arc::new(Mutex::new(rx));
        let (pid, fill) = (self.pid, self.fill);
        // A thread may not be had (after unshare(CLONE_NEWTIME), Linux 6.1 refuses CLONE_VM
        // until the next fork): then the batches are written inline.
        self.threads = (0..n)
            .map_while(|_| {
                let (rx, back, failed) = (rx.clone(), back.clone(), self.failed.clone());
                std::thread::Builder::new()
                    .spawn_scoped(self.scope, move || {
                        loop {
                            let job = match rx.lock() {
                                Ok(r) => r.recv(),
                                Err(_) => return,
                            };
                            let Ok(job) = job else { return };
                            let done = |f: &Mutex<Option<Error>>| f.lock().map_or(true, |e| e.is_some());
                            let data: &[u8] = match &job.data {
                                Data::Owned(v) => v,
                                // SAFETY: see Lasting::of: valid and unchanged until we finish.
                                Data::Lasting(l) => unsafe { std::slice::from_raw_parts(l.ptr, l.len) },
                            };
                            if !done(&failed)
                                && let Err(e) = write_batch(pid, fill, &job.targets, data)
                                && let Ok(mut f) = failed.lock()
                            {
                                f.get_or_insert(e);
                            }
                            if let Data::Owned(v) = job.data {
                                let _ = back.try_send(v);
                            }
                            if let Some(d) = job.done {
                                let _ = d.send(());
                            }
                        }
                    })
                    .ok()
            })
            .collect();
    }

    /// A buffer for the next batch's data (of MAX_BATCH_PAGES pages), once one is free.
    pub fn buffer(&mut self) -> Result<Vec<u8>> {
        if let Some(b) = self.spare.take() {
            return Ok(b);
        }
        if let Ok(b) = self.free.try_recv() {
            return Ok(b);
        }
        if self.made < WRITE_BUFFERS {
            self.made += 1;
            return Ok(vec![0u8; pages::MAX_BATCH_PAGES * PAGE_SIZE]);
        }
        self.free.recv().map_err(|_| Error::Proc("the page writers stopped".into()))
    }

    /// Gives back a buffer [`Writers::buffer`] gave, unused.
    pub fn reuse(&mut self, b: Vec<u8>) {
        self.spare = Some(b);
    }

    /// Hands a batch to the writers; fails at once if one of them failed.
    pub fn write(&mut self, targets: Vec<(u64, usize, usize)>, data: Data) -> Result<()> {
        if self.here(&targets) {
            let bytes: &[u8] = match &data {
                Data::Owned(v) => v,
                // SAFETY: see Lasting::of: valid and unchanged until we finish.
                Data::Lasting(l) => unsafe { std::slice::from_raw_parts(l.ptr, l.len) },
            };
            let r = write_batch(self.pid, self.fill, &targets, bytes);
            if let Data::Owned(v) = data {
                self.spare = Some(v);
            }
            return r;
        }
        self.check()?;
        let jobs = self.jobs.as_ref().ok_or_else(|| Error::Proc("the page writers stopped".into()))?;
        jobs.send(Job { targets, data, done: None }).map_err(|_| Error::Proc("the page writers stopped".into()))
    }

    /// Writes a batch whose data is lent only until the next read (a network frame's): split
    /// between the writers and this thread, and back once all of it is written.
    pub fn write_now(&mut self, targets: &[(u64, usize, usize)], data: &[u8]) -> Result<()> {
        if self.here(targets) {
            return write_batch(self.pid, self.fill, targets, data);
        }
        let mut parts = split(targets, self.threads.len() + 1);
        let mine = parts.pop().unwrap_or_default();
        if parts.is_empty() {
            return write_batch(self.pid, self.fill, &mine, data);
        }
        self.check()?;
        let stopped = || Error::Proc("the page writers stopped".into());
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(parts.len());
        let mut given = 0;
        for targets in parts {
            // SAFETY: `data` stays valid and unchanged until this function returns, which it
            // does only once every job given it is written and dropped (told below, or the
            // channel closes when a job is dropped unwritten).
            let data = Data::Lasting(unsafe { Lasting::of(data) });
            if jobs.send(Job { targets, data, done: Some(tx.clone()) }).is_err() {
                break;
            }
            given += 1;
        }
        drop(tx);
        let r = write_batch(self.pid, self.fill, &mine, data);
        for _ in 0..given {
            rx.recv().map_err(|_| stopped())?;
        }
        r?;
        self.check()
    }

    fn check(&self) -> Result<()> {
        match self.failed.lock().map(|mut f| f.take()) {
            Ok(Some(e)) => Err(e),
            Ok(None) => Ok(()),
            Err(_) => Err(Error::Proc("a page writer failed".into())),
        }
    }

    /// Waits until every batch is written; the first failure.
    pub fn finish(mut self) -> Result<()> {
        drop(self.jobs.take());
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                return Err(Error::Proc("a page writer failed".into()));
            }
        }
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_dumps_batches_are_cut_to_its_size_keeping_every_run_in_order() {
        let p = PAGE_SIZE as u64;
        let run = |a: u64, n: u32, flags: u32| Run { addr: a * p, npages: n, flags };
        let plan = |runs: Vec<Run>| BatchPlan {
            readable: runs.iter().map(|r| r.addr != 0).collect(),
            pages: runs.iter().filter(|r| r.flags & RUN_KEPT == 0).map(|r| r.npages as usize).sum(),
            runs,
        };
        let before = vec![
            plan(vec![run(0, 3, 0), run(10, 100, RUN_KEPT), run(200, 29, RUN_FILE_COPY)]),
            plan(vec![run(300, 64, 0)]),
        ];
        let all: Vec<(Run, bool)> =
            before.iter().flat_map(|b| b.runs.iter().copied().zip(b.readable.iter().copied())).collect();
        let after = resplit(before, 16);
        for b in &after {
            let data: usize = b.runs.iter().filter(|r| r.flags & RUN_KEPT == 0).map(|r| r.npages as usize).sum();
            assert_eq!(data, b.pages);
            assert!(b.pages <= 16 && b.runs.len() == b.readable.len());
        }
        // Joined again, the runs are the plan's, each piece with its readability.
        let mut joined: Vec<(Run, bool)> = Vec::new();
        for (r, ok) in after.iter().flat_map(|b| b.runs.iter().copied().zip(b.readable.iter().copied())) {
            match joined.last_mut() {
                Some((l, lok)) if l.addr + l.len() as u64 == r.addr && l.flags == r.flags && *lok == ok => {
                    l.npages += r.npages
                }
                _ => joined.push((r, ok)),
            }
        }
        assert_eq!(joined, all);
        // 3 + 29 + 64 pages: six full batches of 16.
        assert_eq!(after.iter().map(|b| b.pages).collect::<Vec<_>>(), vec![16, 16, 16, 16, 16, 16]);
    }

    #[test]
    fn kept_runs_in_later_ranges_are_cut_and_marked() {
        let p = PAGE_SIZE as u64;
        let run = |a: u64, n: u32, flags: u32| Run { addr: a * p, npages: n, flags };
        let runs = vec![run(0, 10, RUN_KEPT), run(10, 2, 0), run(20, 4, RUN_KEPT)];
        let got = mark_kept(runs, &[(3 * p, 5 * p), (9 * p, 22 * p)], RUN_LATER);
        let later = RUN_KEPT | RUN_LATER;
        assert_eq!(
            got,
            vec![
                run(0, 3, RUN_KEPT),
                run(3, 2, later),
                run(5, 4, RUN_KEPT),
                run(9, 1, later),
                run(10, 2, 0),
                run(20, 2, later),
                run(22, 2, RUN_KEPT)
            ]
        );
    }

    #[test]
    fn runs_outside_mappings_are_refused() {
        let plans = vec![Plan {
            reopen: None,
            vma: Vma { start: 0x1000, end: 0x3000, prot: 3, kind: KIND_ANON, ..Default::default() },
            from_file: false,
        }];
        let mut not = NotWritten::default();
        let mut t =
            |addr: u64, npages: u32, flags: u32| batch_targets(&plans, &[Run { addr, npages, flags }], 64, &mut not);
        assert!(t(0x2000, 1, 0).is_ok());
        assert!(t(0x2000, 2, 0).is_err());
        // Held as an earlier process's only in a mapping marked so.
        assert!(t(0x1000, 1, RUN_KEPT | RUN_SHARED).is_err());
        let e = t(0x5000, 1, 0).unwrap_err();
        assert!(e.to_string().contains("offset 64"), "{e}");
    }

    /// A file's unmodified pages a live migration sent ahead (RUN_FILE_COPY | RUN_KEPT): where
    /// the mapping is made from the file they are its own (neither written nor kept); where it
    /// is not, they are kept (held, checked by the store). Only they are kept in a mapping made
    /// from its file.
    #[test]
    fn a_files_pages_sent_ahead_are_the_files_where_it_is_mapped() {
        let file = |from_file: bool| Plan {
            reopen: None,
            vma: Vma {
                start: 0x1000,
                end: 0x5000,
                prot: 1,
                kind: KIND_FILE,
                flags: VMA_FILE_COPY,
                ..Default::default()
            },
            from_file,
        };
        let runs = [
            Run { addr: 0x1000, npages: 2, flags: RUN_FILE_COPY | RUN_KEPT },
            Run { addr: 0x3000, npages: 1, flags: 0 },
            Run { addr: 0x4000, npages: 1, flags: RUN_FILE_COPY },
        ];
        let mut not = NotWritten::default();
        let out = batch_targets(&[file(true)], &runs, 0, &mut not).unwrap();
        assert_eq!(out, vec![(0x3000, 4096, 0)]);
        assert!(not.kept.is_empty());
        let out = batch_targets(&[file(false)], &runs, 0, &mut not).unwrap();
        assert_eq!(out, vec![(0x3000, 4096, 0), (0x4000, 4096, 4096)]);
        assert_eq!(not.kept, vec![(0x1000, 0x3000)]);
        let kept = [Run { addr: 0x1000, npages: 1, flags: RUN_KEPT }];
        assert!(batch_targets(&[file(true)], &kept, 0, &mut not).is_err());
    }

    /// Pages written with UFFDIO_COPY where they are missing, over the ones there already
    /// (EEXIST) and past the registered range with process_vm_writev; each page as given.
    #[test]
    fn fill_writes_missing_pages_and_those_there_already() {
        use crate::ptrace::uffd;
        use std::os::fd::{FromRawFd, OwnedFd};
        const N: usize = 16;
        let me = std::process::id() as i32;
        // SAFETY: a new private anonymous mapping of ours, used only by this test.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                N * PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let base = at as u64;
        // Pages 3 and 4 are there before (written 0xee); a target runs over them. (Had the
        // fill written a missing registered page with process_vm_writev, that would fail
        // with EFAULT: the test sees UFFDIO_COPY work.)
        // SAFETY: inside the mapping just made.
        unsafe {
            std::ptr::write_bytes((base + 3 * PAGE_SIZE as u64) as *mut u8, 0xee, 2 * PAGE_SIZE);
        }
        // SAFETY: userfaultfd takes flags and returns a new fd, owned below.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | uffd::USER_MODE_ONLY) };
        assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        uffd::api(&fd, 0).unwrap();
        // Registered: pages 0-11. Pages 12-15 stay unregistered.
        let end = base + 12 * PAGE_SIZE as u64;
        uffd::register(&fd, base, end, uffd::MODE_MISSING).unwrap();
        let fill = Fill { uffd: fd, ranges: vec![(base, end)] };
        let data: Vec<u8> = (0..N * PAGE_SIZE).map(|i| (i / PAGE_SIZE * 7 + i % 251) as u8).collect();
        let p = PAGE_SIZE;
        // Pages 0-10 (one target in the range), 11 (in it), 12-15 (outside: process_vm_writev).
        let targets = [(base, 11 * p, 0), (base + 11 * p as u64, p, 11 * p), (base + 12 * p as u64, 4 * p, 12 * p)];
        assert!(fill.covers(base, 11 * p) && !fill.covers(base + 11 * p as u64, 2 * p));
        write_batch(me, Some(&fill), &targets, &data).unwrap();
        drop(fill);
        // SAFETY: the mapping is ours and every page of it was written above.
        let got = unsafe { std::slice::from_raw_parts(base as *const u8, N * PAGE_SIZE) };
        for k in 0..N {
            assert!(got[k * p..(k + 1) * p] == data[k * p..(k + 1) * p], "page {k}");
        }
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(at, N * PAGE_SIZE) };
    }

    #[test]
    fn a_batch_is_split_into_parts_of_whole_pages() {
        let p = PAGE_SIZE;
        let t = [(0x10000u64, 3 * p, 0), (0x40000, 4 * p, 3 * p)];
        let parts = split(&t, 2);
        assert_eq!(parts, vec![vec![(0x10000, 3 * p, 0), (0x40000, p, 3 * p)], vec![(0x41000, 3 * p, 4 * p)]]);
        assert_eq!(split(&t, 3).len(), 3);
        assert_eq!(split(&[(0x1000, p, 0)], 3), vec![vec![(0x1000, p, 0)]]);
        assert_eq!(split(&[], 2), vec![Vec::<(u64, usize, usize)>::new()]);
    }
}
