//! Address-space surgery on the restore child before the image's memory goes in: where the
//! gadget may go, what to unmap of what the child inherited, and moving this kernel's
//! vdso/vvar to where the image had them.

use crate::crf::PAGE_SIZE;
use crate::error::{Error, Result};
use crate::ptrace::procfs::MapEntry;
use crate::ptrace::{Ctl, RemoteAddr};
use crate::res::memory;

/// The fewest ranges that cover every range of `used` and nothing of `keep` (disjoint ranges of
/// one process's mappings, in any order).
pub fn stretches(used: &[(u64, u64)], keep: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut used = used.to_vec();
    used.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in used {
        // Merge with the previous stretch unless something to keep lies between them.
        if let Some(last) = out.last_mut()
            && !keep.iter().any(|&(ks, ke)| ks < s && ke > last.1)
        {
            last.1 = last.1.max(e);
            continue;
        }
        out.push((s, e));
    }
    out
}

/// The parts of sorted ranges `a` not in sorted ranges `b`.
pub fn minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut s, e) in a {
        for &(bs, be) in b {
            if be <= s || bs >= e {
                continue;
            }
            if bs > s {
                out.push((s, bs.min(e)));
            }
            s = s.max(be);
            if s >= e {
                break;
            }
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// The parts of sorted, apart ranges `a` that lie in sorted, apart ranges `b` too.
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 <= b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The lowest gap of `len` bytes (plus a guard page each side) above 1 MiB that avoids all
/// `ranges`.
pub fn find_free(ranges: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut r: Vec<(u64, u64)> = ranges.to_vec();
    r.sort_unstable();
    let guard = PAGE_SIZE as u64;
    let mut cand = 1u64 << 20;
    for &(s, e) in &r {
        if e + guard <= cand {
            continue;
        }
        if cand + len + guard <= s {
            return Some(cand);
        }
        cand = cand.max(e + guard);
    }
    (cand + len < 0x7fff_0000_0000).then_some(cand)
}

/// Moves this kernel's vdso/vvar mappings in the child to where the image had them (or removes
/// them when the image had none). `plan` has already checked they are the same kind and size.
pub fn move_specials(c: &mut Ctl, child: &[MapEntry], vmas: &[memory::Vma], avoid: &[(u64, u64)]) -> Result<()> {
    let mine: Vec<&MapEntry> = child.iter().filter(|m| m.is_vdso_or_vvar()).collect();
    if !vmas.iter().any(|v| v.is_special()) {
        for m in mine {
            c.munmap(RemoteAddr(m.start), m.len(), &m.name)?;
        }
        return Ok(());
    }
    for (from, to, len, name) in special_moves(child, vmas, avoid)? {
        c.mremap_to(RemoteAddr(from), len, RemoteAddr(to), &name)?;
    }
    Ok(())
}

/// The mremaps, in order, that take the vdso/vvar mappings of `maps` (a process's) to where
/// the image's `vmas` have them: first out of the way (clear of `avoid` and of the places)
/// when a place overlaps one of them, then into place. (from, to, len, name).
pub fn special_moves(
    maps: &[MapEntry],
    vmas: &[memory::Vma],
    avoid: &[(u64, u64)],
) -> Result<Vec<(u64, u64, u64, String)>> {
    let mine: Vec<&MapEntry> = maps.iter().filter(|m| m.is_vdso_or_vvar()).collect();
    let want: Vec<&memory::Vma> = vmas.iter().filter(|v| v.is_special()).collect();
    let moves: Vec<(u64, u64, u64, String)> = want
        .iter()
        .filter_map(|v| mine.iter().find(|m| m.name == v.name).map(|m| (m.start, v.start, v.len(), m.name.clone())))
        .filter(|(from, to, _, _)| from != to)
        .collect();
    let overlap = moves.iter().any(|(_, to, len, _)| mine.iter().any(|m| m.start < to + len && *to < m.end));
    if !overlap {
        return Ok(moves);
    }
    let mut all = avoid.to_vec();
    all.extend(want.iter().map(|v| (v.start, v.end)));
    let total: u64 = moves.iter().map(|m| m.2 + PAGE_SIZE as u64).sum();
    let mut tmp = find_free(&all, total).ok_or_else(|| Error::Refused("no room to move the vdso".into()))?;
    let mut out = Vec::with_capacity(2 * moves.len());
    let mut second = Vec::with_capacity(moves.len());
    for (from, to, len, name) in moves {
        out.push((from, tmp, len, name.clone()));
        second.push((tmp, to, len, name));
        tmp += len + PAGE_SIZE as u64;
    }
    out.extend(second);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretches_go_around_what_stays() {
        let used = [(0x1000, 0x2000), (0x3000, 0x5000), (0x9000, 0xa000), (0xc000, 0xd000)];
        let keep = [(0x6000, 0x7000), (0xb000, 0xc000)];
        assert_eq!(stretches(&used, &keep), vec![(0x1000, 0x5000), (0x9000, 0xa000), (0xc000, 0xd000)]);
        assert_eq!(stretches(&used, &[]), vec![(0x1000, 0xd000)]);
        assert_eq!(stretches(&[], &keep), vec![]);
    }

    #[test]
    fn intersection_of_ranges() {
        let a = [(0x1000, 0x5000), (0x8000, 0xa000)];
        let b = [(0x0, 0x2000), (0x3000, 0x9000), (0xa000, 0xb000)];
        assert_eq!(intersect(&a, &b), vec![(0x1000, 0x2000), (0x3000, 0x5000), (0x8000, 0x9000)]);
        assert_eq!(intersect(&a, &[]), vec![]);
    }

    #[test]
    fn free_gap() {
        let r = [(0x100000, 0x200000), (0x201000, 0x300000)];
        assert_eq!(find_free(&r, 0x1000), Some(0x301000));
        assert_eq!(find_free(&[(0x400000, 0x500000)], 0x1000), Some(0x100000));
    }
}
