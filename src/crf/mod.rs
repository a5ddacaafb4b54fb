//! The CRF container: framing only (preamble, typed sections with CRC32, page batches, trailer).
//!
//! A CRF image is written strictly in order and read strictly in order, so it can go through a
//! pipe or a socket. Layout (all integers little-endian; man/crf.5 is the specification):
//!
//! ```text
//! preamble  "CRF\0" | u32 version | u32 arch | u32 crc32(first 12 bytes)
//! section*  u32 tag | u32 flags | u64 len | u32 crc32(payload) | u32 crc32(first 20 bytes) | payload
//! trailer   a section with tag END whose payload counts the sections and bytes before it
//! ```
//!
//! What a section's payload means is up to the resource that owns the tag (src/res/); this module
//! only frames it. Page data travels in `PAGES` sections whose data part starts on a page boundary
//! of the stream, so a file image can be read straight into place.
//!
//! The codec is pure: no syscalls, never panics on untrusted bytes, and never allocates more than
//! `MAX_SECTION` for one section.

mod codec;
pub mod pages;

pub use codec::{Dec, Enc, MAX_FIELD};

use std::fmt;
use std::io::{self, Read, Write};

pub const MAGIC: [u8; 4] = *b"CRF\0";
/// Bumped whenever the layout of any section changes; newer images are refused. Version 2
/// added kept page runs (pages::RUN_KEPT), version 3 kept runs sent later (pages::RUN_LATER),
/// version 4 pages copied before the freeze (PREAREAS, PREPAGES), version 5 those of each
/// process of a tree (PREMEMBER), version 6 kept runs of pages a tree's processes share
/// (pages::RUN_SHARED, memory::VMA_KEPT_FIRST), version 7 those in a running checkpoint's
/// image (pages::PREMEMBER_HOLD), version 8 a process's page batches announced before them
/// (PAGEPLAN, optional), so older images read as version 8; version 9 the tree's shared
/// memory copied before the freeze (PRESHM), and kept runs in its mappings; version 10
/// reservations mapped as they are (memory::VMA_EMPTY); version 11 epoll instances among the
/// descriptions several fds share (FDESCS), each registration listed by one holder, and the
/// states of TCP connections closed one way or both (TCPCONNS); version 12 kept runs in the
/// private file mappings whose pages a live migration sent ahead (memory::VMA_FILE_COPY: a
/// destination without the file).
pub const VERSION: u32 = 12;
/// The oldest version this crs reads.
pub const OLDEST: u32 = 1;
pub const ARCH_X86_64: u32 = 62; // ELF e_machine of x86_64
pub const PAGE_SIZE: usize = 4096;
pub const PREAMBLE_LEN: usize = 16;
pub const SECTION_HEADER_LEN: usize = 24;
/// Largest payload the reader accepts for one section (page batches are at most 4 MiB of data).
pub const MAX_SECTION: u64 = 64 << 20;

/// Section flag: a reader that does not know this tag may skip the section.
pub const FLAG_OPTIONAL: u32 = 1;

/// A section's tag: a number, whose meaning belongs to the resource that owns it (the
/// registry in src/res/image.rs). The container knows two: page batches and the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(pub u32);

impl Tag {
    /// A batch of page runs and their data (see `pages`).
    pub const PAGES: Tag = Tag(5);
    /// A batch of the pages processes of the tree share (same format as PAGES): between the
    /// first process's layout and its own batches (see res::treecow).
    pub const TREEPAGES: Tag = Tag(43);
    /// The private anonymous mappings whose pages a checkpoint copied while the process ran
    /// (an Areas frame of the migration protocol, see engine::precopy): before HEAD.
    pub const PREAREAS: Tag = Tag(44);
    /// Pages copied while the process ran (a Pages frame of the migration protocol): after
    /// the PREAREAS that holds them, before HEAD; a later one replaces an earlier page.
    pub const PREPAGES: Tag = Tag(45);
    /// The PREAREAS and PREPAGES that follow are of this process (u32 pid, as in the image);
    /// without any, of the first process.
    pub const PREMEMBER: Tag = Tag(46);
    /// The runs of each of the PAGES batches that follow it (see `pages::write_plan`): where
    /// each lies, without reading one of them. Optional.
    pub const PAGEPLAN: Tag = Tag(48);
    /// Pages of the tree's shared memory copied while the processes ran (a Shm frame of the
    /// migration protocol, see engine::shmahead): before the first HEAD.
    pub const PRESHM: Tag = Tag(49);
    /// The trailer.
    pub const END: Tag = Tag(0xffff_ffff);
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tag {:#x}", self.0)
    }
}

