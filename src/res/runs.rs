//! Runs of data in a sparse object (a memfd, a System V segment): read with
//! SEEK_DATA/SEEK_HOLE so that holes are never touched, and coded as (offset, bytes) pieces of
//! at most 1 MiB (a CRF byte field's limit), merged again when read back.

use crate::crf::{Dec, Enc, Result as CrfResult};
use crate::error::{Error, Result};
use nix::errno::Errno;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// (offset, data), in order, none overlapping; what no run covers reads as zeros.
pub type Run = (u64, Vec<u8>);

const CHUNK: usize = 1 << 20;

/// The runs of data of the first `size` bytes of `f` (named `link` in errors); `count` is told
/// each run's length before it is read, and may refuse.
pub fn read(f: &std::fs::File, size: u64, link: &str, count: &mut dyn FnMut(usize) -> Result<()>) -> Result<Vec<Run>> {
    let fd = f.as_raw_fd();
    let mut runs = Vec::new();
    let mut at = 0u64;
    while at < size {
        // SAFETY: lseek takes integers; SEEK_DATA/SEEK_HOLE only move this file's offset.
        let data = unsafe { libc::lseek(fd, at as i64, libc::SEEK_DATA) };
        if data < 0 {
            match Errno::last() {
                Errno::ENXIO => break, // only a hole is left
                e => return Err(Error::sys("lseek(SEEK_DATA)", link, e)),
            }
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(Error::sys("lseek(SEEK_HOLE)", link, Errno::last()));
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        if start >= end {
            break;
        }
        count((end - start) as usize)?;
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut buf, start).map_err(|e| Error::io(link, e))?;
        runs.push((start, buf));
        at = end;
    }
    Ok(runs)
}

/// The runs as pieces: a count, then (u64 offset, bytes) each.
pub fn encode(e: &mut Enc, runs: &[Run]) {
    let pieces: Vec<(u64, &[u8])> = runs
        .iter()
        .flat_map(|(at, d)| d.chunks(CHUNK).enumerate().map(move |(i, c)| (at + (i * CHUNK) as u64, c)))
        .collect();
    e.u32(pieces.len() as u32);
    for (at, c) in pieces {
        e.u64(at).bytes(c);
    }
}

/// The runs [`encode`] wrote, merged; None when a piece begins before the end of the one
/// before or ends past `size`.
pub fn decode(d: &mut Dec, size: u64) -> CrfResult<Option<Vec<Run>>> {
    let mut runs: Vec<Run> = Vec::new();
    let mut ok = true;
    for _ in 0..d.count(8 + 4)? {
        let (at, data) = (d.u64()?, d.bytes()?);
        let end = runs.last().map_or(0, |(s, v)| s + v.len() as u64);
        ok &= at >= end && at.checked_add(data.len() as u64).is_some_and(|e| e <= size);
        match runs.last_mut() {
            Some((s, v)) if *s + v.len() as u64 == at => v.extend_from_slice(data),
            _ => runs.push((at, data.to_vec())),
        }
    }
    Ok(ok.then_some(runs))
}

/// Bytes of data in `runs`.
pub fn len(runs: &[Run]) -> u64 {
    runs.iter().map(|r| r.1.len() as u64).sum()
}
