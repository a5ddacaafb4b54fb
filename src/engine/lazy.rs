//! Lazy restore (rstrt --lazy): the processes run before their memory is all in place. The
//! pages of their private anonymous mappings stay in the image file until a process touches
//! one (a userfaultfd missing-page fault, answered with UFFDIO_COPY) or the server thread
//! copies it in the background; rstrt goes on once every page is in.
//!
//! Each process gets a userfaultfd for its own mm, made inside it while it still has rstrt's
//! privileges (faults raised inside system calls, and the fork event, need CAP_SYS_PTRACE) and
//! taken out ([`uffd_of`]). Its mappings with pages left in the image are registered for
//! missing pages once its other pages are written ([`Server::add`]); from then on the server
//! answers every fault, so the rest of the restore may touch that memory (rseq, mlock) just as
//! the process will.
//!
//! What a process does to that memory meanwhile is followed through the userfaultfd's events:
//! a fork (the child's userfaultfd comes with the event; the child lacks what its parent
//! lacked), mremap (the pages not yet in move with the mapping), madvise(MADV_DONTNEED,
//! MADV_REMOVE) and munmap (the pages not yet in are forgotten: the memory reads as zero, as it
//! would have). A page of a registered mapping that the image does not hold is the zero page.
//!
//! Pages are checked against their batch's CRC when they are read from the file. A damaged
//! batch found once the processes run cannot be taken back: they and their descendants are
//! killed, and rstrt says why. Once every page is in, the userfaultfds are closed, which
//! unregisters everything: the processes are left as a plain restore leaves them.
//!
//! A post-copy migration (migrate --post-copy) uses the same server with another source of
//! pages ([`Server::remote`]): the image leaves those pages out (kept runs), and they come
//! from the frozen processes at the source, over the migration's connection ([`Link`]): pushed
//! process by process in address order, and the pages a process waits for asked for first
//! (Want). Each mm knows which process at the source its pages come from (a fork's child, its
//! parent's), and takes only that one's (the processes of a tree have pages at the same
//! addresses, with other data). Until the
//! connection is handed over, nothing may wait for such a page: the restore's own steps never
//! touch them (the source sends mlocked memory and rseq areas with the image).

use crate::crf::pages::Deferred;
use crate::error::{Error, Result};
use crate::ptrace::{Ctl, uffd};
use log::debug;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

const PAGE: u64 = crate::crf::PAGE_SIZE as u64;

const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02; // _IOR(0xAA, 0x02, struct uffdio_range)
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04; // _IOWR(0xAA, 0x04, struct uffdio_zeropage)

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;

/// The events a lazy restore follows: fork, mremap, madvise(DONTNEED/REMOVE), munmap.
const FEATURES: u64 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 6);

/// Most bytes one fault brings in (from the page on), and one background copy.
const FAULT_CHUNK: u64 = 64 * PAGE;
const FILL_CHUNK: u64 = 256 * PAGE;
/// Most bytes one fault asks of a post-copy's source: each costs the faulting thread a round
/// trip, and the source's reading and sealing of it. A fault that is not where the last one
/// of its mm asked up to asks only its own page, which comes back sooner (a process that
/// touches its memory at random would wait for 15 pages it does not need); one that is, the
/// next WANT_CHUNK, as readahead does.
const WANT_CHUNK: u64 = 16 * PAGE;
/// Batches kept read and checked.
const CACHED: usize = 4;

/// struct uffdio_range.
#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}

/// struct uffdio_zeropage.
#[repr(C)]
struct Zero {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

/// struct uffd_msg (packed, 32 bytes): the event, then its arguments as three words.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Msg {
    event: u8,
    _reserved: [u8; 7],
    a: u64,
    b: u64,
    c: u64,
}

/// A stretch of pages not yet in: `len` bytes at the map key, whose data is at `off` in batch
/// `batch`'s, or, for a post-copy ([`REMOTE`]), the source's pages at address `off` (where
/// the image had them: a mremap since moved the key, not them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    len: u64,
    batch: u32,
    off: u64,
}

type Pending = BTreeMap<u64, Piece>;

/// The batch of pages a post-copy's source sends.
const REMOTE: u32 = u32::MAX;

/// Removes from `p` what lies in [start, end) and returns it, in order (pieces cut at the
/// edges keep their outer parts).
fn cut(p: &mut Pending, start: u64, end: u64) -> Vec<(u64, Piece)> {
    let keys: Vec<u64> = p.range(..end).rev().take_while(|(k, v)| *k + v.len > start).map(|(k, _)| *k).collect();
    let mut out = Vec::with_capacity(keys.len());
    for k in keys.into_iter().rev() {
        let Some(v) = p.remove(&k) else { continue };
        let e = k + v.len;
        if k < start {
            p.insert(k, Piece { len: start - k, ..v });
        }
        if e > end {
            p.insert(end, Piece { len: e - end, off: v.off + (end - k), ..v });
        }
        let (s, t) = (k.max(start), e.min(end));
        out.push((s, Piece { len: t - s, off: v.off + (s - k), ..v }));
    }
    out
}

/// What one process leaves to the server: filled in while its batches are read.
#[derive(Default)]
pub struct Lazy {
    batches: Vec<Deferred>,
    pending: Pending,
    /// Post-copy: the process (its pid at the source) whose pages its REMOTE pieces are.
    from: i32,
}

