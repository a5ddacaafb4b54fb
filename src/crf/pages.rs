//! Page batches: the `PAGES` section. One batch carries many runs of pages so that both sides
//! move page data with one vectored syscall per batch, never one per page.
//!
//! ```text
//! u32 nruns | u32 pad | nruns x { u64 addr | u32 npages | u32 flags } | pad zero bytes | data
//! ```
//! `pad` makes the data start on a page boundary of the stream (offset 0 = the preamble).

use super::{
    CrfError, Dec, Enc, FLAG_OPTIONAL, Input, PAGE_SIZE, Reader, Result, SECTION_HEADER_LEN, Section, Sink, Tag, Writer,
};
use std::io::{self, Write};

/// Run flag: the pages are a copy of the mapped file's content (not modified by the process).
/// A restore that maps the very same file skips them; one that cannot, writes them.
pub const RUN_FILE_COPY: u32 = 1;
/// Run flag (version 2): the pages are not in the image; the receiver of a live migration
/// holds them already, as sent while the process still ran, unchanged since. A run with this
/// flag has no data in the batch.
pub const RUN_KEPT: u32 = 2;
/// Run flag (version 3), only with RUN_KEPT: the source of a post-copy migration sends these
/// pages once the restored process runs (they are not held ahead: a page held ahead at the
/// same address is stale).
pub const RUN_LATER: u32 = 4;
/// Run flag (version 6), only with RUN_KEPT, in a mapping with VMA_KEPT_FIRST: pages a live
/// migration sent ahead of an earlier process of the image (the first that holds an area of
/// the mapping's range; since version 7, or a running checkpoint's PREPAGES hold), which this
/// process shares with it since a fork (the same pages at the source): the restore takes that
/// process's.
pub const RUN_SHARED: u32 = 8;
const RUN_FLAGS_KNOWN: u32 = RUN_FILE_COPY | RUN_KEPT | RUN_LATER | RUN_SHARED;

/// Section flag of a PREMEMBER (version 7; the first one's counts): the image's processes
/// share pages since a fork that it stores once (RUN_SHARED, in a running checkpoint's image):
/// a restore holds the pages copied ahead in memory, as a live migration's destination does,
/// for a process to take an earlier one's. (Bit 1: bit 0 is crf::FLAG_OPTIONAL.)
pub const PREMEMBER_HOLD: u32 = 2;

/// Most pages in one batch: 4 MiB of data.
pub const MAX_BATCH_PAGES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub addr: u64,
    pub npages: u32,
    pub flags: u32,
}

impl Run {
    pub fn len(&self) -> usize {
        self.npages as usize * PAGE_SIZE
    }
    pub fn is_empty(&self) -> bool {
        self.npages == 0
    }
    /// The bytes of data it has in its batch: none for a kept run.
    pub fn data_len(&self) -> usize {
        if self.flags & RUN_KEPT != 0 { 0 } else { self.len() }
    }
}

/// Writes one batch; `data` holds the pages of all runs, in order.
pub fn write_batch<W: Write>(w: &mut Writer<W>, runs: &[Run], data: &[u8]) -> io::Result<()> {
    let head = batch_head(w.offset(), runs);
    w.section(Tag::PAGES, 0, &[&head, data])
}

/// [`write_batch`], giving `data` to the output whole (see [`crate::crf::Sink`]); returns a
/// buffer the output is done with, if it has one.
pub fn give_batch<W: Sink>(w: &mut Writer<W>, runs: &[Run], data: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    give_batch_as(w, Tag::PAGES, runs, data)
}

/// [`give_batch`] as a section of `tag`: PAGES, or TREEPAGES (the same format).
pub fn give_batch_as<W: Sink>(w: &mut Writer<W>, tag: Tag, runs: &[Run], data: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    let head = batch_head(w.offset(), runs);
    w.section_given(tag, 0, &head, data)
}

/// [`give_batch`] of a batch whose data is `pieces` (see [`super::Piece`]), the Data ones in
/// `data`: held by a held Writer, assembled now by another.
pub fn batch_of_pieces<W: Write>(
    w: &mut Writer<W>,
    runs: &[Run],
    data: Vec<u8>,
    pieces: Vec<super::Piece>,
) -> io::Result<()> {
    let head = batch_head(w.offset(), runs);
    w.section_pieces(Tag::PAGES, 0, &head, data, pieces)
}

