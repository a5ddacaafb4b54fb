//! TREECOW: the private memory processes of the tree still share copy-on-write since a fork
//! (a server's parent and its pre-forked workers, a pool and its workers: pages loaded before
//! the fork and never written since). Each such page is stored once, in TREEPAGES batches
//! after the first process's layout; each process's own page batches carry it as a kept run
//! (crf::pages::RUN_KEPT), without data. A restore holds those pages in mappings of its own
//! before it creates the processes, which inherit them as a fork would leave them; each moves
//! them into place (engine::precopy::Store, as for pages sent ahead), so that they share the
//! very pages again and the tree takes the memory it took before, not once per process.
//!
//! Only whole private anonymous mappings are shared so (the heap and anonymous memory, not
//! stacks, files' private copies or droppable memory), and only where the processes hold the
//! mapping with the same range: what fork leaves. Which pages are shared the checkpoint learns
//! from their frame numbers (/proc/PID/pagemap), which only a checkpoint with CAP_SYS_ADMIN
//! sees: without it, every process's pages are its own in the image and after the restore.

use super::image::ProcessState;
use super::memory::{VMA_NORESERVE, Vma};
use crate::crf::pages::Run;
use crate::crf::{Dec, Enc, PAGE_SIZE, Result as CrfResult};
use crate::error::Result;
use crate::ptrace::pagemap::Pagemap;
use std::collections::HashMap;

const PAGE: u64 = PAGE_SIZE as u64;

/// Highest user address on x86_64 with 5-level paging.
const USER_TOP: u64 = 1 << 56;

/// A mapping (its exact range) whose shared pages the image holds once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Area {
    pub start: u64,
    pub end: u64,
    /// MAP_NORESERVE, as the processes' mapping has it.
    pub noreserve: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeCow {
    /// In order, not overlapping.
    pub areas: Vec<Area>,
    /// Every range any process of the image maps (in order, merged): where a restore must not
    /// keep the shared pages while the processes are being made.
    pub busy: Vec<(u64, u64)>,
}

/// What a checkpoint found shared: the section, and per process (in the image's order) the
/// sorted ranges of its pages the TREEPAGES batches hold, which its own batches keep; per
/// process too, the runs of the shared pages to be read from it (each page from the first
/// process that has it).
pub struct Found {
    pub cow: TreeCow,
    pub kept: Vec<Vec<(u64, u64)>>,
    pub sources: Vec<Vec<Run>>,
}

/// A mapping whose pages may be shared so.
pub fn eligible(v: &Vma) -> bool {
    super::memory::private_anon(v) && !v.untouched
}

fn area_of(v: &Vma) -> Area {
    Area { start: v.start, end: v.end, noreserve: v.flags & VMA_NORESERVE != 0 }
}

/// Finds the pages the frozen processes of `states` share. None when they share none (or
/// frame numbers are hidden from us).
pub fn collect(states: &[ProcessState]) -> Result<Option<Found>> {
    // The areas at least two processes map with the same range, and who maps each.
    let mut holders: HashMap<Area, Vec<usize>> = HashMap::new();
    for (i, st) in states.iter().enumerate() {
        for v in st.vmas.iter().filter(|v| eligible(v)) {
            holders.entry(area_of(v)).or_default().push(i);
        }
    }
    let mut areas: Vec<(Area, Vec<usize>)> = holders.into_iter().filter(|(_, who)| who.len() > 1).collect();
    if areas.is_empty() {
        return Ok(None);
    }
    areas.sort_unstable_by_key(|(a, _)| a.start);
    let mut maps: Vec<Option<Pagemap>> = states.iter().map(|_| None).collect();
    let mut found = Found {
        cow: TreeCow::default(),
        kept: vec![Vec::new(); states.len()],
        sources: vec![Vec::new(); states.len()],
    };
    let mut last_end = 0;
    for (a, who) in areas {
        // Two areas of different processes may overlap without being the same: the first
        // one wins (the image's areas never overlap).
        if a.start < last_end {
            continue;
        }
        let n = ((a.end - a.start) / PAGE) as usize;
        // Per process, the frame of each page it holds data in that another process maps too.
        let mut frames = Vec::with_capacity(who.len());
        for &i in &who {
            let pm = match &mut maps[i] {
                Some(pm) => pm,
                slot => slot.insert(Pagemap::open(states[i].head.pid)?),
            };
            let mut f = pm.shared_frames(a.start, a.end)?;
            // Only pages that hold data (not the zero page, which is never stored).
            let mut data = vec![false; n];
            for (s, e) in pm.own_data(a.start, a.end)? {
                data[((s - a.start) / PAGE) as usize..((e - a.start) / PAGE) as usize].fill(true);
            }
            f.iter_mut().zip(&data).filter(|(_, d)| !**d).for_each(|(x, _)| *x = 0);
            frames.push(f);
        }
        let mut any = false;
        for k in 0..n {
            // The frame most of them share here (at least two), the first one's on a tie.
            let mut best = (0u64, 1usize);
            for (j, f) in frames.iter().enumerate() {
                let pfn = f[k];
                if pfn == 0 || frames[..j].iter().any(|g| g[k] == pfn) {
                    continue;
                }
                let count = frames[j..].iter().filter(|g| g[k] == pfn).count();
                if count > best.1 {
                    best = (pfn, count);
                }
            }
            if best.0 == 0 {
                continue;
            }
            any = true;
            let at = a.start + k as u64 * PAGE;
            let mut source = true;
            for (j, _) in frames.iter().enumerate().filter(|(_, f)| f[k] == best.0) {
                let i = who[j];
                crate::ptrace::pagemap::join(&mut found.kept[i], at, at + PAGE);
                if source {
                    push_run(&mut found.sources[i], at, a.start);
                    source = false;
                }
            }
        }
        if any {
            found.cow.areas.push(a);
            last_end = a.end;
        }
    }
    if found.cow.areas.is_empty() {
        return Ok(None);
    }
    for k in &mut found.kept {
        k.sort_unstable();
    }
    for s in &mut found.sources {
        s.sort_unstable_by_key(|r| r.addr);
    }
    let mut busy: Vec<(u64, u64)> = states.iter().flat_map(|st| st.vmas.iter().map(|v| (v.start, v.end))).collect();
    busy.sort_unstable();
    for (s, e) in busy {
        match found.cow.busy.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => found.cow.busy.push((s, e)),
        }
    }
    Ok(Some(found))
}