impl Lazy {
    /// A batch whose data stays in the file, and where its runs go: (address, length, offset
    /// of the data in the batch).
    pub fn defer(&mut self, batch: Deferred, targets: &[(u64, usize, usize)]) {
        let id = self.batches.len() as u32;
        for &(addr, len, off) in targets {
            self.pending.insert(addr, Piece { len: len as u64, batch: id, off: off as u64 });
        }
        self.batches.push(batch);
    }

    /// Batches whose pieces come later ([`Lazy::defer_piece`]); returns the first's id.
    pub fn add_batches(&mut self, batches: &[Deferred]) -> u32 {
        let id = self.batches.len() as u32;
        self.batches.extend(batches.iter().cloned());
        id
    }

    /// `len` bytes at `addr`, whose data is at `off` in batch `batch`'s.
    pub fn defer_piece(&mut self, batch: u32, addr: u64, len: u64, off: u64) {
        self.pending.insert(addr, Piece { len, batch, off });
    }

    /// Pages the image leaves at the source of a post-copy: `runs` (start, end) of process
    /// `from` (its pid there, as in the image).
    pub fn remote(&mut self, runs: &[(u64, u64)], from: i32) {
        self.from = from;
        for &(s, e) in runs {
            self.pending.insert(s, Piece { len: e - s, batch: REMOTE, off: s });
        }
    }

    /// The ranges left to the server, joined where they touch, in order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (&k, p) in &self.pending {
            match out.last_mut() {
                Some(l) if l.1 == k => l.1 = k + p.len,
                _ => out.push((k, k + p.len)),
            }
        }
        out
    }

    /// Whether any page is left to the server.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether a page in [start, end) is left to the server.
    pub fn holds(&self, start: u64, end: u64) -> bool {
        self.pending.range(..end).next_back().is_some_and(|(k, v)| k + v.len > start)
    }
}

/// A userfaultfd for the memory of the process `c` drives (stopped, still with rstrt's
/// privileges), made there and taken out; its own copy is closed again.
pub fn uffd_of(c: &mut Ctl) -> Result<OwnedFd> {
    let pid = c.pid();
    let ours = uffd::made_in(c, libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    uffd::api(&ours, FEATURES)
        .map_err(|e| Error::io(format!("UFFDIO_API with fork, remap, remove and unmap events (pid {pid})"), e))?;
    Ok(ours)
}

/// One mm the server fills: a restored process, or one it forked since.
struct Mm {
    /// The process (0: forked since, pid unknown).
    pid: i32,
    uffd: OwnedFd,
    pending: Pending,
    /// Post-copy: the process at the source whose pages its REMOTE pieces are (a process
    /// forked since has its parent's).
    from: i32,
    /// Some of its pages were moved (mremap): a REMOTE piece's key may differ from its
    /// address at the source. Until then they are the same, and a piece is found by its key.
    moved: bool,
    /// Post-copy: where (at the source) the last page its faults asked for ends.
    asked_to: u64,
}

impl Mm {
    /// A REMOTE piece holding some of the source's pages [s, e).
    fn remote(&self, s: u64, e: u64) -> Option<(u64, Piece)> {
        let hit = |p: &Piece| p.batch == REMOTE && p.off < e && s < p.off + p.len;
        if self.moved {
            return self.pending.iter().find(|(_, p)| hit(p)).map(|(k, p)| (*k, *p));
        }
        let near = self.pending.range(..e).rev().take_while(|(k, v)| *k + v.len > s);
        near.filter(|(_, p)| hit(p)).map(|(k, p)| (*k, *p)).next()
    }
}

/// Where a lazy restore's pages are: the image file, read a batch at a time, or the file
/// mapped (one nobody else may write: see crate::restart_lazy), read in place.
pub enum Source {
    File(std::fs::File),
    Mapped(Arc<crate::ptrace::mem::Mapped>),
}

/// The page data, read from the image and checked, a few batches at a time.
struct Pages {
    /// None: a post-copy's server, whose pages come over its Link.
    from: Option<Source>,
    batches: Vec<Deferred>,
    cache: Vec<(u32, Vec<u8>)>,
    /// Batches of a mapped image checked already.
    checked: std::collections::HashSet<u32>,
}

impl Pages {
    /// Batch `b`'s data, read and checked.
    fn data(&mut self, b: u32) -> Result<&[u8]> {
        let d = self.batches.get_mut(b as usize).ok_or_else(|| Error::Proc(format!("lazy restore: no batch {b}")))?;
        if d.unsettled() {
            // A batch a PAGEPLAN announced: its section read first, to be the one announced.
            let (from, to) = (d.header_at(), d.data_at);
            let mut head = vec![0u8; (to - from) as usize];
            match &self.from {
                Some(Source::Mapped(m)) => {
                    let got = m.as_slice().get(from as usize..to as usize).ok_or_else(|| {
                        Error::Proc(format!("lazy restore: the image ends before its page batch at offset {from}"))
                    })?;
                    head.copy_from_slice(got);
                }
                Some(Source::File(f)) => f
                    .read_exact_at(&mut head, from)
                    .map_err(|e| Error::io(format!("the image's page batch at offset {from}"), e))?,
                None => return Err(Error::Proc("post-copy: no image file to read pages from".into())),
            }
            d.settle(&head)?;
        }
        let d = &self.batches[b as usize];
        let file = match &self.from {
            Some(Source::Mapped(m)) => {
                let data = m.as_slice().get(d.data_at as usize..d.data_at as usize + d.data_len).ok_or_else(|| {
                    Error::Proc(format!("lazy restore: the image ends before its pages at offset {}", d.data_at))
                })?;
                if self.checked.insert(b) {
                    d.check(data)?;
                }
                return Ok(data);
            }
            Some(Source::File(f)) => f,
            None => return Err(Error::Proc("post-copy: no image file to read pages from".into())),
        };
        if let Some(i) = self.cache.iter().position(|c| c.0 == b) {
            return Ok(&self.cache[i].1);
        }
        let mut buf = if self.cache.len() >= CACHED { self.cache.remove(0).1 } else { Vec::new() };
        buf.resize(d.data_len, 0);
        file.read_exact_at(&mut buf, d.data_at)
            .map_err(|e| Error::io(format!("the image's pages at offset {}", d.data_at), e))?;
        d.check(&buf)?;
        self.cache.push((b, buf));
        Ok(&self.cache[self.cache.len() - 1].1)
    }
}

/// What a copy into an mm came to.
enum Outcome {
    /// All of it is in (or was there already).
    Done,
    /// The mm is changing (an event not yet read): this much is left, from this address.
    Again(u64, Piece),
    /// The mm is gone (the process exited or executed another program).
    Gone,
}

/// How much the server did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Pages copied because a process touched them, and in the background.
    pub faulted: u64,
    pub filled: u64,
    /// Faults on pages the image does not hold, answered with the zero page.
    pub zeroed: u64,
    /// Processes forked meanwhile, followed.
    pub forks: u64,
    /// Post-copy: pages received from the source, and pages asked for first.
    pub received: u64,
    pub wanted: u64,
    /// The longest a fault waited for its page from the source, in seconds; how many waited,
    /// and how long all together.
    pub longest: f64,
    pub waits: u64,
    pub waited: f64,
    /// From the first process given to the last page in.
    pub seconds: f64,
}