/// A batch's payload before its data: run count, padding, the runs, then padding that puts the
/// data on a page boundary of the stream (the section starts at stream offset `at`).
fn batch_head(at: u64, runs: &[Run]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(runs.len() as u32);
    e.u32(0); // pad, patched below
    for r in runs {
        e.u64(r.addr).u32(r.npages).u32(r.flags);
    }
    let data_at = at + SECTION_HEADER_LEN as u64 + e.len() as u64;
    let pad = (PAGE_SIZE as u64 - data_at % PAGE_SIZE as u64) % PAGE_SIZE as u64;
    let mut head = e.into_bytes();
    head[4..8].copy_from_slice(&(pad as u32).to_le_bytes());
    head.resize(head.len() + pad as usize, 0);
    head
}

/// A process's batches in address order (as ckpt writes them): each begins at or after the
/// end of the one before, so that no page comes twice and a restore may write them in any
/// order (in parallel).
#[derive(Default)]
pub struct InOrder(u64);

impl InOrder {
    /// Checks the next batch's `runs` (its section at stream offset `at`).
    pub fn next(&mut self, runs: &[Run], at: u64) -> Result<()> {
        if let Some(r) = runs.first().filter(|r| r.addr < self.0) {
            return Err(CrfError::Bad { offset: at, what: format!("a page batch goes back to {:#x}", r.addr) });
        }
        self.0 = runs.last().map_or(self.0, |r| r.addr + r.len() as u64);
        Ok(())
    }
}

/// The next run of a run table, checked: page-aligned, flags known and allowed together, at
/// or after `prev_end` (which it moves on), below 2^56.
fn next_run(d: &mut Dec, prev_end: &mut u64) -> Result<Run> {
    let at = d.offset();
    let run = Run { addr: d.u64()?, npages: d.u32()?, flags: d.u32()? };
    let end = run.addr.checked_add(run.npages as u64 * PAGE_SIZE as u64);
    let ok = run.addr.is_multiple_of(PAGE_SIZE as u64)
        && run.npages > 0
        && run.flags & !RUN_FLAGS_KNOWN == 0
        && (run.flags & RUN_FILE_COPY == 0 || run.flags & !RUN_KEPT == RUN_FILE_COPY) // (KEPT: version 12)
        && (run.flags & RUN_LATER == 0 || run.flags == RUN_KEPT | RUN_LATER)
        && (run.flags & RUN_SHARED == 0 || run.flags == RUN_KEPT | RUN_SHARED)
        && run.addr >= *prev_end
        && end.is_some_and(|e| e <= 1 << 56);
    if !ok {
        return Err(d.bad_at(at, format!("invalid page run {:#x}+{} pages", run.addr, run.npages)));
    }
    *prev_end = end.unwrap_or(0);
    Ok(run)
}

/// Writes a PAGEPLAN section (none above MAX_PLAN): the runs of each batch that follows, in
/// order, so that a reader
/// that may pass over data (a lazy restore from a file) knows where each batch lies without
/// reading one (a page of headers per MiB of image, scattered: on a disk, or a VM whose host
/// took back memory left alone, as slow as the rest of the restore).
///
/// ```text
/// u32 nbatches | u32 0 | nbatches x { u32 nruns | u32 0 | nruns x { u64 addr | u32 npages | u32 flags } }
/// ```
pub fn write_plan<W: Write>(w: &mut Writer<W>, batches: &[&[Run]]) -> io::Result<()> {
    let size = 8 + batches.iter().map(|b| 8 + 16 * b.len()).sum::<usize>();
    if size > MAX_PLAN {
        return Ok(());
    }
    let mut e = Enc::new();
    e.u32(batches.len() as u32).u32(0);
    for runs in batches {
        e.u32(runs.len() as u32).u32(0);
        for r in *runs {
            e.u64(r.addr).u32(r.npages).u32(r.flags);
        }
    }
    w.section(Tag::PAGEPLAN, FLAG_OPTIONAL, &[&e.into_bytes()])
}

/// A batch a PAGEPLAN announces: its runs, where its section begins (header included) and where
/// its data does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub runs: Vec<Run>,
    pub at: u64,
    pub data_at: u64,
    pub data_len: usize,
}

