//! Checkpoint: check the process can be handled (touching nothing), freeze it with
//! PTRACE_SEIZE + PTRACE_INTERRUPT, collect its state, stream the image in section order, and
//! only after the image is committed kill it, leave it stopped or let it run on. On any failure
//! the process gets its registers back and runs on exactly as before.

use super::blockers;
use super::urgent::Urgent;
use crate::crf::pages::Run;
use crate::crf::{Sink, Tag, Writer};
use crate::error::{Error, Result};
use crate::ptrace::arch::{self, Regs};
use crate::ptrace::calls::Calls;
use crate::ptrace::remote::{Remote, syscall_all};
use crate::ptrace::tracee::{Caught, Tracee, redeliver};
use crate::ptrace::{Ctl, RemoteAddr, Scratch, mem, procfs};
use crate::res::deleted::Deleted;
use crate::res::fileid::{FileId, Stamp};
use crate::res::head::{self, Header};
use crate::res::image::{self, ProcessState, ThreadState};
use crate::res::memfd::Memfd;
use crate::res::memory::{self, MmStruct};
use crate::res::regs::{self, RegState};
use crate::res::sched::Sched;
use crate::res::signals::Signals;
use crate::res::task::Task;
use crate::res::thread::{self, ThreadInfo};
use crate::res::{cwd, files, tree};
use crate::res::{itimers, knobs, mdwe, pending, rlimits, thp};
use log::debug;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Kill the process once the image is complete (CRS_KILL).
    pub kill: bool,
    /// Leave it stopped (SIGSTOP) instead of letting it run.
    pub stop: bool,
    /// Do not store unmodified pages of the executable (CRS_NO_BINARY_FILE).
    pub no_binary: bool,
    /// Do not store unmodified pages of shared libraries (CRS_NO_SHARED_LIBRARIES).
    pub no_libs: bool,
    /// Fds carried as stubs rather than refused.
    pub stubs: files::Stubs,
    /// The most bytes of deleted files the image carries (all of them together); None:
    /// `deleted::MAX_TOTAL`.
    pub deleted_max: Option<u64>,
    /// Only the process, not its descendants (they are left running, and the restored
    /// process has no children).
    pub alone: bool,
    /// A job of an interactive shell: its fds on its controlling terminal, and the terminal's
    /// state, are carried for `rstrt --shell-job` (see res::terminal).
    pub shell_job: bool,
    /// Established TCP connections are carried, with TCP_REPAIR (see res::tcpconn).
    pub tcp_established: bool,
    /// Unix sockets connected to a peer outside are connected again to its name on restore.
    pub unix_reconnect: bool,
    /// A live migration's pre-copy: its last writes are taken once the processes are frozen
    /// (its own marks on their mappings are not theirs), and the pages the destination holds
    /// already are written as kept runs.
    pub precopied: Option<super::precopy::Precopied>,
    /// A post-copy migration: the first process's private anonymous pages are written as kept
    /// runs, sent once the copy runs (see migration::postcopy); their runs are left here.
    pub postcopy: Option<PostCopy>,
    /// Which engine checkpoints (see crate::dev): the default, `Auto`, is this one, and
    /// /dev/crd when ptrace is refused.
    pub backend: crate::dev::Backend,
    /// A process that runs on (neither `kill` nor `stop`) has its memory copied while it runs,
    /// its writes tracked, and is frozen only for what it wrote since and its other state,
    /// aiming at this long (see [`running_checkpoint`]); None: frozen for the whole copy.
    pub running: Option<Duration>,
    /// Mapped files the restoring node holds the very same of (a migration asks it): their
    /// unmodified pages are left out, as with `no_libs`.
    pub held_there: Vec<String>,
    /// The mappings' flags are read just before the freeze, and checked while the image goes
    /// (see engine::vmflags): the caller waits for the check before the copy may run.
    pub flags_later: Option<super::vmflags::FlagsLater>,
}

/// The pages a post-copy's image leaves at the source: per process (its pid), (start, end)
/// runs, in order, filled in by the checkpoint before its commit.
#[derive(Clone, Debug, Default)]
pub struct PostCopy(pub std::sync::Arc<std::sync::Mutex<LaterRuns>>);

/// Per process (its pid), the runs of its pages a post-copy sends later.
pub type LaterRuns = Vec<(i32, Vec<(u64, u64)>)>;

impl PostCopy {
    /// The ranges of a process whose pages a post-copy sends later: its private anonymous
    /// mappings, but for those it locked in memory and the pages of its threads' rseq areas,
    /// which a restore touches before the process runs (mlock populates; rseq registration
    /// writes the area), and those wiped on fork (a child forked before their pages came
    /// would get them: its own are zero).
    pub fn ranges(st: &ProcessState) -> Vec<(u64, u64)> {
        let page = crate::crf::PAGE_SIZE as u64;
        let lock = memory::VMA_LOCKED | memory::VMA_LOCKONFAULT | memory::VMA_WIPEONFORK;
        let all: Vec<(u64, u64)> = st
            .vmas
            .iter()
            .filter(|v| memory::private_anon(v) && v.flags & lock == 0)
            .map(|v| (v.start, v.end))
            .collect();
        let mut touched: Vec<(u64, u64)> = st
            .thread_info
            .iter()
            .filter_map(|t| t.rseq.as_ref())
            .map(|r| (r.ptr & !(page - 1), (r.ptr + r.len as u64).div_ceil(page) * page))
            .collect();
        touched.sort_unstable();
        super::layout::minus(&all, &touched)
    }
}