struct State {
    pages: Pages,
    mms: Vec<Mm>,
    /// Faults that could not be answered yet (an event to read first): (mm's uffd, address).
    retry: Vec<(i32, u64)>,
    stats: Stats,
    /// A post-copy's connection to the source, once handed over.
    link: Option<Box<dyn Link>>,
    /// The processes may run: a fault on a page still at the source waits for it (before, it
    /// is a restore step that should not have touched it).
    released: Arc<AtomicBool>,
    /// Pages asked of the source (by process there and address in the image), and faults
    /// waiting for one.
    asked: std::collections::BTreeSet<(i32, u64)>,
    /// The process at the source whose pages the next Pages frames are, on each connection
    /// (the migration's, the second one of the pages asked for).
    member: [i32; 2],
    waiting: Vec<(i32, u64, std::time::Instant)>,
    /// The source sent its last page.
    ended: bool,
    /// How long the source may stay silent while pages are missing.
    silence: std::time::Duration,
}

/// A post-copy's connections to the source of its pages (see migration::postcopy): its own,
/// and maybe a second one, on which the pages asked for come back.
pub trait Link: Send {
    /// The fds to poll for what the source sends: the first connection's, the second's
    /// while it has more to say.
    fn fds(&self) -> (i32, Option<i32>);
    /// Asks for the pages [addr, addr + len) of process `who` (its pid at the source; their
    /// address in the image) before the others.
    fn want(&mut self, who: i32, addr: u64, len: u64) -> Result<()>;
    /// The next frame on the first connection or the second (`urgent`), read as far as it has
    /// come, without waiting: a Pages frame read into `buf` (runs and their data, as
    /// engine::precopy sends them), or whose the Pages after it are, or NotYet; None: the
    /// source sent its last page on that one.
    fn next(&mut self, urgent: bool, buf: &mut Vec<u8>) -> Result<Option<Arrived>>;
    /// The source sent its last page on every connection.
    fn ended(&self) -> bool;
    /// Every page is in: the source may let its copy go.
    fn all_in(&mut self) -> Result<()>;
}

/// What a post-copy's source sent.
pub enum Arrived {
    /// A Pages frame of this length.
    Pages(usize),
    /// The Pages frames that follow are of this process (its pid at the source).
    Member(i32),
    /// Not all of the next frame has come yet.
    NotYet,
}

enum ToServer {
    Add(i32, OwnedFd, Lazy),
    Link(Box<dyn Link>),
}

/// The thread that serves the pages of a lazy restore. Dropped before the processes are said
/// to run, it stops at once and kills them (and what they forked), in case a release went
/// part of the way; once they run ([`Server::running`]), dropping it waits for every page to
/// be in, since a process left without them would read zeros.
pub struct Server {
    tx: Option<mpsc::Sender<ToServer>>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    released: Arc<AtomicBool>,
    remote: bool,
    thread: Option<std::thread::JoinHandle<Result<Stats>>>,
    running: bool,
    /// Kills the processes if we die before every page is in (see [`Server::guard`]).
    sentinel: std::sync::Mutex<Option<super::sentinel::Sentinel>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lazy::Server(running: {})", self.running)
    }
}

impl Server {
    /// Starts the server; pages are read from the image, `from`.
    pub fn start(from: Source) -> Result<Server> {
        Server::with(Some(from), std::time::Duration::MAX)
    }

    /// Starts the server of a post-copy: its pages come from the source, over the link given
    /// once the processes run ([`Server::link`]), which may be silent `silence` at most.
    pub fn remote(silence: std::time::Duration) -> Result<Server> {
        Server::with(None, silence)
    }