#[derive(Debug)]
pub enum CrfError {
    Io(io::Error),
    /// The stream ended in the middle of something.
    Truncated {
        offset: u64,
        what: String,
    },
    /// Bytes that do not make sense at this offset.
    Bad {
        offset: u64,
        what: String,
    },
}

impl fmt::Display for CrfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrfError::Io(e) => write!(f, "reading image: {e}"),
            CrfError::Truncated { offset, what } => {
                write!(f, "image truncated at offset {offset}: {what}")
            }
            CrfError::Bad { offset, what } => write!(f, "bad image at offset {offset}: {what}"),
        }
    }
}

impl std::error::Error for CrfError {}

pub type Result<T> = std::result::Result<T, CrfError>;

fn bad<T>(offset: u64, what: impl Into<String>) -> Result<T> {
    Err(CrfError::Bad { offset, what: what.into() })
}

/// Where an image is written. `give` hands over a buffer whole: an output that can send it as it
/// is (a migration's frames) takes it without a copy and may hand back one it is done with;
/// anything else writes it and hands it straight back.
pub trait Sink: Write {
    fn give(&mut self, data: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
        self.write_all(&data)?;
        Ok(Some(data))
    }
}

/// A buffer this large goes to the writer as it is, past the BufWriter's buffer: copied into
/// it, a batch of pages would cost a copy, and the page faults of the buffer's first use (0.3
/// ms of a checkpoint of `sleep`, whose last batch fills half of it).
const GIVEN_DIRECT: usize = 64 << 10;

impl<W: Write> Sink for io::BufWriter<W> {
    fn give(&mut self, data: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
        if data.len() >= GIVEN_DIRECT {
            self.flush()?;
            self.get_mut().write_all(&data)?;
        } else {
            self.write_all(&data)?;
        }
        Ok(Some(data))
    }
}
impl Sink for Vec<u8> {}

/// Writes an image in order: `Writer::new` emits the preamble, `section` each section, `finish`
/// the trailer. It counts bytes so page data can be aligned relative to the stream start.
///
/// Held ([`Writer::hold`]), it keeps the sections in memory instead, in order, and writes them
/// on [`Writer::release`]: a checkpoint whose process runs on writes its image once the
/// process runs again, and a held section's data may lie in part in a file still
/// ([`Piece::File`]: the unmodified pages of a mapped file, read from the file then), so that
/// they cost the frozen process nothing.
pub struct Writer<W: Write> {
    out: W,
    offset: u64,
    sections: u64,
    held: Option<Vec<Held>>,
    held_bytes: usize,
    held_max: usize,
}

/// A file some of a held section's bytes are read from once it is written, by the name it was
/// opened by (for errors).
pub struct FileSource {
    pub file: std::fs::File,
    pub name: String,
    /// Its size when opened: a piece may end past it only within its last page, which reads
    /// as zeros (as a mapping of it does).
    pub size: u64,
}

/// Where the data of a held section comes from, in order.
pub enum Piece {
    /// The next this many bytes of the section's data buffer.
    Data(usize),
    /// `len` bytes of a file from `pos`.
    File { src: std::sync::Arc<FileSource>, pos: u64, len: usize },
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Data(n) => *n,
            Piece::File { len, .. } => *len,
        }
    }
}

/// A section kept by a held Writer: its payload is `head`, then the pieces in order.
struct Held {
    tag: Tag,
    flags: u32,
    head: Vec<u8>,
    data: Vec<u8>,
    pieces: Vec<Piece>,
}