impl Options {
    fn carry(&self) -> files::Carry {
        files::Carry {
            shell_job: self.shell_job,
            tcp_established: self.tcp_established,
            unix_reconnect: self.unix_reconnect,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub pid: i32,
    pub pages: u64,
    pub image_bytes: u64,
    /// How long the processes were frozen.
    pub frozen: Duration,
    /// The fds carried as stubs, one line each (see `files::stubs`).
    pub stubs: Vec<String>,
    /// How many processes the image holds: `pid` and its live descendants.
    pub processes: usize,
    /// How many of its descendants are zombies, held in the image as such.
    pub zombies: usize,
    /// What the image leaves out that a restore cannot have (connections not yet accepted,
    /// datagrams queued), one line each.
    pub notes: Vec<String>,
    /// The nftables table still blocking the packets of the killed processes' established
    /// connections (see res::tcpconn), for the restore to remove; empty when none.
    pub tcp_lock: String,
    /// With `Options::running`: what was copied while the process ran, or why nothing was.
    pub ahead: Option<super::precopy::Ahead>,
}

/// The processes a checkpoint of `pid` takes: `pid`, and unless `alone` its descendants, as
/// /proc shows them now, parents first.
fn members(pid: i32, alone: bool) -> Vec<i32> {
    if alone { vec![pid] } else { tree::walk(pid) }
}

/// Everything we can check without touching the processes: they exist, we may trace them, none
/// has fds or mappings we cannot restore, their relations can be rebuilt. A descendant's
/// reasons name it. Running, a process may be between two states as we look (an fd closed and
/// its number taken again as we read about it): a refusal stands only if a second and a third
/// look find one too (the last one's reasons are said).
pub fn precheck(pid: i32, opts: &Options) -> Result<()> {
    let mut r = check_all(pid, opts, false);
    for _ in 0..2 {
        if !matches!(r, Err(Error::Blocked { .. })) {
            break;
        }
        r = check_all(pid, opts, false);
    }
    r
}

/// [`precheck`], of processes we have frozen (`frozen`: traced by us) or not.
fn check_all(pid: i32, opts: &Options, frozen: bool) -> Result<()> {
    let _walk = crate::res::endpoints::Snapshot::take();
    let mut why = Vec::new();
    // The descendants' reasons, each once, with every descendant it stands against (64
    // workers that inherited the same fd are one reason, not 64).
    let mut by_reason: Vec<(String, Vec<i32>)> = Vec::new();
    let pids = members(pid, opts.alone);
    let mut all = Vec::with_capacity(pids.len());
    for (i, &m) in pids.iter().enumerate() {
        let member = match tree::member(m) {
            Ok(x) => x,
            Err(Error::Io { err, .. }) if err.kind() == std::io::ErrorKind::NotFound => {
                if i == 0 {
                    return Err(Error::Gone(pid));
                }
                continue; // a descendant that just went
            }
            Err(e) => return Err(e),
        };
        let zombie = member.zombie.is_some();
        all.push(member);
        if i > 0 && zombie {
            continue; // kept as a zombie
        }
        let own = match precheck_one(m, opts, &pids, frozen) {
            Ok(own) => own,
            // A descendant that ended while we looked (a compiler a make ran) is no reason:
            // the freeze walks the tree again.
            Err(e) if i > 0 && gone_meanwhile(&e, m) => continue,
            Err(Error::Permission(why)) if i > 0 => {
                return Err(Error::Permission(format!(
                    "{why} (it is a descendant of pid {pid}; ckpt --alone leaves them out)"
                )));
            }
            Err(e) => return Err(e),
        };
        if i == 0 {
            why.extend(own);
        } else {
            for r in own {
                match by_reason.iter_mut().find(|(x, _)| *x == r) {
                    Some((_, who)) => who.push(m),
                    None => by_reason.push((r, vec![m])),
                }
            }
        }
    }
    why.extend(by_reason.into_iter().map(|(r, who)| format!("{}: {r}", descendants(&who))));
    why.extend(tree::check(&all));
    why.extend(crate::res::ptys::outside(&pids, &crate::res::ptys::masters(&pids)));
    if opts.shell_job && crate::res::terminal::controlling(pid).is_none() {
        why.push("it has no controlling terminal (--shell-job is for a job run from a terminal)".into());
    }
    Error::blocked(pid, why)
}

/// The unmodified pages of a file that several processes map the same part of (a tree's
/// binary and libraries: 2 MiB a process for a C program) are stored by the first whose
/// mapping has every page of that part unmodified (program text): the others' mappings say
/// so (VMA_COPY_ELSEWHERE), and store only the pages they changed themselves. A mapping
/// whose pages a live migration sent ahead (`ahead`, per process: kept runs in it) is left
/// as it is: the image does not store them, and the destination holds them for it alone.
fn copies_once(states: &mut [ProcessState], ahead: &[super::precopy::Kept]) -> Result<()> {
    let mut stored: Vec<(FileId, (u64, u64))> = Vec::new();
    for (i, st) in states.iter_mut().enumerate() {
        let kept = ahead.get(i).map_or(&[][..], |k| k.kept.as_slice());
        let went = |v: &memory::Vma| !super::layout::intersect(kept, &[(v.start, v.end)]).is_empty();
        let mut mine = Vec::new();
        let copied = |v: &memory::Vma| {
            v.flags & memory::VMA_FILE_COPY != 0
                && v.flags & memory::VMA_REMADE == 0
                && v.prot & libc::PROT_READ as u32 != 0
        };
        let mut pagemap = None;
        for v in st.vmas.iter_mut().filter(|v| copied(v) && !went(v)) {
            let (Some(f), Some((from, to))) = (v.file.clone(), memory::copy_range(v)) else { continue };
            if stored.iter().any(|(g, (s, e))| *g == f && *s <= from && to <= *e) {
                v.flags |= memory::VMA_COPY_ELSEWHERE;
                continue;
            }
            let pm = match &mut pagemap {
                Some(pm) => pm,
                slot => slot.insert(crate::ptrace::pagemap::Pagemap::open(st.head.pid)?),
            };
            if pm.touched(v.start, v.end)?.iter().all(|t| t.file) {
                mine.push((f, (from, to)));
            }
        }
        stored.extend(mine);
    }
    Ok(())
}

/// "its descendant pid 9 (make)", "3 of its descendants, pid 9 (cc), pid 10 (cc), pid 11
/// (cc)", "64 of its descendants, pid 9 (w), pid 10 (w), pid 11 (w) and 61 more".
fn descendants(pids: &[i32]) -> String {
    const NAMED: usize = 3;
    let named: Vec<String> = pids.iter().take(NAMED).map(|&p| crate::res::endpoints::who(p)).collect();
    match pids.len() {
        1 => format!("its descendant {}", named.join("")),
        n if n <= NAMED => format!("{n} of its descendants, {}", named.join(", ")),
        n => format!("{n} of its descendants, {} and {} more", named.join(", "), n - NAMED),
    }
}

/// Whether `e` only says that process `pid` is gone: its /proc files went away.
fn gone_meanwhile(e: &Error, pid: i32) -> bool {
    match e {
        Error::Gone(_) => true,
        Error::Io { err, .. } => {
            err.kind() == std::io::ErrorKind::NotFound && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

/// The reasons against one process, of those in `tree`.
fn precheck_one(pid: i32, opts: &Options, tree: &[i32], frozen: bool) -> Result<Vec<String>> {
    let status = procfs::read_status(pid).map_err(|e| match e {
        Error::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound => Error::Gone(pid),
        e => e,
    })?;
    // Past this, the process is ours to read (root, or its owner). Every reason against it
    // is gathered, then all are named at once.
    let mut why = Vec::new();
    Error::gather(blockers::status(pid, &status, frozen), &mut why)?;
    // (Frozen too: this is a whole look, which a refusal seen running asks for.)
    why.extend(blockers::relations(pid, true));
    let (fds, unfit) = files::scan_all(pid, &opts.stubs, tree, opts.carry(), !frozen)?;
    why.extend(unfit);
    Error::gather(crate::res::epoll::collect(pid, &fds, !frozen), &mut why)?;
    Error::gather(crate::res::inotify::collect(pid, &fds, !frozen), &mut why)?;
    let mut maps = procfs::read_smaps(pid)?;
    // Frozen after a copy made while it ran: without the marks of our own tracking.
    if let Some(p) = &opts.precopied {
        p.unmark(pid, &mut maps)?;
    }
    Error::gather(memory::classify(pid, &maps, &no_copy_rule(pid, opts)), &mut why)?;
    Ok(why)
}

/// What [`check_all`] looks at that the work on the frozen processes does not look at again,
/// trusting a look before the freeze: wanted when there was none (see [`Look::Skipped`]).
/// Keep it in step with check_all.
fn unlooked(pid: i32, pids: &[i32], opts: &Options) -> Vec<String> {
    // (Where collect reads them too, see blockers::numa_again.)
    let numa = !blockers::numa_again();
    let mut why: Vec<String> = pids.iter().filter(|_| numa).flat_map(|&m| blockers::numa(m)).collect();
    if opts.shell_job && crate::res::terminal::controlling(pid).is_none() {
        why.push("it has no controlling terminal (--shell-job is for a job run from a terminal)".into());
    }
    why
}

/// What a look at the running processes, before the freeze, found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Nothing against them: the frozen work refuses only what changed since.
    Passed,
    /// Reasons, maybe only of a moment (an fd closed as we looked): [`check_all`] again, frozen.
    Refused,
    /// None taken: the processes will not run on (--kill, --stop), so a longer freeze costs
    /// them nothing and the look would cost the checkpoint a millisecond of its few. The
    /// frozen work refuses what it finds, and [`unlooked`]; a refusal then has check_all,
    /// frozen, name every reason at once.
    Skipped,
}

/// Whether a mapped file's unmodified pages are left out of the image.
fn no_copy_rule(pid: i32, opts: &Options) -> impl Fn(&str, bool) -> bool {
    let exe =
        std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let (no_binary, no_libs) = (opts.no_binary, opts.no_libs);
    let there = opts.held_there.clone();
    move |path: &str, elf: bool| there.iter().any(|p| p == path) || if path == exe { no_binary } else { no_libs && elf }
}

/// Checkpoints `pid` (and its descendants) into `out`. `commit` runs after the last byte is
/// written (flush, fsync, rename); only when it succeeds are the processes killed or stopped
/// as asked.
pub fn checkpoint<W: Sink>(pid: i32, out: W, opts: &Options, commit: impl FnOnce(W) -> Result<()>) -> Result<Report> {
    // No look before the freeze for processes that will not run on (see Look::Skipped), and
    // then no buffers made ahead either (see frozen_checkpoint).
    let skip = opts.kill || opts.stop;
    let warm = if skip { memory::Warming::here() } else { memory::Warming::begin() };
    // The mapped files are looked at before the freeze and again frozen: read once.
    let _files = crate::res::fileid::Remembered::scope();
    // (One look: a refusal is asked again of the frozen processes, which say for sure.)
    let look = if skip {
        Look::Skipped
    } else {
        match check_all(pid, opts, false) {
            // Seen running, a process may be between two states (a client between socket and
            // connect, an fd closed while we looked): the same checks of the frozen processes
            // say for sure, with every reason, and let them go as they were if one stands.
            Err(Error::Blocked { reasons, .. }) => {
                debug!("pid {pid} refused while running ({}); asked again frozen", reasons.join("; "));
                Look::Refused
            }
            r => r.map(|_| Look::Passed)?,
        }
    };
    if let Some(budget) = opts.running.filter(|_| !opts.kill && !opts.stop)
        && opts.precopied.is_none()
        && opts.postcopy.is_none()
    {
        return running_checkpoint(pid, out, opts, budget, (look, warm), commit);
    }
    frozen_checkpoint(pid, Out::New(out), opts, (look, warm), commit)
}

/// The image a checkpoint writes: begun already (the sections a running checkpoint copied
/// first), or not yet, and then only once the processes are frozen (a refused PTRACE_SEIZE
/// leaves the sink untouched, for crate::checkpoint to turn to /dev/crd).
enum Out<W: Sink> {
    New(W),
    Begun(Writer<W>),
}

impl<W: Sink> Out<W> {
    fn begin(self) -> Result<Writer<W>> {
        match self {
            Out::New(w) => Writer::new(w).map_err(image_io),
            Out::Begun(w) => Ok(w),
        }
    }
}

fn image_io(e: std::io::Error) -> Error {
    Error::io("image", e)
}

/// Below this much private memory a process is copied frozen: quicker than tracking it.
const RUNNING_MIN: u64 = 16 << 20;

/// A field of /proc/PID/smaps_rollup, in bytes.
fn rollup_bytes(rollup: &str, field: &str) -> Option<u64> {
    let v = rollup.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    v.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kb| kb << 10)
}

/// Whether process `pid` (and its descendants, unless `alone`) is worth copying while it
/// runs: Err says why not (little memory); Ok(true) for a tree whose processes share much of
/// it since a fork, whose rounds leave out what a process shares with an earlier one, so
/// that the image stores those pages once (and a restore shares them again).
fn worth_tracking(pid: i32, opts: &Options) -> std::result::Result<bool, String> {
    let procs = if opts.alone { vec![pid] } else { tree::walk(pid) };
    // Anonymous memory mapped, and its proportional share: what each process's own copy of
    // the pages it shares would add is the difference. (And shared memory, each page once
    // over the processes: the tree's is copied while it runs too.)
    let (mut anon, mut own, mut shm) = (0u64, 0u64, 0u64);
    for &p in &procs {
        let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
        shm += rollup_bytes(&rollup, "Pss_Shmem").unwrap_or(0);
        match (rollup_bytes(&rollup, "Anonymous"), rollup_bytes(&rollup, "Pss_Anon")) {
            (Some(a), Some(o)) => (anon, own) = (anon + a, own + o),
            // A zombie, or one gone meanwhile, has none.
            _ if p != pid => {}
            _ => return Err(format!("/proc/{pid}/smaps_rollup does not say its private memory: copied frozen")),
        }
    }
    let shared = anon.saturating_sub(own);
    match anon + shm {
        a if a >= RUNNING_MIN => Ok(procs.len() > 1 && shared > own / 8),
        a => Err(format!("pid {pid} has {} KiB of anonymous memory: copied frozen, quicker", a >> 10)),
    }
}

/// A checkpoint of a process that runs on: its private anonymous memory is copied into the
/// image while it runs (PREAREAS and PREPAGES sections, before HEAD: engine::precopy's rounds,
/// as a live migration sends them), its writes tracked; then it is frozen, and the image
/// stores only what it wrote since, the rest as kept runs (crf::pages::RUN_KEPT), which a
/// restore takes from those sections. Frozen for milliseconds, whatever the image's size and
/// the sink's speed; the image holds the process as it was at the freeze, as always. A
/// kernel that cannot track writes (before Linux 6.7), a small process or one with
/// descendants: frozen for the whole copy, as without `running` (said in Report::ahead).
fn running_checkpoint<W: Sink>(
    pid: i32,
    out: W,
    opts: &Options,
    budget: Duration,
    (look, warm): (Look, memory::Warming),
    commit: impl FnOnce(W) -> Result<()>,
) -> Result<Report> {
    let mut ahead = super::precopy::Ahead::default();
    let mut source = None;
    let mut shares = false;
    match worth_tracking(pid, opts) {
        Err(why) => ahead.not_live = Some(why),
        // (Which pages are the same only frame numbers say, which only CAP_SYS_ADMIN sees.)
        Ok(share) => match super::precopy::Source::arm_tree(pid, opts.alone, &mut ahead) {
            Ok(s) => (source, shares) = (Some(s), share && crate::ptrace::pagemap::Pagemap::frames_visible()),
            Err(e @ Error::NotHere { .. }) => ahead.not_live = Some(format!("{e}: copied frozen")),
            Err(e) => return Err(e),
        },
    }
    let Some(mut srcs) = source else {
        let mut r = frozen_checkpoint(pid, Out::New(out), opts, (look, warm), commit)?;
        r.ahead = Some(ahead);
        return Ok(r);
    };
    // (Source::arm seized the process: a refused PTRACE_SEIZE came before the first byte.)
    let mut w = Writer::new(out).map_err(image_io)?;
    // A tree that shares much since a fork: a restore holds the pages copied ahead, for the
    // processes to share them again (said on every PREMEMBER).
    let hold = if shares { crate::crf::pages::PREMEMBER_HOLD } else { 0 };
    let mut send = |f: super::precopy::Frame, b: &mut [u8]| {
        let (tag, flags) = match f {
            super::precopy::Frame::Member => (Tag::PREMEMBER, hold),
            super::precopy::Frame::Areas => (Tag::PREAREAS, 0),
            super::precopy::Frame::Pages => (Tag::PREPAGES, 0),
            super::precopy::Frame::Shm => (Tag::PRESHM, 0),
            super::precopy::Frame::Caught => return Ok(()),
        };
        w.section(tag, flags, &[b]).map_err(image_io)
    };
    // Failed, the Sources go with their tracking: the processes run on as they were.
    // (And the memory they share, PRESHM.)
    let mut shm = super::shmahead::ShmSource::default();
    let rest = "are copied while it is frozen";
    super::precopy::rounds(&mut srcs, (budget, false, shares), Some(&mut shm), &mut send, rest, &mut ahead)?;
    let precopied = super::precopy::Precopied::new(srcs, shares, Some(shm));
    // Their mappings' flags read as they run, just before the freeze, as a live migration
    // does (engine::vmflags): frozen, smaps would walk every page table of their memory.
    let flags_later = Some(super::vmflags::FlagsLater::default());
    let opts = Options { precopied: Some(precopied), flags_later, ..opts.clone() };
    // The image is committed (synced, renamed) once the process runs again, as in a frozen
    // checkpoint that lets it run on, and once its tracking has ended (precopy::Source).
    let mut written = None;
    let mut r = frozen_checkpoint(pid, Out::Begun(w), &opts, (look, warm), |w| {
        written = Some(w);
        Ok(())
    })?;
    drop(opts);
    if let Some(w) = written {
        commit(w)?;
    }
    r.ahead = Some(ahead);
    Ok(r)
}

/// One process of the checkpoint, frozen: its leader and other threads traced, every
/// thread's registers to put back once read, the signals that came meanwhile.
struct Frozen {
    t: Tracee,
    others: Vec<Other>,
    live: Option<Regs>,
    held: Vec<Caught>,
    /// It was stopped by a signal (SIGSTOP, SIGTSTP...) when we seized it: the image says
    /// SIGSTOP is pending, so that it comes back stopped.
    stopped: bool,
}

impl Frozen {
    /// Every thread gets consistent registers back before it runs again (if we never read
    /// them, we never changed them).
    fn put_back(&self) -> Result<()> {
        let mut r = self.live.as_ref().map_or(Ok(()), |l| self.t.set_regs(l));
        for o in self.others.iter().filter(|o| o.moved) {
            if let Some(l) = &o.live {
                r = r.and(o.t.set_regs(l));
            }
        }
        r
    }
}

/// [`checkpoint`] for a caller that has just run [`precheck`] itself (migrate, before it
/// connects): what changed since is still refused, once the processes are frozen.
pub fn checkpoint_prechecked<W: Sink>(
    pid: i32,
    out: W,
    opts: &Options,
    commit: impl FnOnce(W) -> Result<()>,
) -> Result<Report> {
    let opts = Options { running: None, ..opts.clone() };
    frozen_checkpoint(pid, Out::New(out), &opts, (Look::Passed, memory::Warming::here()), commit)
}

/// Freezes the tree, checks it as `look` asks, and checkpoints it, reading its pages into the
/// buffers `warm` makes. With `Options::running` and neither kill nor stop,
/// `commit` runs once the processes run again.
fn frozen_checkpoint<W: Sink>(
    pid: i32,
    out: Out<W>,
    opts: &Options,
    (look, warm): (Look, memory::Warming),
    commit: impl FnOnce(W) -> Result<()>,
) -> Result<Report> {
    // Each mapped file read once, for all the processes (a tree's share their libraries),
    // and once for a precheck before (see `checkpoint`).
    let _files = crate::res::fileid::Remembered::scope();
    // Their mappings' flags, read while they still run (engine::vmflags).
    if let Some(f) = &opts.flags_later {
        f.look(&members(pid, opts.alone), opts.precopied.as_ref())?;
    }
    // While the processes are frozen, threads that still run (spinning ones, on a busy node)
    // must not keep crs from the CPU: crs runs at the highest priority it may meanwhile.
    let mut urgent = Urgent::raise();
    // The page buffers, made on the other CPU while we looked at the processes running.
    // Without that look (Look::Skipped) none are made ahead, and the reads make what they
    // need: a thread making them beside the freeze held the CPU a process woken to stop
    // wanted (1 ms, in half the checkpoints of sleep), and one made to give way (SCHED_IDLE)
    // starved on a busy node while it held our mappings' lock (and our exit) for 0.5 s.
    // Freed once the processes are let go or killed (3 MiB unmapped cost 0.3 ms on a slow VM),
    // beside their end.
    let mut spare = if look == Look::Skipped { Vec::new() } else { warm.take() };
    if opts.tcp_established {
        // Whether waiting connections can go back (the kernel's BTF read, a program loaded):
        // asked now, not while the processes are frozen.
        let _ = crate::res::tcpqueue::usable();
    }
    let t0 = Instant::now();
    let mut procs: Vec<Frozen> = Vec::new();
    let mut zombies = 0;
    // Pty pairs whose bytes in flight were read out, to be put back if the processes run on.
    let mut drained = Vec::new();
    let mut notes = Vec::new();
    // Established TCP connections held still (repair mode, their packets blocked).
    let mut conns = crate::res::tcpconn::Frozen::default();
    let late = opts.running.is_some() && !opts.kill && !opts.stop && opts.postcopy.is_none();
    let mut commit = Some(commit);
    let mut written = None;
    let result = (|| {
        urgent.real_time(true);
        let members = freeze_tree(pid, opts.alone, &mut procs);
        // Who holds the tree's pipes and sockets outside it: one walk of /proc, frozen.
        let _walk = crate::res::endpoints::Snapshot::take();
        urgent.real_time(false);
        let members = members?;
        let mut out = out.begin()?;
        let clocks = crate::res::clocks::read();
        match look {
            Look::Refused => check_all(pid, opts, true)?,
            Look::Skipped => {
                Error::blocked(pid, unlooked(pid, &procs.iter().map(|p| p.t.pid).collect::<Vec<_>>(), opts))?
            }
            Look::Passed => {}
        }
        zombies = members.iter().filter(|m| m.zombie.is_some()).count();
        let threads: usize = procs.iter().map(|p| p.others.len() + 1).sum();
        debug!("pid {pid}: {} processes, {threads} threads frozen after {:.1} ms", procs.len(), ms(t0));
        // Again, now that nothing can change, before anything is collected: a caller may have
        // run precheck a while ago.
        let pids: Vec<i32> = procs.iter().map(|p| p.t.pid).collect();
        // The memory they share, compared with what went ahead while they are collected.
        if let Some(p) = &opts.precopied {
            p.compare_shm(&pids);
        }
        Error::blocked(pid, tree::check(&members))?;
        let mut states = Vec::with_capacity(procs.len());
        for (i, p) in procs.iter_mut().enumerate() {
            let st = collect(p, opts, &pids).map_err(|e| match e {
                Error::Blocked { pid: m, reasons } if i > 0 => {
                    let who = crate::res::endpoints::who(m);
                    Error::Blocked {
                        pid,
                        reasons: reasons.into_iter().map(|r| format!("its descendant {who}: {r}")).collect(),
                    }
                }
                e => e,
            })?;
            states.push(st);
        }
        // Their remote syscalls are done: the comparison of their mapping flags may begin,
        // beside the last look at a pre-copy's pages, which walks as many page tables (16 ms
        // for 4 GiB) on the other CPU. (A post-copy's begins once the copy runs: it need not
        // hold up the freeze, and on a node short of CPUs it would; see
        // migration::postcopy::send.)
        if let Some(f) = opts.flags_later.as_ref().filter(|_| opts.postcopy.is_none()) {
            f.check()?;
        }
        // The last writes of a pre-copy.
        if let Some(p) = &opts.precopied {
            p.freeze(&pids)?;
        }
        states[0].clocks = Some(clocks);
        states[0].terminal = job_terminal(&states)?;
        states[0].ptys = pty_pairs(&states, &members, &pids, &mut drained)?;
        if members.len() > 1 {
            states[0].tree = members;
            states[0].tree_pipes = tree_pipes(&mut states);
            states[0].tree_shm = crate::res::treeshm::collect(&mut states)?;
        }
        // The private pages they share since a fork, stored once (not with a live migration,
        // whose first process's pages are held at the destination already).
        let cow = if states.len() > 1 && opts.precopied.is_none() && opts.postcopy.is_none() {
            crate::res::treecow::collect(&states)?
        } else {
            None
        };
        states[0].tree_cow = cow.as_ref().map(|c| c.cow.clone());
        // What the destination of a live migration holds already, of each process.
        let ahead = match &opts.precopied {
            Some(p) => p.kept_all(&mut states)?,
            None => Vec::new(),
        };
        if states.len() > 1 {
            copies_once(&mut states, &ahead)?;
        }
        let all: Vec<(i32, &[files::Fd])> = states.iter().map(|st| (st.head.pid, st.files.as_slice())).collect();
        let shared = crate::res::fdescs::collect(&all)?;
        // Each registration of an epoll instance made by one of the processes holding it.
        let mut eps: Vec<(i32, &mut Vec<_>)> = states.iter_mut().map(|st| (st.head.pid, &mut st.epolls)).collect();
        crate::res::epoll::share(&mut eps, &shared)?;
        states[0].fdescs = shared;
        let limit = opts.deleted_max.unwrap_or(crate::res::deleted::MAX_TOTAL);
        (states[0].deleted, states[0].memfds) = carried_files(&states, limit)?;
        let used = states[0].deleted.iter().map(|d| d.data.len() as u64).sum::<u64>()
            + states[0].memfds.iter().flat_map(|m| m.runs.iter()).map(|r| r.1.len() as u64).sum::<u64>();
        states[0].sysv = sysv_objects(&states, limit.saturating_sub(used))?;
        let listening = unix_listening(&states)?;
        (states[0].unix_pairs, states[0].unix_conns) = unix_pairs(&states, &listening)?;
        states[0].unix_listening = listening.into_iter().map(|l| l.0).collect();
        (states[0].inet_socks, states[0].tcp_conns.conns, states[0].tcp_queued) =
            inet_sockets(&states, opts.tcp_established, &mut conns, &mut notes)?;
        // With --kill the block on their packets stays, for the restore to lift.
        if opts.kill {
            states[0].tcp_conns.lock = conns.lock_name();
        }
        debug!("pid {pid}: all collected {:.1} ms after the freeze began", ms(t0));
        // An image committed once the processes run again (a running checkpoint's) ends only
        // once the flags taken before the freeze are found to be theirs, while they are still
        // frozen: a stream without its end is refused by any reader. (A live migration
        // compares them before its copy may run.)
        let flags_first = || match opts.flags_later.as_ref().filter(|_| late) {
            Some(f) => f.wait().map_err(|e| match e {
                Error::Refused(d) => {
                    Error::Refused(format!("{d}: the image was not completed; try again, or checkpoint it --frozen"))
                }
                e => e,
            }),
            None => Ok(()),
        };
        // A checkpoint that lets them run on writes its image once they do: held here, the
        // pages of their mapped files left in the files (see crf::Writer::hold).
        if late {
            out.hold(HELD_MAX);
        }
        let Written { pages, stubs, w, opened } =
            write(out, &states, &mut spare, (&ahead, opts.postcopy.as_ref()), cow.as_ref(), &flags_first)?;
        match commit.take() {
            Some(c) if !late => {
                // (A post-copy sends the rest of their memory in it, seconds maybe, while the
                // processes run at the destination.)
                urgent.at_ease();
                let (out, bytes) = w.finish().map_err(image_io)?;
                c(out)?;
                Ok((pages, bytes, stubs))
            }
            c => {
                written = c.map(|c| (c, w, opened));
                Ok((pages, 0, stubs))
            }
        }
    })();
    // Without a look before the freeze, a refusal found on the way names one reason: every one
    // is named, looked for now, frozen.
    let result = match result {
        Err(Error::Blocked { pid: p, reasons: mut why }) if look == Look::Skipped => {
            // (check_all looks at what `unlooked` does too.)
            if let Err(Error::Blocked { reasons, .. }) = check_all(pid, opts, true) {
                for r in reasons {
                    if !why.contains(&r) {
                        why.push(r);
                    }
                }
            }
            Err(Error::Blocked { pid: p, reasons: why })
        }
        r => r,
    };
    // Comparisons of the flags still under way hold the tracking: over before the processes
    // run again.
    if result.is_err()
        && let Some(f) = &opts.flags_later
    {
        let _ = f.wait();
    }
    urgent.real_time(true);
    let mut restored = Ok(());
    let mut tcp_lock = String::new();
    if !(opts.kill && result.is_ok()) {
        for d in &drained {
            restored = restored.and(d.put_back());
        }
        // Their connections carry on with them.
        restored = restored.and(conns.release());
    } else {
        // Killed in repair mode, their connections close without a packet; the block stays.
        tcp_lock = conns.keep();
    }
    for p in &procs {
        restored = restored.and(p.put_back());
    }
    let processes = procs.len();
    let (pages, mut image_bytes, stubs) = match result {
        Ok(r) => r,
        Err(e) => {
            let held: Vec<(i32, Vec<Caught>)> = procs.into_iter().map(|p| (p.t.pid, p.held)).collect();
            for (m, h) in &held {
                redeliver(*m, h);
            }
            return Err(e);
        }
    };
    let frozen = if opts.kill {
        for p in &procs {
            p.t.kill(Signal::SIGKILL)?;
        }
        let frozen = t0.elapsed();
        urgent.real_time(false);
        drop(std::mem::take(&mut spare));
        // As their tracer we see them die, the other threads first (the leader is reported
        // only after them): once this returns, the processes are gone (zombies until their
        // parents reap them).
        for p in procs {
            for o in p.others {
                while o.t.wait().is_ok() {}
            }
            while p.t.wait().is_ok() {}
        }
        debug!("checkpointed pid {pid}: {pages} pages, image {image_bytes} bytes; killed it");
        frozen
    } else {
        restored?;
        let mut pids = Vec::new();
        for p in procs {
            if opts.stop {
                p.t.kill(Signal::SIGSTOP)?;
            }
            for o in p.others {
                o.t.detach()?;
            }
            pids.push((p.t.pid, p.held));
            p.t.detach()?;
        }
        // Until the last thread was let go.
        let frozen = t0.elapsed();
        urgent.real_time(false);
        for (m, held) in &pids {
            if opts.stop {
                procfs::wait_stopped(*m);
            }
            redeliver(*m, held);
        }
        // They run on whatever becomes of it: the image is written now (the pages left in
        // files read), and ends only if those files did not change meanwhile (through a pipe,
        // a stream without its end is refused by any reader).
        if let Some((commit, mut w, opened)) = written {
            w.release().map_err(image_io)?;
            for o in &opened {
                o.unchanged()?;
            }
            let (out, bytes) = w.finish().map_err(image_io)?;
            image_bytes = bytes;
            commit(out)?;
        }
        debug!(
            "checkpointed pid {pid}: {pages} pages, image {image_bytes} bytes, frozen {:.1} ms, written {:.1} ms after the freeze",
            frozen.as_secs_f64() * 1e3,
            ms(t0)
        );
        frozen
    };
    Ok(Report { pid, pages, image_bytes, frozen, stubs, processes, zombies, notes, tcp_lock, ahead: None })
}

/// Runs `f` on process `pid`, frozen for that moment (all its threads), with syscalls run in
/// its leader; then lets it go as it was (registers, signals that came meanwhile).
pub fn in_process<T>(pid: i32, f: impl FnOnce(&mut Ctl) -> Result<T>) -> Result<T> {
    let mut procs = Vec::new();
    let r = freeze_process(pid, &mut procs).and_then(|_| {
        let p = procs.first_mut().ok_or_else(|| Error::Proc(format!("pid {pid} was not frozen")))?;
        let rseq = p.t.rseq()?;
        let live = regs::collect(&p.t, rseq)?.live;
        p.live = Some(live);
        let gadget = find_gadget(pid, &procfs::read_maps(pid)?)?;
        let mut c = Ctl { r: Remote::new(&p.t, gadget, live), scratch: Scratch::default() };
        let r = f(&mut c);
        p.held.append(&mut c.r.held);
        r
    });
    let mut back = Ok(());
    for p in procs {
        back = back.and(p.put_back());
        for o in p.others {
            back = back.and(o.t.detach());
        }
        let (m, held) = (p.t.pid, p.held);
        back = back.and(p.t.detach());
        redeliver(m, &held);
    }
    let r = r?;
    back.map(|_| r)
}

fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// Freezes `root` and, unless `alone`, every descendant: each live one is seized with all its
/// threads, and the tree is walked again until it holds no live process not yet frozen (one
/// still running may have forked meanwhile). A zombie is left as it is; a descendant that
/// exits meanwhile is left out, or kept as the zombie it became. Returns the members, parents
/// first, with `procs` (the live ones) in the same order.
fn freeze_tree(root: i32, alone: bool, procs: &mut Vec<Frozen>) -> Result<Vec<tree::Member>> {
    freeze_process(root, procs)?;
    let order = loop {
        let mut grew = false;
        let walked = members(root, alone);
        for &m in &walked {
            if procs.iter().any(|p| p.t.pid == m) || tree::member(m).is_ok_and(|x| x.zombie.is_some()) {
                continue;
            }
            match freeze_process(m, procs) {
                Ok(()) => grew = true,
                Err(Error::Gone(_)) => {}
                // A process that became a zombie cannot be traced.
                Err(_) if tree::member(m).is_ok_and(|x| x.zombie.is_some()) => {}
                Err(Error::Permission(why)) => {
                    return Err(Error::Permission(format!(
                        "{why} (it is a descendant of pid {root}; ckpt --alone leaves them out)"
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        // A walk that found no one new is the tree as it stays.
        if !grew {
            break walked;
        }
    };
    let mut out = Vec::with_capacity(order.len());
    for &m in &order {
        match tree::member(m) {
            Ok(x) if x.zombie.is_some() || procs.iter().any(|p| p.t.pid == m) => out.push(x),
            Ok(_) => return Err(Error::Proc(format!("pid {m} appeared in the tree after it was frozen"))),
            Err(e) => return Err(e),
        }
    }
    if let Some(p) = procs.iter().find(|p| !order.contains(&p.t.pid)) {
        return Err(Error::Proc(format!("pid {} left the tree while frozen", p.t.pid)));
    }
    procs.sort_by_key(|p| order.iter().position(|&x| x == p.t.pid));
    Ok(out)
}

/// The pty pairs the processes hold whole, read out (see res::ptys) onto `drained`.
fn pty_pairs(
    states: &[ProcessState],
    members: &[tree::Member],
    pids: &[i32],
    drained: &mut Vec<crate::res::ptys::Drained>,
) -> Result<Vec<crate::res::ptys::Pty>> {
    use crate::res::ptys;
    let mut holders: Vec<(i32, i32, u32)> = Vec::new();
    let mut pairs: Vec<ptys::PtyId> = Vec::new();
    for st in states {
        let ptmx = st.files.iter().filter(|f| f.kind == files::KIND_PTMX);
        holders.extend(ptmx.clone().map(|f| (st.head.pid, f.fd, f.id.ino as u32)));
        pairs.extend(ptmx.map(|f| (f.id.dev, f.id.ino as u32)));
    }
    if holders.is_empty() {
        return Ok(Vec::new());
    }
    pairs.sort_unstable_by_key(|p| (p.1, p.0));
    pairs.dedup();
    // A restore makes every pair again in its own /dev/pts, each with its number.
    if let Some(w) = pairs.windows(2).find(|w| w[0].1 == w[1].1) {
        return Err(Error::Refused(format!(
            "the processes hold two pty pairs numbered {} in two devpts instances (a container's /dev/pts and another), which a restore cannot both make again",
            w[0].1
        )));
    }
    Error::blocked(pids[0], ptys::outside(pids, &pairs))?;
    let live: Vec<(i32, i32, i32)> =
        members.iter().filter(|m| m.zombie.is_none()).map(|m| (m.pid, m.pgid, m.sid)).collect();
    ptys::collect(&holders, &live, drained)
}

/// The state of the job's terminal, read through the first fd found on it (`--shell-job`).
fn job_terminal(states: &[ProcessState]) -> Result<Option<crate::res::terminal::Terminal>> {
    let root = states[0].head.pid;
    for st in states {
        if let Some(f) = st.files.iter().find(|f| f.kind == files::KIND_TTY) {
            return crate::res::terminal::collect(st.head.pid, f.fd, &f.id.path, f.id.rdev, root).map(Some);
        }
    }
    Ok(None)
}

/// The pipes more than one process of the tree holds, taken out of each one's own: the image
/// holds each once, for the restore to make before the processes, which inherit it.
fn tree_pipes(states: &mut [ProcessState]) -> Vec<crate::res::pipes::Pipe> {
    let holders = |ino: u64, states: &[ProcessState]| {
        states.iter().filter(|st| st.files.iter().any(|f| f.kind == files::KIND_PIPE && f.id.ino == ino)).count()
    };
    let mut out: Vec<crate::res::pipes::Pipe> = Vec::new();
    for i in 0..states.len() {
        let mine = std::mem::take(&mut states[i].pipes);
        for p in mine {
            if holders(p.ino, states) > 1 {
                if !out.iter().any(|q| q.ino == p.ino) {
                    out.push(p);
                }
            } else {
                states[i].pipes.push(p);
            }
        }
    }
    out
}

/// The deleted files and memfds the processes hold open or mapped, each once, read through
/// the first fd or mapping found; refused past `limit` bytes in all.
fn carried_files(states: &[ProcessState], limit: u64) -> Result<(Vec<Deleted>, Vec<Memfd>)> {
    use crate::res::memory::{VMA_DELETED, VMA_MAY_WRITE, VMA_MEMFD, VMA_SHARED};
    let (mut deleted, mut memfds): (Vec<Deleted>, Vec<Memfd>) = (Vec::new(), Vec::new());
    let mut total = 0u64;
    // Whether any process maps file `id` shared and writable (or able to become so).
    let mapped_writable = |id: &FileId| {
        let writable = |v: &&crate::res::memory::Vma| {
            v.flags & VMA_SHARED != 0 && (v.prot & libc::PROT_WRITE as u32 != 0 || v.flags & VMA_MAY_WRITE != 0)
        };
        let same = |v: &&crate::res::memory::Vma| v.file.as_ref().is_some_and(|f| (f.dev, f.ino) == (id.dev, id.ino));
        states.iter().any(|st| st.vmas.iter().filter(writable).any(|v| same(&v)))
    };
    for st in states {
        let pid = st.head.pid;
        let fds = st.files.iter().filter(|f| matches!(f.kind, files::KIND_DELETED | files::KIND_MEMFD));
        let by_fd = fds.map(|f| (format!("/proc/{pid}/fd/{}", f.fd), &f.id, f.kind == files::KIND_MEMFD));
        let maps = st.vmas.iter().filter(|v| v.flags & (VMA_DELETED | VMA_MEMFD) != 0);
        let by_map = maps.filter_map(|v| {
            let link = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
            Some((link, v.file.as_ref()?, v.flags & VMA_MEMFD != 0))
        });
        for (link, id, is_memfd) in by_fd.chain(by_map) {
            let seen = |dev, ino| (dev, ino) == (id.dev, id.ino);
            if deleted.iter().any(|d| seen(d.dev, d.ino)) || memfds.iter().any(|m| seen(m.dev, m.ino)) {
                continue;
            }
            let left = limit.saturating_sub(total);
            if is_memfd {
                let m = crate::res::memfd::collect(&link, id, left, mapped_writable(id))?;
                total += m.runs.iter().map(|r| r.1.len() as u64).sum::<u64>();
                memfds.push(m);
            } else {
                let d = crate::res::deleted::collect(&link, &id.path, left)?;
                total += d.data.len() as u64;
                deleted.push(d);
            }
        }
    }
    Ok((deleted, memfds))
}

/// The System V objects the processes use, with the attachments of each segment checked whole:
/// from its start to its end, in pieces that follow each other (a restore attaches the whole
/// segment again, then protects each piece).
fn sysv_objects(states: &[ProcessState], limit: u64) -> Result<crate::res::sysv::Ipc> {
    use crate::res::memory::{VMA_SYSV, Vma};
    let pids: Vec<i32> = states.iter().map(|st| st.head.pid).collect();
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/ipc")).ok();
    let root = pids.first().copied().unwrap_or_default();
    if let Some(&other) = pids.iter().find(|&&p| ns(p) != ns(root)) {
        return Err(Error::Refused(format!(
            "pid {other} is in another IPC namespace than pid {root}, which crs does not restore: checkpoint each on its own"
        )));
    }
    let id = |v: &Vma| v.file.as_ref().map_or(-1, |f| f.ino as i32);
    let attached: Vec<i32> =
        states.iter().flat_map(|st| st.vmas.iter()).filter(|v| v.flags & VMA_SYSV != 0).map(id).collect();
    let ipc = crate::res::sysv::collect(&pids, &attached, limit)?;
    for st in states {
        // Each attachment: (id, where its next piece would start, its length so far; MAX
        // for one that does not begin at the segment's start).
        let mut whole: Vec<(i32, u64, u64)> = Vec::new();
        for v in st.vmas.iter().filter(|v| v.flags & VMA_SYSV != 0) {
            let off = v.pgoff * crate::crf::PAGE_SIZE as u64;
            match whole.last_mut() {
                Some(w) if off != 0 && w.0 == id(v) && w.1 == v.start && w.2 == off => {
                    (w.1, w.2) = (v.end, off + v.len())
                }
                _ => whole.push((id(v), v.end, if off == 0 { v.len() } else { u64::MAX })),
            }
        }
        for (i, _, len) in whole {
            let size = ipc.shms.iter().find(|s| s.0.id == i).map(|s| s.1.div_ceil(4096) * 4096);
            if size != Some(len) {
                return Err(Error::Refused(format!(
                    "pid {} has System V shared memory {i} attached in part (a piece unmapped or moved), which crs does not restore",
                    st.head.pid
                )));
            }
        }
    }
    Ok(ipc)
}

/// The connected unix socket pairs the processes hold whole, each once, each end's queue
/// copied through one of its holders; and which of them are connections to their listeners,
/// accepted or waiting. Refuses a listener with connections waiting from outside.
fn unix_pairs(
    states: &[ProcessState],
    listening: &[(crate::res::unixpairs::Listening, u32)],
) -> Result<(Vec<crate::res::unixpairs::Pair>, Vec<crate::res::unixpairs::Conn>)> {
    use crate::res::endpoints::{Peer, unix_pair};
    use crate::res::unixpairs::{Conn, Pair, collect_end};
    // Every end, by inode, with one (pid, fd) that holds it.
    let mut ends: Vec<(u64, i32, i32)> = Vec::new();
    for st in states {
        for f in st.files.iter().filter(|f| f.kind == files::KIND_UNIXPAIR) {
            if !ends.iter().any(|e| e.0 == f.id.ino) {
                ends.push((f.id.ino, st.head.pid, f.fd));
            }
        }
    }
    let pids: Vec<i32> = states.iter().map(|st| st.head.pid).collect();
    let (mut pairs, mut conns): (Vec<Pair>, Vec<Conn>) = (Vec::new(), Vec::new());
    for &(ino, pid, fd) in &ends {
        if pairs.iter().any(|p| p.ends.iter().any(|e| e.ino == ino)) {
            continue;
        }
        let gone = || {
            Error::Proc(format!("socket:[{ino}] (fd {fd} of pid {pid}): its peer is no longer held in the checkpoint"))
        };
        match unix_pair(&pids, pid, fd, ino).ok_or_else(gone)? {
            Peer::Socket { ino: peer, via } => {
                let other = ends.iter().find(|e| e.0 == peer).ok_or_else(gone)?;
                let (ty, a) = collect_end(pid, fd, ino)?;
                let (_, b) = collect_end(other.1, other.2, other.0)?;
                pairs.push(Pair { ty, ends: [a, b] });
                if let Some((listener, mine)) = via {
                    let ino = if mine { ino } else { peer };
                    conns.push(Conn { listener, ino, accepted: true, ..Default::default() });
                }
            }
            Peer::Closed => {
                let (ty, a) = collect_end(pid, fd, ino)?;
                pairs.push(Pair { ty, ends: [a, Default::default()] });
            }
            Peer::Waiting { listener } => {
                let (_, e) = collect_end(pid, fd, ino)?;
                let (sndbuf, rcvbuf) = (e.sndbuf, e.rcvbuf);
                conns.push(Conn { listener, ino, accepted: false, sndbuf, rcvbuf });
            }
        }
    }
    for (l, waiting) in listening {
        let ours = conns.iter().filter(|c| !c.accepted && c.listener == l.ino).count() as u32;
        if ours != *waiting {
            return Err(Error::Refused(format!(
                "the unix socket listening on {} has {waiting} connections waiting, {} of them from outside the checkpoint or with data sent already",
                crate::text::printable(&String::from_utf8_lossy(&l.name)),
                waiting - ours.min(*waiting)
            )));
        }
    }
    Ok((pairs, conns))
}

/// The TCP and UDP sockets the processes hold, each once, read through one of its holders;
/// the established connections apart, held still by `conns`, with (`established`: ckpt
/// --tcp-established) those waiting in listeners' queues.
fn inet_sockets(
    states: &[ProcessState],
    established: bool,
    conns: &mut crate::res::tcpconn::Frozen,
    notes: &mut Vec<String>,
) -> Result<(Vec<crate::res::inet::Sock>, Vec<crate::res::tcpconn::Conn>, Vec<crate::res::tcpqueue::Queued>)> {
    use crate::res::inet;
    // Why the connections waiting on a listener are left out (None: they are not), asked
    // only of a listener (it loads a BPF program).
    let why = std::cell::OnceCell::new();
    let queue = || {
        why.get_or_init(|| match (crate::res::tcpqueue::usable(), established) {
            (Err(why), _) => Some(format!("this kernel cannot put them back: {why}")),
            (Ok(()), false) => Some("ckpt --tcp-established carries them".to_string()),
            (Ok(()), true) => None,
        })
        .clone()
    };
    let mut socks: Vec<inet::Sock> = Vec::new();
    let mut seen = Vec::new();
    let mut connections = Vec::new();
    let mut netns = None;
    let mut same_netns = |pid: i32, what: &str| {
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        if netns.get_or_insert_with(|| (pid, ns.clone())).1 != ns {
            return Err(Error::Refused(format!(
                "{what} is in another network namespace than the others' connections, which crs does not restore"
            )));
        }
        Ok(())
    };
    for st in states {
        let pid = st.head.pid;
        for f in st.files.iter().filter(|f| f.kind == files::KIND_INET) {
            if seen.contains(&f.id.ino) {
                continue;
            }
            seen.push(f.id.ino);
            let what = format!("socket:[{}] (fd {} of pid {pid})", f.id.ino, f.fd);
            let s = procfs::getfd(pid, f.fd, &what)?;
            if !inet::is_established(std::os::fd::AsRawFd::as_raw_fd(&s)) {
                let sock = inet::collect(pid, f.fd, f.id.ino, &queue, notes)?;
                let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
                if established && sock.state == inet::LISTEN && inet::readable(fd) && queue().is_none() {
                    // (Before they are taken: they go back in the namespace of the first.)
                    same_netns(pid, &format!("the listener {what}, with connections waiting,"))?;
                    // And none is taken that could not go back whole.
                    let port = inet::addr_of(&sock.local).map_or(0, |a| a.port());
                    let most = inet::most_waiting(pid, sock.family, port)?;
                    if most > crate::res::tcpqueue::MAX_WAITING {
                        return Err(Error::Refused(format!(
                            "a connection waiting on the {} holds {most} bytes its client sent, more than the {} crs can put back in a listener's queue: let the process accept it first",
                            inet::describe_one(&sock),
                            crate::res::tcpqueue::MAX_WAITING
                        )));
                    }
                    conns.adopt(pid, fd, f.id.ino)?;
                }
                socks.push(sock);
                continue;
            }
            same_netns(pid, &format!("{what}, an established connection,"))?;
            connections.push((s, f.id.ino));
        }
    }
    let (taken, queued) = match netns {
        Some((pid, _)) => {
            let (taken, queued, left) = conns.take(pid, connections)?;
            notes.extend(left);
            (taken, queued)
        }
        None => Default::default(),
    };
    Ok((socks, taken, queued))
}

/// The listening unix sockets the processes hold whole, each once, with the connections
/// waiting on each.
fn unix_listening(states: &[ProcessState]) -> Result<Vec<(crate::res::unixpairs::Listening, u32)>> {
    let pids: Vec<i32> = states.iter().map(|st| st.head.pid).collect();
    let mut out: Vec<(crate::res::unixpairs::Listening, u32)> = Vec::new();
    for st in states {
        for f in st.files.iter().filter(|f| f.kind == files::KIND_UNIXLISTEN) {
            if out.iter().any(|l| l.0.ino == f.id.ino) {
                continue;
            }
            let l = crate::res::endpoints::unix_listener(&pids, st.head.pid, f.fd, f.id.ino).ok_or_else(|| {
                Error::Proc(format!(
                    "socket:[{}] (fd {} of pid {}) no longer listens alone",
                    f.id.ino, f.fd, st.head.pid
                ))
            })?;
            let listening = crate::res::unixpairs::Listening {
                ino: f.id.ino,
                ty: l.ty,
                name: l.name,
                backlog: l.backlog,
                file: l.file,
            };
            out.push((listening, l.waiting));
        }
    }
    Ok(out)
}

/// Seizes and stops process `pid` and all its threads, adding it to `procs`.
fn freeze_process(pid: i32, procs: &mut Vec<Frozen>) -> Result<()> {
    // (Once seized, a stopped process shows as traced, 't'.)
    let stopped = procfs::read_stat(pid).is_ok_and(|s| s.state == 'T');
    let t = Tracee::seize(pid)?;
    let mut p = Frozen { t, others: Vec::new(), live: None, held: Vec::new(), stopped };
    // The leader is asked first and waited for last: until its other threads stop, those
    // that spin may hold every CPU it needs to reach its stop. Threads it started meanwhile
    // are caught by the second round.
    let r = p.t.interrupt_start().and_then(|_| {
        freeze_others(pid, &mut p.others, &mut p.held)?;
        p.t.interrupted(&mut p.held)?;
        freeze_others(pid, &mut p.others, &mut p.held)
    });
    // Pushed even on failure: the caller puts back and lets go of whatever was frozen.
    procs.push(p);
    r
}

/// Writes the image of the collected `states` (the root's first) to `w`, all but its end (the
/// trailer), which `before_end` must pass first. Returns the pages written, the stubs, and the
/// Writer, for the caller to finish and commit; with the files a held Writer (crf::Writer::hold)
/// reads pages from as it is released, to be found unchanged before the image is committed.
fn write<W: Sink>(
    mut w: Writer<W>,
    states: &[ProcessState],
    spare: &mut Vec<Vec<u8>>,
    (ahead, postcopy): (&[super::precopy::Kept], Option<&PostCopy>),
    cow: Option<&crate::res::treecow::Found>,
    before_end: &dyn Fn() -> Result<()>,
) -> Result<Written<W>> {
    let io = image_io;
    let mut pages = 0;
    let mut opened = Vec::new();
    let mut stubs = Vec::new();
    // Memory shared since a fork in the tree (TREE_SHM), by object: the offsets in it whose
    // pages an earlier process stored. Stored once: the restore makes the object first, and
    // every process maps it.
    let mut shm_stored: std::collections::HashMap<(u64, u64), Vec<(u64, u64)>> = Default::default();
    let page = crate::crf::PAGE_SIZE as u64;
    for (i, st) in states.iter().enumerate() {
        image::write(&mut w, st, true)?;
        // A reader restoring from a stream can check the image's header, create the processes
        // and lay out the mappings while we read the pages.
        w.flush().map_err(io)?;
        if let Some(c) = cow.filter(|_| i == 0) {
            let sources: Vec<(i32, &[Run])> =
                states.iter().zip(&c.sources).map(|(s, r)| (s.head.pid, r.as_slice())).collect();
            pages += memory::dump_shared(&sources, &mut w, spare)?;
        }
        let (kept, shared) = match (ahead.get(i), cow) {
            (Some(k), _) => (k.kept.clone(), k.shared.as_slice()),
            (None, Some(c)) => (c.kept[i].clone(), &[][..]),
            (None, None) => (Vec::new(), &[][..]),
        };
        // A post-copy sends the rest of those ranges later (after a pre-copy, what changed
        // since it or never went), of every process.
        let later = match postcopy {
            Some(_) => super::layout::minus(&PostCopy::ranges(st), &kept),
            None => Vec::new(),
        };
        let mut all = [kept.as_slice(), later.as_slice()].concat();
        all.sort_unstable();
        let shm = st.vmas.iter().filter(|v| v.flags & memory::VMA_TREE_SHM != 0);
        let shm: Vec<(&memory::Vma, (u64, u64))> =
            shm.filter_map(|v| v.file.as_ref().map(|f| (v, (f.dev, f.ino)))).collect();
        let mut omit = Vec::new();
        for &(v, obj) in &shm {
            let base = v.pgoff * page;
            for &(s, e) in shm_stored.get(&obj).into_iter().flatten() {
                let (s, e) = (s.max(base), e.min(base + v.len()));
                if s < e {
                    omit.push((v.start + (s - base), v.start + (e - base)));
                }
            }
        }
        omit.sort_unstable();
        // (Disjoint: several processes may have stored parts of one range.)
        omit.dedup_by(|b, a| {
            let joined = b.0 <= a.1;
            a.1 = if joined { a.1.max(b.1) } else { a.1 };
            joined
        });
        let not = memory::NotStored { kept: &all, later: &later, shared, omit: &omit };
        let sources = if w.holding() { copy_sources(st, &mut opened) } else { Vec::new() };
        let (n, runs, stored) = memory::dump_pages(st.head.pid, &st.vmas, not, &mut w, spare, &sources)?;
        for (s, e) in stored {
            if let Some(&(v, obj)) = shm.iter().find(|(v, _)| v.start <= s && e <= v.end) {
                let base = v.pgoff * page;
                shm_stored.entry(obj).or_default().push((base + (s - v.start), base + (e - v.start)));
            }
        }
        pages += n;
        if let Some(p) = postcopy {
            p.0.lock().map_err(|_| Error::Proc("post-copy state poisoned".into()))?.push((st.head.pid, runs));
        }
        image::write(&mut w, st, false)?;
        stubs.extend(files::stubs(&st.files));
    }
    before_end()?;
    Ok(Written { pages, stubs, w, opened })
}

/// What [`write`] returns: the pages written, the stubs, the Writer, the files it reads.
struct Written<W: Sink> {
    pages: u64,
    stubs: Vec<String>,
    w: Writer<W>,
    opened: Vec<Opened>,
}

/// A checkpoint whose processes run on keeps at most this much of their image in memory
/// while they are frozen (see crf::Writer::hold): a process that wrote more since the copy
/// began (one that writes about as fast as it is copied) has its image written at once, as
/// holding it would cost more than writing it.
const HELD_MAX: usize = 32 << 20;

/// A file a held image reads pages from once the processes run again, with what it was when
/// opened (the processes frozen).
struct Opened {
    src: std::sync::Arc<crate::crf::FileSource>,
    stamp: Stamp,
}

impl Opened {
    /// Whether the file is as it was when opened: its pages read since are the ones the
    /// frozen process had mapped (a change of content changes the ctime).
    fn unchanged(&self) -> Result<()> {
        let now = self.src.file.metadata().map_err(|e| Error::io(self.src.name.as_str(), e))?;
        match Stamp::of(&now) == self.stamp {
            true => Ok(()),
            false => Err(Error::Refused(format!(
                "{} changed while its unmodified pages were copied into the image, after the process was let go: the image was not completed; checkpoint again",
                self.src.name
            ))),
        }
    }
}

/// The mappings of `st` whose unmodified pages a held image reads from their files (see
/// crf::Writer::hold): each file opened now, while the processes are frozen, once (in
/// `opened`), by the mapping itself (/proc/PID/map_files, root) or else by its path, and only
/// if it is the very file mapped, as big as when collected; the pages of any other mapping
/// are read from the process now.
fn copy_sources(st: &ProcessState, opened: &mut Vec<Opened>) -> Vec<memory::CopySource> {
    use std::os::unix::fs::MetadataExt;
    let (pid, page) = (st.head.pid, crate::crf::PAGE_SIZE as u64);
    let mut out = Vec::new();
    for v in &st.vmas {
        let copy = v.kind == memory::KIND_FILE
            && v.flags & (memory::VMA_FILE_COPY | memory::VMA_COPY_ELSEWHERE | memory::VMA_SHARED)
                == memory::VMA_FILE_COPY
            && v.prot & libc::PROT_READ as u32 != 0;
        let Some(f) = v.file.as_ref().filter(|_| copy) else { continue };
        let known = opened.iter().find(|o| (o.stamp.dev, o.stamp.ino) == (f.dev, f.ino));
        let src = match known {
            Some(o) => o.src.clone(),
            None => {
                let by_map = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
                // (Never a FIFO or a device, whatever the path names by now.)
                let regular = crate::res::fileid::open_regular;
                let Ok(file) = regular(&by_map).or_else(|_| regular(&f.path)) else { continue };
                let Ok(md) = file.metadata() else { continue };
                if (md.dev(), md.ino(), md.size(), md.mtime(), md.mtime_nsec())
                    != (f.dev, f.ino, f.size, f.mtime_sec, f.mtime_nsec)
                {
                    continue;
                }
                let src = std::sync::Arc::new(crate::crf::FileSource { file, name: f.path.clone(), size: f.size });
                opened.push(Opened { src: src.clone(), stamp: Stamp::of(&md) });
                src
            }
        };
        out.push(memory::CopySource { start: v.start, end: v.end, base: v.pgoff * page, src });
    }
    out
}

/// A thread of the process other than its leader, frozen with it.
struct Other {
    t: Tracee,
    /// Its registers as it resumes, once read.
    live: Option<Regs>,
    /// Its signal mask, once read.
    mask: Option<u64>,
    /// Its registers may not be its own: syscalls were run in it since they were read.
    moved: bool,
}

impl Other {
    /// Its signal mask: as read with its registers, or now.
    fn sigmask(&self) -> Result<u64> {
        self.mask.map_or_else(|| self.t.sigmask(), Ok)
    }
}

/// Whether thread `tid` of `pid` is gone or on its way out (dead or a zombie).
fn exiting(pid: i32, tid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    matches!(state, None | Some('Z') | Some('X'))
}

/// Freezes every other thread of `pid` (whose leader is frozen already): seizes and interrupts
/// each one /proc/PID/task lists, then lists them again until no new one appears (a thread
/// still running may have started another). A thread that exits meanwhile is left out.
fn freeze_others(pid: i32, others: &mut Vec<Other>, held: &mut Vec<Caught>) -> Result<()> {
    loop {
        // All of the new ones are asked to stop first, then waited for: one by one, each would
        // wait for a CPU that the others, still running, hold.
        let mut asked = Vec::new();
        for tid in procfs::tasks(pid)? {
            if tid == pid || others.iter().any(|o| o.t.pid == tid) {
                continue;
            }
            let t = match Tracee::seize(tid) {
                Ok(t) => t,
                Err(Error::Gone(_)) => continue,
                // A thread that is exiting (a threading.Timer's, done) may no longer be traced.
                Err(Error::Permission(_)) if exiting(pid, tid) => continue,
                Err(e) => return Err(e),
            };
            match t.interrupt_start() {
                Ok(()) => asked.push(t),
                Err(Error::Gone(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if asked.is_empty() {
            return Ok(());
        }
        for t in asked {
            match t.interrupted(held) {
                Ok(()) => others.push(Other { t, live: None, mask: None, moved: false }),
                Err(Error::Gone(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Collects the state of the frozen process `p`: what /proc shows, and what only the process
/// itself can tell, asked through syscalls run in it (its registers are put back as soon as
/// those are done).
fn collect(p: &mut Frozen, opts: &Options, tree: &[i32]) -> Result<ProcessState> {
    let pid = p.t.pid;
    let rseq = p.t.rseq()?;
    let r = regs::collect(&p.t, rseq)?;
    p.live = Some(r.live);
    let (live, image_regs) = (&r.live, r.image);
    let (t, others, held, stopped) = (&p.t, &mut p.others, &mut p.held, p.stopped);
    let t0 = Instant::now();
    // Again, now that it cannot change, before anything is collected: a caller may have run
    // precheck a while ago.
    let status = procfs::read_status(pid)?;
    let mut why = Vec::new();
    Error::gather(blockers::status(pid, &status, true), &mut why)?;
    why.extend(blockers::relations(pid, blockers::numa_again()));
    // What the kernel shows of each other thread from outside (its credentials against the
    // leader's, its name, scheduling and robust list): read by a thread of ours while the
    // threads are asked (the process is frozen, a CPU otherwise idle); their reasons count
    // with the others, before anything is written.
    let names = (!others.is_empty()).then(|| {
        let (status, tids) = (status.clone(), others.iter().map(|o| o.t.pid).collect::<Vec<_>>());
        std::thread::spawn(move || -> Result<Vec<Outside>> {
            tids.iter()
                .map(|&tid| {
                    let (reasons, pending) = blockers::thread(pid, tid, &status)?;
                    Ok(Outside {
                        reasons,
                        pending,
                        sched: Sched::read(tid, 0)?,
                        robust: thread::robust_list(tid)?,
                        knobs: knobs::thread_read(tid),
                    })
                })
                .collect()
        })
    });
    let tids: Vec<i32> = std::iter::once(pid).chain(others.iter().map(|o| o.t.pid)).collect();
    let seccomp = crate::res::seccomp::collect(pid, &tids, &status, &mut why)?;
    Error::blocked(pid, why)?;
    let xsave = t.xstate()?;
    let sigmask = t.sigmask()?;
    let mut pending = pending::collect(t)?;
    if stopped && !pending.iter().any(|p| p.signo() == libc::SIGSTOP) {
        pending.push(pending::Pending::stop());
    }

    // Things only the process itself can tell: ask it, through syscalls run in it.
    let gadget = find_gadget(pid, &procfs::read_maps(pid)?)?;
    let mut c = Ctl { r: Remote::new(t, gadget, *live), scratch: Scratch::default() };
    let ignored = procfs::status_field(&status, "SigIgn").and_then(|v| u64::from_str_radix(v, 16).ok());
    c.r.stepping = ignored.is_some_and(|ign| crate::ptrace::remote::traps_harmless(sigmask, ign));
    let len = scratch_len(1 + others.len());
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    // Executable if the system allows (an LSM may refuse writable code): code run there asks
    // many things in one go rather than one remote syscall each. Shared memory of its own if
    // the process may map it (a seccomp filter may say no), so that it never merges with a
    // neighbouring mapping (see `smaps` below).
    let mmap = |c: &mut Ctl, prot, share| {
        c.mmap(RemoteAddr(0), len as u64, prot, share | libc::MAP_ANONYMOUS, None, 0, "scratch area")
    };
    let (wx, shared) = (rw | libc::PROT_EXEC, libc::MAP_SHARED);
    let mapped = mmap(&mut c, wx, shared)
        .map(|a| (a, true, true))
        .or_else(|_| mmap(&mut c, rw, shared).map(|a| (a, false, true)))
        .or_else(|_| mmap(&mut c, wx, libc::MAP_PRIVATE).map(|a| (a, true, false)))
        .or_else(|_| mmap(&mut c, rw, libc::MAP_PRIVATE).map(|a| (a, false, false)));
    let (addr, exec, apart) = match mapped {
        Ok(x) => x,
        Err(e) => {
            held.append(&mut c.r.held);
            return Err(e);
        }
    };
    c.scratch = Scratch { addr, len, exec };
    // Its mappings, of a process with other threads: read by a thread of ours while they are
    // asked (smaps walks every page table: a millisecond for 64 thread stacks). Nothing
    // changes them meanwhile but the scratch area, unmapped at the end, which (`apart`) is
    // shared memory of its own that never merges with a neighbour: it is left out by its
    // bounds. (Not earlier: the mmap would wait for the reader's hold on the mappings, and the
    // leader's questions for a CPU.) A private scratch area may have merged: smaps is read
    // once it is gone.
    let mut smaps = None;
    // What the process itself says goes straight into the model.
    let mut st = ProcessState { seccomp, ..Default::default() };
    let mut why = Vec::new();
    let asked = (|| -> Result<u64> {
        // Every question in one list, run in one go where the area allows.
        let mut l = Calls::new();
        let blocking = blockers::ask(&mut l);
        let signals = Signals::ask(&mut l);
        let task = Task::ask(&mut l);
        let (mdwe_q, thp_q) = (mdwe::ask(&mut l), thp::ask(&mut l));
        let slack = l.ask_prctl(libc::PR_GET_TIMERSLACK, 0);
        let knobs_q = knobs::ask(&mut l);
        let itimers_q = itimers::ask(&mut l);
        let ptimers_q = crate::res::ptimers::ask(pid, &mut l)?;
        let clear_tid = thread::ask_clear_tid(&mut l);
        let brk = l.ask_brk();
        let area = c.scratch.clone();
        let a = c.ask_at_once(&l, &area)?;
        let securebits = blocking.securebits(&a)?;
        let uids = procfs::status_ids(&status, "Uid");
        let all_root = uids.is_some_and(|u| u.iter().all(|&x| x == 0));
        let mixed = uids.is_none_or(|u| !all_root && u.contains(&0));
        why = blocking.reasons(&a, t, mixed)?;
        st.caps = crate::res::caps::collect(&status, securebits, all_root);
        st.signals = signals.signals(&a, sigmask)?;
        st.pending = pending;
        st.task = task.task(&a, pid, &status, rseq)?;
        st.mdwe = mdwe::flags(&a, mdwe_q);
        st.thp_disabled = thp::disabled(&a, thp_q)?;
        st.rlimits = rlimits::collect(pid)?;
        st.sched = Some(Sched::read(pid, a.ok(slack, "prctl(PR_GET_TIMERSLACK)", "query")?)?);
        st.knobs = knobs_q.knobs(&a, pid)?;
        st.itimers = itimers::timers(&a, &itimers_q)?;
        st.ptimers = crate::res::ptimers::timers(&a, ptimers_q)?;
        let altstack = (st.signals.altstack_sp, st.signals.altstack_flags, st.signals.altstack_size);
        let clear_tid = thread::clear_tid(&a, clear_tid)?;
        let brk = a.ok(brk, "brk", "query")?;
        let leader = ThreadInfo {
            tid: pid,
            sigmask,
            altstack,
            rseq,
            clear_tid,
            robust: thread::robust_list(pid)?,
            comm: procfs::thread_comm(pid, pid),
            pending: vec![],
        };
        st.threads = vec![ThreadState { regs: RegState { gpr: image_regs, xsave: xsave.clone() } }];
        st.thread_info = vec![leader];
        if apart && !others.is_empty() && opts.flags_later.is_none() {
            smaps = Some(std::thread::spawn(move || procfs::read_smaps(pid)));
        }
        let mut scheds = st.sched.iter().cloned().collect::<Vec<_>>();
        for (state, info, sched) in
            collect_threads(pid, others, &Asking { scratch: &c.scratch, gadget, ignored }, &st, held, names, &mut why)?
        {
            st.threads.push(state);
            st.thread_info.push(info);
            scheds.push(sched);
        }
        // Each thread's scheduling only when one differs from the leader's.
        if scheds.iter().any(|s| Some(s) != st.sched.as_ref()) {
            st.thread_sched = scheds;
        }
        debug!("pid {pid}: its threads asked {:.1} ms into the frozen work", t0.elapsed().as_secs_f64() * 1e3);
        Ok(brk)
    })();
    let unmapped = c.munmap_last(addr, len as u64, "scratch area");
    held.append(&mut c.r.held);
    carry_held(pid, &mut st, held);
    // Done with remote syscalls: the process gets its own registers back now, so that even if
    // we die while writing the image (a reader that went away, SIGKILL, OOM), it runs on as
    // before, not from the middle of our gadget.
    t.set_regs(live)?;
    let brk = asked?;
    unmapped?;
    Error::blocked(pid, why)?;

    // Everything else comes from /proc, now that the scratch area is gone.
    let stat = procfs::read_stat(pid)?;
    let mut maps = match smaps {
        Some(h) => h.join().map_err(|_| Error::Proc(format!("pid {pid}: reading its smaps failed")))??,
        None => match opts.flags_later.as_ref().map(|f| f.frozen(pid)).transpose()?.flatten() {
            Some(m) => m,
            None => procfs::read_smaps(pid)?,
        },
    };
    maps.retain(|m| (m.start, m.end) != (addr.0, addr.0 + len as u64));
    if let Some(p) = &opts.precopied {
        p.unmark(pid, &mut maps)?;
    }
    let vmas = memory::classify(pid, &maps, &no_copy_rule(pid, opts))?;
    let fds = files::scan(pid, &opts.stubs, tree, opts.carry())?;
    st.epolls = crate::res::epoll::collect(pid, &fds, false)?;
    st.timerfds = crate::res::timerfd::collect(pid, &fds)?;
    st.inotify = crate::res::inotify::collect(pid, &fds, false)?;
    st.locks = crate::res::locks::collect(pid, &fds)?;
    st.pipes = crate::res::pipes::collect_all(pid, &fds)?;
    let cwd = cwd::collect(pid)?;
    let (mm, exe_path) = MmStruct::collect(pid, &stat, brk)?;
    let mut flags = 0;
    for (on, f) in [
        (opts.kill, head::CKPT_KILL),
        (opts.no_binary, head::CKPT_NO_BINARY),
        (opts.no_libs, head::CKPT_NO_LIBS),
        (opts.stop, head::CKPT_STOP),
    ] {
        if on {
            flags |= f;
        }
    }
    let head = Header::collect(pid, flags, &stat, &status, &exe_path)?;
    debug!("pid {pid}: {} mappings, {} fds, cwd {cwd}", vmas.len(), fds.len());

    st.head = head;
    st.files = fds;
    st.mm = mm;
    st.vmas = vmas;
    st.cwd = cwd;
    Ok(st)
}

/// The signals that reached a thread while it was being frozen or asked (taken from its queue
/// at its signal-delivery stop and kept from it, see tracee::Caught) go in the image as queued
/// to that thread, ahead of those still queued: they came first. (A process that runs on gets
/// them again too.) Lost, a signal another thread counts on never comes: Go's runtime sends a
/// thread one preemption signal at a time and waits for it before it sends the next.
fn carry_held(pid: i32, st: &mut ProcessState, held: &[Caught]) {
    for c in held.iter().rev() {
        let p = pending::Pending { shared: false, info: c.siginfo() };
        if c.tid == pid {
            st.pending.insert(0, p);
        } else if let Some(t) = st.thread_info.iter_mut().find(|t| t.tid == c.tid) {
            t.pending.insert(0, p);
        }
    }
}

/// The other threads: what the kernel shows of each from outside, and what only each can
/// tell, asked by syscalls run in all of them at once (see [`ask_threads`]), with each one's
/// scheduling. Adds to `why` a knob a thread has set for itself unlike the leader, which a
/// restore would not give it back. `st` holds the leader's state so far.
fn collect_threads(
    pid: i32,
    others: &mut [Other],
    how: &Asking,
    st: &ProcessState,
    held: &mut Vec<Caught>,
    names: Option<Names>,
    why: &mut Vec<String>,
) -> Result<Vec<(ThreadState, ThreadInfo, Sched)>> {
    let mut outside = Vec::with_capacity(others.len());
    for o in others.iter_mut() {
        let rseq = o.t.rseq()?;
        let r = regs::collect(&o.t, rseq)?;
        o.live = Some(r.live);
        o.mask = Some(o.t.sigmask()?);
        outside.push((rseq, r.image));
    }
    for o in others.iter_mut() {
        o.moved = true;
    }
    let asked = ask_threads(others, how, held);
    // Their own registers back at once, whatever the answers were.
    for o in others.iter_mut() {
        if let Some(l) = &o.live {
            o.t.set_regs(l)?;
            o.moved = false;
        }
    }
    let asked = asked?;
    let names = match names {
        Some(h) => {
            h.join().map_err(|_| Error::Proc(format!("pid {pid}: reading its threads' /proc files failed")))??
        }
        None => Vec::new(),
    };
    let mut out = Vec::with_capacity(others.len());
    for (((o, (rseq, image)), a), seen) in others.iter().zip(outside).zip(asked).zip(names) {
        let tid = o.t.pid;
        let Outside { reasons, pending, mut sched, robust, knobs: read } = seen;
        let comm = a.comm;
        why.extend(reasons);
        for (k, v) in a.knobs.iter().chain(&read).filter(|kv| !st.knobs.contains(kv)) {
            let name = knobs::KNOBS.iter().find(|d| d.key == *k).map_or("?", |d| d.name);
            why.push(format!("its thread {tid} ({comm}) has its own {name} ({v:#x}), which crs does not restore yet"));
        }
        sched.timer_slack = a.timer_slack;
        // Its own queue: the process's shared one is the leader's to carry.
        let pending = if pending { o.t.pending(false)? } else { Vec::new() };
        let pending = pending.into_iter().map(|info| pending::Pending { shared: false, info }).collect();
        let sigmask = o.sigmask()?;
        let info =
            ThreadInfo { tid, sigmask, altstack: a.altstack, rseq, clear_tid: a.clear_tid, robust, comm, pending };
        out.push((ThreadState { regs: RegState { gpr: image, xsave: o.t.xstate()? } }, info, sched));
    }
    Ok(out)
}

/// What the kernel shows of a thread other than the leader from outside, read by a thread of
/// ours while the threads are asked.
struct Outside {
    /// Its reasons against it (its credentials against the leader's).
    reasons: Vec<String>,
    /// Whether signals are queued for it (its status's SigPnd), to be read then.
    pending: bool,
    /// Its scheduling but the timer slack, which only it can tell.
    sched: Sched,
    robust: (u64, u64),
    /// The knobs of its own its /proc files show.
    knobs: Vec<(u32, u64)>,
}

/// The thread reading [`Outside`] for each other thread (none for a process of one thread).
type Names = std::thread::JoinHandle<Result<Vec<Outside>>>;

/// What one thread told about itself.
struct Asked {
    altstack: (u64, u32, u64),
    clear_tid: u64,
    comm: String,
    timer_slack: u64,
    knobs: Vec<(u32, u64)>,
}

/// How the threads are asked: the scratch area mapped in the process, a syscall instruction
/// in it, and the signals the process ignores (None: unknown).
#[derive(Clone, Copy)]
struct Asking<'a> {
    scratch: &'a Scratch,
    gadget: u64,
    ignored: Option<u64>,
}

/// Bytes of the scratch area each thread writes its answers to, asked one syscall at a time.
const SLOT: usize = 128;
/// Where in a thread's slot its name (16 bytes) and its knobs' answers go.
const COMM_AT: usize = 32;
const KNOBS_AT: usize = 48;
/// Each thread's bytes when it runs its questions in one go: its answers, then (at LIST_AT)
/// its list of syscalls for the batch code, which sits in the scratch area's first page.
const BATCH_SLOT: usize = 1024;
const LIST_AT: usize = 256;

/// The scratch area checkpointing a process with `threads` threads maps: four pages, or one
/// for the batch code and a batch slot per thread.
fn scratch_len(threads: usize) -> usize {
    let page = crate::crf::PAGE_SIZE;
    (4 * page).max((page + threads * BATCH_SLOT).div_ceil(page) * page)
}

/// Asks every thread in `others` (their registers read, `live` set) its alternate signal stack,
/// clear_child_tid address, timer slack and the knobs a thread has of its own, each thread
/// writing into its own slot of the scratch area (groups of as many threads as it has slots),
/// read back in one go. Where the area is executable and a trap harmless to every thread (its
/// mask, `ignored`: see remote's notes), each thread runs all its questions in one go (the
/// batch code), all threads at once; otherwise one syscall at a time in all of them at once
/// ([`syscall_all`]).
fn ask_threads(others: &[Other], how: &Asking, held: &mut Vec<Caught>) -> Result<Vec<Asked>> {
    let Asking { scratch, gadget, ignored } = *how;
    let Some(pid) = others.first().map(|o| o.t.pid) else { return Ok(vec![]) };
    let asks: Vec<(u32, knobs::Ask)> = knobs::thread_asks().collect();
    // One thread's questions, its answers going to its slot at `s`: [0, 24) stack_t, [24, 32)
    // the clear_child_tid address, [COMM_AT, +16) its name, then 4 bytes per knob from KNOBS_AT.
    let questions = |s: RemoteAddr| -> Vec<(i64, [u64; 6])> {
        let mut q = vec![
            (libc::SYS_sigaltstack, [0, s.0, 0, 0, 0, 0]),
            (libc::SYS_prctl, [thread::PR_GET_TID_ADDRESS as u64, s.0 + 24, 0, 0, 0, 0]),
            (libc::SYS_prctl, [libc::PR_GET_TIMERSLACK as u64, 0, 0, 0, 0, 0]),
            (libc::SYS_prctl, [libc::PR_GET_NAME as u64, s.0 + COMM_AT as u64, 0, 0, 0, 0]),
        ];
        q.extend(asks.iter().enumerate().map(|(k, (_, a))| a.call(s.offset((KNOBS_AT + 4 * k) as u64))));
        q
    };
    let names = ["sigaltstack", "prctl(PR_GET_TID_ADDRESS)", "prctl(PR_GET_TIMERSLACK)", "prctl(PR_GET_NAME)"];
    let n = names.len() + asks.len();
    let answers = KNOBS_AT + 4 * asks.len();
    if answers > SLOT {
        return Err(Error::Proc(format!("{} thread knobs do not fit a scratch slot of {SLOT} bytes", asks.len())));
    }
    let mut batch = scratch.exec
        && answers <= LIST_AT
        && LIST_AT + n * arch::BATCH_ENTRY <= BATCH_SLOT
        && scratch.len >= crate::crf::PAGE_SIZE + BATCH_SLOT;
    if let (true, Some(ign)) = (batch, ignored) {
        for o in others {
            batch &= crate::ptrace::remote::traps_harmless(o.sigmask()?, ign);
        }
    } else {
        batch = false;
    }
    let (first, slot_len) = if batch { (crate::crf::PAGE_SIZE, BATCH_SLOT) } else { (0, SLOT) };
    if batch {
        scratch.put(pid, 0, arch::batch_code())?;
    }
    let mut out = Vec::with_capacity(others.len());
    for group in others.chunks(((scratch.len - first) / slot_len).max(1)) {
        let ts: Vec<(&Tracee, Regs)> = group.iter().filter_map(|o| Some((&o.t, o.live?))).collect();
        let at = scratch.addr.0 + first as u64;
        let slot = |i: usize| RemoteAddr(at + (i * slot_len) as u64);
        // raw[k][i]: the raw result of question k in thread i.
        let mut raw: Vec<Vec<i64>> = vec![Vec::with_capacity(ts.len()); n];
        let mut b = vec![0u8; ts.len() * slot_len];
        if batch {
            let mut lists = Vec::with_capacity(ts.len());
            for i in 0..ts.len() {
                let list = &mut b[i * slot_len + LIST_AT..(i + 1) * slot_len];
                for (k, (nr, args)) in questions(slot(i)).into_iter().enumerate() {
                    let e = &mut list[k * arch::BATCH_ENTRY..(k + 1) * arch::BATCH_ENTRY];
                    for (j, v) in [nr as u64].into_iter().chain(args).chain([0]).enumerate() {
                        e[8 * j..8 * j + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
                lists.push((slot(i).0 + LIST_AT as u64, n));
            }
            mem::write_runs(pid, &[(at, b.len())], &b)?;
            crate::ptrace::remote::batch_all(&ts, scratch.addr.0, &lists, held)?;
            mem::read_runs(pid, &[(at, b.len())], &mut b)?;
            for (k, r) in raw.iter_mut().enumerate() {
                for i in 0..ts.len() {
                    let o = i * slot_len + LIST_AT + k * arch::BATCH_ENTRY + 56;
                    r.push(i64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8])));
                }
            }
        } else {
            let per_thread: Vec<Vec<(i64, [u64; 6])>> = (0..ts.len()).map(|i| questions(slot(i))).collect();
            for (k, r) in raw.iter_mut().enumerate() {
                let calls: Vec<(i64, [u64; 6])> = per_thread.iter().map(|q| q[k]).collect();
                *r = syscall_all(&ts, gadget, &calls, held)?;
            }
            mem::read_runs(pid, &[(at, b.len())], &mut b)?;
        }
        // The four that must answer.
        for (k, name) in names.iter().enumerate() {
            if let Some((r, (t, _))) = raw[k].iter().zip(&ts).find(|(r, _)| **r < 0) {
                return Err(Error::sys(
                    name.to_string(),
                    format!("thread {}", t.pid),
                    nix::errno::Errno::from_raw(-*r as i32),
                ));
            }
        }
        for (i, (t, _)) in ts.iter().enumerate() {
            let s = &b[i * slot_len..i * slot_len + LIST_AT.min(slot_len)];
            let w = |o: usize| u64::from_le_bytes(s[o..o + 8].try_into().unwrap_or([0; 8]));
            let int = |o: usize| u32::from_le_bytes(s[o..o + 4].try_into().unwrap_or([0; 4]));
            let mut knobs = Vec::new();
            for (k, (key, a)) in asks.iter().enumerate() {
                if let Some(v) = a.answer(raw[names.len() + k][i], || Ok(int(KNOBS_AT + 4 * k)), t.pid)? {
                    knobs.push((*key, v));
                }
            }
            out.push(Asked {
                altstack: (w(0), w(8) as u32, w(16)),
                clear_tid: w(24),
                comm: thread::comm_from(&s[COMM_AT..KNOBS_AT]),
                timer_slack: raw[2][i] as u64,
                knobs,
            });
        }
    }
    Ok(out)
}

/// A `syscall` instruction in the process: in its vdso, which every process has and which we
/// never modify.
pub(crate) fn find_gadget(pid: i32, maps: &[procfs::MapEntry]) -> Result<u64> {
    let vdso = maps.iter().find(|m| m.name == "[vdso]").ok_or_else(|| {
        Error::Refused(format!(
            "pid {pid} has no vdso (it unmapped its own, as programs run under valgrind do, or the kernel was booted with vdso=0): crs runs syscalls in a process through its vdso and cannot checkpoint it (run the program outside valgrind; boot without vdso=0)"
        ))
    })?;
    let mut code = vec![0u8; vdso.len() as usize];
    mem::read_runs(pid, &[(vdso.start, code.len())], &mut code)?;
    arch::find_syscall_insn(&code, vdso.start)
        .ok_or_else(|| Error::Refused(format!("pid {pid}: no syscall instruction in its vdso")))
}