    /// Whether the pages come from the source of a post-copy.
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    fn with(from: Option<Source>, silence: std::time::Duration) -> Result<Server> {
        let remote = from.is_none();
        // SAFETY: eventfd takes flags and returns a new fd, owned at once.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::io("eventfd (lazy restore)", std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd nobody else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let released = Arc::new(AtomicBool::new(false));
        let st = State {
            pages: Pages { from, batches: Vec::new(), cache: Vec::new(), checked: Default::default() },
            mms: Vec::new(),
            retry: Vec::new(),
            stats: Stats::default(),
            link: None,
            released: released.clone(),
            asked: Default::default(),
            member: [0; 2],
            waiting: Vec::new(),
            ended: false,
            silence,
        };
        let (w, s) = (wake.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("crs-lazy".into())
            .spawn(move || serve(st, rx, &w, &s))
            .map_err(|e| Error::io("a thread to serve pages (lazy restore)", e))?;
        Ok(Server {
            tx: Some(tx),
            wake,
            stop,
            released,
            remote,
            thread: Some(thread),
            running: false,
            sentinel: Default::default(),
        })
    }

    /// Registers the mappings of process `pid` (whose userfaultfd `uffd` is, see [`uffd_of`])
    /// that hold pages left in the image, and hands them to the server.
    pub fn add(&self, pid: i32, fd: OwnedFd, lazy: Lazy, ranges: &[(u64, u64)]) -> Result<()> {
        for &(start, end) in ranges.iter().filter(|r| lazy.holds(r.0, r.1)) {
            uffd::register(&fd, start, end, uffd::MODE_MISSING).map_err(|e| {
                Error::io(format!("UFFDIO_REGISTER {start:#x}-{end:#x} for missing pages (pid {pid})"), e)
            })?;
        }
        let tx =
            self.tx.as_ref().ok_or_else(|| Error::Proc("lazy restore: the server takes no more processes".into()))?;
        tx.send(ToServer::Add(pid, fd, lazy))
            .map_err(|_| Error::Proc("lazy restore: the page server stopped".into()))?;
        self.poke();
        Ok(())
    }

    /// From now on processes `pids` (the restored ones, not yet run) die with us, should we die
    /// before every page is in: without us, what is not in yet would read as zeros.
    pub fn guard(&self, pids: &[i32]) -> Result<()> {
        let s = super::sentinel::Sentinel::start(pids)?;
        if let Ok(mut g) = self.sentinel.lock() {
            *g = Some(s);
        }
        Ok(())
    }

    /// The restore is over: from now on only the processes touch their memory (a post-copy's
    /// faults then wait for the source).
    pub fn restored(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.poke();
    }

    /// A post-copy's connection to the source, once the processes run.
    pub fn link(&self, link: Box<dyn Link>) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| Error::Proc("post-copy: the page server is done".into()))?;
        tx.send(ToServer::Link(link)).map_err(|_| Error::Proc("post-copy: the page server stopped".into()))?;
        self.poke();
        Ok(())
    }

    /// The processes run: from now on the server must finish.
    pub fn running(&mut self) {
        self.restored();
        self.running = true;
        self.tx = None;
        self.poke();
    }

    fn poke(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes of ours to our eventfd. (A full counter means it is woken
        // anyway.)
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
    }

    /// Waits until every page is in; what the server did, or why it failed.
    pub fn finish(mut self) -> Result<Stats> {
        self.running();
        self.join()
    }

    fn join(&mut self) -> Result<Stats> {
        let r = match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| Err(Error::Proc("lazy restore: the page server panicked".into()))),
            None => Ok(Stats::default()),
        };
        // Every page in, the processes no longer need us; else (killed already, or never run)
        // the sentinel kills whatever is left of them as it goes.
        match self.sentinel.get_mut().ok().and_then(|s| s.take()) {
            Some(s) if r.is_ok() && self.running => s.stand_down(),
            other => drop(other),
        }
        r
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.running {
            self.stop.store(true, Ordering::SeqCst);
        }
        self.tx = None;
        self.poke();
        // (Its failure was said already, or the restore's own is what matters.)
        if let Err(e) = self.join() {
            debug!("lazy restore: {e}");
        }
    }
}