/// Fills `out` (the pieces' length) from `data` and the files.
fn assemble(data: &[u8], pieces: &[Piece], out: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let (mut from, mut at) = (0usize, 0usize);
    for p in pieces {
        let n = p.len();
        let dst = &mut out[at..at + n];
        match p {
            Piece::Data(_) => {
                dst.copy_from_slice(&data[from..from + n]);
                from += n;
            }
            Piece::File { src, pos, .. } => {
                let mut got = 0;
                while got < n {
                    match src.file.read_at(&mut dst[got..], pos + got as u64) {
                        Ok(0) => break,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", src.name))),
                    }
                }
                // Past the end of the file, within its last page: zeros, as mapped.
                let (end, page) = (pos + got as u64, PAGE_SIZE as u64);
                if got < n && (end != src.size || pos + n as u64 > src.size.div_ceil(page) * page) {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} ended at {end} while its pages up to {} were copied: it changed",
                            src.name,
                            pos + n as u64
                        ),
                    ));
                }
                dst[got..].fill(0);
            }
        }
        at += n;
    }
    Ok(())
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut pre = [0u8; PREAMBLE_LEN];
        pre[0..4].copy_from_slice(&MAGIC);
        pre[4..8].copy_from_slice(&VERSION.to_le_bytes());
        pre[8..12].copy_from_slice(&ARCH_X86_64.to_le_bytes());
        let crc = crc32fast::hash(&pre[0..12]);
        pre[12..16].copy_from_slice(&crc.to_le_bytes());
        out.write_all(&pre)?;
        Ok(Writer { out, offset: PREAMBLE_LEN as u64, sections: 0, held: None, held_bytes: 0, held_max: 0 })
    }

    /// Keeps every section from now on, until [`Writer::release`], or until they keep more
    /// than `most` bytes of memory: then they are written at once (their files read), and the
    /// sections that follow too.
    pub fn hold(&mut self, most: usize) {
        self.held.get_or_insert_with(Vec::new);
        self.held_max = most;
    }

    /// Keeps `h`, or writes all that is kept once it is too much.
    fn keep(&mut self, h: Held, memory: usize, len: u64) -> io::Result<()> {
        self.held_bytes += memory;
        if let Some(held) = self.held.as_mut() {
            held.push(h);
        }
        self.offset += SECTION_HEADER_LEN as u64 + len;
        self.sections += 1;
        match self.held_bytes > self.held_max {
            true => self.release(),
            false => Ok(()),
        }
    }

    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// The bytes of memory the sections held keep (not those left in files).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Whether it holds its sections and may keep `more` bytes of memory too.
    pub fn may_hold(&self, more: usize) -> bool {
        self.held.is_some() && self.held_bytes + more <= self.held_max
    }

    /// Writes the sections held, in order, each assembled (its files read), and holds no more.
    pub fn release(&mut self) -> io::Result<()> {
        let Some(held) = self.held.take() else { return Ok(()) };
        self.held_bytes = 0;
        let mut buf: Vec<u8> = Vec::new();
        for h in held {
            let len: usize = h.pieces.iter().map(Piece::len).sum();
            let payload: &[u8] = match h.pieces.as_slice() {
                [Piece::Data(_)] | [] => &h.data,
                _ => {
                    buf.resize(len, 0);
                    assemble(&h.data, &h.pieces, &mut buf)?;
                    &buf
                }
            };
            let mut crc = crc32fast::Hasher::new();
            crc.update(&h.head);
            crc.update(payload);
            let total = (h.head.len() + payload.len()) as u64;
            self.out.write_all(&section_header(h.tag.0, h.flags, total, crc.finalize()))?;
            self.out.write_all(&h.head)?;
            self.out.write_all(payload)?;
        }
        Ok(())
    }

    /// Writes (or holds) a section whose payload is `head` then the `pieces`, whose Data
    /// pieces are in `data` in order; a section not held is assembled now.
    pub fn section_pieces(
        &mut self,
        tag: Tag,
        flags: u32,
        head: &[u8],
        data: Vec<u8>,
        pieces: Vec<Piece>,
    ) -> io::Result<()> {
        let len: usize = pieces.iter().map(Piece::len).sum();
        if self.held.is_none() {
            let mut whole = vec![0u8; len];
            assemble(&data, &pieces, &mut whole)?;
            return self.section(tag, flags, &[head, &whole]);
        }
        let memory = head.len() + data.len();
        self.keep(Held { tag, flags, head: head.to_vec(), data, pieces }, memory, (head.len() + len) as u64)
    }

    /// Stream offset of the next byte to be written.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Writes one section whose payload is the concatenation of `parts`.
    pub fn section(&mut self, tag: Tag, flags: u32, parts: &[&[u8]]) -> io::Result<()> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if self.held.is_some() {
            let payload = parts.concat();
            let h = Held { tag, flags, head: Vec::new(), pieces: vec![Piece::Data(payload.len())], data: payload };
            return self.keep(h, len as usize, len);
        }
        let mut crc = crc32fast::Hasher::new();
        for p in parts {
            crc.update(p);
        }
        let hdr = section_header(tag.0, flags, len, crc.finalize());
        self.out.write_all(&hdr)?;
        for p in parts {
            self.out.write_all(p)?;
        }
        self.offset += SECTION_HEADER_LEN as u64 + len;
        self.sections += 1;
        Ok(())
    }

    /// Writes one section whose payload is `head` then `data`, giving `data` to the output
    /// whole (see [`Sink`]); returns a buffer the output is done with, if it has one.
    pub fn section_given(&mut self, tag: Tag, flags: u32, head: &[u8], data: Vec<u8>) -> io::Result<Option<Vec<u8>>>
    where
        W: Sink,
    {
        let len = (head.len() + data.len()) as u64;
        if self.held.is_some() {
            let h = Held { tag, flags, head: head.to_vec(), pieces: vec![Piece::Data(data.len())], data };
            return self.keep(h, len as usize, len).map(|_| None);
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(head);
        crc.update(&data);
        self.out.write_all(&section_header(tag.0, flags, len, crc.finalize()))?;
        self.out.write_all(head)?;
        let back = self.out.give(data)?;
        self.offset += SECTION_HEADER_LEN as u64 + len;
        self.sections += 1;
        Ok(back)
    }

    /// Pushes what is written on to the reader (a frame to restartd, a pipe to rstrt).
    pub fn flush(&mut self) -> io::Result<()> {
        match self.held {
            Some(_) => Ok(()),
            None => self.out.flush(),
        }
    }

    /// Writes the trailer and flushes; returns the inner writer and the image size in bytes.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.release()?;
        let mut e = Enc::new();
        e.u64(self.sections);
        e.u64(self.offset);
        let payload = e.into_bytes();
        self.section(Tag::END, 0, &[&payload])?;
        self.out.flush()?;
        Ok((self.out, self.offset))
    }
}