impl Planned {
    /// The batch, passed over: what checks it once its section is read (see
    /// [`Deferred::settle`]).
    pub fn deferred(&self) -> Deferred {
        Deferred {
            data_at: self.data_at,
            data_len: self.data_len,
            at: self.at + SECTION_HEADER_LEN as u64,
            crc: crc32fast::Hasher::new(),
            expect: 0,
            name: "PAGES",
            planned: Some(self.runs.clone()),
        }
    }
}

/// The largest PAGEPLAN written (4 MiB): some 170,000 batches, 170 GiB of memory in long runs;
/// a process whose plan would be larger goes without one (it is optional).
pub const MAX_PLAN: usize = 4 << 20;

/// A PAGEPLAN read, and the batches that follow it checked against it in turn.
pub struct Plan {
    /// Each batch where it lies, in order.
    pub batches: Vec<Planned>,
    /// Stream offset after the last.
    pub end: u64,
    /// The next batch to come.
    pub next: usize,
}

fn not_announced(offset: u64) -> CrfError {
    CrfError::Bad { offset, what: "a page batch is not the one the PAGEPLAN announced".into() }
}

impl Plan {
    /// Reads a PAGEPLAN payload (the section's payload at stream offset `at`), whose batches
    /// begin at stream offset `first` (the next section's). Each run is checked as a batch's
    /// run is; the batches go up in address order.
    pub fn read(payload: &[u8], at: u64, first: u64) -> Result<Plan> {
        let (batches, end) = read_plan(payload, at, first)?;
        Ok(Plan { batches, end, next: 0 })
    }

    /// The next batch announced, which section `sec` (its header just read) must be: where
    /// and as long as announced.
    pub fn place(&self, sec: &Section) -> Result<&Planned> {
        match self.batches.get(self.next) {
            Some(p)
                if p.at + SECTION_HEADER_LEN as u64 == sec.offset
                    && p.data_at + p.data_len as u64 == sec.offset + sec.len =>
            {
                Ok(p)
            }
            _ => Err(not_announced(sec.offset)),
        }
    }

    /// Batch section `sec`, whose run table is `runs`: the next one announced, the one after
    /// it next.
    pub fn came(&mut self, sec: &Section, runs: &[Run]) -> Result<()> {
        if self.place(sec)?.runs != runs {
            return Err(not_announced(sec.offset));
        }
        self.next += 1;
        Ok(())
    }

    /// Every batch announced came.
    pub fn finish(&self) -> Result<()> {
        match self.batches.get(self.next) {
            Some(p) => Err(CrfError::Bad {
                offset: p.at,
                what: "the PAGEPLAN announces a page batch that is not there".into(),
            }),
            None => Ok(()),
        }
    }
}

/// The length of a batch's payload before its data (see [`batch_head`]), for `nruns` runs,
/// its section at stream offset `at`.
fn head_len(at: u64, nruns: usize) -> u64 {
    let table = 8 + 16 * nruns as u64;
    let data_at = at + SECTION_HEADER_LEN as u64 + table;
    table + (PAGE_SIZE as u64 - data_at % PAGE_SIZE as u64) % PAGE_SIZE as u64
}

/// [`Plan::read`]'s batches and end.
fn read_plan(payload: &[u8], at: u64, first: u64) -> Result<(Vec<Planned>, u64)> {
    let mut d = Dec::new(payload, at, "PAGEPLAN");
    let n = d.u32()? as usize;
    let zero = |v: u32| match v {
        0 => Ok(()),
        _ => Err(CrfError::Bad { offset: at, what: "PAGEPLAN: a reserved field is not zero".into() }),
    };
    zero(d.u32()?)?;
    // Each batch takes at least 24 bytes of the payload (a run): a count beyond that is damage.
    if n > payload.len() / 24 {
        return Err(CrfError::Bad { offset: at, what: format!("PAGEPLAN of {n} batches in {} bytes", payload.len()) });
    }
    let mut out = Vec::with_capacity(n);
    let (mut off, mut prev_end) = (first, 0u64);
    for _ in 0..n {
        let nruns = d.u32()? as usize;
        zero(d.u32()?)?;
        if nruns == 0 || nruns > payload.len() / 16 {
            return Err(CrfError::Bad { offset: at, what: format!("PAGEPLAN: a batch of {nruns} runs") });
        }
        let mut runs = Vec::with_capacity(nruns);
        for _ in 0..nruns {
            runs.push(next_run(&mut d, &mut prev_end)?);
        }
        let data_len: usize = runs.iter().map(Run::data_len).sum();
        if data_len > MAX_BATCH_PAGES * PAGE_SIZE {
            return Err(CrfError::Bad { offset: at, what: format!("PAGEPLAN: a batch of {data_len} bytes") });
        }
        let data_at = off + SECTION_HEADER_LEN as u64 + head_len(off, runs.len());
        out.push(Planned { runs, at: off, data_at, data_len });
        off = data_at + data_len as u64;
    }
    d.finish()?;
    Ok((out, off))
}

