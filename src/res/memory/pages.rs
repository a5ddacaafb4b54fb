//! PAGES: page contents, in batches. A checkpoint reads the present and swapped pages of
//! each mapping (pagemap) while it writes the last batch; a restore writes each batch into
//! the process as it arrives.

use super::vmas::*;
use crate::crf::pages::{self, RUN_FILE_COPY, Run};
use crate::crf::{PAGE_SIZE, Sink, Writer};
use crate::error::{Error, Result};
use crate::ptrace::mem;
use std::fs::File;
use std::os::unix::fs::FileExt;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Which pages of `v` go into the image, as (first page index, count, flags) runs. `ent` is a
/// buffer for the pagemap entries, kept from one mapping to the next (a process with many
/// threads has as many stacks).
fn page_runs(pagemap: &File, v: &Vma, ent: &mut Vec<u8>) -> Result<Vec<Run>> {
    if v.is_special() || (v.kind == KIND_FILE && v.flags & VMA_SHARED != 0) {
        return Ok(Vec::new());
    }
    let npages = (v.len() / PAGE_SIZE as u64) as usize;
    // For a file mapping: pages wholly past the end of the file cannot be read (SIGBUS).
    let file_pages = v.file.as_ref().map(|f| f.size.div_ceil(PAGE_SIZE as u64).saturating_sub(v.pgoff) as usize);
    let copy = v.flags & VMA_FILE_COPY != 0 && v.prot & libc::PROT_READ as u32 != 0;
    // Nothing in memory or swap: no page to store (shared memory is taken whole, a copied
    // file's pages come from the file).
    if v.untouched && v.kind != KIND_SHMEM && !copy {
        return Ok(Vec::new());
    }
    let mut runs: Vec<Run> = Vec::new();
    if ent.len() < 8 * npages.min(65536) {
        ent.resize(8 * npages.min(65536), 0);
    }
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

/// Pages per PAGES section written: 1 MiB. Big enough that per-batch costs vanish, small
/// enough that the buffers a stream passes through (two here, a few frames on each side of a
/// migration) cost little to fault in for a small process. The format allows up to
/// MAX_BATCH_PAGES.
const DUMP_BATCH_PAGES: usize = 256;

/// Splits the pages to store into batches of at most DUMP_BATCH_PAGES.
fn plan_batches(pid: i32, vmas: &[Vma]) -> Result<Vec<BatchPlan>> {
    let pm_path = format!("/proc/{pid}/pagemap");
    let pagemap = File::open(&pm_path).map_err(|e| Error::io(&pm_path, e))?;
    let mut out = Vec::new();
    let mut cur = BatchPlan { runs: Vec::new(), readable: Vec::new(), pages: 0 };
    let mut ent = Vec::new();
    for v in vmas {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        for mut r in page_runs(&pagemap, v, &mut ent)? {
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

/// Writes a batch's data to its targets (from [`batch_targets`]): contiguous data in one
/// process_vm_writev.
pub fn write_batch(pid: i32, targets: &[(u64, usize, usize)], data: &[u8]) -> Result<()> {
    let mut i = 0;
    while i < targets.len() {
        let start = targets[i].2;
        let mut j = i;
        let mut end = start;
        let mut iov = Vec::new();
        while j < targets.len() && targets[j].2 == end {
            iov.push((targets[j].0, targets[j].1));
            end += targets[j].1;
            j += 1;
        }
        mem::write_runs(pid, &iov, &data[start..end])?;
        i = j;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_outside_mappings_are_refused() {
        let plans = vec![Plan {
            reopen: None,
            vma: Vma { start: 0x1000, end: 0x3000, prot: 3, kind: KIND_ANON, ..Default::default() },
            from_file: false,
        }];
        assert!(batch_targets(&plans, &[Run { addr: 0x2000, npages: 1, flags: 0 }], 64).is_ok());
        assert!(batch_targets(&plans, &[Run { addr: 0x2000, npages: 2, flags: 0 }], 64).is_err());
        let e = batch_targets(&plans, &[Run { addr: 0x5000, npages: 1, flags: 0 }], 64).unwrap_err();
        assert!(e.to_string().contains("offset 64"), "{e}");
    }
}