/// Adds the page at `at`, of the area beginning at `area`, to the runs `out`: a run never goes
/// on from one area into the next (a restore holds each area apart, and takes a run in one),
/// though two areas may lie side by side (a heap the processes grew, or mappings the kernel
/// keeps apart for their flags).
fn push_run(out: &mut Vec<Run>, at: u64, area: u64) {
    match out.last_mut() {
        Some(r) if r.addr + r.len() as u64 == at && r.addr >= area => r.npages += 1,
        _ => out.push(Run { addr: at, npages: 1, flags: 0 }),
    }
}

pub fn encode(c: &TreeCow) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(c.areas.len() as u32);
    for a in &c.areas {
        e.u64(a.start).u64(a.end).u32(a.noreserve as u32).u32(0);
    }
    e.u32(c.busy.len() as u32);
    for &(s, x) in &c.busy {
        e.u64(s).u64(x);
    }
    e.into_bytes()
}

fn range_ok(s: u64, e: u64, after: u64) -> bool {
    s.is_multiple_of(PAGE) && e.is_multiple_of(PAGE) && s < e && e <= USER_TOP && s >= after
}

pub fn decode(b: &[u8], at: u64) -> CrfResult<TreeCow> {
    let mut d = Dec::new(b, at, "TREECOW");
    let mut c = TreeCow::default();
    let n = d.count(24)?;
    let mut after = 0;
    for _ in 0..n {
        let rec = d.offset();
        let (start, end, flags, pad) = (d.u64()?, d.u64()?, d.u32()?, d.u32()?);
        if !range_ok(start, end, after) || flags > 1 || pad != 0 {
            return Err(d.bad_at(rec, format!("invalid shared area {start:#x}-{end:#x}")));
        }
        after = end;
        c.areas.push(Area { start, end, noreserve: flags == 1 });
    }
    let n = d.count(16)?;
    let mut after = 0;
    for _ in 0..n {
        let rec = d.offset();
        let (s, e) = (d.u64()?, d.u64()?);
        if !range_ok(s, e, after) {
            return Err(d.bad_at(rec, format!("invalid mapped range {s:#x}-{e:#x}")));
        }
        after = e;
        c.busy.push((s, e));
    }
    d.finish()?;
    if c.areas.is_empty() {
        return Err(d.bad_at(at, "no shared area".into()));
    }
    Ok(c)
}

/// crfinfo's lines.
pub fn describe(c: &TreeCow) -> Vec<String> {
    let kib: u64 = c.areas.iter().map(|a| (a.end - a.start) / 1024).sum();
    let mut out =
        vec![format!("cow:       {} mappings ({kib} KiB) whose pages processes share since a fork", c.areas.len())];
    out.extend(c.areas.iter().map(|a| format!("  {:012x}-{:012x}", a.start, a.end)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_ones_refused() {
        let c = TreeCow {
            areas: vec![Area { start: 0x1000, end: 0x3000, noreserve: true }],
            busy: vec![(0x1000, 0x4000), (0x8000, 0x9000)],
        };
        assert_eq!(decode(&encode(&c), 0).unwrap(), c);
        let mut bad = c.clone();
        bad.areas.push(Area { start: 0x2000, end: 0x5000, noreserve: false });
        assert!(decode(&encode(&bad), 0).is_err());
        let mut bad = c.clone();
        bad.busy = vec![(0x8000, 0x9000), (0x1000, 0x2000)];
        assert!(decode(&encode(&bad), 0).is_err());
        let mut bad = c;
        bad.areas.clear();
        assert!(decode(&encode(&bad), 0).is_err());
    }
}