/// A batch whose header has been read; its data is still in the stream.
pub struct Batch {
    pub runs: Vec<Run>,
    pub data_len: usize,
    crc: crc32fast::Hasher,
    expect: u32,
    at: u64,
}

/// Reads a batch's header (run table and padding) and checks it against the section length.
pub fn read_batch_header<R: Input>(r: &mut Reader<R>, sec: &Section) -> Result<Batch> {
    let mut fixed = [0u8; 8];
    r.read_exact_at(&mut fixed, "PAGES header")?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&fixed);
    let nruns = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]) as usize;
    let pad = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]) as usize;
    let table = nruns.checked_mul(16).filter(|t| (8 + *t + pad) as u64 <= sec.len);
    let (Some(table), true) = (table, pad < PAGE_SIZE) else {
        return Err(CrfError::Bad {
            offset: sec.offset,
            what: format!("PAGES section: {nruns} runs and {pad} bytes of padding do not fit"),
        });
    };
    let mut buf = vec![0u8; table + pad];
    r.read_exact_at(&mut buf, "PAGES run table")?;
    crc.update(&buf);
    let mut d = Dec::new(&buf[..table], sec.offset + 8, "PAGES");
    let mut runs = Vec::with_capacity(nruns);
    let mut pages: u64 = 0;
    let mut prev_end = 0u64;
    for _ in 0..nruns {
        let run = next_run(&mut d, &mut prev_end)?;
        pages += (run.data_len() / PAGE_SIZE) as u64;
        runs.push(run);
    }
    if buf[table..].iter().any(|&b| b != 0) {
        return Err(CrfError::Bad { offset: sec.offset + 8 + table as u64, what: "PAGES padding is not zero".into() });
    }
    let data_len = pages * PAGE_SIZE as u64;
    if 8 + (table + pad) as u64 + data_len != sec.len || pages as usize > MAX_BATCH_PAGES {
        return Err(CrfError::Bad {
            offset: sec.offset,
            what: format!("PAGES section: {pages} pages do not match its length {}", sec.len),
        });
    }
    Ok(Batch { runs, data_len: data_len as usize, crc, expect: sec.crc, at: sec.offset })
}

impl Batch {
    /// The batch's page data, checked against the CRC: borrowed from an in-memory image, or
    /// read into `buf` (at least `data_len` bytes).
    pub fn data<'b, R: Input>(mut self, r: &'b mut Reader<R>, buf: &'b mut [u8]) -> Result<&'b [u8]> {
        let d = r.data(buf, self.data_len, "PAGES data")?;
        self.crc.update(d);
        if self.crc.finalize() != self.expect {
            return Err(CrfError::Bad { offset: self.at, what: "PAGES section checksum mismatch".into() });
        }
        Ok(d)
    }
}

/// A batch whose data was passed over (see [`Batch::pass`]): where the data lies in the input,
/// and what checks it once read.
#[derive(Clone)]
pub struct Deferred {
    /// Stream offset of the first data byte.
    pub data_at: u64,
    pub data_len: usize,
    /// Stream offset of the section's payload (for errors).
    pub at: u64,
    crc: crc32fast::Hasher,
    expect: u32,
    /// The section's name, for errors.
    name: &'static str,
    /// A batch a PAGEPLAN announced, not read yet: its runs (see [`Deferred::settle`]).
    planned: Option<Vec<Run>>,
}

