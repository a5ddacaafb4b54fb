//! Mapping flags read before the freeze. /proc/PID/smaps, the only place the kernel shows a
//! mapping's VmFlags and protection key, walks every page table to print them: 10 to 17 ms per
//! GiB in memory on the machines measured, which a migration would spend with the process
//! frozen. So a migration reads each process's smaps just before the freeze, while it runs
//! ([`FlagsLater::look`]); frozen, only its maps (boundaries, protections, offsets, names, at a
//! fraction of the cost), and a mapping the same in both takes its flags from the look before
//! ([`FlagsLater::frozen`]); any other difference, and the frozen smaps is read as before.
//!
//! A mapping whose flags changed in between without a change of its boundaries (madvise or
//! mlock of the whole of it) would go with the old ones: once the frozen processes have
//! answered our remote syscalls, their smaps is read again, beside the last look at a
//! pre-copy's pages and the writing of the image ([`FlagsLater::check`]), and
//! the caller waits for the comparison before the copy may run ([`FlagsLater::wait`]; a
//! migration, between the destination's Restored and its Commit). A difference fails the
//! migration by name, and the process runs on here as it was. A post-copy does not wait (for
//! a process of a GiB the comparison takes some 15 ms, most of the freeze), nor begin it
//! while frozen (on a node short of CPUs it slows the freeze as much): its copy runs, then
//! the comparison begins, and the source, frozen until the last page went, gives up and runs
//! on if the comparison fails before then ([`FlagsLater::done`]).

use crate::error::{Error, Result};
use crate::ptrace::procfs::{self, MapEntry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

#[derive(Default)]
struct State {
    /// A live migration's tracking: its own mark ("uw") is not the process's flag, in the look
    /// before as in the check (its ranges may change at the freeze: an area mapped afresh in
    /// between is not tracked any more).
    precopied: Option<super::precopy::Precopied>,
    /// Each process's smaps, read while it ran.
    before: HashMap<i32, Vec<MapEntry>>,
    /// The processes whose frozen mappings took their flags from `before`: what they took.
    taken: Vec<(i32, Vec<MapEntry>)>,
    /// The comparisons under way.
    checks: Vec<JoinHandle<Result<()>>>,
}

/// Flags taken before the freeze, and their checks (shared by the checkpoint and its caller).
#[derive(Clone, Default)]
pub struct FlagsLater(Arc<Mutex<State>>);

impl std::fmt::Debug for FlagsLater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlagsLater")
    }
}

/// Whether two lines of maps name the same mapping.
fn same(a: &MapEntry, b: &MapEntry) -> bool {
    (a.start, a.end, a.read, a.write, a.exec, a.shared, a.offset, a.dev, a.inode)
        == (b.start, b.end, b.read, b.write, b.exec, b.shared, b.offset, b.dev, b.inode)
        && a.name == b.name
}

/// The first mapping of `now` whose flags differ from those `taken` had, as a sentence.
fn differs(pid: i32, taken: &[MapEntry], now: &[MapEntry]) -> Option<String> {
    if taken.len() != now.len() {
        return Some(format!("pid {pid} has {} mappings, not the {} it had", now.len(), taken.len()));
    }
    taken.iter().zip(now).find(|(t, n)| !same(t, n) || t.vmflags != n.vmflags || t.pkey != n.pkey).map(|(t, n)| {
        format!(
            "pid {pid}'s mapping {:#x}-{:#x} changed as it was frozen (flags {} then {})",
            n.start,
            n.end,
            t.vmflags.join(" "),
            n.vmflags.join(" ")
        )
    })
}

fn lock(s: &Mutex<State>) -> Result<std::sync::MutexGuard<'_, State>> {
    s.lock().map_err(|_| Error::Proc("the look at the mapping flags failed".into()))
}

/// `pid`'s smaps, without the marks of a live migration's tracking.
fn read(pid: i32, precopied: Option<&super::precopy::Precopied>) -> Result<Vec<MapEntry>> {
    let mut m = procfs::read_smaps(pid)?;
    if let Some(p) = precopied {
        p.unmark(pid, &mut m)?;
    }
    Ok(m)
}

/// Reads `pid`'s smaps (frozen) and compares it with what was `taken`.
fn compare(pid: i32, taken: &[MapEntry], precopied: Option<&super::precopy::Precopied>) -> Result<()> {
    let now = read(pid, precopied)?;
    match differs(pid, taken, &now) {
        Some(d) => Err(Error::Refused(d)),
        None => Ok(()),
    }
}

impl FlagsLater {
    /// Reads the smaps of `pids` while they run (of a live migration, `precopied`: without
    /// the marks of its tracking). One that cannot be read is left out (the frozen one is
    /// read then).
    pub fn look(&self, pids: &[i32], precopied: Option<&super::precopy::Precopied>) -> Result<()> {
        let mut got = Vec::new();
        for &p in pids {
            if let Ok(m) = read(p, precopied) {
                got.push((p, m));
            }
        }
        let mut st = lock(&self.0)?;
        st.before.extend(got);
        st.precopied = precopied.cloned();
        Ok(())
    }