fn serve(mut st: State, rx: mpsc::Receiver<ToServer>, wake: &OwnedFd, stop: &AtomicBool) -> Result<Stats> {
    let t0 = std::time::Instant::now();
    let mut more = true;
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut frame = Vec::new();
    let mut heard = std::time::Instant::now();
    loop {
        loop {
            match rx.try_recv() {
                Ok(ToServer::Add(pid, uffd, lazy)) => {
                    let base = st.pages.batches.len() as u32;
                    st.pages.batches.extend(lazy.batches);
                    let rebase = |p: Piece| if p.batch == REMOTE { p } else { Piece { batch: p.batch + base, ..p } };
                    let pending = lazy.pending.into_iter().map(|(k, p)| (k, rebase(p))).collect();
                    st.mms.push(Mm { pid, uffd, pending, from: lazy.from, moved: false, asked_to: 0 });
                }
                Ok(ToServer::Link(l)) => {
                    st.link = Some(l);
                    heard = std::time::Instant::now();
                    // The faults that came before it.
                    for (fd, page, _) in std::mem::take(&mut st.waiting) {
                        st.retry.push((fd, page));
                    }
                    st.asked.clear();
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    more = false;
                    break;
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            // Given up before the processes were said to run: none may run on without its
            // pages (a release that failed half-way, a post-copy whose commit failed).
            st.kill_all();
            return Ok(st.stats);
        }
        let missing = st.mms.iter().any(|m| !m.pending.is_empty());
        // Work of our own to do: pages to copy from the file, faults to answer again.
        // (The background copy waits until the processes run: before, it would only slow the
        // rest of their restore down.)
        let filling = missing && st.pages.from.is_some() && st.released.load(Ordering::SeqCst);
        let busy = filling || !st.retry.is_empty();
        if !more && !missing && st.retry.is_empty() {
            // The processes have every page: they run on whatever becomes of the source, which
            // keeps its copy stopped if it does not hear this (migration::postcopy).
            if let Some(Err(e)) = st.link.as_mut().map(|l| l.all_in()) {
                log::warn!("post-copy: every page is in, but the source may not know it: {e}");
            }
            break;
        }
        if missing && st.ended {
            let left: u64 = st.mms.iter().flat_map(|m| m.pending.values()).map(|p| p.len / PAGE).sum();
            let e = Error::Proc(format!("post-copy: the source sent its last page, and {left} are still missing"));
            return Err(kill_for(&mut st, e));
        }
        fds.clear();
        fds.push(libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        let link_fds = st.link.as_ref().map(|l| l.fds());
        let link_fd = link_fds.map(|f| f.0);
        if let Some((fd, urgent)) = link_fds {
            // The second connection first: a process waits for what comes on it.
            fds.extend(urgent.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }));
            fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        let uffds = fds.len();
        fds.extend(st.mms.iter().map(|m| libc::pollfd { fd: m.uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 }));
        // Waiting for the source: as long as it may stay silent.
        let timeout = if busy {
            0
        } else if link_fd.is_some() && missing {
            st.silence.saturating_sub(heard.elapsed()).as_millis().clamp(1, i32::MAX as u128) as i32
        } else {
            -1
        };
        // SAFETY: `fds` is a valid array of pollfd of that length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io("poll (lazy restore)", e));
            }
            continue;
        }
        if fds[0].revents != 0 {
            let mut b = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `b`.
            unsafe { libc::read(wake.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, 8) };
        }
        let urgent_in = link_fds.is_some_and(|f| f.1.is_some()) && fds[1].revents != 0;
        let from_source = link_fd.is_some() && fds[uffds - 1].revents != 0;
        let ready: Vec<i32> = fds[uffds..].iter().filter(|f| f.revents != 0).map(|f| f.fd).collect();
        let r = (|| {
            for fd in ready {
                st.events(fd)?;
            }
            if urgent_in {
                heard = std::time::Instant::now();
                st.receive(true, &mut frame)?;
            } else if from_source {
                heard = std::time::Instant::now();
                st.receive(false, &mut frame)?;
            } else if link_fd.is_some() && missing && heard.elapsed() >= st.silence {
                return Err(Error::Proc(format!(
                    "post-copy: the source sent nothing for {} s, and pages are missing",
                    st.silence.as_secs()
                )));
            }
            st.retry_faults()?;
            st.fill()
        })();
        if let Err(e) = r {
            return Err(kill_for(&mut st, e));
        }
    }
    st.stats.seconds = t0.elapsed().as_secs_f64();
    debug!("lazy restore: {:?}", st.stats);
    Ok(st.stats)
}

/// Kills the processes for `e`, which left them without pages they need; says so.
fn kill_for(st: &mut State, e: Error) -> Error {
    let pids = st.kill_all();
    let killed = format!(
        "found after the processes ran ({}), so pids {} and their descendants were killed",
        if st.pages.from.is_some() { "rstrt --lazy" } else { "post-copy" },
        pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    );
    match e {
        Error::Image(crate::crf::CrfError::Bad { offset, what }) => {
            Error::Image(crate::crf::CrfError::Bad { offset, what: format!("{what}: {killed}") })
        }
        e => Error::Refused(format!("{e}: {killed}")),
    }
}

impl State {
    fn mm(&mut self, fd: i32) -> Option<&mut Mm> {
        self.mms.iter_mut().find(|m| m.uffd.as_raw_fd() == fd)
    }

    /// Reads and answers the events of the mm whose userfaultfd is `fd`.
    fn events(&mut self, fd: i32) -> Result<()> {
        let mut msgs = [Msg::default(); 16];
        loop {
            // Its mm may be gone, and the fd closed, since it was found ready.
            if self.mm(fd).is_none() {
                return Ok(());
            }
            // SAFETY: reads whole struct uffd_msg records into `msgs`, ours.
            let n = unsafe { libc::read(fd, msgs.as_mut_ptr() as *mut libc::c_void, std::mem::size_of_val(&msgs)) };
            if n <= 0 {
                return Ok(());
            }
            for m in &msgs[..n as usize / std::mem::size_of::<Msg>()] {
                self.event(fd, m)?;
            }
        }
    }