/// A section header read apart from a Reader (at stream offset `at`): its tag, flags, length
/// and payload CRC, once its own checksum is checked.
pub fn parse_section_header(h: &[u8; SECTION_HEADER_LEN], at: u64) -> Result<(Tag, u32, u64, u32)> {
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if crc32fast::hash(&h[0..20]) != word(20) {
        return bad(at, "section header checksum mismatch");
    }
    let len = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Ok((Tag(word(0)), word(4), len, word(16)))
}

fn section_header(tag: u32, flags: u32, len: u64, crc: u32) -> [u8; SECTION_HEADER_LEN] {
    let mut h = [0u8; SECTION_HEADER_LEN];
    h[0..4].copy_from_slice(&tag.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&len.to_le_bytes());
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&hcrc.to_le_bytes());
    h
}

/// Where an image is read from: any stream, or bytes already in memory (a mapped image file,
/// a received frame), from which page data is borrowed instead of copied.
pub trait Input: Read {
    /// Whether the next `n` bytes are in memory in one piece, so that `borrow` can hand them
    /// out. It may read ahead to find out (the next frame of a network stream).
    fn can_borrow(&mut self, _n: usize) -> io::Result<bool> {
        Ok(false)
    }
    /// The next `n` bytes, consumed without a copy, once `can_borrow(n)` said yes.
    fn borrow(&mut self, _n: usize) -> Option<&[u8]> {
        None
    }
    /// Whether what `borrow` hands out stays valid and unchanged as long as the memory the
    /// input reads from (a slice that outlives the reader), not only until the next read.
    fn lasting(&self) -> bool {
        false
    }
    /// Passes over the next `n` bytes without reading them, if the input can (a seekable
    /// file, bytes in memory): Ok(false) when it cannot, and nothing was consumed.
    fn pass(&mut self, _n: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// The `len` bytes at stream offset `off`, read or not, where the whole image lies in
    /// memory that outlives the reader ([`Whole`]); None elsewhere.
    fn window(&self, _off: u64, _len: usize) -> Option<&[u8]> {
        None
    }
    /// Reads `buf.len()` bytes at stream offset `off`, without moving on, where the input can
    /// (a file, bytes in memory): Ok(false) when it cannot.
    fn read_at(&self, _off: u64, _buf: &mut [u8]) -> io::Result<bool> {
        Ok(false)
    }
}

/// A whole image in memory (a mapped image file), read from its start: [`Input::window`]
/// reaches back to any part of it.
pub struct Whole<'a> {
    all: &'a [u8],
    at: usize,
}