impl Deferred {
    /// Whether its section must be read first ([`Deferred::settle`]): a batch a PAGEPLAN
    /// announced. The bytes to read are at [`Deferred::header_at`], up to `data_at`.
    pub fn unsettled(&self) -> bool {
        self.planned.is_some()
    }

    /// Stream offset of the section's header.
    pub fn header_at(&self) -> u64 {
        self.at - SECTION_HEADER_LEN as u64
    }

    /// A batch a PAGEPLAN announced, its section header and payload up to the data read
    /// (`read`, from [`Deferred::header_at`]): it must be the very PAGES section announced,
    /// whose CRC then checks its data.
    pub fn settle(&mut self, read: &[u8]) -> Result<()> {
        let Some(runs) = self.planned.as_ref() else { return Ok(()) };
        // The payload before its data as it must be (made here, not for every batch passed
        // over: with its padding, a page each).
        let head = batch_head(self.header_at(), runs);
        let bad = |what: String| CrfError::Bad { offset: self.header_at(), what };
        let h: &[u8; SECTION_HEADER_LEN] = read
            .get(..SECTION_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("a planned batch's section header is cut short".into()))?;
        let (tag, _, len, crc) = super::parse_section_header(h, self.header_at())?;
        if tag != Tag::PAGES || len != (head.len() + self.data_len) as u64 || read[SECTION_HEADER_LEN..] != head[..] {
            return Err(bad("a page batch is not the one the PAGEPLAN announced".into()));
        }
        self.crc.update(&head);
        self.expect = crc;
        self.planned = None;
        Ok(())
    }

    /// Checks the batch's data, read later, against its CRC.
    pub fn check(&self, data: &[u8]) -> Result<()> {
        if self.planned.is_some() {
            return Err(CrfError::Bad {
                offset: self.at,
                what: "a planned batch checked before its section was read".into(),
            });
        }
        let mut crc = self.crc.clone();
        crc.update(data);
        if data.len() != self.data_len || crc.finalize() != self.expect {
            return Err(CrfError::Bad { offset: self.at, what: format!("{} section checksum mismatch", self.name) });
        }
        Ok(())
    }

    /// Section `sec` (named `name`) whose payload begins with `head`, already read; the rest,
    /// its data, passed over.
    pub fn after_head(sec: &Section, head: &[u8], name: &'static str) -> Deferred {
        let mut crc = crc32fast::Hasher::new();
        crc.update(head);
        Deferred {
            data_at: sec.offset + head.len() as u64,
            data_len: (sec.len as usize).saturating_sub(head.len()),
            at: sec.offset,
            crc,
            expect: sec.crc,
            name,
            planned: None,
        }
    }
}