    fn event(&mut self, fd: i32, msg: &Msg) -> Result<()> {
        match msg.event {
            UFFD_EVENT_PAGEFAULT => self.fault(fd, msg.b & !(PAGE - 1))?,
            UFFD_EVENT_FORK => {
                // SAFETY: the kernel installed this fd in our table for us, with the event.
                let uffd = unsafe { OwnedFd::from_raw_fd(msg.a as u32 as i32) };
                if let Some((pending, from, moved)) = self.mm(fd).map(|m| (m.pending.clone(), m.from, m.moved)) {
                    self.mms.push(Mm { pid: 0, uffd, pending, from, moved, asked_to: 0 });
                    self.stats.forks += 1;
                }
            }
            UFFD_EVENT_REMAP => {
                let (from, to, len) = (msg.a, msg.b, msg.c);
                if let Some(m) = self.mm(fd) {
                    m.moved = true;
                    cut(&mut m.pending, to, to + len);
                    for (s, p) in cut(&mut m.pending, from, from + len) {
                        m.pending.insert(s - from + to, p);
                    }
                }
            }
            UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => {
                if let Some(m) = self.mm(fd) {
                    cut(&mut m.pending, msg.a, msg.b);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A thread of the mm waits for the page at `page`: the pages from there that the image
    /// holds, or the zero page.
    fn fault(&mut self, fd: i32, page: u64) -> Result<()> {
        let released = self.released.load(Ordering::SeqCst);
        let Some(m) = self.mm(fd) else { return Ok(()) };
        let (pid, who, hit) = (m.pid, m.from, m.pending.range(..=page).next_back().map(|(k, v)| (*k, *v)));
        let held = hit.is_some_and(|(k, v)| page < k + v.len);
        if let Some((k, v)) = hit.filter(|(_, v)| held && v.batch == REMOTE) {
            if !released {
                return Err(Error::Refused(format!(
                    "restoring pid {pid} touched its memory at {page:#x}, which a post-copy leaves at the source until the process runs"
                )));
            }
            // Asked of the source, from this page on; its arrival wakes the fault.
            let from = v.off + (page - k);
            let ahead = if from == m.asked_to { WANT_CHUNK } else { PAGE };
            let to = (from + ahead).min(v.off + v.len);
            m.asked_to = to;
            self.waiting.push((fd, page, std::time::Instant::now()));
            if let Some(l) = self.link.as_mut()
                && !self.asked.contains(&(who, from))
            {
                let mut a = from;
                while a < to {
                    self.asked.insert((who, a));
                    a += PAGE;
                }
                l.want(who, from, to - from)?;
                self.stats.wanted += (to - from) / PAGE;
            }
            return Ok(());
        }
        if !held {
            let mut z = Zero { start: page, len: PAGE, mode: 0, zeropage: 0 };
            // SAFETY: UFFDIO_ZEROPAGE reads and writes one struct uffdio_zeropage, ours.
            if unsafe { libc::ioctl(fd, UFFDIO_ZEROPAGE, &mut z as *mut Zero) } == 0 {
                self.stats.zeroed += 1;
                return Ok(());
            }
            return match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EEXIST) => wake(fd, page),
                Some(libc::EAGAIN) => {
                    self.retry.push((fd, page));
                    Ok(())
                }
                // The mapping went meanwhile (or the mm): a thread that still waits faults
                // again, wherever it is now.
                _ => wake(fd, page),
            };
        }
        let pieces = cut(&mut m.pending, page, page + FAULT_CHUNK);
        let (copied, stop) = self.copy_all(fd, pieces)?;
        self.stats.faulted += copied;
        match stop {
            Some(Outcome::Gone) => Ok(()),
            // Not even the page itself: an event to read first.
            Some(_) if copied == 0 => {
                self.retry.push((fd, page));
                Ok(())
            }
            // (The page itself may have been there already: its waiters are woken all the same.)
            _ => wake(fd, page),
        }
    }

    /// Copies `pieces`, cut from the pending pages of the mm of `fd`, in order. Returns the
    /// pages copied, and why it stopped early, if it did: Again (an event to read first; what
    /// is left is pending again) or Gone.
    fn copy_all(&mut self, fd: i32, pieces: Vec<(u64, Piece)>) -> Result<(u64, Option<Outcome>)> {
        let mut copied = 0;
        let mut pieces = pieces.into_iter();
        while let Some((s, p)) = pieces.next() {
            match self.copy(fd, s, p)? {
                Outcome::Done => copied += p.len / PAGE,
                Outcome::Again(at, rest) => {
                    if let Some(m) = self.mm(fd) {
                        m.pending.insert(at, rest);
                        m.pending.extend(pieces);
                    }
                    return Ok((copied, Some(Outcome::Again(at, rest))));
                }
                Outcome::Gone => {
                    self.gone(fd);
                    return Ok((copied, Some(Outcome::Gone)));
                }
            }
        }
        Ok((copied, None))
    }

    fn retry_faults(&mut self) -> Result<()> {
        for (fd, page) in std::mem::take(&mut self.retry) {
            self.fault(fd, page)?;
        }
        Ok(())
    }

    /// Copies a piece of the background's into its mm.
    fn fill(&mut self) -> Result<()> {
        if self.pages.from.is_none() || !self.released.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(i) = self.mms.iter().position(|m| !m.pending.is_empty()) else { return Ok(()) };
        let fd = self.mms[i].uffd.as_raw_fd();
        let Some((&start, &p)) = self.mms[i].pending.iter().next() else { return Ok(()) };
        let end = start + p.len.min(FILL_CHUNK);
        let pieces = cut(&mut self.mms[i].pending, start, end);
        self.stats.filled += self.copy_all(fd, pieces)?.0;
        Ok(())
    }

    /// The mm of userfaultfd `fd` is gone: so is all that refers to it (its fd number may be
    /// given to the next fork's userfaultfd).
    fn gone(&mut self, fd: i32) {
        self.mms.retain(|m| m.uffd.as_raw_fd() != fd);
        self.retry.retain(|r| r.0 != fd);
        self.waiting.retain(|w| w.0 != fd);
    }

    /// Copies piece `p` to `start` in the mm of userfaultfd `fd`, page by page where some are
    /// there already.
    fn copy(&mut self, fd: i32, start: u64, p: Piece) -> Result<Outcome> {
        let data = self.pages.data(p.batch)?;
        let src = data
            .get(p.off as usize..(p.off + p.len) as usize)
            .ok_or_else(|| Error::Proc(format!("lazy restore: pages {start:#x}+{} lie outside their batch", p.len)))?;
        copy_from(fd, start, p, src)
    }

    /// A Pages frame from the source (in `frame`): its pages go to every mm that still lacks
    /// them, wherever each has them now.
    fn receive(&mut self, urgent: bool, frame: &mut Vec<u8>) -> Result<()> {
        let Some(l) = self.link.as_mut() else { return Ok(()) };
        // (A Member frame comes with the Pages frame after it: that one may be read already.)
        let len = loop {
            match l.next(urgent, frame)? {
                None => {
                    self.ended = l.ended();
                    return Ok(());
                }
                Some(Arrived::Member(pid)) => self.member[urgent as usize] = pid,
                Some(Arrived::Pages(len)) => break len,
                Some(Arrived::NotYet) => return Ok(()),
            }
        };
        let b = &frame[..len];
        let bad = |what: String| Error::Proc(format!("post-copy: a bad Pages frame from the source: {what}"));
        let word = |at: usize, n: usize| -> u64 {
            b.get(at..at + n).map_or(0, |x| x.iter().rev().fold(0u64, |a, &y| (a << 8) | y as u64))
        };
        let n = word(0, 4) as usize;
        let mut off = 8 + n * 16;
        if b.len() < off {
            return Err(bad(format!("{} bytes for {n} runs", b.len())));
        }
        for i in 0..n {
            let (s, np, flags) = (word(8 + i * 16, 8), word(16 + i * 16, 4), word(20 + i * 16, 4));
            let len = np * PAGE;
            if flags != 0 && flags != crate::migration::postcopy::ZERO as u64 {
                return Err(bad(format!("a run of flags {flags:#x}")));
            }
            if flags == crate::migration::postcopy::ZERO as u64 {
                // Pages that hold nothing at the source: a fault there maps the zero page.
                self.zero(self.member[urgent as usize], s, len);
                continue;
            }
            let data = b.get(off..off + len as usize).ok_or_else(|| bad("data shorter than its runs".into()))?;
            self.put(self.member[urgent as usize], s, data)?;
            self.stats.received += np;
            off += len as usize;
        }
        // Faults whose page is no longer wanted (dropped meanwhile): woken to fault again.
        let waiting = std::mem::take(&mut self.waiting);
        for (fd, page, since) in waiting {
            let still = self
                .mm(fd)
                .is_some_and(|m| m.pending.range(..=page).next_back().is_some_and(|(k, v)| page < k + v.len));
            if still {
                self.waiting.push((fd, page, since));
            } else {
                let w = since.elapsed().as_secs_f64();
                self.stats.longest = self.stats.longest.max(w);
                self.stats.waits += 1;
                self.stats.waited += w;
                wake(fd, page)?;
            }
        }
        Ok(())
    }

    /// The source's pages [s, s + len) (their addresses in the image) of its process `member`
    /// hold nothing: no mm waits for them any more (a fault there maps the zero page).
    fn zero(&mut self, member: i32, s: u64, len: u64) {
        let e = s.saturating_add(len);
        for m in self.mms.iter_mut().filter(|m| m.from == member) {
            while let Some((k, p)) = m.remote(s, e) {
                let (from, to) = (s.max(p.off), e.min(p.off + p.len));
                let at = k + (from - p.off);
                cut(&mut m.pending, at, at + (to - from));
            }
        }
    }

    /// The source's pages at `s` (their address in the image) of its process `member`: into
    /// every mm that lacks them (that process's, and those forked from it since).
    fn put(&mut self, member: i32, s: u64, data: &[u8]) -> Result<()> {
        let e = s.checked_add(data.len() as u64).ok_or_else(|| {
            Error::Proc(format!("post-copy: the source sent pages at {s:#x}, past the address space"))
        })?;
        let mut i = 0;
        'mms: while i < self.mms.len() {
            let fd = self.mms[i].uffd.as_raw_fd();
            // One piece at a time: an event read meanwhile may change them.
            while let Some(m) = self.mms.get_mut(i).filter(|m| m.from == member) {
                let Some((k, p)) = m.remote(s, e) else { break };
                let (from, to) = (s.max(p.off), e.min(p.off + p.len));
                let at = k + (from - p.off);
                cut(&mut m.pending, at, at + (to - from));
                let part = Piece { len: to - from, batch: REMOTE, off: from };
                let src = &data[(from - s) as usize..(to - s) as usize];
                match copy_from(fd, at, part, src)? {
                    Outcome::Done => {}
                    Outcome::Again(at, rest) => {
                        // The mm changes: its events first, then again.
                        if let Some(m) = self.mms.get_mut(i) {
                            m.pending.insert(at, rest);
                        }
                        self.events(fd)?;
                        std::thread::yield_now();
                    }
                    Outcome::Gone => {
                        self.gone(fd);
                        continue 'mms;
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }
}

/// Copies `src`, the data of piece `p`, to `start` in the mm of userfaultfd `fd`, page by page
/// where some are there already.
fn copy_from(fd: i32, start: u64, p: Piece, src: &[u8]) -> Result<Outcome> {
    let mut done = 0u64;
    while done < p.len {
        let Some(rest) = src.get(done as usize..p.len as usize) else {
            return Err(Error::Proc(format!(
                "lazy restore: {} bytes for a piece of {} at {start:#x}",
                src.len(),
                p.len
            )));
        };
        let (n, e) = uffd::copy(fd, start + done, rest);
        done += n;
        let Some(e) = e else { return Ok(Outcome::Done) };
        if n > 0 {
            continue;
        }
        match e.raw_os_error() {
            // That page is there already (the process faulted it in): the next one.
            Some(libc::EEXIST) => done += PAGE,
            Some(libc::EAGAIN) => {
                return Ok(Outcome::Again(start + done, Piece { len: p.len - done, off: p.off + done, ..p }));
            }
            Some(libc::ESRCH) => return Ok(Outcome::Gone),
            // No registered mapping there any more (unmapped): nothing to fill.
            Some(libc::ENOENT) | Some(libc::EINVAL) => return Ok(Outcome::Done),
            _ => return Err(Error::io(format!("UFFDIO_COPY to {:#x} (lazy restore)", start + done), e)),
        }
    }
    Ok(Outcome::Done)
}

impl State {
    /// A damaged image found once the processes may run: none of them may go on with memory
    /// it lacks. Kills each restored process and its descendants (those forked meanwhile).
    fn kill_all(&mut self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.mms.iter().map(|m| m.pid).filter(|&p| p > 0).collect();
        let restored = pids.clone();
        let mut i = 0;
        while i < pids.len() {
            let kids = crate::res::tree::children(pids[i]);
            pids.extend(kids.into_iter().filter(|k| !pids.contains(k)).collect::<Vec<_>>());
            i += 1;
        }
        // Through pidfds, so a pid freed meanwhile is not another process's; and waited for,
        // so nothing of them runs once rstrt says they were killed.
        let fds: Vec<_> = pids.iter().filter_map(|&p| crate::ptrace::procfs::pidfd(p).ok()).collect();
        for fd in &fds {
            // SAFETY: pidfd_send_signal takes a pidfd of ours, a signal number and no siginfo.
            unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, 0usize, 0u32) };
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for fd in &fds {
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let left = deadline.saturating_duration_since(std::time::Instant::now()).as_millis() as i32;
            // SAFETY: poll reads and writes one pollfd of ours.
            if unsafe { libc::poll(&mut p, 1, left) } <= 0 {
                log::warn!("a process killed for a damaged image is still exiting after 5 s");
                break;
            }
        }
        restored
    }
}

/// Wakes the threads that wait for the page at `page` (already there).
fn wake(fd: i32, page: u64) -> Result<()> {
    let mut r = Range { start: page, len: PAGE };
    // SAFETY: UFFDIO_WAKE reads one struct uffdio_range, ours.
    unsafe { libc::ioctl(fd, UFFDIO_WAKE, &mut r as *mut Range) };
    Ok(())
}

/// Whether rstrt --lazy can work here: Ok, or why not.
pub fn available() -> std::result::Result<(), String> {
    if !crate::res::creds::is_root() {
        return Err("only root may (faults raised inside system calls, and fork events, need CAP_SYS_PTRACE)".into());
    }
    // SAFETY: userfaultfd takes flags and returns a new fd, owned below.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("no userfaultfd ({})", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    uffd::api(&fd, FEATURES).map_err(|e| format!("userfaultfd without fork, remap, remove and unmap events ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(len: u64, off: u64) -> Piece {
        Piece { len, batch: 0, off }
    }

    /// Until a remap, a REMOTE piece is found by its key; after one, by a walk: both find a
    /// piece overlapping the range exactly when there is one, and never a local piece.
    #[test]
    fn a_remote_piece_is_found_by_its_key_until_pages_move() {
        let mut pending = Pending::new();
        for (at, len, batch) in [(0x1000, 0x2000, REMOTE), (0x3000, 0x1000, 0), (0x8000, 0x4000, REMOTE)] {
            pending.insert(at, Piece { len, batch, off: at });
        }
        let null = std::fs::File::open("/dev/null").unwrap();
        let mut m = Mm { pid: 0, uffd: null.into(), pending, from: 0, moved: false, asked_to: 0 };
        for s in (0..0x10000u64).step_by(0x800) {
            for len in [0x800u64, 0x1000, 0x5000] {
                let e = s + len;
                let fast = m.remote(s, e);
                m.moved = true;
                let walk = m.remote(s, e);
                m.moved = false;
                assert_eq!(fast.is_some(), walk.is_some(), "[{s:#x}, {e:#x})");
                if let Some((k, p)) = fast {
                    assert!(p.batch == REMOTE && k < e && s < k + p.len, "[{s:#x}, {e:#x}): {k:#x}");
                }
            }
        }
    }

    #[test]
    fn cut_takes_exactly_the_range_and_keeps_the_edges() {
        let mut p = Pending::new();
        p.insert(0x1000, piece(0x3000, 0));
        p.insert(0x8000, piece(0x2000, 0x3000));
        let got = cut(&mut p, 0x2000, 0x9000);
        assert_eq!(got, vec![(0x2000, piece(0x2000, 0x1000)), (0x8000, piece(0x1000, 0x3000))]);
        assert_eq!(
            p.into_iter().collect::<Vec<_>>(),
            vec![(0x1000, piece(0x1000, 0)), (0x9000, piece(0x1000, 0x4000))]
        );
        let mut p = Pending::new();
        p.insert(0x1000, piece(0x4000, 0));
        let got = cut(&mut p, 0x2000, 0x3000);
        assert_eq!(got, vec![(0x2000, piece(0x1000, 0x1000))]);
        assert_eq!(p.len(), 2);
        assert!(cut(&mut p, 0x5000, 0x9000).is_empty());
        assert!(cut(&mut p, 0, 0x1000).is_empty());
    }
}