impl<'a> Whole<'a> {
    pub fn new(all: &'a [u8]) -> Whole<'a> {
        Whole { all, at: 0 }
    }
}

impl Read for Whole<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&self.all[self.at..]).read(buf)?;
        self.at += n;
        Ok(n)
    }
}

impl Input for Whole<'_> {
    fn can_borrow(&mut self, n: usize) -> io::Result<bool> {
        Ok(n <= self.all.len() - self.at)
    }
    fn borrow(&mut self, n: usize) -> Option<&[u8]> {
        let b = self.all.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(b)
    }
    fn lasting(&self) -> bool {
        true
    }
    fn pass(&mut self, n: u64) -> io::Result<bool> {
        match usize::try_from(n).ok().filter(|&n| n <= self.all.len() - self.at) {
            Some(n) => {
                self.at += n;
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn window(&self, off: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(off).ok()?;
        self.all.get(off..off.checked_add(len)?)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<bool> {
        match self.window(off, buf.len()) {
            Some(w) => {
                buf.copy_from_slice(w);
                Ok(true)
            }
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }
}

impl Input for &[u8] {
    fn pass(&mut self, n: u64) -> io::Result<bool> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > self.len() {
            return Ok(false);
        }
        *self = &self[n..];
        Ok(true)
    }
    fn lasting(&self) -> bool {
        true
    }
    fn can_borrow(&mut self, n: usize) -> io::Result<bool> {
        Ok(n <= self.len())
    }
    fn borrow(&mut self, n: usize) -> Option<&[u8]> {
        let all: &[u8] = self;
        if n > all.len() {
            return None;
        }
        let (head, tail) = all.split_at(n);
        *self = tail;
        Some(head)
    }
}

impl<T: Input + ?Sized> Input for &mut T {
    fn can_borrow(&mut self, n: usize) -> io::Result<bool> {
        (**self).can_borrow(n)
    }
    fn borrow(&mut self, n: usize) -> Option<&[u8]> {
        (**self).borrow(n)
    }
    fn lasting(&self) -> bool {
        (**self).lasting()
    }
    fn pass(&mut self, n: u64) -> io::Result<bool> {
        (**self).pass(n)
    }
    fn window(&self, off: u64, len: usize) -> Option<&[u8]> {
        (**self).window(off, len)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<bool> {
        (**self).read_at(off, buf)
    }
}

/// A file read through a buffer, whose bytes a reader may pass over without reading them
/// (rstrt --lazy reads a process's pages later, as it touches them).
pub struct Seekable<R: Read + io::Seek>(pub io::BufReader<R>);

impl<R: Read + io::Seek> Read for Seekable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + io::Seek + std::os::unix::fs::FileExt> Input for Seekable<R> {
    fn pass(&mut self, n: u64) -> io::Result<bool> {
        let n = i64::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.0.seek_relative(n)?;
        Ok(true)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<bool> {
        // (pread: the file's position, and what the buffer holds, stay.)
        self.0.get_ref().read_exact_at(buf, off)?;
        Ok(true)
    }
}

/// Any reader (a pipe, a socket, a buffered file) as an image input.
pub struct Stream<R>(pub R);

impl<R: Read> Read for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Input for Stream<R> {}

/// A section header as read, with the stream offset of its payload.
#[derive(Clone, Copy, Debug)]
pub struct Section {
    pub tag: Tag,
    pub flags: u32,
    pub len: u64,
    pub crc: u32,
    /// Stream offset of the first payload byte.
    pub offset: u64,
}

/// Reads an image in order. `next_section` yields section headers; the caller then reads the payload with
/// `payload` (checked against its CRC) or, for page batches, with the `pages` helpers.
pub struct Reader<R: Input> {
    inp: R,
    /// The image's format version (its preamble's).
    version: u32,
    offset: u64,
    sections: u64,
    done: bool,
}

impl<R: Input> Reader<R> {
    /// Reads and checks the preamble: magic, version and architecture.
    pub fn new(mut inp: R) -> Result<Self> {
        let mut pre = [0u8; PREAMBLE_LEN];
        read_full(&mut inp, &mut pre, 0, "preamble")?;
        if pre[0..4] != MAGIC {
            return bad(0, "not a CRF image (magic is not \"CRF\\0\")");
        }
        let crc = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]);
        if crc32fast::hash(&pre[0..12]) != crc {
            return bad(12, "preamble checksum mismatch");
        }
        let version = u32::from_le_bytes([pre[4], pre[5], pre[6], pre[7]]);
        if !(OLDEST..=VERSION).contains(&version) {
            return bad(
                4,
                format!(
                    "CRF format version {version} is not supported (this crs reads versions {OLDEST} to \
                     {VERSION}); use the crs release that wrote the image"
                ),
            );
        }
        let arch = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]);
        if arch != ARCH_X86_64 {
            return bad(8, format!("image is for architecture {arch} (ELF machine), this is x86_64"));
        }
        Ok(Reader { inp, version, offset: PREAMBLE_LEN as u64, sections: 0, done: false })
    }

    /// The format version the image was written in.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next section header, whatever its tag (what a tag means, and whether an unknown
    /// one may be skipped, is the caller's business). After the trailer has been read and
    /// checked, returns `None`.
    pub fn next_section(&mut self) -> Result<Option<Section>> {
        if self.done {
            return Ok(None);
        }
        let start = self.offset;
        let mut h = [0u8; SECTION_HEADER_LEN];
        read_full(&mut self.inp, &mut h, start, "section header (no trailer)")?;
        self.offset += SECTION_HEADER_LEN as u64;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if crc32fast::hash(&h[0..20]) != word(20) {
            return bad(start, "section header checksum mismatch");
        }
        let raw_tag = word(0);
        let flags = word(4);
        let len = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        let crc = word(16);
        if len > MAX_SECTION {
            return bad(start, format!("section length {len} exceeds the limit {MAX_SECTION}"));
        }
        let tag = Tag(raw_tag);
        let sec = Section { tag, flags, len, crc, offset: self.offset };
        if tag == Tag::END {
            let payload = self.payload(&sec, "END")?;
            let mut d = Dec::new(&payload, sec.offset, "END");
            let n = d.u64()?;
            let bytes = d.u64()?;
            d.finish()?;
            if n != self.sections || bytes != start {
                return bad(
                    sec.offset,
                    format!("trailer says {n} sections and {bytes} bytes, read {} and {start}", self.sections),
                );
            }
            self.done = true;
            return Ok(None);
        }
        self.sections += 1;
        Ok(Some(sec))
    }

    /// Reads a whole (small) section payload and checks its CRC; `name` names the section in
    /// errors.
    pub fn payload(&mut self, sec: &Section, name: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; sec.len as usize];
        self.read_exact_at(&mut buf, name)?;
        if crc32fast::hash(&buf) != sec.crc {
            return bad(sec.offset, format!("{name} section checksum mismatch"));
        }
        Ok(buf)
    }

    /// Passes over a section a reader has no use for (an optional one it does not know),
    /// checking its CRC all the same.
    pub fn skip(&mut self, sec: &Section) -> Result<()> {
        self.skip_checked(sec.len, sec.crc, sec.offset)
    }

    /// Whether data borrowed from the input stays valid as long as the input's memory (see
    /// [`Input::lasting`]).
    pub fn lasting(&self) -> bool {
        self.inp.lasting()
    }

    /// The next `n` payload bytes: borrowed where the input holds them in memory, otherwise
    /// read into `buf`.
    pub fn data<'b>(&'b mut self, buf: &'b mut [u8], n: usize, what: &str) -> Result<&'b [u8]> {
        let at = self.offset;
        if self.inp.can_borrow(n).map_err(CrfError::Io)? {
            self.offset += n as u64;
            return self
                .inp
                .borrow(n)
                .ok_or_else(|| CrfError::Truncated { offset: at, what: format!("expected {n} bytes of {what}") });
        }
        let room = buf.len();
        let Some(buf) = buf.get_mut(..n) else {
            return bad(at, format!("{n} bytes of {what} do not fit a buffer of {room}"));
        };
        self.read_exact_at(buf, what)?;
        Ok(buf)
    }

    /// See [`Input::window`].
    pub fn window(&self, off: u64, len: usize) -> Option<&[u8]> {
        self.inp.window(off, len)
    }

    /// See [`Input::read_at`].
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<bool> {
        self.inp.read_at(off, buf)
    }

    /// Passes over the next `n` payload bytes, unread and unchecked (the caller checks them
    /// when it reads them later): Ok(false), nothing consumed, if the input cannot.
    pub fn pass(&mut self, n: u64) -> Result<bool> {
        if !self.inp.pass(n).map_err(CrfError::Io)? {
            return Ok(false);
        }
        self.offset += n;
        Ok(true)
    }

    /// Passes over everything up to stream offset `to` (at or after this one), which holds
    /// `sections` whole sections the caller knows of (and checks when it reads them later):
    /// Ok(false), nothing consumed, if the input cannot.
    pub fn pass_sections(&mut self, to: u64, sections: u64) -> Result<bool> {
        let Some(n) = to.checked_sub(self.offset) else {
            return bad(self.offset, format!("passing back to offset {to}"));
        };
        if !self.pass(n)? {
            return Ok(false);
        }
        self.sections += sections;
        Ok(true)
    }

    /// Reads raw payload bytes (the caller checks the CRC).
    pub fn read_exact_at(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        read_full(&mut self.inp, buf, self.offset, what)?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn skip_checked(&mut self, mut len: u64, crc: u32, start: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        let mut h = crc32fast::Hasher::new();
        while len > 0 {
            let n = len.min(buf.len() as u64) as usize;
            self.read_exact_at(&mut buf[..n], "skipped section")?;
            h.update(&buf[..n]);
            len -= n as u64;
        }
        if h.finalize() != crc {
            return bad(start, "skipped section checksum mismatch");
        }
        Ok(())
    }

    /// True once the trailer has been read and matched.
    pub fn complete(&self) -> bool {
        self.done
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(CrfError::Truncated {
                    offset: offset + got as u64,
                    what: format!("expected {} more bytes of {what}", buf.len() - got),
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CrfError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.section(Tag(1), 0, &[b"hello", b" world"]).unwrap();
        w.section(Tag(9), 0, &[b"/tmp"]).unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn round_trip() {
        let img = image();
        let mut r = Reader::new(&img[..]).unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert_eq!(s.tag, Tag(1));
        assert_eq!(r.payload(&s, "X").unwrap(), b"hello world");
        let s = r.next_section().unwrap().unwrap();
        assert_eq!(s.tag, Tag(9));
        assert_eq!(r.payload(&s, "X").unwrap(), b"/tmp");
        assert!(r.next_section().unwrap().is_none());
        assert!(r.complete());
    }

    /// Every single-byte corruption and every truncation is detected, never a panic.
    #[test]
    fn every_flip_and_cut_is_refused() {
        let img = image();
        let read_all = |b: &[u8]| -> Result<()> {
            let mut r = Reader::new(b)?;
            while let Some(s) = r.next_section()? {
                r.payload(&s, "X")?;
            }
            Ok(())
        };
        for i in 0..img.len() {
            let mut b = img.clone();
            b[i] ^= 0x40;
            assert!(read_all(&b).is_err(), "flip at {i} accepted");
        }
        for cut in 0..img.len() {
            assert!(read_all(&img[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn future_version_is_refused_clearly() {
        let mut img = image();
        let with_version = |img: &mut Vec<u8>, v: u32| {
            img[4..8].copy_from_slice(&v.to_le_bytes());
            let crc = crc32fast::hash(&img[0..12]);
            img[12..16].copy_from_slice(&crc.to_le_bytes());
        };
        with_version(&mut img, VERSION + 1);
        let e = Reader::new(&img[..]).err().unwrap().to_string();
        assert!(e.contains(&format!("version {} is not supported", VERSION + 1)), "{e}");
        // Version 1 is version 2 without kept runs: still read.
        with_version(&mut img, 1);
        let mut r = Reader::new(&img[..]).unwrap();
        while let Some(s) = r.next_section().unwrap() {
            r.payload(&s, "X").unwrap();
        }
        assert!(r.complete());
        with_version(&mut img, 0);
        assert!(Reader::new(&img[..]).is_err());
    }

    #[test]
    fn any_tag_is_framed_and_can_be_skipped() {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.section(Tag(0x1234), FLAG_OPTIONAL, &[b"abc"]).unwrap();
        w.section(Tag(1), 0, &[b"x"]).unwrap();
        let v = w.finish().unwrap().0;
        let mut r = Reader::new(&v[..]).unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert_eq!((s.tag, s.flags), (Tag(0x1234), FLAG_OPTIONAL));
        r.skip(&s).unwrap();
        let s = r.next_section().unwrap().unwrap();
        assert_eq!(r.payload(&s, "ONE").unwrap(), b"x");
        assert!(r.next_section().unwrap().is_none() && r.complete());
    }
}