impl Batch {
    /// Passes over the batch's data without reading it, where the input can (None if it
    /// cannot: the data is still to be read): what the data is checked with when read later.
    pub fn pass<R: Input>(&self, r: &mut Reader<R>) -> Result<Option<Deferred>> {
        let data_at = r.offset();
        if !r.pass(self.data_len as u64)? {
            return Ok(None);
        }
        Ok(Some(Deferred {
            data_at,
            data_len: self.data_len,
            at: self.at,
            crc: self.crc.clone(),
            expect: self.expect,
            name: "PAGES",
            planned: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held Writer whose batch data lies partly in a file writes, once released, the very
    /// bytes a Writer given all the data writes at once; the last page of a file whose size is
    /// not a multiple of pages reads as zeros past its end, as mapped; a file found shorter
    /// than a piece needs is refused.
    #[test]
    fn a_held_batch_reads_its_file_pieces_on_release() {
        use super::super::{FileSource, Piece};
        use std::sync::Arc;
        let path = std::env::temp_dir().join(format!("crs-held-pieces.{}", std::process::id()));
        let content: Vec<u8> = (0..2 * PAGE_SIZE + 100).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let src = |size: u64| {
            let file = std::fs::File::open(&path).unwrap();
            Arc::new(FileSource { file, name: path.display().to_string(), size })
        };
        let runs = [Run { addr: 0x1000, npages: 1, flags: 0 }, Run { addr: 0x10000, npages: 2, flags: RUN_FILE_COPY }];
        let anon: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 7) as u8).collect();
        // The file's second and third pages: the third ends 100 bytes in, then zeros.
        let mut whole = anon.clone();
        whole.extend_from_slice(&content[PAGE_SIZE..]);
        whole.resize(3 * PAGE_SIZE, 0);

        let mut direct = Writer::new(Vec::new()).unwrap();
        direct.section(Tag(1), 0, &[b"before"]).unwrap();
        write_batch(&mut direct, &runs, &whole).unwrap();
        direct.section(Tag(2), 0, &[b"after"]).unwrap();
        let direct = direct.finish().unwrap().0;

        let held_at_most = |size: u64, most: usize| {
            let mut w = Writer::new(Vec::new()).unwrap();
            w.hold(most);
            w.section(Tag(1), 0, &[b"before"]).unwrap();
            let pieces =
                vec![Piece::Data(PAGE_SIZE), Piece::File { src: src(size), pos: PAGE_SIZE as u64, len: 2 * PAGE_SIZE }];
            batch_of_pieces(&mut w, &runs, anon.clone(), pieces).unwrap();
            w.section(Tag(2), 0, &[b"after"]).unwrap();
            // Held, nothing is written yet but the preamble, every offset counted as if it were.
            assert_eq!(w.held_bytes() > PAGE_SIZE, most > 2 * PAGE_SIZE);
            w.finish().map(|(out, _)| out)
        };
        let held = |size: u64| held_at_most(size, 1 << 20);
        assert!(held(content.len() as u64).unwrap() == direct, "a held image differs from one written at once");
        // Held no more once it would keep more than it may: written then, the same.
        assert!(held_at_most(content.len() as u64, 0).unwrap() == direct, "an image released early differs");
        // Shrunk by a page since it was opened (the size it was opened with says more).
        std::fs::write(&path, &content[..PAGE_SIZE + 100]).unwrap();
        let e = held(content.len() as u64).expect_err("a file shorter than its pieces is refused");
        assert!(e.to_string().contains("changed"), "{e}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn batch_round_trip_and_alignment() {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.section(Tag(1), 0, &[b"x"]).unwrap();
        let runs = [Run { addr: 0x1000, npages: 2, flags: 0 }, Run { addr: 0x8000, npages: 1, flags: RUN_FILE_COPY }];
        let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        write_batch(&mut w, &runs, &data).unwrap();
        let img = w.finish().unwrap().0;

        let mut r = Reader::new(&img[..]).unwrap();
        let s = r.next_section().unwrap().unwrap();
        r.payload(&s, "X").unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert_eq!(s.tag, Tag::PAGES);
        let b = read_batch_header(&mut r, &s).unwrap();
        assert_eq!(b.runs, runs);
        assert_eq!(r.offset() % PAGE_SIZE as u64, 0, "page data must start on a page boundary");
        let mut buf = vec![0u8; b.data_len];
        assert_eq!(b.data(&mut r, &mut buf).unwrap(), &data[..]);
        assert!(r.next_section().unwrap().is_none());
    }

    #[test]
    fn overlapping_runs_are_refused() {
        let mut w = Writer::new(Vec::new()).unwrap();
        let runs = [Run { addr: 0x2000, npages: 2, flags: 0 }, Run { addr: 0x3000, npages: 1, flags: 0 }];
        write_batch(&mut w, &runs, &vec![0u8; 3 * PAGE_SIZE]).unwrap();
        let img = w.finish().unwrap().0;
        let mut r = Reader::new(&img[..]).unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert!(read_batch_header(&mut r, &s).is_err());
    }

    /// RUN_LATER goes with RUN_KEPT alone, and such a run has no data.
    #[test]
    fn runs_sent_later_are_kept_runs() {
        let header = |flags: u32| {
            let mut w = Writer::new(Vec::new()).unwrap();
            let runs = [Run { addr: 0x2000, npages: 2, flags }, Run { addr: 0x8000, npages: 1, flags: 0 }];
            write_batch(&mut w, &runs, &vec![0u8; PAGE_SIZE]).unwrap();
            let img = w.finish().unwrap().0;
            let mut r = Reader::new(&img[..]).unwrap();
            let s = r.next_section().unwrap().unwrap();
            read_batch_header(&mut r, &s).map(|b| b.data_len)
        };
        assert_eq!(header(RUN_KEPT | RUN_LATER).unwrap(), PAGE_SIZE);
        assert!(header(RUN_LATER).is_err());
        assert!(header(RUN_LATER | RUN_FILE_COPY).is_err());
        assert!(header(RUN_KEPT | RUN_LATER | RUN_FILE_COPY).is_err());
        assert_eq!(header(RUN_KEPT | RUN_SHARED).unwrap(), PAGE_SIZE);
        assert!(header(RUN_SHARED).is_err());
        assert!(header(RUN_KEPT | RUN_SHARED | RUN_LATER).is_err());
        // (Version 12) a file's unmodified pages sent ahead: no data either.
        assert_eq!(header(RUN_KEPT | RUN_FILE_COPY).unwrap(), PAGE_SIZE);
        assert!(header(RUN_KEPT | RUN_FILE_COPY | RUN_SHARED).is_err());
    }

    /// A PAGEPLAN says where each batch that follows lies, as the writer put it: a reader
    /// passes over them all at once, then reads each batch's section when it needs it and
    /// finds it the one announced, its data checked by the section's CRC.
    #[test]
    fn a_plan_places_each_batch_as_written() {
        let batches: Vec<Vec<Run>> = vec![
            vec![Run { addr: 0x1000, npages: 2, flags: 0 }, Run { addr: 0x8000, npages: 1, flags: RUN_KEPT }],
            vec![Run { addr: 0x9000, npages: 3, flags: 0 }],
            vec![Run { addr: 0x20000, npages: 1, flags: RUN_FILE_COPY }],
        ];
        let mut w = Writer::new(Vec::new()).unwrap();
        w.section(Tag(1), 0, &[b"x"]).unwrap();
        let refs: Vec<&[Run]> = batches.iter().map(|b| &b[..]).collect();
        write_plan(&mut w, &refs).unwrap();
        let mut datas = Vec::new();
        for (i, runs) in batches.iter().enumerate() {
            let n: usize = runs.iter().map(Run::data_len).sum();
            let data: Vec<u8> = (0..n).map(|k| (k % 253) as u8 ^ i as u8).collect();
            write_batch(&mut w, runs, &data).unwrap();
            datas.push(data);
        }
        w.section(Tag(2), 0, &[b"after"]).unwrap();
        let img = w.finish().unwrap().0;

        let mut r = Reader::new(&img[..]).unwrap();
        let s = r.next_section().unwrap().unwrap();
        r.payload(&s, "X").unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert_eq!((s.tag, s.flags), (Tag::PAGEPLAN, FLAG_OPTIONAL));
        let p = r.payload(&s, "PAGEPLAN").unwrap();
        let first = r.next_section().unwrap().unwrap();
        let (plan, end) = read_plan(&p, s.offset, first.offset - SECTION_HEADER_LEN as u64).unwrap();
        assert_eq!(plan.iter().map(|b| b.runs.clone()).collect::<Vec<_>>(), batches);
        // Passed over whole (the first batch's header is read already), the reader goes on
        // after the last batch, its count of sections kept.
        assert!(r.pass_sections(end, plan.len() as u64 - 1).unwrap());
        let after = r.next_section().unwrap().unwrap();
        assert_eq!(after.tag, Tag(2));
        r.payload(&after, "after").unwrap();
        assert!(r.next_section().unwrap().is_none(), "the trailer's count of sections");
        for (b, data) in plan.iter().zip(&datas) {
            let mut d = b.deferred();
            assert!(d.unsettled() && d.check(data).is_err());
            d.settle(&img[d.header_at() as usize..d.data_at as usize]).unwrap();
            d.check(data).unwrap();
            let mut bad = data.clone();
            if let Some(x) = bad.first_mut() {
                *x ^= 1;
                assert!(d.check(&bad).is_err());
            }
        }
        // Another section where a batch was announced is refused, and the batch stays
        // unchecked: its data is refused too.
        let mut d = plan[1].deferred();
        assert!(d.settle(&img[plan[0].at as usize..plan[0].data_at as usize]).is_err());
        assert!(d.unsettled() && d.check(&datas[1]).is_err());
        let mut reserved = p.clone();
        reserved[4] = 1;
        assert!(read_plan(&reserved, 0, 0).is_err());
        // So is a plan whose counts run past its payload.
        assert!(read_plan(&p[..p.len() - 4], 0, 0).is_err());
        let mut huge = p.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_plan(&huge, 0, 0).is_err());
    }
}