    /// The mappings of frozen `pid`, with the flags of the look before when every one is the
    /// same (untouched unknown: taken as touched); None when there was no look or one is not.
    pub fn frozen(&self, pid: i32) -> Result<Option<Vec<MapEntry>>> {
        let mut st = lock(&self.0)?;
        let Some(before) = st.before.remove(&pid) else { return Ok(None) };
        let mut now = procfs::read_maps(pid)?;
        if now.len() != before.len() || !now.iter().zip(&before).all(|(n, b)| same(n, b)) {
            return Ok(None);
        }
        for (n, b) in now.iter_mut().zip(&before) {
            n.vmflags = b.vmflags.clone();
            n.pkey = b.pkey;
            n.shares = b.shares;
        }
        st.taken.push((pid, now.clone()));
        Ok(Some(now))
    }

    /// Starts comparing the flags taken with the frozen processes' own. Called once nothing
    /// maps or unmaps in them any more (the checkpoint's remote syscalls are done).
    pub fn check(&self) -> Result<()> {
        let mut st = lock(&self.0)?;
        let taken = std::mem::take(&mut st.taken);
        if taken.is_empty() {
            return Ok(());
        }
        let precopied = st.precopied.clone();
        // One thread from here, which starts one per further process: a thread made by a
        // thread at crs's priority while processes are frozen takes that priority until it
        // lowers it, and seven made here took 2-4 ms of the freeze (a tree of postgres).
        let h = std::thread::Builder::new()
            .name("crs-vmflags".into())
            .spawn(move || {
                // At the usual priority, not crs's own while processes are frozen: it must
                // not hold up the image (nor, on one node, the restore), only be done
                // before the copy runs. (This thread alone: Linux's setpriority with 0
                // names the calling thread; those it makes take its own.)
                // SAFETY: setpriority takes integers; a failure leaves the nice as it was.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
                let mut taken = taken.into_iter();
                let first = taken.next();
                let others: Vec<_> = taken
                    .map(|(pid, maps)| {
                        let precopied = precopied.clone();
                        let spawned = std::thread::Builder::new()
                            .name("crs-vmflags".into())
                            .spawn(move || compare(pid, &maps, precopied.as_ref()));
                        spawned.map_err(|e| Error::io("a thread to check mapping flags", e))
                    })
                    .collect();
                let mut r = first.map_or(Ok(()), |(pid, maps)| compare(pid, &maps, precopied.as_ref()));
                for h in others {
                    let one = h.and_then(|h| {
                        h.join().unwrap_or_else(|_| Err(Error::Proc("checking mapping flags failed".into())))
                    });
                    r = r.and(one);
                }
                r
            })
            .map_err(|e| Error::io("a thread to check mapping flags", e))?;
        st.checks.push(h);
        Ok(())
    }

    /// Whether every comparison is over (then [`FlagsLater::wait`] returns at once).
    pub fn done(&self) -> bool {
        lock(&self.0).map_or(true, |st| st.taken.is_empty() && st.checks.iter().all(|h| h.is_finished()))
    }

    /// Waits for every comparison: Err names the first mapping whose flags changed. Flags
    /// taken whose comparison was not started are compared now.
    pub fn wait(&self) -> Result<()> {
        let (checks, taken, precopied) = {
            let mut st = lock(&self.0)?;
            (std::mem::take(&mut st.checks), std::mem::take(&mut st.taken), st.precopied.clone())
        };
        let mut r = Ok(());
        for h in checks {
            let one = h.join().unwrap_or_else(|_| Err(Error::Proc("checking mapping flags failed".into())));
            r = r.and(one);
        }
        for (pid, maps) in taken {
            r = r.and_then(|()| compare(pid, &maps, precopied.as_ref()));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, flags: &str) -> MapEntry {
        let mut m = procfs::parse_smaps(&format!("{start:x}-{:x} rw-p 00000000 00:00 0 \n", start + 0x1000)).unwrap()
            [0]
        .clone();
        m.vmflags = flags.split_whitespace().map(str::to_string).collect();
        m
    }

    #[test]
    fn a_flag_changed_is_named_and_the_same_ones_pass() {
        let before = vec![entry(0x1000, "rd wr mr mw me ac"), entry(0x10000, "rd wr mr mw me ac")];
        assert_eq!(differs(7, &before, &before.clone()), None);
        let mut now = before.clone();
        now[1].vmflags.push("hg".into());
        let d = differs(7, &before, &now).unwrap();
        assert!(d.contains("0x10000-0x11000") && d.contains("then rd wr mr mw me ac hg"), "{d}");
        assert!(differs(7, &before, &now[..1]).unwrap().contains("1 mappings, not the 2"));
    }
}
